"""Joint time-frequency scattering (JTFS) in pure torch, and the representation Phi.

The operator follows the joint time-frequency scattering of Andén, Lostanlen and
Mallat (2019), with the path structure of kymatio's development version
(``TimeFrequencyScattering`` with ``T='global'``), on the Morlet filter banks of
PyPI kymatio 0.3.0 (:func:`kymatio.scattering1d.filter_bank.scattering_filter_factory`,
imported directly so that no SciPy pin is needed).

With ``x`` a signal of N samples, zero-padded to ``N_pad``:

* first order, the scalogram ``U1[n1](t) = |x * psi_n1|(t)``, ``n1 = 0`` the
  highest frequency, each filter's output subsampled by ``2**j1`` (its bandwidth
  allows it);
* zeroth order ``S0`` and first order ``S1[n1]``: time averages of ``x`` and
  ``U1[n1]``;
* first-order frequential paths: ``S1`` (a vector over ``n1``) filtered along
  ``n1`` by the frequential low-pass (width ``2**J_fr``, spin 0) and by the
  frequential wavelets of spin +1, modulus;
* joint (second-order) paths: ``Y2[n2](n1, t) = U1[n1] * psi_n2`` for
  ``j1 < j2``, filtered along ``n1`` by the frequential low-pass (spin 0) and
  the frequential wavelets of both spins, modulus, time average;
* frequential averaging of the spinned paths with a low-pass of width ``F``
  (``F=None``: none).

Every path family is listed in :attr:`JTFS.paths`.  The time average is the mean
over the padded time axis at the path's sampling rate, so it does not depend on
the path's subsampling.  ``Phi(x) = log1p(c * S(x))`` with ``c`` calibrated per
preset (see :mod:`pnpbook.config`).

Everything is batched: filters with the same subsampling are applied in one
tensor operation, there are no in-place writes and no custom autograd
functions, so ``torch.func.jacfwd``/``vmap`` work through it.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np
import torch
from kymatio.scattering1d.filter_bank import scattering_filter_factory

from pnpbook import config, data
from pnpbook.synth import Synth

#: Columns of a frequential operator whose averaging weights are below this fraction of the
#: largest are dropped (see :meth:`JTFS._fr_operator`).
_PRUNE = 1e-13

#: Time samples per chunk of the joint modulus: bounds memory at B x 4096 x C complex numbers.
_TIME_CHUNK = 4096

#: The six path families, in the order of the output vector.
FAMILIES: tuple[str, ...] = ("S0", "S1_phi_fr", "S1_psi_fr", "psi_phi_fr", "psi_psi_up", "psi_psi_down")


@dataclasses.dataclass(frozen=True)
class JTFSConfig:
    """Settings of a JTFS operator.

    Attributes
    ----------
    N : int
        Signal length in samples.
    J : int
        Time scales: wavelets up to ``2**J`` samples.
    Q : tuple of int
        Filters per octave at first and second order.
    J_fr : int
        Frequential scales: frequential wavelets up to ``2**J_fr`` first-order rows.
    Q_fr : int
        Frequential wavelets per octave.
    F : int or None
        Width (rows) of the frequential averaging of spinned paths; None: no averaging.
    oversampling : int
        Subsample each scattering output ``2**oversampling`` times less than its
        bandwidth allows (0: as far as it allows, as kymatio does).  The modulus
        is not band-limited, so the time average of a decimated modulus carries
        a small aliasing error (about 1e-5 relative for shifts that are not a
        multiple of ``2**J``); oversampling shrinks it at a proportional cost.
    """

    N: int
    J: int
    Q: tuple[int, int] = (12, 1)
    J_fr: int = 3
    Q_fr: int = 1
    F: int | None = 2
    oversampling: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.N, int) and self.N >= 2 ** (self.J + 1)):
            raise ValueError(f"N = {self.N} must be an int >= 2**(J + 1) = {2 ** (self.J + 1)}")
        if self.J < 1 or self.J_fr < 1 or min(self.Q) < 1 or self.Q_fr < 1:
            raise ValueError(f"J, J_fr, Q and Q_fr must be >= 1, got J={self.J}, J_fr={self.J_fr}, "
                             f"Q={self.Q}, Q_fr={self.Q_fr}")
        if self.oversampling < 0:
            raise ValueError(f"oversampling must be >= 0, got {self.oversampling}")
        if self.F is not None and (self.F < 1 or self.F & (self.F - 1)):
            raise ValueError(f"F must be None or a power of two >= 1, got {self.F}")


@dataclasses.dataclass(frozen=True)
class Path:
    """One output coefficient of the JTFS.

    Attributes
    ----------
    family : str
        One of :data:`FAMILIES`.
    n1 : int
        First-order row (after frequential subsampling: the row index times the
        stride); -1 for ``S0``.
    n2 : int
        Second-order filter; -1 below second order.
    n_fr : int
        Frequential filter (0: low-pass); -1 for ``S0``.
    spin : int
        Sign of the frequential wavelet's centre frequency (0 for low-pass).
    """

    family: str
    n1: int
    n2: int
    n_fr: int
    spin: int


def _periodize(h_hat, factor: int):
    """Subsample by ``factor`` in time: average the spectrum's ``factor`` periods (last axis).

    Works on torch tensors and NumPy arrays alike (the operators are built in NumPy).
    """
    if factor == 1:
        return h_hat
    return h_hat.reshape(*h_hat.shape[:-1], factor, h_hat.shape[-1] // factor).mean(-2)


class JTFS:
    """Joint time-frequency scattering with global time averaging.

    Parameters
    ----------
    config : JTFSConfig
        Settings.

    Attributes
    ----------
    paths : list of Path
        What each output coefficient is, in output order.
    n_pad : int
        Padded time length (a power of two).
    n_fr : int
        Padded length of the log-frequency axis.
    """

    def __init__(self, config: JTFSConfig):
        self.config = c = config
        self.n_pad = 2 ** math.ceil(math.log2(c.N + 2 ** (c.J + 1)))
        self.pad_left = (self.n_pad - c.N) // 2
        _, psi1, psi2 = scattering_filter_factory(self.n_pad, c.J, c.Q, 2**c.J)
        self.psi1 = psi1
        self.psi2 = psi2
        self.j1 = [int(p["j"]) for p in psi1]
        self.j2 = [int(p["j"]) for p in psi2]
        # log2 of the subsampling of each first- and second-order output
        self.k1 = [max(j - c.oversampling, 0) for j in self.j1]
        self.k2 = [max(j - c.oversampling, 0) for j in self.j2]
        # first-order rows, padded so that every frequential subsampling divides the length
        n_in = len(psi1)
        step = 2**c.J_fr
        self.n_fr = -(-(n_in + 8 * min(c.F or 2**c.J_fr, 2**c.J_fr)) // step) * step
        phi_fr, psi_fr, _ = scattering_filter_factory(self.n_fr, c.J_fr, (c.Q_fr, 1), 2**c.J_fr)
        # frequential filters: low-pass of width 2**J_fr (spin 0), wavelets of spin +1, then -1
        up = [np.asarray(p["levels"][0]) for p in psi_fr]
        down = [np.roll(h[::-1], 1) for h in up]  # h(-omega)
        self.fr_filters = [np.asarray(phi_fr["levels"][0])] + up + down
        self.fr_spin = [0] + [1] * len(up) + [-1] * len(down)
        self.fr_j = [c.J_fr] + [int(p["j"]) for p in psi_fr] * 2
        if c.F is not None:
            phi_f, _, _ = scattering_filter_factory(self.n_fr, c.J_fr, (c.Q_fr, 1), c.F)
            self.fr_avg = np.asarray(phi_f["levels"][0])
            self.log2_f = int(math.log2(c.F))
        self.paths = self._path_table()
        # first-order filters grouped by subsampling; kymatio orders them by decreasing frequency,
        # so k1 is non-decreasing in n1 and each group is a contiguous run of rows
        self._k1_groups = {k: [n for n, k1 in enumerate(self.k1) if k1 == k] for k in sorted(set(self.k1))}
        assert [n for idx in self._k1_groups.values() for n in idx] == list(range(len(self.j1)))
        n1_maxes = {sum(j1 < j2 for j1 in self.j1) for j2 in self.j2} - {0}
        self._fr_numpy = {(len(self.psi1), (0, 1)): self._fr_operator(len(self.psi1), (0, 1))}
        self._fr_numpy.update({(m, (0, 1, -1)): self._fr_operator(m, (0, 1, -1)) for m in n1_maxes})
        self._cache: dict = {}

    # ------------------------------------------------------------------ layout
    def _fr_stride(self, n_fr: int) -> int:
        """Log2 of the frequential subsampling of path family member ``n_fr`` after averaging."""
        spin, j = self.fr_spin[n_fr], self.fr_j[n_fr]
        if self.config.F is None:
            return j
        return min(j, self.log2_f) if spin == 0 else self.log2_f

    def _n1_rows(self, n1_max: int, n_fr: int) -> list[int]:
        """First-order rows kept for a path over ``n1 < n1_max`` after frequential subsampling."""
        stride = 2 ** self._fr_stride(n_fr)
        return list(range(0, n1_max, stride))

    def _path_table(self) -> list[Path]:
        paths = [Path("S0", -1, -1, -1, 0)]
        for n_fr, spin in enumerate(self.fr_spin):
            if spin >= 0:
                family = "S1_phi_fr" if spin == 0 else "S1_psi_fr"
                paths += [Path(family, n1, -1, n_fr, spin) for n1 in self._n1_rows(len(self.psi1), n_fr)]
        for n2, j2 in enumerate(self.j2):
            n1_max = sum(j1 < j2 for j1 in self.j1)
            if n1_max == 0:
                continue
            for n_fr, spin in enumerate(self.fr_spin):
                family = {0: "psi_phi_fr", 1: "psi_psi_up", -1: "psi_psi_down"}[spin]
                paths += [Path(family, n1, n2, n_fr, spin) for n1 in self._n1_rows(n1_max, n_fr)]
        return paths

    @property
    def size(self) -> int:
        """Number of output coefficients P."""
        return len(self.paths)

    def family_mask(self, family: str) -> torch.Tensor:
        """Boolean mask, shape (P,), of the coefficients of one family."""
        if family not in FAMILIES:
            raise ValueError(f"family {family!r} is not one of {FAMILIES}")
        return torch.tensor([p.family == family for p in self.paths])

    # ------------------------------------------------------------------ compute
    def _fr_operator(self, n1_max: int, spins: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """The frequential scattering of ``n1_max`` rows as two matrices, built once.

        Along log-frequency everything but the modulus is linear, so the
        pipeline (zero-pad the rows to :attr:`n_fr`, filter with each
        frequential filter whose spin is in ``spins``, subsample, modulus,
        then for spinned filters average with the width-F low-pass and
        subsample) is ``|X @ W| @ A``: ``W`` (n1_max, C) complex, the filtering
        and subsampling, found by passing the identity through the FFT
        pipeline; ``A`` (C, R) real, the averaging and the choice of the kept
        rows.  Columns of ``W`` that ``A`` does not use (weights below 1e-13 of
        the largest) are dropped.
        """
        eye = np.eye(n1_max, self.n_fr)  # row i: the unit impulse at n1 = i, zero-padded
        eye_hat = np.fft.fft(eye, axis=-1)
        w_blocks, a_blocks = [], []
        for n_fr, (h, spin) in enumerate(zip(self.fr_filters, self.fr_spin)):
            if spin not in spins:
                continue
            j = self.fr_j[n_fr]
            k = j if self.config.F is None else min(j, self.log2_f)
            w = np.fft.ifft(_periodize(eye_hat * h, 2**k), axis=-1)  # (n1_max, n_fr / 2**k)
            rows = len(self._n1_rows(n1_max, n_fr))
            m = w.shape[1]
            if spin != 0 and self.config.F is not None:
                avg_hat = np.fft.fft(np.eye(m), axis=-1) * _decimated(self.fr_avg, k)
                a = np.fft.ifft(_periodize(avg_hat, 2 ** (self.log2_f - k)), axis=-1).real[:, :rows]
            else:
                a = np.eye(m)[:, :rows]
            used = np.abs(a).max(1) > _PRUNE * np.abs(a).max()
            w_blocks.append(w[:, used])
            a_blocks.append(a[used])
        width = sum(a.shape[1] for a in a_blocks)
        A = np.zeros((sum(a.shape[0] for a in a_blocks), width))
        r = c = 0
        for a in a_blocks:
            A[r:r + a.shape[0], c:c + a.shape[1]] = a
            r, c = r + a.shape[0], c + a.shape[1]
        return np.concatenate(w_blocks, axis=1), A

    def _operators(self, like: torch.Tensor) -> dict:
        """Filters and frequential operators as tensors of ``like``'s precision and device (cached)."""
        real = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (real, like.device)
        if key not in self._cache:
            cplx = torch.complex128 if real == torch.float64 else torch.complex64
            t = lambda a, dt: torch.as_tensor(np.asarray(a), dtype=dt, device=like.device)
            ops = {"psi1": {j: t(np.stack([self.psi1[n]["levels"][0] for n in idx]), real)
                            for j, idx in self._k1_groups.items()},
                   "psi2": {(n2, k): t(_decimated(self.psi2[n2]["levels"][0], k), real)
                            for n2 in range(len(self.j2)) for k in self._k1_groups},
                   "fr": {}}
            for key_fr, (W, A) in self._fr_numpy.items():
                ops["fr"][key_fr] = (t(W, cplx), t(A, real))
            self._cache[key] = ops
        return self._cache[key]

    def scattering(self, x: torch.Tensor) -> torch.Tensor:
        """The JTFS coefficients ``S`` (before the log).

        Parameters
        ----------
        x : Tensor, shape (B, N) or (N,)
            Real signal, float32 or float64.

        Returns
        -------
        Tensor, shape (B, P) or (P,)
            Coefficients in the order of :attr:`paths`, in x's dtype.
        """
        c = self.config
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"x must be a float32 or float64 tensor, got {getattr(x, 'dtype', type(x))}")
        if x.ndim not in (1, 2) or x.shape[-1] != c.N:
            raise ValueError(f"x must have shape (B, {c.N}) or ({c.N},), got {tuple(x.shape)}")
        ops = self._operators(x)
        batched = x.ndim == 2
        x = x if batched else x.unsqueeze(0)
        x_pad = torch.nn.functional.pad(x, (self.pad_left, self.n_pad - c.N - self.pad_left))
        X_hat = torch.fft.fft(x_pad)  # (B, n_pad)
        # first order, one tensor per subsampling 2**j: U1[j] is (B, filters with j1 = j, n_pad / 2**j)
        U1 = {j: torch.fft.ifft(_periodize(X_hat.unsqueeze(1) * h, 2**j)).abs() for j, h in ops["psi1"].items()}
        S1 = torch.cat([u.mean(-1) for u in U1.values()], dim=1)  # (B, n1), n1 in filter order
        W, A = ops["fr"][(len(self.psi1), (0, 1))]
        parts = [x_pad.mean(-1, keepdim=True), (S1.to(W.dtype) @ W).abs() @ A]
        U1_hat = {j: torch.fft.fft(u) for j, u in U1.items()}
        for n2, j2 in enumerate(self.j2):
            lower = [n1 for n1, j1 in enumerate(self.j1) if j1 < j2]  # rows this psi2 sees
            if not lower:
                continue
            # Y2 = U1 * psi2, decimated to 2**k2: (B, n1_max, n_pad / 2**k2), complex
            Y2 = torch.cat([torch.fft.ifft(_periodize(U1_hat[k] * ops["psi2"][(n2, k)], 2 ** (self.k2[n2] - k)))
                            for k in U1_hat if k <= self.k2[n2]], dim=1)[:, :len(lower)]
            W, A = ops["fr"][(len(lower), (0, 1, -1))]
            # |Y2^T W| averaged over time, in time chunks so that the (B, T2, C) modulus never exists whole
            Yt = Y2.transpose(1, 2)
            total = sum((chunk @ W).abs().sum(1) for chunk in Yt.split(_TIME_CHUNK, dim=1))
            parts.append(total / Yt.shape[1] @ A)
        S = torch.cat(parts, dim=1)
        return S if batched else S.squeeze(0)

    __call__ = scattering


