"""Plugin manager and the strict registries: codecs, data sets, evaluators.

Built-ins and third-party plugins enter the same way: a plugin implements any of the hooks of
hookspecs.py (`latentbridge_register_codecs`, `..._datasets`, `..._evaluators`), each handing it a
`register` callback into one registry. Third-party plugins are found through the entry-point group
`latentbridge.codecs`; set LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD=1 to load only the built-ins (tests
do). A registry refuses duplicate names, naming both providers, and answers an unknown name with the
installed ones and the closest match, naming the config key that held it.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import inspect
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Iterable

import pluggy

from latentbridge import __version__, hookspecs
from latentbridge.codecs.base import Codec
from latentbridge.data.base import Dataset
from latentbridge.errors import (DuplicateCodecError, DuplicateNameError, PluginError, UnknownCodecError,
                                 UnknownNameError)
from latentbridge.evaluator import Evaluator
from latentbridge.prior.backbone import PriorBackbone
from latentbridge.typedconfig import from_dict

AUTOLOAD_ENV = "LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_PLUGINS = ("latentbridge.codecs.builtin", "latentbridge.data.builtin", "latentbridge.evaluate.builtin",
                   "latentbridge.prior.builtin")
BUILTIN_PROVIDER = f"latentbridge {__version__}"
HOOKS = ("latentbridge_register_codecs", "latentbridge_register_datasets", "latentbridge_register_evaluators",
         "latentbridge_register_priors")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered class and who provided it."""

    name: str
    cls: type
    provider: str
    """Distribution and version that registered it, e.g. 'latentbridge-toy 0.1.0'."""


class Registry:
    """Name -> class for one kind of plugin, filled only through its hook."""

    kind: ClassVar[str] = "plugin"
    """What is registered, for messages: 'codec', 'data set', 'evaluator'."""
    command: ClassVar[str] = ""
    """The CLI group that lists them: `latentbridge <command> list`."""
    base: ClassVar[type] = object
    base_path: ClassVar[str] = "object"
    """Where plugin authors import the base class from, for messages."""
    unknown_error: ClassVar[type[UnknownNameError]] = UnknownNameError
    duplicate_error: ClassVar[type[DuplicateNameError]] = DuplicateNameError

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def check_class(self, cls: Any, provider: str, what: str) -> None:
        """Kind-specific checks of a registered class (beyond base class and `name`)."""
        if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
            raise PluginError(f"{provider} registered {what} whose config_class is not a dataclass.")

    def register(self, cls: Any, *, provider: str) -> None:
        """Add a class; refuse anything that is not a complete subclass of the base, or a taken name."""
        what = getattr(cls, "__qualname__", repr(cls))
        base = self.base_path
        if not (inspect.isclass(cls) and issubclass(cls, self.base)):
            raise PluginError(f"{provider} registered {what} as a {self.kind}, but it is not a subclass of {base}.")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{provider} registered {what} without a `name` string class attribute; add one.")
        self.check_class(cls, provider, what)
        if name in self._entries:
            first = self._entries[name]
            raise self.duplicate_error(
                f"{self.kind} name '{name}' is registered twice: by {first.provider} "
                f"({first.cls.__module__}.{first.cls.__qualname__}) and by {provider} "
                f"({cls.__module__}.{cls.__qualname__}). Uninstall one of the two distributions, or rename one {self.kind}."
            )
        self._entries[name] = Entry(name, cls, provider)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str, key: str | None = None) -> Entry:
        """The entry of `name`; an unknown one is one line naming `key` (the config key that held it), the
        installed names, the closest match and the fix."""
        if name not in self._entries:
            match = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.4)
            hint = f" Did you mean '{match[0]}'?" if match else ""
            known = ", ".join(self.names()) or "none"
            where = f"{key}: " if key else ""
            raise self.unknown_error(
                f"{where}unknown {self.kind} '{name}'.{hint} Installed {self.kind}s: {known}. "
                f"`latentbridge {self.command} list` shows them; a {self.kind} from another package appears once that "
                "package is pip-installed into this environment."
            )
        return self._entries[name]

    def get(self, name: str, key: str | None = None) -> type:
        return self.entry(name, key).cls

    def config(self, name: str, data: Any, key: str) -> Any:
        """The config dataclass of `name` built from plain data (`key`: where it sits in the experiment, for errors)."""
        return from_dict(self.get(name).config_class, data if data is not None else {}, path=key)


