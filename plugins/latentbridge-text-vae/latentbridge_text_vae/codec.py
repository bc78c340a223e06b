"""The Text VAE: text <-> continuous latents, in the style of Cola DLM (COLA_DLM.md, "Text VAE").

    tokens ──embed──> encoder (block-causal: one block = the p tokens of one latent)
           ──concat the p token states──> mean (LayerNorm without affine over D) and clamped log-variance
    latents ──> decoder (block-causal over latents: one block = one prior block, full attention inside)
           ──> p token states per latent ──> logits of every token of a block at once (no token fed back)

Loss: token cross-entropy + beta * KL(q(z|x) || N(0, I)) + lambda * masked-token cross-entropy. A
fraction of the encoder's input tokens become [MASK]; the decoder must still produce the originals,
which keeps the latent informative instead of letting the decoder memorise surface text.

Every text ends with [EOS] (padded with [PAD] to a whole latent); generation stops when a decoded
block holds [EOS].

Prompts that end inside a latent (p > 1). Cola DLM's 2-tokens-per-latent model collapsed on
odd-length prompts because the prompt boundary fell inside a latent. Here a text may start at any
*phase*: 0..p-1 [PAD] tokens are put before it, so latent boundaries can fall after any token.
Training draws the phase at random for every text (`augment`, applied in the codec stage and the prior
stage alike), so encoder, decoder and prior all know every alignment. A prompt is encoded with the
phase that makes it end exactly on a latent boundary (`encode_prompt`: phase = -len(prompt) mod p) and
without [EOS]; the continuation then starts at a fresh latent, whatever the prompt's length.

Dimensions: B texts, T tokens (a multiple of p), N = T / p latents, D latent channels, W width,
V vocabulary, p tokens per latent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from latentbridge.codecs import Codec, Latents, LatentSpec, Posterior
from latentbridge.codecs.base import DecodeStream, read_text_lines, write_text_lines
from latentbridge.errors import CheckpointError, CodecOutputError

from latentbridge_text_vae.layers import KV, Transformer, block_mask
from latentbridge_text_vae.tokenizer import load_tokenizer

TOKENIZER_DIR = "tokenizer"


@dataclasses.dataclass
class TextItem:
    """A text plus how it sits on the latent grid."""

    text: str
    phase: int = 0
    """[PAD] tokens before the text (0..p-1): where latent boundaries fall."""
    end: bool = True
    """Append [EOS] (a whole text); False for a prompt that generation continues."""
    ids: list[int] | None = None
    """Token ids to use instead of tokenizing `text` (a prompt cut to its last tokens)."""


@dataclasses.dataclass
class TextVAEConfig:
    """Options of the `text-vae` codec."""

    tokenizer: str | None = None
    """Hugging Face tokenizer directory on disk; null: the plugin's bundled BPE (4096 tokens, trained on WordNet + fortunes)."""
    latent_dim: int = 16
    """Latent channels D per latent (Cola DLM: 16)."""
    tokens_per_latent: int = 1
    """Tokens per latent p: 1, 2 or 4."""
    block_size: int = 16
    """Latents per prior block (Cola DLM: 16); the decoder is block-causal over the same blocks."""
    max_tokens: int = 64
    """Longest text in tokens, [EOS] and phase padding included (a multiple of p); longer texts are cut."""
    fill_block: bool = False
    """Repeat [EOS] after a text up to a whole prior block (block_size latents), so every block the prior trains on
    is full and a generated last block has no positions it never saw (use it for short texts such as captions;
    max_tokens must then be a multiple of block_size * p)."""
    width: int = 256
    """Transformer width W of encoder and decoder."""
    heads: int = 4
    """Attention heads."""
    encoder_layers: int = 4
    """Encoder depth (Cola DLM: 4)."""
    decoder_layers: int = 4
    """Decoder depth (Cola DLM: 4)."""
    mlp_ratio: float = 4.0
    """MLP hidden width / W."""
    logvar_min: float = -9.0
    """Lower clamp of the learned posterior log-variance."""
    logvar_max: float = 0.0
    """Upper clamp of the learned posterior log-variance."""
    logvar_init: float = -4.5
    """Initial log-variance (Cola DLM's learned noise settled near logSNR 4.5)."""
    beta: float = 1e-3
    """Weight of KL(q(z|x) || N(0, I)), in nats per latent."""
    mask_rate: float = 0.15
    """Fraction of encoder input tokens replaced by [MASK] in the loss."""
    mask_weight: float = 1.0
    """lambda: weight of the cross-entropy on masked positions."""

    def __post_init__(self) -> None:
        p = self.tokens_per_latent
        if p not in (1, 2, 4):
            raise ValueError(f"tokens_per_latent must be 1, 2 or 4, got {p}")
        if self.max_tokens % p or self.max_tokens < 2 * p:
            raise ValueError(f"max_tokens ({self.max_tokens}) must be a multiple of tokens_per_latent ({p}) and at least {2 * p}")
        if not 0.0 <= self.mask_rate < 1.0:
            raise ValueError(f"mask_rate must lie in [0, 1), got {self.mask_rate}")
        if self.fill_block and self.max_tokens % (p * self.block_size):
            raise ValueError(f"fill_block: max_tokens ({self.max_tokens}) must be a multiple of block_size * tokens_per_latent "
                             f"({self.block_size * p})")


