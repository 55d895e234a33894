"""Deterministic parameter grids, folds, and a Dataset that renders audio on the fly.

The grids follow spec sections 2 and 3.4.  Each parameter's range is cut into
``bins`` cells (log-spaced for the parameters stored as log10, linear
otherwise); every cell of the product grid holds one point drawn uniformly in
*physical* units within the cell.  Folds:

* val: the cells whose indices are all in ``[margin, bins - margin)``, an
  interior hypercube (interpolation region);
* test: ``n_cells // 10`` cells drawn from the other (exterior) cells;
* train: the remaining exterior cells.

amchirp: 30**3 cells, margin 8, folds 21,556 / 2,744 / 2,700.
ftm: 10**5 cells, margin 2, folds 82,224 / 7,776 / 10,000.

The ID of a cell is its mixed-radix index ``sum_k i_k bins**(d-1-k)`` written as
a zero-padded 5-character string (for ftm, the digits are the cell indices, as
in the authors' CSV; amchirp's equals their ``900 i0 + 30 i1 + i2``).

Randomness comes from the raw 64-bit stream of NumPy's PCG64 bit generator,
which NumPy keeps stable across versions and machines, mapped to uniforms by
our own code (not by ``Generator`` methods, whose streams may change).  Each
fold is stored in a fixed pseudo-random order, so "the first n items of a fold"
spread over the whole fold.  A scale's preset (:mod:`pnpbook.config`) changes
the parameter ranges (so the grid) and says how many items of each fold it uses.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

import numpy as np
import torch

from pnpbook import config
from pnpbook.scaling import Scaler
from pnpbook.synth import SYNTHS, Synth

FOLDS: tuple[str, ...] = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """How a synthesizer's parameter space is cut and split.

    Attributes
    ----------
    bins : int
        Cells per parameter axis.
    margin : int
        Val cells have every index in ``[margin, bins - margin)``.
    seed : int
        Seed of the PCG64 stream (jitter, test draw and fold order).
    """

    bins: int
    margin: int
    seed: int


GRIDS: dict[str, GridSpec] = {
    "amchirp": GridSpec(bins=30, margin=8, seed=960602),
    "ftm": GridSpec(bins=10, margin=2, seed=20221005),
}

ID_WIDTH = 5


@dataclasses.dataclass(frozen=True)
class Fold:
    """Items of one fold, in the fold's fixed order.

    Attributes
    ----------
    name : str
        ``"train"``, ``"val"`` or ``"test"`` (``"all"`` for the whole grid).
    ids : ndarray of str, shape (n,)
        Fixed-width IDs.
    cells : ndarray of int64, shape (n, d)
        Cell index of each parameter.
    theta : ndarray of float64, shape (n, d)
        Parameters in ``theta`` units (read-only).
    """

    name: str
    ids: np.ndarray
    cells: np.ndarray
    theta: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int | None) -> "Fold":
        """The first ``n`` items (all when None)."""
        if n is not None and not 0 <= n <= len(self):
            raise ValueError(f"n = {n} is outside [0, {len(self)}] for fold {self.name!r}")
        return Fold(self.name, self.ids[:n], self.cells[:n], self.theta[:n])


def _uniforms(bitgen: np.random.PCG64, n: int) -> np.ndarray:
    """``n`` float64 uniforms in [0, 1) from the raw stream: top 53 bits times 2**-53."""
    return (bitgen.random_raw(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _edges(lo: float, hi: float, bins: int, log: bool) -> np.ndarray:
    """Cell edges in physical units, ``(bins + 1,)``, with the end points exact."""
    edges = np.logspace(np.log10(lo), np.log10(hi), bins + 1) if log else np.linspace(lo, hi, bins + 1)
    edges[0], edges[-1] = lo, hi
    return edges


@functools.lru_cache(maxsize=16)
def _grid(synth: Synth) -> dict[str, Fold]:
    spec = GRIDS[synth.name]
    d, bins = synth.d, spec.bins
    n_cells = bins**d
    cells = np.stack(np.unravel_index(np.arange(n_cells), (bins,) * d), axis=1).astype(np.int64)
    ids = np.array([f"{i:0{ID_WIDTH}d}" for i in range(n_cells)])
    bitgen = np.random.PCG64(spec.seed)
    jitter = _uniforms(bitgen, n_cells * d).reshape(n_cells, d)
    theta = np.empty((n_cells, d))
    for k, p in enumerate(synth.params):
        edges = _edges(p.low, p.high, bins, p.log)
        left, width = edges[cells[:, k]], np.diff(edges)[cells[:, k]]
        phys = np.minimum(left + jitter[:, k] * width, edges[cells[:, k] + 1])
        theta[:, k] = np.log10(phys) if p.log else phys
    order_key = _uniforms(bitgen, n_cells)
    interior = np.all((cells >= spec.margin) & (cells < bins - spec.margin), axis=1)
    exterior = np.flatnonzero(~interior)
    by_key = exterior[np.argsort(order_key[exterior], kind="stable")]
    test = by_key[: n_cells // 10]
    fold_of = np.full(n_cells, "train", dtype=object)
    fold_of[interior] = "val"
    fold_of[test] = "test"
    for a in (cells, theta):
        a.flags.writeable = False
    folds = {"all": Fold("all", ids, cells, theta)}
    for name in FOLDS:
        idx = np.flatnonzero(fold_of == name)
        idx = idx[np.argsort(order_key[idx], kind="stable")]
        folds[name] = Fold(name, ids[idx], cells[idx], theta[idx])
    return folds


def resolve_synth(synth: str | Synth, scale: str | None) -> Synth:
    """A synthesizer record: ``synth`` itself, or the registry's ``synth`` at ``scale``."""
    if isinstance(synth, Synth):
        return synth
    if synth not in SYNTHS:
        raise ValueError(f"synth {synth!r} is not one of {tuple(SYNTHS)}")
    return SYNTHS[synth].at(scale)


