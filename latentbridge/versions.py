"""Which installed distribution provides a class: recorded in saved codecs and checkpoints."""

from __future__ import annotations

import functools
import importlib.metadata


@functools.lru_cache(maxsize=None)
def _distributions() -> dict[str, list[str]]:
    """Top-level package -> the distributions providing it; read once (scanning every installed distribution's file
    list takes about a second, and every checkpoint records its codecs' providers)."""
    return importlib.metadata.packages_distributions()


def provider_of(cls: type) -> str:
    """The distribution (and version) whose package defines `cls`, e.g. 'latentbridge-toy 0.1.0'."""
    top = cls.__module__.split(".")[0]
    for dist_name in _distributions().get(top, []):
        try:
            return f"{dist_name} {importlib.metadata.version(dist_name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"module {cls.__module__}"
