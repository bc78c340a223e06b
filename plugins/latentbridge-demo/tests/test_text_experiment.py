"""Text end to end through the CLI: codec stage -> held-out report, prior stage -> prompted generation.

Tiny models and a handful of steps: this checks the wiring (data, trainer, report, sampling, stop
rule), not quality; the quality figures come from the full configs (README, closing notes).
"""

from __future__ import annotations

import json

import pytest

from latentbridge.cli import main

pytest.importorskip("latentbridge_text_vae")

TINY_CODEC = ["--codecs.text.config.width=32", "--codecs.text.config.heads=2", "--codecs.text.config.encoder_layers=1",
              "--codecs.text.config.decoder_layers=1", "--codecs.text.config.block_size=4", "--codecs.text.config.max_tokens=24"]


@pytest.fixture(scope="module")
def codec_run(tmp_path_factory, autoload_plugins):
    run = tmp_path_factory.mktemp("text") / "vae"
    code = main(["train", "configs/text_vae.yaml", "--run-dir", str(run), "--no-progress", "--train.steps=3",
                 "--train.batch_size=8", "--train.log_every=1", "--eval.samples=16", "--train.mixed_precision=no",
                 "--codecs.text.config.tokens_per_latent=2", *TINY_CODEC])
    assert code == 0
    return run


def test_codec_stage_writes_the_codec_and_a_held_out_report(codec_run):
    assert (codec_run / "codecs" / "text" / "tokenizer" / "tokenizer.json").is_file()
    report = json.loads((codec_run / "report.json").read_text())["codecs"]["text"]
    assert report["train_steps"] == 3
    test = report["held_out"]["test"]
    for key in ("token_accuracy", "token_accuracy_t0.1", "token_accuracy_t0.25", "sequence_accuracy", "rate_nats_per_latent",
                "rate_nats_per_token", "active_channels", "token_accuracy_odd_prompts", "token_accuracy_even_prompts", "prompt_latent_max_diff"):
        assert key in test, key
    assert test["items"] == 16 and report["held_out"]["pydoc (out of domain)"]["items"] == 16
    assert test["prompt_latent_max_diff"] < 1e-4  # prompts encode to the whole text's first latents


def test_prior_stage_then_prompted_generation_stops_and_writes_samples(codec_run, capsys):
    run = codec_run.parent / "prior"
    code = main(["train", "configs/text_prior.yaml", "--run-dir", str(run), "--no-progress", "--train.steps=3",
                 "--train.batch_size=8", "--prior.preset=tiny", "--train.row_length=64", "--train.mixed_precision=no",
                 f"--codecs.text.pretrained={codec_run / 'codecs' / 'text'}", "--codecs.text.config.tokens_per_latent=2", *TINY_CODEC])
    assert code == 0
    code = main(["sample", str(run), "--prompt", "a small dog", "--prompt", "the river of", "--guidance", "1", "--no-progress"])
    assert code == 0
    lines = (run / "samples" / "text" / "g1" / "items.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["a small dog", "the river of"] and all("\t" in line for line in lines)
    code = main(["eval", str(run), "--samples", "6", "--no-progress"])  # held-out prompts, scored against their references
    assert code == 0
    text = json.loads((run / "report.json").read_text())["tasks"]["text"]
    row = text["text-continuation"]["guidance 1"]
    assert {"minilm to own reference", "shuffled minilm to own reference"} <= set(row)
    assert list(text["text-continuation"]) == ["items", "guidance 1", "ci95"]  # no condition: no guidance sweep
    ci = text["text-continuation"]["ci95"]["guidance 1"]["minilm to own reference"]
    assert ci[0] <= row["minilm to own reference"] <= ci[1]  # the 95% interval beside the score
    assert (run / "samples" / "text_continuations.txt").read_text().count(" >>> ") == text["text-continuation"]["items"]["continuation"]


def test_codec_stage_run_has_no_prior_to_sample(codec_run, capsys):
    assert main(["sample", str(codec_run)]) == 2
    assert "codec-stage run" in capsys.readouterr().err
