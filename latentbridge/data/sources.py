"""Data sources for experiments: what each step's batch holds, per modality.

A source gives raw items keyed by *field* ("points", "labels", "text", ...); each codec role takes
the field that matches its codec's modality. Batches are a pure function of (step, size, generator),
so resumed and multi-process runs see the same data.
"""

from __future__ import annotations

from typing import Any

import torch

from latentbridge.config import DataConfig
import hashlib

import numpy as np

from latentbridge.data.text import TextBatches, epoch_indices, load_texts
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
    held_out = {"test": "test", "pydoc": "pydoc (out of domain)"}

    def __init__(self, cfg: DataConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.sources = cfg.sources or ["wordnet", "fortunes"]
        self.train = TextBatches(load_texts(self.sources, "train", cfg.max_chars), seed)
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
        texts = load_texts(["pydoc"], "all", self.cfg.max_chars) if name == "pydoc" else load_texts(self.sources, name, self.cfg.max_chars)
        return {"text": texts[:n] if n else texts}


class ItemSource:
    """A finite training set of paired items, one list per field, in per-epoch permutations.

    Subclasses load `self.train` ({field: list of N items}) and answer `split(name, n)`."""

    fields: dict[str, str] = {}
    held_out: dict[str, str] = {"test": "test"}
    """Held-out splits a codec report covers: split name -> how the report labels it."""
    finite = True

    def __init__(self, train: dict[str, list], seed: int) -> None:
        sizes = {k: len(v) for k, v in train.items()}
        if not sizes or len(set(sizes.values())) != 1 or not next(iter(sizes.values())):
            raise ConfigError(f"{type(self).__name__}: the training set is empty or its fields differ in length ({sizes}); check data.sources.")
        self.train, self.seed = train, seed

    def __len__(self) -> int:
        return len(next(iter(self.train.values())))

    def indices(self, step: int, size: int) -> torch.Tensor:
        return epoch_indices(len(self), self.seed, step, size)

    def items_at(self, idx: torch.Tensor) -> dict[str, list]:
        return {k: [v[i] for i in idx.tolist()] for k, v in self.train.items()}

    def batch(self, step: int, size: int, gen: torch.Generator) -> dict[str, list]:
        return self.items_at(self.indices(step, size))

    def stats_sample(self, n: int) -> dict[str, list]:
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(self.seed + 1))[:n]
        return self.items_at(idx)

    def key(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.train):
            for item in self.train[name]:
                h.update(np.ascontiguousarray(item).tobytes() if isinstance(item, np.ndarray) else str(item).encode())
        return h.hexdigest()[:12]


class ImageSource(ItemSource):
    """Images with captions (latentbridge.data.images): emoji, scenes, digits.

    Splits: train / validation / test of the configured sources together; `emoji`, `scenes`, `digits`
    for the test split of one source; `photos` (real photographs, out of domain)."""

    fields = {"image": "image", "text": "caption"}

    def __init__(self, cfg: DataConfig, seed: int) -> None:
        from latentbridge.data.images import IMAGE_SOURCES

        self.cfg, self.sources = cfg, list(cfg.sources or IMAGE_SOURCES)
        images, captions = self._load(self.sources, "train")
        super().__init__({"image": list(images), "caption": captions}, seed)
        self.held_out = {**{s: f"test {s}" for s in self.sources}, "photos": "photos (out of domain)"}

    def _load(self, sources: list[str], split: str):
        from latentbridge.data.images import load_images

        return load_images(sources, split, self.cfg.image_size, self.cfg.scenes, scene_objects=self.cfg.scene_objects)

    def split(self, name: str, n: int | None = None) -> dict[str, list]:
        from latentbridge.data.images import IMAGE_SOURCES, load_photos

        if name == "photos":
            images, captions = load_photos(self.cfg.image_size)
        elif name in IMAGE_SOURCES:
            images, captions = self._load([name], "test")
        else:
            images, captions = self._load(self.sources, name)
        return {"image": list(images[:n] if n else images), "caption": captions[:n] if n else captions}


class SpeechSource(ItemSource):
    """Spoken words and names with their text (latentbridge.data.speech).

    Splits: train / validation / test of the configured engines together; `flite`, `espeak` for the test
    split of one engine; `recordings` (ALSA's real spoken clips) and `sounds` (freedesktop sound
    events), both out of domain."""

    fields = {"audio": "audio", "text": "text"}

    def __init__(self, cfg: DataConfig, seed: int) -> None:
        from latentbridge.data.speech import SPEECH_SOURCES

        self.cfg, self.sources = cfg, list(cfg.sources or SPEECH_SOURCES)
        waves, texts, _ = self._load("train")
        super().__init__({"audio": waves, "text": texts}, seed)
        self.held_out = {**{s: f"test {s}" for s in self.sources}, "recordings": "recordings (out of domain)"}

    def _load(self, split: str):
        from latentbridge.data.speech import load_speech

        c = self.cfg
        return load_speech(split, c.clips, c.sample_rate, self.sources, c.words, c.scene_objects)

    def split(self, name: str, n: int | None = None) -> dict[str, list]:
        from latentbridge.data.speech import SPEECH_SOURCES, load_recordings

        if name in ("recordings", "sounds"):
            waves, texts = load_recordings(self.cfg.sample_rate, name)
        elif name in SPEECH_SOURCES:  # the test clips of the configured set spoken by that engine
            waves, texts, utts = self._load("test")
            keep = [i for i, u in enumerate(utts) if u.engine == name]
            waves, texts = [waves[i] for i in keep], [texts[i] for i in keep]
        else:
            waves, texts, _ = self._load(name)
        return {"audio": waves[:n] if n else waves, "text": texts[:n] if n else texts}


SOURCES = {"gaussian_ring": RingSource, "text": TextSource, "images": ImageSource, "speech": SpeechSource}


def make_source(cfg: DataConfig, seed: int):
    if cfg.name not in SOURCES:
        raise ConfigError(f"data.name: unknown data set {cfg.name!r}; choose from {', '.join(SOURCES)}")
    return SOURCES[cfg.name](cfg, seed)


def field_for(source: Any, role: str, modality: str) -> str:
    """The field of `source` that a codec of `modality` encodes, or a clear error."""
    if modality not in source.fields:
        raise ConfigError(f"codecs.{role}: data '{type(source).__name__}' provides {', '.join(sorted(source.fields))} items; "
                          f"a codec of modality '{modality}' has nothing to encode. Pick a codec for one of those modalities.")
    return source.fields[modality]