def grid(synth: str | Synth, scale: str | None = None) -> Fold:
    """All cells of the grid, in ID order.

    Parameters
    ----------
    synth : str or Synth
        A registry name (then ``scale`` picks the preset) or a record.
    scale : str or None
        Scale for a registry name; None reads ``$PNPBOOK_SCALE``.
    """
    return _grid(resolve_synth(synth, scale))["all"]


def fold(synth: str | Synth, name: str, scale: str | None = None, n: int | None = None) -> Fold:
    """One fold in its fixed order, cut to the scale's size or to ``n``.

    Parameters
    ----------
    synth : str or Synth
        A registry name or a record (its ``scale`` then sets the fold size).
    name : {"train", "val", "test"}
        The fold.
    scale : str or None
        Scale for a registry name; None reads ``$PNPBOOK_SCALE``.
    n : int or None
        Take the first ``n`` items instead of the preset's number.

    Returns
    -------
    Fold
    """
    if name not in FOLDS:
        raise ValueError(f"fold {name!r} is not one of {FOLDS}")
    s = resolve_synth(synth, scale)
    size = config.preset(s.name, s.scale)["folds"][name] if n is None else n
    return _grid(s)[name].head(size)


def train_scaler(synth: str | Synth, scale: str | None = None, keep_log: bool = True) -> Scaler:
    """The min-max :class:`~pnpbook.scaling.Scaler` fitted on the whole train fold.

    The whole fold (not the scale's subset) is used, so ``nu`` does not depend
    on how many items a run takes.
    """
    s = resolve_synth(synth, scale)
    return Scaler.fit(torch.from_numpy(np.array(_grid(s)["train"].theta)), s, keep_log)


class SynthDataset(torch.utils.data.Dataset):
    """Items of a fold with audio rendered on the fly.

    Parameters
    ----------
    synth : str or Synth
        A registry name or a record.
    fold_name : {"train", "val", "test"}
        The fold.
    scale : str or None
        Scale for a registry name; None reads ``$PNPBOOK_SCALE``.
    n : int or None
        Number of items (default: the preset's).
    dtype : torch.dtype
        dtype of ``theta``, ``nu`` and ``x``.
    keep_log : bool
        Passed to :func:`train_scaler` for ``nu``.

    Each item is a dict: ``id`` (str), ``theta`` (d,), ``nu`` (d,), ``x`` (N,).
    """

    def __init__(self, synth: str | Synth, fold_name: str, scale: str | None = None,
                 n: int | None = None, dtype: torch.dtype = torch.float32, keep_log: bool = True):
        self.synth = resolve_synth(synth, scale)
        self.fold = fold(self.synth, fold_name, n=n)
        self.scaler = train_scaler(self.synth, keep_log=keep_log)
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.fold)

    def __getitem__(self, i: int) -> dict[str, object]:
        theta = torch.tensor(self.fold.theta[i], dtype=self.dtype)
        return {"id": str(self.fold.ids[i]), "theta": theta,
                "nu": self.scaler(theta), "x": self.synth(theta)}

    def __iter__(self) -> Iterator[dict[str, object]]:
        return (self[i] for i in range(len(self)))
