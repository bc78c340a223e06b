"""Images with captions that work offline (DATA.md, "Images with captions"), uint8 RGB [S, S, 3] on white.

    emoji    the Noto Color Emoji set with its names (latentbridge_demo.data.emoji), split 90/5/5 by name
    scenes   1-3 emoji of a fixed vocabulary (32, or a subset: data.config.scene_objects) at known positions
             and sizes, captioned from what was placed ("a raccoon above a cucumber"); the truth of
             every scene is recorded (SceneObject)
    digits   scikit-learn's 1,797 handwritten 8x8 digits, dark ink on white, "a handwritten digit seven"
    photos   real photographs bundled with scikit-image and scikit-learn (held-out only: codec diagnostics)

Scenes are a pure function of (split, index): the split of a scene with two or three emoji is a hash
of its unordered set of names, so a held-out scene shows a combination never seen in training
(single-emoji scenes appear in every split). Rendered sets are cached per size (emoji.cached_npz).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import lru_cache
from typing import Sequence

import numpy as np

from latentbridge_demo.data.emoji import cached_npz, emoji_chars, glyph_rgba, load_emoji
from latentbridge.errors import ConfigError

SPLITS = ("train", "validation", "test")
IMAGE_SOURCES = ("emoji", "scenes", "digits")
SCENE_VOCABULARY = (
    "raccoon", "cucumber", "cat", "dog", "pear", "banana", "rabbit", "fox", "bear", "frog", "monkey", "pig",
    "cow", "tiger", "lion", "horse", "owl", "penguin", "octopus", "snail", "turtle", "duck", "mushroom",
    "carrot", "tomato", "strawberry", "grapes", "watermelon", "lemon", "pineapple", "rocket", "ghost",
)
RELATIONS = ("above", "below", "to the left of", "to the right of")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SCENE_SEEDS = {"train": 0, "validation": 1, "test": 2}


def scene_vocabulary(names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The emoji scenes draw from: `names` (a subset of SCENE_VOCABULARY, in the given order) or all 32."""
    if names is None:
        return SCENE_VOCABULARY
    names = tuple(str(n) for n in names)
    unknown = [n for n in names if n not in SCENE_VOCABULARY]
    if unknown:
        raise ConfigError(f"data.config.scene_objects: {unknown} are not scene emoji; choose from {', '.join(SCENE_VOCABULARY)}")
    if len(set(names)) != len(names) or len(names) < 3:
        raise ConfigError(f"data.config.scene_objects: give at least 3 different names (a scene holds up to 3), got {list(names)}")
    return names


def vocabulary_tag(names: Sequence[str] | None) -> str:
    """'' for the full scene vocabulary, else '_' + a short hash of the names (for cache file names)."""
    if names is None or tuple(names) == SCENE_VOCABULARY:
        return ""
    return "_" + hashlib.sha1(",".join(names).encode()).hexdigest()[:8]


def hash_split(key: str, fractions: tuple[float, float] = (0.9, 0.95)) -> str:
    """train / validation / test by a hash of `key` (90 / 5 / 5 by default)."""
    u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    return "train" if u < fractions[0] else "validation" if u < fractions[1] else "test"


PLURALS = frozenset({"grapes"})


def article(name: str) -> str:
    if name in PLURALS:
        return "some " + name
    return ("an " if name[0] in "aeiou" else "a ") + name


def _check_split(split: str, allowed: Sequence[str] = (*SPLITS, "all")) -> None:
    if split not in allowed:
        raise ConfigError(f"unknown split {split!r}; use {', '.join(allowed)}")


# --------------------------------------------------------------------------------------------------
# Compositional scenes
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """One emoji of a scene: its name, centre (x right, y down) and side, as fractions of the image side."""

    name: str
    x: float
    y: float
    size: float


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    caption: str
    relation: str | None = None
    """For two emoji: how the first named stands to the second (above, below, to the left of, to the right of)."""


def _combination_key(names: Sequence[str]) -> str:
    return "+".join(sorted(names))


