"""Datasets: toy distributions with known densities (and, as they land, text, image and audio data)."""

from latentbridge.data.toy import GaussianRing, ToyBatches

__all__ = ["GaussianRing", "ToyBatches"]
