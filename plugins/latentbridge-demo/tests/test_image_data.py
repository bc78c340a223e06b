"""Images with captions: compositional scenes (captions true to what was placed), digits, photos, the source."""

from __future__ import annotations

import numpy as np
import pytest
import torch


from latentbridge_demo.data import images as im
from latentbridge_demo.datasets import ImageData, ImageOptions
from latentbridge.errors import ConfigError


def _ink(img: np.ndarray) -> np.ndarray:
    """Boolean [S, S]: pixels that are not (nearly) white paper."""
    return (img.astype(int).sum(-1) < 3 * 235)


def test_scenes_are_deterministic_and_captions_follow_the_placed_objects():
    a, b = im.scenes("train", 200), im.scenes("train", 200)
    assert a == b
    assert len({len(s.objects) for s in a}) == 3  # 1, 2 and 3 emoji
    for s in a:
        names = [o.name for o in s.objects]
        assert len(set(names)) == len(names) and all(n in s.caption for n in names)
        if s.relation == "above":
            assert s.objects[0].y < s.objects[1].y and s.caption.index(names[0]) < s.caption.index(" above ")
        elif s.relation == "to the left of":
            assert s.objects[0].x < s.objects[1].x
        elif len(s.objects) == 3:
            assert [o.x for o in s.objects] == sorted(o.x for o in s.objects)  # named left to right
    assert any("some grapes" in s.caption for s in im.scenes("train", 2000))  # no "a grapes"


def test_held_out_scenes_show_combinations_never_seen_in_training():
    train = {frozenset(o.name for o in s.objects) for s in im.scenes("train", 3000) if len(s.objects) > 1}
    test = [frozenset(o.name for o in s.objects) for s in im.scenes("test", 300) if len(s.objects) > 1]
    assert test and not (set(test) & train)


