"""latentbridge-cola against the reference implementation of Cola DLM: the largest difference of each output.

Reads the fixture the reference recorded (plugins/latentbridge-cola/tests/fixtures/, see its README): a tiny
random-weight release and the reference's outputs on it. No reference needs to be installed.

    python benchmarks/cola_parity.py

Prints a table, then one JSON line: vae_mean, vae_logvar, vae_logits, dit_prefill, dit_block (largest absolute
differences, fp32), generation_tokens_equal / generation_tokens, cached_vs_uncached, and the parameter counts of the
released configs (vae_parameters, dit_parameters, and the reference's count of each).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from latentbridge.generation import generate_latents
from latentbridge.sequence import Segment, SequenceLayout
from latentbridge_cola.dit import DiTArch
from latentbridge_cola.dit import count_parameters as dit_parameters
from latentbridge_cola.parity import Fixture, dit_differences, replay_generation, token_agreement, vae_differences
from latentbridge_cola.vae import VAEArch
from latentbridge_cola.vae import count_parameters as vae_parameters

FIXTURE = Path(__file__).parents[1] / "plugins" / "latentbridge-cola" / "tests" / "fixtures"


def main() -> None:
    fx = Fixture(FIXTURE)
    diffs = {**vae_differences(fx), **dit_differences(fx)}
    same, total = token_agreement(fx, replay_generation(fx))
    codec, model = fx.codec(), fx.dit()
    layout = SequenceLayout.from_specs({"text": codec.latent_spec})
    with torch.no_grad():
        prefix = codec.encode_prompt(fx.meta["generation"]["prompts"])
        examples = [[Segment("text", z, "target")] if len(z) else [] for z in prefix.unbind()]
        runs = [generate_latents(model, layout, examples, "text", 12, steps=4, guidance=7.0, unconditional="block", whole_blocks=True,
                                 use_cache=c) for c in (True, False)]
    cache_diff = max(float((a - b).abs().max()) for a, b in zip(*runs))
    counts = {"vae_parameters": vae_parameters(VAEArch()), "dit_parameters": dit_parameters(DiTArch())}
    ref = fx.meta["released_config_parameters"]
    print("latentbridge-cola vs the reference (fp32, CPU; fixture of", fx.meta["torch"], ")")
    print(f"{'output':<44} {'largest |difference|':>22}")
    labels = {"vae_mean": "VAE posterior mean (3 prompts)", "vae_logvar": "VAE posterior log-variance",
              "vae_logits": "VAE decoder logits", "dit_prefill": "DiT velocity, packed prefill (2 samples)",
              "dit_block": "DiT velocity, a block on the cached prefill"}
    for key, label in labels.items():
        print(f"{label:<44} {diffs[key]:>22.2e}")
    print(f"{'greedy generation: tokens equal':<44} {f'{same} / {total}':>22}")
    print(f"{'cached vs uncached generation (latents)':<44} {cache_diff:>22.2e}")
    print(f"{'parameters, released VAE config (reference)':<44} {counts['vae_parameters']:>12,} ({ref['vae']:,})")
    print(f"{'parameters, released DiT config (reference)':<44} {counts['dit_parameters']:>12,} ({ref['dit']:,})")
    figures = {**{k: float(f"{v:.3g}") for k, v in diffs.items()}, "generation_tokens_equal": same, "generation_tokens": total,
               "cached_vs_uncached": float(f"{cache_diff:.3g}"), **counts, "reference_vae_parameters": ref["vae"],
               "reference_dit_parameters": ref["dit"]}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
