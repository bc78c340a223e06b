"""Plugin manager and strict codec registry (in-process; installed-distribution cases are in test_third_party)."""

from __future__ import annotations

import dataclasses

import pytest

from latentbridge import __version__, plugins
from latentbridge.codecs import Codec
from latentbridge.codecs.identity import IdentityCodec
from latentbridge.errors import DuplicateCodecError, PluginError, UnknownCodecError
from latentbridge.hookspecs import hookimpl


class Registers:
    """A runtime plugin that registers the given classes."""

    def __init__(self, *classes):
        self.classes = classes

    @hookimpl
    def latentbridge_register_codecs(self, register):
        for cls in self.classes:
            register(cls)


class OtherIdentity(IdentityCodec):
    """Same name as the built-in: must clash."""


def registry_with(*plugin_objects, autoload=False):
    return plugins.build_registry(plugins.make_plugin_manager(autoload=autoload, extra_plugins=plugin_objects))


def test_builtins_register_through_the_hook_with_autoload_off():
    reg = registry_with()
    assert reg.names() == ["identity"]
    assert reg.entry("identity").provider == f"latentbridge {__version__}"


def test_entry_points_are_discovered_with_their_distribution():
    reg = registry_with(autoload=True)
    assert {"identity", "vector", "label"} <= set(reg.names())
    assert reg.entry("vector").provider == "latentbridge-toy 0.1.0"
    assert reg.get("label").__module__ == "latentbridge_toy.codecs"


def test_environment_variable_turns_autoload_off(monkeypatch):
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    assert "vector" not in plugins.build_registry(plugins.make_plugin_manager())
    monkeypatch.delenv(plugins.AUTOLOAD_ENV)
    assert "vector" in plugins.build_registry(plugins.make_plugin_manager())


def test_duplicate_name_names_both_providers():
    with pytest.raises(DuplicateCodecError) as err:
        registry_with(Registers(OtherIdentity))
    message = str(err.value)
    assert "codec name 'identity' is registered twice" in message
    assert f"latentbridge {__version__}" in message and "(registered at runtime)" in message
    assert "OtherIdentity" in message and "Uninstall one" in message


def test_unknown_name_lists_known_and_closest():
    reg = registry_with()
    with pytest.raises(UnknownCodecError, match=r"unknown codec 'identty'\. Did you mean 'identity'\? Installed codecs: identity\."):
        reg.get("identty")
    with pytest.raises(UnknownCodecError, match=r"unknown codec 'zzz'\. Installed codecs: identity\."):
        reg.create("zzz")


@pytest.mark.parametrize(
    "bad, pattern",
    [
        (int, "not a subclass of latentbridge.codecs.Codec"),
        (type("Nameless", (IdentityCodec,), {"name": ""}), "without a `name` string"),
        (type("BadConfig", (IdentityCodec,), {"name": "bad", "config_class": dict}), "config_class is not a dataclass"),
    ],
)
def test_invalid_registrations_are_refused(bad, pattern):
    with pytest.raises(PluginError, match=pattern):
        registry_with(Registers(bad))


def test_misspelt_hook_is_caught_by_check_pending():
    class Misspelt:
        @hookimpl
        def latentbridge_register_codec(self, register):  # missing final 's'
            pass

    with pytest.raises(PluginError, match="unknown hook 'latentbridge_register_codec'.*check the spelling"):
        plugins.make_plugin_manager(autoload=False, extra_plugins=[Misspelt()])


def test_registry_load_picks_the_class_by_saved_name(tmp_path):
    class Extra(IdentityCodec):
        name = "extra"
        config_class = dataclasses.make_dataclass("ExtraConfig", [("dim", int, 3), ("block_size", int, 2),
                                                                  ("tokens_per_item", int | None, None), ("max_tokens", int, 8)])

    reg = registry_with(Registers(Extra))
    codec = reg.create("extra", {"dim": 5})
    codec.save_pretrained(tmp_path / "saved")
    loaded = reg.load(tmp_path / "saved")
    assert type(loaded) is Extra and loaded.config.dim == 5
    assert isinstance(loaded, Codec)


def test_module_registry_is_cached_and_refreshable():
    first = plugins.registry(refresh=True)
    assert plugins.registry() is first
    assert plugins.registry(refresh=True) is not first
