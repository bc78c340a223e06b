"""What the wrapping codecs share: finding a model directory, reading its class from its own config, loading it
frozen, and saving it inside a latentbridge codec directory.

A model directory is what `save_pretrained` of diffusers or transformers writes: a `config.json` (diffusers names
the class in `_class_name`, transformers in `architectures`) beside the weights. `path` (+ `subfolder`, as in a
pipeline repository laid out like the Hub's: `vae/`, `text_encoder/`) is the only thing a config names; the class,
the latent geometry and (where published) the latent scale and shift are read from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from latentbridge.codecs import Codec
from latentbridge.errors import CheckpointError, ConfigError

MODEL_DIR = "model"  # inside a saved latentbridge codec: the wrapped model's own config (and tokenizer)


def model_directory(codec: str, path: str, subfolder: str | None) -> Path:
    """`path`/`subfolder`, checked: a directory holding config.json, or a one-line error naming what is wrong."""
    if not path:
        raise ConfigError(f"codec '{codec}': config.path is empty: name the model directory (written by save_pretrained).")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"codec '{codec}': config.path {root} is not a directory. Give the directory save_pretrained wrote "
                          "(weights cannot be fetched from a hub here).")
    directory = root / subfolder if subfolder else root
    if subfolder and not directory.is_dir():
        inside = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ConfigError(f"codec '{codec}': {root} has no subfolder '{subfolder}' (its folders: {', '.join(inside) or 'none'}). "
                          "Fix config.subfolder.")
    if not (directory / "config.json").is_file():
        hint = [p.name for p in directory.iterdir() if p.is_dir() and (p / "config.json").is_file()]
        more = f" Its subfolders with a model: {', '.join(sorted(hint))}; set config.subfolder." if hint else ""
        raise ConfigError(f"codec '{codec}': {directory} holds no config.json, so it is not a model directory.{more}")
    return directory


def read_model_config(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{directory / 'config.json'} cannot be read as JSON ({type(err).__name__}: {err}).") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{directory / 'config.json'} holds {type(data).__name__}, not a model config.")
    return data


def class_of(config: dict[str, Any]) -> str:
    """The model class a config.json names: diffusers' `_class_name`, transformers' first `architectures` entry, or
    transformers' `model_type`."""
    if config.get("_class_name"):
        return str(config["_class_name"])
    if config.get("architectures"):
        return str(config["architectures"][0])
    return str(config.get("model_type", "unknown"))


def pick(codec: str, directory: Path, config: dict[str, Any], supported: dict[str, Any]) -> tuple[str, Any]:
    """The supported entry for the class the model's config names, or a one-line error: found vs expected."""
    name = class_of(config)
    for key, value in supported.items():
        if name == key or config.get("model_type") == key:
            return name, value
    raise ConfigError(f"codec '{codec}': {directory} holds a {name}, which this codec does not wrap (it wraps "
                      f"{', '.join(supported)}). Point config.path at one of those, or use the codec made for {name}.")


class WrappedModelCodec(Codec):
    """A codec around a model read from disk: frozen by default, the model saved inside the codec directory."""

    model_attr = "model"
    runs_on_meta = False  # diffusers' and transformers' forwards read tensor values

    @property
    def ships_weights(self) -> bool:
        return True

    def model_config_dict(self) -> dict[str, Any]:
        """The wrapped model's config as plain data, naming its class (`_class_name`) as diffusers does."""
        model = getattr(self, self.model_attr)
        config = model.config
        data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        return {**data, "_class_name": type(model).__name__}

    def save_extra(self, directory: Path) -> None:
        """The wrapped model's config (its weights are in model.safetensors with the codec's), so the saved codec
        reloads without the original directory."""
        (directory / MODEL_DIR).mkdir()
        (directory / MODEL_DIR / "config.json").write_text(json.dumps(self.model_config_dict(), indent=2, default=list) + "\n")

    @classmethod
    def saved_model_config(cls, directory: Path) -> dict[str, Any]:
        saved = directory / MODEL_DIR / "config.json"
        if not saved.is_file():
            raise CheckpointError(f"{directory}: the saved codec has no {MODEL_DIR}/config.json; the save is incomplete — "
                                  "re-save it.")
        return json.loads(saved.read_text())


def eval_mode(model: Any) -> Any:
    """Eval mode (dropout off). Gradients are the experiment's business: it freezes every codec it does not train,
    which for a pretrained codec is the default (no pre-stage unless codecs.<role>.steps asks)."""
    return model.eval()


def load_from(cls_loader: Callable[..., Any], directory: Path, codec: str) -> Any:
    """`from_pretrained` of a local directory, with no hub access; unreadable weights are one line."""
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a local load takes a moment; its per-tensor bar is noise
    try:
        return cls_loader(str(directory), local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        detail = " ".join(str(err).split())[:300]
        raise ConfigError(f"codec '{codec}': the model in {directory} could not be loaded ({type(err).__name__}: {detail}).") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
