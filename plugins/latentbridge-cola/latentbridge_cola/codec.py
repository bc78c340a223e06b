"""The `cola-vae` codec: the released Cola Text VAE behind latentbridge's codec contract.

Latents are the release's own prior units: the posterior mean shifted and scaled by the config's `shifting_factor` and
`scaling_factor` ((mean - shift) * scale), and the decoder reads those units directly, as the release's generation
does. So latentbridge's LatentStats stay identity and the codec publishes its stats (training never refits them).

An item is a text; it is tokenized with the release's tokenizer.json, ends with the end-of-text token (training items)
and is padded with the pad token to whole blocks of `block_size * patch_size` tokens before encoding, as the release
pads its prompts (the encoder sees the padding inside the last block, bidirectionally). Generation decodes each block
with the decoder's KV cache and picks tokens greedily with the release's repetition penalty.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from latentbridge.codecs import Codec, Latents, LatentSpec, Posterior
from latentbridge.codecs.base import DecodeStream, read_text_lines, write_text_lines
from latentbridge.errors import CheckpointError, ConfigError

from latentbridge_cola.checkpoint import load_strict, part_directory, read_config
from latentbridge_cola.vae import ColaTextVAEModule, VAEArch

SAVED = "cola"  # inside a saved latentbridge codec directory: the release's config.json and tokenizer.json


@dataclasses.dataclass
class ColaVAEConfig:
    """Options of the `cola-vae` codec."""

    path: str = ""
    """The Cola DLM release directory (holding cola_dlm/cola_vae/ or cola_vae/), or the cola_vae directory itself."""
    tokenizer: str = ""
    """tokenizer.json of the release; empty: looked for in the release directory and its parents."""
    load_weights: bool = True
    """Load the released weights (strict key map); false: the release's architecture, freshly initialised."""
    pad_token_id: int | None = None
    """Token that pads a text to whole blocks; null: the tokenizer's `<|pad|>` (100277 in the release)."""
    eos_token_id: int | None = None
    """End-of-text token; null: the tokenizer's `<|endoftext|>` (100257 in the release)."""
    end_marker: bool = True
    """Append the end-of-text token to training items and end a generated item at it; false: items end by length only."""
    max_tokens: int = 256
    """Latent tokens per item at most (training items are cut to it; generation stops there)."""
    repetition_penalty: float = 1.1
    """Greedy decoding during generation divides (multiplies, if negative) the logits of tokens already decoded by this,
    as the release's generation does by default; 1: plain argmax."""
    kl_weight: float = 1e-4
    """Weight of KL(q(z|x) || N(0, I)) in the codec's loss (joint-stage training), beside token cross-entropy."""


def _find_tokenizer(directory: Path) -> Path:
    for candidate in (directory / "tokenizer.json", directory.parent / "tokenizer.json", directory.parent.parent / "tokenizer.json"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"cola-vae: no tokenizer.json in {directory}, {directory.parent} or {directory.parent.parent}; "
                          "set config.tokenizer to the release's tokenizer.json.")


