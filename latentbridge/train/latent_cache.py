"""Posteriors of a data set under frozen codecs, encoded once into safetensors shards and streamed from disk.

The prior stage encodes the same items with the same frozen codecs every epoch; the cache encodes them once.
It stores the raw posterior (mean, log-variance, lengths), so a posterior sample drawn from the cache is
exactly the one the codec would have drawn. A cache directory is named by the role, the codec's fingerprint
(config + stats) and a key of the data and its options, so a changed codec or data set never reads stale
latents:

    <root>/<role>-<codec>-<fingerprint>-<data key>/shard_00000.safetensors ... meta.json

Shards follow the data: runs of `shard_size` items of a finite data set, or one cache shard per shard of a
streaming data set (its training split, in file order; bad files are skipped in every role alike). Under
torchrun each process encodes its own shards (shard k goes to process k mod world); each shard is written
whole or not at all, so a killed `latentbridge cache` continues where it stopped; meta.json is written last,
when every shard is there. Nothing is loaded whole: reads are memory-mapped slices of the shard files.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch import distributed as dist
from tqdm.auto import tqdm

from latentbridge.codecs import Codec, Posterior
from latentbridge.data.base import Dataset
from latentbridge.data.stream import Record, Shard, StreamingDataset
from latentbridge.errors import CheckpointError

SHARD_SIZE = 4096


def cache_dir(root: Path, role: str, codec: Codec, data_key: str) -> Path:
    return Path(root) / f"{role}-{codec.name}-{codec.fingerprint()}-{data_key}"


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Files:
    """Open shard files of one cache directory, opened lazily in each process (safe_open handles do not pickle)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._open: dict[int, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"directory": self.directory, "_open": {}}

    def __call__(self, k: int) -> Any:
        if k not in self._open:
            self._open[k] = safe_open(str(self.directory / f"shard_{k:05d}.safetensors"), framework="pt")
        return self._open[k]

    def rows(self, k: int, a: int, b: int) -> tuple[Tensor, Tensor | None, Tensor]:
        f = self(k)
        mean = f.get_slice("mean")[a:b]
        logvar = f.get_slice("logvar")[a:b] if "logvar" in f.keys() else None
        return mean, logvar, f.get_slice("lengths")[a:b]


def _pad_join(parts: list[tuple[Tensor, Tensor | None, Tensor]]) -> Posterior:
    """One Posterior of rows from several shards (each padded to its own shard's width): padded to the longest item."""
    lengths = torch.cat([p[2] for p in parts])
    n = int(lengths.max()) if len(lengths) else 0
    fit = lambda t: torch.nn.functional.pad(t[:, :n], (0, 0, 0, max(0, n - t.shape[1])))  # noqa: E731
    mean = torch.cat([fit(p[0]) for p in parts])
    logvar = None if parts[0][1] is None else torch.cat([fit(p[1]) for p in parts])
    return Posterior(mean, lengths, logvar)


