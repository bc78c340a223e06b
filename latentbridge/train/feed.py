"""What each process reads for a training step: its own slice of the global batch, and nothing else.

A step's global batch is laid out as in latentbridge.tasks: each task's share of `size` examples, task after
task; process r of R holds positions [r * size / R, (r + 1) * size / R). A process reads, augments and
encodes only the items at its positions:

    finite data sets     the global batch's indices come from (seed, step); the process takes its slice of them
    drawn data sets      (the toy ring) drawn whole from (seed, step) -- they are synthetic and cheap -- then sliced
    streaming data sets  the process's own stream of its own shards (latentbridge.data.stream): a fixed count per
                         step, its position kept for checkpoints

Every example's randomness (its augmentation, its posterior sample, condition dropout, its noise and flow
times) is drawn from a generator of its own, seeded by (seed, step, position in the global batch). So what
a process computes for an example does not depend on which process computes it, or on the rest of its batch:
two processes compute the same losses as one.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Sequence

import torch

from latentbridge.codecs import Codec
from latentbridge.data.document import flatten
from latentbridge.errors import ConfigError
from latentbridge.tasks import Task, TaskMixture, document_roles, shares, task_seed
from latentbridge.train.latent_cache import join_rows


def example_generator(seed: int, index: int, position: int, stream: int = 0) -> torch.Generator:
    """The generator of one example of step `index`: `stream` 0 augments its items, 1 draws its latents and noise."""
    h = hashlib.blake2b(f"{seed}:{index}:{position}:{stream}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(h, "little") & ((1 << 63) - 1))


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclasses.dataclass
class Part:
    """One task's examples in this process's slice of a step."""

    task: Task
    batch: dict[str, Any]
    """Role -> the codec's collated items, or a cached Posterior."""
    positions: list[int]
    """Each example's position in the step's global batch."""
    documents: list[list[tuple[str, int]]] | None = None
    """A document task: each example's items in order, as (role, index into that role's collated items)."""


@dataclasses.dataclass
class LocalBatch:
    """This process's slice of one training step, task by task."""

    parts: list[Part]
    index: int
    """The step (micro-step, with gradient accumulation) it belongs to: seeds the examples' randomness."""

    def __len__(self) -> int:
        return sum(len(p.positions) for p in self.parts)


def _slice_of(rank_slice: slice, size: int) -> tuple[int, int, int, int]:
    """(start, stop, rank, world) of a process's slice of a global batch of `size`."""
    start, stop, _ = rank_slice.indices(size)
    per = stop - start
    if per <= 0 or size % per:
        raise ConfigError(f"a process's slice {start}:{stop} does not divide the batch of {size} evenly")
    return start, stop, start // per, size // per


