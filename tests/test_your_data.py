"""Your own data: the five generic data sets, streaming loading with exact resume, per-process slices, latent caches."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import datafiles as D
from latentbridge.data.stream import DataFileError, StreamReader, split_of
from latentbridge.errors import ConfigError
from latentbridge.plugins import build_registries, make_plugin_manager
from latentbridge.checkpoint import latest_checkpoint
from latentbridge.train.trainer import STEP_PAUSE_ENV

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
STREAM_TEXT = ROOT / "tests" / "configs" / "stream_text.yaml"


@pytest.fixture(scope="module")
def reg():
    return build_registries(make_plugin_manager(autoload=True))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path | str]:
    """One small data set of every layout, written from real data."""
    root = tmp_path_factory.mktemp("yourdata")
    return {
        "images_jsonl": D.write_imagefolder(root / "images_jsonl", 48),
        "images_csv": D.write_imagefolder(root / "images_csv", 24, "csv"),
        "images_sidecar": D.write_imagefolder(root / "images_sidecar", 24, "sidecar"),
        "audio": D.write_audiofolder(root / "audio", 16),
        "jsonl": D.write_jsonl(root / "corpus" / "glosses.jsonl", 160),
        "webdataset": D.write_webdataset(root / "wds", 48, 4),
        "hf": D.write_hf(root / "hf", 40),
    }


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"}
    return {**env, "HF_HUB_OFFLINE": "1"}


def losses(run_dir: Path, stage: str = "prior") -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in rows if r["stage"] == stage}


# --------------------------------------------------------------------------------------------------
# The data sets read what they say, split deterministically, and name bad files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["images_jsonl", "images_csv", "images_sidecar"])
def test_imagefolder_reads_images_and_captions_in_each_layout(files, reg, layout):
    ds = reg.datasets.create("imagefolder", {"path": str(files[layout]), "image_size": 16, "test_fraction": 0.25,
                                             "validation_fraction": 0.0})
    train_items, test_items = ds.items("train", None), ds.split("test")
    n = len(train_items["image"]) + len(test_items["image"])
    assert n == (48 if layout == "images_jsonl" else 24)
    images, names = D.emoji(48, 16)
    by_name = dict(zip(names, images))
    for im, caption in zip(train_items["image"], train_items["text"]):
        assert im.shape == (16, 16, 3) and im.dtype == np.uint8
        assert caption in by_name  # the caption written with this image
    assert len(set(names[:n])) == n and set(train_items["text"]).isdisjoint(test_items["text"])  # distinct captions


def test_hash_splits_are_deterministic_and_disjoint(files, reg):
    opts = {"path": str(files["jsonl"].parent), "validation_fraction": 0.1, "test_fraction": 0.1}
    a = reg.datasets.create("text", opts, seed=0)
    b = reg.datasets.create("text", opts, seed=5)  # the split does not depend on the run's seed
    splits = {s: a.items(s, None)["text"] for s in ("train", "validation", "test")}
    assert splits == {s: b.items(s, None)["text"] for s in splits}
    assert sum(len(v) for v in splits.values()) == 160
    assert not set(splits["test"]) & set(splits["train"])
    assert 5 <= len(splits["test"]) <= 30
    assert split_of("x", 0.0, 0.0) == "train"


def test_files_per_split(files, reg):
    ds = reg.datasets.create("webdataset", {"path": files["webdataset"], "fields": {"image": "png", "text": "txt"},
                                            "split_files": {"train": "shard-00000[0-2].tar", "test": "shard-000003.tar"}})
    assert [Path(s.path).name for s in ds.shards("test")] == ["shard-000003.tar"]
    assert len(ds.split("test")["text"]) == 12 and len(ds.items("train", None)["text"]) == 36


def test_audiofolder_and_hf_and_text_items(files, reg):
    audio = reg.datasets.create("audiofolder", {"path": str(files["audio"]), "sample_rate": 16000, "test_fraction": 0.0,
                                                         "validation_fraction": 0.0})
    items = audio.items("train", None)
    assert len(items["audio"]) == 16 and all(w.dtype == np.float32 and w.ndim == 1 and len(w) > 4000 for w in items["audio"])
    assert items["text"] == D.spoken_words(16)
    hf = reg.datasets.create("hf", {"path": str(files["hf"]), "fields": {"image": "image", "caption": "caption"},
                                    "test_fraction": 0.0, "validation_fraction": 0.0})
    rows = hf.items("train", None)
    images, names = D.emoji(40, 32)
    assert rows["caption"] == names and all(np.array_equal(x, y) for x, y in zip(rows["image"], images))
    text = reg.datasets.create("text", {"path": str(files["jsonl"]), "test_fraction": 0.0, "validation_fraction": 0.0})
    assert text.items("train", None)["text"] == D.glosses(160)


def test_hf_reads_parquet_files_through_datasets(tmp_path, reg):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = D.glosses(25)
    pq.write_table(pa.table({"caption": texts[:15]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"caption": texts[15:]}), tmp_path / "part-1.parquet")
    ds = reg.datasets.create("hf", {"path": str(tmp_path / "part-*.parquet"), "fields": {"text": "caption"}, "shard_size": 10,
                                    "validation_fraction": 0.0, "test_fraction": 0.0})
    assert ds.items("train", None)["text"] == texts and len(ds.shards("train")) == 3


def test_text_lines_paragraphs_csv_and_parquet(tmp_path, reg):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = D.glosses(30)
    (tmp_path / "lines.txt").write_text("\n".join(texts[:10]) + "\n\n")
    (tmp_path / "paras.txt").write_text("\n\n".join(f"{t[:20]}\n{t[20:]}" for t in texts[10:15]))
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "text"], *([i, t] for i, t in enumerate(texts[15:20]))])
    pq.write_table(pa.table({"text": texts[20:30]}), tmp_path / "rows.parquet", row_group_size=4)
    no_split = {"test_fraction": 0.0, "validation_fraction": 0.0}
    got = lambda **o: reg.datasets.create("text", {**no_split, **o}).items("train", None)["text"]  # noqa: E731
    assert got(path=str(tmp_path / "lines.txt")) == texts[:10]
    assert got(path=str(tmp_path / "paras.txt"), unit="paragraph") == [" ".join(f"{t[:20]}\n{t[20:]}".split()) for t in texts[10:15]]
    assert got(path=str(tmp_path / "rows.csv")) == texts[15:20]
    assert got(path=str(tmp_path / "rows.parquet")) == texts[20:30]
    assert len(reg.datasets.create("text", {**no_split, "path": str(tmp_path / "rows.parquet")}).shards("train")) == 3


def _corrupt(kind: str, files: dict, tmp_path: Path) -> tuple[str, dict, str]:
    """A copy of one data set with one bad file; (data set, options, the bad path's name)."""
    import shutil

    if kind in ("imagefolder", "audiofolder"):
        src = files["images_jsonl" if kind == "imagefolder" else "audio"]
        dst = tmp_path / kind
        shutil.copytree(src, dst)
        bad = sorted(p for p in dst.iterdir() if p.suffix in (".png", ".wav"))[3]
        bad.write_bytes(b"\x00not a real file")
        return kind, {"path": str(dst)}, bad.name
    if kind == "text":
        dst = tmp_path / "corpus.jsonl"
        lines = files["jsonl"].read_bytes().splitlines(keepends=True)
        lines[5] = b'{"text": "\xff\xfe undecodable"}\n'
        dst.write_bytes(b"".join(lines))
        return kind, {"path": str(dst)}, "corpus.jsonl:6"
    if kind == "webdataset":
        import webdataset as wds

        dst = tmp_path / "wds"
        dst.mkdir()
        for p in Path(files["webdataset"].split("shard-{")[0]).glob("*.tar"):
            shutil.copy(p, dst / p.name)
        with wds.TarWriter(str(dst / "shard-000004.tar")) as sink:
            sink.write({"__key__": "broken", "png": b"not a png", "txt": "broken"})
        return kind, {"path": str(dst), "fields": {"image": "png", "text": "txt"}}, "sample broken"
    import datasets

    dst = tmp_path / "hf"
    ds = datasets.Dataset.from_dict({"image": [{"bytes": b"not an image", "path": None}], "caption": ["broken"]},
                                    features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}))
    ds = datasets.concatenate_datasets([datasets.load_from_disk(str(files["hf"])), ds])
    ds.save_to_disk(str(dst))
    return kind, {"path": str(dst), "fields": {"image": "image", "text": "caption"}}, "row 40"


