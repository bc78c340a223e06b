"""The toy cross-modal experiments, run from the shipped YAML configs, pass their stated bars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from latentbridge.config import load_config
from latentbridge.errors import ConfigError
from latentbridge.evaluate.run import evaluate_run
from latentbridge.plugins import build_registries, make_plugin_manager
from latentbridge.train.experiment import train

CONFIGS = Path(__file__).parents[3] / "configs"


@pytest.fixture(scope="module")
def registry():
    return build_registries(make_plugin_manager(autoload=True))  # codecs, data set and evaluator come from this plugin


def run(cfg, run_dir, reg, progress=False):
    train(cfg, run_dir, reg=reg, progress=progress)
    return evaluate_run(run_dir, registries=reg, progress=progress, log=lambda _: None)["tasks"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["toy_label_to_vector", "toy_vector_to_label"])
def test_toy_experiment_passes_its_bars(name, tmp_path, registry):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    tasks = run(cfg, tmp_path / "run", reg=registry)
    (task,) = tasks.values()
    report = task["ring"]
    assert {"prior-fit", "reconstruction", "samples"} <= set(task)
    failed = {k: v for k, v in report["checks"].items() if not v["pass"]}
    assert not failed, failed
    guided = [k for k in report["checks"] if k.startswith("guidance raises")]
    assert guided and report["passed"]  # guidance is shown to raise the conditional score
    run_dir = tmp_path / "run"
    for path in ("config.yaml", "metrics.jsonl", "report.json", "loss.png", "checkpoints/latest",
                 "checkpoints/step_0002000/ema.safetensors", "codecs/label/codec.json", "codecs/point/model.safetensors"):
        assert (run_dir / path).exists(), path
    if cfg.task.target == "point":
        assert (run_dir / "samples" / "points.png").exists()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"codec", "prior"} == {r["stage"] for r in rows} and all("step" in r for r in rows)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["name"] == cfg.name


def test_run_dir_of_another_experiment_is_refused(tmp_path, registry):
    (tmp_path / "config.yaml").write_text("name: something-else\n")
    cfg = load_config(CONFIGS / "toy_label_to_vector.yaml")
    with pytest.raises(ConfigError, match="holds a run of experiment 'something-else'"):
        run(cfg, tmp_path, reg=registry)


def test_task_roles_must_exist():
    with pytest.raises(ConfigError, match="task names role 'image', which is not under codecs"):
        load_config(CONFIGS / "toy_label_to_vector.yaml", ["--task.target=image"])


@pytest.mark.parametrize("to_points", [True, False])
def test_the_shuffled_control_bar_fails_on_its_own(to_points):
    """A run whose conditional scores pass but whose shuffled control stays far above chance (the condition leaks
    past the shuffle) must fail that bar, and only that one."""
    from latentbridge_toy.evaluators import RingEvaluator

    evaluator = RingEvaluator.__new__(RingEvaluator)
    evaluator.to_points = to_points
    score = "class_agreement" if to_points else "accuracy"
    rows = ({"true_sample_class_agreement": 0.91, "label_blind_mmd2": 0.9, "chance_class_agreement": 0.125} if to_points
            else {"posterior_sampling_accuracy": 0.87, "chance_accuracy": 0.125})
    good = {score: 0.93, "mmd2": 0.01, f"shuffled {score}": 0.14}
    for shuffled, want in ((0.14, True), (0.45, False), (0.6, False)):  # 0.45: below half the score, 3.6 x chance
        checks = evaluator.checks({**rows, "guidance 1": {**good, f"shuffled {score}": shuffled}, "guidance 2": {**good, score: 0.95}})
        control = [c for name, c in checks.items() if name.startswith("shuffled control")]
        assert len(control) == 1 and control[0]["pass"] is want, (shuffled, checks)
        assert all(c["pass"] for name, c in checks.items() if not name.startswith("shuffled control"))
