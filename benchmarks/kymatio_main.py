"""kymatio main's joint time-frequency scattering for the benchmarks (oracle environment only).

kymatio's development version is importable only through ``scrapl-loss``, in its own
environment (``tests/oracle/README.md``); the benchmark scripts run the functions here in a
worker subprocess of that environment's Python.
"""
from __future__ import annotations

from typing import Callable

import scrapl  # noqa: F401  (puts kymatio main on sys.path)
import torch
from kymatio.backend.torch_backend import TorchBackend
from kymatio.torch import TimeFrequencyScattering


def build(n_samples: int, settings: dict) -> tuple[TimeFrequencyScattering, Callable[[torch.Tensor], torch.Tensor]]:
    """kymatio main's JTFS with global time averaging, and ``forward``: (B, N) -> (B, P) in list order.

    ``settings``: ``J``, ``Q`` (pair), ``J_fr``, ``Q_fr``, ``F``.
    """
    s = settings
    tfs = TimeFrequencyScattering(shape=(n_samples,), J=s["J"], Q=tuple(s["Q"]), J_fr=s["J_fr"], Q_fr=s["Q_fr"],
                                  F=s["F"], T="global", format="time", out_type="list")

    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p["coef"].reshape(x.shape[0], -1) for p in tfs(x)], dim=1)

    return tfs, forward


def make_modulus_functorch_compatible() -> None:
    """Let ``torch.func`` transforms run through kymatio main's modulus.

    kymatio's ``ModulusStable`` is an ``autograd.Function`` with neither a
    forward-mode (``jvp``) nor a ``vmap`` rule, so ``torch.func.jacfwd`` fails
    on it.  This replaces the backend's modulus by the same one,
    ``sqrt(re**2 + im**2) + 1e-12``, computed by ``torch.linalg.vector_norm``,
    whose derivative at 0 is 0 in both modes, as ``ModulusStable``'s backward
    gives (a plain ``sqrt`` would give NaN tangents at the exact zeros of the
    padding).
    """
    def modulus(cls, x: torch.Tensor) -> torch.Tensor:
        cls.complex_contiguous_check(x)
        return (torch.linalg.vector_norm(x, dim=-1) + 1e-12)[..., None]

    TorchBackend.modulus = classmethod(modulus)
