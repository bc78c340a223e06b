"""Scoring images of the demo world, with models built or trained here.

    EmojiRetrieval     nearest real emoji of a generated image (all 3,859): the rank of the named one
    DigitClassifier    a small CNN trained in seconds on the digits' training split
    SceneChecker       whether each emoji a scene caption names appears where it says
    caption_grid       a figure of images with their captions

Dimensions: B images, S pixels a side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn



# --------------------------------------------------------------------------------------------------
# Evaluators trained (or built) here
# --------------------------------------------------------------------------------------------------


def _features(images: Sequence[np.ndarray] | np.ndarray) -> Tensor:
    """Images uint8 [S, S, 3] -> L2-normalized features: 16 x 16 RGB after a box filter, centred per image."""
    x = torch.as_tensor(np.stack(list(images))).permute(0, 3, 1, 2).float() / 255.0
    x = F.adaptive_avg_pool2d(x, 16).flatten(1)
    x = x - x.mean(1, keepdim=True)
    return F.normalize(x, dim=1)


class EmojiRetrieval:
    """Rank of the named emoji among all real emoji, by cosine similarity of pooled pixels to the generated image."""

    def __init__(self, size: int = 32) -> None:
        from latentbridge_demo.data.emoji import load_emoji

        images, names = load_emoji(size, "all")
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}
        self.features = _features(images)  # [N, F]

    def ranks(self, generated: Sequence[np.ndarray], names: Sequence[str]) -> Tensor:
        """0-based rank of each named emoji among all, for the generated images: [B]."""
        sims = _features(generated) @ self.features.T  # [B, N]
        truth = torch.tensor([self.index[n] for n in names])
        return (sims > sims.gather(1, truth[:, None])).sum(1)


class DigitClassifier(nn.Module):
    """Two conv layers on 32 x 32 grey digits; trained on the digits' training split in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                                 nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))

    @staticmethod
    def prepare(images: Sequence[np.ndarray] | np.ndarray) -> Tensor:
        x = torch.as_tensor(np.stack(list(images))).float().mean(-1) / 255.0  # [B, S, S] grey, paper = 1
        return (1 - x)[:, None]  # ink = 1

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> Tensor:
        return self.eval()(self.prepare(images)).argmax(-1)

    @classmethod
    def train_on_digits(cls, size: int = 32, steps: int = 300, seed: int = 0) -> tuple[DigitClassifier, float]:
        """Train on the training split; returns the model and its accuracy on the test split."""
        from latentbridge_demo.data.images import load_digits

        torch.manual_seed(seed)
        images, _, labels = load_digits(size, "train")
        x, y = cls.prepare(images), torch.as_tensor(labels)
        model = cls()
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            idx = torch.randint(0, len(y), (128,), generator=gen)
            shift = torch.randint(-2, 3, (2,), generator=gen).tolist()  # small translations
            xb = torch.roll(x[idx], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        test_images, _, test_labels = load_digits(size, "test")
        acc = float((model.predict(test_images) == torch.as_tensor(test_labels)).float().mean())
        return model.eval(), acc


class SceneChecker:
    """Whether the emoji a scene caption names appear where it says: each named object's box (from the
    scene's recorded layout) is matched against the scene emoji (`names`, null: all 32) drawn at that size;
    an object counts when its own emoji is the nearest, a scene when all of its objects do."""

    def __init__(self, size: int = 32, names: Sequence[str] | None = None) -> None:
        from latentbridge_demo.data.images import scene_vocabulary

        self.size, self.names = size, list(scene_vocabulary(names))
        self._refs: dict[float, Tensor] = {}

    def _box(self, x: float, y: float, side: float) -> tuple[int, int, int, int]:
        s = self.size
        half = side * s / 2
        return (max(0, round(y * s - half)), min(s, round(y * s + half)), max(0, round(x * s - half)), min(s, round(x * s + half)))

    def _feature(self, image: np.ndarray, box: tuple[int, int, int, int]) -> Tensor:
        y0, y1, x0, x1 = box
        crop = torch.as_tensor(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1).float()[None] / 255.0
        f = F.interpolate(crop, size=(8, 8), mode="area").flatten()
        return F.normalize(f - f.mean(), dim=0)

    def _references(self, side: float) -> Tensor:
        if side not in self._refs:
            from latentbridge_demo.data.images import Scene, SceneObject, render_scene

            box = self._box(0.5, 0.5, side)
            self._refs[side] = torch.stack([self._feature(render_scene(Scene((SceneObject(n, 0.5, 0.5, side),), n), self.size), box)
                                            for n in self.names])
        return self._refs[side]

    def check(self, images: Sequence[np.ndarray], scenes: Sequence[Any]) -> tuple[list[bool], list[bool]]:
        """(per object: its emoji is nearest in its box, per scene: all of them are)."""
        objects, whole = [], []
        for image, scene in zip(images, scenes):
            ok = []
            for o in scene.objects:
                f = self._feature(image, self._box(o.x, o.y, o.size))
                ok.append(self.names[int((self._references(o.size) @ f).argmax())] == o.name)
            objects += ok
            whole.append(all(ok))
        return objects, whole


# --------------------------------------------------------------------------------------------------
# Caption -> image
# --------------------------------------------------------------------------------------------------


def _combination(scene) -> tuple[str, ...]:
    return tuple(sorted(o.name for o in scene.objects))


def multi_object_scenes(size: int, split: str, n: int, vocabulary: Sequence[str] | None,
                        held_out: int | None = None) -> tuple[list[np.ndarray], list[str], list[Any]]:
    """The first n scenes of `split` with 2-3 emoji (images, captions, truth). In the test split these are the
    held-out combinations; single-emoji scenes (in every split) are skipped, so enough scenes are drawn to hold n."""
    from latentbridge_demo.data.images import load_scenes, scenes

    drawn, found = 0, 0
    for drawn, scene in enumerate(scenes(split, 16 * n, vocabulary=vocabulary, held_out=held_out), 1):  # how many to load
        found += len(scene.objects) > 1
        if found == n:
            break
    images, captions, truth = load_scenes(size, split, drawn, vocabulary=vocabulary, held_out=held_out)
    multi = [i for i, sc in enumerate(truth) if len(sc.objects) > 1]
    return [images[i] for i in multi], [captions[i] for i in multi], [truth[i] for i in multi]


def scene_scores(checker: SceneChecker, images: Sequence[np.ndarray], truth: Sequence[Any]) -> dict[str, Any]:
    """Scene arrangement (all of a scene's emoji right), by kind (pairs, rows of three), and objects placed (the share
    of all objects; its interval resamples whole scenes), item by item (PerItem: the mean and a 95% interval)."""
    from latentbridge.evaluate import PerItem

    objects, whole = checker.check(images, truth)
    kinds = np.array([len(s.objects) for s in truth])
    whole = np.array(whole, dtype=float)
    per_scene = np.split(np.array(objects, dtype=float), np.cumsum(kinds)[:-1]) if len(kinds) else []
    out = {"scene arrangement": PerItem(whole),
           "scene objects placed": PerItem([o.mean() for o in per_scene], kinds)}
    for k, label in ((2, "pairs"), (3, "rows of three")):
        if (kinds == k).any():
            out[f"scene arrangement ({label})"] = PerItem(whole[kinds == k])
    return out


def wrap_caption(caption: str, width: int = 24) -> str:
    """A caption as lines of at most `width` characters, every word kept (a longer word is split across lines);
    characters that do not print (generated text may hold control characters) become '?'."""
    import textwrap

    caption = "".join(ch if ch.isprintable() else "?" for ch in caption)
    return "\n".join(textwrap.wrap(caption, width, break_long_words=True, break_on_hyphens=False)) or caption


def caption_grid(images: Sequence[np.ndarray], captions: Sequence[str], path: Path, per_row: int = 8) -> Path:
    """A figure of generated images with their whole captions, wrapped, as titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrapped = [wrap_caption(c) for c in captions]
    lines = max((w.count("\n") + 1 for w in wrapped), default=1)
    rows = -(-len(images) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 1.5, rows * (1.4 + 0.12 * lines)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, wrapped):
        ax.imshow(img)
        ax.set_title(cap, fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