class CodecRegistry(Registry):
    kind, command, base, base_path = "codec", "codecs", Codec, "latentbridge.codecs.Codec"
    unknown_error, duplicate_error = UnknownCodecError, DuplicateCodecError

    def check_class(self, cls: Any, provider: str, what: str) -> None:
        value = getattr(cls, "modality", None)
        if not isinstance(value, str) or not value:
            raise PluginError(f"{provider} registered {what} without a `modality` string class attribute; add one.")
        super().check_class(cls, provider, what)

    def create(self, name: str, config: Any = None) -> Codec:
        """Build codec `name` from its config dataclass, a dict of its fields, or defaults."""
        return self.get(name)(config)

    def load(self, directory: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Codec:
        """Load a codec saved with save_pretrained, picking the class by the saved name (`overrides`: config
        fields to change that keep the weights' shapes)."""
        meta = Codec.read_meta(directory)
        return self.get(meta["codec"]).from_pretrained(Path(directory), overrides)


class DatasetRegistry(Registry):
    kind, command, base, base_path = "data set", "datasets", Dataset, "latentbridge.data.Dataset"

    def check_class(self, cls: Any, provider: str, what: str) -> None:
        fields = getattr(cls, "fields", None)
        if not isinstance(fields, dict) or not fields or not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
            raise PluginError(f"{provider} registered data set {what} without `fields`, a dict of modality -> item field "
                              "(e.g. {'image': 'image', 'text': 'caption'}); add one.")
        super().check_class(cls, provider, what)

    def config_of(self, name: str, options: Any, where: str = "data") -> Any:
        """The config dataclass of data set `name` from the options an experiment gives it; `where` is `data` (keys
        data.name / data.config) or `tasks.<task>` (keys tasks.<task>.data / tasks.<task>.data_config)."""
        name_key, options_key = ("data.name", "data.config") if where == "data" else (f"{where}.data", f"{where}.data_config")
        self.get(name, name_key)
        return self.config(name, options, options_key)

    def create(self, name: str, config: Any = None, seed: int = 0) -> Dataset:
        """Build data set `name` (its config dataclass, a dict of its fields, or defaults) for a run seeded `seed`."""
        cls = self.get(name, "data.name")
        if not isinstance(config, cls.config_class):
            config = self.config_of(name, config)
        return cls(config, seed)


class EvaluatorRegistry(Registry):
    kind, command, base, base_path = "evaluator", "evaluators", Evaluator, "latentbridge.evaluate.Evaluator"


class PriorRegistry(Registry):
    kind, command, base, base_path = "prior backbone", "priors", PriorBackbone, "latentbridge.prior.PriorBackbone"


@dataclasses.dataclass
class Registries:
    """The registries of one plugin manager (and the plugins that could not load, which are left out)."""

    codecs: CodecRegistry
    datasets: DatasetRegistry
    evaluators: EvaluatorRegistry
    priors: PriorRegistry = dataclasses.field(default_factory=PriorRegistry)
    broken: list[BrokenPlugin] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class BrokenPlugin:
    """A plugin left out because importing it or calling its hook raised: the rest keeps working."""

    entry_point: str
    provider: str
    """Distribution and version, e.g. 'latentbridge-foo 0.1.0'."""
    error: str
    """What it raised, one line."""


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
            except Exception as err:  # a broken third-party plugin fails alone: left out, with one warning naming it
                _left_out(pm, ep.name, _dist_label(dist), err)
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as err:
        raise PluginError(
            f"{err} — latentbridge's hooks are {', '.join(HOOKS)}; check the spelling of the @hookimpl function."
        ) from None
    return pm


def _providers(pm: pluggy.PluginManager) -> dict[int, str]:
    labels = {id(plugin): _dist_label(dist) for plugin, dist in pm.list_plugin_distinfo()}
    for name in BUILTIN_PLUGINS:
        labels[id(pm.get_plugin(name))] = BUILTIN_PROVIDER
    return labels


def build_registries(pm: pluggy.PluginManager) -> Registries:
    """Call every plugin's hooks, one plugin at a time, so each registration knows its provider."""
    regs = Registries(CodecRegistry(), DatasetRegistry(), EvaluatorRegistry(), PriorRegistry())
    targets = {"latentbridge_register_codecs": regs.codecs, "latentbridge_register_datasets": regs.datasets,
               "latentbridge_register_evaluators": regs.evaluators, "latentbridge_register_priors": regs.priors}
    providers = _providers(pm)
    plugins = pm.get_plugins()
    failed: set[int] = set()
    for hook, reg in targets.items():
        for plugin in plugins:
            if id(plugin) in failed:
                continue
            provider = providers.get(id(plugin), f"plugin '{pm.get_name(plugin)}' (registered at runtime)")
            caller = pm.subset_hook_caller(hook, remove_plugins=[p for p in plugins if p is not plugin])
            staged: list[Any] = []
            try:
                caller(register=staged.append)
            except Exception as err:  # its hook raised: this plugin is left out, the others register
                if provider == BUILTIN_PROVIDER:
                    raise
                failed.add(id(plugin))
                _left_out(pm, pm.get_name(plugin) or "?", provider, err)
                continue
            for cls in staged:  # a class that breaks the contract, or a name taken twice, is still an error
                reg.register(cls, provider=provider)
    regs.broken = list(getattr(pm, "latentbridge_broken", []))
    if failed:  # what a left-out plugin registered under another hook before it failed goes too
        for reg in targets.values():
            for name in [n for n, e in reg._entries.items() if e.provider in {b.provider for b in regs.broken}]:
                del reg._entries[name]
    return regs


def _left_out(pm: pluggy.PluginManager, name: str, provider: str, err: BaseException) -> None:
    detail = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    broken = BrokenPlugin(name, provider, detail)
    pm.latentbridge_broken = [*getattr(pm, "latentbridge_broken", []), broken]  # type: ignore[attr-defined]
    warnings.warn(f"plugin '{name}' from {provider} failed to load and is left out ({detail}). Fix it, or `pip uninstall "
                  f"{provider.split()[0]}`; {AUTOLOAD_ENV}=1 loads only the built-ins.", stacklevel=3)


_REGISTRIES: Registries | None = None


def registries(refresh: bool = False) -> Registries:
    """The process-wide registries, built on first use."""
    global _REGISTRIES
    if _REGISTRIES is None or refresh:
        _REGISTRIES = build_registries(make_plugin_manager())
    return _REGISTRIES


def get_codec_class(name: str) -> type[Codec]:
    return registries().codecs.get(name)


def create_codec(name: str, config: Any = None) -> Codec:
    return registries().codecs.create(name, config)


def load_codec(directory: str | os.PathLike) -> Codec:
    return registries().codecs.load(directory)


def create_dataset(name: str, config: Any = None, seed: int = 0) -> Dataset:
    return registries().datasets.create(name, config, seed)
