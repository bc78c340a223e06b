"""The trainer: exact resume after SIGKILL (also mid-checkpoint), two processes, stages, bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentbridge.build import resolve_codec_configs
from latentbridge.config import load_config
from latentbridge.errors import CheckpointError, ConfigError
from latentbridge.train.experiment import cache, train
from latentbridge.plugins import build_registries, make_plugin_manager
from latentbridge.train.metrics import read_metrics_file
from latentbridge.checkpoint import PAUSE_ENV, latest_checkpoint, load_checkpoint
from latentbridge.train.trainer import STEP_PAUSE_ENV, Trainer, TrainingError, ema_avg_fn
from latentbridge.typedconfig import dump_yaml

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "configs" / "toy_label_to_vector.yaml"
BIN = Path(sys.executable).parent
SMALL = ["--train.steps=30", "--train.log_every=1", "--train.checkpoint_every=10", "--train.codec_steps=20",
         "--train.batch_size=32", "--train.warmup_steps=5", "--eval.samples=64"]


@pytest.fixture(scope="module")
def reg():
    return build_registries(make_plugin_manager(autoload=True))


def losses(run_dir: Path, stage: str = "prior") -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in rows if r["stage"] == stage}


def logged_steps(run_dir: Path, stage: str = "prior", role: str | None = None) -> int:
    """The last step of `stage` (and codec `role`) a running training has logged (-1: none yet); a line still being
    written is skipped (read_metrics_file)."""
    steps = [r["step"] for r in read_metrics_file(run_dir / "metrics.jsonl") if (r.get("stage"), r.get("role")) == (stage, role)]
    return max(steps, default=-1)


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"}
    return {**env, "HF_HUB_OFFLINE": "1"}


def start_training(run_dir: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [str(BIN / "latentbridge"), "train", str(CONFIG), "--run-dir", str(run_dir), "--no-progress", *SMALL, *extra]
    return subprocess.Popen(cmd, env={**cli_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before the kill point: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the kill point")
        time.sleep(0.05)


def tensors(tree) -> dict[str, torch.Tensor]:
    """Every tensor of a nested state (dicts and lists), keyed by its path."""
    if isinstance(tree, torch.Tensor):
        return {"": tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else []
    return {f"{k}/{sub}": t for k, v in items for sub, t in tensors(v).items()}


def assert_same_checkpoint(run_a: Path, run_b: Path, atol: float = 0.0) -> None:
    """Model, EMA and optimizer state equal: bit for bit (atol 0), or within atol (other summation orders)."""
    a, b = (load_checkpoint(latest_checkpoint(r / "checkpoints")) for r in (run_a, run_b))
    for part in ("model", "ema", "optimizer"):
        ta, tb = tensors(a[part]), tensors(b[part])
        assert ta.keys() == tb.keys() and ta, part
        same = (lambda x, y: torch.equal(x, y)) if atol == 0 else (lambda x, y: torch.allclose(x.double(), y.double(), atol=atol, rtol=0))
        different = [k for k in ta if not same(ta[k], tb[k])]
        assert not different, f"{part}: {different[:5]}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, reg) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(load_config(CONFIG, SMALL), run_dir, reg=reg, progress=False)
    return run_dir


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_logs_the_same_losses(tmp_path, uninterrupted, reg):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir, env={STEP_PAUSE_ENV: "0.2"})  # 6 steps (over a second) between the kill point and step 30
    wait_for(lambda: logged_steps(run_dir) >= 24, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_0000020"
    train(load_config(CONFIG, SMALL), run_dir, reg=reg, resume=True, progress=False)
    got, want = losses(run_dir), losses(uninterrupted)
    assert sorted(got) == sorted(want) == list(range(30))
    assert max(abs(got[s] - want[s]) for s in want) <= 1e-6
    assert_same_checkpoint(run_dir, uninterrupted)  # model, EMA and optimizer bit for bit, not only the logged losses


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, uninterrupted, reg):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir, env={PAUSE_ENV: "3"})
    ckpts = run_dir / "checkpoints"
    wait_for(lambda: any(ckpts.glob(".tmp-step_0000020-*")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(ckpts).name == "step_0000010"  # the half-written step 20 is not trusted
    train(load_config(CONFIG, SMALL), run_dir, reg=reg, resume=True, progress=False)
    assert not any(ckpts.glob(".tmp-*"))
    got, want = losses(run_dir), losses(uninterrupted)
    assert max(abs(got[s] - want[s]) for s in want) <= 1e-6
    assert_same_checkpoint(run_dir, uninterrupted)
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_0000010", "step_0000020", "step_0000030"]


def stage_losses(run_dir: Path) -> dict[tuple, float]:
    """Every logged loss of every stage: (stage, role, step) -> loss."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {(r["stage"], r.get("role"), r["step"]): r["loss"] for r in rows}


