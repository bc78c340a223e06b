"""The README and docs/ as a newcomer meets them: short, with commands that run as written; and house rules on the
code that no linter checks (no private helper imported across modules)."""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "write_a_codec" / "README.md"]
QUICK = {("codecs", "list"), ("codecs", "show"), ("datasets", "list"), ("datasets", "show"), ("evaluators", "list"),
         ("evaluators", "show"), ("config", "show")}


def commands() -> list[tuple[Path, list[str]]]:
    """Every `latentbridge ...` line of the bash blocks of the README and docs/ (comments stripped)."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():  # continuation lines joined
                line = line.split("  #")[0].strip()
                for part in line.split("&&"):
                    words = shlex.split(part.strip())
                    if words and words[0].endswith("latentbridge"):
                        found.append((path, words[1:]))
    return found


def test_readme_is_a_short_guide_opening_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert first[0].startswith("make demo") and first[1].startswith("make test")
    for link in re.findall(r"\]\(([^)#]+)", text):  # every local link points at a file that exists
        if not link.startswith("http"):
            assert (ROOT / link).exists(), link


def test_every_documented_command_parses():
    from latentbridge.cli import build_parser

    parser = build_parser()
    found = commands()
    assert len(found) >= 15
    for path, args in found:
        try:
            ns, extra = parser.parse_known_args(args)
        except SystemExit:
            pytest.fail(f"{path.name}: `latentbridge {' '.join(args)}` does not parse")
        assert not extra or getattr(ns, "takes_overrides", False), (path.name, args, extra)


@pytest.mark.slow
def test_the_quick_documented_commands_run_as_written(autoload_plugins):
    env = {k: v for k, v in os.environ.items() if k != "LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"}
    ran = 0
    for path, args in commands():
        if tuple(args[:2]) in QUICK and "--json" not in args:
            proc = subprocess.run([str(BIN / "latentbridge"), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
            assert proc.returncode == 0, (path.name, args, proc.stderr)
            ran += 1
    assert ran >= 3


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for root in (ROOT / "latentbridge", *(ROOT / "plugins").glob("*/latentbridge_*")):
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("latentbridge"):
                    offenders += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                                  if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders


FAST = {"train": ["--train.steps=2", "--train.codec_steps=1", "--train.batch_size=4", "--train.checkpoint_every=2",
                  "--train.warmup_steps=1", "--sampling.steps=2", "--eval.samples=4", "--eval.guidance_scales=[1.0]",
                  "--data.config.num_workers=0", "--data.config.test_fraction=0.2", "--no-progress"],
        "eval": ["--samples", "4", "--no-progress"], "sample": ["--samples", "2", "--no-progress"]}


def recipes() -> list[tuple[str, dict[str, str], list[list[str]]]]:
    """docs/data.md's recipes: (title, {file name: YAML}, [latentbridge command words])."""
    out = []
    for section in re.split(r"\n### ", (ROOT / "docs" / "data.md").read_text())[1:]:
        section = section.split("\n## ")[0]
        title = section.splitlines()[0]
        if not title.startswith("Train on"):
            continue
        configs = {re.match(r"# (\S+)", y).group(1): y for y in re.findall(r"```yaml\n(.*?)```", section, re.S)}
        cmds = [shlex.split(line.split("  #")[0]) for block in re.findall(r"```bash\n(.*?)```", section, re.S)
                for line in block.splitlines() if line.startswith("latentbridge ")]
        out.append((title, configs, cmds))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("recipe", range(4))
def test_data_recipes_run_as_written(tmp_path, recipe):
    import datafiles as D

    title, configs, cmds = recipes()[recipe]
    writers = {"image folder": lambda: D.write_imagefolder(tmp_path / "my_images", 24),
               "audio": lambda: D.write_audiofolder(tmp_path / "my_clips", 12),
               "JSONL": lambda: D.write_jsonl(tmp_path / "my_corpus.jsonl", 120),
               "WebDataset": lambda: D.write_webdataset(tmp_path / "my_shards", 24, 4)}
    (writer,) = [w for key, w in writers.items() if key in title]
    writer()
    for name, text in configs.items():
        (tmp_path / name).write_text(text)
    assert cmds and cmds[0][1] == "train", title
    env = {k: v for k, v in os.environ.items() if k != "LATENTBRIDGE_DISABLE_PLUGIN_AUTOLOAD"}
    for words in cmds:
        proc = subprocess.run([str(BIN / "latentbridge"), *words[1:], *FAST.get(words[1], [])], capture_output=True,
                              text=True, env={**env, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, (title, words, proc.stderr[-3000:])
    run = tmp_path / "runs" / cmds[0][2].removesuffix(".yaml").replace("_", "-")
    assert (run / "checkpoints" / "latest").exists() and any((run / "samples").rglob("*.*"))
