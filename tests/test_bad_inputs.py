"""Every failure a user can cause is one line naming the problem and the key or path, with exit code 2 (issue 19).

Table-driven: configs (files and overrides), command lines, run directories and checkpoints, saved codecs, data
files, plugins' outputs and API calls. A command-line case runs `latentbridge.cli.main` in this process and asserts
exit code 2, exactly one line on stderr, no "internal error", and that the line names what it must; an API case
asserts the typed exception and the same about its message.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import datafiles as D
from latentbridge.cli import main
from latentbridge.codecs import Latents
from latentbridge.codecs.identity import IdentityCodec
from latentbridge.config import load_config
from latentbridge.data.stream import DataFileError, StreamReader
from latentbridge.errors import CodecOutputError, ConfigError, LatentbridgeError, UnknownNameError
from latentbridge.pipeline import Pipeline
from latentbridge.plugins import registries
from latentbridge.train.experiment import train

ROOT = Path(__file__).parents[1]
TOY = ROOT / "configs" / "toy_label_to_vector.yaml"
pytestmark = pytest.mark.usefixtures("autoload_plugins")  # the CLI's registries: every installed plugin
QUICK = ["--train.steps=4", "--train.codec_steps=2", "--train.checkpoint_every=2", "--train.batch_size=16",
         "--train.log_every=1", "--train.warmup_steps=1", "--eval.samples=8"]


def cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse
        code = stop.code
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *names: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"


def assert_typed(err: BaseException, cls: type, *names: str) -> None:
    assert isinstance(err, cls), repr(err)
    text = str(err)
    assert "\n" not in text.strip(), text
    for name in names:
        assert name in text, f"{name!r} not named in: {text}"


# --------------------------------------------------------------------------------------------------
# Configs: an override of the toy config, checked by `latentbridge config show` (and so by `train`)
# --------------------------------------------------------------------------------------------------

OVERRIDES = [  # (override, what the message must name)
    ("train.steps=ten", "train.steps"),
    ("train.steps=0", "train.steps: must be >= 1"),
    ("train.steps=-5", "train.steps"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.grad_accum=0", "train.grad_accum"),
    ("train.log_every=0", "train.log_every"),
    ("train.lr=.nan", "train.lr: must be a finite number"),
    ("train.lr=-1", "train.lr"),
    ("train.lr=.inf", "train.lr"),
    ("train.ema_decay=5", "train.ema_decay: must be in [0, 1)"),
    ("train.ema_decay=1.0", "train.ema_decay"),
    ("train.cond_dropout=2", "train.cond_dropout"),
    ("train.cond_dropout=-0.1", "train.cond_dropout"),
    ("train.betas=[0.9]", "train.betas"),
    ("train.betas=[1.5, 0.9]", "train.betas[0]"),
    ("train.weight_decay=-0.1", "train.weight_decay"),
    ("train.grad_clip=0", "train.grad_clip"),
    ("train.warmup_steps=-1", "train.warmup_steps"),
    ("train.checkpoint_every=-1", "train.checkpoint_every"),
    ("train.keep_checkpoints=-1", "train.keep_checkpoints"),
    ("train.row_length=0", "train.row_length"),
    ("train.stage=both", "train.stage"),
    ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("train.codec_steps=-1", "train.codec_steps"),
    ("train.codec_role=nope", "train.codec_role"),
    ("train.codec_lr=.nan", "train.codec_lr"),
    ("train.joint_kl_weight=-1", "train.joint_kl_weight"),
    ("train.stpes=10", "train.stpes"),
    ("sampling.steps=0", "sampling.steps"),
    ("sampling.shift=0", "sampling.shift"),
    ("sampling.guidance=[]", "sampling.guidance"),
    ("sampling.guidance=[.nan]", "sampling.guidance[0]"),
    ("sampling.guidance_interval=[0.8, 0.2]", "sampling.guidance_interval"),
    ("sampling.guidance_interval=[0, 2]", "sampling.guidance_interval[1]"),
    ("sampling.solver=rk4", "sampling.solver"),
    ("eval.samples=0", "eval.samples"),
    ("eval.guidance_scales=[]", "eval.guidance_scales"),
    ("eval.evaluators=[nope]", "nope"),
    ("prior.width=0", "prior.width"),
    ("prior.depth=-1", "prior.depth"),
    ("prior.mlp_ratio=0", "prior.mlp_ratio"),
    ("prior.preset=huge", "prior.preset"),
    ("codecs.point.codec=nope", "codecs.point.codec"),
    ("codecs.point.config.no_such_field=1", "codecs.point.config.no_such_field"),
    ("codecs.point.time_sampler.scale=0", "codecs.point.time_sampler.scale"),
    ("codecs.point.time_sampler.kind=beta", "codecs.point.time_sampler.kind"),
    ("codecs.point.latents=median", "codecs.point.latents"),
    ("codecs.point.steps=-1", "codecs.point.steps"),
    ("codecs.point.lr=.nan", "codecs.point.lr"),
    ("codecs.point.batch_size=0", "codecs.point.batch_size"),
    ("task.target=nope", "task names role 'nope'"),
    ("task.cond=[point]", "role 'point' is both a condition and the target"),
    ("task.cond=[label, label]", "task.cond names 'label' more than once"),
    ("tasks.a.target=point", "set either `task`"),
    ("data.name=nope", "nope"),
    ("data.config.no_such_option=1", "data.config.no_such_option"),
    ("seed=abc", "seed"),
    ("name=[1, 2]", "name"),
    ("seed.x=1", "seed"),
]


@pytest.mark.parametrize("override,named", OVERRIDES, ids=[o for o, _ in OVERRIDES])
def test_a_bad_setting_is_one_line_naming_its_key(capsys, override, named):
    assert_one_line(*cli(capsys, "config", "show", TOY, f"--{override}"), named)


MIXTURES = [  # a mixture file's body under `tasks:`, and what the message names
    ("a: {cond: [point], target: point}", "tasks.a: role 'point' is both a condition and the target"),
    ("a: {cond: [label], target: point, weight: 0}", "tasks.a.weight"),
    ("a: {cond: [label], target: point, weight: .nan}", "tasks.a.weight"),
    ("a: {cond: [label]}", "tasks.a.target is empty"),
    ("a: {cond: [label], target: point, data: nope}", "nope"),
]


@pytest.mark.parametrize("body,named", MIXTURES)
def test_a_bad_mixture_is_one_line_naming_its_task(capsys, tmp_path, body, named):
    path = tmp_path / "mix.yaml"
    text = TOY.read_text().replace("\ntask:", "\nunused_task:")
    cfg = {k: v for k, v in __import__("yaml").safe_load(text).items() if k != "unused_task"}
    path.write_text(__import__("yaml").safe_dump(cfg) + f"tasks:\n  {body}\n")
    assert_one_line(*cli(capsys, "config", "show", path), named)


def _billion_laughs() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 10)}]")
    return "\n".join(lines) + "\nname: boom\n"


FILES = [  # (file bytes, what the message names besides the path)
    (None, "config file not found"),
    (b"name: x\nseed: \xff\xfe\n", "not UTF-8"),
    (b"name: [unclosed\n", "not valid YAML at line"),
    (b"- a\n- b\n", "expected a mapping"),
    (b"name: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    (_billion_laughs().encode(), "aliases (*name) expand to"),
    (b"name: x\ncodecs: &c {a: *c}\n", "refers to itself"),
    (b"name: x\n" + b"# padding\n" * 500_000, "too big for a config file"),
    (b"seed: 1\n", "missing required key(s) name"),
    (b"name: x\nnmae: y\n", "Did you mean 'name'"),
]


@pytest.mark.parametrize("content,named", FILES, ids=[n for _, n in FILES])
def test_a_bad_config_file_is_one_line_naming_the_file(capsys, tmp_path, content, named):
    path = tmp_path / "bad.yaml"
    if content is not None:
        path.write_bytes(content)
    assert_one_line(*cli(capsys, "config", "show", path), str(path), named)


# --------------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory, autoload_plugins) -> Path:
    """A finished toy run (codec pre-stages, prior, checkpoints) that the cases below copy and damage."""
    run_dir = tmp_path_factory.mktemp("bad_inputs") / "run"
    train(load_config(TOY, QUICK), run_dir, progress=False)
    return run_dir


@pytest.fixture
def copy(run, tmp_path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


ARGS = [  # (argv after `latentbridge`, with RUN for a copy of the toy run; what the line names)
    (["sample", "RUN", "--guidance", "nan"], "--guidance: 'nan' is not a finite number"),
    (["sample", "RUN", "--guidance", "inf"], "not a finite number"),
    (["sample", "RUN", "--samples", "0"], "--samples: '0' must be at least 1"),
    (["eval", "RUN", "--samples", "-3"], "--samples"),
    (["eval", "RUN", "--guidance", "x"], "'x' is not a number"),
    (["reconstruct", "RUN", "-n", "0"], "-n"),
    (["sample", "RUN", "--task", "nope"], "nope"),
    (["eval", "RUN", "--evaluator", "nope"], "nope"),
    (["train", TOY, "positional"], "unexpected argument 'positional'"),
    (["train", TOY, "--train.steps"], "--train.steps"),
    (["sample", "RUN", "--no-such-flag"], "--no-such-flag"),
    (["codecs", "show", "nope"], "nope"),
    (["datasets", "show", "nope"], "nope"),
    (["evaluators", "show", "nope"], "nope"),
    (["codecs", "frobnicate"], "frobnicate"),
    (["sample", "NOWHERE"], "NOWHERE"),
    (["eval", "NOWHERE"], "NOWHERE"),
    (["reconstruct", "NOWHERE"], "NOWHERE"),
]


@pytest.mark.parametrize("argv,named", ARGS, ids=[" ".join(map(str, a)) for a, _ in ARGS])
def test_a_bad_command_line_is_one_line(capsys, copy, tmp_path, argv, named):
    where = {"RUN": str(copy), "NOWHERE": str(tmp_path / "nowhere")}
    argv = [where.get(str(a), a) for a in argv]
    assert_one_line(*cli(capsys, *argv), where.get(named, named))


# --------------------------------------------------------------------------------------------------
# Run directories and checkpoints
# --------------------------------------------------------------------------------------------------


def _nan_ema(run: Path) -> str:
    path = run / "checkpoints" / "step_0000004" / "ema.safetensors"
    ema = load_file(str(path))
    name = sorted(ema)[0]
    ema[name] = torch.full_like(ema[name], float("nan"))
    save_file(ema, str(path))
    return "NaN or infinite"


def _write(path: Path, text: str, named: str) -> str:
    path.write_text(text)
    return named


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _restat(run: Path) -> str:
    codec = registries().codecs.load(run / "codecs" / "point")
    codec.stats.set(codec.stats.shift + 1.0, codec.stats.scale)
    codec.save_pretrained(run / "codecs" / "point")
    return "point"


RUN_DAMAGE = {  # how a copy of the run is damaged -> (the command, what the line names)
    "latest names another run's checkpoint": (lambda r: _write(r / "checkpoints" / "latest", "../../other/step_0000002\n",
                                                               "not one of this run's checkpoints"), ["sample"]),
    "truncated EMA weights": (lambda r: _truncate(r / "checkpoints" / "step_0000004" / "ema.safetensors") or "step_0000004",
                              ["sample"]),
    "NaN EMA weights": (_nan_ema, ["eval"]),
    "codec stats changed since the checkpoint": (_restat, ["sample"]),
    "no config.yaml": (lambda r: (r / "config.yaml").unlink() or "config.yaml", ["eval"]),
    "no checkpoints": (lambda r: shutil.rmtree(r / "checkpoints") or "checkpoint", ["sample"]),
    "config.yaml not YAML": (lambda r: _write(r / "config.yaml", "name: [\n", "config.yaml"), ["sample"]),
    "truncated state.json": (lambda r: _truncate(r / "checkpoints" / "step_0000004" / "state.json") or "step_0000004",
                             ["sample"]),
    "a codec directory missing": (lambda r: shutil.rmtree(r / "codecs" / "label") or "label", ["sample"]),
    "new training into a run holding work": (lambda r: "already holds a run", ["train", TOY, "--run-dir", "RUN", *QUICK]),
    "--resume with a changed config": (lambda r: "prior.depth", ["train", TOY, "--run-dir", "RUN", "--resume", *QUICK,
                                                                 "--prior.depth=3"]),
    "--resume with another experiment's run": (lambda r: "not 'other'", ["train", TOY, "--run-dir", "RUN", "--resume",
                                                                         "--name=other"]),
    "truncated optimizer state at --resume": (lambda r: _truncate(r / "checkpoints" / "step_0000004" / "optimizer.pt")
                                              or "step_0000004", ["train", TOY, "--run-dir", "RUN", "--resume", *QUICK]),
}


@pytest.mark.parametrize("damage", list(RUN_DAMAGE))
def test_a_damaged_run_is_one_line_naming_what_is_wrong(capsys, copy, damage):
    make, argv = RUN_DAMAGE[damage]
    named = make(copy)
    if argv[0] in ("sample", "eval"):
        argv = [*argv, copy, "--samples", "2"]
    argv = [copy if a == "RUN" else a for a in argv]
    assert_one_line(*cli(capsys, *argv, "--no-progress"), named)


def test_resume_into_an_empty_directory_is_one_line(capsys, tmp_path):
    assert_one_line(*cli(capsys, "train", TOY, "--run-dir", tmp_path / "empty", "--resume", *QUICK), "holds no run to continue")


def test_a_run_directory_that_is_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    assert_one_line(*cli(capsys, "train", TOY, "--run-dir", tmp_path / "file", *QUICK), str(tmp_path / "file"))


# --------------------------------------------------------------------------------------------------
# Saved codecs
# --------------------------------------------------------------------------------------------------


def _meta_edit(change):
    def edit(directory: Path) -> None:
        meta = json.loads((directory / "codec.json").read_text())
        change(meta)
        (directory / "codec.json").write_text(json.dumps(meta))
    return edit


SAVED_CODEC = {
    "codec.json not JSON": (lambda d: (d / "codec.json").write_text("{not json"), "codec.json"),
    "codec.json missing": (lambda d: (d / "codec.json").unlink(), "codec.json"),
    "weights missing": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
    "weights truncated": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors"),
    "unknown codec name": (_meta_edit(lambda m: m.update(codec="nope")), "nope"),
    "config field of another version": (_meta_edit(lambda m: m["config"].update(no_such_field=1)), "no_such_field"),
    "weights of another shape": (_meta_edit(lambda m: m["config"].update(latent_dim=m["config"]["latent_dim"] + 1)),
                                 "model.safetensors"),
}


@pytest.mark.parametrize("damage", list(SAVED_CODEC))
def test_a_damaged_saved_codec_is_one_line(capsys, copy, damage):
    make, named = SAVED_CODEC[damage]
    codec_dir = copy / "codecs" / "point"
    make(codec_dir)
    assert_one_line(*cli(capsys, "reconstruct", codec_dir, "--out", copy / "out"), named)


# --------------------------------------------------------------------------------------------------
# Data files
# --------------------------------------------------------------------------------------------------


def _not_a_wav(root: Path) -> dict:
    D.write_audiofolder(root, 4)
    sorted(root.rglob("*.wav"))[0].write_bytes(b"RIFF" + bytes(range(200)))
    return {"path": str(root)}


def _truncated_png(root: Path) -> dict:
    D.write_imagefolder(root, 6)
    png = sorted(root.rglob("*.png"))[0]
    png.write_bytes(png.read_bytes()[:60])
    return {"path": str(root)}


def _text(name: str, content: bytes):
    def make(root: Path) -> dict:
        root.mkdir(parents=True)
        (root / name).write_bytes(content)
        return {"path": str(root / name)}
    return make


DATA_FILES = {  # data set, how its files are made, what the line names
    "truncated PNG": ("imagefolder", _truncated_png, ".png"),
    "WAV that is not audio": ("audiofolder", _not_a_wav, ".wav"),
    "binary text file": ("text", _text("noise.txt", bytes(range(256)) * 8), "noise.txt"),
    "non-UTF-8 JSONL": ("text", _text("latin.jsonl", b'{"text": "caf\xe9"}\n'), "latin.jsonl"),
    "JSONL line that is not JSON": ("text", _text("broken.jsonl", b'{"text": "fine"}\n{not json\n'), "broken.jsonl:2"),
    "JSONL without the column": ("text", _text("other.jsonl", b'{"title": "no text here"}\n' * 4), "other.jsonl"),
    "CSV without the column": ("text", _text("other.csv", b"title\nno text here\n"), "other.csv"),
}


@pytest.mark.parametrize("case", list(DATA_FILES))
def test_a_bad_data_file_is_one_line_naming_the_file(tmp_path, case):
    kind, make, named = DATA_FILES[case]
    options = {**make(tmp_path / "data"), "on_error": "fail", "test_fraction": 0.0, "validation_fraction": 0.0,
               "num_workers": 0}
    with pytest.raises(LatentbridgeError) as err:
        reader = StreamReader(registries().datasets.create(kind, options), "train", 2, seed=0, rank=0, world=1)
        try:
            for _ in range(8):
                reader.next()
        finally:
            reader.close()
    assert_typed(err.value, (DataFileError, ConfigError), named)


EMPTY_DATA = {
    "empty text file": ("text", _text("empty.txt", b""), "empty.txt"),
    "missing data path": ("text", lambda root: {"path": str(root / "nowhere.jsonl")}, "nowhere.jsonl"),
    "image folder without images": ("imagefolder", lambda root: root.mkdir() or {"path": str(root)}, "no image files"),
    "audio folder without audio": ("audiofolder", lambda root: root.mkdir() or {"path": str(root)}, "data"),
}


@pytest.mark.parametrize("case", list(EMPTY_DATA))
def test_empty_or_missing_data_is_one_line(tmp_path, case):
    kind, make, named = EMPTY_DATA[case]
    with pytest.raises(ConfigError) as err:
        registries().datasets.create(kind, {**make(tmp_path / "data"), "test_fraction": 0.0,
                                            "validation_fraction": 0.0}).shards("train")
    assert_typed(err.value, ConfigError, named)


def test_training_on_a_bad_data_file_is_one_line(capsys, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b'{"text": "a gloss"}\n' * 40 + b"\xff\xfe not text\n")
    code, err = cli(capsys, "train", ROOT / "tests" / "configs" / "stream_text.yaml", "--run-dir", tmp_path / "run",
                    "--no-progress", f"--data.config.path={corpus}", "--data.config.on_error=fail",
                    "--data.config.num_workers=0", "--data.config.test_fraction=0", "--train.steps=20")
    assert_one_line(code, err, "corpus.jsonl:41", "on_error=skip")


# --------------------------------------------------------------------------------------------------
# Plugins' outputs and API calls
# --------------------------------------------------------------------------------------------------


class _Decoder(IdentityCodec):
    name = "bad-decoder"
    returns = "nan"

    def raw_decode(self, z, lengths):
        items = super().raw_decode(z, lengths)
        if self.returns == "nan":
            return [torch.full_like(x, float("nan")) for x in items]
        if self.returns == "short":
            return items[:-1]
        return {"items": items}


@pytest.mark.parametrize("returns,named", [("nan", "NaN or infinite"), ("short", "returned 1 items"),
                                           ("dict", "must return a list of items, got dict")])
def test_a_plugin_decoder_output_is_checked(returns, named):
    codec = _Decoder()
    codec.returns = returns
    latents = codec.encode_items([torch.zeros(4, codec.latent_spec.dim)] * 2)
    with pytest.raises(CodecOutputError) as err:
        codec.decode(latents)
    assert_typed(err.value, CodecOutputError, "bad-decoder", named)


def test_a_plugin_decoder_output_check_would_fail_without_the_check():
    """The property itself: without check_decoded a NaN decode goes through silently."""
    codec = _Decoder()
    latents = codec.encode_items([torch.zeros(4, codec.latent_spec.dim)])
    raw = codec.raw_decode(codec.stats.denormalize(latents.values), latents.lengths)
    assert torch.isnan(raw[0]).all()


@pytest.fixture(scope="module")
def pipeline(run) -> Pipeline:
    return Pipeline.from_pretrained(run)


API = {
    "generate guidance NaN": (lambda p: p.generate({"label": [1]}, guidance=float("nan")), ConfigError, "guidance"),
    "generate guidance list with inf": (lambda p: p.generate({"label": [1]}, guidance=[float("inf")]), ConfigError, "guidance"),
    "generate steps 0": (lambda p: p.generate({"label": [1]}, steps=0), ConfigError, "steps"),
    "generate batch_size 0": (lambda p: p.generate({"label": [1]}, batch_size=0), ConfigError, "batch_size"),
    "generate unknown role": (lambda p: p.generate({"colour": [1]}), ConfigError, "colour"),
    "generate uneven conditions": (lambda p: p.generate({"label": [1, 2]}, prompts=["x"]), ConfigError, "one item per example"),
    "decode another codec's latents": (lambda p: p.codecs["point"].decode(Latents("other", torch.zeros(1, 1, 2),
                                                                                  torch.ones(1, dtype=torch.long))),
                                       CodecOutputError, "other"),
    "decode latents of the wrong width": (lambda p: p.codecs["point"].decode(Latents("vector", torch.zeros(1, 1, 99),
                                                                                     torch.ones(1, dtype=torch.long))),
                                          CodecOutputError, "99"),
    "unknown codec": (lambda p: registries().codecs.get("nope"), UnknownNameError, "nope"),
    "unknown data set": (lambda p: registries().datasets.create("nope", {}), UnknownNameError, "nope"),
    "pipeline of a missing run": (lambda p: Pipeline.from_pretrained("/nonexistent/run"), LatentbridgeError, "/nonexistent/run"),
}


@pytest.mark.parametrize("case", list(API))
def test_a_bad_api_call_raises_a_typed_one_line_error(pipeline, case):
    call, cls, named = API[case]
    with pytest.raises(LatentbridgeError) as err:
        call(pipeline)
    assert_typed(err.value, cls, named)


def test_there_are_at_least_80_bad_inputs():
    count = (len(OVERRIDES) + len(MIXTURES) + len(FILES) + len(ARGS) + len(RUN_DAMAGE) + 2 + len(SAVED_CODEC)
             + len(DATA_FILES) + len(EMPTY_DATA) + 1 + 3 + len(API))
    assert count >= 80, count
