"""Emoji images with names: rendered from the Noto Color Emoji font, cached, split by name."""

from __future__ import annotations

import numpy as np
import pytest

from latentbridge_demo.data import emoji as em
from latentbridge.errors import ConfigError


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("LATENTBRIDGE_CACHE", str(root))
    yield root
    mp.undo()


def test_renders_every_joinable_emoji_once_and_caches(cached):
    images, names = em.load_emoji(32)
    assert images.shape == (3859, 32, 32, 3) and images.dtype == np.uint8  # DATA.md: 3,859
    assert len(set(names)) == len(names)
    assert {"baby chick", "map of Japan", "red apple"} <= set(names)
    assert (cached / "emoji_32.npz").is_file()
    again, names_again = em.load_emoji(32)  # from the cache
    assert np.array_equal(again, images) and names_again == names
    apple = images[names.index("red apple")].astype(int)
    assert apple[..., 0].mean() > apple[..., 2].mean() + 30  # red, not blank or grey
    assert np.median(images[:, 0, 0]) >= 250  # corners are mostly the white background


def test_splits_are_disjoint_and_cover_the_set(cached):
    parts = {s: em.load_emoji(32, s)[1] for s in ("train", "validation", "test")}
    assert sum(map(len, parts.values())) == 3859
    assert not set(parts["train"]) & set(parts["test"])
    assert 0.03 < len(parts["test"]) / 3859 < 0.08
    with pytest.raises(ConfigError, match="unknown split"):
        em.load_emoji(32, "dev")
