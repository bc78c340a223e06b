"""The autoregressive baseline: a small decoder-only transformer over the same tokens, with a KV cache.

It is what the latent model is measured against (benchmarks/text_vs_ar.py): same tokenizer, same
data, about the same parameter count as Text VAE + prior. Pre-LayerNorm blocks, rotary positions (the prior's RotaryEmbedding),
GELU MLP, tied input/output embedding; trained by next-token cross-entropy (with [EOS] at the end of
every text); sampled token by token with preallocated key/value buffers.

Dimensions: B batch, T tokens, W width, H heads, hd head width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import load_model, save_model
from torch import Tensor, nn

from latentbridge.errors import CheckpointError
from latentbridge.prior.layers import RotaryEmbedding


@dataclasses.dataclass
class ARConfig:
    vocab_size: int
    width: int = 256
    depth: int = 8
    heads: int = 4
    mlp_ratio: float = 4.0
    max_tokens: int = 64
    """Longest sequence (prompt + continuation + [EOS])."""


class _Block(nn.Module):
    def __init__(self, c: ARConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.norm1, self.norm2 = nn.LayerNorm(c.width), nn.LayerNorm(c.width)
        self.qkv, self.out = nn.Linear(c.width, 3 * c.width), nn.Linear(c.width, c.width)
        hidden = int(c.width * c.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(c.width, hidden), nn.GELU(), nn.Linear(hidden, c.width))

    def forward(self, x: Tensor, rope: RotaryEmbedding, rot: tuple[Tensor, Tensor], mask: Tensor,
                cache: tuple[Tensor, Tensor] | None, start: int) -> Tensor:
        q, k, v = rearrange(self.qkv(self.norm1(x)), "b t (three h d) -> three b h t d", three=3, h=self.heads)
        q, k = rope.apply(q, *rot), rope.apply(k, *rot)
        if cache is not None:  # write this step's keys/values into the buffers, attend to all so far
            kc, vc = cache
            t = x.shape[1]
            kc[:, :, start : start + t] = k
            vc[:, :, start : start + t] = v
            k, v = kc[:, :, : start + t], vc[:, :, : start + t]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.out(rearrange(y, "b h t d -> b t (h d)"))
        return x + self.mlp(self.norm2(x))


class ARModel(nn.Module):
    def __init__(self, config: ARConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.width)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width)
        self.rope = RotaryEmbedding(config.width // config.heads, fraction=1.0)  # the prior's RoPE, on every channel

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: Tensor, pos: Tensor, mask: Tensor, caches=None, start: int = 0) -> Tensor:
        """ids [B, T] at positions pos [B, T], attention mask [B, 1, T, start + T] -> logits [B, T, V]."""
        x = self.embed(ids)
        rot = self.rope.angles(pos)  # once per forward, shared by the blocks
        for i, block in enumerate(self.blocks):
            x = block(x, self.rope, rot, mask, caches[i] if caches is not None else None, start)
        return self.norm(x) @ self.embed.weight.T

    def sequence_nll(self, ids: Tensor, valid: Tensor) -> Tensor:
        """Per-token NLL [B, T-1] of ids[:, 1:] given the tokens before, masked by valid[:, 1:]."""
        b, t = ids.shape
        pos = torch.arange(t, device=ids.device).expand(b, t)
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).tril()
        mask = (causal[None] & valid[:, None, :])[:, None]
        logits = self(ids, pos, mask)[:, :-1]
        nll = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
        return nll * valid[:, 1:]

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new: int, eos_id: int, *, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> list[list[int]]:
        """Sample continuations token by token (KV cache); prompts left-padded; stops each at [EOS]."""
        c = self.config
        b = len(prompts)
        lp = max(len(p) for p in prompts)
        total = min(c.max_tokens, lp + max_new)
        dev, dtype = self.embed.weight.device, self.embed.weight.dtype
        ids = torch.zeros(b, lp, dtype=torch.long, device=dev)
        key_valid = torch.zeros(b, total, dtype=torch.bool, device=dev)
        for i, p in enumerate(prompts):
            ids[i, lp - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            key_valid[i, lp - len(p) :] = True
        offset = torch.tensor([lp - len(p) for p in prompts], device=dev)  # left padding per row
        hd = c.width // c.heads
        caches = [(torch.zeros(b, c.heads, total, hd, device=dev, dtype=dtype), torch.zeros(b, c.heads, total, hd, device=dev, dtype=dtype))
                  for _ in self.blocks]
        pos = (torch.arange(lp, device=dev)[None] - offset[:, None]).clamp_min(0)
        causal = torch.ones(lp, lp, dtype=torch.bool, device=dev).tril()
        mask = (causal[None] & key_valid[:, None, :lp])[:, None]
        logits = self(ids, pos, mask, caches, 0)[:, -1]
        out: list[list[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool)
        for step in range(total - lp):
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(dev)  # [B, 1]
            for i in range(b):
                if not done[i]:
                    tok = int(nxt[i])
                    if tok == eos_id:
                        done[i] = True
                    else:
                        out[i].append(tok)
            if bool(done.all()) or lp + step + 1 >= total:
                break
            t = lp + step
            pos = (t - offset)[:, None]
            mask = key_valid.clone()
            mask[:, t] = True
            key_valid = mask
            logits = self(nxt, pos, mask[:, None, None, : t + 1], caches, t)[:, -1]
        return out


def encode_texts(tokenizer, texts: Sequence[str], max_tokens: int) -> tuple[Tensor, Tensor]:
    """Texts -> ids [B, T] ([EOS] appended, cut to max_tokens) and valid mask [B, T]."""
    rows = [(tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_tokens] for t in texts]
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), tokenizer.pad_token_id, dtype=torch.long)
    valid = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        valid[i, : len(r)] = True
    return ids, valid


def train_ar(model: ARModel, tokenizer, batches, steps: int, out_dir: str | Path, *, lr: float = 1e-3, warmup: int = 100,
             bf16: bool = True, log_every: int = 25, progress: bool = True, seconds: float | None = None) -> list[dict]:
    """Train by next-token cross-entropy; `batches(step) -> list[str]`. Writes model.safetensors, config.json, metrics.jsonl.

    With `seconds`, training is a wall-clock budget: it stops at the first step that ends past `seconds` (or at
    `steps`), and the cosine schedule follows the larger of the step share and the time share, so the learning rate
    has decayed when the budget runs out however many steps fit (the same budget for the baseline as for the
    model it is compared with)."""
    from tqdm.auto import tqdm

    if seconds is not None and seconds <= 0:
        raise ValueError(f"train_ar: seconds must be positive, got {seconds}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    start = time.perf_counter()

    def progress_share(step: int) -> float:
        share = (step - warmup) / max(1, steps - warmup)
        if seconds is not None:
            share = max(share, (time.perf_counter() - start) / seconds)
        return min(1.0, share)

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * progress_share(s))))
    rows = []
    model.train()
    with (out_dir / "metrics.jsonl").open("w") as log:
        bar = tqdm(range(steps), desc="autoregressive", disable=not progress, dynamic_ncols=True)
        for step in bar:
            ids, valid = encode_texts(tokenizer, batches(step), model.config.max_tokens)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                nll = model.sequence_nll(ids, valid)
            loss = nll.sum() / valid[:, 1:].sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            elapsed = time.perf_counter() - start
            last = step == steps - 1 or (seconds is not None and elapsed >= seconds)
            if step % log_every == 0 or last:
                row = {"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"], "elapsed_s": round(elapsed, 2)}
                rows.append(row)
                log.write(json.dumps(row) + "\n")
                log.flush()
            if last:
                break
        bar.close()
    model.eval()
    save_ar(model, out_dir)
    return rows


def save_ar(model: ARModel, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(model.config), indent=2) + "\n")
    save_model(model, str(out_dir / "model.safetensors"))


def load_ar(out_dir: str | Path) -> ARModel:
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").is_file() or not (out_dir / "model.safetensors").is_file():
        raise CheckpointError(f"{out_dir} holds no trained autoregressive baseline (config.json + model.safetensors).")
    model = ARModel(ARConfig(**json.loads((out_dir / "config.json").read_text())))
    load_model(model, str(out_dir / "model.safetensors"), strict=True)
    return model.eval()
