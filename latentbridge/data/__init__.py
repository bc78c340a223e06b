"""Datasets that work offline: toy distributions with known densities (toy), real English (text), emoji,
emoji scenes, digits and photos with captions (emoji, images), spoken words and real recordings (speech);
`sources` turns a config's `data` section into per-step batches for each codec role."""

from latentbridge.data.toy import GaussianRing, ToyBatches

__all__ = ["GaussianRing", "ToyBatches"]