@pytest.mark.parametrize("kind", ["imagefolder", "audiofolder", "text", "webdataset", "hf"])
def test_a_bad_file_is_named_and_skipped_or_fatal(files, reg, tmp_path, kind):
    name, opts, where = _corrupt(kind, files, tmp_path)
    opts = {**opts, "test_fraction": 0.0, "validation_fraction": 0.0, "num_workers": 2, "shard_size": 8}
    if kind == "webdataset":
        opts.pop("shard_size")
    ds = reg.datasets.create(name, {**opts, "on_error": "fail"})
    reader = StreamReader(ds, "train", 4, seed=0, rank=0, world=1)
    with pytest.raises(DataFileError, match=where.replace("[", r"\[")) as err:
        for _ in range(40):
            reader.next()
    assert "on_error=skip" in str(err.value) and "Traceback" not in str(err.value)
    reader.close()
    ds = reg.datasets.create(name, {**opts, "on_error": "skip"})
    reader = StreamReader(ds, "train", 4, seed=0, rank=0, world=1)
    with pytest.warns(UserWarning, match=where.replace("[", r"\[")):
        for _ in range(40):
            reader.next()
    assert reader.skipped >= 1
    reader.close()


def test_bad_options_get_clear_errors(files, reg, tmp_path):
    with pytest.raises(ConfigError, match="data.config.path"):
        reg.datasets.create("imagefolder", {})
    with pytest.raises(ConfigError, match="not a folder"):
        reg.datasets.create("imagefolder", {"path": str(tmp_path / "nowhere")})
    with pytest.raises(ConfigError, match="no image files"):
        reg.datasets.create("imagefolder", {"path": str(tmp_path)}).shards("train")
    with pytest.raises(ConfigError, match="leave part of the data"):
        reg.datasets.create("text", {"path": str(files["jsonl"]), "test_fraction": 0.6, "validation_fraction": 0.5})
    with pytest.raises(ConfigError, match="has columns"):
        reg.datasets.create("hf", {"path": str(files["hf"]), "fields": {"text": "title"}})
    with pytest.raises(ConfigError, match="no .tar shards"):
        reg.datasets.create("webdataset", {"path": str(tmp_path / "x-{0..3}.tar")})


