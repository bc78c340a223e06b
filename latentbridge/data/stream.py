"""Streaming data sets: items read from files shard by shard, never all in memory.

A streaming data set lists its *shards* (a tar file, a Parquet row group, a run of lines of a JSONL file,
a run of files of an image folder) and reads each as a sequence of cheap, undecoded *records* (a path, a
line, a row number, a tar member's bytes) that it *decodes* into items only when they are used. Training
reads through `torch.utils.data` workers:

    epoch e of a stream: shards in an order drawn from (seed, e); shard j goes to slot j mod S, where the
    S = processes x workers slots are (rank, worker); each slot passes its records through a shuffle
    buffer seeded by (seed, e, slot), decodes them and batches them. When there are fewer shards than
    slots, every slot reads every shard and keeps every S-th record.

A slot's position is (epoch, records read this epoch). The trainer keeps the position of the last batch
it used from each slot and saves it in its checkpoints; a resumed stream replays that epoch's records up
to the position without decoding them (the buffer draws the same order from the same records), so it
continues with exactly the batch the killed run would have used next.

Splits: by a hash of each record's key (`validation_fraction`, `test_fraction`), or by files given per
split (`split_files`). A file that cannot be read or decoded is reported with its path, and skipped and
counted (`on_error: skip`) or fatal (`on_error: fail`); never a traceback from a worker.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import json
import os
import random
import warnings
from typing import Any, Iterable, Iterator, Literal

import torch

from latentbridge.data.base import SPLITS, Dataset
from latentbridge.errors import ConfigError, LatentbridgeError


class DataFileError(LatentbridgeError):
    """A data file that cannot be read or decoded (its path and the problem are in the message)."""


class BadRecord(Exception):
    """Raised by a data set's decode(): the record's file is unusable (the message says why)."""


@dataclasses.dataclass
class StreamOptions:
    """Options every streaming data set shares (its own config dataclass adds the rest)."""

    validation_fraction: float = 0.05
    """Share of items in the validation split, by a hash of each item's key (ignored with split_files)."""
    test_fraction: float = 0.05
    """Share of items in the test split (what `latentbridge eval` scores), by a hash of each item's key."""
    split_files: dict[str, str] | None = None
    """Files per split instead of hashing, e.g. {train: "train-*.tar", test: "test-*.tar"} (globs, relative to path)."""
    on_error: Literal["skip", "fail"] = "skip"
    """A file that cannot be read or decoded: skip it (reported with its path and counted) or stop with its path."""
    shuffle_buffer: int = 1000
    """Records shuffled together as they stream (on top of the shard order drawn per epoch)."""
    num_workers: int = 2
    """Loader processes per training process (0: read in the training process)."""
    prefetch: int = 4
    """Batches each worker prepares ahead."""

    def __post_init__(self) -> None:
        if not (0 <= self.validation_fraction < 1 and 0 <= self.test_fraction < 1
                and self.validation_fraction + self.test_fraction < 1):
            raise ValueError(f"validation_fraction {self.validation_fraction} and test_fraction {self.test_fraction} must be "
                             "in [0, 1) and leave part of the data for training (their sum < 1)")
        if self.split_files is not None:
            bad = sorted(set(self.split_files) - set(SPLITS))
            if bad or "train" not in self.split_files:
                raise ValueError(f"split_files names splits {sorted(self.split_files)}; give `train` and any of "
                                 f"{', '.join(SPLITS)} (not {', '.join(bad) or 'nothing else'})")
        if self.shuffle_buffer < 1 or self.num_workers < 0 or self.prefetch < 1:
            raise ValueError("shuffle_buffer and prefetch must be >= 1 and num_workers >= 0")


@dataclasses.dataclass(frozen=True)
class Shard:
    """One unit of a streaming data set's files: `path`, and where the data set needs it, a part of it."""

    path: str
    part: Any = None
    """E.g. a row group, a range of lines (start, stop), or a tuple of relative file names."""

    def __str__(self) -> str:
        return self.path if self.part is None else f"{self.path} [{self.part if not isinstance(self.part, tuple) or len(self.part) < 4 else f'{len(self.part)} files'}]"


@dataclasses.dataclass(frozen=True)
class Record:
    """One undecoded item: its `key` (stable across runs: the split hash and error messages use it) and the data
    the data set's decode() needs."""

    key: str
    data: Any
    where: str
    """The file a problem with this record names."""


def split_of(key: str, validation: float, test: float) -> str:
    """The split of a record by a hash of its key (stable across machines, Python versions and file order)."""
    u = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") / 2.0**64
    return "validation" if u < validation else "test" if u < validation + test else "train"


