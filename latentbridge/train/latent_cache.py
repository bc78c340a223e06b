"""Posteriors of a finite data set, cached on disk as safetensors shards and reused.

The prior stage encodes the same items with the same frozen codecs every epoch; the cache encodes
them once. It stores the raw posterior (mean, log-variance, lengths), so a posterior sample drawn
from the cache is exactly the one the codec would have drawn. A cache directory is named by the
role, the codec's fingerprint (config + stats) and a key of the data, so a changed codec or data
set never reads stale latents.

    <root>/<role>-<codec>-<fingerprint>-<data key>/shard_00000.safetensors ... meta.json
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from latentbridge.codecs import Codec, Posterior


class LatentCache:
    """Raw posteriors of items 0..N-1 of one data set under one codec."""

    def __init__(self, mean: Tensor, logvar: Tensor | None, lengths: Tensor, directory: Path) -> None:
        self.mean, self.logvar, self.lengths, self.directory = mean, logvar, lengths, directory

    def __len__(self) -> int:
        return self.mean.shape[0]

    def posterior(self, indices: Tensor) -> Posterior:
        """The cached Posterior of the given items (mean [B, N, D])."""
        n = int(self.lengths[indices].max())
        return Posterior(self.mean[indices, :n], self.lengths[indices], None if self.logvar is None else self.logvar[indices, :n])

    @classmethod
    def build_or_load(cls, root: Path, role: str, codec: Codec, data_key: str, count: int,
                      batch_of: Callable[[Tensor], Any], shard_size: int = 4096) -> LatentCache:
        """Load the cache if it exists for this codec and data, else encode all `count` items and write it atomically."""
        directory = Path(root) / f"{role}-{codec.name}-{codec.fingerprint()}-{data_key}"
        meta_file = directory / "meta.json"
        if not meta_file.is_file():
            tmp = directory.with_name(f".tmp-{directory.name}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            shards = 0
            with torch.no_grad():
                for start in range(0, count, shard_size):
                    idx = torch.arange(start, min(count, start + shard_size))
                    post = codec.raw_encode(batch_of(idx))
                    codec.check_posterior(post)
                    tensors = {"mean": post.mean.contiguous(), "lengths": post.lengths}
                    if post.logvar is not None:
                        tensors["logvar"] = post.logvar.contiguous()
                    save_file(tensors, str(tmp / f"shard_{shards:05d}.safetensors"))
                    shards += 1
            (tmp / "meta.json").write_text(json.dumps({"codec": codec.name, "fingerprint": codec.fingerprint(),
                                                       "count": count, "shards": shards}) + "\n")
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
        meta = json.loads(meta_file.read_text())
        parts = [load_file(str(directory / f"shard_{i:05d}.safetensors")) for i in range(meta["shards"])]
        width = max(p["mean"].shape[1] for p in parts)
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1]))  # noqa: E731
        mean = torch.cat([pad(p["mean"]) for p in parts])
        logvar = torch.cat([pad(p["logvar"]) for p in parts]) if "logvar" in parts[0] else None
        return cls(mean, logvar, torch.cat([p["lengths"] for p in parts]), directory)
