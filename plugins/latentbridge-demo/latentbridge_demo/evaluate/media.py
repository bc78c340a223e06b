"""Writing items a researcher looks at or listens to: image grids (PNG), waves (WAV), log-mel panels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def image_grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 4, gap: int = 2) -> np.ndarray:
    """uint8 [H, W, 3]: rows of equally sized uint8 images [S, S, 3], upscaled `scale`x (nearest), on grey."""
    side = rows[0][0].shape[0] * scale
    width = max(len(r) for r in rows)
    out = np.full((len(rows) * (side + gap) + gap, width * (side + gap) + gap, 3), 200, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            big = np.repeat(np.repeat(np.asarray(img, dtype=np.uint8), scale, 0), scale, 1)
            y, x = gap + i * (side + gap), gap + j * (side + gap)
            out[y : y + side, x : x + side] = big
    return out


def reconstruction_grid(originals: Sequence[np.ndarray], reconstructions: Sequence[np.ndarray], per_row: int = 8,
                        scale: int = 4) -> np.ndarray:
    """Originals above their reconstructions, `per_row` pairs to a band."""
    rows = []
    for i in range(0, len(originals), per_row):
        rows += [list(originals[i : i + per_row]), list(reconstructions[i : i + per_row])]
    return image_grid(rows, scale)


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def save_wav(wave: np.ndarray, sample_rate: int, path: str | os.PathLike) -> Path:
    """Mono float wave in [-1, 1] as 16-bit PCM WAV (soundfile)."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(np.asarray(wave, dtype=np.float32), -1, 1), sample_rate, subtype="PCM_16")
    return path


def log_mel_panels(pairs: Sequence[tuple[np.ndarray, np.ndarray]], titles: Sequence[str], log_mel, path: str | os.PathLike) -> Path:
    """A figure of log-mel spectrograms, original (left) beside reconstruction (right), one row per clip.

    `log_mel(wave) -> [M, T]` computes the spectrogram (e.g. the audio codec's own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    fig, axes = plt.subplots(len(pairs), 2, figsize=(8, 1.6 * len(pairs)), squeeze=False)
    for row, ((a, b), title) in enumerate(zip(pairs, titles)):
        for col, (wave, what) in enumerate(((a, "original"), (b, "reconstruction"))):
            ax = axes[row, col]
            ax.imshow(log_mel(torch.as_tensor(np.asarray(wave, dtype=np.float32))).numpy(), origin="lower", aspect="auto", cmap="magma")
            ax.set_title(f"{title}: {what}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