def expand_paths(root: str | os.PathLike, pattern: str | None, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files under `root` (a file, a folder, a glob, or brace patterns such as shard-{000..009}.tar) matching
    `pattern` relative to a folder root; sorted."""
    try:
        from braceexpand import braceexpand  # brace patterns (shard-{000..099}.tar) are how shards are named in the field
    except ImportError:  # pragma: no cover - the data extra installs it
        braceexpand = lambda s: [s]  # noqa: E731

    root = str(root)
    out: list[str] = []
    for one in braceexpand(root):
        if os.path.isdir(one):
            for dirpath, _, files in os.walk(one):
                for f in files:
                    rel = os.path.relpath(os.path.join(dirpath, f), one)
                    if (pattern is None or fnmatch.fnmatch(rel, pattern)) and (not suffixes or f.lower().endswith(suffixes)):
                        out.append(os.path.join(dirpath, f))
        elif any(c in one for c in "*?["):
            out += [p for p in glob.glob(one, recursive=True) if os.path.isfile(p)]
        elif os.path.isfile(one):
            out.append(one)
    return sorted(set(out))


class StreamingDataset(Dataset):
    """Base of data sets read shard by shard (see the module docstring). Subclasses write:

        list_shards(split) -> [Shard]     cheap: names and sizes, no decoding (split is None when splitting by hash)
        records(shard) -> iter[Record]    cheap: undecoded records in file order
        decode(record) -> {field: item}   the expensive part, run in loader workers; raise BadRecord(why)

    and set `self.fields` ({role or modality: field}) in __init__.
    """

    finite = False
    streaming = True

    def __init__(self, config: Any = None, seed: int = 0) -> None:
        super().__init__(config, seed)
        self._shards: dict[str, list[Shard]] = {}
        self.bad: list[tuple[str, str]] = []  # (where, why) of records skipped in this process (not in workers)

    # -- what subclasses write ----------------------------------------------------------------------

    def list_shards(self, split: str | None) -> list[Shard]:
        raise NotImplementedError

    def records(self, shard: Shard) -> Iterator[Record]:
        raise NotImplementedError

    def decode(self, record: Record) -> dict[str, Any]:
        raise NotImplementedError

    # -- the field a codec role reads ----------------------------------------------------------------

    def field(self, modality: str, role: str | None = None) -> str:
        if role is not None and role in self.fields:
            return role
        return super().field(modality, role)

    # -- shards and records of a split --------------------------------------------------------------

    def shards(self, split: str) -> list[Shard]:
        if split not in self._shards:
            files = self.config.split_files
            if files is not None:
                shards = self.list_shards(split) if split in files else []
            else:
                shards = self.list_shards(None)
            if split == "train" and not shards:
                raise ConfigError(f"data set '{self.name}': no files found for the training split ({self.describe()}). "
                                  "Check data.config.path (and split_files).")
            self._shards[split] = shards
        return self._shards[split]

    def describe(self) -> str:
        return f"path {getattr(self.config, 'path', '?')!r}"

    def split_records(self, shard: Shard, split: str) -> Iterator[Record]:
        """The records of `shard` in `split`, in file order; a shard that cannot be read is reported like a bad item."""
        hashing = self.config.split_files is None
        c = self.config
        try:
            for rec in self.records(shard):
                if not hashing or split_of(rec.key, c.validation_fraction, c.test_fraction) == split:
                    yield rec
        except (BadRecord, OSError, ValueError, EOFError) as err:
            yield Record(f"{shard}#unreadable", BadRecord(f"cannot read {shard}: {err}"), str(shard))

    def decode_checked(self, record: Record) -> dict[str, Any] | BadRecord:
        """decode() with its failure as a value: BadRecord('<where>: <why>')."""
        if isinstance(record.data, BadRecord):
            return BadRecord(str(record.data))
        try:
            return self.decode(record)
        except BadRecord as err:
            return BadRecord(f"{record.where}: {err}")
        except Exception as err:  # a decoder library's own error (PIL, soundfile, json): still this file's problem
            return BadRecord(f"{record.where}: {type(err).__name__}: {err}")

    def bad_item(self, problem: BadRecord) -> None:
        """A bad record met outside the loader workers (held-out splits, statistics samples)."""
        if self.config.on_error == "fail":
            raise DataFileError(f"data set '{self.name}': {problem}. Fix or remove the file, or set data.config.on_error=skip "
                                "to skip bad files.")
        self.bad.append((str(problem), ""))
        if len(self.bad) <= 10:
            warnings.warn(f"data set '{self.name}': skipped {problem}", stacklevel=3)

    def items(self, split: str, n: int | None, order_seed: int | None = None) -> dict[str, list]:
        """Up to n decoded items of `split`: shards in file order (or drawn from order_seed), records in file order."""
        shards = self.shards(split)
        order = list(range(len(shards)))
        if order_seed is not None:
            random.Random(order_seed).shuffle(order)
        return self.decoded((rec for j in order for rec in self.split_records(shards[j], split)), n)

    def decoded(self, records: Iterable[Record], n: int | None = None) -> dict[str, list]:
        """Up to n items of `records` decoded, by field; bad ones reported (bad_item) and left out."""
        out: dict[str, list] = {f: [] for f in self.fields.values()}
        got = 0
        for rec in records:
            if n is not None and got >= n:
                break
            item = self.decode_checked(rec)
            if isinstance(item, BadRecord):
                self.bad_item(item)
                continue
            for f in out:
                out[f].append(item[f])
            got += 1
        return out

    # -- the Dataset protocol -----------------------------------------------------------------------

    def split(self, name: str, n: int | None = None) -> dict[str, list]:
        return self.items(name, n)

    def stats_sample(self, n: int) -> dict[str, list]:
        return self.items("train", n, order_seed=self.seed + 1)

    def batch(self, step: int, size: int, generator: torch.Generator) -> dict[str, list]:
        raise TypeError(f"data set '{self.name}' streams: training reads it through latentbridge.data.stream.ShardStream")

    def key(self) -> str:
        """Identifies the data and its options (latent caches are keyed by it): the config, and every shard's file
        name, size and modification time."""
        h = hashlib.sha256(json.dumps([self.name, dataclasses.asdict(self.config)], sort_keys=True, default=str).encode())
        for split in SPLITS:
            for s in self.shards(split):
                st = os.stat(s.path)
                h.update(f"{split}|{s}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:12]


# ------------------------------------------------------------------------------------------------------
# The stream a training process reads
# ------------------------------------------------------------------------------------------------------


def _rng(*key: Any) -> random.Random:
    return random.Random(int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=8).digest(), "little"))


@dataclasses.dataclass
class SlotPosition:
    """Where one slot's stream stands: in `epoch`, after `records` of that epoch's records (before decoding)."""

    epoch: int = 0
    records: int = 0


class ShardStream(torch.utils.data.IterableDataset):
    """Batches of `batch_size` decoded items for one process of `world`, read by `workers` loader processes.

    Each yielded batch: {"items": {field: [...]}, "worker": logical worker, "position": (epoch, records),
    "bad": [problem, ...]} or {"error": message} when a file is bad and on_error is fail. `start` holds every
    logical worker's position to continue from; `rotate` makes the first batch come from logical worker
    `rotate` (DataLoader asks its workers in turn from worker 0)."""

    def __init__(self, dataset: StreamingDataset, split: str, batch_size: int, *, seed: int, rank: int, world: int,
                 workers: int, start: list[SlotPosition] | None = None, rotate: int = 0) -> None:
        super().__init__()
        self.dataset, self.split, self.batch_size = dataset, split, batch_size
        self.seed, self.rank, self.world, self.workers = seed, rank, world, max(1, workers)
        self.start = start or [SlotPosition() for _ in range(self.workers)]
        self.rotate = rotate
        self.shards = dataset.shards(split)

    def slot_records(self, slot: int, slots: int, epoch: int) -> Iterator[Record]:
        """Slot `slot`'s records of epoch `epoch`, shuffled through the buffer, before decoding."""
        order = list(range(len(self.shards)))
        _rng("shards", self.seed, epoch).shuffle(order)
        if len(self.shards) >= slots:
            mine = (self.dataset.split_records(self.shards[j], self.split) for j in order[slot::slots])
            records: Iterable[Record] = (r for it in mine for r in it)
        else:
            every = (r for j in order for r in self.dataset.split_records(self.shards[j], self.split))
            records = (r for i, r in enumerate(every) if i % slots == slot)
        rng = _rng("buffer", self.seed, epoch, slot)
        buf: list[Record] = []
        size = self.dataset.config.shuffle_buffer
        for rec in records:
            if len(buf) < size:
                buf.append(rec)
                continue
            j = rng.randrange(size)
            yield buf[j]
            buf[j] = rec
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        physical, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if n != self.workers:
            raise RuntimeError(f"ShardStream built for {self.workers} workers runs in {n}")
        if info is not None:
            torch.set_num_threads(1)
        worker = (physical + self.rotate) % n
        slot, slots = self.rank * n + worker, self.world * n
        pos = dataclasses.replace(self.start[worker])
        items: dict[str, list] = {f: [] for f in self.dataset.fields.values()}
        bad: list[str] = []
        fail = self.dataset.config.on_error == "fail"
        while True:
            seen = 0
            for i, rec in enumerate(self.slot_records(slot, slots, pos.epoch)):
                seen += 1
                if i < pos.records:
                    continue  # replaying a resumed epoch: the buffer needs the records, nothing needs them decoded
                pos.records = i + 1
                item = self.dataset.decode_checked(rec)
                if isinstance(item, BadRecord):
                    if fail:
                        yield {"error": f"data set '{self.dataset.name}': {item}. Fix or remove the file, or set "
                                        "data.config.on_error=skip to skip bad files."}
                        return
                    bad.append(str(item))
                    continue
                for f in items:
                    items[f].append(item[f])
                if len(items[next(iter(items))]) == self.batch_size:
                    yield {"items": items, "worker": worker, "position": (pos.epoch, pos.records), "bad": bad}
                    items, bad = {f: [] for f in items}, []
            if seen == 0:
                yield {"error": f"data set '{self.dataset.name}': process {self.rank} loader worker {worker} has no "
                                f"{self.split} items ({len(self.shards)} shards over {slots} readers). Use fewer "
                                "data.config.num_workers, or more, smaller shards."}
                return
            pos = SlotPosition(pos.epoch + 1, 0)


def _as_is(batch: Any) -> Any:
    return batch  # the worker built the batch; DataLoader's default would turn numpy arrays into tensors


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """Loader workers ignore SIGINT/SIGTERM: Ctrl-C reaches the whole process group, and the trainer, which finishes
    its step and checkpoints first, still needs its workers; they end with the trainer (or when it dies)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class StreamReader:
    """One process's iterator over a ShardStream through a DataLoader, keeping the position of what it handed out."""

    def __init__(self, dataset: StreamingDataset, split: str, batch_size: int, *, seed: int, rank: int, world: int,
                 state: dict[str, Any] | None = None) -> None:
        c = dataset.config
        self.workers = c.num_workers
        self.meta = {"rank": rank, "world": world, "workers": max(1, c.num_workers), "batch_size": batch_size}
        start, rotate, self.batches = None, 0, 0
        if state is not None:
            if {k: state.get(k) for k in self.meta} == self.meta:
                start = [SlotPosition(*p) for p in state["positions"]]
                self.batches = state["batches"]
                rotate = self.batches % self.meta["workers"]
            else:
                warnings.warn(f"data set '{dataset.name}': the checkpoint's data position was saved for "
                              f"{ {k: state.get(k) for k in self.meta} }, this run reads with {self.meta}; the stream starts "
                              "a fresh pass (the data order differs from the interrupted run's).", stacklevel=2)
                start = [SlotPosition(epoch=1_000_000 + int(state.get("batches", 0)), records=0)
                         for _ in range(self.meta["workers"])]
        self.positions = [tuple(dataclasses.astuple(p)) for p in (start or [SlotPosition()] * self.meta["workers"])]
        self.stream = ShardStream(dataset, split, batch_size, seed=seed, rank=rank, world=world, workers=c.num_workers,
                                  start=start, rotate=rotate)
        loader = torch.utils.data.DataLoader(self.stream, batch_size=None, num_workers=c.num_workers,
                                             prefetch_factor=c.prefetch if c.num_workers else None,
                                             persistent_workers=False, collate_fn=_as_is,
                                             worker_init_fn=_leave_stop_signals_to_the_trainer if c.num_workers else None)
        self.iterator = iter(loader)
        self.dataset = dataset
        self.skipped = 0

    def next(self) -> dict[str, list]:
        out = next(self.iterator)
        if "error" in out:
            raise DataFileError(out["error"])
        for problem in out["bad"]:
            self.skipped += 1
            if self.skipped <= 10:
                warnings.warn(f"data set '{self.dataset.name}': skipped {problem}", stacklevel=2)
            elif self.skipped == 11:
                warnings.warn(f"data set '{self.dataset.name}': more bad files skipped; their count is logged as data_skipped",
                              stacklevel=2)
        self.positions[out["worker"]] = tuple(out["position"])
        self.batches += 1
        return out["items"]

    def state_dict(self) -> dict[str, Any]:
        return {**self.meta, "positions": [list(p) for p in self.positions], "batches": self.batches}

    def close(self) -> None:
        del self.iterator
