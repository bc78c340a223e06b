"""Scoring the toy world exactly: labels <-> 2-D points on the Gaussian ring, whose density is known.

    ring    label -> vector: does each generated point look like its class (Bayes classifier), per-class MMD
            to true samples; vector -> label: accuracy, agreement with the Bayes label. Reference figures
            (true samples, label-blind samples, posterior sampling) and pass/fail checks against stated bars;
            samples/points.png shows the truth beside the generated points at each guidance scale.

latentbridge runs it across guidance scales and with the shuffled-condition control like any evaluator.
"""

from __future__ import annotations

from typing import Any

import torch

from latentbridge.errors import ConfigError
from latentbridge.evaluate import EvalSet, Evaluator, mean_cov_error, mmd2

from latentbridge_toy.ring import GaussianRing


def score_points(data: GaussianRing, generated: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
    """Label -> point: does each point look like its class (Bayes classifier), and per-class MMD to the truth."""
    out = {"class_agreement": float((data.bayes_label(generated) == labels).float().mean())}
    mmds, means, covs = [], [], []
    for k in range(data.num_classes):
        sel = labels == k
        if int(sel.sum()) < 10:
            continue
        truth, _ = data.sample(int(sel.sum()), gen, labels=torch.full((int(sel.sum()),), k))
        mmds.append(mmd2(generated[sel], truth))
        m, c = mean_cov_error(generated[sel], truth)
        means.append(m)
        covs.append(c)
    out.update(mmd2=sum(mmds) / len(mmds), mean_error=sum(means) / len(means), cov_error=sum(covs) / len(covs))
    return out


class RingEvaluator(Evaluator):
    """Label <-> point on the ring, scored against the known density."""

    name = "ring"
    datasets = ("gaussian_ring",)
    description = "exact scores of labels <-> points on the Gaussian ring, with pass/fail bars"

    @classmethod
    def applies(cls, cond, target, dataset) -> bool:
        return super().applies(cond, target, dataset) and (tuple(cond), target) in ((("label",), "vector"), (("vector",), "label"))

    def prepare(self) -> dict[str, Any]:
        ctx = self.ctx
        self.data: GaussianRing = ctx.dataset.ring
        self.to_points = ctx.codecs[ctx.task.target].modality == "vector"
        n, k = ctx.samples, self.data.num_classes
        if self.to_points and n < 10 * k:
            raise ConfigError(f"evaluator 'ring' scores each class's points against the truth and needs 10 per class: "
                              f"--samples / eval.samples of at least {10 * k} (got {n}).")
        gen = torch.Generator().manual_seed(ctx.seed + 1000)
        self.labels = torch.arange(n) % k
        self.points, _ = self.data.sample(n, gen, labels=self.labels)
        self.generated: dict[float, torch.Tensor] = {}
        if self.to_points:
            truth, _ = self.data.sample(n, gen, labels=self.labels)
            marginal, _ = self.data.sample(n, gen)
            return {"true_sample_class_agreement": float((self.data.bayes_label(truth) == self.labels).float().mean()),
                    "label_blind_mmd2": score_points(self.data, marginal, self.labels, gen)["mmd2"],
                    "noise_floor_mmd2": score_points(self.data, truth, self.labels, gen)["mmd2"],
                    "chance_class_agreement": 1.0 / k}
        post = self.data.posterior(self.points)
        return {"bayes_accuracy": float((self.data.bayes_label(self.points) == self.labels).float().mean()),
                "posterior_sampling_accuracy": float(post[torch.arange(n), self.labels].mean()),
                "chance_accuracy": 1.0 / k}

    def sets(self) -> list[EvalSet]:
        cond = self.labels.tolist() if self.to_points else list(self.points)
        return [EvalSet("ring", {self.ctx.task.cond[0]: cond}, self.labels.tolist())]

    def score(self, eval_set: EvalSet, generated: list, references: list) -> dict[str, float]:
        labels = torch.tensor(references)
        if self.to_points:
            return score_points(self.data, torch.stack(generated).float(), labels, torch.Generator().manual_seed(self.ctx.seed + 2000))
        predicted = torch.tensor(generated)
        return {"accuracy": float((predicted == labels).float().mean()),
                "agrees_with_bayes": float((predicted == self.data.bayes_label(self.points)).float().mean())}

    def write_samples(self, eval_set: EvalSet, generated: list, guidance: float) -> None:
        if self.to_points:
            self.generated[guidance] = torch.stack(generated).float()

    def evaluate(self) -> dict[str, Any]:
        rows = super().evaluate()
        rows["checks"] = self.checks(rows)
        rows["passed"] = all(c["pass"] for c in rows["checks"].values())
        self.plot()
        return rows

    def checks(self, rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Pass/fail against stated bars: near the truth at guidance 1, the shuffled control at chance, raised by guidance."""
        scales = {float(k.split()[1]): v for k, v in rows.items() if k.startswith("guidance ")}
        base = scales.get(1.0, next(iter(scales.values())))
        guided = [r for s, r in scales.items() if s > 1.0]
        score = "class_agreement" if self.to_points else "accuracy"
        out: dict[str, dict[str, Any]] = {}

        def check(name: str, value: float, bar: float, passed: bool) -> None:
            out[name] = {"value": value, "bar": bar, "pass": bool(passed)}

        if self.to_points:
            bar = 0.9 * rows["true_sample_class_agreement"]
            check("class_agreement >= 0.9 x true samples'", base[score], bar, base[score] >= bar)
            bar = 0.1 * rows["label_blind_mmd2"]
            check("mmd2 <= 0.1 x label-blind baseline", base["mmd2"], bar, base["mmd2"] <= bar)
        else:
            bar = rows["posterior_sampling_accuracy"] - 0.05
            check("accuracy >= posterior-sampling accuracy - 0.05", base[score], bar, base[score] >= bar)
        # With the conditions shuffled the score must fall to chance, whatever the conditional score: a bar at a share
        # of the score could only fail where the score itself is bad. This one fails on its own when the condition
        # leaks past the shuffle.
        bar = 1.5 * rows[f"chance_{score}"]
        check(f"shuffled control <= 1.5 x chance {score}", base[f"shuffled {score}"], bar, base[f"shuffled {score}"] <= bar)
        if guided:
            best = max(r[score] for r in guided)
            check(f"guidance raises {score}", best, base[score], best > base[score])
        return out

    def plot(self) -> None:
        """samples/points.png: the truth beside the generated points at each guidance scale."""
        if not self.generated:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        truth, _ = self.data.sample(len(self.labels), torch.Generator().manual_seed(0), labels=self.labels)
        panels = [("truth", truth)] + [(f"generated, guidance {s:g}", x) for s, x in self.generated.items()]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), sharex=True, sharey=True)
        for ax, (title, pts) in zip(axes, panels):
            ax.scatter(pts[:, 0], pts[:, 1], c=self.labels, cmap="tab10", s=2, vmin=0, vmax=9)
            ax.set(title=title, aspect="equal")
        fig.tight_layout()
        fig.savefig(self.ctx.samples_dir() / "points.png", dpi=120)
        plt.close(fig)
