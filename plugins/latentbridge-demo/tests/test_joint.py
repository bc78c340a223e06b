"""The joint multimodal job end to end on a tiny scale (configs/demo.yaml with tiny codecs and prior, a few steps):
three codecs train in the pre-stage on the data of the tasks that use them, one prior trains on the mixture,
the Pipeline generates all four directions, `latentbridge eval` scores them against shuffled controls and writes
report.md; and the evaluators themselves on real data (pocketsphinx, the scene checker). Wiring, not quality:
the quality figures come from `make demo` and configs/joint.yaml."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentbridge.cli import main
from latentbridge.errors import ConfigError

pytest.importorskip("latentbridge_text_vae")
pytest.importorskip("latentbridge_image_vae")
pytest.importorskip("latentbridge_audio")

TINY = ["--codecs.text.config.width=32", "--codecs.text.config.heads=2", "--codecs.text.config.encoder_layers=1",
        "--codecs.text.config.decoder_layers=1", "--codecs.speech.config.width=16", "--codecs.speech.config.blocks=1",
        "--codecs.text.steps=2", "--codecs.image.steps=2", "--codecs.speech.steps=2", "--codecs.speech.batch_size=4",
        "--prior.width=32", "--prior.depth=1", "--prior.heads=2", "--train.steps=3", "--train.batch_size=8",
        "--train.log_every=1", "--train.mixed_precision=no", "--data.config.scenes=40", "--sampling.steps=2",
        "--eval.samples=4", "--eval.guidance_scales=[1, 2]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, autoload_plugins):
    run_dir = tmp_path_factory.mktemp("joint") / "demo"
    assert main(["train", "configs/demo.yaml", "--run-dir", str(run_dir), "--no-progress", *TINY]) == 0
    return run_dir


@pytest.mark.slow
def test_codecs_and_prior_train_on_the_mixture(run):
    for role in ("text", "image", "speech"):
        assert (run / "codecs" / role / "codec.json").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {(r["stage"], r.get("role")) for r in rows} == {("codec", "text"), ("codec", "image"), ("codec", "speech"), ("prior", None)}
    prior = [r for r in rows if r["stage"] == "prior"]
    assert {"loss/text", "loss/image", "loss/speech"} <= set(prior[0])  # every target stream in every step's batch
    speech = json.loads((run / "codecs" / "speech" / "codec.json").read_text())
    assert speech["latent_spec"]["tokens_per_item"] == 24  # fixed_seconds 1.5 -> 3 blocks of 8


@pytest.mark.slow
def test_pipeline_generates_all_four_directions_deterministically(run):
    from latentbridge.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(run)
    assert [t.name for t in pipe.tasks] == ["caption_to_image", "image_to_caption", "text_to_speech", "speech_to_text"]
    images = pipe.generate({"text": ["a big owl", "a handwritten digit two", "a big owl"]}, target="image", seed=1)
    assert len(images) == 3 and images[0].shape == (32, 32, 3) and images[0].dtype == np.uint8
    again = pipe.generate({"text": ["a big owl", "a handwritten digit two", "a big owl"]}, target="image", seed=1, batch_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(images, pipe.generate({"text": ["a big owl", "a handwritten digit two", "a big owl"]},
                                                                        target="image", seed=1)))
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(images, again)) <= 1  # batches of 2 + 1: the same images
    captions = pipe.generate({"image": images}, max_tokens=16)  # the target follows from the conditions
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    waves = pipe.generate({"text": ["harbour", "Oslo"]}, target="speech", guidance=2.0)
    assert len(waves) == 2 and np.asarray(waves[0]).ndim == 1 and len(waves[0]) >= 16000  # 1.5 s at 16 kHz
    words = pipe.generate({"speech": waves}, target="text", max_tokens=16)
    assert len(words) == 2 and all(isinstance(w, str) for w in words)
    with pytest.raises(ConfigError, match="several tasks fit"):
        pipe.generate({"text": ["a big owl"]})
    with pytest.raises(ConfigError, match="has no task"):
        pipe.generate(prompts=["a big"], target="text")
    with pytest.raises(ConfigError, match="one item per example"):
        pipe.generate({"image": images[:2]}, prompts=["a"], target="text")
    with pytest.raises(ConfigError, match="fixed length and cannot be continued"):
        pipe.generate({"text": ["a"]}, prompts=["a"], target="image")


@pytest.mark.slow
def test_eval_scores_every_task_with_controls_and_writes_the_report(run, capsys):
    assert main(["eval", str(run), "--no-progress"]) == 0
    report = json.loads((run / "report.json").read_text())
    tasks = report["tasks"]
    assert set(tasks) == {"caption_to_image", "image_to_caption", "text_to_speech", "speech_to_text"}
    for name, evaluator, keys in [("caption_to_image", "caption-to-image", ["digit accuracy", "scene arrangement", "scene objects placed"]),
                                  ("image_to_caption", "image-to-caption", ["digits (held-out images) exact", "scenes (held-out) minilm"]),
                                  ("text_to_speech", "text-to-speech", ["WER"]), ("speech_to_text", "speech-to-text", ["word accuracy", "WER"])]:
        assert {"prior-fit", "reconstruction", "samples"} <= set(tasks[name])  # the generic evaluators apply to every task
        for g in ("guidance 1", "guidance 2"):
            for k in keys:
                assert k in tasks[name][evaluator][g] and f"shuffled {k}" in tasks[name][evaluator][g], (name, g, k)
                for key in (k, f"shuffled {k}"):  # every score with its 95% interval around it
                    lo, hi = tasks[name][evaluator]["ci95"][g][key]
                    assert lo <= tasks[name][evaluator][g][key] <= hi, (name, g, key)
    c2i = tasks["caption_to_image"]["caption-to-image"]
    assert not any("emoji" in k for k in c2i["guidance 1"])  # the demo's images are scenes and digits
    assert 0.0 <= tasks["text_to_speech"]["text-to-speech"]["real clips WER"] < 0.5  # the recognizer hears real flite speech
    assert c2i["scene_checker_accuracy_on_real_scenes"] > 0.85  # the demo's 8 scene emoji
    assert 0.0 <= c2i["scene_checker_accuracy_on_codec_reconstructions"] <= 1.0
    scenes = c2i["guidance 1"]
    assert "shuffled scene arrangement (pairs)" in scenes and "scene arrangement (seen combinations)" in scenes
    assert "shuffled scene arrangement (seen combinations)" not in scenes  # a diagnostic of fit, without control
    assert c2i["items"]["scenes (held-out combinations)"] == c2i["items"]["scenes (seen combinations)"]
    assert "without condition" in tasks["caption_to_image"]["prior-fit"]
    assert {"rate_nats_per_latent", "log_mel_l1"} <= set(tasks["text_to_speech"]["reconstruction"])  # the speech codec's own
    md = (run / "report.md").read_text()
    assert "## text_to_speech" in md and "shuffled (control)" in md and "samples/caption_to_image_digits_g2.png" in md
    assert ".wav" in md and "loss.png" in md
    assert list((run / "samples" / "text_to_speech_g2").glob("*.wav"))
    assert list((run / "samples" / "text_to_speech" / "g2").glob("*.wav"))  # the generic samples evaluator, via write_items
    assert "caption_to_image (text -> image)" in capsys.readouterr().out


@pytest.mark.slow
def test_sample_writes_grids_texts_and_wavs(run):
    out = run / "prompted"
    assert main(["sample", str(run), "--prompt", "a frog above a cat", "--prompt", "rocket", "--guidance", "2", "--no-progress",
                 "--out", str(out)]) == 0
    assert (out / "caption_to_image" / "g2" / "grid.png").is_file()
    assert sorted(p.name for p in (out / "text_to_speech" / "g2").glob("*.wav")) == ["00_a_frog_above_a_cat.wav", "01_rocket.wav"]
    assert not (out / "image_to_caption").exists()  # text prompts are no images: the task is left out
    assert main(["sample", str(run), "--task", "image_to_caption", "--samples", "3", "--guidance", "1", "--no-progress"]) == 0
    lines = (run / "samples" / "image_to_caption" / "g1" / "items.txt").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("00\t")
    assert main(["sample", str(run), "--task", "nope"]) == 2


# --------------------------------------------------------------------------------------------------
# Evaluators on real data
# --------------------------------------------------------------------------------------------------


def test_word_error_rate_agrees_with_jiwer():
    jiwer = pytest.importorskip("jiwer")
    from latentbridge_demo.evaluate.speech import _words, word_error_rate

    refs = ["a big owl", "Oslo", "the frog sat on a lemon", "seven"]
    hyps = ["a owl owl", "oslo harbour", "frog sat on lemon today", ""]
    norm = lambda texts: [" ".join(_words(t)) for t in texts]  # noqa: E731  (the same normalisation on both sides)
    assert word_error_rate(refs, hyps) == pytest.approx(jiwer.wer(norm(refs), norm(hyps)))


def test_word_error_rate():
    from latentbridge_demo.evaluate.speech import word_error_rate

    assert word_error_rate(["a big owl", "Oslo"], ["a big owl", "oslo"]) == 0.0
    assert word_error_rate(["a big owl"], ["a owl"]) == pytest.approx(1 / 3)
    assert word_error_rate(["owl"], ["the owl flew"]) == 2.0
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])


@pytest.mark.slow
def test_pocketsphinx_hears_real_flite_words_and_not_shuffled_ones():
    from latentbridge_demo.data.speech import load_speech
    from latentbridge_demo.evaluate.speech import WordRecognizer, pronounceable, word_error_rate

    waves, texts, _ = load_speech("test", 60, 16000, ["flite"])
    keep = [i for i, ok in enumerate(pronounceable(texts)) if ok]
    waves, texts = [waves[i] for i in keep], [texts[i] for i in keep]
    assert len(texts) >= 2
    asr = WordRecognizer(texts)
    assert word_error_rate(texts, asr.transcribe(waves)) < 0.25
    assert word_error_rate(texts[1:] + texts[:1], asr.transcribe(waves)) > 0.75
    heard = asr.transcribe([np.zeros(8000, dtype=np.float32)])  # silence: no crash, at most one vocabulary word
    assert len(heard) == 1 and (heard[0] == "" or heard[0] in asr.vocabulary)


def test_scene_checker_accepts_real_scenes_and_rejects_swapped_objects():
    from latentbridge_demo.data.images import load_scenes
    from latentbridge.evaluate import derangement as _shuffled
    from latentbridge_demo.evaluate.images import SceneChecker

    images, _, truth = load_scenes(32, "test", 60)
    checker = SceneChecker(32)
    objects, whole = checker.check(list(images), truth)
    assert np.mean(objects) > 0.9 and np.mean(whole) > 0.85
    order = _shuffled(len(truth), 0)
    _, wrong = checker.check([images[i] for i in order], truth)
    assert np.mean(wrong) < 0.2
    few = ["frog", "tomato", "grapes", "lemon", "penguin", "bear", "pig", "carrot"]
    images, _, truth = load_scenes(32, "test", 40, vocabulary=few)
    checker = SceneChecker(32, few)
    assert checker.names == few and np.mean(checker.check(list(images), truth)[1]) > 0.85


def test_multi_object_scenes_are_held_out_combinations_scored_by_kind():
    from latentbridge.evaluate import derangement as _shuffled
    from latentbridge_demo.evaluate.images import SceneChecker, _combination, multi_object_scenes, scene_scores

    few = ["frog", "tomato", "grapes", "lemon", "penguin", "bear", "pig", "carrot"]
    images, captions, truth = multi_object_scenes(32, "test", 32, few)
    assert len(images) == len(captions) == len(truth) == 32  # held-out pairs and rows are rare in the test split
    _, _, seen = multi_object_scenes(32, "train", 32, few)
    assert all(len(s.objects) > 1 for s in truth + seen)
    assert not {_combination(s) for s in truth} & {_combination(s) for s in seen}
    checker = SceneChecker(32, few)
    right = {k: v.mean for k, v in scene_scores(checker, images, truth).items()}
    assert {"scene arrangement", "scene objects placed", "scene arrangement (pairs)", "scene arrangement (rows of three)"} <= set(right)
    assert right["scene arrangement (pairs)"] == right["scene arrangement (rows of three)"] == 1.0
    wrong = scene_scores(checker, [images[i] for i in _shuffled(32, 0)], truth)
    assert wrong["scene arrangement"].mean < 0.2 and wrong["scene objects placed"].mean < 0.5
    placed, _ = checker.check([images[i] for i in _shuffled(32, 0)], truth)
    assert wrong["scene objects placed"].mean == pytest.approx(sum(placed) / len(placed))  # the share of all objects


def test_pretrained_codec_with_config_overrides(tmp_path, autoload_plugins):
    from latentbridge.codecs.base import Codec
    from latentbridge.errors import CheckpointError
    from latentbridge.plugins import registries

    reg = registries().codecs
    codec = reg.create("audio-vae", {"width": 16, "blocks": 1})
    codec.save_pretrained(tmp_path / "audio")
    fixed = reg.load(tmp_path / "audio", {"fixed_seconds": 1.5})
    assert fixed.latent_spec.tokens_per_item == 24 and reg.load(tmp_path / "audio").latent_spec.tokens_per_item is None
    assert all(torch_equal(a, b) for a, b in zip(fixed.state_dict().values(), codec.state_dict().values()))
    with pytest.raises(CheckpointError, match="does not match"):
        reg.load(tmp_path / "audio", {"width": 32})
    with pytest.raises(ConfigError, match="unknown config key"):
        reg.load(tmp_path / "audio", {"fixed_second": 1.5})
    assert Codec.read_meta(tmp_path / "audio")["config"]["fixed_seconds"] is None  # the saved codec is untouched


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))