def assert_same_run(run_dir: Path, uninterrupted: Path) -> None:
    got, want = stage_losses(run_dir), stage_losses(uninterrupted)
    assert sorted(got) == sorted(want)
    assert max(abs(got[k] - want[k]) for k in want) <= 1e-6
    assert_same_checkpoint(run_dir, uninterrupted)
    for role in ("label", "point"):  # the codecs the pre-stages finished, bit for bit
        a, b = (load_file(str(r / "codecs" / role / "model.safetensors")) for r in (run_dir, uninterrupted))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), role


# kill points drawn from a seeded generator: (stage, role, the logged step of that stage after which the kill lands)
_draw = random.Random(19)
KILL_POINTS = [("codec", "label", _draw.randint(11, 18)), ("codec", "point", _draw.randint(11, 18)),
               ("prior", None, _draw.randint(11, 27))]


@pytest.mark.slow
@pytest.mark.parametrize("stage,role,at", KILL_POINTS)
def test_sigkill_in_any_stage_then_resume_is_the_uninterrupted_run(tmp_path, uninterrupted, reg, monkeypatch, stage, role, at):
    """Killed in a codec pre-stage (which now checkpoints into stages/<role>/) or in the prior stage: --resume keeps
    the finished stages, continues the interrupted one from its checkpoint, and ends where the uninterrupted run did."""
    run_dir = tmp_path / "run"
    proc = start_training(run_dir, env={STEP_PAUSE_ENV: "0.1"})
    wait_for(lambda: logged_steps(run_dir, stage, role) >= at, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    root = run_dir / ("checkpoints" if stage == "prior" else f"stages/{role}/checkpoints")
    resumed_at = load_checkpoint(latest_checkpoint(root))["state"]["step"]
    assert resumed_at >= 10 and not (run_dir / "codecs" / (role or "none") / "codec.json").exists()
    starts = []
    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self: (starts.append((self.stage, self._row_role, self.start_step)), fit(self))[1])
    train(load_config(CONFIG, SMALL), run_dir, reg=reg, resume=True, progress=False)
    assert starts[0] == (stage, role, resumed_at)  # the interrupted stage continues from its checkpoint; finished ones are kept
    assert_same_run(run_dir, uninterrupted)
    assert not (run_dir / "stages").exists() or not any((run_dir / "stages").iterdir())  # finished pre-stages leave no checkpoints


@pytest.mark.slow
@pytest.mark.parametrize("sig,stage,role", [(signal.SIGTERM, "prior", None), (signal.SIGINT, "codec", "point")])
def test_a_stop_signal_checkpoints_the_step_and_resume_is_the_uninterrupted_run(tmp_path, uninterrupted, reg, sig, stage, role):
    run_dir = tmp_path / "run"
    proc = start_training(run_dir, env={STEP_PAUSE_ENV: "0.15"})
    wait_for(lambda: logged_steps(run_dir, stage, role) >= 12, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name} after step " in lines[0], err[-2000:]
    step = int(lines[0].split("after step ")[1].split()[0])
    root = run_dir / ("checkpoints" if stage == "prior" else f"stages/{role}/checkpoints")
    assert latest_checkpoint(root).name == f"step_{step:07d}" and step % 10  # written for the signal, not the schedule
    assert f"checkpoint {root / f'step_{step:07d}'} written" in lines[0]
    train(load_config(CONFIG, SMALL), run_dir, reg=reg, resume=True, progress=False)
    assert_same_run(run_dir, uninterrupted)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (needs root, as in CI); skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_disk_stops_cleanly_and_the_run_resumes_once_space_returns(small_disk, uninterrupted, reg):
    run_dir = small_disk / "run"
    proc = start_training(run_dir, env={STEP_PAUSE_ENV: "0.1"})
    wait_for(lambda: logged_steps(run_dir, "prior", None) >= 12, proc)
    filler = fill(small_disk)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no space left on the device" in lines[0] and "MiB free" in lines[0] and str(run_dir) in lines[0], err
    assert "internal error" not in err
    last = latest_checkpoint(run_dir / "checkpoints")
    assert last is not None and load_checkpoint(last)["state"]["step"] % 10 == 0  # the last good checkpoint is intact
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))  # the partial write was removed
    filler.unlink()
    train(load_config(CONFIG, SMALL), run_dir, reg=reg, resume=True, progress=False)
    assert_same_run(run_dir, uninterrupted)


