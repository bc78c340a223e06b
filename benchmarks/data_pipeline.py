"""Your own data at scale: memory of a streaming training run, loader throughput against the prior, the latent cache.

    python benchmarks/data_pipeline.py                 # 10k and 200k image folders (written once under the cache dir)
    python benchmarks/data_pipeline.py --large 50000   # a smaller second size

Figures (one JSON line at the end):
  rss_ratio_200k_over_10k      peak RSS of the training process streaming an image folder of 200k items over 10k
  pss_ratio_200k_over_10k      the same for the process and its loader workers together (proportional set size)
  loader_over_consumer         items/s the imagefolder loader delivers (2 workers, 32 px, batches of 32) over the
                               items/s the prior consumes on the demo config (its prior, codecs and batch size)
  loader_over_consumer_webdataset, loader_over_consumer_hf   the same for tar shards and a save_to_disk dataset
  cache_speedup_2proc          `latentbridge cache` items/s with two processes (torchrun, one thread each) over one process
                               with one thread: how the work splits; cache_2proc_over_1proc_2threads compares with one
                               process using both cores

Data: emoji renders (Debian's Noto Color Emoji) with their names as captions, as PNGs, written once under
$LATENTBRIDGE_CACHE/bench (default ~/.cache/latentbridge/bench). Run on a quiet machine: it times things.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "tests"))
BIN = Path(sys.executable).parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datafiles as D  # noqa: E402  (tests/datafiles.py: the layouts written from real data)

TEXT = {"latent_dim": 16, "tokens_per_latent": 1, "block_size": 16, "max_tokens": 32, "width": 128, "heads": 4,
        "encoder_layers": 2, "decoder_layers": 2, "fill_block": True}  # the demo's Text VAE
IMAGE = {"preset": "tiny", "image_size": 32}  # the demo's image VAE
PRIOR = {"preset": "small", "width": 192, "depth": 4, "heads": 6, "block_positions": ["image"]}  # the demo's prior
BATCH = 32  # the demo's batch size


def cache_root() -> Path:
    return Path(os.environ.get("LATENTBRIDGE_CACHE", Path.home() / ".cache" / "latentbridge")) / "bench"


def once(path: Path, build) -> Path:
    """Build a data set at `path` unless a finished one is there."""
    done = path / ".complete" if path.suffix != ".tar" else path.with_suffix(".complete")
    if not done.exists():
        t = time.perf_counter()
        build()
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text("")
        print(f"  wrote {path} in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def imagefolder(n: int) -> Path:
    path = cache_root() / f"imagefolder_{n}"
    return once(path, lambda: D.write_imagefolder(path, n, shard_dirs=1))


def webdataset(n: int) -> str:
    path = cache_root() / f"webdataset_{n}"
    once(path, lambda: D.write_webdataset(path, n, max(1, n // 1000)))
    return str(path)


def hf(n: int) -> Path:
    path = cache_root() / f"hf_{n}"
    return once(path, lambda: D.write_hf(path, n))


# -- memory of a streaming training run ------------------------------------------------------------------


def tree_memory(pid: int, peaks: dict[str, float], stop: threading.Event) -> None:
    import psutil

    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            main = proc.memory_info().rss
            pss = 0
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    pss += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            return
        peaks["rss"] = max(peaks.get("rss", 0), main / 2**20)
        peaks["pss"] = max(peaks.get("pss", 0), pss / 2**20)
        time.sleep(0.1)


def write_config(path: Path, data: dict, steps: int, task: dict | None = None) -> Path:
    import yaml

    cfg = {"name": "bench", "seed": 0,
           "codecs": {"text": {"codec": "text-vae", "config": TEXT}, "image": {"codec": "image-vae", "config": IMAGE}},
           "task": task or {"cond": ["text"], "target": "image"}, "data": data, "prior": PRIOR,
           "train": {"stage": "prior", "steps": steps, "batch_size": BATCH, "codec_steps": 0, "log_every": 1,
                     "checkpoint_every": 0, "warmup_steps": 5, "cond_dropout": 0.1}}
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_run(config: Path, run_dir: Path, env: dict | None = None) -> tuple[dict[str, float], list[dict]]:
    """Run `latentbridge train`, polling the memory of its process tree; (peaks in MiB, metrics rows)."""
    proc = subprocess.Popen([str(BIN / "latentbridge"), "train", str(config), "--run-dir", str(run_dir), "--no-progress"],
                            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=tree_memory, args=(proc.pid, peaks, stop), daemon=True)
    watcher.start()
    _, err = proc.communicate()
    stop.set()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"training failed: {err[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return peaks, rows


def items_per_s(rows: list[dict], skip: int = 5) -> float:
    rows = [r for r in rows if r["stage"] == "prior"]
    a, b = rows[skip], rows[-1]
    return BATCH * (b["step"] - a["step"]) / (b["elapsed_s"] - a["elapsed_s"])


# -- loader throughput ------------------------------------------------------------------------------------


def loader_items_per_s(name: str, options: dict, batches: int = 60, warm: int = 5) -> float:
    from latentbridge.data.stream import StreamReader
    from latentbridge.plugins import registries

    ds = registries().datasets.create(name, {**options, "num_workers": 2, "image_size": 32}, seed=0)
    reader = StreamReader(ds, "train", BATCH, seed=0, rank=0, world=1)
    for _ in range(warm):
        reader.next()
    t = time.perf_counter()
    for _ in range(batches):
        reader.next()
    rate = batches * BATCH / (time.perf_counter() - t)
    reader.close()
    return rate


# -- the latent cache -------------------------------------------------------------------------------------


def cache_items_per_s(folder: Path, work: Path, processes: int, threads: int | None = None) -> tuple[float, int]:
    from latentbridge.plugins import registries

    reg = registries()
    codecs = {}
    for role, name, cfg in (("text", "text-vae", TEXT), ("image", "image-vae", IMAGE)):
        d = work / "codecs" / role
        if not (d / "codec.json").exists():
            reg.codecs.create(name, cfg).save_pretrained(d)
        codecs[role] = d
    tag = f"{processes}x{threads or 'all'}"
    config = write_config(work / f"cache{tag}.yaml", {"name": "imagefolder", "config": {"path": str(folder), "image_size": 32}}, 1)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}  # torchrun gives each process 1 thread
    launcher = [str(BIN / "latentbridge")] if processes == 1 else [str(BIN / "torchrun"), "--nproc_per_node", str(processes), "-m", "latentbridge"]
    t = time.perf_counter()
    proc = subprocess.run([*launcher, "cache", str(config), "--no-progress", f"--train.latent_cache_dir={work / f'cache{tag}'}",
                           *(f"--codecs.{r}.pretrained={d}" for r, d in codecs.items())], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"latentbridge cache failed: {proc.stderr[-2000:]}")
    (meta,) = [json.loads(p.read_text()) for p in (work / f"cache{tag}").glob("image-*/meta.json")]
    return meta["count"] / seconds, meta["count"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=200_000)
    ap.add_argument("--steps", type=int, default=40, help="training steps of each memory run")
    ap.add_argument("--parts", default="rss,loader,cache", help="which measurements (comma-separated)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    out: dict[str, float] = {}
    rows: list[tuple[str, str]] = []
    print("data (written once):", flush=True)
    small, large = imagefolder(args.small), imagefolder(args.large)
    wds, hfd = webdataset(args.small), hf(args.small)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        peaks = {}
        for n, folder in ((args.small, small), (args.large, large)) if "rss" in parts else ():
            config = write_config(work / f"rss{n}.yaml", {"name": "imagefolder", "config": {"path": str(folder), "image_size": 32}},
                                  args.steps)
            peaks[n], _ = train_run(config, work / f"rss{n}")
            rows += [(f"peak RSS, training on {n:,} images (MiB)", f"{peaks[n]['rss']:.0f}"),
                     (f"peak PSS with loader workers, {n:,} images (MiB)", f"{peaks[n]['pss']:.0f}")]
        if peaks:
            out["rss_mib_small"], out["rss_mib_large"] = peaks[args.small]["rss"], peaks[args.large]["rss"]
            out["rss_ratio_200k_over_10k"] = peaks[args.large]["rss"] / peaks[args.small]["rss"]
            out["pss_ratio_200k_over_10k"] = peaks[args.large]["pss"] / peaks[args.small]["pss"]
        # the consumer: the prior stage on the demo's own caption -> image data, its prior, codecs and batch
        demo_data = {"name": "images", "config": {"sources": ["scenes", "digits"], "image_size": 32, "scenes": 2000}}
        if "loader" in parts:
            _, metrics = train_run(write_config(work / "consumer.yaml", demo_data, 30), work / "consumer")
            out["consumer_items_per_s"] = items_per_s(metrics)
            rows.append(("prior consumes, demo config (items/s)", f"{out['consumer_items_per_s']:.0f}"))
        for key, name, options in () if "loader" not in parts else (("imagefolder", "imagefolder", {"path": str(small)}),
                                   ("webdataset", "webdataset", {"path": wds, "fields": {"image": "png", "text": "txt"}}),
                                   ("hf", "hf", {"path": str(hfd), "fields": {"image": "image", "text": "caption"}})):
            rate = loader_items_per_s(name, options)
            out[f"loader_items_per_s_{key}"] = rate
            suffix = "" if key == "imagefolder" else f"_{key}"
            out[f"loader_over_consumer{suffix}"] = rate / out["consumer_items_per_s"]
            rows.append((f"{key} loader, 2 workers (items/s)", f"{rate:.0f}  ({rate / out['consumer_items_per_s']:.1f}x the prior)"))
        if "cache" in parts:
            for key, p, threads, what in (("1proc", 1, 1, "1 process, 1 thread"), ("2proc", 2, None, "2 processes, 1 thread each"),
                                          ("1proc_2threads", 1, None, "1 process, 2 threads")):
                rate, count = cache_items_per_s(small, work, p, threads)
                out[f"cache_items_per_s_{key}"] = rate
                rows.append((f"latentbridge cache, {what}, {count:,} items (items/s)", f"{rate:.0f}"))
            out["cache_speedup_2proc"] = out["cache_items_per_s_2proc"] / out["cache_items_per_s_1proc"]
            out["cache_2proc_over_1proc_2threads"] = out["cache_items_per_s_2proc"] / out["cache_items_per_s_1proc_2threads"]
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    if "rss_ratio_200k_over_10k" in out:
        print(f"{('RSS ratio ' + f'{args.large:,} / {args.small:,}').ljust(width)}  {out['rss_ratio_200k_over_10k']:.3f}")
    if "cache_speedup_2proc" in out:
        print(f"{'cache speed-up, 2 processes over 1 (1 thread each)'.ljust(width)}  {out['cache_speedup_2proc']:.2f}")
    print(json.dumps({k: round(v, 4) for k, v in out.items()}))


if __name__ == "__main__":
    main()
