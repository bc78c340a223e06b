"""The data-set protocol: what a data-set plugin provides, and a base for finite sets of items.

A data set yields *items by field*: `{"image": [...], "caption": [...]}`, one list per field, equally
long. `fields` maps each modality it holds to its field ({"image": "image", "text": "caption"}); a codec
role of modality m takes field `fields[m]`. Everything is a pure function of (config, seed, step), so a
resumed or multi-process run sees the same data:

    batch(step, size, generator)   the items of one training step
    split(name, n)                 held-out items: `validation`, `test`, or one of `held_out`'s extra sets
    stats_sample(n)                a fixed sample for fitting a codec's latent statistics

Finite data sets (`finite = True`) also answer `len`, `indices(step, size)`, `items_at(indices)` and
`key()` (identifies the data, for latent caches). `ItemDataset` implements all of it over lists loaded
by `load(split)`; most plugins subclass it and write only `load`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, ClassVar

import numpy as np
import torch

from latentbridge.errors import ConfigError, DatasetOutputError

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class NoOptions:
    """Config of a data set that has no options."""


def epoch_indices(n: int, seed: int, step: int, size: int) -> torch.Tensor:
    """Indices of step `step`'s batch of `size` into a data set of n items: one seeded permutation per epoch."""
    epoch, offset = divmod(step * size, n)
    perms = [torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch + e)) for e in range(-(-(offset + size) // n))]
    return torch.cat(perms)[offset : offset + size]


class Dataset:
    """Base class of data-set plugins (see the module docstring for the protocol)."""

    name: ClassVar[str]
    config_class: ClassVar[type] = NoOptions
    fields: ClassVar[dict[str, str]] = {}
    """Modality -> the item field that holds it."""
    held_out: dict[str, str] = {"test": "test"}
    """Held-out sets a report covers: split name -> how the report labels it (extra sets beyond `test` are
    out-of-domain ones, e.g. {"photos": "photos (out of domain)"})."""
    finite: bool = True

    def __init__(self, config: Any = None, seed: int = 0) -> None:
        self.config = self.config_class() if config is None else config
        self.seed = seed

    def field(self, modality: str, role: str | None = None) -> str:
        """The field holding `modality`, or a clear error naming the role whose codec needs it."""
        if modality not in self.fields:
            who = f"codecs.{role}: " if role else ""
            raise ConfigError(f"{who}data set '{self.name}' provides {', '.join(sorted(self.fields))} items; a codec of modality "
                              f"'{modality}' has nothing to encode. Pick a codec for one of those modalities, or another data set.")
        return self.fields[modality]

    # -- what every data set answers ---------------------------------------------------------------

    def batch(self, step: int, size: int, generator: torch.Generator) -> dict[str, list]:
        raise NotImplementedError

    def split(self, name: str, n: int | None = None) -> dict[str, list]:
        raise NotImplementedError

    def stats_sample(self, n: int) -> dict[str, list]:
        raise NotImplementedError

    # -- finite data sets ----------------------------------------------------------------------------

    def __len__(self) -> int:
        raise TypeError(f"data set '{self.name}' is not finite")

    def indices(self, step: int, size: int) -> torch.Tensor:
        return epoch_indices(len(self), self.seed, step, size)

    def items_at(self, idx: torch.Tensor) -> dict[str, list]:
        raise NotImplementedError

    def key(self) -> str:
        raise NotImplementedError


def check_items(dataset: Dataset, items: Any, what: str) -> dict[str, list]:
    """Items by field as a data set must return them, or DatasetOutputError naming the plugin and the fix."""
    expected = sorted(set(dataset.fields.values()))
    if not isinstance(items, dict):
        raise DatasetOutputError(f"data set '{dataset.name}' {what} returned {type(items).__name__}; expected a dict of "
                                 f"field -> list of items with fields {expected}.")
    missing = [f for f in expected if f not in items]
    if missing:
        raise DatasetOutputError(f"data set '{dataset.name}' {what} returned fields {sorted(items)}; it declares "
                                 f"{expected} (missing {', '.join(missing)}). Return every declared field.")
    sizes = {k: len(items[k]) for k in expected}
    if len(set(sizes.values())) > 1:
        raise DatasetOutputError(f"data set '{dataset.name}' {what} returned fields of different lengths {sizes}; "
                                 "each field needs one entry per item.")
    return items


class ItemDataset(Dataset):
    """A finite data set held in memory as lists by field, walked in per-epoch permutations.

    Subclasses write `load(split) -> {field: list}`; `train` is loaded once at construction.
    """

    def __init__(self, config: Any = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        train = check_items(self, self.load("train"), "load('train')")
        sizes = {k: len(v) for k, v in train.items()}
        if not sizes or not next(iter(sizes.values())):
            raise ConfigError(f"data set '{self.name}': the training split is empty; check its options (data.config).")
        self.train = train

    def load(self, split: str) -> dict[str, list]:
        """All items of `split` by field."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(next(iter(self.train.values())))

    def items_at(self, idx: torch.Tensor) -> dict[str, list]:
        return {k: [v[i] for i in idx.tolist()] for k, v in self.train.items()}

    def batch(self, step: int, size: int, generator: torch.Generator) -> dict[str, list]:
        return self.items_at(self.indices(step, size))

    def stats_sample(self, n: int) -> dict[str, list]:
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(self.seed + 1))[:n]
        return self.items_at(idx)

    def split(self, name: str, n: int | None = None) -> dict[str, list]:
        data = check_items(self, self.load(name), f"load({name!r})")
        return {k: list(v[:n] if n else v) for k, v in data.items()}

    def key(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.train):
            for item in self.train[name]:
                h.update(np.ascontiguousarray(item).tobytes() if isinstance(item, np.ndarray) else str(item).encode())
        return h.hexdigest()[:12]

