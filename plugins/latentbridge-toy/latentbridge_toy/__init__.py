"""Toy codecs for latentbridge, shipped as a separate plugin distribution: `vector` and `label`."""

from latentbridge_toy.codecs import LabelCodec, LabelConfig, VectorCodec, VectorConfig

__all__ = ["LabelCodec", "LabelConfig", "VectorCodec", "VectorConfig"]
__version__ = "0.1.0"
