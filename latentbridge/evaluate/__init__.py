"""Evaluation: distribution distances and task metrics (and, as they land, codec diagnostics)."""

from latentbridge.evaluate.metrics import mean_cov_error, mmd2

__all__ = ["mean_cov_error", "mmd2"]
