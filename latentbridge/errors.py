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


class StoppedError(LatentbridgeError):
    """Training was stopped by a signal (SIGTERM: preemption; SIGINT: Ctrl-C) after writing a checkpoint."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for a process ended by that signal


def describe_os_error(err: OSError) -> str | None:
    """One line for a filesystem failure a user can fix (full disk, read-only, permissions), with the path, the free
    space where it matters, and the fix; None for other OSErrors (bugs)."""
    import errno
    import shutil
    from pathlib import Path

    path = err.filename or ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        probe = Path(path) if path else Path.cwd()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            free = f"{shutil.disk_usage(probe).free / 2**20:,.1f} MiB free"
        except OSError:
            free = "free space unknown"
        return (f"no space left on the device writing {path or 'a file'} ({free} on its filesystem). Free some space "
                "(or point the run elsewhere), then continue with --resume: finished work and the last checkpoint are kept.")
    if err.errno == errno.EROFS:
        return f"{path or 'the target'} is on a read-only filesystem. Pick a writable directory (e.g. --run-dir)."
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to access {path or 'a file'}. Fix its permissions, or pick a directory you can write."
    if err.errno == errno.EEXIST and path and not Path(path).is_dir():
        return f"{path} exists and is a file, not a directory. Pick another path (e.g. --run-dir)."
    if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR) and path:
        return f"{path}: {err.strerror}. Check the path."
    return None