@pytest.mark.slow
def test_a_read_only_run_directory_is_one_line(tmp_path, small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    proc = start_training(small_disk / "run")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "read-only filesystem" in err and str(small_disk / "run") in err


def train_one_and_two_processes(config: Path, tmp_path: Path, *overrides: str) -> tuple[dict[int, float], dict[int, float]]:
    """Train `config` in one process (tmp_path/one) and in two under torchrun (tmp_path/two); the logged prior losses."""
    for name, launcher in (("one", [str(BIN / "latentbridge")]),
                           ("two", [str(BIN / "torchrun"), "--nproc_per_node", "2", "-m", "latentbridge"])):
        proc = subprocess.run([*launcher, "train", str(config), "--run-dir", str(tmp_path / name), "--no-progress", *overrides],
                              env=cli_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return losses(tmp_path / "one"), losses(tmp_path / "two")


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    a, b = train_one_and_two_processes(CONFIG, tmp_path, "--train.codec_steps=0", "--train.steps=8", "--train.log_every=1",
                                       "--train.batch_size=32")
    assert sorted(a) == sorted(b) == list(range(8))
    assert max(abs(a[s] - b[s]) / abs(a[s]) for s in a) <= 1e-5  # same global batch, summed in another order


@pytest.mark.slow
def test_two_processes_weight_variable_length_texts_as_one(tmp_path):
    """Real texts of different lengths: each process holds another number of tokens. The loss (and so the update)
    must be the whole batch's per-token mean, not the mean of the processes' means."""
    a, b = train_one_and_two_processes(ROOT / "tests" / "configs" / "text_two_processes.yaml", tmp_path)
    assert sorted(a) == sorted(b) == list(range(6))
    assert max(abs(a[s] - b[s]) / abs(a[s]) for s in a) <= 1e-5
    assert_same_checkpoint(tmp_path / "one", tmp_path / "two", atol=1e-5)  # the same updates, so the same weights


def test_checkpoint_layout_and_retention(uninterrupted):
    ckpts = uninterrupted / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_0000030"
    names = sorted(p.name for p in ckpts.glob("step_*"))
    assert names == ["step_0000010", "step_0000020", "step_0000030"]  # keep_checkpoints: 3
    step = ckpts / "step_0000030"
    assert {p.name for p in step.iterdir()} == {"model.safetensors", "ema.safetensors", "optimizer.pt", "rng.safetensors",
                                                "state.json", "config.yaml"}
    state = json.loads((step / "state.json").read_text())
    assert state["step"] == 30 and state["stage"] == "prior" and state["experiment"] == "toy-label-to-vector"
    assert state["codecs"]["label"]["codec"] == "label" and state["codecs"]["label"]["provider"] == "latentbridge-toy 0.2.0"
    assert len(state["codecs"]["point"]["fingerprint"]) == 16
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "codecs/label/codec.json"):
        assert (uninterrupted / name).exists(), name
    rows = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert all({"step", "loss", "stage"} <= set(r) for r in rows)
    codec_rows = {r["role"]: r for r in rows if r["stage"] == "codec"}  # both codecs' pre-stages, each row naming its codec
    assert set(codec_rows) == {"label", "point"}
    assert {"reconstruction", "kl"} <= set(codec_rows["point"]) and "cross_entropy" in codec_rows["label"]  # named terms logged


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_corrupt_checkpoint_is_named(tmp_path, uninterrupted, reg):
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    weights = run_dir / "checkpoints" / "step_0000030" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"step_0000030 is corrupt or truncated.*older checkpoint exists \(step_0000020\)"):
        train(load_config(CONFIG, SMALL + ["--train.steps=40"]), run_dir, reg=reg, resume=True, progress=False)


def test_resume_refuses_a_changed_config_naming_the_keys(tmp_path, uninterrupted, reg):
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    before = _stamps(run_dir)
    with pytest.raises(ConfigError, match=r"--resume: the config differs from the run's .*config.yaml in prior.depth: None -> 3; "
                                          r"train.lr: 0.002 -> 0.5\. Resume with the run's config"):
        train(load_config(CONFIG, SMALL + ["--prior.depth=3", "--train.lr=0.5"]), run_dir, reg=reg, resume=True, progress=False)
    assert _stamps(run_dir) == before  # refused before anything was written


def test_resume_refuses_an_architecture_change_against_the_checkpoint(tmp_path, uninterrupted, reg):
    """The checkpoint's own config is checked too (a config.yaml edited by hand does not get past it)."""
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    cfg = load_config(CONFIG, SMALL + ["--prior.depth=3"])
    resolve_codec_configs(cfg, reg.codecs)  # as train() writes it
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    with pytest.raises(CheckpointError, match=r"changes the architecture \(prior: checkpoint .*'depth': None.* vs now .*'depth': 3"):
        train(cfg, run_dir, reg=reg, resume=True, progress=False)


def test_resume_may_train_longer_and_log_differently(tmp_path, uninterrupted, reg):
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    train(load_config(CONFIG, SMALL + ["--train.steps=32", "--train.log_every=1", "--eval.samples=7"]), run_dir, reg=reg,
          resume=True, progress=False)
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_0000032"


def test_resume_refuses_other_codecs(tmp_path, uninterrupted, reg):
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    codec = reg.codecs.load(run_dir / "codecs" / "point")
    codec.stats.set(codec.stats.shift + 1.0, codec.stats.scale)
    codec.save_pretrained(run_dir / "codecs" / "point")
    with pytest.raises(CheckpointError, match=r"its codecs differ from the ones loaded now \(point: checkpoint .* vs now .*\)\. Resume with"):
        train(load_config(CONFIG, SMALL), run_dir, reg=reg, resume=True, progress=False)


