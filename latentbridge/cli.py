"""The `latentbridge` command.

    latentbridge codecs list                  installed codecs, their latent specs and providers
    latentbridge codecs show NAME             a codec's config fields, defaults and docs
    latentbridge codecs check NAME|--all      conformance checks against installed codecs
    latentbridge config show FILE [--k=v ..]  the resolved experiment config as YAML
    latentbridge train FILE [--k=v ..]        train the configured stage (--resume, --init-from)
    latentbridge sample RUN_DIR               sample a trained run and score it
    latentbridge toy FILE [--k=v ..]          toy cross-modal experiment: train, sample, score

Bad input ends with one line naming the problem and the fix (exit code 2), never a traceback;
`--debug` shows the traceback anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in latentbridge reaches for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from latentbridge import __version__  # noqa: E402
from latentbridge.errors import ConfigError, LatentbridgeError  # noqa: E402


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _split_overrides(extra: Sequence[str], command: str) -> list[str]:
    bad = [a for a in extra if not (a.startswith("--") and "=" in a)]
    if bad:
        raise ConfigError(
            f"{command}: unexpected argument {bad[0]!r}. Overrides are written --dotted.key=value; "
            f"see `latentbridge {command} --help`."
        )
    return list(extra)


# --------------------------------------------------------------------------------------------------
# codecs
# --------------------------------------------------------------------------------------------------


def cmd_codecs_list(args: argparse.Namespace) -> int:
    from latentbridge.plugins import registry

    rows = []
    for entry in registry().entries():
        spec = entry.cls().latent_spec  # default config
        rows.append({
            "name": entry.name,
            "modality": entry.cls.modality,
            "dim": spec.dim,
            "block_size": spec.block_size,
            "tokens": spec.tokens_per_item if spec.fixed else "variable",
            "end": spec.end,
            "provider": entry.provider,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        header = list(rows[0]) if rows else ["name"]
        print(_table([[str(r[k]) for k in header] for r in rows], header))
        print(f"\n{len(rows)} codec(s). Latent specs are for default configs; `latentbridge codecs show NAME` lists options.")
    return 0


def cmd_codecs_show(args: argparse.Namespace) -> int:
    from latentbridge.config import dump_yaml
    from latentbridge.plugins import registry

    entry = registry().entry(args.name)
    print(f"# codec '{entry.name}' ({entry.cls.modality}) from {entry.provider}")
    print(f"# class {entry.cls.__module__}.{entry.cls.__qualname__}; config {entry.cls.config_class.__name__}")
    print(dump_yaml(entry.cls.config_class(), docs=True), end="")
    return 0


def cmd_codecs_check(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from latentbridge.config import apply_overrides, from_dict, parse_overrides, to_dict
    from latentbridge.plugins import registry
    from latentbridge.testing import CodecConformance, run_checks

    reg = registry()
    if args.all == bool(args.name):
        raise ConfigError("codecs check: name one codec, or pass --all (not both).")
    names = reg.names() if args.all else [args.name]
    overrides = parse_overrides(_split_overrides(extra, "codecs check"))
    if overrides and args.all:
        raise ConfigError("codecs check: config overrides apply to one codec; drop --all.")
    failed = 0
    for name in names:
        entry = reg.entry(name)
        config = from_dict(entry.cls.config_class, apply_overrides(to_dict(entry.cls.config_class()), overrides))
        case = type(f"Check_{name}", (CodecConformance,), {"codec_class": entry.cls, "codec_config": to_dict(config)})()
        results = run_checks(case)
        rows = [[r.name.removeprefix("test_"), "pass" if r.passed else "FAIL", r.message] for r in results]
        print(f"codec '{name}' from {entry.provider}")
        print(_table(rows, ["check", "result", "message"]))
        bad = sum(not r.passed for r in results)
        print(f"{len(results) - bad} passed, {bad} failed\n")
        failed += bad
    return 1 if failed else 0


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from latentbridge.config import dump_yaml, load_config
    from latentbridge.plugins import resolve_codec_configs

    cfg = load_config(args.file, _split_overrides(extra, "config show"))
    resolve_codec_configs(cfg)  # unknown codec names and bad codec options fail here, with their path
    print(dump_yaml(cfg, docs=args.docs), end="")
    return 0


def cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from pathlib import Path

    from latentbridge.config import load_config
    from latentbridge.data.sources import make_source
    from latentbridge.experiments.common import train
    from latentbridge.train.checkpoint import latest_checkpoint

    cfg = load_config(args.file, _split_overrides(extra, "train"))
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    codecs, _, _ = train(cfg, run_dir, resume=args.resume, init_from=args.init_from, progress=not args.no_progress)
    print(f"trained {cfg.train.stage} stage of '{cfg.name}' for {cfg.train.steps} steps; run directory {run_dir}; "
          f"latest checkpoint {latest_checkpoint(run_dir / 'checkpoints')}")
    if cfg.train.stage == "codec" and cfg.data.name != "gaussian_ring":
        from latentbridge.experiments.codecs import codec_report, format_codec_report

        role = cfg.train.codec_role or cfg.task.target
        entry = codec_report(cfg, run_dir, codecs, make_source(cfg.data, cfg.seed), role)
        print(format_codec_report(role, entry))
        print(f"wrote {run_dir / 'report.json'} and reconstructions in {run_dir / 'samples'}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from latentbridge.experiments.codecs import reconstruct

    result = reconstruct(args.path, args.out, role=args.role, splits=args.split, n=args.n, files=args.files or ())
    rows = []
    for split, row in result["held_out"].items():
        rows += [[split, k, f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in row.items()]
    print(_table(rows, ["split", "figure", "value"]))
    print(f"wrote {len(result['written'])} files to {result['out']} and the figures to {result['report']}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentbridge.experiments.common import load_run
    from latentbridge.experiments.toy import evaluate_run, format_report

    cfg, codecs, prior, layout = load_run(args.run_dir)
    if cfg.tasks or args.task:
        return _sample_tasks(args, cfg, codecs, prior, layout)
    if codecs[cfg.task.target].modality == "text":
        return _sample_text(args, cfg, codecs, prior, layout)
    if codecs[cfg.task.target].modality == "image" and [codecs[r].modality for r in cfg.task.cond] == ["text"]:
        return _sample_caption_to_image(args, cfg, codecs, prior, layout)
    if args.prompt:
        raise ConfigError("sample --prompt continues text; this run generates "
                          f"'{codecs[cfg.task.target].modality}' items.")
    if args.guidance:
        cfg.eval.guidance_scales = args.guidance
    if args.samples:
        cfg.eval.samples = args.samples
    report = evaluate_run(cfg, Path(args.run_dir), codecs, prior, layout, {})
    print(format_report(report))
    print(f"wrote {Path(args.run_dir) / 'samples'} and report.json")
    return 0 if report["passed"] else 1


def _sample_tasks(args: argparse.Namespace, cfg, codecs, prior, layout) -> int:
    """Each task (or --task) from a few held-out examples, or from --prompt texts: PNG grids, text files, WAVs."""
    from pathlib import Path

    from latentbridge.experiments.joint import sample_tasks

    written = sample_tasks(cfg, Path(args.run_dir), codecs, prior, layout, tasks=args.task, prompts=args.prompt,
                           n=args.samples or 16, guidance_scales=args.guidance)
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from latentbridge.experiments.joint import evaluate_run, format_report

    report = evaluate_run(args.run_dir, samples=args.samples, guidance_scales=args.guidance, progress=not args.no_progress)
    print(format_report(report))
    print(f"wrote {Path(args.run_dir) / 'report.md'}, report.json and samples/")
    return 0


def _sample_caption_to_image(args: argparse.Namespace, cfg, codecs, prior, layout) -> int:
    from pathlib import Path

    from latentbridge.experiments.multimodal import caption_grid, evaluate_caption_to_image, format_caption_to_image, generate_items

    run_dir = Path(args.run_dir)
    if args.prompt:  # your captions: one image each per guidance scale
        for g in args.guidance or cfg.eval.guidance_scales:
            images = generate_items(cfg, codecs, prior, layout, {cfg.task.cond[0]: args.prompt}, guidance=g, seed=cfg.seed)
            path = caption_grid(images, args.prompt, run_dir / "samples" / f"prompts_g{g:g}.png")
            print(f"guidance {g:g}: wrote {path}")
        return 0
    rows = evaluate_caption_to_image(cfg, run_dir, codecs, prior, layout, samples=args.samples, guidance_scales=args.guidance)
    print(format_caption_to_image(rows))
    print(f"wrote {run_dir / 'samples'} (caption_to_image_*.png) and report.json")
    return 0


def _sample_text(args: argparse.Namespace, cfg, codecs, prior, layout) -> int:
    from pathlib import Path

    from latentbridge.data.sources import make_source
    from latentbridge.experiments.text import evaluate_generation

    run_dir = Path(args.run_dir)
    result = evaluate_generation(cfg, run_dir, codecs, prior, layout, make_source(cfg.data, cfg.seed), prompts=args.prompt,
                                 samples=args.samples)
    for p, c in list(zip(result["prompts"], result["continuations"]))[:10]:
        print(f"{p} >>> {c}")
    print(json.dumps(result["row"], indent=2))
    print(f"wrote {run_dir / 'samples' / 'continuations.txt'} and report.json")
    return 0


def cmd_toy(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from pathlib import Path

    from latentbridge.config import load_config
    from latentbridge.experiments.toy import format_report, run

    cfg = load_config(args.file, _split_overrides(extra, "toy"))
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    report = run(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    print(format_report(report))
    print(f"run directory: {run_dir} (report.json, samples/points.png, loss.png, metrics.jsonl)")
    return 0 if report["passed"] else 1


# --------------------------------------------------------------------------------------------------
# parser and entry point
# --------------------------------------------------------------------------------------------------


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="YAML experiment config")
    p.add_argument("--run-dir", help="run directory (default runs/<experiment name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint (exactly)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentbridge",
        allow_abbrev=False,
        description="One flow-matching prior over the latents of any codec: text, images, audio.",
    )
    parser.add_argument("--version", action="version", version=f"latentbridge {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    codecs = sub.add_parser("codecs", allow_abbrev=False, help="list, inspect and check installed codecs",
                            description="Codecs come from plugins (entry-point group latentbridge.codecs).")
    csub = codecs.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = csub.add_parser("list", help="installed codecs: modality, latent spec, providing distribution",
                        description="List installed codecs with their latent spec (default config) and the distribution that provides each.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_codecs_list)
    p = csub.add_parser("show", help="a codec's config fields with defaults and docs",
                        description="Print a codec's config dataclass as documented YAML.")
    p.add_argument("name", help="codec name, as in `latentbridge codecs list`")
    p.set_defaults(func=cmd_codecs_show)
    p = csub.add_parser("check", allow_abbrev=False, help="run the conformance checks against an installed codec",
                        description="Run latentbridge.testing.CodecConformance against a codec and print a pass/fail "
                                    "table. Options of the codec's config can be set as --field=value. Exit code 1 if a check fails.")
    p.add_argument("name", nargs="?", help="codec name, as in `latentbridge codecs list`")
    p.add_argument("--all", action="store_true", help="check every installed codec")
    p.set_defaults(func=cmd_codecs_check, takes_overrides=True)

    config = sub.add_parser("config", allow_abbrev=False, help="inspect experiment configs",
                            description="Experiment configs are YAML files (see configs/).")
    fsub = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = fsub.add_parser("show", allow_abbrev=False, help="print the resolved config, after overrides and validation",
                        description="Load FILE, apply --dotted.key=value overrides, validate against the schema and the "
                                    "installed codecs, and print the resolved YAML.")
    p.add_argument("file", help="YAML config file")
    p.add_argument("--docs", action="store_true", help="write each field's docstring as a comment")
    p.set_defaults(func=cmd_config_show, takes_overrides=True)

    p = sub.add_parser("toy", allow_abbrev=False, help="run a toy cross-modal experiment (labels <-> 2-D points)",
                       description="Train the toy codecs and a prior from FILE (see configs/toy_*.yaml), generate, score "
                                   "against the known density across guidance scales, and write a run directory. "
                                   "Exit code 1 if a score misses its bar.")
    _run_arguments(p)
    p.set_defaults(func=cmd_toy, takes_overrides=True)

    p = sub.add_parser("train", allow_abbrev=False, help="train the stage a config names (codec, prior or joint)",
                       description="Train with accelerate into a run directory: config.yaml, metrics.jsonl, checkpoints/, loss.png. "
                                   "Multi-process: torchrun --nproc_per_node N -m latentbridge train FILE (see README).")
    _run_arguments(p)
    p.add_argument("--init-from", help="start a new run from the weights of this checkpoint (or run directory)")
    p.set_defaults(func=cmd_train, takes_overrides=True)

    p = sub.add_parser("sample", allow_abbrev=False, help="sample a trained run and score the samples",
                       description="Load RUN_DIR's codecs and the EMA prior of its latest checkpoint and generate: toy runs "
                                   "across guidance scales; text runs continue prompts block by block until the end of text; "
                                   "caption -> image runs draw emoji and digits from their captions, scored by retrieval "
                                   "and a digit classifier against shuffled-caption controls. Writes samples/ and report.json.")
    p.add_argument("run_dir", help="run directory written by `latentbridge train`")
    p.add_argument("--guidance", type=float, nargs="+", help="guidance scales (default: the config's eval.guidance_scales)")
    p.add_argument("--samples", type=int, help="samples per guidance scale (text: held-out prompts to continue)")
    p.add_argument("--prompt", action="append", help="text runs: continue this prompt; caption -> image runs: draw this "
                                                      "caption (repeatable) instead of the evaluation")
    p.add_argument("--task", action="append", help="runs with several tasks: sample this task (repeatable; default: all)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", allow_abbrev=False, help="score every task of a trained run and write report.md",
                       description="Generate each task's held-out examples across guidance scales and with shuffled conditions "
                                   "(the control), score them with the evaluators built here (emoji retrieval, digit classifier, "
                                   "scene arrangement, exact-name accuracy and MiniLM similarity, pocketsphinx word error rate), "
                                   "measure the prior's held-out fit and each codec's reconstruction; write report.json, "
                                   "report.md and samples/.")
    p.add_argument("run_dir", help="run directory written by `latentbridge train`")
    p.add_argument("--guidance", type=float, nargs="+", help="guidance scales (default: the config's eval.guidance_scales)")
    p.add_argument("--samples", type=int, help="examples per evaluated set (default: the config's eval.samples)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("reconstruct", allow_abbrev=False, help="reconstruct held-out data (or your files) through a trained codec",
                       description="Encode and decode items with a trained codec and write what to look at and listen to: "
                                   "a PNG grid (images: originals above reconstructions), WAV pairs and a log-mel panel "
                                   "(audio), a text file (text), with the codec's diagnostics in reconstructions.json.")
    p.add_argument("path", help="a saved codec directory (codec.json) or a run directory (config.yaml)")
    p.add_argument("--out", help="output directory (default: a run's own samples/ and report.json, or reconstructions/<codec>)")
    p.add_argument("--role", help="run directories: which codec role (default: the one the run trained)")
    p.add_argument("--split", nargs="+", help="held-out splits, e.g. test photos recordings (default: the data set's own)")
    p.add_argument("-n", type=int, default=16, help="items per split shown (and scored, except a run's own report, "
                                                    "which scores eval.samples; default 16)")
    p.add_argument("--files", nargs="+", help="your own images / audio files / text files instead of the data set")
    p.set_defaults(func=cmd_reconstruct)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if getattr(args, "takes_overrides", False):
            return args.func(args, extra)
        return args.func(args)
    except LatentbridgeError as err:
        if args.debug:
            traceback.print_exc()
        print(f"latentbridge: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentbridge: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: keep it short unless asked
        if args.debug:
            traceback.print_exc()
        else:
            print(f"latentbridge: internal error: {type(err).__name__}: {err}\n"
                  "Rerun with --debug for the traceback, and please report it.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
