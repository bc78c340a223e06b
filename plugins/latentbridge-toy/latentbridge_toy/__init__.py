"""The toy world of latentbridge, shipped as a separate plugin distribution: codecs `vector` and `label`, the
`gaussian_ring` data set (a density known exactly) and the `ring` evaluator that scores against it."""

from latentbridge_toy.codecs import LabelCodec, LabelConfig, VectorCodec, VectorConfig
from latentbridge_toy.evaluators import RingEvaluator
from latentbridge_toy.ring import GaussianRing, RingData, RingOptions

__all__ = ["GaussianRing", "LabelCodec", "LabelConfig", "RingData", "RingEvaluator", "RingOptions", "VectorCodec", "VectorConfig"]