_WORDS = ("the a of to and in is that it for on with as was at by an be this from or have not are but one all "
          "time light water small large plant animal person act state quality make give take move old new good "
          "long cold word people house night tree river stone music colour number").split()


class TextVAE(Codec):
    """Cola DLM-style Text VAE: block-causal encoder, non-autoregressive block-causal decoder."""

    name = "text-vae"
    modality = "text"
    config_class = TextVAEConfig

    def __init__(self, config: TextVAEConfig | dict | None = None, *, tokenizer_dir: str | None = None) -> None:
        super().__init__(config)
        c = self.config
        self.tokenizer = load_tokenizer(tokenizer_dir or c.tokenizer)
        tok = self.tokenizer
        self.pad_id, self.eos_id, self.mask_id = tok.pad_token_id, tok.eos_token_id, tok.mask_token_id
        vocab, w, p = len(tok), c.width, c.tokens_per_latent
        self.embed = nn.Embedding(vocab, w)
        self.encoder = Transformer(w, c.encoder_layers, c.heads, c.mlp_ratio)
        self.to_posterior = nn.Linear(p * w, 2 * c.latent_dim)
        self.from_latent = nn.Linear(c.latent_dim, w)
        self.decoder = Transformer(w, c.decoder_layers, c.heads, c.mlp_ratio)
        self.to_tokens = nn.Linear(w, p * w)
        self.token_norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, vocab)
        nn.init.normal_(self.embed.weight, std=0.02)
        with torch.no_grad():
            self.to_posterior.bias[c.latent_dim:].fill_(c.logvar_init)

    @property
    def latent_spec(self) -> LatentSpec:
        c = self.config
        return LatentSpec(dim=c.latent_dim, block_size=c.block_size, tokens_per_item=None, end="marker",
                          max_tokens=c.max_tokens // c.tokens_per_latent)

    # ---- items <-> token grids ------------------------------------------------------------------------

    def _item(self, item: Any) -> TextItem:
        if isinstance(item, str):
            return TextItem(item)
        if isinstance(item, TextItem):
            if not 0 <= item.phase < self.config.tokens_per_latent:
                raise CodecOutputError(f"codec 'text-vae': TextItem.phase must lie in [0, {self.config.tokens_per_latent}), got {item.phase}")
            return item
        raise CodecOutputError(f"codec 'text-vae' encodes str or TextItem items, got {type(item).__name__}")

    def token_ids(self, item: Any) -> list[int]:
        """The token grid of one item: phase [PAD]s, text tokens, [EOS], [PAD]s to a whole latent.

        A text longer than max_tokens is cut there *without* [EOS]: it does not end where it is cut, so the
        prior must not learn that it does."""
        it, c = self._item(item), self.config
        p = c.tokens_per_latent
        ids = list(it.ids) if it.ids is not None else self.tokenizer(it.text, add_special_tokens=False)["input_ids"]
        ids = [self.pad_id] * it.phase + ids
        ended = it.end and len(ids) < c.max_tokens
        if ended:
            ids = ids + [self.eos_id]
        ids = ids[: c.max_tokens]
        if not ids:
            raise CodecOutputError("codec 'text-vae': an empty prompt has no latents; give at least one token of text")
        if ended and c.fill_block:
            return ids + [self.eos_id] * (-len(ids) % (p * c.block_size))
        return ids + [self.pad_id] * (-len(ids) % p)

    def num_tokens(self, item: Any) -> int:
        return len(self.token_ids(item)) // self.config.tokens_per_latent

    def write_items(self, items: Sequence[Any], directory, names: Sequence[str] | None = None) -> list[Path]:
        """The texts in items.txt, one a line (latentbridge.codecs.base.write_text_lines)."""
        return write_text_lines(items, directory, names)

    def read_items(self, paths: Sequence[Any]) -> list[str]:
        """Every non-empty line of the text files is one item."""
        return read_text_lines(paths)

    def collate(self, items: Sequence[Any]) -> dict[str, Tensor]:
        grids = [self.token_ids(x) for x in items]
        p = self.config.tokens_per_latent
        t = max(len(g) for g in grids)
        tokens = torch.full((len(grids), t), self.pad_id, dtype=torch.long)
        scored = torch.zeros(len(grids), t, dtype=torch.bool)
        for i, g in enumerate(grids):
            tokens[i, : len(g)] = torch.tensor(g)
            scored[i, : len(g)] = tokens[i, : len(g)] != self.pad_id  # text and [EOS], not padding
        lengths = torch.tensor([len(g) // p for g in grids], dtype=torch.long)
        return {"tokens": tokens, "scored": scored, "lengths": lengths}

    @property
    def augments(self) -> bool:
        return self.config.tokens_per_latent > 1

    def augment(self, items: Sequence[Any], generator: torch.Generator) -> list[Any]:
        """A random phase per text (p > 1), so every alignment of text to latents is seen in training."""
        p = self.config.tokens_per_latent
        if p == 1:
            return list(items)
        phases = torch.randint(0, p, (len(items),), generator=generator).tolist()
        out = []
        for item, phase in zip(items, phases):
            it = self._item(item)
            out.append(TextItem(it.text, phase, it.end, it.ids))
        return out

    def encode_prompt(self, items: Sequence[Any]) -> Latents:
        """Prompts aligned to end on a latent boundary (phase = -len mod p), without [EOS].

        A prompt keeps at most its last max_tokens - p tokens (the continuation must follow the prompt's end, and
        start inside the length the codec was trained on); a longer one is cut at its start, with a warning."""
        p = self.config.tokens_per_latent
        limit = self.config.max_tokens - p
        aligned, cut = [], []
        for i, item in enumerate(items):
            text = self._item(item).text
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                cut.append((i, len(ids)))
                ids = ids[-limit:]
            aligned.append(TextItem(text, phase=-len(ids) % p, end=False, ids=ids))
        if cut:
            shown = ", ".join(f"#{i} ({n} tokens)" for i, n in cut[:5]) + (" ..." if len(cut) > 5 else "")
            warnings.warn(f"text-vae: {len(cut)} prompt(s) longer than {limit} tokens keep only their last {limit} "
                          f"(max_tokens {self.config.max_tokens} - tokens_per_latent {p}): {shown}. Train the codec with "
                          "a larger max_tokens to keep more context.", stacklevel=2)
        return self.encode_items(aligned)

    # ---- encoder / decoder -----------------------------------------------------------------------------

    def _posterior(self, tokens: Tensor, lengths: Tensor) -> Posterior:
        c, p = self.config, self.config.tokens_per_latent
        b, t = tokens.shape
        idx = torch.arange(t, device=tokens.device).expand(b, t)
        group = idx // p
        valid = group < lengths[:, None].to(tokens.device)
        h, _ = self.encoder(self.embed(tokens), idx, block_mask(group, group, valid))
        stats = self.to_posterior(rearrange(h, "b (n p) w -> b n (p w)", p=p))  # [B, N, 2D]
        mean, logvar = stats.chunk(2, dim=-1)
        mean = F.layer_norm(mean, (c.latent_dim,))
        logvar = logvar.clamp(c.logvar_min, c.logvar_max)
        return Posterior(mean=mean, logvar=logvar, lengths=lengths.to(mean.device))

    def raw_encode(self, batch: dict[str, Tensor]) -> Posterior:
        return self._posterior(batch["tokens"].to(self.embed.weight.device), batch["lengths"])

    def _decode_states(self, z: Tensor, pos: Tensor, valid: Tensor, past: list[KV] | None = None,
                       past_valid: Tensor | None = None) -> tuple[Tensor, list[KV]]:
        """Raw latents z [B, N, D] at positions pos [B, N] -> token states [B, N*p, W] (and the layers' KV)."""
        bs = self.config.block_size
        block = pos // bs
        if past is None:
            mask = block_mask(block, block, valid)
        else:  # cached keys are all from earlier blocks: visible where valid
            new = block_mask(block, block, valid)
            mask = torch.cat([past_valid[:, None, None, :].expand(-1, 1, z.shape[1], -1), new], dim=-1)
        h, kvs = self.decoder(self.from_latent(z.to(self.from_latent.weight.dtype)), pos, mask, past)
        states = rearrange(self.to_tokens(h), "b n (p w) -> b (n p) w", p=self.config.tokens_per_latent)
        return self.token_norm(states), kvs

    def states(self, z: Tensor, lengths: Tensor) -> Tensor:
        """Raw latents [B, N, D] -> decoder token states [B, N*p, W], all tokens at once."""
        b, n, _ = z.shape
        pos = torch.arange(n, device=z.device).expand(b, n)
        return self._decode_states(z, pos, pos < lengths[:, None].to(z.device))[0]

    def logits(self, z: Tensor, lengths: Tensor) -> Tensor:
        """Raw latents [B, N, D] -> token logits [B, N*p, V], all tokens at once."""
        return self.head(self.states(z, lengths))

    def tokens_to_text(self, ids: Sequence[int]) -> str:
        """Decoded token ids -> text: drop [PAD]s, stop at the first [EOS]."""
        out = []
        for i in ids:
            if i == self.eos_id:
                break
            if i != self.pad_id:
                out.append(i)
        return self.tokenizer.decode(out, skip_special_tokens=True)

    def raw_decode(self, z: Tensor, lengths: Tensor) -> list[str]:
        ids = self.logits(z, lengths).argmax(-1)  # [B, N*p]
        p = self.config.tokens_per_latent
        return [self.tokens_to_text(row[: int(n) * p].tolist()) for row, n in zip(ids, lengths)]

    # ---- training loss ---------------------------------------------------------------------------------

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        c = self.config
        dev = self.embed.weight.device
        tokens, scored, lengths = batch["tokens"].to(dev), batch["scored"].to(dev), batch["lengths"].to(dev)
        masked = (torch.rand(tokens.shape, device=dev) < c.mask_rate) & scored
        post = self._posterior(torch.where(masked, self.mask_id, tokens), lengths)
        states = self.states(post.sample(), lengths)  # [B, T, W]
        valid = torch.arange(tokens.shape[1], device=dev)[None] < (lengths * c.tokens_per_latent)[:, None]
        ce = F.cross_entropy(self.head(states[valid]).float(), tokens[valid], reduction="none")  # [M] valid tokens only
        hidden = masked[valid]
        reconstruction = (ce * ~hidden).sum() / (~hidden).sum().clamp_min(1)
        masked_ce = (ce * hidden).sum() / hidden.sum().clamp_min(1)
        kl = post.kl().sum() / lengths.sum()
        loss = reconstruction + c.mask_weight * masked_ce + c.beta * kl
        return {"loss": loss, "reconstruction": reconstruction, "masked": masked_ce, "kl": kl}

    # ---- diagnostics ------------------------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct_tokens(self, batch: dict[str, Tensor], t: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
        """Argmax tokens [B, T] decoded from the posterior mean, noised to flow time t in normalized units:
        z_t = (1 - t) z + t * noise, what the prior's path does to a latent."""
        post = self.raw_encode(batch)
        z = self.stats.normalize(post.mean)
        if t > 0:
            noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
            z = (1 - t) * z + t * noise
        return self.logits(self.stats.denormalize(z), post.lengths).argmax(-1)

    @torch.no_grad()
    def diagnostics(self, batch: dict[str, Tensor], noise_levels: Sequence[float] = (0.1, 0.25)) -> dict[str, float]:
        """Token and exact-sequence reconstruction, the same under latent noise, rate per latent and token."""
        out = super().diagnostics(batch)
        out["rate_nats_per_token"] = out["rate_nats_per_latent"] / self.config.tokens_per_latent
        tokens, scored = batch["tokens"].to(self.device), batch["scored"].to(self.device)
        gen = torch.Generator().manual_seed(0)
        for t in (0.0, *noise_levels):
            right = (self.reconstruct_tokens(batch, t, gen) == tokens) | ~scored
            suffix = "" if t == 0 else f"_t{t:g}"
            out[f"token_accuracy{suffix}"] = float(right[scored].float().mean()) if scored.any() else 1.0
            out[f"sequence_accuracy{suffix}"] = float(right.all(dim=1).float().mean())
        return out

    @torch.no_grad()
    def prompt_diagnostics(self, texts: Sequence[str], generator: torch.Generator) -> dict[str, float]:
        """Odd- vs even-length prompts: reconstruction on the latent grid a prompt imposes, and prompt latents.

        Each text is cut after k tokens (k uniform in 1..n-1). Its prompt is encoded as encode_prompt does
        (phase -k mod p, no [EOS]); the whole text is encoded at that same phase. Because the encoder
        is block-causal per latent, the prompt's latents must equal the first latents of the whole
        text (`prompt_latent_max_diff`, over `prompt_latents_compared` prompts whose tokens start the whole
        text's), so the prior continues from latents it was trained on. The
        whole text's tokens are then decoded and scored, split by the parity of k: with p > 1 an odd
        k is what made Cola DLM's 2-token model collapse.
        """
        p = self.config.tokens_per_latent
        prompts, wholes, parity = [], [], []  # prompts: as encode_prompt aligns them
        for text in texts:
            full = self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.config.max_tokens - p]
            if len(full) < 2:
                continue
            k = int(torch.randint(1, len(full), (1,), generator=generator))
            prompt = self.tokenizer.decode(full[:k])
            n = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
            prompts.append(TextItem(prompt, phase=-n % p, end=False))
            wholes.append(TextItem(self.tokenizer.decode(full), phase=-n % p))
            parity.append(n % 2)
        prompt_batch = self.collate(prompts)
        prompt_latents = self.encode(prompt_batch)
        batch = self.collate(wholes)
        whole = self.encode(batch)
        diff, compared = 0.0, 0
        for a, b, pt, wt in zip(prompt_latents.unbind(), whole.unbind(), prompt_batch["tokens"], batch["tokens"]):
            m = len(a) * p
            if torch.equal(pt[:m], wt[:m]):  # the prompt tokenizes as the start of the whole text (BPE may merge across the cut)
                diff = max(diff, float((a - b[: len(a)]).abs().max()))
                compared += 1
        pred = self.logits(self.stats.denormalize(whole.values), whole.lengths).argmax(-1).cpu()
        right = (pred == batch["tokens"]) | ~batch["scored"]
        out: dict[str, float] = {"prompt_latent_max_diff": diff, "prompt_latents_compared": compared}
        par = torch.tensor(parity)
        for name, sel in (("odd", par == 1), ("even", par == 0)):
            scored = batch["scored"][sel]
            out[f"token_accuracy_{name}_prompts"] = float(right[sel][scored].float().mean()) if scored.any() else float("nan")
            out[f"prompts_{name}"] = int(sel.sum())
        return out

    def example_items(self, n: int, generator: torch.Generator) -> list[str]:
        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=generator)))
        return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 12))) for _ in range(n)]

    # ---- generation ---------------------------------------------------------------------------------------

    def decoder_stream(self, prefix: Latents) -> TextDecodeStream:
        return TextDecodeStream(self, prefix)

    # ---- save / load: the tokenizer travels with the weights ------------------------------------------------

    def save_extra(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))

    @classmethod
    def build_for_directory(cls, config: TextVAEConfig, directory: Path) -> TextVAE:
        saved = directory / TOKENIZER_DIR
        if not saved.is_dir():
            raise CheckpointError(f"{directory}: the saved Text VAE has no {TOKENIZER_DIR}/ directory; the save is incomplete — re-save the codec.")
        return cls(config, tokenizer_dir=str(saved))

    def fingerprint(self) -> str:
        """The base fingerprint combined with the tokenizer's vocabulary (the same ids must mean the same text)."""
        vocab = json.dumps(sorted(self.tokenizer.get_vocab().items()))
        return hashlib.sha256((super().fingerprint() + vocab).encode()).hexdigest()[:16]


