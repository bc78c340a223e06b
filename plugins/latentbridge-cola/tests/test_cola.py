"""The released Cola DLM in latentbridge, checked against the reference implementation's recorded outputs.

fixtures/ holds a tiny random-weight release written by the reference code (ByteDance-Seed/Cola-DLM) and its outputs
on fixed inputs (fixtures/make_fixture.py made them; fixtures/README.md says how). No reference is installed here:
these tests load that release through the `cola-vae` codec and the `cola-dit` prior backbone and compare.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentbridge.codecs import LatentSpec
from latentbridge.errors import CheckpointError, ConfigError
from latentbridge.generation import generate_latents
from latentbridge.sequence import Segment, SequenceLayout
from latentbridge.testing import CodecConformance
from latentbridge_cola import ColaDiT, ColaVAE, experiment_config, pipeline, write_run
from latentbridge_cola.dit import DiTArch
from latentbridge_cola.parity import Fixture, dit_differences, replay_generation, token_agreement, vae_differences
from latentbridge_cola.dit import count_parameters as dit_parameters
from latentbridge_cola.run import main as cola_main
from latentbridge_cola.vae import VAEArch
from latentbridge_cola.vae import count_parameters as vae_parameters

FIX = Path(__file__).parent / "fixtures"
RELEASE = FIX / "release"
OUT = load_file(str(FIX / "outputs.safetensors"))
META = json.loads((FIX / "outputs.json").read_text())
GEN = META["generation"]
ROOT = Path(__file__).parents[3]
sys.path.insert(0, str(ROOT / "tests"))
import datafiles as D  # noqa: E402  (the core's writers of small real data sets)


FX = Fixture(FIX)


def codec(**options) -> ColaVAE:
    return FX.codec(**options)


def dit() -> ColaDiT:
    return FX.dit()


# --------------------------------------------------------------------------------------------------
# Parity with the reference, output by output
# --------------------------------------------------------------------------------------------------


def test_vae_posterior_and_decoder_logits_match_the_reference():
    diffs = vae_differences(FX)
    assert set(diffs) == {"vae_mean", "vae_logvar", "vae_logits"} and max(diffs.values()) <= 1e-5, diffs


@torch.no_grad()
def test_codec_latents_are_the_releases_prior_units():
    c = codec()
    batch = c._batch([OUT["vae.ids.1"].tolist()])
    post = c.raw_encode(batch)
    assert torch.allclose(post.mean[0], (OUT["vae.mean.1"] - 0.1) * 1.7, atol=1e-5)  # (mean - shift) * scale
    assert torch.equal(c.stats.scale, torch.ones(8)) and c.publishes_stats  # identity stats: never refitted


def test_dit_velocity_matches_the_reference_on_a_prefill_and_on_a_cached_block():
    """Within float32 rounding of the velocities' scale (|v| up to about 4 here): 2e-5 of it. The float32 kernels of
    the CPU that runs the test and of the one that made the fixture differ in summation order; an AVX2-only CPU
    measured 2.7e-5 absolute on the prefill. A wrong mask, position or modulation moves velocities by 1e-1 or more."""
    diffs = dit_differences(FX)
    scale = {"dit_prefill": float(OUT["dit.prefill.v"].abs().max()), "dit_block": float(OUT["dit.block.v"].abs().max())}
    assert set(diffs) == set(scale) and all(diffs[k] <= 2e-5 * scale[k] for k in diffs), (diffs, scale)


def test_a_whole_greedy_generation_gives_the_references_tokens():
    """16 Euler steps, guidance 7 against the block alone (the prompt dropped from K/V), the first-block rule (prompt 0
    is shorter than a block: no guidance for its first block), clean repaint of the prompt's partial block (prompt 2),
    repetition penalty 1.1 — every token identical, and the continuation trimmed as the reference trims it."""
    assert GEN["prompt_token_counts"] == [3, 16, 18]  # shorter than a block, whole blocks, a partial block
    stream = replay_generation(FX)
    ref = OUT["gen.ids"]
    for i in range(3):
        assert stream.context[i] == ref[i].tolist()
        assert stream.tokens[i] == ref[i, GEN["prompt_tokens_in_first_block"][i] :].tolist()
    assert token_agreement(FX, stream) == (48, 48)


def test_the_generation_check_can_fail():
    """The same generation without guidance differs from the reference's tokens for every prompt."""
    stream = replay_generation(FX, guidance=1.0)
    assert all(stream.context[i] != OUT["gen.ids"][i].tolist() for i in range(3))


