"""Codec contract: the Codec base class, LatentSpec/LatentStats, Posterior/Latents, and a built-in codec."""

from latentbridge.codecs.base import Codec, NoConfig
from latentbridge.codecs.spec import Latents, LatentSpec, LatentStats, Posterior, length_mask

__all__ = ["Codec", "Latents", "LatentSpec", "LatentStats", "NoConfig", "Posterior", "length_mask"]
