"""Comparison with the reference implementation's recorded outputs (the fixture of tests/fixtures/, see its README).

Each function loads what it needs from a fixture directory (release/, outputs.safetensors, outputs.json) and returns
measured differences; the tests assert bounds on them and `benchmarks/cola_parity.py` prints them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from latentbridge.generation import generate_latents
from latentbridge.prior import TokenMeta
from latentbridge.sequence import Segment, SequenceLayout

from latentbridge_cola.codec import ColaVAE
from latentbridge_cola.dit import ColaDiT


class Fixture:
    """The recorded release, inputs and reference outputs."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.release = self.dir / "release"
        self.out = load_file(str(self.dir / "outputs.safetensors"))
        self.meta: dict[str, Any] = json.loads((self.dir / "outputs.json").read_text())

    def codec(self, **options) -> ColaVAE:
        """The release's VAE; no end token unless asked (the recorded generation has none)."""
        return ColaVAE({"path": str(self.release), "end_marker": False, **options}).eval()

    def dit(self) -> ColaDiT:
        return ColaDiT.from_directory(str(self.release)).eval()


@torch.no_grad()
def vae_differences(fx: Fixture) -> dict[str, float]:
    """Largest |difference| of the posterior mean, log-variance (each prompt alone) and decoder logits (one padded batch)."""
    model = fx.codec().model
    out, n = fx.out, len(fx.meta["prompts"])
    mean_d = logvar_d = 0.0
    for i in range(n):
        ids = out[f"vae.ids.{i}"][None]
        mean, logvar = model.encode(ids, torch.tensor([ids.shape[1]]))
        mean_d = max(mean_d, float((mean[0] - out[f"vae.mean.{i}"]).abs().max()))
        logvar_d = max(logvar_d, float((logvar[0] - out[f"vae.logvar.{i}"]).abs().max()))
    means = [out[f"vae.mean.{i}"] for i in range(n)]
    lens = torch.tensor([len(m) for m in means])
    z = torch.zeros(n, int(lens.max()), means[0].shape[-1])
    for i, m in enumerate(means):
        z[i, : len(m)] = m
    logits = model.decode(z, lens)
    logits_d = max(float((logits[i, : lens[i]] - ref).abs().max()) for i, ref in enumerate(out["vae.logits"].split(lens.tolist())))
    return {"vae_mean": mean_d, "vae_logvar": logvar_d, "vae_logits": logits_d}


@torch.no_grad()
def dit_differences(fx: Fixture) -> dict[str, float]:
    """Largest |difference| of the DiT's velocity on the packed two-sample prefill and on one block attending to the
    cached prefill (the reference's packed layout laid out as padded latentbridge rows; its t / 1000 is latentbridge's t)."""
    model, lens, out = fx.dit(), fx.meta["dit_prefill_lengths"], fx.out
    rows, width, dim = len(lens), max(lens), out["dit.prefill.x"].shape[-1]
    x, t = torch.zeros(rows, width, dim), torch.zeros(rows, width)
    sample, pos = torch.full((rows, width), -1), torch.zeros(rows, width, dtype=torch.long)
    for i, (xi, ti) in enumerate(zip(out["dit.prefill.x"].split(lens), (out["dit.prefill.t"] / 1000).split(lens))):
        x[i, : lens[i]], t[i, : lens[i]], sample[i, : lens[i]], pos[i, : lens[i]] = xi, ti, i, torch.arange(lens[i])
    bs = model.arch.block_size
    meta = TokenMeta(sample, pos // bs, torch.zeros_like(sample, dtype=torch.bool), pos)
    codec_ids = torch.zeros(t.shape, dtype=torch.long)
    v = model(x, t, codec_ids, meta)
    prefill = max(float((v[i, : lens[i]] - ref).abs().max()) for i, ref in enumerate(out["dit.prefill.v"].split(lens)))
    cache = model.new_cache()
    model(x, torch.zeros_like(t), codec_ids, meta, cache=cache, commit=True)  # the prefill committed at t = 0
    bpos = torch.tensor(lens)[:, None] + torch.arange(bs)
    block = TokenMeta(torch.arange(rows)[:, None].expand(rows, bs), bpos // bs, torch.ones(rows, bs, dtype=torch.bool), bpos)
    vb = model(out["dit.block.x"].view(rows, bs, dim), out["dit.block.t"].view(rows, bs) / 1000,
               torch.zeros(rows, bs, dtype=torch.long), block, cache=cache)
    return {"dit_prefill": prefill, "dit_block": float((vb - out["dit.block.v"].view(rows, bs, dim)).abs().max())}


def replay_generation(fx: Fixture, guidance: float | None = None, **kw):
    """The recorded greedy generation run through latentbridge's generation path with the reference's noise; returns
    the codec's decode stream (`context`: every token decoded, `tokens`: the trimmed continuation)."""
    gen = fx.meta["generation"]
    codec, model = fx.codec(repetition_penalty=gen["repetition_penalty"]), fx.dit()
    layout = SequenceLayout.from_specs({"text": codec.latent_spec})
    noise = fx.out["gen.noise"]  # [blocks, S, block, D]: the reference's starting noise, block by block
    with torch.no_grad():
        prefix = codec.encode_prompt(gen["prompts"])
        stream = codec.decoder_stream(prefix)
        examples = [[Segment("text", z, "target")] if len(z) else [] for z in prefix.unbind()]
        # the reference stops after whole blocks; latentbridge counts generated latents: ask for what its blocks give all
        budget = noise.shape[0] * codec.arch.block_size - max(gen["prompt_tokens_in_first_block"])
        generate_latents(model, layout, examples, "text", budget, steps=gen["steps"],
                         guidance=gen["guidance"] if guidance is None else guidance, unconditional="block", stop=stream.push,
                         whole_blocks=True, noise=lambda i: noise[i], **kw)
    return stream


def token_agreement(fx: Fixture, stream) -> tuple[int, int]:
    """(tokens equal to the reference's, tokens in all) over every token decoded."""
    ref = fx.out["gen.ids"]
    same = sum(int(a == b) for i in range(ref.shape[0]) for a, b in zip(stream.context[i], ref[i].tolist()))
    return same, ref.numel()
