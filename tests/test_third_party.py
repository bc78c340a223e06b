"""Plugins from separate distributions, installed with pip: discovery, removal, clashes, broken plugins, and the
walk-through package (examples/write_a_codec) training, sampling and evaluating a new modality end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "write_a_codec"
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def cli(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD", "PYTHONPATH")}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(BIN / "latentbridge"), *args], capture_output=True, text=True, env=env, timeout=120)


def listed(pythonpath: Path | None = None) -> dict[str, dict]:
    proc = cli("codecs", "list", "--json", pythonpath=pythonpath)
    assert proc.returncode == 0, proc.stderr
    return {row["name"]: row for row in json.loads(proc.stdout)}


def installed(name: str) -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "show", "-q", name], capture_output=True).returncode == 0


def make_distribution(tmp: Path, dist: str, module: str, body: str, entry_name: str | None = None) -> Path:
    """Write a minimal plugin distribution (pyproject + one module) and return its folder."""
    src = tmp / dist
    src.mkdir()
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=70"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "{dist}"
        version = "0.1.0"
        [project.entry-points."latentbridge.codecs"]
        {entry_name or module} = "{module}"
        [tool.setuptools]
        py-modules = ["{module}"]
    """))
    (src / f"{module}.py").write_text(textwrap.dedent(body))
    return src


def install_target(src: Path, target: Path) -> Path:
    pip("install", "--no-deps", "--no-build-isolation", "--target", str(target), str(src))
    return target


def test_pip_install_into_the_venv_then_uninstall():
    if installed("latentbridge-frames"):
        pytest.skip("latentbridge-frames is installed in this environment on purpose; not touching it")
    assert "frames" not in listed()
    try:
        pip("install", "--no-deps", "--no-build-isolation", str(EXAMPLE))
        row = listed()["frames"]
        assert row["provider"] == "latentbridge-frames 0.2.0" and row["modality"] == "signal" and row["tokens"] == "variable"
        check = cli("codecs", "check", "frames")
        assert check.returncode == 0 and "12 passed, 0 failed" in check.stdout, check.stdout
    finally:
        pip("uninstall", "-y", "latentbridge-frames")
    assert "frames" not in listed()