def _decimated(h_hat: np.ndarray, k: int) -> np.ndarray:
    """The filter to apply to a signal decimated by ``2**k``, shape (len(h_hat) / 2**k,).

    The sum of the spectrum's ``2**k`` periods: for a filter inside the
    decimated band this is the filter's value at the same physical
    frequencies, so filtering then decimating equals decimating then filtering.
    """
    return _periodize(np.asarray(h_hat), 2**k) * 2**k


def phi(S: torch.Tensor, c: float) -> torch.Tensor:
    """``Phi = log1p(c * S)``, elementwise; ``c > 0`` sets where the log compression starts."""
    if not c > 0:
        raise ValueError(f"c must be positive, got {c}")
    return torch.log1p(c * S)


@functools.lru_cache(maxsize=8)
def _preset_operator(name: str, scale: str, n_samples: int) -> JTFS:
    settings = dict(config.preset(name, scale)["jtfs"])
    return JTFS(JTFSConfig(N=n_samples, **settings))


def operator(synth: Synth) -> JTFS:
    """The JTFS of ``synth``'s preset (:data:`pnpbook.config.PRESETS`), built once per preset."""
    return _preset_operator(synth.name, synth.scale, synth.n_samples)


def preset_c(synth: Synth) -> float:
    """The calibrated ``c`` of ``synth``'s preset.

    Raises
    ------
    ValueError
        If the preset has not been calibrated (``python -m pnpbook calibrate``).
    """
    c = config.preset(synth.name, synth.scale)["c"]
    if c is None:
        raise ValueError(f"c is not calibrated for {synth.name}/{synth.scale}: run "
                         f"`python -m pnpbook calibrate --synth {synth.name} --scale {synth.scale}` "
                         f"and record it in pnpbook/config.py")
    return float(c)


