"""Typed config: schema conversion, unknown keys, wrong types, overrides, files, YAML round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
import yaml

from latentbridge import config as S  # the experiment schema
from latentbridge import typedconfig as C  # the general loader
from latentbridge.errors import ConfigError


@dataclasses.dataclass
class Inner:
    depth: int = 2
    """Number of blocks."""
    solver: Literal["euler", "heun"] = "euler"
    """ODE solver."""
    scales: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    """Guidance scales."""


@dataclasses.dataclass
class Outer:
    name: str
    """Run name."""
    lr: float = 1e-3
    """Learning rate."""
    shift: float | None = None
    """Optional time shift."""
    use_ema: bool = True
    """Keep an EMA."""
    prior: Inner = dataclasses.field(default_factory=Inner)
    """The prior."""


def test_from_dict_converts_nested_and_ints_to_floats():
    cfg = C.from_dict(Outer, {"name": "x", "lr": 1, "prior": {"depth": 4, "scales": [1, 2.5]}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.prior == Inner(depth=4, solver="euler", scales=[1.0, 2.5])


def test_unknown_key_suggests_closest_with_full_path():
    with pytest.raises(ConfigError, match=r"unknown config key 'prior\.dept'\. Did you mean 'depth'\?"):
        C.from_dict(Outer, {"name": "x", "prior": {"dept": 4}})


@pytest.mark.parametrize(
    "data, pattern",
    [
        ({"name": "x", "prior": {"depth": "four"}}, r"prior\.depth: expected int, got str 'four'"),
        ({"name": "x", "prior": {"depth": 2.5}}, r"prior\.depth: expected int, got float"),
        ({"name": "x", "use_ema": 1}, r"use_ema: expected bool, got int 1\. Use true or false"),
        ({"name": 3}, r"name: expected str, got int"),
        ({"name": "x", "prior": {"solver": "heunn"}}, r"prior\.solver: expected 'euler' \| 'heun'.*Did you mean 'heun'"),
        ({"name": "x", "prior": {"scales": [1, "a"]}}, r"prior\.scales\[1\]: expected float"),
        ({"name": "x", "shift": "big"}, r"shift: expected float \| null"),
        ({"name": "x", "prior": 3}, r"prior: expected a mapping with the fields of Inner"),
    ],
)
def test_wrong_types_name_the_field_path(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        C.from_dict(Outer, data)


def test_exponent_without_a_dot_is_a_float():
    assert C.from_dict(Outer, {"name": "x", "lr": "1e-4"}).lr == 1e-4  # PyYAML reads 1e-4 as text
    with pytest.raises(ConfigError, match="lr: expected float, got str 'fast'"):
        C.from_dict(Outer, {"name": "x", "lr": "fast"})


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"missing required key\(s\) name.*--name=VALUE"):
        C.from_dict(Outer, {})


def test_overrides_parse_yaml_scalars_and_nest():
    parsed = C.parse_overrides(["--prior.depth=4", "lr=0.5", "--shift=null", "--prior.scales=[1, 3]", "--name=a=b"])
    assert parsed == [("prior.depth", 4), ("lr", 0.5), ("shift", None), ("prior.scales", [1, 3]), ("name", "a=b")]
    cfg = C.from_dict(Outer, C.apply_overrides({"name": "x"}, parsed))
    assert cfg.prior.depth == 4 and cfg.lr == 0.5 and cfg.prior.scales == [1.0, 3.0] and cfg.name == "a=b"


@pytest.mark.parametrize("bad", ["--prior.depth", "--=3", "--a..b=1"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="--dotted.key=value"):
        C.parse_overrides([bad])


def test_override_into_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="holds 2, not a section"):
        C.apply_overrides({"prior": {"depth": 2}}, [("prior.depth.x", 1)])


def test_load_config_missing_file_lists_siblings(tmp_path):
    (tmp_path / "real.yaml").write_text("name: a\n")
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml\. YAML files in .*: real\.yaml"):
        C.load_typed(tmp_path / "nope.yaml", Outer)


def test_load_config_yaml_syntax_error_has_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: a\nprior: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        C.load_typed(path, Outer)


def test_python_tags_are_refused(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="no !!python tags"):
        C.load_typed(path, Outer)


def test_load_applies_overrides_and_prefixes_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: a\nprior:\n  depth: 2\n")
    assert C.load_typed(path, Outer, ["--prior.depth=6"]).prior.depth == 6
    with pytest.raises(ConfigError, match=r"exp\.yaml: unknown config key 'lrr'"):
        C.load_typed(path, Outer, ["--lrr=1"])


def test_yaml_round_trip(tmp_path):
    cfg = C.from_dict(Outer, {"name": "r", "shift": 2, "prior": {"solver": "heun", "scales": [1, 2]}})
    path = tmp_path / "saved.yaml"
    C.save_config(cfg, path)
    assert C.load_typed(path, Outer) == cfg
    with_docs = C.dump_yaml(cfg, docs=True)
    assert "# Learning rate." in with_docs and "  # ODE solver." in with_docs
    assert C.from_dict(Outer, yaml.safe_load(with_docs)) == cfg


def test_every_schema_field_has_a_docstring():
    from latentbridge.codecs.identity import IdentityConfig
    from latentbridge.codecs.spec import LatentSpec

    from latentbridge.prior import PriorConfig

    schema = [v for v in vars(S).values() if dataclasses.is_dataclass(v) and v.__module__ == S.__name__]
    for cls in (*schema, IdentityConfig, LatentSpec, PriorConfig):
        docs = C.field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_shipped_configs_load_and_resolve_against_the_installed_plugins(autoload_plugins):
    from latentbridge.build import resolve_codec_configs
    from latentbridge.plugins import registries
    from latentbridge.tasks import tasks_of

    paths = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = S.load_config(path)
        resolve_codec_configs(cfg, registries().codecs)
        assert all(t.data.name in registries().datasets for t in tasks_of(cfg)), path


def test_every_plugin_option_has_a_docstring(autoload_plugins):
    from latentbridge.plugins import registries

    regs = registries()
    for entry in [*regs.codecs.entries(), *regs.datasets.entries(), *regs.evaluators.entries(), *regs.priors.entries()]:
        cls = entry.cls.config_class
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in C.field_docs(cls)]
        assert not missing, f"{entry.name} ({entry.provider}): {cls.__name__} fields without a docstring: {missing}"


def test_yaml_no_reads_as_the_string_choice_it_spells():
    from latentbridge.config import ExperimentConfig
    from latentbridge.typedconfig import apply_overrides, from_dict, parse_overrides

    cfg = from_dict(ExperimentConfig, apply_overrides({"name": "x"}, parse_overrides(["--train.mixed_precision=no"])))
    assert cfg.train.mixed_precision == "no"
    cfg = from_dict(ExperimentConfig, {"name": "x", "train": {"mixed_precision": False}})
    assert cfg.train.mixed_precision == "no"