def test_cached_generation_equals_uncached_on_the_release():
    """In float64, so the comparison is of the two algorithms, not of float32 kernels (whose summation order differs
    between a cached block and the whole recomputed context; guidance 7 multiplies that rounding noise)."""
    c, model = codec(), dit().double()
    layout = SequenceLayout.from_specs({"text": c.latent_spec})
    with torch.no_grad():
        prefix = c.encode_prompt(GEN["prompts"])
        examples = [[Segment("text", z.double(), "target")] if len(z) else [] for z in prefix.unbind()]
        a, b = (generate_latents(model, layout, examples, "text", 12, steps=4, guidance=7.0, unconditional="block", whole_blocks=True,
                                 use_cache=cache) for cache in (True, False))
    assert max(float((x - y).abs().max()) for x, y in zip(a, b)) <= 1e-9


def test_parameter_counts_of_the_released_configs_match_the_reference():
    counts = META["released_config_parameters"]  # the reference's own modules, counted on the meta device
    assert vae_parameters(VAEArch()) == counts["vae"] == 501_871_574
    assert dit_parameters(DiTArch()) == counts["dit"] == 1_829_875_728


class TestColaVAEConformance(CodecConformance):
    """latentbridge's codec contract, on the release's VAE (save/load keeps the release's config and tokenizer)."""

    atol = 1e-4

    def make_codec(self):
        return codec(end_marker=True)


# --------------------------------------------------------------------------------------------------
# Bad release directories: one line naming the file or key and what was expected
# --------------------------------------------------------------------------------------------------


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(RELEASE, tmp_path / "release")
    return tmp_path / "release"


def test_a_missing_weights_file_is_named(tmp_path):
    rel = _copy(tmp_path)
    (rel / "cola_dlm" / "cola_dit" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"cola_dit: model.safetensors is missing"):
        ColaDiT.from_directory(str(rel))


def test_an_unknown_key_is_named(tmp_path):
    rel = _copy(tmp_path)
    f = rel / "cola_dlm" / "cola_vae" / "model.safetensors"
    w = load_file(str(f))
    w["decoder.extra_head.weight"] = torch.zeros(2)
    save_file(w, str(f))
    with pytest.raises(CheckpointError, match=r"key 'decoder.extra_head.weight' is not part of this architecture"):
        codec(path=str(rel))


def test_a_shape_mismatch_names_the_key_and_the_expected_shape(tmp_path):
    rel = _copy(tmp_path)
    f = rel / "cola_dlm" / "cola_dit" / "model.safetensors"
    w = load_file(str(f))
    w["txt_in.proj.weight"] = torch.zeros(64, 9)
    save_file(w, str(f))
    with pytest.raises(CheckpointError, match=r"'txt_in.proj.weight' has shape \(64, 9\), expected \(64, 8\)"):
        ColaDiT.from_directory(str(rel))


def test_a_missing_tensor_is_named(tmp_path):
    rel = _copy(tmp_path)
    f = rel / "cola_dlm" / "cola_dit" / "model.safetensors"
    w = load_file(str(f))
    del w["blocks.1.mlp.proj_out.bias"]
    save_file(w, str(f))
    with pytest.raises(CheckpointError, match=r"lack 1 tensor\(s\) of this architecture, e.g. 'blocks.1.mlp.proj_out.bias'"):
        ColaDiT.from_directory(str(rel))


def test_a_config_of_another_architecture_is_named(tmp_path):
    rel = _copy(tmp_path)
    cfg = rel / "cola_dlm" / "cola_vae" / "config.json"
    data = json.loads(cfg.read_text())
    cfg.write_text(json.dumps({**data, "model_type": "llama"}))
    with pytest.raises(CheckpointError, match=r"model_type is 'llama', expected 'cola_text_vae'"):
        codec(path=str(rel))
    data["shared_heads_kv"] = 2
    cfg.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"shared_heads_kv=2 is not an architecture"):
        codec(path=str(rel))