def test_existing_run_is_never_overwritten(tmp_path, uninterrupted, reg):
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoints, trained codecs \(label, point\)\)\. Pass --resume"):
        train(load_config(CONFIG, SMALL), run_dir, reg=reg, progress=False)


def _stamps(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def test_a_new_run_never_lands_on_trained_codecs(tmp_path, uninterrupted, reg):
    """Killed after its codec pre-stage: no checkpoint yet, but trained codecs. A second training without --resume
    (another seed) used to retrain and overwrite codecs/ before it looked; now it is refused and nothing changes."""
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    shutil.rmtree(run_dir / "checkpoints")
    before = _stamps(run_dir)
    with pytest.raises(ConfigError, match=r"already holds a run \(trained codecs \(label, point\)\)\. Pass --resume.*nothing was written"):
        train(load_config(CONFIG, SMALL + ["--seed=1"]), run_dir, reg=reg, progress=False)
    assert _stamps(run_dir) == before


def test_resume_after_the_codec_stages_keeps_them_and_trains_the_prior(tmp_path, uninterrupted, reg, monkeypatch):
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    shutil.rmtree(run_dir / "checkpoints")
    codecs = {k: v for k, v in _stamps(run_dir).items() if k.startswith("codecs/")}
    stages = []
    fit = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", lambda self: (stages.append(self.stage), fit(self))[1])
    train(load_config(CONFIG, SMALL), run_dir, reg=reg, resume=True, progress=False)
    assert stages == ["prior"]  # no codec pre-stage again
    assert {k: v for k, v in _stamps(run_dir).items() if k.startswith("codecs/")} == codecs
    got, want = losses(run_dir), losses(uninterrupted)
    assert max(abs(got[s] - want[s]) for s in want) <= 1e-6  # the same prior training as the uninterrupted run's


def test_resume_needs_a_run(tmp_path, reg):
    with pytest.raises(ConfigError, match="holds no run to continue"):
        train(load_config(CONFIG, SMALL), tmp_path / "empty", reg=reg, resume=True, progress=False)
    assert not (tmp_path / "empty" / "config.yaml").exists()


@pytest.mark.slow
def test_a_second_trainer_on_a_run_directory_is_refused_and_the_first_is_unharmed(tmp_path, uninterrupted):
    run_dir = tmp_path / "run"
    first = start_training(run_dir, env={STEP_PAUSE_ENV: "1.0"})  # 27 s left after step 3: both refusals fit in it
    wait_for(lambda: logged_steps(run_dir) >= 3, first)
    for extra in ([], ["--resume"]):
        second = start_training(run_dir, *extra)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err[-2000:]
        assert f"is being trained by another process (pid {first.pid} on " in err and len(err.strip().splitlines()) == 1
    first.communicate(timeout=300)
    assert first.returncode == 0
    got, want = losses(run_dir), losses(uninterrupted)
    assert max(abs(got[s] - want[s]) for s in want) <= 1e-6
    assert not (run_dir / ".lock.json").exists()


def test_a_lock_left_by_a_killed_trainer_is_taken_over(tmp_path, uninterrupted, reg):
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    (run_dir / ".lock").write_text("")  # the file stays when its process dies; the OS lock on it does not
    (run_dir / ".lock.json").write_text(json.dumps({"pid": 999999, "host": "gone", "started": "then", "command": "x"}))
    with pytest.warns(UserWarning, match="taking over the lock left by .*pid 999999 on gone"):
        train(load_config(CONFIG, SMALL), run_dir, reg=reg, resume=True, progress=False)
    assert not (run_dir / ".lock.json").exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, uninterrupted, reg):
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    huge = tmp_path / "huge.safetensors"  # finite inputs whose squared error overflows float32
    save_file({"points": torch.full((64, 2), 1e38), "labels": torch.zeros(64, dtype=torch.long)}, str(huge))
    cfg = load_config(CONFIG, SMALL + ["--train.steps=40", f"--data.config.path={huge}"])
    resolve_codec_configs(cfg, reg.codecs)  # as train() writes it
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))  # as if the run's data file had gone bad under it
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at step 30.*Last good checkpoint: .*step_0000030"):
        train(cfg, run_dir, reg=reg, resume=True, progress=False)
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_0000030"
    assert max(losses(run_dir)) == 29  # nothing logged past the failure


def test_missing_and_bad_data_paths(tmp_path, reg):
    with pytest.raises(ConfigError, match=r"data.config.path: .*nope.safetensors does not exist"):
        train(load_config(CONFIG, SMALL + [f"--data.config.path={tmp_path / 'nope.safetensors'}"]), tmp_path / "a", reg=reg, progress=False)
    bad = tmp_path / "bad.safetensors"
    save_file({"points": torch.zeros(10, 3), "labels": torch.zeros(10, dtype=torch.long)}, str(bad))
    with pytest.raises(ConfigError, match=r"holds points \(10, 3\).*expected \[N, 2\]"):
        train(load_config(CONFIG, SMALL + [f"--data.config.path={bad}"]), tmp_path / "b", reg=reg, progress=False)