@lru_cache(maxsize=16)
def _held_out_combinations(vocabulary: tuple[str, ...], n: int) -> dict[str, str]:
    """The split of every 2- and 3-emoji combination of `vocabulary` when exactly n are held out: all combinations
    ranked by a hash of their names, the first n test, the next max(1, n // 4) validation, the rest train."""
    import itertools

    combos = [_combination_key(c) for k in (2, 3) for c in itertools.combinations(vocabulary, k)]
    if n + max(1, n // 4) >= len(combos):
        raise ConfigError(f"held_out_combinations: {n} (and {max(1, n // 4)} for validation) leaves no combination of the "
                          f"{len(vocabulary)} scene emoji ({len(combos)} in all) to train on; hold out fewer")
    ranked = sorted(combos, key=lambda c: hashlib.sha1(c.encode()).digest())
    return {c: "test" if i < n else "validation" if i < n + max(1, n // 4) else "train" for i, c in enumerate(ranked)}


def _scene_split(names: Sequence[str], vocabulary: tuple[str, ...] = SCENE_VOCABULARY, held_out: int | None = None) -> str | None:
    """None for a single emoji (every split); else the split of the combination: a hash of its names, 80 / 10 / 10,
    or with `held_out` exactly that many combinations of `vocabulary` in the test split (_held_out_combinations)."""
    if len(names) == 1:
        return None
    if held_out is None:
        return hash_split(_combination_key(names), (0.8, 0.9))
    return _held_out_combinations(tuple(vocabulary), int(held_out))[_combination_key(names)]


def held_out_tag(held_out: int | None) -> str:
    """'' for the 80/10/10 hash split, else '_h' + the count (for cache file names)."""
    return "" if held_out is None else f"_h{int(held_out)}"


def make_scene(rng: np.random.Generator, vocabulary: Sequence[str] = SCENE_VOCABULARY) -> Scene:
    """One random scene drawn with `rng` and its caption, from what was placed."""
    k = int(rng.choice([1, 2, 3], p=[0.25, 0.45, 0.3]))
    names = [str(n) for n in rng.choice(vocabulary, size=k, replace=False)]
    jitter = lambda: float(rng.uniform(-0.04, 0.04))  # noqa: E731
    if k == 1:
        big = bool(rng.integers(2))
        size = 0.8 if big else 0.45
        obj = SceneObject(names[0], 0.5 + jitter(), 0.5 + jitter(), size)
        return Scene((obj,), f"{'a big' if big else 'a small'} {names[0]}")
    if k == 2:
        relation = str(rng.choice(RELATIONS))
        near, far = 0.27, 0.73
        first, second = {"above": ((0.5, near), (0.5, far)), "below": ((0.5, far), (0.5, near)),
                          "to the left of": ((near, 0.5), (far, 0.5)), "to the right of": ((far, 0.5), (near, 0.5))}[relation]
        objs = tuple(SceneObject(n, x + jitter(), y + jitter(), 0.45) for n, (x, y) in zip(names, (first, second)))
        return Scene(objs, f"{article(names[0])} {relation} {article(names[1])}", relation)
    objs = tuple(SceneObject(n, x, 0.5 + jitter(), 0.32) for n, x in zip(names, (1 / 6, 3 / 6, 5 / 6)))
    return Scene(objs, f"{article(names[0])}, {article(names[1])} and {article(names[2])} in a row")


def scenes(split: str, n: int, seed: int = 0, vocabulary: Sequence[str] | None = None,
           held_out: int | None = None) -> list[Scene]:
    """The first n scenes of `split` drawn from `vocabulary` (null: all 32 emoji), with `held_out` combinations in
    the test split (null: 10% of them, by a hash); deterministic: a pure function of the arguments."""
    _check_split(split, SPLITS)
    vocabulary = scene_vocabulary(vocabulary)
    rng = np.random.default_rng([seed, SCENE_SEEDS[split]])
    out: list[Scene] = []
    while len(out) < n:
        scene = make_scene(rng, vocabulary)
        s = _scene_split([o.name for o in scene.objects], vocabulary, held_out)
        if s is None or s == split:
            out.append(scene)
    return out


@lru_cache(maxsize=4)
def _glyphs(size: int) -> dict[str, object]:
    chars = emoji_chars()
    missing = [n for n in SCENE_VOCABULARY if n not in chars]
    if missing:
        raise ConfigError(f"scene vocabulary names no emoji for {missing}; the installed `emoji` package has other names.")
    return {n: glyph_rgba(chars[n]).resize((size, size), _lanczos()) for n in SCENE_VOCABULARY}


def _lanczos():
    from PIL import Image

    return Image.LANCZOS


def render_scene(scene: Scene, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: the scene's emoji pasted on white at their recorded positions and sizes."""
    from PIL import Image

    master = _glyphs(4 * size)
    canvas = Image.new("RGBA", (4 * size, 4 * size), (255, 255, 255, 255))
    for o in scene.objects:  # drawn at 4x, then downsampled once
        side = round(o.size * 4 * size)
        glyph = master[o.name].resize((side, side), _lanczos())
        canvas.alpha_composite(glyph, (round(o.x * 4 * size - side / 2), round(o.y * 4 * size - side / 2)))
    return np.asarray(canvas.convert("RGB").resize((size, size), _lanczos()), dtype=np.uint8)


def load_scenes(size: int = 32, split: str = "train", n: int = 4000, seed: int = 0,
                vocabulary: Sequence[str] | None = None, held_out: int | None = None) -> tuple[np.ndarray, list[str], list[Scene]]:
    """n scenes of `split` from `vocabulary` (null: all 32 emoji; `held_out` as in `scenes`) rendered at size x size
    (cached): images, captions and the recorded truth."""
    chosen = scenes(split, n, seed, vocabulary, held_out)

    def build():
        images = np.stack([render_scene(s, size) for s in chosen])
        return {"images": images}

    images = cached_npz(f"scenes_{size}_{split}_{n}_{seed}{vocabulary_tag(vocabulary)}{held_out_tag(held_out)}.npz", build)["images"]
    return images, [s.caption for s in chosen], chosen


def scene_to_json(scene: Scene) -> str:
    return json.dumps(dataclasses.asdict(scene))


# --------------------------------------------------------------------------------------------------
# Digits and photos
# --------------------------------------------------------------------------------------------------


def _upscale(gray: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(gray).resize((size, size), Image.BICUBIC).convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def load_digits(size: int = 32, split: str = "all") -> tuple[np.ndarray, list[str], np.ndarray]:
    """scikit-learn's handwritten digits as dark ink on white at size x size: images, captions, labels.

    Split 90/5/5 by a hash of each digit's index in the bundled set."""
    _check_split(split)
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()

    def build():
        ink = (data.images / 16.0).clip(0, 1)  # [N, 8, 8], 0 paper .. 1 ink
        gray = ((1 - ink) * 255).round().astype(np.uint8)
        return {"images": np.stack([_upscale(g, size) for g in gray])}

    images = cached_npz(f"digits_{size}.npz", build)["images"]
    labels = np.asarray(data.target)
    keep = np.arange(len(labels)) if split == "all" else np.array([i for i in range(len(labels)) if hash_split(f"digit-{i}") == split])
    return images[keep], [f"a handwritten digit {DIGIT_NAMES[int(y)]}" for y in labels[keep]], labels[keep]


PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "coins", "moon", "brick", "grass", "gravel", "clock", "page", "cell", "microaneurysms")


def centre_square(img: np.ndarray) -> np.ndarray:
    """Any image array (grey [H, W], RGB or RGBA [H, W, C]) -> its centred square crop as uint8 RGB."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    img = img[..., :3].astype(np.uint8)
    h, w = img.shape[:2]
    s = min(h, w)
    return img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> [size, size, 3] (Lanczos)."""
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS), dtype=np.uint8)


def load_photos(size: int = 32) -> tuple[np.ndarray, list[str]]:
    """Real photographs bundled with scikit-image (no download) and scikit-learn, centre-cropped square and
    resized, plus the four corner quarter-crops of each: images uint8 [N, size, size, 3] and names."""
    try:
        import skimage.data
    except ImportError:
        raise ConfigError("photos need the PyPI package scikit-image (`make setup` installs it).") from None
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    raw = [(name, getattr(skimage.data, name)()) for name in PHOTOS]
    raw += [(f"sklearn {fname.rsplit('/', 1)[-1]}", img) for fname, img in zip(samples.filenames, samples.images)]
    images, names = [], []
    for name, img in raw:
        square = centre_square(img)
        half = square.shape[0] // 2
        crops = {"": square, " top left": square[:half, :half], " top right": square[:half, half:],
                 " bottom left": square[half:, :half], " bottom right": square[half:, half:]}
        for suffix, crop in crops.items():
            images.append(resize(np.ascontiguousarray(crop), size))
            names.append(name + suffix)
    return np.stack(images), names


# --------------------------------------------------------------------------------------------------
# All together
# --------------------------------------------------------------------------------------------------


def load_images(sources: Sequence[str], split: str, size: int = 32, scenes_per_split: int = 4000,
                seed: int = 0, scene_objects: Sequence[str] | None = None,
                held_out: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Images and captions of `split` from the named sources (emoji, scenes, digits), concatenated.

    Held-out scene splits hold scenes_per_split // 20 scenes, drawn like the training ones from
    `scene_objects` (null: all 32 scene emoji), `held_out` of their 2-3 emoji combinations in the test split (null: 10%)."""
    _check_split(split, SPLITS)
    unknown = [s for s in sources if s not in IMAGE_SOURCES]
    if unknown or not sources:
        raise ConfigError(f"data.config.sources: unknown image source(s) {unknown or sources}; choose from {', '.join(IMAGE_SOURCES)}")
    images, captions = [], []
    for src in sources:
        if src == "emoji":
            im, cap = load_emoji(size, split)
        elif src == "scenes":
            im, cap, _ = load_scenes(size, split, scenes_per_split if split == "train" else max(1, scenes_per_split // 20), seed,
                                    scene_objects, held_out)
        else:
            im, cap, _ = load_digits(size, split)
        images.append(im)
        captions += cap
    return np.concatenate(images), captions
