"""Plugin manager and the strict registries: codecs, data sets, evaluators (in-process; installed-distribution cases
are in test_third_party)."""

from __future__ import annotations

import dataclasses

import pytest

from latentbridge import __version__, plugins
from latentbridge.codecs import Codec
from latentbridge.codecs.identity import IdentityCodec
from latentbridge.data import ItemDataset
from latentbridge.errors import ConfigError, DuplicateCodecError, DuplicateNameError, PluginError, UnknownCodecError, UnknownNameError
from latentbridge.evaluate import Evaluator
from latentbridge.hookspecs import hookimpl
from latentbridge.prior import BlockCausalDiT, prior_config


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


def registries_with(*plugin_objects, autoload=False):
    return plugins.build_registries(plugins.make_plugin_manager(autoload=autoload, extra_plugins=plugin_objects))


def registry_with(*plugin_objects, autoload=False):
    return registries_with(*plugin_objects, autoload=autoload).codecs


@dataclasses.dataclass
class PairsOptions:
    """Options of the pairs data set."""

    n: int = 4
    """How many pairs."""


class Pairs(ItemDataset):
    name = "pairs"
    config_class = PairsOptions
    fields = {"text": "left", "label": "right"}

    def load(self, split):
        return {"left": [f"item {i}" for i in range(self.config.n)], "right": list(range(self.config.n))}


class Scorer(Evaluator):
    name = "scorer"
    cond, target = ("text",), "label"


class RegistersData:
    def __init__(self, *classes):
        self.classes = classes

    @hookimpl
    def latentbridge_register_datasets(self, register):
        for cls in self.classes:
            register(cls)

    @hookimpl
    def latentbridge_register_evaluators(self, register):
        register(Scorer)


def test_builtins_register_through_the_hook_with_autoload_off():
    reg = registry_with()
    assert reg.names() == ["identity"]
    assert reg.entry("identity").provider == f"latentbridge {__version__}"


def test_entry_points_are_discovered_with_their_distribution():
    reg = registry_with(autoload=True)
    assert {"identity", "vector", "label"} <= set(reg.names())
    assert reg.entry("vector").provider == "latentbridge-toy 0.2.0"
    assert reg.get("label").__module__ == "latentbridge_toy.codecs"


def test_environment_variable_turns_autoload_off(monkeypatch):
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    assert "vector" not in plugins.build_registries(plugins.make_plugin_manager()).codecs
    monkeypatch.delenv(plugins.AUTOLOAD_ENV)
    assert "vector" in plugins.build_registries(plugins.make_plugin_manager()).codecs


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


def test_module_registries_are_cached_and_refreshable():
    first = plugins.registries(refresh=True)
    assert plugins.registries() is first
    assert plugins.registries(refresh=True) is not first


def test_data_sets_and_evaluators_register_through_their_hooks():
    regs = registries_with(RegistersData(Pairs))
    generic = ["audiofolder", "documents", "hf", "imagefolder", "text", "webdataset"]  # the core's own, through the same hook
    assert regs.datasets.names() == sorted(["pairs", *generic]) and regs.datasets.entry("pairs").provider.endswith("(registered at runtime)")
    assert all(regs.datasets.entry(n).provider.startswith("latentbridge ") for n in generic)
    assert "scorer" in regs.evaluators and {"prior-fit", "reconstruction", "samples", "document-switches"} <= set(regs.evaluators.names())
    data = regs.datasets.create("pairs", {"n": 3}, seed=0)
    assert len(data) == 3 and data.split("test", 2) == {"left": ["item 0", "item 1"], "right": [0, 1]}


def test_data_set_and_evaluator_names_are_unique_and_known():
    with pytest.raises(DuplicateNameError, match="data set name 'pairs' is registered twice"):
        registries_with(RegistersData(Pairs, type("Again", (Pairs,), {})))
    with pytest.raises(DuplicateNameError, match="evaluator name 'scorer' is registered twice"):
        registries_with(RegistersData(Pairs), RegistersData())
    regs = registries_with(RegistersData(Pairs))
    with pytest.raises(UnknownNameError, match=r"^data\.name: unknown data set 'pair'\. Did you mean 'pairs'\? Installed data sets: audiofolder, documents, hf, imagefolder, pairs, text, webdataset\."):
        regs.datasets.create("pair")
    with pytest.raises(UnknownNameError, match=r"^eval\.evaluators\[0\]: unknown evaluator 'scorr'\. Did you mean 'scorer'\?"):
        regs.evaluators.entry("scorr", "eval.evaluators[0]")
    with pytest.raises(Exception, match=r"unknown config key 'data\.config\.m'\. Valid keys of data\.config: n\."):
        regs.datasets.create("pairs", {"m": 3})


