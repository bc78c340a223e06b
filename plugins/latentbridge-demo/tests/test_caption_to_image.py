"""Caption -> image through one prior, end to end through the CLI with tiny codecs and a tiny prior, and the
evaluators it is scored by (emoji retrieval, the digit classifier, the shuffled-caption control).

A handful of steps: wiring, not quality (the quality figures come from configs/caption_to_image.yaml).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentbridge.cli import main
from latentbridge.evaluate import derangement
from latentbridge_demo.evaluate.images import DigitClassifier, EmojiRetrieval

pytest.importorskip("latentbridge_text_vae")
pytest.importorskip("latentbridge_image_vae")

TINY = ["--codecs.caption.pretrained=null", "--codecs.image.pretrained=null",
        "--codecs.caption.config.width=32", "--codecs.caption.config.heads=2", "--codecs.caption.config.encoder_layers=1",
        "--codecs.caption.config.decoder_layers=1", "--codecs.caption.config.max_tokens=16",
        "--prior.preset=tiny", "--train.codec_steps=2", "--train.steps=2", "--train.batch_size=8", "--train.log_every=1",
        "--train.mixed_precision=no", "--data.config.scenes=40", "--sampling.steps=2"]


def test_emoji_retrieval_finds_real_emoji_and_ranks_a_wrong_one_low():
    from latentbridge_demo.data.emoji import load_emoji

    images, names = load_emoji(32, "test")
    r = EmojiRetrieval(32)
    ranks = r.ranks(list(images[:20]), names[:20])
    assert bool((ranks == 0).all())  # a real emoji is its own nearest neighbour
    wrong = r.ranks(list(images[:20]), names[1:21])
    assert float(wrong.float().median()) > 50


def test_digit_classifier_trains_in_seconds():
    model, acc = DigitClassifier.train_on_digits(32, steps=150)
    assert acc > 0.9


def test_shuffled_control_moves_every_caption():
    order = derangement(50, 0)
    assert sorted(order) == list(range(50)) and all(i != j for i, j in enumerate(order))


@pytest.mark.slow
def test_caption_grids_show_whole_captions(tmp_path):
    """Captions are wrapped, not cut: every word of a long caption is in the title, no line is wider than the
    wrap width, and the grid grows to hold the lines."""
    from PIL import Image

    from latentbridge_demo.evaluate.images import caption_grid, wrap_caption

    long = "a frog to the left of a penguin and a lemon below a carrot, all on a plain background"
    lines = wrap_caption(long).split("\n")
    assert " ".join(lines) == long and len(lines) >= 3 and all(len(line) <= 24 for line in lines)
    assert wrap_caption("seven") == "seven"
    assert wrap_caption("x" * 50).replace("\n", "") == "x" * 50  # a long word is split, not dropped
    assert "\x07" not in wrap_caption("bell\x07 ring")
    images = [np.zeros((8, 8, 3), dtype=np.uint8)] * 2
    short_png = caption_grid(images, ["one", "two"], tmp_path / "short.png", per_row=2)
    long_png = caption_grid(images, [long, "two"], tmp_path / "long.png", per_row=2)
    assert Image.open(long_png).size[1] > Image.open(short_png).size[1]


def test_caption_to_image_trains_samples_and_reports(tmp_path, autoload_plugins, capsys):
    run = tmp_path / "c2i"
    assert main(["train", "configs/caption_to_image.yaml", "--run-dir", str(run), "--no-progress", *TINY]) == 0
    assert (run / "codecs" / "caption" / "codec.json").is_file() and (run / "codecs" / "image" / "codec.json").is_file()
    assert main(["eval", str(run), "--samples", "8", "--guidance", "1", "2", "--no-progress"]) == 0
    report = json.loads((run / "report.json").read_text())["tasks"]["caption_to_image"]
    assert {"caption-to-image", "prior-fit", "reconstruction", "samples"} <= set(report)  # the demo's and the generic ones
    rows = report["caption-to-image"]
    for g in ("guidance 1", "guidance 2"):
        assert {"emoji (seen names) top1", "shuffled emoji (seen names) top1", "digit accuracy", "shuffled digit accuracy"} <= set(rows[g])
    assert (run / "samples" / "caption_to_image_emoji_g2.png").is_file()
    assert (run / "samples" / "caption_to_image" / "g2" / "grid.png").is_file()  # the generic evaluator, through write_items
    assert main(["sample", str(run), "--prompt", "a raccoon above a cucumber", "--guidance", "1", "--no-progress"]) == 0
    assert (run / "samples" / "caption_to_image" / "g1" / "00_a_raccoon_above_a_cucumber.png").is_file()

    from latentbridge.errors import ConfigError
    from latentbridge.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(run)
    captions = ["a big owl", "a handwritten digit seven", "a big owl"]
    a = pipe.generate({"caption": captions}, guidance=2.0, seed=3, steps=2)
    b = pipe.generate({"caption": captions}, guidance=2.0, seed=3, steps=2, batch_size=2)
    assert len(a) == 3 and a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(a, pipe.generate({"caption": captions}, guidance=2.0, seed=3, steps=2)))
    assert len(b) == 3 and max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b)) <= 1  # 2 + 1: the same images
    with pytest.raises(ConfigError, match="has no task caption -> caption"):
        pipe.generate({"caption": captions}, target="caption")
    with pytest.raises(ConfigError, match="does not have"):
        pipe.generate({"text": captions})
    with pytest.raises(ConfigError, match="has no task"):
        pipe.generate(prompts=["a big"])