def test_init_from_starts_a_new_run_from_weights(tmp_path, uninterrupted, reg):
    run_dir = tmp_path / "fresh"
    train(load_config(CONFIG, SMALL + ["--train.steps=2", "--train.lr=0", "--train.ema_decay=0"]), run_dir, reg=reg,
          init_from=uninterrupted, progress=False)
    from safetensors.torch import load_file

    a = load_file(str(uninterrupted / "checkpoints" / "step_0000030" / "model.safetensors"))
    b = load_file(str(run_dir / "checkpoints" / "step_0000002" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: the weights are exactly the ones it started from
    assert min(losses(run_dir)) == 0 and max(losses(run_dir)) == 1  # a new run counts from step 0


@pytest.mark.slow
def test_joint_stage_trains_codec_and_prior(tmp_path, reg):
    run_dir = tmp_path / "joint"
    codecs, prior, _ = train(load_config(CONFIG, SMALL + ["--train.stage=joint", "--train.codec_role=label", "--train.steps=10"]),
                             run_dir, reg=reg, progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    joint = [r for r in rows if r["stage"] == "joint"]
    assert joint and {"flow", "kl_to_stage1", "codec/loss"} <= set(joint[-1])
    assert joint[0]["kl_to_stage1"] == 0.0 and joint[-1]["kl_to_stage1"] > 0  # starts at the stage-1 encoder, then moves
    state = json.loads((latest_checkpoint(run_dir / "checkpoints") / "state.json").read_text())
    assert "label" in state["trainable_codecs"] and "label" not in state["codecs"]
    assert prior is not None and codecs["label"].trainable


@pytest.mark.slow
def test_latent_cache_gives_the_same_losses_and_is_reused(tmp_path, reg):
    ring_points = torch.randn(500, 2, generator=torch.Generator().manual_seed(0)) * 2
    data = tmp_path / "data.safetensors"
    save_file({"points": ring_points, "labels": torch.arange(500) % 8}, str(data))
    args = SMALL + [f"--data.config.path={data}", "--train.steps=6", f"--train.latent_cache_dir={tmp_path / 'cache'}"]
    train(load_config(CONFIG, args), tmp_path / "plain", reg=reg, progress=False)
    train(load_config(CONFIG, args + ["--train.cache_latents=true"]), tmp_path / "cached", reg=reg, progress=False)
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "cached")
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-6
    shards = sorted((tmp_path / "cache").glob("*/shard_*.safetensors"))
    assert {p.parent.name.split("-")[0] for p in shards} == {"label", "point"}
    stamp = [p.stat().st_mtime_ns for p in shards]
    train(load_config(CONFIG, args + ["--train.cache_latents=true"]), tmp_path / "again", reg=reg, progress=False)
    assert [p.stat().st_mtime_ns for p in shards] == stamp  # same codec and data: read, not rewritten
    with pytest.raises(ConfigError, match="cache_latents needs a data set of fixed items"):
        train(load_config(CONFIG, SMALL + ["--train.cache_latents=true"]), tmp_path / "ring", reg=reg, progress=False)


@pytest.mark.slow
def test_frozen_codecs_encode_outside_the_priors_autocast(tmp_path):
    """Under bf16 mixed precision a frozen codec still encodes in fp32 (as the latent cache does): the prior's targets
    are not rounded to bf16 first, and training from the cache gives the same losses as encoding each step."""
    points = torch.randn(300, 2, generator=torch.Generator().manual_seed(0)) * 2
    data = tmp_path / "data.safetensors"
    save_file({"points": points, "labels": torch.arange(300) % 8}, str(data))
    extra = [f"--data.config.path={data}", "--train.steps=4", "--train.mixed_precision=bf16",
             f"--train.latent_cache_dir={tmp_path / 'cache'}"]
    for name, more in (("plain", []), ("cached", ["--train.cache_latents=true"])):  # own processes: accelerate keeps
        run = start_training(tmp_path / name, *extra, *more)                         # one precision per process
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "cached")
    assert len(a) == 4 and max(abs(a[s] - b[s]) for s in a) <= 1e-6


@pytest.mark.slow
def test_latent_cache_of_a_mixture_gives_the_same_losses(tmp_path, reg):
    """A mixture over two data sets: each is cached over the roles its tasks use, and training reads the same
    posteriors it would have encoded (the same losses as without the cache)."""
    files = []
    for i in range(2):
        points = torch.randn(300, 2, generator=torch.Generator().manual_seed(i)) * 2
        files.append(tmp_path / f"ring{i}.safetensors")
        save_file({"points": points, "labels": torch.arange(300) % 8}, str(files[-1]))
    mixture = ["--task.cond=[]", "--task.target=", f"--data.config.path={files[0]}", "--tasks.to_point.cond=[label]",
               "--tasks.to_point.target=point", "--tasks.to_point.weight=3", "--tasks.to_label.cond=[point]",
               "--tasks.to_label.target=label", "--tasks.to_label.data=gaussian_ring",
               f"--tasks.to_label.data_config.path={files[1]}"]
    args = SMALL + mixture + ["--train.steps=6", f"--train.latent_cache_dir={tmp_path / 'cache'}"]
    train(load_config(CONFIG, args), tmp_path / "plain", reg=reg, progress=False)
    train(load_config(CONFIG, args + ["--train.cache_latents=true"]), tmp_path / "cached", reg=reg, progress=False)
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "cached")
    assert len(a) == 6 and max(abs(a[s] - b[s]) for s in a) <= 1e-6
    caches = sorted(d.name for d in (tmp_path / "cache").iterdir())
    assert len(caches) == 4 and sorted(c.split("-")[0] for c in caches) == ["label", "label", "point", "point"]
    assert len({c.rsplit("-", 1)[1] for c in caches}) == 2  # one data key per data set
    dirs = cache(load_config(CONFIG, args), tmp_path / "cached", reg=reg, progress=False)  # `latentbridge cache`: reused
    assert sorted(dirs) == ["gaussian_ring (to_label)/label", "gaussian_ring (to_label)/point",
                            "gaussian_ring (to_point)/label", "gaussian_ring (to_point)/point"]
    assert sorted(d.name for d in dirs.values()) == caches