@pytest.mark.parametrize("bad, pattern", [
    (type("NoFields", (Pairs,), {"name": "nofields", "fields": {}}), "without `fields`"),
    (type("NotData", (), {"name": "x"}), "not a subclass of latentbridge.data.Dataset"),
])
def test_invalid_data_sets_are_refused(bad, pattern):
    with pytest.raises(PluginError, match=pattern):
        registries_with(RegistersData(bad))


def test_a_data_set_returning_undeclared_fields_is_stopped():
    from latentbridge.errors import DatasetOutputError

    broken = type("Broken", (Pairs,), {"name": "broken", "load": lambda self, split: {"left": ["a"]}})
    with pytest.raises(DatasetOutputError, match=r"data set 'broken' load\('train'\) returned fields \['left'\]; it declares "
                                                 r"\['left', 'right'\] \(missing right\)"):
        broken()


# --------------------------------------------------------------------------------------------------
# Prior backbones: the fourth hook
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class WideOptions:
    """Options of the `wide` backbone."""

    width: int = 32
    """Model width."""


class WideDiT(BlockCausalDiT):
    """A third-party backbone: latentbridge's DiT at a width of its own option."""

    name = "wide"
    config_class = WideOptions

    @classmethod
    def create(cls, options, codec_dims):
        return cls(prior_config("tiny", codec_dims, width=options.width))


class RegistersPriors:
    def __init__(self, *classes):
        self.classes = classes

    @hookimpl
    def latentbridge_register_priors(self, register):
        for cls in self.classes:
            register(cls)


def _experiment(**prior):
    from latentbridge.config import ExperimentConfig
    from latentbridge.typedconfig import from_dict

    return from_dict(ExperimentConfig, {"name": "x", "codecs": {"v": {"codec": "identity", "config": {"dim": 4}}},
                                        "task": {"target": "v"}, "prior": {"preset": "tiny", **prior}})


def test_prior_backbones_register_through_their_hook_and_build_by_config():
    from latentbridge.build import build_prior
    from latentbridge.sequence import SequenceLayout, Stream

    reg = registries_with(RegistersPriors(WideDiT))
    assert reg.priors.names() == ["dit", "wide"]
    assert reg.priors.entry("dit").provider == plugins.BUILTIN_PROVIDER  # the built-in DiT enters through the same hook
    layout = SequenceLayout({"v": Stream(4, 2)})
    prior = build_prior(_experiment(backbone="wide", config={"width": 48}), layout, reg)
    assert isinstance(prior, WideDiT) and prior.config.width == 48 and prior.config.codec_dims == (4,)
    assert type(build_prior(_experiment(), layout, reg)) is BlockCausalDiT
    with pytest.raises(UnknownNameError, match=r"prior.backbone: unknown prior backbone 'wyde'. Did you mean 'wide'\?"):
        build_prior(_experiment(backbone="wyde"), layout, reg)
    with pytest.raises(ConfigError, match=r"prior.config.widht"):
        build_prior(_experiment(backbone="wide", config={"widht": 48}), layout, reg)
    with pytest.raises(ConfigError, match=r"the built-in `dit` backbone takes its options from the `prior` section"):
        build_prior(_experiment(config={"width": 48}), layout, reg)


def test_a_prior_backbone_must_subclass_the_contract():
    class NotABackbone:
        name = "nope"
        config_class = WideOptions

    with pytest.raises(PluginError, match=r"not a subclass of latentbridge.prior.PriorBackbone"):
        registries_with(RegistersPriors(NotABackbone))


def test_priors_list_shows_the_backbones(capsys):
    from latentbridge.cli import main

    assert main(["priors", "list"]) == 0
    out = capsys.readouterr().out
    assert "dit" in out and "latentbridge" in out
