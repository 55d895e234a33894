"""Central finite differences with Richardson extrapolation, the step chosen per parameter.

Shared by the tests of the Jacobian (test_metric.py) and of the metric store (test_store.py).
"""
from typing import Callable

import numpy as np
import torch


def jacobian_fd(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h0: float = 1e-3,
                steps: int = 8) -> torch.Tensor:
    """J of f at x, shape (P, d), from float64 central differences.

    For each parameter, over steps h = h0 / 2**m, Richardson-extrapolated central differences;
    the pair of successive estimates that agree best marks where truncation error (shrinking
    with h) meets rounding error (growing as 1/h), without looking at any other Jacobian.
    """
    columns = []
    for k in range(x.shape[0]):
        e = torch.zeros_like(x)
        e[k] = 1.0
        central = [(f(x + h * e) - f(x - h * e)) / (2 * h) for h in h0 / 2.0 ** np.arange(steps)]
        estimates = [(4 * fine - coarse) / 3 for coarse, fine in zip(central, central[1:])]
        gaps = [float((a - c).norm()) for a, c in zip(estimates, estimates[1:])]
        columns.append(estimates[int(np.argmin(gaps)) + 1])
    return torch.stack(columns, dim=-1)
