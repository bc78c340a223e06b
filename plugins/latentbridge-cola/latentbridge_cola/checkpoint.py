"""Reading a Cola DLM release from a local directory: where its parts are, their configs, their weights.

The release (Hugging Face `ByteDance-Seed/Cola-DLM`, or the reference repository's `hf_models/`) is laid out as

    ROOT/cola_dlm/cola_vae/{config.json, model.safetensors}    the Text VAE
    ROOT/cola_dlm/cola_dit/{config.json, model.safetensors}    the block-causal DiT prior
    ROOT/tokenizer.json                                         the OLMo 2 tokenizer

(`cola_vae/` and `cola_dit/` may also sit directly in ROOT, and tokenizer.json beside them). Weights are loaded with a
strict key map: every tensor of the file must land on a parameter or buffer of the same shape, and every parameter of
the module must be in the file — anything else is one line naming the file, the key and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from latentbridge.errors import CheckpointError, ConfigError

PARTS = {"vae": "cola_vae", "dit": "cola_dit"}
MODEL_TYPES = {"vae": "cola_text_vae", "dit": "cola_dit"}


def part_directory(path: str, part: str) -> Path:
    """The directory of one part (`vae` or `dit`) of a release at `path` (the release root, or the part's own directory)."""
    if not path:
        raise ConfigError(f"cola: config.path is empty; name the directory of the Cola DLM release (the one holding "
                          f"cola_dlm/{PARTS[part]}/ or {PARTS[part]}/).")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"cola: {root} is not a directory. Download the release on a machine with internet (docs/cola.md) and "
                          "give its local path.")
    for candidate in (root, root / PARTS[part], root / "cola_dlm" / PARTS[part]):
        if (candidate / "config.json").is_file() and candidate.name == PARTS[part]:
            return candidate
    if (root / "config.json").is_file():  # the part's own directory under another name
        return root
    raise CheckpointError(f"cola: {root} holds no {PARTS[part]}/config.json (looked in {root}, {root / PARTS[part]} and "
                          f"{root / 'cola_dlm' / PARTS[part]}). Point config.path at the release root.")


def read_config(directory: Path, part: str) -> dict[str, Any]:
    """config.json of a part, checked to be that part's architecture."""
    file = directory / "config.json"
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: cannot be read as JSON ({type(err).__name__}: {err}).") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: holds {type(data).__name__}, not a model config.")
    found = data.get("model_type")
    if found != MODEL_TYPES[part]:
        raise CheckpointError(f"{file}: model_type is {found!r}, expected {MODEL_TYPES[part]!r} (the Cola "
                              f"{'Text VAE' if part == 'vae' else 'DiT'}); this directory holds another architecture.")
    return data


def known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The entries of a config.json that name fields of the architecture dataclass `cls` (the rest is transformers' own)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in known}


def weights_file(directory: Path) -> Path:
    file = directory / "model.safetensors"
    if not file.is_file():
        sharded = sorted(directory.glob("model-*.safetensors"))
        if sharded:
            return directory
        raise CheckpointError(f"{directory}: model.safetensors is missing (the weights of this part); download it again.")
    return file


def load_strict(module: nn.Module, directory: Path, new_keys: tuple[str, ...] = ()) -> None:
    """Load the part's safetensors into `module` by name (the module's names are the release's).

    Refused with one line: a key the module does not have, a parameter the file lacks (other than `new_keys`, tensors
    the module adds to the release and initialises itself), a shape that differs.
    """
    source = weights_file(directory)
    files = [source] if source.is_file() else sorted(source.glob("model-*.safetensors"))
    own = module.state_dict()
    seen: set[str] = set()
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    name = key
                    if name not in own:
                        raise CheckpointError(f"{file}: key '{key}' is not part of this architecture (no parameter or buffer of "
                                              "that name); the file is of another model or version.")
                    tensor = f.get_tensor(key)
                    if tuple(tensor.shape) != tuple(own[name].shape):
                        raise CheckpointError(f"{file}: '{key}' has shape {tuple(tensor.shape)}, expected {tuple(own[name].shape)} "
                                              f"from {directory / 'config.json'}; the weights and the config disagree.")
                    with torch.no_grad():
                        own[name].copy_(tensor.to(own[name].dtype))
                    seen.add(name)
        except SafetensorError as err:
            raise CheckpointError(f"{file}: not a readable safetensors file ({err}); download it again.") from None
    missing = [k for k in own if k not in seen and k not in new_keys]
    if missing:
        raise CheckpointError(f"{directory}: the weights lack {len(missing)} tensor(s) of this architecture, e.g. '{missing[0]}'; "
                              "the file is incomplete or of another configuration.")