class LatentCache:
    """The cached posteriors of one role: items 0..N-1 of a finite data set, or the shards of a streaming one."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        meta_file = self.directory / "meta.json"
        if not meta_file.is_file():
            raise CheckpointError(f"{self.directory} is not a complete latent cache (no meta.json); run `latentbridge cache` "
                                  "again to finish it.")
        self.meta = json.loads(meta_file.read_text())
        self.counts: list[int] = self.meta["counts"]
        self.starts = [0]
        for c in self.counts:
            self.starts.append(self.starts[-1] + c)
        self.files = _Files(self.directory)

    def __len__(self) -> int:
        return self.starts[-1]

    def posterior(self, indices: Tensor) -> Posterior:
        """The cached Posterior of the given items (mean [B, N, D])."""
        parts = []
        for i in indices.tolist():
            k = bisect.bisect_right(self.starts, i) - 1
            a = i - self.starts[k]
            parts.append(self.files.rows(k, a, a + 1))
        return _pad_join(parts)

    def shard(self, k: int) -> Posterior:
        return _pad_join([self.files.rows(k, 0, self.counts[k])])


# -- building ----------------------------------------------------------------------------------------------


def _shards_of(source: Dataset, shard_size: int) -> list[Any]:
    if getattr(source, "streaming", False):
        return list(source.shards("train"))
    return [(a, min(len(source), a + shard_size)) for a in range(0, len(source), shard_size)]


def _items_of(source: Dataset, shard: Any) -> dict[str, list]:
    if isinstance(shard, Shard):
        return source.decoded(source.split_records(shard, "train"))
    return source.items_at(torch.arange(*shard))


def build_cache(root: str | Path, codecs: dict[str, Codec], source: Dataset, *, progress: bool = True,
                shard_size: int = SHARD_SIZE, batch_size: int = 256) -> dict[str, LatentCache]:
    """Encode `source`'s training items with the frozen `codecs` (role -> codec) into caches, or reuse finished ones;
    under torchrun each process encodes shards rank, rank + world, ... Returns role -> LatentCache."""
    rank, world = _world()
    key = source.key()
    dirs = {r: cache_dir(Path(root), r, c, key) for r, c in codecs.items()}
    todo = {r: d for r, d in dirs.items() if not (d / "meta.json").is_file()}
    if todo:
        shards = _shards_of(source, shard_size)
        for d in todo.values():
            d.mkdir(parents=True, exist_ok=True)
            for stale in d.glob(f".tmp-*-{rank}-*"):
                stale.unlink()
        mine = list(range(rank, len(shards), world))
        bar = tqdm(mine, desc=f"caching latents ({', '.join(todo)})" + (f" [process {rank}/{world}]" if world > 1 else ""),
                   disable=not progress, dynamic_ncols=True, position=rank)
        for k in bar:
            missing = {r: d for r, d in todo.items() if not (d / f"shard_{k:05d}.safetensors").is_file()}
            if not missing:
                continue  # done by an earlier, killed run
            items = _items_of(source, shards[k])
            for role, d in missing.items():
                codec = codecs[role]
                values = items[source.field(codec.modality, role)]
                posts = []
                with torch.no_grad():
                    for a in range(0, len(values), batch_size):
                        post = codec.raw_encode(codec.collate(values[a : a + batch_size]))
                        codec.check_posterior(post)
                        posts.append((post.mean.float().cpu(), None if post.logvar is None else post.logvar.float().cpu(),
                                      post.lengths.cpu()))
                joined = _pad_join(posts) if posts else Posterior(torch.zeros(0, 1, codec.latent_spec.dim), torch.zeros(0, dtype=torch.long))
                tensors = {"mean": joined.mean.contiguous(), "lengths": joined.lengths.contiguous()}
                if joined.logvar is not None:
                    tensors["logvar"] = joined.logvar.contiguous()
                tmp = d / f".tmp-{k:05d}-{rank}-{os.getpid()}.safetensors"
                save_file(tensors, str(tmp), metadata={"count": str(len(values))})
                os.replace(tmp, d / f"shard_{k:05d}.safetensors")
        if world > 1:
            dist.barrier()
        if rank == 0:
            for role, d in todo.items():
                counts = []
                for k in range(len(shards)):
                    with safe_open(str(d / f"shard_{k:05d}.safetensors"), framework="pt") as f:
                        counts.append(int(f.metadata()["count"]))
                meta = {"codec": codecs[role].name, "fingerprint": codecs[role].fingerprint(), "data": source.name,
                        "data_key": key, "counts": counts, "count": sum(counts),
                        "streaming": bool(getattr(source, "streaming", False))}
                tmp = d / f".meta-{os.getpid()}.json"
                tmp.write_text(json.dumps(meta) + "\n")
                os.replace(tmp, d / "meta.json")
        if world > 1:
            dist.barrier()
    return {r: LatentCache(d) for r, d in dirs.items()}


# -- streaming from the cache --------------------------------------------------------------------------------


@dataclasses.dataclass
class CachedRow:
    """One item's raw posterior, as a cached stream yields it: mean [n, D], logvar [n, D] or None."""

    mean: Tensor
    logvar: Tensor | None


def join_rows(rows: list[CachedRow]) -> Posterior:
    return _pad_join([(r.mean[None], None if r.logvar is None else r.logvar[None], torch.tensor([r.mean.shape[0]]))
                      for r in rows])


class CachedStream(StreamingDataset):
    """A streaming data set's training split read back from its latent caches: one shard per data shard, one record
    per cached item, each role's field a CachedRow. It streams like the data set (shard order and buffer)."""

    def __init__(self, source: StreamingDataset, caches: dict[str, LatentCache]) -> None:
        self.name = f"{source.name} (cached latents)"
        super().__init__(source.config, source.seed)
        self.caches = caches
        self.fields = {r: r for r in caches}
        first = next(iter(caches.values()))
        self._shards = {"train": [Shard(str(first.directory), k) for k in range(len(first.counts))]}

    def shards(self, split: str) -> list[Shard]:
        if split != "train":
            raise ValueError("a latent cache holds the training split only")
        return self._shards["train"]

    def split_records(self, shard: Shard, split: str) -> Iterator[Record]:
        yield from self.records(shard)

    def records(self, shard: Shard) -> Iterator[Record]:
        k = shard.part
        for i in range(next(iter(self.caches.values())).counts[k]):
            yield Record(f"{k}:{i}", (k, i), f"{shard.path} shard {k} item {i}")

    def decode(self, record: Record) -> dict[str, Any]:
        k, i = record.data
        out = {}
        for role, cache in self.caches.items():
            mean, logvar, lengths = cache.files.rows(k, i, i + 1)
            n = int(lengths[0])
            out[role] = CachedRow(mean[0, :n].clone(), None if logvar is None else logvar[0, :n].clone())
        return out

    def key(self) -> str:
        return "cached"
