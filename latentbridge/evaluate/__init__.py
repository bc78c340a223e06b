"""Evaluation: the evaluator protocol (evaluators come from plugins; the generic ones ship here) and metrics.

    latentbridge.evaluate.run.evaluate_run     `latentbridge eval`: every evaluator that applies to each task
    latentbridge.evaluate.codecs               codec reports and `latentbridge reconstruct`
    latentbridge.evaluate.report               report.json (one reader/writer), report.md
"""

from latentbridge.evaluator import EvalContext, EvalSet, Evaluator, PerItem, derangement, wilson_interval
from latentbridge.evaluate.metrics import mean_cov_error, mmd2

__all__ = ["EvalContext", "EvalSet", "Evaluator", "PerItem", "derangement", "mean_cov_error", "mmd2", "wilson_interval"]
