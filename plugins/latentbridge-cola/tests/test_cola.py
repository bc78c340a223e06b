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

from latentbridge.errors import CheckpointError, ConfigError
from latentbridge.pipeline import generate_latents
from latentbridge.prior import TokenMeta
from latentbridge.sequence import Segment, SequenceLayout
from latentbridge.testing import CodecConformance
from latentbridge_cola import ColaDiT, ColaVAE, experiment_config, pipeline, write_run
from latentbridge_cola.dit import DiTArch
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


def codec(**options) -> ColaVAE:
    return ColaVAE({"path": str(RELEASE), "end_marker": False, **options}).eval()  # the fixture's generation has no end token


def dit() -> ColaDiT:
    return ColaDiT.from_directory(str(RELEASE)).eval()


# --------------------------------------------------------------------------------------------------
# Parity with the reference, output by output
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_vae_posterior_and_decoder_logits_match_the_reference():
    model = codec().model
    for i in range(len(META["prompts"])):
        ids = OUT[f"vae.ids.{i}"][None]
        mean, logvar = model.encode(ids, torch.tensor([ids.shape[1]]))
        assert (mean[0] - OUT[f"vae.mean.{i}"]).abs().max() <= 1e-5
        assert (logvar[0] - OUT[f"vae.logvar.{i}"]).abs().max() <= 1e-5
    means = [OUT[f"vae.mean.{i}"] for i in range(3)]  # decoded as one padded batch: padding changes nothing
    lens = torch.tensor([len(m) for m in means])
    z = torch.zeros(3, int(lens.max()), 8)
    for i, m in enumerate(means):
        z[i, : len(m)] = m
    logits = model.decode(z, lens)
    for i, ref in enumerate(OUT["vae.logits"].split(lens.tolist())):
        assert (logits[i, : lens[i]] - ref).abs().max() <= 1e-5


@torch.no_grad()
def test_codec_latents_are_the_releases_prior_units():
    c = codec()
    batch = c._batch([OUT["vae.ids.1"].tolist()])
    post = c.raw_encode(batch)
    assert torch.allclose(post.mean[0], (OUT["vae.mean.1"] - 0.1) * 1.7, atol=1e-5)  # (mean - shift) * scale
    assert torch.equal(c.stats.scale, torch.ones(8)) and c.publishes_stats  # identity stats: never refitted


def _packed_to_rows(lens, x, t):
    n = max(lens)
    xs, ts = torch.zeros(len(lens), n, x.shape[-1]), torch.zeros(len(lens), n)
    sample, pos = torch.full((len(lens), n), -1), torch.zeros(len(lens), n, dtype=torch.long)
    for i, (xi, ti) in enumerate(zip(x.split(lens), t.split(lens))):
        xs[i, : lens[i]], ts[i, : lens[i]], sample[i, : lens[i]], pos[i, : lens[i]] = xi, ti, i, torch.arange(lens[i])
    return xs, ts, TokenMeta(sample, pos // 4, torch.zeros_like(sample, dtype=torch.bool), pos)


@torch.no_grad()
def test_dit_velocity_matches_the_reference_on_a_prefill_and_on_a_cached_block():
    model, lens = dit(), META["dit_prefill_lengths"]
    x, t, meta = _packed_to_rows(lens, OUT["dit.prefill.x"], OUT["dit.prefill.t"] / 1000)  # the release's t / 1000
    codec_ids = torch.zeros(t.shape, dtype=torch.long)
    v = model(x, t, codec_ids, meta)
    for i, ref in enumerate(OUT["dit.prefill.v"].split(lens)):
        assert (v[i, : lens[i]] - ref).abs().max() <= 1e-5
    cache = model.new_cache()
    model(x, torch.zeros_like(t), codec_ids, meta, cache=cache, commit=True)  # the prefill committed at t = 0
    pos = torch.tensor(lens)[:, None] + torch.arange(4)
    block = TokenMeta(torch.arange(2)[:, None].expand(2, 4), pos // 4, torch.ones(2, 4, dtype=torch.bool), pos)
    vb = model(OUT["dit.block.x"].view(2, 4, 8), OUT["dit.block.t"].view(2, 4) / 1000, torch.zeros(2, 4, dtype=torch.long), block,
               cache=cache)
    assert (vb - OUT["dit.block.v"].view(2, 4, 8)).abs().max() <= 1e-5


def _generate(guidance: float, **kw):
    c, model = codec(repetition_penalty=GEN["repetition_penalty"]), dit()
    layout = SequenceLayout.from_specs({"text": c.latent_spec})
    noise = OUT["gen.noise"]  # the reference's starting noise, block by block
    with torch.no_grad():
        prefix = c.encode_prompt(GEN["prompts"])
        stream = c.decoder_stream(prefix)
        examples = [[Segment("text", z, "target")] if len(z) else [] for z in prefix.unbind()]
        # the release stops after whole blocks; latentbridge counts generated latents: ask for what 4 blocks give all
        budget = noise.shape[0] * 4 - max(GEN["prompt_tokens_in_first_block"])
        generate_latents(model, layout, examples, "text", budget, steps=GEN["steps"], guidance=guidance, unconditional="block",
                         stop=stream.push, whole_blocks=True, noise=lambda i: noise[i], **kw)
    return stream


def test_a_whole_greedy_generation_gives_the_references_tokens():
    """16 Euler steps, guidance 7 against the block alone (the prompt dropped from K/V), the first-block rule (prompt 0
    is shorter than a block: no guidance for its first block), clean repaint of the prompt's partial block (prompt 2),
    repetition penalty 1.1 — every token identical, and the continuation trimmed as the reference trims it."""
    assert GEN["prompt_token_counts"] == [3, 16, 18]  # shorter than a block, whole blocks, a partial block
    stream = _generate(GEN["guidance"])
    ref = OUT["gen.ids"]
    for i in range(3):
        assert stream.context[i] == ref[i].tolist()
        assert stream.tokens[i] == ref[i, GEN["prompt_tokens_in_first_block"][i] :].tolist()


def test_the_generation_check_can_fail():
    """The same generation without guidance differs from the reference's tokens for every prompt."""
    stream = _generate(1.0)
    assert all(stream.context[i] != OUT["gen.ids"][i].tolist() for i in range(3))


def test_cached_generation_equals_uncached_on_the_release():
    c, model = codec(), dit()
    layout = SequenceLayout.from_specs({"text": c.latent_spec})
    with torch.no_grad():
        prefix = c.encode_prompt(GEN["prompts"])
        examples = [[Segment("text", z, "target")] if len(z) else [] for z in prefix.unbind()]
        a, b = (generate_latents(model, layout, examples, "text", 12, steps=4, guidance=7.0, unconditional="block", whole_blocks=True,
                                 use_cache=cache) for cache in (True, False))
    assert max(float((x - y).abs().max()) for x, y in zip(a, b)) <= 1e-5


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
    (rel / "cola_dlm" / "cola_dit" / "config.json").unlink()  # no longer a release, and no run directory: one line
    with pytest.raises(ConfigError, match="is not a run directory"):
        Pipeline.from_pretrained(rel)