def test_no_release_and_no_tokenizer_are_named(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        codec(path=str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="holds no cola_dit/config.json"):
        ColaDiT.from_directory(str(tmp_path))
    rel = _copy(tmp_path)
    (rel / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        codec(path=str(rel))


def test_the_command_line_answers_a_bad_release_in_one_line(tmp_path, capsys):
    assert cola_main(["params", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no cola_vae/config.json" in err
    assert cola_main(["params", str(RELEASE)]) == 0
    stored = {part: sum(v.numel() for k, v in load_file(str(RELEASE / "cola_dlm" / part / "model.safetensors")).items()
                        if not k.endswith("rope.rope.freqs")) for part in ("cola_vae", "cola_dit")}  # parameters, not buffers
    assert f"Text VAE {stored['cola_vae']:,}  DiT {stored['cola_dit']:,}" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# Every latentbridge feature on it: the backbone hook, a Pipeline, a run directory, training
# --------------------------------------------------------------------------------------------------


def test_the_backbone_registers_through_the_priors_hook(autoload_plugins):
    from latentbridge.plugins import registries

    reg = registries()
    assert {"dit", "cola-dit"} <= set(reg.priors.names())
    assert reg.priors.entry("cola-dit").provider.startswith("latentbridge-cola")
    assert "cola-vae" in reg.codecs.names()


def test_a_pipeline_over_the_release_continues_prompts(autoload_plugins):
    pipe = pipeline(RELEASE, codec={})
    out = pipe.generate(prompts=["the cat", "question : what is"], target="text", max_tokens=8, steps=2)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert pipe.cfg.sampling.steps == 16 and pipe.cfg.sampling.guidance == [7.0] and pipe.cfg.sampling.unconditional == "block"


def test_an_imported_run_samples_through_the_cli(tmp_path, autoload_plugins):
    from latentbridge.cli import main

    run = write_run(RELEASE, tmp_path / "run", codec={})
    assert not (run / "checkpoints").exists()  # the prior's weights are the release's, read when the run is loaded
    assert main(["sample", str(run), "--prompt", "the sun is", "--guidance", "7"]) == 0
    assert (run / "samples").is_dir()


def _continue(tmp_path: Path, stage: str):
    from latentbridge.train.experiment import train

    data = {"name": "text", "config": {"path": str(D.write_jsonl(tmp_path / "corpus.jsonl", 40)), "num_workers": 0}}
    train_cfg = {"stage": stage, "steps": 3, "batch_size": 4, "row_length": 64, "log_every": 1, "checkpoint_every": 3,
                 "warmup_steps": 1, "lr": 1e-4, "ema_decay": 0.0, "cache_latents": False}
    if stage == "joint":
        train_cfg["codec_role"] = "text"
    cfg = experiment_config(RELEASE, codec={"max_tokens": 16}, train=train_cfg, data=data, eval={"samples": 2})
    run = tmp_path / "run"
    codecs, prior, _ = train(cfg, run, progress=False)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return run, codecs, prior, rows


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["prior", "joint"])
def test_training_continues_the_release(tmp_path, autoload_plugins, stage):
    from latentbridge.pipeline import Pipeline

    run, codecs, prior, rows = _continue(tmp_path, stage)
    assert len(rows) == 3 and {r["stage"] for r in rows} == {stage}  # no codec pre-stage: the release's codec ships weights
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    release = dit().state_dict()
    fresh = ColaDiT.from_directory(str(RELEASE), load_weights=False).state_dict()
    moved = max(float((prior.state_dict()[k] - v).abs().max()) for k, v in release.items())
    from_fresh = max(float((fresh[k] - v).abs().max()) for k, v in release.items())
    assert 0 < moved < 0.01 < from_fresh  # training started from the released weights and changed them a little
    if stage == "joint":  # the joint stage trains the codec too
        start = codec().model.state_dict()
        assert any(not torch.equal(codecs["text"].model.state_dict()[k], v) for k, v in start.items())
    pipe = Pipeline.from_pretrained(run)
    assert len(pipe.generate(prompts=["the cat"], target="text", max_tokens=4, steps=2)) == 1


def test_pipeline_from_pretrained_and_sample_open_a_release_directory(tmp_path, autoload_plugins):
    from latentbridge.cli import main
    from latentbridge.pipeline import Pipeline

    rel = _copy(tmp_path)
    pipe = Pipeline.from_pretrained(rel)  # no run directory: the cola-dit backbone recognises the release
    assert pipe.prior.ships_weights and type(pipe.prior) is ColaDiT and type(pipe.codecs["text"]) is ColaVAE
    assert pipe.cfg.prior.config["path"] == str(rel)
    assert len(pipe.generate(prompts=["the cat"], target="text", max_tokens=4, steps=2)) == 1
    assert main(["sample", str(rel), "--prompt", "the sun is", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "text" / "g7" / "items.txt").is_file()
    (rel / "cola_dlm" / "cola_dit" / "config.json").unlink()  # laid out as a release, but incomplete: named
    with pytest.raises(CheckpointError, match="holds no cola_dit/config.json"):
        Pipeline.from_pretrained(rel)
    with pytest.raises(ConfigError, match="is not a run directory"):  # neither a release nor a run directory
        Pipeline.from_pretrained(tmp_path / "out")


@pytest.mark.parametrize("damage, expected", [
    ("weights", "cola_vae: model.safetensors is missing"),
    ("architecture", "model_type is 'llama', expected 'cola_dit'"),
])
def test_sampling_a_damaged_release_is_one_line(tmp_path, autoload_plugins, damage, expected):
    import subprocess

    rel = _copy(tmp_path)
    if damage == "weights":
        (rel / "cola_dlm" / "cola_vae" / "model.safetensors").unlink()
    else:
        cfg = rel / "cola_dlm" / "cola_dit" / "config.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "model_type": "llama"}))
    proc = subprocess.run([str(Path(sys.executable).parent / "latentbridge"), "sample", str(rel), "--prompt", "the"],
                          capture_output=True, text=True, env={**__import__("os").environ, "LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD": "0"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr, proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("COLA_DLM_REFERENCE"),
                    reason="set COLA_DLM_REFERENCE to the PYTHONPATH of the reference (cola_dlm + rotary-embedding-torch) to rerun it")
def test_the_fixture_script_reproduces_the_fixture_with_the_reference():
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": os.environ["COLA_DLM_REFERENCE"]}
    proc = subprocess.run([sys.executable, str(FIX / "make_fixture.py"), "--check"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "largest difference to the fixture: 0.00e+00; generated texts identical: True" in proc.stdout


@pytest.mark.slow
def test_the_shipped_continue_config_trains_through_the_cli(tmp_path, autoload_plugins):
    from latentbridge.cli import main

    corpus = D.write_jsonl(tmp_path / "corpus.jsonl", 40)
    run = tmp_path / "run"
    args = ["train", str(ROOT / "configs" / "cola_continue.yaml"), "--run-dir", str(run), "--no-progress",
            f"--codecs.text.config.path={RELEASE}", "--codecs.text.config.max_tokens=16", f"--prior.config.path={RELEASE}",
            f"--data.config.path={corpus}", "--data.config.num_workers=0", "--train.steps=2", "--train.batch_size=4",
            "--train.row_length=64", "--train.mixed_precision=no", "--train.warmup_steps=1", "--train.checkpoint_every=2"]
    assert main(args) == 0
    assert (run / "checkpoints" / "latest").is_file() and (run / "codecs" / "text" / "cola" / "tokenizer.json").is_file()
    assert main(["sample", str(run), "--prompt", "the cat"]) == 0


@torch.no_grad()
def test_another_modality_beside_the_text_gets_new_projections_and_the_released_weights_stay():
    """Condition the released model on a second codec stream (width 4): fresh extra_in/extra_out for it, the release's
    weights loaded unchanged, text-only inputs give the release's velocities, and generation stays cached == uncached."""
    both = ColaDiT.from_directory(str(RELEASE), codec_dims=(8, 4), text_codec=0).eval()
    assert set(both.extra_in) == {"1"} and both.extra_in["1"].weight.shape == (64, 4)
    alone = dit()
    shared = alone.state_dict()
    assert all(torch.equal(both.state_dict()[k], v) for k, v in shared.items())
    layout = SequenceLayout.from_specs({"text": codec().latent_spec, "image": LatentSpec(dim=4, block_size=2, tokens_per_item=2)})
    g = torch.Generator().manual_seed(0)
    prompts = [[Segment("image", torch.randn(2, 4, generator=g), "cond"), Segment("text", torch.randn(5, 8, generator=g), "target")],
               [Segment("image", torch.randn(2, 4, generator=g), "cond")]]
    a, b = (generate_latents(both, layout, prompts, "text", 6, steps=3, guidance=3.0, unconditional="conditions", use_cache=c)
            for c in (True, False))
    assert max(float((x - y).abs().max()) for x, y in zip(a, b)) <= 1e-5
    plain = generate_latents(both, layout, prompts, "text", 6, steps=3, guidance=1.0)
    assert max(float((x - y).abs().max()) for x, y in zip(a, plain)) > 1e-3  # the image condition is used by guidance
    with pytest.raises(ConfigError, match=r"prior.config.text_codec: codec 1 has 4 latent channels, but the Cola DiT takes 8"):
        ColaDiT.from_directory(str(RELEASE), codec_dims=(8, 4), text_codec=1)
