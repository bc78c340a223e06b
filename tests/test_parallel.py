"""FSDP2 over CPU processes (gloo, under torchrun), sharded checkpoints across process counts, and torch.compile.

The toy label -> point experiment trains its prior stage for 20 steps; every run below must log the losses of the
one-process run (to 1e-5), however many processes it used and wherever it resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentbridge.checkpoint import PAUSE_ENV, latest_checkpoint

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "toy_label_to_vector.yaml"
BIN = Path(sys.executable).parent
ARGS = ["--train.codec_steps=0", "--train.steps=20", "--train.log_every=1", "--train.batch_size=32",
        "--train.checkpoint_every=10", "--train.warmup_steps=5", "--train.parallel=fsdp"]

pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"}
    return {**out, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def command(run_dir: Path, processes: int, *extra: str) -> list[str]:
    launcher = [str(BIN / "latentbridge")] if processes == 1 else \
        [str(BIN / "torchrun"), "--nproc_per_node", str(processes), "-m", "latentbridge"]
    return [*launcher, "train", str(CONFIG), "--run-dir", str(run_dir), "--no-progress", *ARGS, *extra]


def run(run_dir: Path, processes: int, *extra: str) -> None:
    proc = subprocess.run(command(run_dir, processes, *extra), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(run_dir: Path, stage: str = "prior") -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in rows if r["stage"] == stage}


def assert_same_losses(got: dict[int, float], want: dict[int, float], tol: float = 1e-5) -> None:
    assert sorted(got) == sorted(want) == list(range(20))
    worst = max(abs(got[s] - want[s]) for s in want)
    assert worst <= tol, worst


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rewind(run_dir: Path, copy_to: Path, step: int = 10) -> Path:
    """A copy of `run_dir` as it was after checkpoint `step` (later checkpoints removed)."""
    shutil.copytree(run_dir, copy_to)
    ckpts = copy_to / "checkpoints"
    for p in ckpts.glob("step_*"):
        if int(p.name.split("_")[1]) > step:
            shutil.rmtree(p)
    (ckpts / "latest").write_text(f"step_{step:07d}\n")
    return copy_to


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same 20 steps trained with FSDP in one process and in two."""
    root = tmp_path_factory.mktemp("fsdp")
    out = {"one": root / "one", "two": root / "two"}
    run(out["one"], 1)
    run(out["two"], 2)
    return out


def test_two_fsdp_processes_log_the_losses_of_one(runs):
    assert_same_losses(losses(runs["two"]), losses(runs["one"]))
    for part in ("model", "ema"):  # the exported full weights and their EMA (kept sharded like the weights)
        a, b = (load_file(str(latest_checkpoint(runs[k] / "checkpoints") / f"{part}.safetensors")) for k in ("one", "two"))
        a = {k: v for k, v in a.items() if k != "n_averaged"}
        assert a.keys() <= b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-4, part  # Adam amplifies summation order


