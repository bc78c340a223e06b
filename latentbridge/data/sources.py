"""Data sources for experiments: what each step's batch holds, per modality.

A source gives raw items keyed by *field* ("points", "labels", "text", ...); each codec role takes
the field that matches its codec's modality. Batches are a pure function of (step, size, generator),
so resumed and multi-process runs see the same data.
"""

from __future__ import annotations

from typing import Any

import torch

from latentbridge.config import DataConfig
from latentbridge.data.text import TextBatches, load_texts
from latentbridge.data.toy import GaussianRing, ToyBatches
from latentbridge.errors import ConfigError


class RingSource:
    """Toy points on a ring with their class labels (fresh samples, or a fixed set from data.path)."""

    fields = {"label": "labels", "vector": "points"}

    def __init__(self, cfg: DataConfig, seed: int) -> None:
        self.ring = GaussianRing(cfg.num_classes, cfg.radius, cfg.tangential_std, cfg.radial_std)
        self.toy = ToyBatches(self.ring, cfg.path, seed)
        self.seed = seed

    @property
    def finite(self) -> bool:
        return self.toy.points is not None

    def __len__(self) -> int:
        return len(self.toy.points)

    def _pack(self, points, labels) -> dict[str, list]:
        return {"points": list(points), "labels": labels.tolist()}

    def batch(self, step: int, size: int, gen: torch.Generator) -> dict[str, list]:
        return self._pack(*self.toy(step, size, gen))

    def indices(self, step: int, size: int) -> torch.Tensor:
        return self.toy.indices(step, size)

    def items_at(self, idx: torch.Tensor) -> dict[str, list]:
        return self._pack(self.toy.points[idx], self.toy.labels[idx])

    def key(self) -> str:
        return self.toy.key()

    def stats_sample(self, n: int) -> dict[str, list]:
        return self._pack(*self.ring.sample(n, torch.Generator().manual_seed(self.seed + 1)))

    def split(self, name: str, n: int | None = None) -> dict[str, list]:
        return self._pack(*self.ring.sample(n or 1000, torch.Generator().manual_seed(self.seed + {"validation": 2, "test": 3}.get(name, 4))))


class TextSource:
    """Real texts (latentbridge.data.text): the training split in per-epoch permutations."""

    fields = {"text": "text"}

    def __init__(self, cfg: DataConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.train = TextBatches(load_texts(cfg.sources, "train", cfg.max_chars), seed)
        self.finite = True

    def __len__(self) -> int:
        return len(self.train)

    def batch(self, step: int, size: int, gen: torch.Generator) -> dict[str, list]:
        return {"text": self.train(step, size)}

    def indices(self, step: int, size: int) -> torch.Tensor:
        return self.train.indices(step, size)

    def items_at(self, idx: torch.Tensor) -> dict[str, list]:
        return {"text": [self.train.texts[i] for i in idx.tolist()]}

    def key(self) -> str:
        return self.train.key()

    def stats_sample(self, n: int) -> dict[str, list]:
        return {"text": self.train(0, min(n, len(self.train)))}

    def split(self, name: str, n: int | None = None) -> dict[str, list]:
        """Held-out texts: `validation`/`test` of the configured sources, or `pydoc` (out of domain)."""
        texts = load_texts(["pydoc"], "all", self.cfg.max_chars) if name == "pydoc" else load_texts(self.cfg.sources, name, self.cfg.max_chars)
        return {"text": texts[:n] if n else texts}


def make_source(cfg: DataConfig, seed: int):
    if cfg.name == "gaussian_ring":
        return RingSource(cfg, seed)
    if cfg.name == "text":
        return TextSource(cfg, seed)
    raise ConfigError(f"data.name: unknown data set {cfg.name!r}")


def field_for(source: Any, role: str, modality: str) -> str:
    """The field of `source` that a codec of `modality` encodes, or a clear error."""
    if modality not in source.fields:
        raise ConfigError(f"codecs.{role}: data '{type(source).__name__}' provides {', '.join(sorted(source.fields))} items; "
                          f"a codec of modality '{modality}' has nothing to encode. Pick a codec for one of those modalities.")
    return source.fields[modality]
