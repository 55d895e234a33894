"""Parameter rescaling ``nu = h(theta) = minmax(r(theta))`` and its inverse.

``r`` is the identity on ``theta`` (the paper's default: ``theta`` already holds
log10 of the log parameters) or ``10 ** theta`` on the log parameters (the
paper's "no-log" ablation).  ``minmax`` maps the train fold's range of
``r(theta)`` to [-1, 1], like sklearn's ``MinMaxScaler(feature_range=(-1, 1))``
fitted on the train fold only.  Both directions are plain torch arithmetic, so
they are differentiable and work under ``torch.func`` transforms.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pnpbook.synth import Synth


@dataclasses.dataclass(frozen=True)
class Scaler:
    """``h = minmax o r`` with its fitted range.

    Attributes
    ----------
    log_columns : tuple of bool
        Per column, whether ``theta`` holds log10 of the physical value.
    keep_log : bool
        True: ``r`` is the identity (paper default).  False: ``r = 10 ** theta``
        on the log columns ("no-log").
    low, high : tuple of float
        Minimum and maximum of ``r(theta)`` over the train fold, per column.
    """

    log_columns: tuple[bool, ...]
    keep_log: bool
    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def fit(cls, theta_train: torch.Tensor, synth: Synth, keep_log: bool = True) -> "Scaler":
        """Fit the min-max range on the train fold.

        Parameters
        ----------
        theta_train : Tensor, shape (n, d)
            The train fold's ``theta``.
        synth : Synth
            Gives which columns are log10.
        keep_log : bool
            See :attr:`keep_log`.
        """
        log_columns = tuple(p.log for p in synth.params)
        unfitted = cls(log_columns, keep_log, (0.0,) * synth.d, (1.0,) * synth.d)
        r = unfitted.r(theta_train.double())
        low, high = r.amin(0), r.amax(0)
        if bool((high <= low).any()):
            raise ValueError(f"cannot fit min-max: a column of theta_train is constant "
                             f"(low {low.tolist()}, high {high.tolist()})")
        return cls(log_columns, keep_log, tuple(low.tolist()), tuple(high.tolist()))

    def _mask(self, like: torch.Tensor) -> torch.Tensor:
        """Which columns ``r`` exponentiates, shape (d,), bool."""
        return torch.tensor([lg and not self.keep_log for lg in self.log_columns], device=like.device)

    def _range(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kw = {"dtype": like.dtype, "device": like.device}
        return torch.tensor(self.low, **kw), torch.tensor(self.high, **kw)

    def r(self, theta: torch.Tensor) -> torch.Tensor:
        """``r(theta)``, shape (..., d): identity, or ``10 ** theta`` on the log columns."""
        return torch.where(self._mask(theta), 10.0**theta, theta)

    def r_inverse(self, r_theta: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`r`, shape (..., d)."""
        mask = self._mask(r_theta)
        # where() evaluates both branches: keep log10's input positive on unmasked columns
        return torch.where(mask, torch.log10(torch.where(mask, r_theta, torch.ones_like(r_theta))), r_theta)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        """``nu = h(theta)``, shape (..., d), in [-1, 1] on the train fold."""
        low, high = self._range(theta)
        return 2 * (self.r(theta) - low) / (high - low) - 1

    __call__ = forward

    def inverse(self, nu: torch.Tensor) -> torch.Tensor:
        """``theta = h^-1(nu)``, shape (..., d)."""
        low, high = self._range(nu)
        return self.r_inverse((nu + 1) / 2 * (high - low) + low)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (part of every metric store's config)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Scaler":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