# --------------------------------------------------------------------------------------------------
# EMA: warm-up, where it lives, what samples and what a codec pre-stage keeps
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_warmup_lets_the_first_steps_weights_fade(warmup):
    from torch.optim.swa_utils import AveragedModel

    w = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        w.weight.fill_(0.0)  # the first step's weights: 0, then 1 for the next 1,199 steps
    ema = AveragedModel(w, multi_avg_fn=ema_avg_fn(0.998, warmup))
    ema.update_parameters(w)
    with torch.no_grad():
        w.weight.fill_(1.0)
    for _ in range(1199):
        ema.update_parameters(w)
    share_of_first = 1.0 - float(ema.module.weight.detach())
    if warmup:
        assert share_of_first < 1e-6
    else:
        assert abs(share_of_first - 0.998**1199) < 1e-4  # 9%: what the issue measured without warm-up


def test_ema_follows_the_weights_where_prepare_puts_them(monkeypatch, reg):
    """prepare() moves the model (to the accelerator); an EMA made before it would stay behind on the host.
    Here prepare casts to float64, standing in for the move, so the order shows on a CPU-only machine."""
    from accelerate import Accelerator

    prepare = Accelerator.prepare

    def moving_prepare(self, *objects):
        for obj in objects:
            if isinstance(obj, torch.nn.Module):
                obj.double()
        return prepare(self, *objects)

    monkeypatch.setattr(Accelerator, "prepare", moving_prepare)
    cfg = load_config(CONFIG, SMALL)
    from latentbridge.build import build_codecs
    from latentbridge.tasks import tasks_of

    codecs = build_codecs(cfg, reg)
    trainer = Trainer(cfg, "unused", codecs, lambda *a: None, tasks=tasks_of(cfg, reg), checkpoints=False, progress=False)
    dtypes = {p.dtype for p in trainer.ema.module.parameters()}
    assert dtypes == {torch.float64} == {p.dtype for p in trainer.module.trainable.parameters()}


def test_sampling_uses_the_ema_weights(uninterrupted, reg):
    from latentbridge.pipeline import Pipeline

    ckpt = load_checkpoint(latest_checkpoint(uninterrupted / "checkpoints"))
    prior = Pipeline.from_pretrained(uninterrupted, reg).prior.state_dict()
    ema = {k.removeprefix("module.prior."): v for k, v in ckpt["ema"].items() if k.startswith("module.prior.")}
    raw = {k.removeprefix("prior."): v for k, v in ckpt["model"].items() if k.startswith("prior.")}
    assert prior.keys() == ema.keys() == raw.keys()
    assert all(torch.equal(prior[k], ema[k]) for k in prior)
    assert not all(torch.equal(prior[k], raw[k]) for k in prior)  # the raw weights differ: EMA is what samples


def test_codec_pre_stage_keeps_its_ema_weights(tmp_path, monkeypatch, reg):
    seen = {}
    fit = Trainer.fit

    def spy(self):
        rows = fit(self)
        if self.stage == "codec":  # the pre-stage's raw and EMA weights as training left them
            seen[self.role] = ({k: v.clone() for k, v in self.module.trainable.state_dict().items()},
                               {k: v.clone() for k, v in self.ema_weights().items()})
        return rows

    monkeypatch.setattr(Trainer, "fit", spy)
    run_dir = tmp_path / "run"
    train(load_config(CONFIG, SMALL + ["--train.steps=2", "--train.checkpoint_every=2"]), run_dir, reg=reg, progress=False)
    assert set(seen) == {"label", "point"}
    for role, (raw, ema) in seen.items():
        saved = reg.codecs.load(run_dir / "codecs" / role).state_dict()
        ema = {k.removeprefix("codec."): v for k, v in ema.items()}
        raw = {k.removeprefix("codec."): v for k, v in raw.items()}
        weights = [k for k in saved if k in ema and saved[k].is_floating_point() and "stats" not in k]
        assert weights and all(torch.equal(saved[k], ema[k]) for k in weights), role
        assert not all(torch.equal(saved[k], raw[k]) for k in weights), role  # and not the raw weights


