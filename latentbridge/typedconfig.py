"""Typed configuration: plain YAML data <-> trees of dataclasses, dotted overrides, validation, YAML dump.

This is the general loader; it knows no schema (the experiment schema lives in latentbridge.config, a
codec's or data set's in its own config dataclass). Every config is a tree of dataclasses. Each field
carries a one-line docstring (the string literal right under it), which `field_docs` reads back for
`latentbridge config show --docs`. Values are converted from plain YAML data by `from_dict`, which checks every type against the annotations and
rejects unknown keys, suggesting the closest valid one. YAML is read with `yaml.safe_load` only: a
config is data and can never run code or import classes; and it is bounded (file size, nodes after alias
expansion, no cycles) before anything copies it.

Values are checked by meaning as well as type. A field declares its constraint in its annotation,

    steps: Annotated[int, Check(ge=1)] = 2000        # or the aliases: PositiveInt, Probability, ...

and `from_dict` checks it with the field's dotted path in the message. Every float must be finite (NaN and
infinities are refused). Rules between fields live in the dataclass's
`__post_init__` (a ValueError there becomes a ConfigError naming the section).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import os
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from latentbridge.errors import ConfigError

T = TypeVar("T")
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
MAX_YAML_BYTES = 4 << 20  # a config is a few kB; a bigger file is not a config
MAX_YAML_NODES = 200_000  # values after alias expansion (a billion-laughs file expands to ~10^9)


# --------------------------------------------------------------------------------------------------
# Constraints by meaning
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Check:
    """A constraint on a number (or on a list's length with `min_len`), declared in the field's annotation."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    min_len: int | None = None

    def describe(self) -> str:
        lo = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        hi = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f"{'>=' if self.ge is not None else '>'} {lo[1:]}"
        if hi:
            return f"{'<=' if self.le is not None else '<'} {hi[:-1]}"
        if self.min_len is not None:
            return f"at least {self.min_len} item(s)"
        return "finite"

    def violated(self, value: Any) -> bool:
        if self.min_len is not None and isinstance(value, (list, tuple, dict, str)):
            return len(value) < self.min_len
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False
        return bool((self.ge is not None and not value >= self.ge) or (self.gt is not None and not value > self.gt)
                    or (self.le is not None and not value <= self.le) or (self.lt is not None and not value < self.lt))


PositiveInt = Annotated[int, Check(ge=1)]
Count = Annotated[int, Check(ge=0)]
PositiveFloat = Annotated[float, Check(gt=0)]
NonNegativeFloat = Annotated[float, Check(ge=0)]
Probability = Annotated[float, Check(ge=0, le=1)]


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
    if origin is Annotated:
        checks = [a.describe() for a in tp.__metadata__ if isinstance(a, Check)]
        return f"{type_name(args[0])}{' ' + ', '.join(checks) if checks else ''}"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def closest_hint(key: str, valid: Sequence[str]) -> str:
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
    hints = typing.get_type_hints(cls, include_extras=True)
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{_join(path, str(key))}'.{closest_hint(str(key), list(fields))} "
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
    if origin is Annotated:
        out = _convert(args[0], value, path)
        for check in tp.__metadata__:
            if isinstance(check, Check) and check.violated(out):
                raise ConfigError(f"{path}: must be {check.describe()}, got {out!r}. Fix it in the config file or override it "
                                  f"with --{path}=VALUE.")
        return out
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
        raise wrong(closest_hint(str(value), [str(a) for a in args]))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise wrong(" Use true or false.")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong()
    if tp is float:
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as text
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{path}: must be a finite number, got {value!r}. Fix it in the config file or override it "
                                  f"with --{path}=VALUE.")
            return float(value)
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
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes is too big for a config file (at most {MAX_YAML_BYTES:,}). "
                              "Check that the path names the config, not a data file.")
        raw = path.read_bytes()
    except PermissionError:
        raise ConfigError(f"{path}: no permission to read the config file. Fix its permissions (chmod u+r).") from None
    return parse_yaml(raw, str(path))


def parse_yaml(raw: bytes | str, where: str) -> dict[str, Any]:
    """Parse YAML text holding a mapping (a config), bounded: UTF-8, size, alias expansion, no cycles."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{where}: not UTF-8 text (byte {err.start} is 0x{raw[err.start]:02x}). Save the config as "
                              "UTF-8.") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(raw):,} characters is too big for a config (at most {MAX_YAML_BYTES:,}).")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"{where}: not valid YAML{at}: {problem}. Only plain YAML data is accepted (no !!python tags)."
        ) from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config.") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys at the top, got {type(data).__name__}.")
    try:
        nodes = _expanded_size(data, {}, ())
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config.") from None
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    if nodes > MAX_YAML_NODES:
        raise ConfigError(f"{where}: its aliases (*name) expand to {nodes:,} values, more than a config may hold "
                          f"({MAX_YAML_NODES:,}). Write the values out instead of nesting aliases.")
    return data


def _expanded_size(data: Any, sizes: dict[int, int], stack: tuple[int, ...]) -> int:
    """How many values `data` holds once every alias is expanded (shared nodes counted once per use); a cycle
    (an alias inside itself) is refused. Computed over the shared nodes, so a billion-laughs file costs nothing."""
    if not isinstance(data, (dict, list)):
        return 1
    key = id(data)
    if key in stack:
        raise ConfigError("the YAML refers to itself (an alias inside its own anchor): a config cannot be infinite. "
                          "Write the values out.")
    if key not in sizes:
        children = list(data.values()) if isinstance(data, dict) else data
        sizes[key] = 1 + sum(_expanded_size(c, sizes, (*stack, key)) for c in children)
    return sizes[key]


def load_typed(path: str | Path, cls: type[T], overrides: Sequence[str] = ()) -> T:
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
    hints = typing.get_type_hints(type(cfg), include_extras=True)
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in docs:
            checked = "Check(" in repr(hints.get(f.name))  # a declared range: say it beside the doc
            lines.append(f"{pad}# {docs[f.name]}" + (f" [{type_name(hints[f.name])}]" if checked else ""))
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
    """Write the resolved config as YAML (used for every run and checkpoint), atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dump_yaml(cfg))
    os.replace(tmp, path)  # whole or not at all: a full disk never leaves a config half written
