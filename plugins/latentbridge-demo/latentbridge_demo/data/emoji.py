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


def _font():
    from PIL import ImageFont

    if not FONT.is_file():
        raise ConfigError(f"emoji font not found at {FONT}. Install the Debian package fonts-noto-color-emoji (`make setup` does it).")
    return ImageFont.truetype(str(FONT), FONT_SIZE)


def glyph_rgba(char: str, font=None):
    """One emoji drawn by the font, cropped and centred on a transparent square (PIL RGBA), or None when the
    font draws nothing or cannot join the sequence into one glyph."""
    from PIL import Image, ImageDraw

    font = font or _font()
    canvas = Image.new("RGBA", (2 * GLYPH, 2 * GLYPH), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or box[2] - box[0] > GLYPH + 4 or box[3] - box[1] > GLYPH + 4:
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    square.paste(glyph, ((side - glyph.size[0]) // 2, (side - glyph.size[1]) // 2))
    return square


def emoji_chars() -> dict[str, str]:
    """Name -> character of every fully-qualified emoji (names as load_emoji gives them)."""
    try:
        import emoji
    except ImportError:
        raise ConfigError("emoji images need the PyPI package `emoji` (make setup installs it).") from None
    out: dict[str, str] = {}
    for char, data in emoji.EMOJI_DATA.items():
        if data.get("status") == emoji.STATUS["fully_qualified"]:
            out.setdefault(_name(data["en"]), char)
    return out


def render_emoji(size: int = 32) -> tuple[np.ndarray, list[str]]:
    """All joinable fully-qualified emoji at size x size: images uint8 [N, size, size, 3] and names."""
    from PIL import Image

    font = _font()
    images, names = [], []
    for name, char in emoji_chars().items():
        glyph = glyph_rgba(char, font)
        if glyph is None:
            continue  # empty or an unjoined sequence
        white = Image.new("RGBA", glyph.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, glyph).convert("RGB").resize((size, size), Image.LANCZOS)
        images.append(np.asarray(rgb, dtype=np.uint8))
        names.append(name)
    return np.stack(images), names


def cached_npz(name: str, build) -> dict[str, np.ndarray]:
    """Arrays of cache_dir()/name, made by build() -> dict of arrays the first time (written atomically)."""
    path = cache_dir() / name
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    arrays = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def load_emoji(size: int = 32, split: str = "all") -> tuple[np.ndarray, list[str]]:
    """Cached emoji images and names of `split` (train 90%, validation 5%, test 5% by a hash of the name)."""
    if split not in ("train", "validation", "test", "all"):
        raise ConfigError(f"unknown split {split!r}; use train, validation, test or all")

    def build():
        images, names = render_emoji(size)
        return {"images": images, "names": np.array(names)}

    data = cached_npz(f"emoji_{size}.npz", build)
    images, names = data["images"], [str(n) for n in data["names"]]
    if split == "all":
        return images, names
    keep = [i for i, n in enumerate(names) if emoji_split(n) == split]
    return images[keep], [names[i] for i in keep]


def emoji_split(name: str) -> str:
    u = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big") / 2**64
    return "train" if u < 0.9 else "validation" if u < 0.95 else "test"
