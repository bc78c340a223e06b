"""Codecs around models trained elsewhere, read from a local directory: diffusers image and audio autoencoders,
transformers' DAC, and condition-only text encoders (any transformers text encoder; all-MiniLM-L6-v2 from PyPI)."""

from latentbridge_pretrained.audio import PretrainedAudioConfig, PretrainedAudioVAE
from latentbridge_pretrained.image import PretrainedImageConfig, PretrainedImageVAE
from latentbridge_pretrained.text import MiniLM, MiniLMConfig, TextEncoder, TextEncoderConfig

__all__ = ["MiniLM", "MiniLMConfig", "PretrainedAudioConfig", "PretrainedAudioVAE", "PretrainedImageConfig",
           "PretrainedImageVAE", "TextEncoder", "TextEncoderConfig"]
