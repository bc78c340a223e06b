"""Plugin manager and the strict codec registry.

Built-in codecs and third-party codecs enter the same way: a plugin implements
`latentbridge_register_codecs(register)` (see hookspecs.py). Third-party plugins are found through
the entry-point group `latentbridge.codecs`; set LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD=1 to load only
the built-ins (tests do). The registry refuses duplicate names, naming both providers, and answers
an unknown name with the known ones and the closest match.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import inspect
import os
from pathlib import Path
from typing import Any, Iterable

import pluggy

from latentbridge import __version__, hookspecs
from latentbridge.codecs.base import Codec
from latentbridge.errors import DuplicateCodecError, PluginError, UnknownCodecError

AUTOLOAD_ENV = "LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PLUGINS = ("latentbridge.codecs.builtin",)
BUILTIN_PROVIDER = f"latentbridge {__version__}"


@dataclasses.dataclass(frozen=True)
class CodecEntry:
    """One registered codec and who provided it."""

    name: str
    cls: type[Codec]
    provider: str
    """Distribution and version that registered it, e.g. 'latentbridge-toy 0.1.0'."""


class CodecRegistry:
    """Codec name -> class, filled only through the plugin hook."""

    def __init__(self) -> None:
        self._entries: dict[str, CodecEntry] = {}

    def register(self, codec_cls: Any, *, provider: str) -> None:
        """Add a codec class; refuse anything that is not a complete Codec subclass or a taken name."""
        what = getattr(codec_cls, "__qualname__", repr(codec_cls))
        if not (inspect.isclass(codec_cls) and issubclass(codec_cls, Codec)):
            raise PluginError(f"{provider} registered {what}, which is not a subclass of latentbridge.codecs.Codec.")
        for attr in ("name", "modality"):
            value = getattr(codec_cls, attr, None)
            if not isinstance(value, str) or not value:
                raise PluginError(f"{provider} registered {what} without a `{attr}` string class attribute; add one.")
        if not dataclasses.is_dataclass(codec_cls.config_class):
            raise PluginError(f"{provider} registered {what} whose config_class is not a dataclass.")
        name = codec_cls.name
        if name in self._entries:
            first = self._entries[name]
            raise DuplicateCodecError(
                f"codec name '{name}' is registered twice: by {first.provider} "
                f"({first.cls.__module__}.{first.cls.__qualname__}) and by {provider} "
                f"({codec_cls.__module__}.{codec_cls.__qualname__}). Uninstall one of the two "
                "distributions, or rename one codec."
            )
        self._entries[name] = CodecEntry(name, codec_cls, provider)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[CodecEntry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> CodecEntry:
        if name not in self._entries:
            match = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.4)
            hint = f" Did you mean '{match[0]}'?" if match else ""
            known = ", ".join(self.names()) or "none"
            raise UnknownCodecError(
                f"unknown codec '{name}'.{hint} Installed codecs: {known}. "
                "`latentbridge codecs list` shows them; a codec from another package appears once that "
                "package is pip-installed into this environment."
            )
        return self._entries[name]

    def get(self, name: str) -> type[Codec]:
        return self.entry(name).cls

    def create(self, name: str, config: Any = None) -> Codec:
        """Build codec `name` from its config dataclass, a dict of its fields, or defaults."""
        return self.get(name)(config)

    def load(self, directory: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Codec:
        """Load a codec saved with save_pretrained, picking the class by the saved name (`overrides`: config
        fields to change that keep the weights' shapes)."""
        meta = Codec.read_meta(directory)
        return self.get(meta["codec"]).from_pretrained(Path(directory), overrides)


# --------------------------------------------------------------------------------------------------
# Plugin manager
# --------------------------------------------------------------------------------------------------


def autoload_enabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def _entry_points() -> list[tuple[importlib.metadata.EntryPoint, importlib.metadata.Distribution]]:
    """Entry points of our group, one per distribution name (the first on sys.path wins, as for imports)."""
    seen: set[str] = set()
    found = []
    for dist in importlib.metadata.distributions():
        dist_name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if dist_name in seen:
            continue
        seen.add(dist_name)
        for ep in dist.entry_points:
            if ep.group == hookspecs.ENTRY_POINT_GROUP:
                found.append((ep, dist))
    return found


def _dist_label(dist: Any) -> str:
    return f"{dist.metadata['Name']} {dist.version}"


def make_plugin_manager(autoload: bool | None = None, extra_plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """A plugin manager with the specs, the built-ins, the entry-point plugins (unless disabled) and `extra_plugins`."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if autoload_enabled() if autoload is None else autoload:
        by_name: dict[str, Any] = {}
        for ep, dist in _entry_points():
            if ep.name in by_name:  # pluggy would silently skip the second plugin of the same name
                raise PluginError(
                    f"two distributions declare the '{hookspecs.ENTRY_POINT_GROUP}' entry point '{ep.name}': "
                    f"{_dist_label(by_name[ep.name])} and {_dist_label(dist)}. Uninstall one, or rename "
                    "the entry point in one of them."
                )
            by_name[ep.name] = dist
            try:
                pm.load_setuptools_entrypoints(hookspecs.ENTRY_POINT_GROUP, name=ep.name)
            except Exception as err:  # a broken third-party plugin: say which, and how to get rid of it
                raise PluginError(
                    f"plugin '{ep.name}' ({ep.value}) from {_dist_label(dist)} failed to load: "
                    f"{type(err).__name__}: {err}. Fix it, or `pip uninstall {dist.metadata['Name']}`, or set "
                    f"{AUTOLOAD_ENV}=1 to load only the built-in codecs."
                ) from err
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise PluginError(
            f"{err} — latentbridge's only hook is 'latentbridge_register_codecs'; check the spelling "
            "of the @hookimpl function."
        ) from None
    return pm


def _providers(pm: pluggy.PluginManager) -> dict[int, str]:
    labels = {id(plugin): _dist_label(dist) for plugin, dist in pm.list_plugin_distinfo()}
    for name in BUILTIN_PLUGINS:
        labels[id(pm.get_plugin(name))] = BUILTIN_PROVIDER
    return labels


def build_registry(pm: pluggy.PluginManager) -> CodecRegistry:
    """Call every plugin's hook, one plugin at a time, so each registration knows its provider."""
    registry = CodecRegistry()
    providers = _providers(pm)
    plugins = pm.get_plugins()
    for plugin in plugins:
        provider = providers.get(id(plugin), f"plugin '{pm.get_name(plugin)}' (registered at runtime)")
        caller = pm.subset_hook_caller(
            "latentbridge_register_codecs", remove_plugins=[p for p in plugins if p is not plugin]
        )

        def register(codec_cls: Any, _provider: str = provider) -> None:
            registry.register(codec_cls, provider=_provider)

        caller(register=register)
    return registry


_REGISTRY: CodecRegistry | None = None


def registry(refresh: bool = False) -> CodecRegistry:
    """The process-wide codec registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = build_registry(make_plugin_manager())
    return _REGISTRY


def get_codec_class(name: str) -> type[Codec]:
    return registry().get(name)


def create_codec(name: str, config: Any = None) -> Codec:
    return registry().create(name, config)


def load_codec(directory: str | os.PathLike) -> Codec:
    return registry().load(directory)


def provider_of(codec_cls: type[Codec]) -> str:
    """The distribution (and version) whose package defines `codec_cls`, e.g. 'latentbridge-toy 0.1.0'."""
    top = codec_cls.__module__.split(".")[0]
    for dist_name in importlib.metadata.packages_distributions().get(top, []):
        try:
            return f"{dist_name} {importlib.metadata.version(dist_name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"module {codec_cls.__module__}"


def resolve_codec_configs(cfg: Any, reg: CodecRegistry | None = None) -> dict[str, Any]:
    """Check an experiment's codec slots against the installed codecs; fill in each codec's full config.

    Returns role -> codec config dataclass. Unknown codec names and bad codec options are errors that
    name the path (`codecs.<role>.codec`, `codecs.<role>.config.<field>`).
    """
    from latentbridge.config import from_dict, to_dict

    reg = reg or registry()
    resolved = {}
    for role, slot in cfg.codecs.items():
        try:
            cls = reg.get(slot.codec)
        except UnknownCodecError as err:
            raise UnknownCodecError(f"codecs.{role}.codec: {err}") from None
        resolved[role] = from_dict(cls.config_class, slot.config, path=f"codecs.{role}.config")
        if not getattr(slot, "pretrained", None):  # a pretrained codec's config comes from its directory; keep the overrides only
            slot.config = to_dict(resolved[role])
    return resolved
