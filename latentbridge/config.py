"""Typed configuration: dataclass schema, YAML load, dotted overrides, validation, YAML dump.

Every config is a tree of dataclasses. Each field carries a one-line docstring (the string literal
right under it), which `field_docs` reads back for `latentbridge config show --docs`. Values are
converted from plain YAML data by `from_dict`, which checks every type against the annotations and
rejects unknown keys, suggesting the closest valid one. YAML is read with `yaml.safe_load` only: a
config is data and can never run code or import classes.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from latentbridge.errors import ConfigError

T = TypeVar("T")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


# --------------------------------------------------------------------------------------------------
# Schema of an experiment
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TimeSamplerConfig:
    """How training draws the flow time t of a codec's blocks (one t per block)."""

    kind: Literal["logit_normal", "uniform"] = "logit_normal"
    """`logit_normal`: t = sigmoid(loc + scale * N(0, 1)); `uniform`: t ~ U(0, 1)."""
    loc: float | None = None
    """Logit-normal location; null picks it from the latent width (Cola DLM: ~1.0 at 16, ~2.3 at 128)."""
    scale: float = 1.0
    """Logit-normal scale."""


@dataclasses.dataclass
class CodecSlot:
    """One codec used by an experiment, under a role name such as `text` or `image`."""

    codec: str
    """Registered codec name; `latentbridge codecs list` shows the installed ones."""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of the codec's own config dataclass to change from their defaults."""
    pretrained: str | None = None
    """Directory written by the codec's save_pretrained to load config and weights from."""
    time_sampler: TimeSamplerConfig = dataclasses.field(default_factory=TimeSamplerConfig)
    """Flow-time sampler of this role's blocks during prior training."""
    latents: Literal["mean", "sample"] = "sample"
    """Feed the prior the posterior mean or a posterior sample during training."""
    steps: int | None = None
    """Codec pre-stage (a codec without `pretrained` trains on its own loss before the prior): steps (null: train.codec_steps)."""
    lr: float | None = None
    """Codec pre-stage learning rate (null: train.codec_lr)."""
    batch_size: int | None = None
    """Codec pre-stage batch size (null: train.batch_size)."""


@dataclasses.dataclass
class PriorSection:
    """The block-causal DiT: a preset plus optional overrides."""

    preset: Literal["tiny", "small", "base", "large"] = "small"
    """Size preset: tiny (tests), small (CPU), base/large (GPU)."""
    width: int | None = None
    """Model width; null keeps the preset's."""
    depth: int | None = None
    """Number of DiT blocks; null keeps the preset's."""
    heads: int | None = None
    """Attention heads; null keeps the preset's."""
    mlp_ratio: float | None = None
    """MLP width multiple; null keeps 4."""
    attention: Literal["sdpa", "flex"] = "sdpa"
    """Attention kernel; `flex` applies on CUDA only."""
    block_positions: bool | list[str] = False
    """Also give each token a learned embedding of its place within its block (for an image of one block: which
    patch), beside RoPE's position in the sequence: true for every codec's tokens, a list of codec roles (e.g.
    [image]) for theirs only; false: RoPE alone."""


@dataclasses.dataclass
class TaskConfig:
    """Which roles are given (clean context) and which role the prior generates."""

    cond: list[str] = dataclasses.field(default_factory=list)
    """Roles given as clean `cond` segments, in sequence order."""
    target: str = ""
    """Role generated as the `target` segment."""
    weight: float = 1.0
    """In a mixture (`tasks`): this task's share of each training batch, relative to the other tasks' weights."""
    data: str | None = None
    """In a mixture: the data set its examples come from (`images`, `speech`, `text`; null: `data.name`)."""
    sources: list[str] | None = None
    """In a mixture: parts of that data set (null: `data.sources` when `data` is `data.name`, else all parts)."""


@dataclasses.dataclass
class SamplingConfig:
    """How generation integrates each block."""

    steps: int = 16
    """ODE steps per block (Cola DLM: 8-10 already saturate)."""
    solver: Literal["euler", "heun", "midpoint"] = "euler"
    """Fixed-grid ODE solver."""
    shift: float = 1.0
    """Time shift of the grid (> 1 spends more steps near noise)."""
    guidance: list[float] = dataclasses.field(default_factory=lambda: [1.0])
    """Classifier-free guidance: one scale for all conditions, or one per cond segment."""
    guidance_interval: tuple[float, float] | None = None
    """Apply guidance only for t in [lo, hi]; null applies it everywhere."""


