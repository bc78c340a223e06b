"""torch.compile (inductor on the CPU): the compiled training step and the compiled KV-cached generation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from latentbridge.generation import generate_latents
from latentbridge.pipeline import Pipeline
from latentbridge.sequence import Segment
from test_generation import LAYOUT, make_prior, text

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def prior_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in rows if r["stage"] == "prior"}


def test_compiled_training_logs_the_eager_losses(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"}, "HF_HUB_OFFLINE": "1"}
    args = ["--no-progress", "--train.codec_steps=0", "--train.steps=20", "--train.log_every=1", "--train.batch_size=32",
            "--train.checkpoint_every=0", "--train.warmup_steps=5"]
    for name, extra in (("eager", []), ("compiled", ["--train.compile=true"])):
        proc = subprocess.run([str(BIN / "latentbridge"), "train", str(ROOT / "configs" / "toy_label_to_vector.yaml"),
                               "--run-dir", str(tmp_path / name), *args, *extra], env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    eager, compiled = prior_losses(tmp_path / "eager"), prior_losses(tmp_path / "compiled")
    assert sorted(eager) == sorted(compiled) == list(range(20))
    assert max(abs(eager[s] - compiled[s]) for s in eager) <= 1e-4


def test_compiled_cached_generation_equals_uncached():
    torch._dynamo.reset()
    prior = make_prior(torch.float32)
    compiled = torch.compile(prior, dynamic=True)
    prompts = [[Segment("label", torch.ones(1, 2), "cond")], [Segment("text", text(7, 9, torch.float32), "target")]]
    kw = dict(steps=3, guidance=2.0, seed=0)
    cached = generate_latents(compiled, LAYOUT, prompts, "text", 12, use_cache=True, **kw)
    uncached = generate_latents(compiled, LAYOUT, prompts, "text", 12, use_cache=False, **kw)
    eager = generate_latents(prior, LAYOUT, prompts, "text", 12, use_cache=False, **kw)
    assert max(float((a - b).abs().max()) for a, b in zip(cached, uncached)) <= 1e-5
    assert max(float((a - b).abs().max()) for a, b in zip(cached, eager)) <= 1e-5
    assert max(float(a.abs().max()) for a in cached) > 0.1  # something was generated


def test_sampling_compile_makes_the_pipeline_generate_through_a_compiled_prior():
    from latentbridge.config import ExperimentConfig

    cfg = ExperimentConfig(name="compiled")
    prior = make_prior(torch.float32)
    pipe = Pipeline(cfg, {}, prior, LAYOUT)
    assert pipe.generation_prior() is prior  # off by default
    cfg.sampling.compile = True
    compiled = pipe.generation_prior()
    assert compiled is not prior and compiled._orig_mod is prior and pipe.generation_prior() is compiled  # made once
