"""A Cola DLM release as a latentbridge experiment: its config, a Pipeline, a run directory to sample or train from.

    pipe = latentbridge_cola.pipeline("hf_models")        # the release root (cola_dlm/cola_vae, cola_dlm/cola_dit, tokenizer.json)
    pipe = Pipeline.from_pretrained("hf_models")          # the same, through the cola-dit backbone's experiment_for
    pipe.generate(prompts=["Question: What is the capital of France? Answer:"], target="text", max_tokens=32)

    latentbridge-cola import hf_models runs/cola        # a run directory: latentbridge sample runs/cola, eval, ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentbridge.config import ExperimentConfig
from latentbridge.errors import LatentbridgeError
from latentbridge.typedconfig import from_dict, save_config

GENERATION = {"steps": 16, "solver": "euler", "shift": 1.0, "guidance": [7.0], "unconditional": "block"}
"""The release's generation: 16 Euler steps per block from t = 1000 to 0, guidance 7 against the block alone."""


def experiment_data(path: str | Path, *, name: str = "cola-dlm", codec: dict[str, Any] | None = None,
                    prior: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """experiment_config's plain data (what a config.yaml would hold)."""
    path = str(Path(path).expanduser())
    return {
        "name": name,
        "codecs": {"text": {"codec": "cola-vae", "config": {"path": path, **(codec or {})}}},
        "task": {"target": "text"},
        "prior": {"backbone": "cola-dit", "config": {"path": path, **(prior or {})}},
        "sampling": dict(GENERATION),
        "eval": {"guidance_scales": [7.0]},  # `latentbridge sample` / `eval` at the release's guidance unless told
        **sections,
    }


def experiment_config(path: str | Path, *, name: str = "cola-dlm", codec: dict[str, Any] | None = None,
                      prior: dict[str, Any] | None = None, **sections: Any) -> ExperimentConfig:
    """An experiment over the release at `path`: the text role through `cola-vae`, the prior `cola-dit`, text
    continuation, the release's generation settings. `codec` / `prior`: more options of each; `sections`: other
    top-level sections (train, data, ...) as plain data."""
    return from_dict(ExperimentConfig, experiment_data(path, name=name, codec=codec, prior=prior, **sections), path="cola")


def pipeline(path: str | Path, registries=None, **options: Any):
    """A latentbridge Pipeline over the release at `path` (released weights, no training); `options` as for
    experiment_config."""
    from latentbridge.pipeline import Pipeline
    from latentbridge.runs import built_run

    run = built_run(experiment_config(path, **options), Path(path), registries)
    return Pipeline(run.cfg, run.codecs, run.prior, run.layout, run.registries)


def write_run(path: str | Path, run_dir: str | Path, registries=None, **options: Any) -> Path:
    """A latentbridge run directory over the release: config.yaml and the codec saved under codecs/text (the prior's
    weights are read from the release when the run is loaded). `latentbridge sample RUN_DIR` and `eval` work on it."""
    from latentbridge.build import build_codecs
    from latentbridge.errors import ConfigError
    from latentbridge.plugins import registries as default_registries

    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} is a run directory already; choose a new one.")
    reg = registries or default_registries()
    cfg = experiment_config(path, **options)
    codecs = build_codecs(cfg, reg)
    run_dir.mkdir(parents=True, exist_ok=True)
    codecs["text"].save_pretrained(run_dir / "codecs" / "text")
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentbridge-cola", description="The released Cola DLM in latentbridge.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("import", help="write a latentbridge run directory over a Cola DLM release directory")
    p.add_argument("release", help="the release root (holding cola_dlm/cola_vae, cola_dlm/cola_dit, tokenizer.json)")
    p.add_argument("run_dir", help="the run directory to write")
    p = sub.add_parser("params", help="parameter counts of a release's VAE and DiT (computed on the meta device)")
    p.add_argument("release")
    args = parser.parse_args(argv)
    try:
        if args.command == "import":
            out = write_run(args.release, args.run_dir)
            print(f"wrote {out}: latentbridge sample {out} --prompt '...'")
        else:
            from latentbridge_cola.checkpoint import part_directory, read_config
            from latentbridge_cola.dit import DiTArch
            from latentbridge_cola.dit import count_parameters as dit_count
            from latentbridge_cola.vae import VAEArch
            from latentbridge_cola.vae import count_parameters as vae_count
            vd, dd = part_directory(args.release, "vae"), part_directory(args.release, "dit")
            vae = vae_count(VAEArch.from_json(read_config(vd, "vae"), str(vd)))
            dit = dit_count(DiTArch.from_json(read_config(dd, "dit"), str(dd)))
            print(f"Text VAE {vae:,}  DiT {dit:,}  total {vae + dit:,}")
    except (LatentbridgeError, OSError) as err:
        print(f"latentbridge-cola: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
