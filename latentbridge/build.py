"""From an experiment config to the pieces of a run: its codecs, its sequence layout, its prior's config.

    build_codecs(cfg, reg)           each role's codec: loaded from `pretrained` (config fields changed on top)
                                     or built new from its config, checked against the installed codecs
    layout_of(cfg, codecs)           the prior's streams: one per role, from the codecs' latent specs
    experiment_prior_config(...)     the PriorConfig that the `prior` section and the codec widths describe
    build_prior(cfg, layout, reg)    the prior backbone `prior.backbone` names (the DiT, or a plugin's), built new

Training (latentbridge.train), loading a run (latentbridge.runs) and generation all build through here, so
a run is rebuilt exactly as it was trained.
"""

from __future__ import annotations

from typing import Any

from latentbridge.codecs import Codec
from latentbridge.config import ExperimentConfig
from latentbridge.errors import ConfigError, UnknownCodecError
from latentbridge.plugins import CodecRegistry, Registries, registries
from latentbridge.prior import PriorBackbone, PriorConfig, prior_config
from latentbridge.sequence import SequenceLayout
from latentbridge.typedconfig import to_dict


def resolve_codec_configs(cfg: ExperimentConfig, reg: CodecRegistry) -> dict[str, Any]:
    """Check an experiment's codec slots against the installed codecs; fill in each codec's full config.

    Returns role -> codec config dataclass. Unknown codec names and bad codec options are errors that
    name the path (`codecs.<role>.codec`, `codecs.<role>.config.<field>`).
    """
    resolved = {}
    for role, slot in cfg.codecs.items():
        try:
            reg.get(slot.codec)
        except UnknownCodecError as err:
            raise UnknownCodecError(f"codecs.{role}.codec: {err}") from None
        resolved[role] = reg.config(slot.codec, slot.config, f"codecs.{role}.config")
        if not slot.pretrained:  # a pretrained codec's config comes from its directory; keep the overrides only
            slot.config = to_dict(resolved[role])
    targets = [("task.target", cfg.task.target)] + [(f"tasks.{n}.target", t.target) for n, t in cfg.tasks.items()]
    for where, role in targets:
        if role in cfg.codecs and not reg.get(cfg.codecs[role].codec).decodes:
            raise ConfigError(f"{where}: role '{role}' uses codec '{cfg.codecs[role].codec}', which only encodes (a "
                              "condition-only codec, no decoder): it can be a condition (`cond`), not a target. Generate a "
                              "role whose codec decodes.")
    return resolved


def build_codecs(cfg: ExperimentConfig, reg: Registries) -> dict[str, Codec]:
    """Each role's codec: loaded from `pretrained` (with `config` fields changed on top, weights kept) or built new."""
    configs = resolve_codec_configs(cfg, reg.codecs)
    codecs = {}
    for role, slot in cfg.codecs.items():
        if slot.pretrained:
            meta = Codec.read_meta(slot.pretrained)
            if meta["codec"] != slot.codec:
                raise ConfigError(f"codecs.{role}.pretrained: {slot.pretrained} holds codec '{meta['codec']}', but codecs.{role}.codec "
                                  f"is '{slot.codec}'. Make them agree.")
            try:
                codecs[role] = reg.codecs.load(slot.pretrained, slot.config or None)
            except ConfigError as err:
                raise ConfigError(f"codecs.{role}.config on top of {slot.pretrained}: {err}") from None
        else:
            codecs[role] = reg.codecs.get(slot.codec)(configs[role])
    return codecs


def layout_of(cfg: ExperimentConfig, codecs: dict[str, Codec]) -> SequenceLayout:
    """One stream per codec role, in the config's order (the order fixes the codec ids the prior embeds)."""
    return SequenceLayout.from_specs({role: codecs[role].latent_spec for role in cfg.codecs})


def experiment_prior_config(cfg: ExperimentConfig, layout: SequenceLayout) -> PriorConfig:
    """The PriorConfig an experiment's `prior` section and codec widths describe."""
    p = cfg.prior
    chosen: list[str] = []
    if isinstance(p.block_positions, list):
        unknown = [r for r in p.block_positions if r not in layout.ids]
        if unknown or not p.block_positions:
            raise ConfigError(f"prior.block_positions: {', '.join(map(repr, unknown)) or 'an empty list'} names no codec role "
                              f"of this experiment; use true, false or a list of its roles ({', '.join(layout.names)}).")
        chosen = list(dict.fromkeys(p.block_positions))
    elif p.block_positions:
        chosen = list(layout.names)
    places = max((layout.streams[r].block_size for r in chosen), default=0)
    ids = tuple(layout.ids[r] for r in chosen) if isinstance(p.block_positions, list) else ()
    documents = any(t.document for t in [cfg.task, *cfg.tasks.values()])
    return prior_config(p.preset, layout.dims, width=p.width, depth=p.depth, heads=p.heads, mlp_ratio=p.mlp_ratio, attention=p.attention,
                        block_positions=places, block_position_codecs=ids, step_conditioning=p.step_conditioning,
                        switch_classes=len(layout.names) + 1 if documents else 0)


def build_prior(cfg: ExperimentConfig, layout: SequenceLayout, reg: Registries | None = None) -> PriorBackbone:
    """The experiment's prior backbone, built new: `dit` from the `prior` section's fields, a plugin's from its options
    under `prior.config` (a backbone importing released weights loads them here)."""
    reg = reg or registries()
    name = cfg.prior.backbone
    cls = reg.priors.get(name, "prior.backbone")
    if name == "dit":
        if cfg.prior.config:
            raise ConfigError(f"prior.config: {', '.join(cfg.prior.config)} — the built-in `dit` backbone takes its options from "
                              "the `prior` section's own fields (preset, width, depth, heads, ...); remove prior.config.")
        options = experiment_prior_config(cfg, layout)
    else:
        options = reg.priors.config(name, cfg.prior.config, "prior.config")
    prior = cls.create(options, tuple(layout.dims))
    if not isinstance(prior, PriorBackbone):
        raise ConfigError(f"prior.backbone '{name}': {cls.__qualname__}.create returned {type(prior).__name__}, not a PriorBackbone. "
                          "Fix the backbone plugin.")
    documents = [n for n, t in [("task", cfg.task), *cfg.tasks.items()] if t.document]
    if documents and prior.switch_classes != len(layout.names) + 1:
        raise ConfigError(f"tasks {', '.join(documents)} are document tasks, which need a prior with a switch head of "
                          f"{len(layout.names) + 1} classes (its codec streams and the end of a document); backbone '{name}' "
                          f"has {prior.switch_classes}. Use prior.backbone: dit, or give the backbone a switch head.")
    return prior
