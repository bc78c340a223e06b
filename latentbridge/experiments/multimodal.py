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
def generate(cfg: ExperimentConfig, codecs, prior, layout, conditions: dict[str, Sequence[Any]] | None = None, *,
             target: str | None = None, prompts: Sequence[Any] | None = None, guidance: float = 1.0, seed: int = 0,
             batch_size: int = 64, max_tokens: int | None = None, progress: bool = False) -> list[Any]:
    """Items of the target role, one per example, from the condition items of one of the run's tasks.

    `conditions` maps each cond role of the task to its items (one list per role, same length); the task
    is the one with those cond roles and `target` (see latentbridge.tasks.find_task). Fixed-length targets
    (an image, fixed-length audio) are generated block by block to their length; variable-length targets
    (text) until their end marker or `max_tokens` latents, each continuing its `prompts` item if given.
    Guided by `guidance`, deterministic under `seed`, in batches of `batch_size`."""
    from tqdm.auto import tqdm

    from latentbridge.tasks import find_task, tasks_of

    conditions = dict(conditions or {})
    task = find_task(tasks_of(cfg), list(conditions), target)
    codec = codecs[task.target]
    spec = codec.latent_spec
    sizes = {r: len(v) for r, v in conditions.items()}
    if prompts is not None:
        sizes["prompts"] = len(prompts)
    if not sizes:
        raise ConfigError(f"generate: task {task.name} ({task.direction}) needs items to start from: pass its conditions or prompts.")
    if len(set(sizes.values())) != 1:
        raise ConfigError(f"generate: conditions and prompts must have one item per example each, got {sizes}")
    if prompts is not None and spec.fixed:
        raise ConfigError(f"generate: '{codec.name}' items have a fixed length and cannot be continued from prompts; pass conditions.")
    n = next(iter(sizes.values()))
    s = cfg.sampling
    gen = torch.Generator().manual_seed(seed)
    out: list[Any] = []
    for start in tqdm(range(0, n, batch_size), desc=f"generate {task.target}", disable=not progress, dynamic_ncols=True):
        stop_at = min(n, start + batch_size)
        size = stop_at - start
        lat = {r: codecs[r].encode_items(list(conditions[r][start:stop_at])).unbind() for r in task.cond}
        context = [[Segment(r, lat[r][i], "cond") for r in task.cond] for i in range(size)]
        kw = dict(steps=s.steps, solver=s.solver, shift=s.shift, guidance=guidance, guidance_interval=s.guidance_interval, generator=gen)
        if spec.fixed:
            z = generate_latents(prior, layout, context, task.target, spec.tokens_per_item, **kw)
            values = torch.stack(z)
            out += codec.decode(Latents(codec.name, values, torch.full((size,), values.shape[1])))
            continue
        if prompts is not None:
            prefix = codec.encode_prompt(list(prompts[start:stop_at]))
        else:  # from nothing: the decoder starts with an empty prefix
            prefix = Latents(codec.name, torch.zeros(size, 0, spec.dim), torch.zeros(size, dtype=torch.long))
        stream = codec.decoder_stream(prefix)
        examples = [ctx + ([Segment(task.target, z, "target")] if len(z) else []) for ctx, z in zip(context, prefix.unbind())]
        limit = max_tokens or spec.max_tokens or 4 * spec.block_size
        generate_latents(prior, layout, examples, task.target, limit, stop=stream.push, **kw)
        out += stream.items()
    return out


def generate_items(cfg: ExperimentConfig, codecs, prior, layout, conditions: dict[str, Sequence[Any]], *,
                   guidance: float = 1.0, seed: int = 0, batch_size: int = 64, progress: bool = False) -> list[Any]:
    """Fixed-length target items from condition items (`generate` for the run's one task)."""
    target = cfg.task.target or None
    if target is not None and not codecs[target].latent_spec.fixed:
        raise ConfigError(f"generate_items: the target codec '{codecs[target].name}' has variable-length items; "
                          "use latentbridge sample's text continuation for it.")
    return generate(cfg, codecs, prior, layout, conditions, target=target, guidance=guidance, seed=seed, batch_size=batch_size,
                    progress=progress)


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


class SceneChecker:
    """Whether the emoji a scene caption names appear where it says: each named object's box (from the
    scene's recorded layout) is matched against the scene emoji (`names`, null: all 32) drawn at that size;
    an object counts when its own emoji is the nearest, a scene when all of its objects do."""

    def __init__(self, size: int = 32, names: Sequence[str] | None = None) -> None:
        from latentbridge.data.images import scene_vocabulary

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
            from latentbridge.data.images import Scene, SceneObject, render_scene

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