class Feed:
    """Each process's slice of every step, for the prior/joint stages (`role` None) or one codec's own training.

    Callable as the Trainer's `batches(index, size, rank_slice)`; `state_dict()` is the position of every stream it
    reads (saved in checkpoints), `load_state_dict()` puts it back before the first step of a resumed run."""

    def __init__(self, mix: TaskMixture, codecs: dict[str, Codec], seed: int, *, role: str | None = None,
                 caches: dict[str, dict[str, Any]] | None = None) -> None:
        self.mix, self.codecs, self.seed, self.role = mix, codecs, seed, role
        self.caches = caches or {}
        """Data-set key (TaskMixture.key) -> role -> LatentCache: the roles whose posteriors are read, not encoded."""
        self.tasks = list(mix.tasks) if role is None else mix.tasks_using(role)
        self.readers: dict[str, Any] = {}
        self.state: dict[str, Any] = {}

    # -- positions ------------------------------------------------------------------------------------------

    def _reader(self, task: Task, count: int, rank: int, world: int):
        from latentbridge.data.stream import StreamReader

        key = f"{task.name}/{self.role or 'prior'}"
        if key not in self.readers:
            self.readers[key] = StreamReader(self.mix.source(task), "train", count, seed=task_seed(self.seed, task.name),
                                             rank=rank, world=world, state=self.state.get(key))
        return self.readers[key]

    def state_dict(self) -> dict[str, Any]:
        return {**self.state, **{k: r.state_dict() for k, r in self.readers.items()}}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.readers:
            raise RuntimeError("Feed.load_state_dict after reading began")
        self.state = dict(state or {})

    @property
    def skipped(self) -> int:
        """Bad files skipped so far by this process's streams."""
        return sum(r.skipped for r in self.readers.values())

    def close(self) -> None:
        for r in self.readers.values():
            r.close()
        self.readers.clear()

    # -- a step ---------------------------------------------------------------------------------------------

    def raw(self, task: Task, index: int, n: int, lo: int, hi: int, rank: int, world: int) -> tuple[dict[str, list], torch.Tensor | None]:
        """Task `task`'s items at its positions lo:hi of its n examples this step (and their data-set indices)."""
        if getattr(self.mix.source(task), "streaming", False):
            return self._reader(task, hi - lo, rank, world).next(), None
        return self.mix.take(task, index, n, lo, hi, gen=step_generator(self.seed, index))

    def _documents(self, task: Task, raw: dict[str, list], index: int, positions: Sequence[int]
                   ) -> tuple[dict[str, list], list[list[tuple[str, int]]]]:
        """A document task's items by role (each augmented with its own generator when the codec augments) and each
        document's structure [(role, index)]."""
        roles = document_roles(task, {r: self.codecs[r].modality for r in task.document})
        where = f"data set '{self.mix.source(task).name}' (task {task.name})"
        docs = raw[self.mix.source(task).field("document")]
        items, structure = flatten(docs, roles, where)
        for role, values in items.items():
            codec = self.codecs[role]
            if codec.augments:  # item k of document p: generator (p, 16 + k), independent of the batch
                owner = [(positions[d], k) for d, doc in enumerate(structure) for k, (r, _) in enumerate(doc) if r == role]
                items[role] = [codec.augment([x], example_generator(self.seed, index, p, 16 + k))[0]
                               for x, (p, k) in zip(values, owner)]
        return items, structure

    def _items(self, role: str, task: Task, raw: dict[str, list], index: int, positions: Sequence[int]) -> list:
        """A role's raw items of one part, each augmented with its own generator when the codec augments."""
        if task.document:
            return self._documents(task, raw, index, positions)[0][role]
        codec = self.codecs[role]
        items = raw[self.mix.source(task).field(codec.modality, role)]
        if codec.augments:
            items = [codec.augment([x], example_generator(self.seed, index, p, 0))[0] for x, p in zip(items, positions)]
        return items

    def _role_batch(self, role: str, task: Task, raw: dict[str, list], idx: torch.Tensor | None, index: int,
                    positions: Sequence[int]) -> Any:
        cache = self.caches.get(self.mix.key(task), {}).get(role)
        if cache is not None:
            if idx is not None:
                return cache.posterior(idx)
            return join_rows(raw[role])  # a stream of cached latents (CachedStream)
        return self.codecs[role].collate(self._items(role, task, raw, index, positions))

    def __call__(self, index: int, size: int, rank_slice: slice) -> LocalBatch | dict[str, Any]:
        start, stop, rank, world = _slice_of(rank_slice, size)
        parts, items, offset = [], [], 0
        for task, n in zip(self.tasks, shares([t.weight for t in self.tasks], size)):
            lo, hi = max(start, offset), min(stop, offset + n)
            if hi > lo:
                raw, idx = self.raw(task, index, n, lo - offset, hi - offset, rank, world)
                positions = list(range(lo, hi))
                if self.role is not None:  # a codec's own training: its items from every task that uses it, collated once
                    items += self._items(self.role, task, raw, index, positions)
                elif task.document:
                    by_role, structure = self._documents(task, raw, index, positions)
                    parts.append(Part(task, {r: self.codecs[r].collate(v) for r, v in by_role.items() if v}, positions,
                                      structure))
                else:
                    parts.append(Part(task, {r: self._role_batch(r, task, raw, idx, index, positions) for r in task.roles},
                                      positions))
            offset += n
        if self.role is not None:
            return {self.role: self.codecs[self.role].collate(items)}
        return LocalBatch(parts, index)