# --------------------------------------------------------------------------------------------------
# Streams: each process and worker its own shards; the position survives a resume
# --------------------------------------------------------------------------------------------------


def test_processes_and_workers_read_disjoint_shards_that_cover_an_epoch(files, reg):
    ds = reg.datasets.create("text", {"path": str(files["jsonl"]), "shard_size": 8, "num_workers": 2, "shuffle_buffer": 4,
                                      "test_fraction": 0.0, "validation_fraction": 0.0})
    epoch0 = []
    for rank in range(2):
        reader = StreamReader(ds, "train", 4, seed=3, rank=rank, world=2)
        got = [t for _ in range(20) for t in reader.next()["text"]]  # 160 items / 2 processes = 80 each: one epoch
        epoch0.append(got)
        reader.close()
    assert not set(epoch0[0]) & set(epoch0[1])
    assert sorted(epoch0[0] + epoch0[1]) == sorted(D.glosses(160))


def test_a_resumed_stream_continues_with_the_next_batch(files, reg):
    ds = reg.datasets.create("imagefolder", {"path": str(files["images_jsonl"]), "shard_size": 5, "num_workers": 2,
                                             "shuffle_buffer": 6, "test_fraction": 0.0, "validation_fraction": 0.0})
    reader = StreamReader(ds, "train", 3, seed=1, rank=0, world=1)
    for _ in range(23):  # past the end of the first epoch (48 items)
        reader.next()
    state = json.loads(json.dumps(reader.state_dict()))  # through JSON, as in a checkpoint
    want = [reader.next()["text"] for _ in range(12)]
    reader.close()
    again = StreamReader(ds, "train", 3, seed=1, rank=0, world=1, state=state)
    assert [again.next()["text"] for _ in range(12)] == want
    again.close()


def test_memory_of_a_stream_does_not_hold_the_data(files, reg):
    ds = reg.datasets.create("imagefolder", {"path": str(files["images_jsonl"]), "shard_size": 4})
    import pickle

    assert len(pickle.dumps(ds)) < 4096  # what each worker gets: offsets of the metadata, no items


