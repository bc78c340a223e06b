"""Sample-based distances between distributions."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.1, 0.3, 1.0)) -> float:
    """Unbiased squared MMD with a sum of RBF kernels (Gretton et al. 2012). x [n, d], y [m, d]."""
    x, y = x.double(), y.double()
    n, m = x.shape[0], y.shape[0]

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def mean_cov_error(x: Tensor, y: Tensor) -> tuple[float, float]:
    """(|mean_x - mean_y|, Frobenius norm of cov_x - cov_y) for samples x [n, d], y [m, d]."""
    x, y = x.double(), y.double()
    mean_err = float((x.mean(0) - y.mean(0)).norm())
    cov_err = float((torch.cov(x.T) - torch.cov(y.T)).norm())
    return mean_err, cov_err
