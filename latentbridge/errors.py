"""User-facing errors. Each message names the problem and the fix; the CLI prints it without a traceback."""


class LatentbridgeError(Exception):
    """Base class of every error latentbridge raises on purpose for bad input."""


class ConfigError(LatentbridgeError, ValueError):
    """A config file or override is missing, malformed, or does not fit the schema."""


class PluginError(LatentbridgeError):
    """A plugin failed to load, registered something invalid, or clashes with another plugin."""


class UnknownNameError(LatentbridgeError, KeyError):
    """A codec, data-set or evaluator name that no installed plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownCodecError(UnknownNameError):
    """A codec name that no installed plugin registered."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name in one registry."""


class DuplicateCodecError(DuplicateNameError):
    """Two plugins registered the same codec name."""


class CodecOutputError(LatentbridgeError, ValueError):
    """A codec returned latents that break its own LatentSpec (shape, dtype, length, NaN, device)."""


class DatasetOutputError(LatentbridgeError, ValueError):
    """A data-set plugin returned items that break its own declaration (fields, lengths)."""


class CheckpointError(LatentbridgeError):
    """A saved codec or checkpoint directory is missing, corrupt, or does not match what loads it."""