def calibrate(synth: Synth, n: int = 256, batch: int = 16) -> dict[str, Any]:
    """``c = 1 / median S`` over the first ``n`` train items, checked on the next ``n``.

    The train fold is stored in a fixed pseudo-random order (:mod:`pnpbook.data`),
    so the two subsets are seeded, disjoint and spread over the grid.  The
    authors chose c = 1e3 as about 1 / median S for their JTFS; this applies the
    same rule to ours.

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset.
    n : int
        Items per subset.
    batch : int
        Items per JTFS call.

    Returns
    -------
    dict
        ``c``, ``median`` (first subset), ``median_check`` (second subset),
        ``relative_difference`` between the two medians, ``n``, and the IDs
        of the first and last items of each subset.
    """
    items = data.fold(synth, "train", n=2 * n)
    op = operator(synth)
    theta = torch.from_numpy(items.theta.copy())
    medians = []
    for part in (theta[:n], theta[n:]):
        S = torch.cat([op(synth(t.float())) for t in part.split(batch)])  # float32: a median needs no more
        medians.append(float(S.median()))
    return {"c": 1 / medians[0], "median": medians[0], "median_check": medians[1],
            "relative_difference": abs(medians[1] / medians[0] - 1), "n": n,
            "subsets": [[str(items.ids[0]), str(items.ids[n - 1])], [str(items.ids[n]), str(items.ids[-1])]]}