def test_rendered_scene_puts_ink_where_the_truth_says():
    scene = im.Scene((im.SceneObject("raccoon", 0.5, 0.27, 0.45), im.SceneObject("cucumber", 0.5, 0.73, 0.45)),
                     "a raccoon above a cucumber", "above")
    img = im.render_scene(scene, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    ink = _ink(img)
    assert ink[:32].sum() > 200 and ink[32:].sum() > 200  # one emoji in each half
    assert ink[:, :12].sum() < 10 and ink[:, -12:].sum() < 10  # nothing at the sides
    right = im.render_scene(im.Scene((im.SceneObject("raccoon", 0.73, 0.5, 0.45),), "x"), 64)
    assert _ink(right)[:, 32:].sum() > 10 * max(1, _ink(right)[:, :28].sum())


def test_scenes_render_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTBRIDGE_CACHE", str(tmp_path))
    images, captions, truth = im.load_scenes(32, "validation", 12)
    assert images.shape == (12, 32, 32, 3) and len(captions) == 12 and captions == [s.caption for s in truth]
    assert (tmp_path / "scenes_32_validation_12_0.npz").is_file()
    assert np.array_equal(im.load_scenes(32, "validation", 12)[0], images)


def test_scenes_from_a_subset_of_the_vocabulary(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTBRIDGE_CACHE", str(tmp_path))
    few = ["frog", "tomato", "grapes", "lemon"]
    chosen = im.scenes("train", 200, vocabulary=few)
    assert {o.name for s in chosen for o in s.objects} == set(few)
    assert any(len(s.objects) == 3 for s in chosen)
    eight = [*few, "penguin", "bear", "pig", "carrot"]
    combos = {split: {frozenset(o.name for o in s.objects) for s in im.scenes(split, 400, vocabulary=eight) if len(s.objects) > 1}
              for split in ("train", "test")}
    assert combos["test"] and not combos["test"] & combos["train"]  # held-out combinations stay out of training
    images, _, truth = im.load_scenes(32, "validation", 6, vocabulary=few)
    assert images.shape == (6, 32, 32, 3) and all(o.name in few for s in truth for o in s.objects)
    assert len(list(tmp_path.glob("scenes_32_validation_6_0_*.npz"))) == 1  # cached apart from the full vocabulary's
    with pytest.raises(ConfigError, match="not scene emoji.*choose from"):
        im.scenes("train", 5, vocabulary=["frog", "unicorn", "lemon"])
    with pytest.raises(ConfigError, match="at least 3 different"):
        im.scenes("train", 5, vocabulary=["frog", "frog", "lemon"])


def test_digits_have_captions_and_disjoint_splits():
    images, captions, labels = im.load_digits(32, "all")
    assert images.shape == (1797, 32, 32, 3) and captions[0] == "a handwritten digit zero" and labels[0] == 0
    sizes = [len(im.load_digits(32, s)[1]) for s in ("train", "validation", "test")]
    assert sum(sizes) == 1797 and sizes[0] > 1500 and min(sizes) > 50
    zero = images[0].astype(int)
    assert zero.mean() > 150 and zero.min() < 60  # dark ink on white paper


def test_photos_are_real_and_held_out():
    photos, names = im.load_photos(32)
    assert photos.shape[1:] == (32, 32, 3) and len(photos) >= 80 and "astronaut" in names
    assert float(photos.astype(float).std()) > 30  # natural images, not blank


def test_image_source_pairs_images_with_captions():
    src = ImageData(ImageOptions(sources=["digits", "emoji"], scenes=40), seed=0)
    assert isinstance(src, ImageData) and src.fields == {"image": "image", "text": "caption"}
    batch = src.batch(0, 8, torch.Generator())
    assert len(batch["image"]) == len(batch["caption"]) == 8 and batch["image"][0].shape == (32, 32, 3)
    assert src.batch(3, 8, torch.Generator())["caption"] == src.batch(3, 8, torch.Generator())["caption"]
    photos = src.split("photos", 5)
    assert len(photos["image"]) == 5 and photos["caption"][0] == "astronaut"
    test = src.split("test")
    assert set(test["caption"]).isdisjoint({c for c in src.train["caption"] if not c.startswith("a handwritten")})
    with pytest.raises(ConfigError, match="unknown image source"):
        ImageData(ImageOptions(sources=["emojis"]), seed=0)


def test_an_exact_number_of_combinations_is_held_out(tmp_path, monkeypatch):
    """held_out_combinations: 24 of the 84 pairs and triples of 8 emoji appear only in the test split, 6 only in
    validation; the scorer sees all 24 (the default hash split holds out about 8)."""
    monkeypatch.setenv("LATENTBRIDGE_CACHE", str(tmp_path))
    eight = ["frog", "tomato", "grapes", "lemon", "penguin", "bear", "pig", "carrot"]
    combos = {split: {frozenset(o.name for o in s.objects) for s in im.scenes(split, 2000, vocabulary=eight, held_out=24)
                      if len(s.objects) > 1} for split in ("train", "validation", "test")}
    assert (len(combos["test"]), len(combos["validation"]), len(combos["train"])) == (24, 6, 54)
    assert not combos["test"] & combos["train"] and not combos["validation"] & combos["train"]
    default = {frozenset(o.name for o in s.objects) for s in im.scenes("test", 2000, vocabulary=eight) if len(s.objects) > 1}
    assert len(default) < 20  # why the option exists
    images, _, truth = im.load_scenes(32, "test", 5, vocabulary=eight, held_out=24)
    assert [s.caption for s in truth] == [s.caption for s in im.scenes("test", 5, vocabulary=eight, held_out=24)]
    assert len(list(tmp_path.glob("scenes_32_test_5_0_*_h24.npz"))) == 1  # cached apart from the hash split's
    with pytest.raises(ConfigError, match="held_out_combinations: 80 .* leaves no combination .* hold out fewer"):
        im.scenes("train", 5, vocabulary=eight, held_out=80)
