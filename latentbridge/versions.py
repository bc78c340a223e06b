"""Which installed distribution provides a class: recorded in saved codecs and checkpoints."""

from __future__ import annotations

import importlib.metadata


def provider_of(cls: type) -> str:
    """The distribution (and version) whose package defines `cls`, e.g. 'latentbridge-toy 0.1.0'."""
    top = cls.__module__.split(".")[0]
    for dist_name in importlib.metadata.packages_distributions().get(top, []):
        try:
            return f"{dist_name} {importlib.metadata.version(dist_name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"module {cls.__module__}"
