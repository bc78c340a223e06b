"""latentbridge: one flow-matching prior over the latents of any codec (text, images, audio, ...)."""

__version__ = "0.2.0"

from latentbridge.errors import LatentbridgeError  # noqa: E402

__all__ = ["LatentbridgeError", "__version__"]