@dataclasses.dataclass
class TrainConfig:
    """Training: which stage, optimisation, checkpoints."""

    stage: Literal["codec", "prior", "joint"] = "prior"
    """codec: one codec on its own loss; prior: codecs frozen; joint: a codec trains with the prior."""
    codec_role: str | None = None
    """Role whose codec trains in the codec and joint stages (default: the task's target)."""
    steps: int = 2000
    """Optimizer steps of the stage."""
    batch_size: int = 256
    """Examples per micro-step, over all processes (must divide by the process count)."""
    grad_accum: int = 1
    """Micro-steps accumulated per optimizer step."""
    row_length: int | None = 256
    """Tokens per packed row (several examples share a row); null packs one example per row."""
    lr: float = 1e-3
    """Peak AdamW learning rate."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (Cola DLM: 0.9, 0.95)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warm-up steps before cosine decay to zero."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    cond_dropout: float = 0.1
    """Probability of dropping the cond segments of an example (trains the unconditional pass for guidance)."""
    codec_steps: int = 300
    """Steps of the codec stage (each trainable codec on its own loss) before the prior stage."""
    codec_lr: float = 1e-2
    """Learning rate of the codec stage."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """bf16 autocast (the CPU here supports it; so do recent GPUs)."""
    log_every: int = 50
    """Steps between metrics.jsonl lines."""
    checkpoint_every: int = 500
    """Steps between checkpoints (and one at the end); 0 writes none."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept; older ones are deleted once a new one is complete."""
    cache_latents: bool = False
    """Prior/joint stage on a finite data set (data.path): keep the frozen codecs' posteriors on disk as safetensors shards."""
    latent_cache_dir: str | None = None
    """Where the latent cache lives (default <run dir>/latent_cache); share it between runs to reuse it."""
    ema_decay: float = 0.999
    """Decay of the EMA of the trained weights; 0 turns EMA off."""
    joint_kl_weight: float = 1.0
    """Joint stage: weight of KL(q(z|x) || q_stage1(z|x)), which keeps the codec near its stage-1 encoder."""
    joint_codec_weight: float = 1.0
    """Joint stage: weight of the codec's own loss."""


@dataclasses.dataclass
class DataConfig:
    """The data (latentbridge.data): `gaussian_ring` (toy points with class labels), `text` (real English
    from Debian packages), `images` (emoji, emoji scenes and handwritten digits with captions) or `speech`
    (words and names spoken by flite and espeak-ng, with their text)."""

    name: Literal["gaussian_ring", "text", "images", "speech"] = "gaussian_ring"
    """Dataset name."""
    sources: list[str] | None = None
    """Parts of the data set to draw from (null: all of them). text: wordnet, fortunes, pydoc (split 98/1/1
    by a hash of each text); images: emoji, scenes, digits; speech: flite, espeak."""
    max_chars: int | None = 240
    """text: drop texts longer than this many characters (null keeps all; the codec cuts long ones)."""
    image_size: int = 32
    """images: side of the square images in pixels (32 or 64)."""
    scenes: int = 4000
    """images: compositional scenes rendered for training (held-out splits get 1/20 as many)."""
    scene_objects: list[str] | None = None
    """images: the emoji scenes draw from, by name (null: all 32 of latentbridge.data.images.SCENE_VOCABULARY; fewer
    are learned sooner); speech with `words: objects`: the object names spoken."""
    clips: int = 4000
    """speech: clips synthesized in all (split 90/5/5 by a hash of the text)."""
    sample_rate: int = 16000
    """speech: Hz the clips are resampled to (match the audio codec's sample_rate)."""
    words: Literal["dictionary", "objects"] = "dictionary"
    """speech: what is spoken. `dictionary`: words and names of the system word list, split by word (held-out words are
    never heard); `objects`: the names of the scene emoji (`scene_objects`) and of the 10 digits by every voice at five
    speeds, split 80/10/10 by rendition (a closed vocabulary; `clips` is not used)."""
    path: str | None = None
    """A safetensors file with `points` [N, 2] and `labels` [N] to train on instead of sampling the ring."""
    num_classes: int = 8
    """Number of classes K."""
    radius: float = 2.0
    """Radius of the ring."""
    tangential_std: float = 0.5
    """Spread along the ring (controls the overlap of neighbouring classes)."""
    radial_std: float = 0.15
    """Spread across the ring."""