def test_example_plugin_runs_its_own_conformance_tests(tmp_path):
    target = install_target(EXAMPLE, tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "40 passed" in proc.stdout


def test_walk_through_package_trains_samples_and_evaluates_a_new_modality(tmp_path):
    """The example distribution adds a codec, a data set, an evaluator and a task config; installed with pip, it
    trains, samples and evaluates through the CLI with no edit to latentbridge."""
    target = install_target(EXAMPLE, tmp_path / "site")
    run = tmp_path / "tones"
    for kind, name in (("datasets", "tones"), ("evaluators", "pitch")):
        proc = cli(kind, "list", "--json", pythonpath=target)
        assert proc.returncode == 0, proc.stderr
        assert {r["name"]: r["provider"] for r in json.loads(proc.stdout)}[name] == "latentbridge-frames 0.2.0"
    train = cli("train", str(EXAMPLE / "configs" / "tones.yaml"), "--run-dir", str(run), "--no-progress", pythonpath=target)
    assert train.returncode == 0, train.stderr[-2000:]
    sample = cli("sample", str(run), "--samples", "5", "--guidance", "2", "--no-progress", pythonpath=target)
    assert sample.returncode == 0, sample.stderr[-2000:]
    assert len(list((run / "samples" / "pitch_to_signal" / "g2").glob("*.npy"))) == 5  # written by the plugin's codec
    ev = cli("eval", str(run), "--no-progress", pythonpath=target)
    assert ev.returncode == 0, ev.stderr[-2000:]
    task = json.loads((run / "report.json").read_text())["tasks"]["pitch_to_signal"]
    assert {"pitch", "prior-fit", "reconstruction", "samples"} <= set(task)
    g1, g3 = task["pitch"]["guidance 1"], task["pitch"]["guidance 3"]
    assert g3["pitch accuracy"] > g3["shuffled pitch accuracy"] + 0.3  # the condition is used, far above its control
    assert g1["pitch accuracy"] > 0.5 and task["prior-fit"]["with condition"] < task["prior-fit"]["without condition"]
    assert "## pitch_to_signal" in (run / "report.md").read_text()


CLASHING_CODEC = """
    from latentbridge.codecs.identity import IdentityCodec
    from latentbridge.hookspecs import hookimpl

    class MyVector(IdentityCodec):
        name = "vector"

    @hookimpl
    def latentbridge_register_codecs(register):
        register(MyVector)
"""


def test_two_distributions_registering_one_name_are_both_named(tmp_path):
    target = install_target(make_distribution(tmp_path, "latentbridge-clash", "lb_clash", CLASHING_CODEC), tmp_path / "site")
    proc = cli("codecs", "list", pythonpath=target)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "codec name 'vector' is registered twice" in proc.stderr
    assert "latentbridge-toy 0.2.0" in proc.stderr and "latentbridge-clash 0.1.0" in proc.stderr


def test_two_distributions_with_one_entry_point_name_are_refused(tmp_path):
    body = CLASHING_CODEC.replace('"vector"', '"other"')
    src = make_distribution(tmp_path, "latentbridge-samename", "lb_samename", body, entry_name="toy")
    proc = cli("codecs", "list", pythonpath=install_target(src, tmp_path / "site"))
    assert proc.returncode == 2 and "entry point 'toy'" in proc.stderr
    assert "latentbridge-toy 0.2.0" in proc.stderr and "latentbridge-samename 0.1.0" in proc.stderr


def test_a_broken_plugin_fails_alone_named_with_the_way_out(tmp_path):
    """A plugin that raises at import is left out with one warning; every other codec keeps working, and
    `codecs list` shows it as broken (it used to break every command)."""
    src = make_distribution(tmp_path, "latentbridge-broken", "lb_broken", "import no_such_module_here\n")
    site = install_target(src, tmp_path / "site")
    proc = cli("codecs", "list", pythonpath=site)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "plugin 'lb_broken' from latentbridge-broken 0.1.0 failed to load and is left out" in proc.stderr
    assert "ModuleNotFoundError" in proc.stderr
    assert "pip uninstall latentbridge-broken" in proc.stderr and "LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD=1" in proc.stderr
    assert "BROKEN plugin 'lb_broken' from latentbridge-broken 0.1.0" in proc.stdout
    assert "text-vae" in proc.stdout  # the other plugins still load
    shown = cli("codecs", "show", "identity", pythonpath=site)
    assert shown.returncode == 0, shown.stderr


def test_a_plugin_whose_hook_raises_fails_alone(tmp_path):
    body = """
        from latentbridge.codecs.identity import IdentityCodec
        from latentbridge.hookspecs import hookimpl

        class Fine(IdentityCodec):
            name = "fine-codec"

        @hookimpl
        def latentbridge_register_codecs(register):
            register(Fine)

        @hookimpl
        def latentbridge_register_datasets(register):
            raise RuntimeError("no data today")
    """
    site = install_target(make_distribution(tmp_path, "latentbridge-halfway", "lb_halfway", body), tmp_path / "site")
    proc = cli("codecs", "list", pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert "plugin 'lb_halfway' from latentbridge-halfway 0.1.0 failed to load and is left out (RuntimeError: no data today)" \
        in proc.stderr
    assert "fine-codec" not in proc.stdout.split("BROKEN")[0]  # what it registered before failing is left out too


def test_a_plugin_whose_encode_returns_nan_fails_the_check_with_its_name(tmp_path):
    body = """
        import torch
        from latentbridge.codecs import Posterior
        from latentbridge.codecs.identity import IdentityCodec
        from latentbridge.hookspecs import hookimpl

        class Nan(IdentityCodec):
            name = "nan-codec"

            def raw_encode(self, batch):
                post = super().raw_encode(batch)
                return Posterior(post.mean * float("nan"), post.lengths)

        @hookimpl
        def latentbridge_register_codecs(register):
            register(Nan)
    """
    target = install_target(make_distribution(tmp_path, "latentbridge-nan", "lb_nan", body), tmp_path / "site")
    proc = cli("codecs", "check", "nan-codec", pythonpath=target)
    assert proc.returncode == 1
    assert "codec 'nan-codec'" in proc.stdout and "NaN or inf in the mean" in proc.stdout