def _shuffled(n: int, seed: int) -> list[int]:
    """A permutation without fixed points (each caption goes to another example)."""
    if n < 2:
        return list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    successor = torch.roll(perm, -1)  # one cycle through all examples in a random order
    return successor[torch.argsort(perm)].tolist()  # example i gets the caption of the one after it in the cycle


def _combination(scene) -> tuple[str, ...]:
    return tuple(sorted(o.name for o in scene.objects))


def multi_object_scenes(size: int, split: str, n: int, vocabulary: Sequence[str] | None) -> tuple[list[np.ndarray], list[str], list[Any]]:
    """The first n scenes of `split` with 2-3 emoji (images, captions, truth). In the test split these are the
    held-out combinations; single-emoji scenes (in every split) are skipped, so enough scenes are drawn to hold n."""
    from latentbridge.data.images import load_scenes, scenes

    drawn, found = 0, 0
    for drawn, scene in enumerate(scenes(split, 16 * n, vocabulary=vocabulary), 1):  # no rendering: how many to load
        found += len(scene.objects) > 1
        if found == n:
            break
    images, captions, truth = load_scenes(size, split, drawn, vocabulary=vocabulary)
    multi = [i for i, sc in enumerate(truth) if len(sc.objects) > 1]
    return [images[i] for i in multi], [captions[i] for i in multi], [truth[i] for i in multi]


