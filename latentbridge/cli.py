"""The `latentbridge` command: each verb calls one library function.

    latentbridge codecs list|show|check       installed codecs (latentbridge.plugins, latentbridge.testing)
    latentbridge datasets list|show           installed data sets
    latentbridge evaluators list|show         installed evaluators
    latentbridge priors list|show             installed prior backbones
    latentbridge config show FILE [--k=v ..]  the resolved experiment config as YAML
    latentbridge train FILE [--k=v ..]        latentbridge.train.experiment.train (--resume, --init-from)
    latentbridge cache FILE [--k=v ..]        latentbridge.train.experiment.cache: a sharded latent cache
    latentbridge sample RUN_DIR               latentbridge.pipeline.sample_run: generate and write items
    latentbridge eval RUN_DIR                 latentbridge.evaluate.run.evaluate_run: score with the evaluators
    latentbridge reconstruct PATH             latentbridge.evaluate.codecs.reconstruct

Nothing here knows a modality, a data set or an evaluator by name. Bad input ends with one line naming the problem and the fix (exit code 2), never a traceback;
`--debug` shows the traceback anyway.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in latentbridge reaches for a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

from latentbridge import __version__  # noqa: E402
from latentbridge.errors import ConfigError, LatentbridgeError, describe_os_error  # noqa: E402
from latentbridge.typedconfig import dump_yaml  # noqa: E402


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
    from latentbridge.plugins import registries

    rows = []
    for entry in registries().codecs.entries():
        try:
            spec = entry.cls().latent_spec  # default config
        except LatentbridgeError:  # a codec that needs options (e.g. a model directory): its spec comes from them
            spec = None
        rows.append({
            "name": entry.name,
            "modality": entry.cls.modality,
            "dim": spec.dim if spec else "(config)",
            "block_size": spec.block_size if spec else "(config)",
            "tokens": ("variable" if not spec.fixed else spec.tokens_per_item) if spec else "(config)",
            "end": spec.end if spec else "-",
            "decodes": "yes" if entry.cls.decodes else "no (condition only)",
            "provider": entry.provider,
        })
    return _print_rows(rows, args.json, "codec(s). Latent specs are for default configs; `latentbridge codecs show NAME` lists options.")


def _print_rows(rows: list[dict], as_json: bool, footer: str) -> int:
    from latentbridge.plugins import registries

    broken = registries().broken
    if as_json:
        print(json.dumps(rows + [{"name": b.entry_point, "provider": b.provider, "broken": b.error} for b in broken], indent=2))
    else:
        header = list(rows[0]) if rows else ["name"]
        print(_table([[str(r[k]) for k in header] for r in rows], header))
        print(f"\n{len(rows)} {footer}")
        for b in broken:
            print(f"BROKEN plugin '{b.entry_point}' from {b.provider}, left out: {b.error}")
    return 0


def cmd_datasets_list(args: argparse.Namespace) -> int:
    from latentbridge.plugins import registries

    rows = [{"name": e.name, "fields": ", ".join(f"{m}: {f}" for m, f in e.cls.fields.items()), "provider": e.provider}
            for e in registries().datasets.entries()]
    return _print_rows(rows, args.json, "data set(s). `latentbridge datasets show NAME` lists a data set's options (data.config).")


def cmd_evaluators_list(args: argparse.Namespace) -> int:
    from latentbridge.plugins import registries

    def scope(cls) -> str:
        cond = "any" if cls.cond is None else (" + ".join(cls.cond) or "nothing")
        out = f"{cond} -> {cls.target or 'any'}"
        return out + (f" on {', '.join(cls.datasets)}" if cls.datasets else "")

    rows = [{"name": e.name, "scores": scope(e.cls), "what": e.cls.description, "provider": e.provider}
            for e in registries().evaluators.entries()]
    return _print_rows(rows, args.json, "evaluator(s). `latentbridge eval RUN_DIR` runs every one that applies to a task.")


def cmd_priors_list(args: argparse.Namespace) -> int:
    from latentbridge.plugins import registries

    rows = [{"name": e.name, "what": " ".join((e.cls.__doc__ or "").split())[:80], "provider": e.provider}
            for e in registries().priors.entries()]
    return _print_rows(rows, args.json, "prior backbone(s). Pick one with prior.backbone; `latentbridge priors show NAME` "
                                        "lists its options (prior.config).")


def cmd_priors_show(args: argparse.Namespace) -> int:
    if args.name == "dit":
        print("# prior backbone 'dit' from latentbridge: its options are the `prior` section's own fields")
        print("# (`latentbridge config show FILE --docs` prints them with their docs)")
        return 0
    return _show("priors", args)


def _show(kind: str, args: argparse.Namespace) -> int:
    from latentbridge.plugins import registries

    reg = getattr(registries(), kind)
    entry = reg.entry(args.name)
    print(f"# {reg.kind} '{entry.name}' from {entry.provider}")
    print(f"# class {entry.cls.__module__}.{entry.cls.__qualname__}; config {entry.cls.config_class.__name__}")
    print(dump_yaml(entry.cls.config_class(), docs=True), end="")
    return 0


def cmd_codecs_show(args: argparse.Namespace) -> int:
    return _show("codecs", args)


def cmd_datasets_show(args: argparse.Namespace) -> int:
    return _show("datasets", args)


def cmd_evaluators_show(args: argparse.Namespace) -> int:
    return _show("evaluators", args)


def cmd_codecs_check(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from latentbridge.plugins import registries
    from latentbridge.testing import CodecConformance, run_checks
    from latentbridge.typedconfig import apply_overrides, from_dict, parse_overrides, to_dict

    reg = registries().codecs
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
        if args.all:
            try:
                entry.cls(config)
            except LatentbridgeError as err:  # e.g. a pretrained codec with no model directory: nothing to check yet
                print(f"codec '{name}' from {entry.provider}: skipped, it needs options ({err}). Check it with "
                      f"`latentbridge codecs check {name} --FIELD=VALUE`.\n")
                continue
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
    from latentbridge.build import resolve_codec_configs
    from latentbridge.config import load_config
    from latentbridge.evaluate.run import evaluator_options
    from latentbridge.plugins import registries
    from latentbridge.tasks import tasks_of

    cfg = load_config(args.file, _split_overrides(extra, "config show"))
    reg = registries()
    resolve_codec_configs(cfg, reg.codecs)  # unknown codec names and bad codec options fail here, with their path
    tasks_of(cfg, reg)  # so do unknown data sets and bad data-set options
    evaluator_options(cfg, reg)  # and unknown evaluators and bad evaluator options
    print(dump_yaml(cfg, docs=args.docs), end="")
    return 0


def cmd_train(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from latentbridge.config import load_config
    from latentbridge.train.experiment import train

    cfg = load_config(args.file, _split_overrides(extra, "train"))
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    train(cfg, run_dir, resume=args.resume, init_from=args.init_from, progress=not args.no_progress)
    print(f"trained the {cfg.train.stage} stage of '{cfg.name}' for {cfg.train.steps} steps; run directory {run_dir}")
    if cfg.train.stage == "codec":  # a codec run: its held-out report, as `latentbridge reconstruct RUN_DIR` writes it
        from latentbridge.evaluate.codecs import reconstruct

        _print_reconstruction(reconstruct(run_dir))
    return 0


def cmd_cache(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from latentbridge.config import load_config
    from latentbridge.train.experiment import cache

    cfg = load_config(args.file, _split_overrides(extra, "cache"))
    dirs = cache(cfg, args.run_dir, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        for role, directory in dirs.items():
            meta = json.loads((directory / "meta.json").read_text())
            print(f"{role}: {meta['count']} items in {len(meta['counts'])} shards at {directory}")
    return 0


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from latentbridge.evaluate.codecs import reconstruct

    _print_reconstruction(reconstruct(args.path, args.out, role=args.role, splits=args.split, n=args.n, files=args.files or (),
                                      data=args.data))
    return 0


def _print_reconstruction(result: dict) -> None:
    rows = []
    for split, row in result["held_out"].items():
        rows += [[split, k, f"{v:.4f}" if isinstance(v, float) else str(v)] for k, v in row.items()]
    print(_table(rows, ["split", "figure", "value"]))
    print(f"wrote {len(result['written'])} files to {result['out']} and the figures to {result['report']}")


def cmd_sample(args: argparse.Namespace) -> int:
    from latentbridge.pipeline import sample_run

    written = sample_run(args.run_dir, tasks=args.task, prompts=args.prompt, n=args.samples or 16, guidance_scales=args.guidance,
                         out=args.out, progress=not args.no_progress, steps=args.steps, solver=args.solver,
                         document=args.document, prefix_items=args.prefix_items, max_items=args.max_items)
    folders = sorted({str(p.parent) for p in written})
    for folder in folders:
        print(f"wrote {sum(str(p.parent) == folder for p in written)} file(s) to {folder}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from latentbridge.evaluate.report import format_report
    from latentbridge.evaluate.run import evaluate_run

    report = evaluate_run(args.run_dir, samples=args.samples, guidance_scales=args.guidance, evaluators=args.evaluator,
                          progress=not args.no_progress, steps=args.steps, solver=args.solver)
    print(format_report(report))
    print(f"wrote {Path(args.run_dir) / 'report.md'}, report.json and samples/")
    return 0


# --------------------------------------------------------------------------------------------------
# parser and entry point
# --------------------------------------------------------------------------------------------------


def _sampling_arguments(p: argparse.ArgumentParser) -> None:
    from latentbridge.flow import SOLVERS

    p.add_argument("--steps", type=_positive, help="ODE steps per block (default: the config's sampling.steps)")
    p.add_argument("--solver", choices=list(SOLVERS), help="ODE solver (default: the config's sampling.solver); shortcut "
                                                            "for a prior trained with train.objective=shortcut")


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="YAML experiment config")
    p.add_argument("--run-dir", help="run directory (default runs/<experiment name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint (exactly)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one `--help` away), exit code 2 as argparse's own."""

    def error(self, message: str):
        self.exit(2, f"latentbridge: error: {self.prog}: {message}. See `{self.prog} --help`.\n")


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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

    listers = {"datasets": (cmd_datasets_list, cmd_datasets_show), "evaluators": (cmd_evaluators_list, cmd_evaluators_show),
               "priors": (cmd_priors_list, cmd_priors_show)}
    for kind, word in (("datasets", "data set"), ("evaluators", "evaluator"), ("priors", "prior backbone")):
        group = sub.add_parser(kind, allow_abbrev=False, help=f"list and inspect installed {word}s",
                               description=f"{word.capitalize()}s come from plugins (latentbridge_register_{kind} hook).")
        gsub = group.add_subparsers(dest="action", metavar="ACTION", required=True)
        p = gsub.add_parser("list", help=f"installed {word}s and the distributions that provide them")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.set_defaults(func=listers[kind][0])
        p = gsub.add_parser("show", help=f"a {word}'s options with defaults and docs")
        p.add_argument("name", help=f"{word} name, as in `latentbridge {kind} list`")
        p.set_defaults(func=listers[kind][1])

    config = sub.add_parser("config", allow_abbrev=False, help="inspect experiment configs",
                            description="Experiment configs are YAML files (see configs/).")
    fsub = config.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = fsub.add_parser("show", allow_abbrev=False, help="print the resolved config, after overrides and validation",
                        description="Load FILE, apply --dotted.key=value overrides, validate against the schema and the "
                                    "installed codecs, and print the resolved YAML.")
    p.add_argument("file", help="YAML config file")
    p.add_argument("--docs", action="store_true", help="write each field's docstring as a comment")
    p.set_defaults(func=cmd_config_show, takes_overrides=True)

    p = sub.add_parser("train", allow_abbrev=False, help="train the stage a config names (codec, prior or joint)",
                       description="Train with accelerate into a run directory: config.yaml, metrics.jsonl, checkpoints/, loss.png "
                                   "(a codec stage also its held-out report). Multi-process: torchrun --nproc_per_node N -m "
                                   "latentbridge train FILE (see docs/training.md).")
    _run_arguments(p)
    p.add_argument("--init-from", help="start a new run from the weights of this checkpoint (or run directory)")
    p.set_defaults(func=cmd_train, takes_overrides=True)

    p = sub.add_parser("cache", allow_abbrev=False, help="encode a data set once with frozen codecs into a sharded latent cache",
                       description="Encode the training items of the task (or of each data set of a mixture) with the frozen "
                                   "codecs (from --run-dir's codecs/, or their pretrained weights) into safetensors shards under "
                                   "train.latent_cache_dir (or RUN/latent_cache), which training with --train.cache_latents=true "
                                   "streams from. Under torchrun --nproc_per_node N "
                                   "-m latentbridge cache FILE each process encodes its own shards; run again after a kill, it "
                                   "continues.")
    p.add_argument("file", help="YAML experiment config")
    p.add_argument("--run-dir", help="a run whose trained codecs encode (and whose latent_cache/ receives the cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_cache, takes_overrides=True)

    p = sub.add_parser("sample", allow_abbrev=False, help="generate from a trained run and write the items (no scores)",
                       description="Load RUN_DIR's codecs and the EMA prior of its latest checkpoint; generate each task (or --task) "
                                   "from --prompt items or from held-out examples of its data set, across guidance scales; write "
                                   "the items through the target codec (samples/<task>/g<scale>/).")
    p.add_argument("run_dir", help="run directory written by `latentbridge train`")
    p.add_argument("--guidance", type=_finite, nargs="+", help="guidance scales (default: the config's eval.guidance_scales)")
    p.add_argument("--samples", type=_positive, help="held-out examples to start from (default 16)")
    p.add_argument("--prompt", action="append", help="an item of the task's one condition (e.g. a caption), or text to continue "
                                                      "for a task without conditions (repeatable)")
    p.add_argument("--task", action="append", help="sample this task (repeatable; default: all of the run's tasks)")
    p.add_argument("--out", help="output directory (default: the run's samples/)")
    p.add_argument("--document", action="store_true", help="continue documents with the run's document task: from the first "
                   "--prefix-items items of held-out documents, or from each --prompt as a one-text-item prefix; writes an HTML "
                   "page per document (samples/<task>/g<scale>/index.html)")
    p.add_argument("--prefix-items", type=_positive, default=1, help="--document: held-out items each document starts from (default 1)")
    p.add_argument("--max-items", type=_positive, default=6, help="--document: most items generated per document (default 6)")
    _sampling_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", allow_abbrev=False, help="score every task of a trained run and write report.md",
                       description="Run every installed evaluator that applies to each task (`latentbridge evaluators list`) "
                                   "across guidance scales and with shuffled conditions (the control), plus the prior's held-out "
                                   "fit and the target codec's reconstruction; write report.json, report.md and samples/.")
    p.add_argument("run_dir", help="run directory written by `latentbridge train`")
    p.add_argument("--guidance", type=_finite, nargs="+", help="guidance scales (default: the config's eval.guidance_scales)")
    p.add_argument("--samples", type=_positive, help="examples per evaluated set (default: the config's eval.samples)")
    p.add_argument("--evaluator", action="append", help="run only this evaluator (repeatable; default: the config's "
                                                         "eval.evaluators, or all that apply)")
    _sampling_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("reconstruct", allow_abbrev=False, help="reconstruct held-out data (or your files) through a trained codec",
                       description="Encode and decode items with a trained codec and write originals and reconstructions as the "
                                   "codec's own files, with its diagnostics in reconstructions.json (a run directory without "
                                   "--out, --files or --data: its report.json and samples/).")
    p.add_argument("path", help="a saved codec directory (codec.json) or a run directory (config.yaml)")
    p.add_argument("--out", help="output directory (default: a run's own samples/ and report.json, or reconstructions/<codec>)")
    p.add_argument("--role", help="run directories: which codec role (default: the one the run trained)")
    p.add_argument("--split", nargs="+", help="held-out splits, e.g. test photos (default: the data set's held-out sets)")
    p.add_argument("-n", type=_positive, default=16, help="items per split shown (and scored, except a run's own report, "
                                                    "which scores eval.samples; default 16)")
    p.add_argument("--files", nargs="+", help="your own files, read by the codec (read_items), instead of a data set")
    p.add_argument("--data", help="a registered data set to take held-out items from (default: the run's)")
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
        return getattr(err, "exit_code", 2)
    except OSError as err:
        line = describe_os_error(err)
        if line is None:
            return _internal(err, args.debug)
        if args.debug:
            traceback.print_exc()
        print(f"latentbridge: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("latentbridge: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug, not bad input: keep it short unless asked
        return _internal(err, args.debug)


def _internal(err: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(err)
    else:
        print(f"latentbridge: internal error: {type(err).__name__}: {err}\n"
              "Rerun with --debug for the traceback, and please report it.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
