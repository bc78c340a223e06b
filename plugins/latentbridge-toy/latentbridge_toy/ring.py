"""A class-conditional 2-D distribution with a known density: Gaussians around a ring.

Class k is a Gaussian centred at angle 2 pi k / K on a circle of radius r, stretched along the
circle (std `tangential_std`) and thin across it (`radial_std`), so neighbouring classes overlap.
Because the density is known, the Bayes classifier p(y | x) is exact: it scores generated points
("does this point look like its conditioning class?") and sets the ceiling for point -> label.
`RingData` is the data set latentbridge trains on (`data.name: gaussian_ring`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import torch
from torch import Tensor

from latentbridge.data import Dataset, DocItem
from latentbridge.errors import ConfigError


class GaussianRing:
    """K anisotropic Gaussians on a ring; uniform class prior."""

    def __init__(self, num_classes: int = 8, radius: float = 2.0, tangential_std: float = 0.5, radial_std: float = 0.15) -> None:
        self.num_classes = num_classes
        angles = 2 * math.pi * torch.arange(num_classes, dtype=torch.float64) / num_classes
        self.radial = torch.stack([angles.cos(), angles.sin()], dim=1)  # [K, 2] unit vectors
        self.tangent = torch.stack([-angles.sin(), angles.cos()], dim=1)  # [K, 2]
        self.centers = radius * self.radial  # [K, 2]
        self.stds = torch.tensor([radial_std, tangential_std], dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator | None = None, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """n points [n, 2] (float32) and their labels [n] (uniform, unless given)."""
        if labels is None:
            labels = torch.randint(0, self.num_classes, (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64) * self.stds  # [n, 2] (radial, tangential)
        points = self.centers[labels] + noise[:, :1] * self.radial[labels] + noise[:, 1:] * self.tangent[labels]
        return points.float(), labels

    def log_prob_per_class(self, x: Tensor) -> Tensor:
        """log p(x | y = k) for every class: [n, K]."""
        d = x.double()[:, None, :] - self.centers[None]  # [n, K, 2]
        r = (d * self.radial[None]).sum(-1) / self.stds[0]
        t = (d * self.tangent[None]).sum(-1) / self.stds[1]
        return -0.5 * (r**2 + t**2) - torch.log(2 * math.pi * self.stds[0] * self.stds[1])

    def posterior(self, x: Tensor) -> Tensor:
        """p(y | x): [n, K]."""
        return torch.softmax(self.log_prob_per_class(x), dim=-1)

    def bayes_label(self, x: Tensor) -> Tensor:
        """argmax_y p(y | x): [n]."""
        return self.log_prob_per_class(x).argmax(-1)


@dataclasses.dataclass
class RingOptions:
    """Options of the `gaussian_ring` data set."""

    num_classes: int = 8
    """Number of classes K."""
    radius: float = 2.0
    """Radius of the ring."""
    tangential_std: float = 0.5
    """Spread along the ring (controls the overlap of neighbouring classes)."""
    radial_std: float = 0.15
    """Spread across the ring."""
    path: str | None = None
    """A safetensors file with `points` [N, 2] and `labels` [N] to train on instead of sampling the ring."""


class RingData(Dataset):
    """Points on the ring with their class labels: fresh samples every step, or a fixed set from `path`
    walked in per-epoch permutations. Held-out splits are fresh samples with their own seeds."""

    name = "gaussian_ring"
    config_class = RingOptions
    fields = {"label": "labels", "vector": "points"}

    def __init__(self, config: RingOptions | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        c = self.config
        self.ring = GaussianRing(c.num_classes, c.radius, c.tangential_std, c.radial_std)
        self.points, self.labels = (None, None) if c.path is None else _read_points(c.path)
        self.finite = self.points is not None

    def __len__(self) -> int:
        if self.points is None:
            return super().__len__()
        return len(self.points)

    @staticmethod
    def _pack(points: Tensor, labels: Tensor) -> dict[str, list]:
        return {"points": list(points), "labels": labels.tolist()}

    def batch(self, step: int, size: int, generator: torch.Generator) -> dict[str, list]:
        if self.points is None:
            return self._pack(*self.ring.sample(size, generator))
        return self.items_at(self.indices(step, size))

    def indices(self, step: int, size: int) -> Tensor:
        """Items of the fixed data set that step `step` uses."""
        n = self.points.shape[0]
        epoch, offset = divmod(step * size, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7_919 + epoch))
        return torch.cat([order, torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7_919 + epoch + 1))])[offset : offset + size]

    def items_at(self, idx: Tensor) -> dict[str, list]:
        return self._pack(self.points[idx], self.labels[idx])

    def key(self) -> str:
        """Identifies the data for caches: a hash of the fixed data set."""
        h = hashlib.sha256(self.points.numpy().tobytes() + self.labels.numpy().tobytes())
        return h.hexdigest()[:12]

    def stats_sample(self, n: int) -> dict[str, list]:
        return self._pack(*self.ring.sample(n, torch.Generator().manual_seed(self.seed + 1)))

    def split(self, name: str, n: int | None = None) -> dict[str, list]:
        seed = self.seed + {"validation": 2, "test": 3}.get(name, 4)
        return self._pack(*self.ring.sample(n or 1000, torch.Generator().manual_seed(seed)))


def _read_points(path: str) -> tuple[Tensor, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise ConfigError(f"data.config.path: {path} does not exist. Point it at a safetensors file with `points` [N, 2] "
                          "and `labels` [N], or set it to null to sample the ring.")
    try:
        tensors = load_file(path)
        points, labels = tensors["points"].float(), tensors["labels"].long()
    except (SafetensorError, OSError, KeyError) as err:
        raise ConfigError(f"data.config.path: cannot read points and labels from {path} ({type(err).__name__}: {err}).") from None
    if points.ndim != 2 or points.shape[1] != 2 or labels.shape != (points.shape[0],):
        raise ConfigError(f"data.config.path: {path} holds points {tuple(points.shape)} and labels {tuple(labels.shape)}; "
                          "expected [N, 2] and [N].")
    return points, labels


@dataclasses.dataclass
class RingDocumentOptions:
    """Options of the `ring_documents` data set."""

    num_classes: int = 8
    """Number of classes K of the ring."""


class RingDocuments(Dataset):
    """Documents of labels and points with a known switch rule: [label k, a point of class k], and when k is even a
    second pair [label k + 1, a point of class k + 1] follows; then the document ends. What follows a point depends on
    the first label (context) and on the item's place; a label is always followed by a point. Fresh documents every
    step; held-out splits are fresh with their own seeds."""

    name = "ring_documents"
    config_class = RingDocumentOptions
    fields = {"document": "documents"}
    finite = False

    def __init__(self, config: RingDocumentOptions | None = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self.ring = GaussianRing(self.config.num_classes)

    def documents(self, n: int, generator: torch.Generator) -> list[list[DocItem]]:
        k = self.config.num_classes
        first = torch.randint(0, k, (n,), generator=generator)
        second = (first + 1) % k
        p1, _ = self.ring.sample(n, generator, labels=first)
        p2, _ = self.ring.sample(n, generator, labels=second)
        out = []
        for i in range(n):
            doc = [DocItem("label", int(first[i])), DocItem("vector", p1[i])]
            if int(first[i]) % 2 == 0:
                doc += [DocItem("label", int(second[i])), DocItem("vector", p2[i])]
            out.append(doc)
        return out

    def batch(self, step: int, size: int, generator: torch.Generator) -> dict[str, list]:
        return {"documents": self.documents(size, generator)}

    def stats_sample(self, n: int) -> dict[str, list]:
        return {"documents": self.documents(n, torch.Generator().manual_seed(self.seed + 1))}

    def split(self, name: str, n: int | None = None) -> dict[str, list]:
        seed = self.seed + {"validation": 2, "test": 3}.get(name, 4)
        return {"documents": self.documents(n or 500, torch.Generator().manual_seed(seed))}


def switch_truth(document: list) -> list[str]:
    """What follows each item of a `ring_documents` document: the next item's modality, or "end"."""
    return [document[i + 1][0] if i + 1 < len(document) else "end" for i in range(len(document))]
