"""The plugin contract: pluggy markers and the hook specifications latentbridge calls.

A plugin is any module or object with functions marked `@hookimpl` whose names match a spec below.
Third-party plugins are found through the entry-point group `latentbridge.codecs`; the built-in
codecs register through the very same hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:
    from latentbridge.codecs.base import Codec

PROJECT = "latentbridge"
ENTRY_POINT_GROUP = "latentbridge.codecs"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def latentbridge_register_codecs(register: Callable[[type[Codec]], None]) -> None:
    """Register codec classes by calling `register(CodecSubclass)` once for each.

    The class must subclass `latentbridge.codecs.Codec` and define `name`, `modality` and
    `config_class`. Names are global: registering a name another plugin registered is an error.
    """
