"""Real colour images with names: the emoji of Debian's Noto Color Emoji font (DATA.md, "Images").

Each fully-qualified emoji of the PyPI `emoji` package is drawn with the bitmap font at its one
size (109), cropped to its bounding box, centred on a square transparent canvas and resized; its
English name ("baby chick", "map of Japan") is the caption. Sequences the font cannot join into
one glyph (they render wider than one glyph) are skipped. The set is rendered once per size and
cached as an .npz file; the split is a hash of the name (deterministic, order-free).

Images are uint8 RGB [N, S, S, 3] composited on white (the transparent background becomes white).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from latentbridge.errors import ConfigError

FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
FONT_SIZE = 109  # the bitmap font's only size
GLYPH = 136  # one glyph's advance at that size: wider renders are unjoined sequences


def cache_dir() -> Path:
    return Path(os.environ.get("LATENTBRIDGE_CACHE", Path.home() / ".cache" / "latentbridge"))


def _name(code: str) -> str:
    return code.strip(":").replace("_", " ")


def render_emoji(size: int = 32) -> tuple[np.ndarray, list[str]]:
    """All joinable fully-qualified emoji at size x size: images uint8 [N, size, size, 3] and names."""
    try:
        import emoji
    except ImportError:
        raise ConfigError("emoji images need the PyPI package `emoji` (make setup installs it).") from None
    from PIL import Image, ImageDraw, ImageFont

    if not FONT.is_file():
        raise ConfigError(f"emoji font not found at {FONT}. Install the Debian package fonts-noto-color-emoji (`make setup` does it).")
    font = ImageFont.truetype(str(FONT), FONT_SIZE)
    images, names, seen = [], [], set()
    for char, data in emoji.EMOJI_DATA.items():
        if data.get("status") != emoji.STATUS["fully_qualified"]:
            continue
        name = _name(data["en"])
        if name in seen:
            continue
        canvas = Image.new("RGBA", (2 * GLYPH, 2 * GLYPH), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
        box = canvas.getbbox()
        if box is None or box[2] - box[0] > GLYPH + 4 or box[3] - box[1] > GLYPH + 4:
            continue  # empty or an unjoined sequence
        glyph = canvas.crop(box)
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
        square.paste(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
        white = Image.new("RGBA", square.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, square).convert("RGB").resize((size, size), Image.LANCZOS)
        images.append(np.asarray(rgb, dtype=np.uint8))
        names.append(name)
        seen.add(name)
    return np.stack(images), names


def load_emoji(size: int = 32, split: str = "all") -> tuple[np.ndarray, list[str]]:
    """Cached emoji images and names of `split` (train 90%, validation 5%, test 5% by a hash of the name)."""
    if split not in ("train", "validation", "test", "all"):
        raise ConfigError(f"unknown split {split!r}; use train, validation, test or all")
    path = cache_dir() / f"emoji_{size}.npz"
    if path.is_file():
        data = np.load(path)
        images, names = data["images"], [str(n) for n in data["names"]]
    else:
        images, names = render_emoji(size)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, images=images, names=np.array(names))
        os.replace(tmp, path)
    if split == "all":
        return images, names
    keep = [i for i, n in enumerate(names) if emoji_split(n) == split]
    return images[keep], [names[i] for i in keep]


def emoji_split(name: str) -> str:
    u = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") / 2**64
    return "train" if u < 0.9 else "validation" if u < 0.95 else "test"