@dataclasses.dataclass
class EvalConfig:
    """Evaluation after training."""

    samples: int = 2000
    """Generated samples scored (per guidance scale)."""
    guidance_scales: list[float] = dataclasses.field(default_factory=lambda: [1.0, 2.0, 4.0])
    """Guidance scales swept to show what guidance does to the conditional score."""


@dataclasses.dataclass
class ExperimentConfig:
    """A whole experiment: codecs, the task, the prior, its training, sampling and evaluation."""

    name: str
    """Experiment name, written into every run directory and checkpoint."""
    seed: int = 0
    """Seed of every random generator of the run."""
    codecs: dict[str, CodecSlot] = dataclasses.field(default_factory=dict)
    """Codecs by role name (e.g. `text`, `image`); each role is one segment type of the prior."""
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)
    """Which roles condition and which is generated (one task; for several, use `tasks`)."""
    tasks: dict[str, TaskConfig] = dataclasses.field(default_factory=dict)
    """A mixture of tasks by name (caption_to_image, image_to_caption, ...), each with its own layout, data
    and weight; when set, `task` stays empty. See latentbridge.tasks."""
    prior: PriorSection = dataclasses.field(default_factory=PriorSection)
    """The block-causal DiT."""
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    """Generation settings."""
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    """Training settings."""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """Data settings."""
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    """Evaluation settings."""

    def __post_init__(self) -> None:
        roles = set(self.codecs)
        if self.tasks and (self.task.target or self.task.cond):
            raise ValueError("set either `task` (one task) or `tasks` (a mixture), not both; move the single task into `tasks`")
        named = [("task", self.task), *((f"tasks.{n}", t) for n, t in self.tasks.items())]
        for where, task in named:
            for role in [*task.cond, task.target]:
                if role and role not in roles:
                    raise ValueError(f"{where} names role {role!r}, which is not under codecs (roles: {', '.join(sorted(roles)) or 'none'})")
            if where != "task":
                if not task.target:
                    raise ValueError(f"{where}.target is empty: name the role the task generates")
                if task.target in task.cond:
                    raise ValueError(f"{where}: role {task.target!r} is both a condition and the target")
                if not task.weight > 0:
                    raise ValueError(f"{where}.weight must be > 0, got {task.weight}")
        if self.train.codec_role and self.train.codec_role not in roles:
            raise ValueError(f"train.codec_role names role {self.train.codec_role!r}, which is not under codecs "
                             f"(roles: {', '.join(sorted(roles)) or 'none'})")


