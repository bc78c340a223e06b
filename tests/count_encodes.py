"""Train tests/configs/text_two_processes.yaml in one process and in two (torchrun), counting the items each process
encodes with its codec (tests/test_your_data.py::test_each_process_encodes_only_its_slice). Prints one JSON line:
{"one": [items], "two": [items of rank 0, of rank 1], "max_rel_diff": largest relative difference of the losses}."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
CONFIG = ROOT / "tests" / "configs" / "text_two_processes.yaml"


def worker(run_dir: str) -> None:
    from latentbridge.cli import main
    from latentbridge.train.trainer import Trainer
    from latentbridge_text_vae.codec import TextVAE

    count = [0]
    raw_encode = TextVAE.raw_encode

    def counting(self, batch):
        count[0] += int(batch["tokens"].shape[0])
        return raw_encode(self, batch)

    TextVAE.raw_encode = counting
    fit = Trainer.fit

    def counted_fit(self):  # count the training steps' encodes, not the codec's statistics fitted before them
        count[0] = 0
        return fit(self)

    Trainer.fit = counted_fit
    code = main(["train", str(CONFIG), "--run-dir", run_dir, "--no-progress"])
    rank = int(os.environ.get("RANK", "0"))
    Path(run_dir, f"encoded.{rank}").write_text(str(count[0]))
    sys.exit(code or 0)


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {r["step"]: r["loss"] for r in rows if r["stage"] == "prior"}


def launch(tmp: Path) -> None:
    bin_dir = Path(sys.executable).parent
    out = {}
    for name, launcher in (("one", [sys.executable]), ("two", [str(bin_dir / "torchrun"), "--nproc_per_node", "2"])):
        run = tmp / name
        proc = subprocess.run([*launcher, __file__, "worker", str(run)], capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-3000:])
            sys.exit(1)
        out[name] = [int((run / f"encoded.{r}").read_text()) for r in range(1 if name == "one" else 2)]
    a, b = losses(tmp / "one"), losses(tmp / "two")
    out["max_rel_diff"] = max(abs(a[s] - b[s]) / abs(a[s]) for s in a) if sorted(a) == sorted(b) else float("inf")
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2])
    else:
        launch(Path(sys.argv[1]))
