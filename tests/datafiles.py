"""Your-own-data layouts, written from real offline data (emoji renders with their names, WordNet glosses, espeak-ng
speech), for the tests of the generic data sets and benchmarks/data_pipeline.py."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np


def emoji(n: int, size: int = 32) -> tuple[list[np.ndarray], list[str]]:
    """n emoji images [size, size, 3] uint8 with their names (repeated past the 3,859 there are)."""
    from latentbridge_demo.data.emoji import load_emoji

    images, names = load_emoji(size)
    idx = [i % len(names) for i in range(n)]
    return [images[i] for i in idx], [names[i] for i in idx]


def glosses(n: int) -> list[str]:
    """n WordNet glosses ("word: definition")."""
    from latentbridge_demo.data.text import wordnet_glosses

    texts = wordnet_glosses()
    return [texts[(i * 7919) % len(texts)] for i in range(n)]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_imagefolder(root: Path, n: int, metadata: str = "jsonl", size: int = 32, shard_dirs: int = 0) -> Path:
    """A `datasets`-style image folder: NNNNNN.png + metadata.jsonl / metadata.csv (file_name, text), or sidecar .txt."""
    root.mkdir(parents=True, exist_ok=True)
    images, names = emoji(n, size)
    rows = []
    for i, (im, name) in enumerate(zip(images, names)):
        rel = f"{i // 1000:03d}/{i:06d}.png" if shard_dirs else f"{i:06d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png_bytes(im))
        rows.append({"file_name": rel, "text": name})
        if metadata == "sidecar":
            (root / rel).with_suffix(".txt").write_text(name + "\n")
    if metadata == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif metadata == "csv":
        with open(root / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, ["file_name", "text"])
            w.writeheader()
            w.writerows(rows)
    return root


def speech(texts: list[str], directory: Path) -> list[Path]:
    """Each text spoken by espeak-ng into directory/NNNN.wav (22.05 kHz)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (make setup installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for i, t in enumerate(texts):
        path = directory / f"{i:04d}.wav"
        subprocess.run([exe, "-v", "en-us", "-w", str(path), t], check=True, capture_output=True)
        out.append(path)
    return out


def spoken_words(n: int) -> list[str]:
    words = ["red", "green", "blue", "one", "two", "three", "cat", "dog", "sun", "moon", "tree", "house"]
    return [f"{words[i % len(words)]} {words[(i * 5 + 1) % len(words)]}" for i in range(n)]


def write_audiofolder(root: Path, n: int, metadata: str = "jsonl") -> Path:
    texts = spoken_words(n)
    paths = speech(texts, root)
    rows = [{"file_name": p.name, "text": t} for p, t in zip(paths, texts)]
    if metadata == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        for p, t in zip(paths, texts):
            p.with_suffix(".txt").write_text(t + "\n")
    return root


def write_jsonl(path: Path, n: int, column: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({column: t, "id": i}) + "\n" for i, t in enumerate(glosses(n))))
    return path


def write_webdataset(root: Path, n: int, shards: int, size: int = 32) -> str:
    """Tar shards root/shard-000000.tar ... with <key>.png + <key>.txt per sample (webdataset's TarWriter); returns the
    brace pattern."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    images, names = emoji(n, size)
    per = -(-n // shards)
    for s in range(shards):
        with wds.TarWriter(str(root / f"shard-{s:06d}.tar")) as sink:
            for i in range(s * per, min(n, (s + 1) * per)):
                sink.write({"__key__": f"sample{i:06d}", "png": png_bytes(images[i]), "txt": names[i]})
    return str(root / f"shard-{{000000..{shards - 1:06d}}}.tar")


def write_hf(root: Path, n: int, size: int = 32) -> Path:
    """A `datasets` Dataset with an Image column and a caption column, saved with save_to_disk."""
    import datasets

    images, names = emoji(n, size)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, im in enumerate(images):
            p = Path(tmp) / f"{i:06d}.png"
            p.write_bytes(png_bytes(im))
            files.append(str(p))
        ds = datasets.Dataset.from_dict({"image": files, "caption": names}).cast_column("image", datasets.Image())
        ds = ds.map(lambda row: row, features=ds.features)  # embed the image bytes: the folder stands alone
        ds.save_to_disk(str(root))
    return root