def test_fsdp_checkpoints_hold_one_shard_per_process_and_full_weights(runs, autoload_plugins):
    step = latest_checkpoint(runs["two"] / "checkpoints")
    assert sorted(p.name for p in (step / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not (step / "optimizer.pt").exists()  # the optimizer state is in the shards
    state = json.loads((step / "state.json").read_text())
    assert state["parallel"] == "fsdp" and state["processes"] == 2
    from torch.distributed.checkpoint import FileSystemReader

    chunks = FileSystemReader(str(step / "sharded")).read_metadata().state_dict_metadata
    qkv = [k for k in chunks if k.startswith("model.prior.blocks.0.") and k.endswith("weight")]
    assert qkv and all(len(chunks[k].chunks) == 2 for k in qkv)  # a block's weights: two shards, one per process
    full, one = (load_file(str(latest_checkpoint(runs[k] / "checkpoints") / "model.safetensors")) for k in ("two", "one"))
    assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in one.items()}  # whole tensors, not shards
    from latentbridge.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(runs["two"])  # sampling reads the exported full weights
    assert len(pipe.generate({"label": [0, 1]}, seed=0)) == 2


def test_saved_with_two_processes_resumed_with_one_is_the_uninterrupted_run(runs, tmp_path):
    run_dir = rewind(runs["two"], tmp_path / "run")
    run(run_dir, 1, "--resume")
    assert_same_losses(losses(run_dir), losses(runs["one"]))


def test_saved_with_one_process_resumed_with_two_is_the_uninterrupted_run(runs, tmp_path):
    run_dir = rewind(runs["one"], tmp_path / "run")
    run(run_dir, 2, "--resume")
    assert_same_losses(losses(run_dir), losses(runs["one"]))


def test_a_ddp_checkpoint_continues_under_fsdp_and_an_fsdp_one_under_ddp(runs, tmp_path):
    ddp = tmp_path / "ddp"
    run(ddp, 1, "--train.parallel=ddp")  # full-format checkpoints (optimizer.pt)
    assert (ddp / "checkpoints" / "step_0000010" / "optimizer.pt").is_file()
    assert_same_losses(losses(ddp), losses(runs["one"]))
    resumed = rewind(ddp, tmp_path / "ddp_then_fsdp")
    run(resumed, 2, "--resume")  # each process takes its shards of the full weights and optimizer state
    assert_same_losses(losses(resumed), losses(runs["one"]))
    back = rewind(runs["two"], tmp_path / "fsdp_then_ddp")
    run(back, 1, "--resume", "--train.parallel=ddp")
    assert_same_losses(losses(back), losses(runs["one"]))


def test_sigkill_mid_sharded_checkpoint_keeps_the_previous_one(runs, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(command(run_dir, 2), env={**env(), PAUSE_ENV: "30"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    ckpts = run_dir / "checkpoints"
    deadline = time.time() + 300
    # every process has written its shards of step 20; the first is still writing the full weights beside them
    while not (ckpts / ".tmp-step_0000020-sharded" / "sharded" / ".metadata").is_file():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, "timed out waiting for the sharded checkpoint of step 20"
        time.sleep(0.05)
    workers = descendants(proc.pid)
    for pid in [proc.pid, *workers]:  # torchrun and its workers at once, as a lost node would go
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(alive(pid) for pid in workers):
        time.sleep(0.05)
    assert latest_checkpoint(ckpts).name == "step_0000010"  # the unfinished step 20 is not trusted
    run(run_dir, 2, "--resume")
    assert not any(ckpts.glob(".tmp-*"))
    assert latest_checkpoint(ckpts).name == "step_0000020"
    assert_same_losses(losses(run_dir), losses(runs["one"]))


def test_a_trained_codec_is_sharded_too_and_trains_as_under_ddp(tmp_path):
    """The codec stage under FSDP (the codec one sharded unit, its loss/raw_encode gathering it) against DDP with
    the same two processes (each draws the codec's noise from the same global generator in both)."""
    extra = ["--train.codec_steps=12", "--train.steps=1", "--codecs.label.steps=0"]
    run(tmp_path / "fsdp", 2, *extra)
    run(tmp_path / "ddp", 2, *extra, "--train.parallel=ddp")
    got, want = (losses(tmp_path / k, "codec") for k in ("fsdp", "ddp"))
    assert sorted(got) == sorted(want) == list(range(12))
    assert max(abs(got[s] - want[s]) for s in want) <= 1e-6
    a, b = (load_file(str(tmp_path / k / "codecs" / "point" / "model.safetensors")) for k in ("fsdp", "ddp"))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_bf16_under_fsdp_computes_in_bf16_and_keeps_fp32_weights(runs, tmp_path):
    run(tmp_path / "bf16", 2, "--train.mixed_precision=bf16")
    got, want = losses(tmp_path / "bf16"), losses(runs["one"])
    assert sorted(got) == list(range(20))
    assert 0 < max(abs(got[s] - want[s]) / want[s] for s in want) < 0.05  # bf16 compute: close to fp32, not equal
    step = latest_checkpoint(tmp_path / "bf16" / "checkpoints")
    weights = load_file(str(step / "model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float32}  # sharded weights and the export stay fp32
