"""The `latentbridge` command, run as a user runs it: a subprocess of the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
EXE = shutil.which("latentbridge", path=str(Path(sys.executable).parent)) or "latentbridge"


def run(*args: str, autoload: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if autoload:
        full_env.pop("LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD", None)
    full_env.update(env or {})
    return subprocess.run([EXE, *args], capture_output=True, text=True, cwd=ROOT, env=full_env, timeout=120)


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("latentbridge: error: ")
    assert len(proc.stderr.strip().splitlines()) == 1
    for fragment in fragments:
        assert fragment in proc.stderr


def test_codecs_list_shows_plugins_with_providers():
    proc = run("codecs", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["vector"]["provider"] == "latentbridge-toy 0.2.0" and rows["vector"]["modality"] == "vector"
    assert rows["identity"]["tokens"] == "variable" and rows["label"]["tokens"] == 1
    table = run("codecs", "list").stdout
    assert "provider" in table.splitlines()[0] and "latentbridge-toy 0.2.0" in table


def test_autoload_off_hides_entry_point_plugins():
    proc = run("codecs", "list", "--json", env={"LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert [r["name"] for r in json.loads(proc.stdout)] == ["identity"]


def test_codecs_check_prints_a_pass_table():
    proc = run("codecs", "check", "label", "--num_classes=3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "save_load_round_trip" in proc.stdout and "12 passed, 0 failed" in proc.stdout


def test_codecs_show_documents_options():
    proc = run("codecs", "show", "vector")
    assert proc.returncode == 0 and "# Dimension n of the points." in proc.stdout and "input_dim: 2" in proc.stdout


def test_datasets_and_evaluators_list_their_providers():
    proc = run("datasets", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["gaussian_ring"]["provider"] == "latentbridge-toy 0.2.0" and rows["images"]["provider"] == "latentbridge-demo 0.2.0"
    assert rows["images"]["fields"] == "image: image, text: caption"
    proc = run("evaluators", "list")
    assert proc.returncode == 0 and "prior-fit" in proc.stdout and "caption-to-image" in proc.stdout, proc.stderr
    proc = run("datasets", "show", "speech")
    assert proc.returncode == 0 and "words: dictionary" in proc.stdout and "# Speech engines" in proc.stdout, proc.stderr


def test_config_show_resolves_codec_configs():
    proc = run("config", "show", "configs/toy_label_to_vector.yaml", "--seed=7", "--codecs.point.config.latent_dim=3")
    assert proc.returncode == 0, proc.stderr
    assert "seed: 7" in proc.stdout and "latent_dim: 3" in proc.stdout and "init_logvar: -4.0" in proc.stdout


@pytest.mark.parametrize(
    "args, fragments",
    [
        (("codecs", "check", "vectr"), ("unknown codec 'vectr'", "Did you mean 'vector'?", "Installed codecs: audio-vae, cola-vae, identity, image-vae, label, minilm, pretrained-audio, pretrained-image, text-encoder, text-vae, vector")),
        (("config", "show", "configs/missing.yaml"), ("config file not found: configs/missing.yaml", "toy_label_to_vector.yaml")),
        (("config", "show", "configs/toy_label_to_vector.yaml", "--sead=1"), ("unknown config key 'sead'", "Did you mean 'seed'?")),
        (("config", "show", "configs/toy_label_to_vector.yaml", "--seed=one"), ("seed: expected int, got str 'one'",)),
        (("config", "show", "configs/toy_label_to_vector.yaml", "--codecs.label.codec=lable"), ("codecs.label.codec: unknown codec 'lable'", "Did you mean 'label'?")),
        (("config", "show", "configs/toy_label_to_vector.yaml", "--codecs.label.config.num_clases=3"), ("codecs.label.config.num_clases", "Did you mean 'num_classes'?")),
        (("config", "show", "configs/toy_label_to_vector.yaml", "stray"), ("unexpected argument 'stray'", "--dotted.key=value")),
        (("config", "show", "configs/toy_label_to_vector.yaml", "--data.name=gausian_ring"),
         ("data.name: unknown data set 'gausian_ring'", "Did you mean 'gaussian_ring'?", "latentbridge datasets list")),
        (("config", "show", "configs/toy_label_to_vector.yaml", "--data.config.radus=3"),
         ("unknown config key 'data.config.radus'", "Did you mean 'radius'?")),
        (("config", "show", "configs/toy_label_to_vector.yaml", "--eval.evaluators=[rnig]"),
         ("eval.evaluators[0]: unknown evaluator 'rnig'", "Did you mean 'ring'?")),
        (("config", "show", "configs/toy_label_to_vector.yaml", "--eval.options.ring.x=1"),
         ("unknown config key 'eval.options.ring.x'",)),
        (("datasets", "show", "imagez"), ("unknown data set 'imagez'", "Did you mean 'images'?")),
        (("codecs", "check", "label", "--num_classes=many"), ("num_classes: expected int",)),
    ],
)
def test_bad_input_gives_one_line_naming_the_fix(args, fragments, autoload_plugins, capsys):
    """In process (main() is what the console script runs), so the table costs milliseconds a case; the console
    script itself gives the same line (test_the_console_script_gives_the_same_error_line)."""
    assert_clean_error(in_process(capsys, *args), *fragments)


def in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    from latentbridge.cli import main

    try:
        code = main(list(args))
    except SystemExit as err:  # argparse's own errors
        code = err.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def test_the_console_script_gives_the_same_error_line(autoload_plugins, capsys):
    args = ("config", "show", "configs/toy_label_to_vector.yaml", "--data.name=gausian_ring")
    proc = run(*args)
    assert_clean_error(proc, "Did you mean 'gaussian_ring'?")
    assert proc.stderr == in_process(capsys, *args).stderr


def test_help_on_each_command_and_module_entry():
    for args in (("--help",), ("codecs", "--help"), ("codecs", "list", "--help"), ("codecs", "check", "--help"),
                 ("codecs", "show", "--help"), ("config", "show", "--help"), ("datasets", "list", "--help"),
                 ("evaluators", "show", "--help"), ("sample", "--help"), ("eval", "--help"), ("reconstruct", "--help")):
        proc = run(*args)
        assert proc.returncode == 0 and "usage: latentbridge" in proc.stdout, args
    proc = subprocess.run([sys.executable, "-m", "latentbridge", "--version"], capture_output=True, text=True)
    assert proc.stdout.strip() == "latentbridge 0.2.0"


def test_in_process_main_returns_exit_codes(capsys):
    from latentbridge.cli import main

    assert main(["config", "show", "configs/nope.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
