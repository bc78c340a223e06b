"""Cross-modal generation through one prior: caption -> image, with evaluators trained here.

    generate_items(...)          condition items per role -> generated items of the target role (fixed-length
                                 targets: an image is one block), guided, deterministic under a seed
    EmojiRetrieval               nearest real emoji of a generated image (all 3,859): the rank of the named one
    DigitClassifier              a small CNN trained in seconds on the digits' training split
    evaluate_caption_to_image()  emoji top-1 / top-5 retrieval (captions seen in training and held-out ones),
                                 digit accuracy, each across guidance scales and with the captions shuffled
                                 (the control: the score against the original caption's target); PNG grids

Dimensions: B images, S pixels a side.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentbridge.codecs import Latents
from latentbridge.config import ExperimentConfig
from latentbridge.errors import ConfigError
from latentbridge.pipeline import generate_latents
from latentbridge.sequence import Segment


@torch.no_grad()
def generate_items(cfg: ExperimentConfig, codecs, prior, layout, conditions: dict[str, Sequence[Any]], *,
                   guidance: float = 1.0, seed: int = 0, batch_size: int = 64, progress: bool = False) -> list[Any]:
    """Generate one target item per example from the given condition items (one list per cond role, in the
    task's order). The target codec must have a fixed number of tokens per item (an image, fixed-length audio)."""
    from tqdm.auto import tqdm

    target = cfg.task.target
    spec = codecs[target].latent_spec
    if not spec.fixed:
        raise ConfigError(f"generate_items: the target codec '{codecs[target].name}' has variable-length items; "
                          "use latentbridge sample's text continuation for it.")
    missing = [r for r in cfg.task.cond if r not in conditions]
    if missing:
        raise ConfigError(f"conditions for role(s) {', '.join(missing)} are missing (the task conditions on {cfg.task.cond}).")
    n = len(next(iter(conditions.values()))) if conditions else 0
    s = cfg.sampling
    gen = torch.Generator().manual_seed(seed)
    out: list[Any] = []
    for start in tqdm(range(0, n, batch_size), desc="generate", disable=not progress, dynamic_ncols=True):
        chunk = {r: list(conditions[r][start : start + batch_size]) for r in cfg.task.cond}
        size = len(next(iter(chunk.values())))
        lat = {r: codecs[r].encode_items(chunk[r]).unbind() for r in cfg.task.cond}
        prompts = [[Segment(r, lat[r][i], "cond") for r in cfg.task.cond] for i in range(size)]
        z = generate_latents(prior, layout, prompts, target, spec.tokens_per_item, steps=s.steps, solver=s.solver,
                             shift=s.shift, guidance=guidance, guidance_interval=s.guidance_interval, generator=gen)
        values = torch.stack(z)
        out += codecs[target].decode(Latents(codecs[target].name, values, torch.full((size,), values.shape[1])))
    return out


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
        from latentbridge.data.emoji import load_emoji

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
        from latentbridge.data.images import load_digits

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


# --------------------------------------------------------------------------------------------------
# Caption -> image
# --------------------------------------------------------------------------------------------------


def _shuffled(n: int, seed: int) -> list[int]:
    """A permutation without fixed points (each caption goes to another example)."""
    if n < 2:
        return list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    successor = torch.roll(perm, -1)  # one cycle through all examples in a random order
    return successor[torch.argsort(perm)].tolist()  # example i gets the caption of the one after it in the cycle


def caption_grid(images: Sequence[np.ndarray], captions: Sequence[str], path: Path, per_row: int = 8) -> Path:
    """A figure of generated images with their captions as titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(images) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 1.4, rows * 1.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(img)
        ax.set_title(cap if len(cap) <= 22 else cap[:20] + "…", fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate_caption_to_image(cfg: ExperimentConfig, run_dir: Path, codecs, prior, layout, *, samples: int | None = None,
                              guidance_scales: Sequence[float] | None = None, progress: bool = True) -> dict[str, Any]:
    """Emoji retrieval (seen and held-out names) and digit accuracy across guidance scales, with shuffled-caption
    controls; writes samples/caption_to_image_g<scale>.png and report.json["caption_to_image"]."""
    from latentbridge.data.emoji import load_emoji
    from latentbridge.data.images import DIGIT_NAMES

    (caption_role,) = cfg.task.cond
    size = int(getattr(codecs[cfg.task.target].config, "image_size", 32))
    n = samples or min(cfg.eval.samples, 400)
    start = time.perf_counter()
    retrieval = EmojiRetrieval(size)
    classifier, classifier_acc = DigitClassifier.train_on_digits(size)
    _, seen = load_emoji(size, "train")
    _, unseen = load_emoji(size, "test")
    pick = torch.randperm(len(seen), generator=torch.Generator().manual_seed(cfg.seed))[:n].tolist()
    sets = {"emoji (seen names)": [seen[i] for i in pick], "emoji (held-out names)": unseen[: max(1, n // 4)]}
    digit_labels = [i % 10 for i in range(max(10, n // 4))]
    digit_captions = [f"a handwritten digit {DIGIT_NAMES[d]}" for d in digit_labels]
    rows: dict[str, Any] = {"digit_classifier_test_accuracy": classifier_acc}
    for g in guidance_scales or cfg.eval.guidance_scales:
        row: dict[str, float] = {}
        for label, names in sets.items():
            for control, order in (("", list(range(len(names)))), ("shuffled ", _shuffled(len(names), cfg.seed + 1))):
                images = generate_items(cfg, codecs, prior, layout, {caption_role: [names[i] for i in order]}, guidance=g,
                                        seed=cfg.seed, progress=progress)
                ranks = retrieval.ranks(images, names)
                row[f"{control}{label} top1"] = float((ranks < 1).float().mean())
                row[f"{control}{label} top5"] = float((ranks < 5).float().mean())
                if not control and label.endswith("(seen names)"):
                    caption_grid(images[:32], names[:32], run_dir / "samples" / f"caption_to_image_emoji_g{g:g}.png")
        for control, order in (("", list(range(len(digit_labels)))), ("shuffled ", _shuffled(len(digit_labels), cfg.seed + 2))):
            images = generate_items(cfg, codecs, prior, layout, {caption_role: [digit_captions[i] for i in order]}, guidance=g,
                                    seed=cfg.seed, progress=progress)
            row[f"{control}digit accuracy"] = float((classifier.predict(images) == torch.tensor(digit_labels)).float().mean())
            if not control:
                caption_grid(images[:20], digit_captions[:20], run_dir / "samples" / f"caption_to_image_digits_g{g:g}.png", per_row=10)
        rows[f"guidance {g:g}"] = row
    rows["eval_s"] = round(time.perf_counter() - start, 1)
    rows["items"] = {k: len(v) for k, v in sets.items()} | {"digits": len(digit_labels)}
    path = run_dir / "report.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    report["caption_to_image"] = rows
    path.write_text(json.dumps(report, indent=2) + "\n")
    return rows


def format_caption_to_image(rows: dict[str, Any]) -> str:
    lines = [f"digit classifier (evaluator) test accuracy: {rows['digit_classifier_test_accuracy']:.3f}"]
    for key, row in rows.items():
        if key.startswith("guidance"):
            lines.append(f"  {key}:")
            lines += [f"    {k:<40} {v:.3f}" for k, v in row.items()]
    return "\n".join(lines)