def scene_scores(checker: SceneChecker, images: Sequence[np.ndarray], truth: Sequence[Any]) -> dict[str, float]:
    """Scene arrangement (all of a scene's emoji right), by kind (pairs, rows of three) and per object."""
    objects, whole = checker.check(images, truth)
    kinds = np.array([len(s.objects) for s in truth])
    whole = np.array(whole, dtype=float)
    out = {"scene arrangement": float(whole.mean()), "scene objects placed": float(np.mean(objects))}
    for k, label in ((2, "pairs"), (3, "rows of three")):
        if (kinds == k).any():
            out[f"scene arrangement ({label})"] = float(whole[kinds == k].mean())
    return out


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
        cap = "".join(ch if ch.isprintable() else "?" for ch in cap)  # generated text may hold control characters
        ax.imshow(img)
        ax.set_title(cap if len(cap) <= 22 else cap[:20] + "…", fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def evaluate_caption_to_image(cfg: ExperimentConfig, run_dir: Path, codecs, prior, layout, *, samples: int | None = None,
                              guidance_scales: Sequence[float] | None = None, progress: bool = True, task=None,
                              report_key: str | None = "caption_to_image") -> dict[str, Any]:
    """Emoji retrieval (seen and held-out names), digit accuracy and scene arrangement (held-out combinations)
    across guidance scales, each with shuffled captions as the control; writes samples/<task>_*_g<scale>.png
    and report.json[report_key] (none when report_key is None)."""
    from latentbridge.data.emoji import load_emoji
    from latentbridge.data.images import DIGIT_NAMES, IMAGE_SOURCES
    from latentbridge.tasks import find_task, tasks_of

    task = task or find_task(tasks_of(cfg), None, cfg.task.target or None)
    (caption_role,) = task.cond
    image_role = task.target
    size = int(getattr(codecs[image_role].config, "image_size", 32))
    n = samples or min(cfg.eval.samples, 400)
    start = time.perf_counter()
    trained_on = set(task.data.sources or IMAGE_SOURCES)  # score the kinds of image the task learned
    retrieval = EmojiRetrieval(size) if "emoji" in trained_on else None
    classifier, classifier_acc = DigitClassifier.train_on_digits(size) if "digits" in trained_on else (None, float("nan"))
    checker = SceneChecker(size, task.data.scene_objects)
    sets: dict[str, list[str]] = {}
    if "emoji" in trained_on:
        _, seen = load_emoji(size, "train")
        _, unseen = load_emoji(size, "test")
        pick = torch.randperm(len(seen), generator=torch.Generator().manual_seed(cfg.seed))[:n].tolist()
        sets = {"emoji (seen names)": [seen[i] for i in pick], "emoji (held-out names)": unseen[: max(1, n // 4)]}
    k = n // 4 if sets else n // 2  # digit and scene captions per scale: more when there are no emoji to score
    digit_labels = [i % 10 for i in range(max(10, k))] if "digits" in trained_on else []
    digit_captions = [f"a handwritten digit {DIGIT_NAMES[d]}" for d in digit_labels]
    # held-out combinations of 2-3 emoji, and as a diagnostic (fit, not generalisation) combinations seen in training
    vocabulary = task.data.scene_objects
    real_multi, scene_captions, scene_truth = multi_object_scenes(size, "test", max(8, k), vocabulary) if "scenes" in trained_on else ([], [], [])
    _, seen_captions, seen_truth = multi_object_scenes(size, "train", max(8, k), vocabulary) if "scenes" in trained_on else ([], [], [])
    _, real_ok = checker.check(real_multi, scene_truth)
    image_codec = codecs[image_role]
    _, recon_ok = checker.check(image_codec.decode(image_codec.encode_items(real_multi, sample=False)), scene_truth) if real_multi else ([], [])
    rows: dict[str, Any] = {"digit_classifier_test_accuracy": classifier_acc,  # the evaluators' ceilings
                            "scene_checker_accuracy_on_real_scenes": float(np.mean(real_ok)) if real_ok else float("nan"),
                            "scene_checker_accuracy_on_codec_reconstructions": float(np.mean(recon_ok)) if recon_ok else float("nan")}
    name = task.name

    def gen(captions: list[str], g: float) -> list[np.ndarray]:
        return generate(cfg, codecs, prior, layout, {caption_role: captions}, target=image_role, guidance=g, seed=cfg.seed,
                        progress=progress)

    for g in guidance_scales or cfg.eval.guidance_scales:
        row: dict[str, float] = {}
        for label, names in sets.items():
            for control, order in (("", list(range(len(names)))), ("shuffled ", _shuffled(len(names), cfg.seed + 1))):
                images = gen([names[i] for i in order], g)
                ranks = retrieval.ranks(images, names)
                row[f"{control}{label} top1"] = float((ranks < 1).float().mean())
                row[f"{control}{label} top5"] = float((ranks < 5).float().mean())
                if not control and label.endswith("(seen names)"):
                    caption_grid(images[:32], names[:32], run_dir / "samples" / f"{name}_emoji_g{g:g}.png")
        for control, order in (("", list(range(len(digit_labels)))), ("shuffled ", _shuffled(len(digit_labels), cfg.seed + 2))) if digit_labels else ():
            images = gen([digit_captions[i] for i in order], g)
            row[f"{control}digit accuracy"] = float((classifier.predict(images) == torch.tensor(digit_labels)).float().mean())
            if not control:
                caption_grid(images[:20], digit_captions[:20], run_dir / "samples" / f"{name}_digits_g{g:g}.png", per_row=10)
        if scene_truth:
            for control, order in (("", list(range(len(scene_truth)))), ("shuffled ", _shuffled(len(scene_truth), cfg.seed + 3))):
                images = gen([scene_captions[i] for i in order], g)
                row |= {f"{control}{key}": v for key, v in scene_scores(checker, images, scene_truth).items()}
                if not control:
                    caption_grid(images[:16], scene_captions[:16], run_dir / "samples" / f"{name}_scenes_g{g:g}.png")
            if seen_truth:  # no control: a diagnostic of fit
                seen = scene_scores(checker, gen(seen_captions, g), seen_truth)
                row |= {f"{key} (seen combinations)": v for key, v in seen.items() if key in ("scene arrangement", "scene objects placed")}
        rows[f"guidance {g:g}"] = row
    rows["eval_s"] = round(time.perf_counter() - start, 1)
    rows["items"] = {k: len(v) for k, v in sets.items()} | {"digits": len(digit_labels), "scenes (held-out combinations)": len(scene_truth),
                                                           "held-out combinations": len({_combination(s) for s in scene_truth}),
                                                           "scenes (seen combinations)": len(seen_truth)}
    if report_key:
        path = run_dir / "report.json"
        report = json.loads(path.read_text()) if path.is_file() else {}
        report[report_key] = rows
        path.write_text(json.dumps(report, indent=2) + "\n")
    return rows


def format_caption_to_image(rows: dict[str, Any]) -> str:
    lines = [f"digit classifier (evaluator) test accuracy: {rows['digit_classifier_test_accuracy']:.3f}"]
    for key, row in rows.items():
        if key.startswith("guidance"):
            lines.append(f"  {key}:")
            lines += [f"    {k:<40} {v:.3f}" for k, v in row.items()]
    return "\n".join(lines)