class ColaVAE(Codec):
    """The Cola DLM Text VAE (release weights by name)."""

    name = "cola-vae"
    modality = "text"
    config_class = ColaVAEConfig

    def __init__(self, config: ColaVAEConfig | dict | None = None, *, files: Path | None = None) -> None:
        from tokenizers import Tokenizer

        if isinstance(config, dict) or config is None:
            from latentbridge.typedconfig import from_dict
            config = from_dict(ColaVAEConfig, config or {}, path="config")
        if files is not None:  # a saved latentbridge codec: the release's files travel with it
            directory, tok_file = files, files / "tokenizer.json"
        else:
            directory = part_directory(config.path, "vae")
            tok_file = Path(config.tokenizer).expanduser() if config.tokenizer else _find_tokenizer(directory)
        if not tok_file.is_file():
            raise CheckpointError(f"cola-vae: tokenizer {tok_file} is not a file; set config.tokenizer to the release's tokenizer.json.")
        arch = VAEArch.from_json(read_config(directory, "vae"), str(directory / "config.json"))
        object.__setattr__(self, "arch", arch)
        super().__init__(config)
        self.source, self.tokenizer_file = directory, tok_file
        self.tokenizer = Tokenizer.from_file(str(tok_file))
        self.model = ColaTextVAEModule(arch)
        if files is None and config.load_weights:
            load_strict(self.model, directory)
        self.pad_id = self._special(config.pad_token_id, "<|pad|>", "pad_token_id")
        self.eos_id = self._special(config.eos_token_id, "<|endoftext|>", "eos_token_id") if config.end_marker else None
        if self.tokenizer.get_vocab_size() > arch.vocab_size + 1:
            raise CheckpointError(f"cola-vae: {tok_file} has {self.tokenizer.get_vocab_size()} tokens but the VAE's vocabulary is "
                                  f"{arch.vocab_size}; the tokenizer belongs to another model.")

    def _special(self, given: int | None, token: str, key: str) -> int:
        found = self.tokenizer.token_to_id(token) if given is None else given
        if found is None:
            raise ConfigError(f"cola-vae: {self.tokenizer_file} has no {token} token; set config.{key} to the id to use.")
        if not 0 <= found <= self.arch.vocab_size:
            raise ConfigError(f"cola-vae: config.{key} {found} is outside the VAE's vocabulary (0..{self.arch.vocab_size}).")
        return int(found)

    @property
    def ships_weights(self) -> bool:
        return bool(self.config.load_weights)

    @property
    def publishes_stats(self) -> bool:
        return True

    @property
    def latent_spec(self) -> LatentSpec:
        return LatentSpec(dim=self.arch.latent_dim, block_size=self.arch.block_size, end="marker", max_tokens=self.config.max_tokens)

    # ---- items -----------------------------------------------------------------------------------------

    def token_ids(self, text: Any, eos: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise ConfigError(f"codec 'cola-vae' takes texts (str), got {type(text).__name__}.")
        ids = self.tokenizer.encode(text).ids
        if eos and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids[: self.config.max_tokens * self.arch.patch_size]

    def num_tokens(self, item: Any) -> int:
        return max(1, math.ceil(len(self.token_ids(item)) / self.arch.patch_size))

    def _batch(self, id_lists: list[list[int]]) -> dict[str, Tensor]:
        chunk = self.arch.block_size * self.arch.patch_size
        width = max(1, max((math.ceil(len(ids) / chunk) * chunk for ids in id_lists), default=chunk))
        ids = torch.full((len(id_lists), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(id_lists):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        tokens = torch.tensor([len(r) for r in id_lists], dtype=torch.long)
        return {"ids": ids, "tokens": tokens, "lengths": (tokens + self.arch.patch_size - 1) // self.arch.patch_size}

    def collate(self, items: Sequence[Any]) -> dict[str, Tensor]:
        return self._batch([self.token_ids(x) for x in items])

    def write_items(self, items: Sequence[Any], directory, names: Sequence[str] | None = None) -> list[Path]:
        """The texts in items.txt, one a line (latentbridge.codecs.base.write_text_lines)."""
        return write_text_lines(items, directory, names)

    def read_items(self, paths: Sequence[Any]) -> list[str]:
        """Every non-empty line of the text files is one item."""
        return read_text_lines(paths)

    def example_items(self, n: int, generator: torch.Generator) -> list[str]:
        words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "blue", "sky"]
        picks = torch.randint(0, len(words), (n, 8), generator=generator)
        sizes = torch.randint(1, 9, (n,), generator=generator)
        return [" ".join(words[int(j)] for j in picks[i, : int(sizes[i])]) for i in range(n)]

    # ---- encode / decode -------------------------------------------------------------------------------

    def raw_encode(self, batch: dict[str, Tensor]) -> Posterior:
        dev = self.device
        ids = batch["ids"].to(dev)
        whole = torch.full((ids.shape[0],), ids.shape[1] // self.arch.patch_size, dtype=torch.long, device=dev)
        mean, logvar = self.model.encode(ids, whole)  # padding inside an item's last block is seen, as the release encodes
        a = self.arch
        mean = (mean - a.shifting_factor) * a.scaling_factor  # the release's prior units
        if logvar is not None:
            logvar = logvar + 2 * math.log(abs(a.scaling_factor))
        return Posterior(mean, batch["lengths"].to(dev).clamp_min(1), logvar)

    def encode_prompt(self, items: Sequence[Any]) -> Latents:
        """Prompts without an end token, padded to whole blocks and encoded as the release does; each keeps the latents
        that hold prompt tokens (its partial last block is then generated with those pinned)."""
        batch = self._batch([self.token_ids(x, eos=False) for x in items])
        post = self.raw_encode(batch)
        mask = post.mask()
        return Latents(self.name, post.mean * mask[..., None].to(post.mean.dtype), batch["lengths"].to(self.device))

    def tokens_to_text(self, ids: Sequence[int]) -> str:
        keep = [i for i in ids if i != self.pad_id]
        return self.tokenizer.decode(keep, skip_special_tokens=True)

    def _cut(self, ids: list[int]) -> list[int]:
        eos = self.eos_id
        return ids[: ids.index(eos)] if eos is not None and eos in ids else ids

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[str]:
        logits = self.model.decode(z.to(self.device, self.dtype), lengths.to(self.device))
        ids = logits.argmax(-1).cpu()
        p = self.arch.patch_size
        return [self.tokens_to_text(self._cut(ids[i, : int(lengths[i]) * p].tolist())) for i in range(z.shape[0])]

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        post = self.raw_encode(batch)
        z = post.sample()
        logits = self.model.decode(z, post.lengths)  # [B, N*p, V]
        ids = batch["ids"].to(self.device)[:, : logits.shape[1]]
        valid = torch.arange(ids.shape[1], device=ids.device)[None] < batch["tokens"].to(ids.device)[:, None]
        ce = F.cross_entropy(logits[valid].float(), ids[valid])
        kl = post.kl()[post.mask()].mean()
        return {"loss": ce + self.config.kl_weight * kl, "ce": ce.detach(), "kl": kl.detach()}

    # ---- generation --------------------------------------------------------------------------------------

    def decoder_stream(self, prefix: Latents) -> ColaDecodeStream:
        return ColaDecodeStream(self, prefix)

    # ---- save / load: the release's config and tokenizer travel with the weights ---------------------------

    def save_extra(self, directory: Path) -> None:
        (directory / SAVED).mkdir()
        shutil.copyfile(self.source / "config.json", directory / SAVED / "config.json")
        shutil.copyfile(self.tokenizer_file, directory / SAVED / "tokenizer.json")

    @classmethod
    def build_for_directory(cls, config: ColaVAEConfig, directory: Path) -> ColaVAE:
        if not (directory / SAVED / "config.json").is_file():
            raise CheckpointError(f"{directory}: the saved cola-vae codec has no {SAVED}/config.json; re-save the codec.")
        return cls(config, files=directory / SAVED)


class ColaDecodeStream(DecodeStream):
    """Block-by-block decoding with the decoder's KV cache, as the release generates: the prompt's whole blocks are
    decoded once into the cache; each pushed block is decoded attending to it and joins it; tokens are the argmax after
    the repetition penalty over every token decoded in earlier blocks; an item ends at its first end-of-text token."""

    def __init__(self, codec: ColaVAE, prefix: Latents) -> None:
        self.codec = codec
        bs, dev = codec.arch.block_size, codec.device
        lengths = prefix.lengths.to(dev)
        full = lengths // bs * bs
        self.pins = (lengths - full).cpu()
        s = len(prefix)
        self.count = full.clone()
        self.cache, self.cache_pos, self.cache_valid = None, None, None
        if s and int(full.max()) > 0:
            n = int(full.max())
            pos = torch.arange(n, device=dev).expand(s, n)
            valid = pos < full[:, None]
            with torch.no_grad():
                _, self.cache = codec.model.decode_step(prefix.values[:, :n].to(dev, codec.dtype), pos, valid, None, None, None)
            self.cache_pos, self.cache_valid = pos, valid
        self.context: list[list[int]] = [[] for _ in range(s)]  # every token decoded so far (the penalty's history)
        self.tokens: list[list[int]] = [[] for _ in range(s)]  # the continuation, pinned positions left out
        self.ended = torch.zeros(s, dtype=torch.bool)

    @torch.no_grad()
    def push(self, block: Tensor) -> Tensor:
        codec, p = self.codec, self.codec.arch.patch_size
        s, k, _ = block.shape
        dev = codec.device
        pos = self.count[:, None] + torch.arange(k, device=dev)[None]
        valid = torch.ones(s, k, dtype=torch.bool, device=dev)
        logits, self.cache = codec.model.decode_step(block.to(dev, codec.dtype), pos, valid, self.cache, self.cache_pos, self.cache_valid)
        self.cache_pos = pos if self.cache_pos is None else torch.cat([self.cache_pos, pos], 1)
        self.cache_valid = valid if self.cache_valid is None else torch.cat([self.cache_valid, valid], 1)
        self.count += k
        logits = logits.float()
        penalty = codec.config.repetition_penalty
        for i in range(s):
            row = logits[i]  # [K*p, V]
            if penalty != 1.0 and self.context[i]:
                seen = torch.tensor(sorted(set(self.context[i])), device=row.device)
                score = row[:, seen]
                row[:, seen] = torch.where(score < 0, score * penalty, score / penalty)
            ids = row.argmax(-1).tolist()
            self.context[i] += ids
            if self.ended[i]:
                continue
            new = ids[int(self.pins[i]) * p:]
            eos = codec.eos_id
            if eos is not None and eos in new:
                new = new[: new.index(eos)]
                self.ended[i] = True
            self.tokens[i] += new
        self.pins = torch.zeros_like(self.pins)
        return self.ended.clone()

    def items(self) -> list[str]:
        return [self.codec.tokens_to_text(t) for t in self.tokens]