class TextDecodeStream(DecodeStream):
    """Block-by-block decoding with the decoder's own KV cache; an item ends at its first [EOS].

    The prefix's full blocks are decoded once into the cache; each pushed block (all S samples) runs
    the decoder over that block only, attending to the cache, then joins the cache. Samples' prefixes
    may differ in length: the cache is padded and carries a key-valid mask.
    """

    def __init__(self, codec: TextVAE, prefix: Latents) -> None:
        self.codec = codec
        bs, dev = codec.config.block_size, codec.device
        lengths = prefix.lengths.to(dev)
        full = lengths // bs * bs  # [S] prefix latents in full blocks
        self.pins = (lengths - full).cpu()
        s = len(prefix)
        self.count = full.clone()  # [S] latents in the cache, per sample
        self.past: list[KV] | None = None
        self.past_valid = torch.zeros(s, 0, dtype=torch.bool, device=dev)
        if int(full.max()) > 0:
            n = int(full.max())
            z = codec.stats.denormalize(prefix.values[:, :n].to(dev, codec.dtype))
            pos = torch.arange(n, device=dev).expand(s, n)
            valid = pos < full[:, None]
            with torch.no_grad():
                _, self.past = codec._decode_states(z, pos, valid)
            self.past_valid = valid
        self.tokens: list[list[int]] = [[] for _ in range(s)]
        self.ended = torch.zeros(s, dtype=torch.bool)

    @torch.no_grad()
    def push(self, block: Tensor) -> Tensor:
        codec, p = self.codec, self.codec.config.tokens_per_latent
        s, k, _ = block.shape
        dev = codec.device
        pos = self.count[:, None] + torch.arange(k, device=dev)[None]
        valid = torch.ones(s, k, dtype=torch.bool, device=dev)
        z = codec.stats.denormalize(block.to(dev, codec.dtype))
        states, kvs = codec._decode_states(z, pos, valid, self.past, self.past_valid if self.past is not None else None)
        logits = codec.head(states)
        self.past, self.past_valid = kvs, torch.cat([self.past_valid, valid], dim=1)
        self.count += k
        ids = logits.argmax(-1).cpu()  # [S, K*p]
        for i in range(s):
            if self.ended[i]:
                continue
            new = ids[i, int(self.pins[i]) * p :].tolist()
            if codec.eos_id in new:
                new = new[: new.index(codec.eos_id)]
                self.ended[i] = True
            self.tokens[i] += new
        self.pins = torch.zeros_like(self.pins)
        return self.ended.clone()

    def items(self) -> list[str]:
        return [self.codec.tokens_to_text(t) for t in self.tokens]