def _start(config: Path, run_dir: Path, *extra: str, processes: int = 1, pause: float = 0.0) -> subprocess.Popen:
    launcher = [str(BIN / "latentbridge")] if processes == 1 else [str(BIN / "torchrun"), "--nproc_per_node", str(processes),
                                                                      "--master_port", str(29500 + os.getpid() % 400), "-m", "latentbridge"]
    env = {**cli_env(), **({STEP_PAUSE_ENV: str(pause)} if pause else {})}
    return subprocess.Popen([*launcher, "train", str(config), "--run-dir", str(run_dir), "--no-progress", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _processes_of(run_dir: Path) -> list[int]:
    """Pids whose command line names `run_dir` (a training, its torchrun workers and their forked loader workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if str(run_dir).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def kill_every_process_of(run_dir: Path, timeout: float = 60.0) -> None:
    """SIGKILL every process of a training into `run_dir` and wait until all are gone. A process group is not enough:
    torchrun starts each worker in a session of its own, and a worker left running keeps the run directory's lock."""
    deadline = time.time() + timeout
    while pids := _processes_of(run_dir):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert time.time() < deadline, f"processes of {run_dir} survive SIGKILL: {pids}"
        time.sleep(0.05)


def _logged(run_dir: Path) -> int:
    path, last = run_dir / "metrics.jsonl", -1
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            last = max(last, json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            continue
    return last


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigkill_then_resume_with_streaming_data_reproduces_the_losses(files, tmp_path, processes):
    from test_trainer import assert_same_checkpoint

    args = [f"--data.config.path={files['jsonl']}"]
    whole = _start(STREAM_TEXT, tmp_path / "whole", *args, processes=processes)
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]
    run = tmp_path / "killed"
    proc = _start(STREAM_TEXT, run, *args, processes=processes, pause=0.3)
    deadline = time.time() + 300
    while _logged(run) < 24:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "timed out waiting for step 24"
        time.sleep(0.05)
    kill_every_process_of(run)  # the launcher, the training processes (torchrun starts each in its own session), workers
    proc.wait()
    assert latest_checkpoint(run / "checkpoints").name == "step_0000020"
    state = json.loads((run / "checkpoints" / "step_0000020" / "state.json").read_text())
    assert len(state["data"]) == processes and all(d["text/prior"]["batches"] == 20 for d in state["data"])
    resumed = _start(STREAM_TEXT, run, *args, "--resume", processes=processes)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    got, want = losses(run), losses(tmp_path / "whole")
    assert sorted(got) == sorted(want) == list(range(30))
    assert max(abs(got[s] - want[s]) for s in want) <= 1e-6
    assert_same_checkpoint(run, tmp_path / "whole")


@pytest.mark.slow
def test_each_process_encodes_only_its_slice(tmp_path):
    """Two processes compute the losses of one, while each encodes half of every step's items (counted)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "count_encodes.py"), str(tmp_path)], env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["one"] == [8 * 6]  # 6 steps of 8 items
    assert counts["two"] == [4 * 6, 4 * 6]
    assert counts["max_rel_diff"] <= 1e-5


# --------------------------------------------------------------------------------------------------
# Train, sample and evaluate on each kind
# --------------------------------------------------------------------------------------------------

TINY_TEXT = {"width": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "block_size": 4, "max_tokens": 24}
TINY_IMAGE = {"preset": "tiny", "image_size": 16}


def _experiment(kind: str, files: dict) -> dict:
    text = {"codec": "text-vae", "config": TINY_TEXT}
    image = {"codec": "image-vae", "config": TINY_IMAGE}
    common = {"test_fraction": 0.2, "validation_fraction": 0.0, "num_workers": 1}
    if kind == "text":
        return {"codecs": {"text": text}, "task": {"target": "text"},
                "data": {"name": "text", "config": {"path": str(files["jsonl"]), **common}}}
    if kind == "audiofolder":
        return {"codecs": {"text": text, "audio": {"codec": "audio-vae", "config": {"max_seconds": 1.0}}},
                "task": {"cond": ["text"], "target": "audio"},
                "data": {"name": "audiofolder", "config": {"path": str(files["audio"]), **common}}}
    data = {"imagefolder": {"name": "imagefolder", "config": {"path": str(files["images_jsonl"]), "image_size": 16, **common}},
            "webdataset": {"name": "webdataset", "config": {"path": files["webdataset"], "image_size": 16,
                                                             "fields": {"image": "png", "text": "txt"}, **common}},
            "hf": {"name": "hf", "config": {"path": str(files["hf"]), "image_size": 16,
                                            "fields": {"image": "image", "text": "caption"}, **common}}}[kind]
    return {"codecs": {"text": text, "image": image}, "task": {"cond": ["text"], "target": "image"}, "data": data}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["imagefolder", "audiofolder", "text", "webdataset", "hf"])
def test_train_sample_and_evaluate_on_each_kind(files, tmp_path, kind):
    import yaml

    cfg = {"name": f"your-{kind}", "seed": 0, **_experiment(kind, files), "prior": {"preset": "tiny"},
           "train": {"steps": 4, "codec_steps": 2, "batch_size": 4, "row_length": 64, "log_every": 1, "checkpoint_every": 4,
                     "warmup_steps": 1},
           "sampling": {"steps": 2}, "eval": {"samples": 4, "guidance_scales": [1.0]}}
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    for cmd in (["train", str(config), "--run-dir", str(run), "--no-progress"], ["eval", str(run), "--no-progress"],
                ["sample", str(run), "--samples", "2", "--out", str(tmp_path / "sampled"), "--no-progress"]):
        proc = subprocess.run([str(BIN / "latentbridge"), *cmd], env=cli_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "report.json").read_text())
    flat = json.dumps(report)
    assert "prior-fit" in flat or "prior_fit" in flat
    target = cfg["task"]["target"]
    written = [p for p in run.rglob("*") if p.is_file() and ("samples" in p.parts or "eval" in p.parts)]
    suffix = {"image": ".png", "audio": ".wav", "text": ".txt"}[target]
    for folder in ("g1", "reference"):  # generated items beside the held-out items of the same conditions
        assert any(p.suffix == suffix and folder in p.parts for p in written), sorted(str(p.relative_to(run)) for p in written)[:20]
    fit = report["tasks"] if "tasks" in report else report
    assert "with condition" in json.dumps(fit) and "reconstruction" in flat
    assert any(p.suffix == suffix for p in (tmp_path / "sampled").rglob("*"))


@pytest.mark.slow
def test_a_mixture_of_streamed_data_sets_and_a_joint_stage(files, tmp_path):
    import yaml

    text = {"codec": "text-vae", "config": TINY_TEXT}
    common = {"validation_fraction": 0.0, "num_workers": 1}
    mixture = {"name": "mixture", "seed": 0, "codecs": {"text": text, "image": {"codec": "image-vae", "config": TINY_IMAGE}},
               "tasks": {"caption_to_image": {"cond": ["text"], "target": "image", "weight": 2, "data": "imagefolder",
                                              "data_config": {"path": str(files["images_jsonl"]), "image_size": 16, **common}},
                         "continuation": {"target": "text", "weight": 1, "data": "text",
                                          "data_config": {"path": str(files["jsonl"]), **common}}},
               "prior": {"preset": "tiny"},
               "train": {"steps": 3, "codec_steps": 2, "batch_size": 6, "row_length": 64, "log_every": 1, "checkpoint_every": 3}}
    joint = {"name": "joint", "seed": 0, "codecs": {"text": text}, "task": {"target": "text"},
             "data": {"name": "text", "config": {"path": str(files["jsonl"]), **common}}, "prior": {"preset": "tiny"},
             "train": {"stage": "joint", "codec_role": "text", "steps": 3, "codec_steps": 2, "batch_size": 4, "row_length": 64,
                       "log_every": 1, "checkpoint_every": 3}}
    for cfg in (mixture, joint):
        config = tmp_path / f"{cfg['name']}.yaml"
        config.write_text(yaml.safe_dump(cfg))
        proc = subprocess.run([str(BIN / "latentbridge"), "train", str(config), "--run-dir", str(tmp_path / cfg["name"]),
                               "--no-progress"], env=cli_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sorted(losses(tmp_path / cfg["name"], cfg["train"].get("stage", "prior"))) == [0, 1, 2]


# --------------------------------------------------------------------------------------------------
# The sharded latent cache
# --------------------------------------------------------------------------------------------------


def _cache_cmd(config: Path, *extra: str, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = [str(BIN / "latentbridge")] if processes == 1 else [str(BIN / "torchrun"), "--nproc_per_node", str(processes),
                                                                      "--master_port", str(29900 + os.getpid() % 90), "-m", "latentbridge"]
    return subprocess.run([*launcher, "cache", str(config), "--no-progress", *extra], env=cli_env(), capture_output=True,
                          text=True, timeout=600)


def _shard_tensors(directory: Path) -> dict[str, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {p.name: load_file(str(p)) for p in sorted(directory.glob("shard_*.safetensors"))}


@pytest.mark.slow
def test_latent_cache_is_split_across_processes_resumable_and_trains_like_the_stream(files, reg, tmp_path):
    codec_dir = tmp_path / "codec"
    reg.codecs.create("text-vae", {"width": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "block_size": 4,
                                   "max_tokens": 32, "tokens_per_latent": 1}).save_pretrained(codec_dir)
    args = [f"--data.config.path={files['jsonl']}", f"--codecs.text.pretrained={codec_dir}",
            "--codecs.text.config.tokens_per_latent=1"]  # one token per latent: no augmentation, so latents can be cached
    one = _cache_cmd(STREAM_TEXT, *args, f"--train.latent_cache_dir={tmp_path / 'c1'}")
    assert one.returncode == 0, one.stderr[-3000:]
    (d1,) = (tmp_path / "c1").iterdir()
    meta = json.loads((d1 / "meta.json").read_text())
    assert meta["count"] == len(reg.datasets.create("text", {"path": str(files["jsonl"]), "test_fraction": 0.1,
                                                             "validation_fraction": 0.0}).items("train", None)["text"])
    assert len(meta["counts"]) == 10 and f"{meta['count']} items in 10 shards" in one.stdout
    two = _cache_cmd(STREAM_TEXT, *args, f"--train.latent_cache_dir={tmp_path / 'c2'}", processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    (d2,) = (tmp_path / "c2").iterdir()
    assert d2.name == d1.name and json.loads((d2 / "meta.json").read_text()) == meta
    a, b = _shard_tensors(d1), _shard_tensors(d2)
    assert a.keys() == b.keys() and all(torch.equal(a[k][t], b[k][t]) for k in a for t in a[k])
    # a killed run: the meta file and three shards never written; the rerun writes only those
    (d2 / "meta.json").unlink()
    for k in (1, 4, 7):
        (d2 / f"shard_{k:05d}.safetensors").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in d2.glob("shard_*")}
    again = _cache_cmd(STREAM_TEXT, *args, f"--train.latent_cache_dir={tmp_path / 'c2'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in d2.glob("shard_*") if p.name in kept} == kept
    c = _shard_tensors(d2)
    assert all(torch.equal(a[k][t], c[k][t]) for k in a for t in a[k])
    # training streams the cached latents in the order it streams the items: the same losses
    cached_files = {p.name: p.stat().st_mtime_ns for p in d1.glob("shard_*")}
    train_args = [*args, "--train.steps=6", "--train.checkpoint_every=6"]
    plain = _start(STREAM_TEXT, tmp_path / "plain", *train_args)
    cached = _start(STREAM_TEXT, tmp_path / "cached", *train_args, "--train.cache_latents=true",
                    f"--train.latent_cache_dir={tmp_path / 'c1'}")
    for proc in (plain, cached):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    x, y = losses(tmp_path / "plain"), losses(tmp_path / "cached")
    assert sorted(x) == sorted(y) == list(range(6))
    assert max(abs(x[s] - y[s]) / abs(x[s]) for s in x) <= 1e-4
    assert {p.name: p.stat().st_mtime_ns for p in d1.glob("shard_*")} == cached_files  # read by training, not rewritten


def test_cache_refuses_codecs_without_weights(files, tmp_path):
    proc = _cache_cmd(STREAM_TEXT, f"--data.config.path={files['jsonl']}", f"--train.latent_cache_dir={tmp_path}")
    assert proc.returncode == 2 and "has no trained weights" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------------
# The public conformance kit passes on each generic data set
# --------------------------------------------------------------------------------------------------

from latentbridge.data.generic import AudioFolder, HFDataset, ImageFolder, TextFiles, WebDatasetShards  # noqa: E402
from latentbridge.testing import DatasetConformance  # noqa: E402


class _OnFiles(DatasetConformance):
    key: str = ""
    options: dict = {}

    @pytest.fixture(autouse=True)
    def _files(self, files):
        self.dataset_config = {"path": str(files[self.key]), "num_workers": 0, "test_fraction": 0.3, **self.options}


class TestImageFolderConformance(_OnFiles):
    dataset_class, key = ImageFolder, "images_jsonl"


class TestAudioFolderConformance(_OnFiles):
    dataset_class, key = AudioFolder, "audio"


class TestTextConformance(_OnFiles):
    dataset_class, key = TextFiles, "jsonl"


class TestHFConformance(_OnFiles):
    dataset_class, key, options = HFDataset, "hf", {"fields": {"image": "image", "text": "caption"}}


class TestWebDatasetConformance(_OnFiles):
    dataset_class, key, options = WebDatasetShards, "webdataset", {"fields": {"image": "png", "text": "txt"}}
