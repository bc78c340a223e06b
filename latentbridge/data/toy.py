"""A class-conditional 2-D distribution with a known density: Gaussians around a ring.

Class k is a Gaussian centred at angle 2 pi k / K on a circle of radius r, stretched along the
circle (std `tangential_std`) and thin across it (`radial_std`), so neighbouring classes overlap.
Because the density is known, the Bayes classifier p(y | x) is exact: it scores generated points
("does this point look like its conditioning class?") and sets the ceiling for point -> label.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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


class ToyBatches:
    """Deterministic training batches: step i always gives the same points and labels.

    Samples the ring afresh each step, or walks a fixed data set (from a safetensors file with
    `points` [N, 2] and `labels` [N]) in a per-epoch permutation.
    """

    def __init__(self, ring: GaussianRing, path: str | None = None, seed: int = 0) -> None:
        self.ring, self.seed, self.points, self.labels = ring, seed, None, None
        if path is not None:
            from pathlib import Path

            from safetensors import SafetensorError
            from safetensors.torch import load_file

            from latentbridge.errors import ConfigError

            if not Path(path).is_file():
                raise ConfigError(f"data.path: {path} does not exist. Point it at a safetensors file with `points` [N, 2] "
                                  "and `labels` [N], or set data.path to null to sample the ring.")
            try:
                tensors = load_file(path)
                self.points, self.labels = tensors["points"].float(), tensors["labels"].long()
            except (SafetensorError, OSError, KeyError) as err:
                raise ConfigError(f"data.path: cannot read points and labels from {path} ({type(err).__name__}: {err}).") from None
            if self.points.ndim != 2 or self.points.shape[1] != 2 or self.labels.shape != (self.points.shape[0],):
                raise ConfigError(f"data.path: {path} holds points {tuple(self.points.shape)} and labels {tuple(self.labels.shape)}; "
                                  "expected [N, 2] and [N].")

    def __call__(self, step: int, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.points is None:
            return self.ring.sample(size, generator)
        idx = self.indices(step, size)
        return self.points[idx], self.labels[idx]

    def indices(self, step: int, size: int) -> Tensor:
        """Items of the fixed data set that step `step` uses."""
        n = self.points.shape[0]
        start = step * size
        epoch, offset = divmod(start, n)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7_919 + epoch))
        return torch.cat([order, torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 7_919 + epoch + 1))])[offset : offset + size]

    def key(self) -> str:
        """Identifies the data for caches: a hash of the fixed data set."""
        import hashlib

        h = hashlib.sha256(self.points.numpy().tobytes() + self.labels.numpy().tobytes())
        return h.hexdigest()[:12]