# --------------------------------------------------------------------------------------------------
# Field docstrings
# --------------------------------------------------------------------------------------------------


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written under it in the class body (inherited ones included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


# --------------------------------------------------------------------------------------------------
# Plain data -> dataclasses, with checked types
# --------------------------------------------------------------------------------------------------


def type_name(tp: Any) -> str:
    """A readable name for an annotation: `int`, `list[str]`, `'euler' | 'heun'`, `float | None`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _closest(key: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass `cls` from plain data (as loaded from YAML), checking keys and types.

    Errors name the full dotted path of the offending field, what was expected and what came.
    """
    where = path or cls.__name__
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping with the fields of {cls.__name__}, got "
            f"{type(data).__name__} {data!r}."
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{_join(path, str(key))}'.{_closest(str(key), list(fields))} "
                f"Valid keys of {where}: {', '.join(fields)}."
            )
    missing = [
        n
        for n, f in fields.items()
        if n not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError(
            f"{where}: missing required key(s) {', '.join(_join(path, m) for m in missing)}. "
            f"Add them to the config file or pass --{_join(path, missing[0])}=VALUE."
        )
    kwargs = {key: _convert(hints[key], value, _join(path, key)) for key, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # __post_init__ validation of the dataclass itself
        raise ConfigError(f"{where}: {err}") from None


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def wrong(extra: str = "") -> ConfigError:
        return ConfigError(
            f"{path}: expected {type_name(tp)}, got {type(value).__name__} {value!r}.{extra} "
            f"Fix it in the config file or override it with --{path}=VALUE."
        )

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)  # type: ignore[arg-type]
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise wrong()
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1 and not str(errors[0]).startswith(f"{path}: expected"):
            raise errors[0]  # the problem is deeper inside the one candidate type: keep its path
        raise wrong()
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        if isinstance(value, bool):  # YAML 1.1 reads bare no/off/yes/on as booleans: map back to the choice meant
            spelled = [a for a in args if isinstance(a, str) and a.lower() in (("no", "off", "false") if not value else ("yes", "on", "true"))]
            if len(spelled) == 1:
                return spelled[0]
        raise wrong(_closest(str(value), [str(a) for a in args]))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong(" Use true or false.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as text
        raise wrong()
    if tp is str:
        if isinstance(value, str):
            return value
        raise wrong(" Quote it in YAML if it is meant as text.")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise wrong(f" It needs exactly {len(args)} items.")
            items = [_convert(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, value))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(item_tp, v, _join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise wrong()
        key_tp, val_tp = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            if key_tp is str and not isinstance(k, str):
                raise ConfigError(f"{path}: keys must be text, got {k!r}.")
            out[k] = _convert(val_tp, v, _join(path, str(k)))
        return out
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise wrong()


def to_dict(cfg: Any) -> Any:
    """Plain data of a config dataclass (nested dataclasses to dicts, tuples to lists), for YAML or JSON."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


# --------------------------------------------------------------------------------------------------
# Overrides and files
# --------------------------------------------------------------------------------------------------


def parse_overrides(args: Sequence[str]) -> list[tuple[str, Any]]:
    """Parse `--a.b=value` / `a.b=value` strings; values are read as YAML scalars (`4`, `true`, `[1, 2]`)."""
    out = []
    for arg in args:
        text = arg[2:] if arg.startswith("--") else arg
        key, sep, raw = text.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"cannot read override {arg!r}: write it as --dotted.key=value, e.g. --seed=1."
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML: keep it as text
        out.append((key, value))
    return out


def apply_overrides(data: dict[str, Any], overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Set dotted keys in a nested plain-data dict (a copy); unknown keys are caught later by from_dict."""
    data = _deep_copy(data)
    for key, value in overrides:
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override --{key}: '{'.'.join(parts[: i + 1])}' holds {child!r}, not a "
                    f"section, so it has no key '{parts[i + 1]}'."
                )
            node = child
        node[parts[-1]] = value
    return data


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from disk with safe_load; missing files and syntax errors say so plainly."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            siblings = sorted(p.name for p in path.parent.glob("*.yaml"))
            if siblings:
                hint = f" YAML files in {path.parent}/: {', '.join(siblings)}."
        raise ConfigError(f"config file not found: {path}.{hint} Check the path.")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{path}: not valid YAML{where}: {problem}. Only plain YAML data is accepted "
            "(no !!python tags)."
        ) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top, got {type(data).__name__}.")
    return data


def load_config(
    path: str | Path, overrides: Sequence[str] = (), cls: type[T] = ExperimentConfig  # type: ignore[assignment]
) -> T:
    """Load a YAML file into `cls`, applying `--dotted.key=value` overrides first."""
    data = apply_overrides(read_yaml(path), parse_overrides(overrides))
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def dump_yaml(cfg: Any, *, docs: bool = False) -> str:
    """The config as YAML text; with `docs`, each field's docstring as a comment above it."""
    if not docs:
        return yaml.safe_dump(to_dict(cfg), sort_keys=False)
    return "\n".join(_yaml_with_docs(cfg, indent=0)) + "\n"


def _yaml_with_docs(cfg: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in docs:
            lines.append(f"{pad}# {docs[f.name]}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.extend(_yaml_with_docs(value, indent + 2))
        elif isinstance(value, dict) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
            lines.append(f"{pad}{f.name}:")
            for key, sub in value.items():
                lines.append(f"{pad}  {key}:")
                lines.extend(_yaml_with_docs(sub, indent + 4))
        else:
            text = yaml.safe_dump({f.name: to_dict(value)}, sort_keys=False).rstrip("\n")
            lines.extend(pad + line for line in text.splitlines())
    return lines


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (used for every run and checkpoint)."""
    Path(path).write_text(dump_yaml(cfg))