@pytest.mark.slow
def test_joint_resume_keeps_stage_one_and_samples_with_the_checkpoints_codec(tmp_path, reg):
    from latentbridge.runs import load_run

    joint = ["--train.stage=joint", "--train.codec_role=label", "--train.steps=20"]
    whole = tmp_path / "whole"
    train(load_config(CONFIG, SMALL + joint), whole, reg=reg, progress=False)
    part = tmp_path / "part"  # killed after its step-10 checkpoint, before the end of the stage writes codecs/label
    proc = start_training(part, *joint, env={STEP_PAUSE_ENV: "0.3"})
    wait_for(lambda: logged_steps(part, "joint") >= 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(part / "checkpoints").name == "step_0000010" and not (part / "codecs" / "label").exists()
    ckpt = load_checkpoint(latest_checkpoint(part / "checkpoints"))
    codec = load_run(part, reg).codecs["label"].state_dict()  # the unfinished run samples with the checkpoint's codec
    ema = {k.removeprefix("module.codec."): v for k, v in ckpt["ema"].items() if k.startswith("module.codec.")}
    stage1 = reg.codecs.load(part / "stage1" / "label").state_dict()
    assert all(torch.equal(codec[k], ema[k]) for k in ema)
    assert not all(torch.equal(codec[k], stage1[k]) for k in ema)  # the joint stage moved it away from stage 1
    codec_rows = sum(json.loads(line)["stage"] == "codec" for line in (part / "metrics.jsonl").read_text().splitlines())
    train(load_config(CONFIG, SMALL + joint), part, reg=reg, resume=True, progress=False)  # no second codec pre-stage
    assert sum(json.loads(line)["stage"] == "codec" for line in (part / "metrics.jsonl").read_text().splitlines()) == codec_rows
    assert max(abs(losses(part, "joint")[s] - losses(whole, "joint")[s]) for s in range(20)) <= 1e-6
    assert_same_checkpoint(part, whole)


# --------------------------------------------------------------------------------------------------
# Verified loading for generation and evaluation
# --------------------------------------------------------------------------------------------------


def test_loading_never_reads_the_optimizer_state(tmp_path, uninterrupted, reg):
    from latentbridge.pipeline import Pipeline

    run_dir = copy_run(uninterrupted, tmp_path / "run")
    (run_dir / "checkpoints" / "step_0000030" / "optimizer.pt").write_bytes(b"not a checkpoint")  # would fail to unpickle
    assert Pipeline.from_pretrained(run_dir, reg).prior is not None


def test_latest_pointing_outside_the_run_is_refused(tmp_path, uninterrupted, reg):
    from latentbridge.pipeline import Pipeline

    other = copy_run(uninterrupted, tmp_path / "other")
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    (run_dir / "checkpoints" / "latest").write_text("../../other/checkpoints/step_0000030\n")
    assert (run_dir / "checkpoints" / "latest").read_text().strip().startswith("../") and other.is_dir()
    with pytest.raises(CheckpointError, match=r"is not one of this run's checkpoints"):
        Pipeline.from_pretrained(run_dir, reg)


def test_codecs_that_are_not_the_checkpoints_are_refused_at_loading(tmp_path, uninterrupted, reg):
    from latentbridge.pipeline import Pipeline

    run_dir = copy_run(uninterrupted, tmp_path / "run")
    codec = reg.codecs.load(run_dir / "codecs" / "point")
    codec.stats.set(codec.stats.shift + 1.0, codec.stats.scale)  # e.g. retrained into the run directory since
    codec.save_pretrained(run_dir / "codecs" / "point")
    with pytest.raises(CheckpointError, match=r"not the ones its prior was trained with \(point: checkpoint vector"):
        Pipeline.from_pretrained(run_dir, reg)


def test_non_finite_weights_are_refused_at_loading(tmp_path, uninterrupted, reg):
    from latentbridge.pipeline import Pipeline

    run_dir = copy_run(uninterrupted, tmp_path / "run")
    path = run_dir / "checkpoints" / "step_0000030" / "ema.safetensors"
    ema = load_file(str(path))
    name = next(k for k in ema if k.startswith("module.prior.") and ema[k].is_floating_point())
    ema[name] = torch.full_like(ema[name], float("nan"))
    save_file(ema, str(path))
    with pytest.raises(CheckpointError, match=r"hold NaN or infinite values \(prior\."):
        Pipeline.from_pretrained(run_dir, reg)


def test_a_damaged_optimizer_state_is_named_at_resume(tmp_path, uninterrupted, reg):
    run_dir = copy_run(uninterrupted, tmp_path / "run")
    (run_dir / "checkpoints" / "step_0000030" / "optimizer.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"step_0000030 is corrupt or truncated.*older checkpoint exists \(step_0000020\)"):
        train(load_config(CONFIG, SMALL + ["--train.steps=40"]), run_dir, reg=reg, resume=True, progress=False)


def test_eval_of_some_evaluators_and_sample_keep_the_other_figures(tmp_path, uninterrupted, reg):
    from latentbridge.evaluate.report import read_report
    from latentbridge.evaluate.run import evaluate_run
    from latentbridge.pipeline import sample_run

    run_dir = copy_run(uninterrupted, tmp_path / "run")
    evaluate_run(run_dir, samples=96, registries=reg, progress=False, log=lambda _: None)
    full = read_report(run_dir)
    with pytest.raises(ConfigError, match="does not implement write_items"):  # the toy's points are no files
        sample_run(run_dir, n=4, registries=reg, progress=False)
    assert read_report(run_dir) == full  # sample writes items, never figures (it used to replace report.json)
    evaluate_run(run_dir, samples=96, evaluators=["prior-fit"], registries=reg, progress=False, log=lambda _: None)
    again = read_report(run_dir)
    (task,) = full["tasks"]
    assert set(again["tasks"][task]) >= set(full["tasks"][task]) - {"eval_s"}  # the ring evaluator's figures stay
    assert again["tasks"][task]["ring"] == full["tasks"][task]["ring"]


def test_too_few_samples_for_the_ring_evaluator_is_one_line(tmp_path, uninterrupted, reg):
    from latentbridge.evaluate.run import evaluate_run

    with pytest.raises(ConfigError, match="at least 80 \\(got 32\\)"):
        evaluate_run(copy_run(uninterrupted, tmp_path / "run"), samples=32, registries=reg, progress=False, log=lambda _: None)


def test_a_run_from_before_prior_backbones_resumes(tmp_path, uninterrupted, reg):
    """Configs written before `prior.backbone` / `prior.config` existed lack those keys: their defaults are no change."""
    import re

    run_dir = copy_run(uninterrupted, tmp_path / "run")
    for path in [run_dir / "config.yaml", *(run_dir / "checkpoints").glob("step_*/config.yaml")]:
        text = path.read_text()
        old = re.sub(r"(?m)^  backbone: dit\n|^  config: null\n", "", text)
        assert old != text
        path.write_text(old)
    train(load_config(CONFIG, SMALL + ["--train.steps=32"]), run_dir, reg=reg, resume=True, progress=False)
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_0000032"


@pytest.mark.parametrize("stage", ["prior", "joint"])
def test_moving_the_stage_module_moves_its_frozen_codecs_and_stage1_copy(reg, stage):
    """accelerate's prepare moves the trained module to the accelerator; the frozen codecs (and the joint stage's
    stage-1 copy), held outside it, must follow, or a GPU run mixes CPU and GPU tensors. Checked on the meta device."""
    from latentbridge.build import build_codecs, build_prior, layout_of
    from latentbridge.tasks import tasks_of
    from latentbridge.train.trainer import StageLoss

    cfg = load_config(CONFIG, SMALL + [f"--train.stage={stage}"])
    codecs = build_codecs(cfg, reg)
    layout = layout_of(cfg, codecs)
    module = StageLoss(stage, cfg, codecs, build_prior(cfg, layout, reg), layout, "point" if stage == "joint" else None,
                       tasks_of(cfg, reg))
    module.to("meta")
    held = [*module.frozen.values(), *([module.stage1] if module.stage1 is not None else [])]
    assert held and (stage == "prior" or module.stage1 is not None)
    left = [n for m in [module, *held] for n, t in [*m.named_parameters(), *m.named_buffers()] if t.device.type != "meta"]
    assert not left, left


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_the_accelerate_launch_configs_are_what_accelerate_reads(path):
    """Each recipe in configs/accelerate/ loads as accelerate's own config (an unknown or misspelt key fails) and
    starts processes only: latentbridge shards by itself (train.parallel), so none of them asks accelerate for FSDP."""
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(path))
    assert cfg.distributed_type == "MULTI_GPU" and not cfg.fsdp_config and cfg.num_processes >= cfg.num_machines >= 1


def test_accelerates_own_fsdp_is_refused_with_the_fix(reg, monkeypatch):
    from latentbridge.build import build_codecs
    from latentbridge.tasks import tasks_of

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cfg = load_config(CONFIG, SMALL)
    with pytest.raises(ConfigError, match="train.parallel: fsdp"):
        Trainer(cfg, "unused", build_codecs(cfg, reg), lambda *a: None, tasks=tasks_of(cfg, reg), checkpoints=False, progress=False)
