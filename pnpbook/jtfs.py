"""Joint time-frequency scattering (JTFS) in pure torch, and the representation Phi.

The operator follows the joint time-frequency scattering of Andén, Lostanlen and
Mallat (2019), with the path structure of kymatio's development version
(``TimeFrequencyScattering``), on the Morlet filter banks of
PyPI kymatio 0.3.0 (:func:`kymatio.scattering1d.filter_bank.scattering_filter_factory`,
imported directly so that no SciPy pin is needed).

With ``x`` a signal of N samples, zero-padded to ``N_pad``:

* first order, the scalogram ``U1[n1](t) = |x * psi_n1|(t)``, ``n1 = 0`` the
  highest frequency, each filter's output subsampled by ``2**j1`` (its bandwidth
  allows it);
* zeroth order ``S0`` and first order ``S1[n1]``: time averages of ``x`` and
  ``U1[n1]`` (global or local, see below);
* first-order frequential paths: ``S1`` (a vector over ``n1``) filtered along
  ``n1`` by the frequential low-pass (width ``2**J_fr``, spin 0) and by the
  frequential wavelets of spin +1, modulus (after the time average, so per
  time frame when it is local);
* joint (second-order) paths: ``Y2[n2](n1, t) = U1[n1] * psi_n2`` for
  ``j1 < j2``, filtered along ``n1`` by the frequential low-pass (spin 0) and
  the frequential wavelets of both spins, modulus, time average;
* frequential averaging of the spinned paths with a low-pass of width ``F``
  (``F=None``: none).

Every path family is listed in :attr:`JTFS.paths`.  Time averaging is either

* global (``T='global'``, the default): the mean over the padded time axis at
  the path's sampling rate, so it does not depend on the path's subsampling;
  the output is ``(B, P)``; or
* local (``T`` a power of two): a low-pass in time by the Gaussian ``phi_T`` of
  kymatio 0.3.0's :func:`~kymatio.scattering1d.filter_bank.scattering_filter_factory`
  (``gauss_1d(n_pad, 0.1 / T)``, normalised to unit l1 norm in time, so a
  weighted average: its spectrum is 1 at frequency 0), sampled every
  ``stride = 2**max(log2 T - oversampling, 0)`` samples over the whole padded
  axis; the output is ``(B, P, frames)`` with ``frames = n_pad / stride``
  (:attr:`JTFS.frames`), frame ``f`` centred on signal sample
  ``f * stride - pad_left`` (:attr:`JTFS.frame_times`).  Scattering outputs
  are then subsampled no further than the stride (by
  ``2**max(min(j, log2 T) - oversampling, 0)``), so every frame is computed
  at its path's own rate.  As ``phi_T``'s spectrum is
  below ``exp(-50)`` at every nonzero multiple of the frame rate ``1 / T``,
  the mean over the frames of a path whose modulus precedes the averaging
  (``S0``, ``S1_phi_fr`` and the joint paths) is its global average, to
  rounding (and, for ``T < 2**J``, to the aliasing of the decimated moduli
  of the paths decimated differently); for ``S1_psi_fr`` the modulus follows
  the average and the mean over frames is at least the global value.

``Phi(x) = log1p(c * S(x))`` with ``c`` calibrated per preset (see
:mod:`pnpbook.config`).

Everything is batched: filters with the same subsampling are applied in one
tensor operation, only on the spectral periods that survive their subsampling
(:func:`_filter_subsample`); real signals are transformed by ``rfft``.  The
joint modulus and time average, which dominates the cost, is one autograd
function (:class:`_JointModulusMean`) that works a block of time samples at a
time and recomputes blocks for its derivatives instead of storing them; it
has a forward-mode rule that needs no tangent of the joint paths
(:class:`_JointModulusMeanTangent`) and a ``vmap`` rule, so reverse mode,
``torch.func.jacfwd`` and ``vmap`` all work through the operator (the
forward-mode rule itself is not differentiable).  With a local ``T`` the joint
paths are plain differentiable torch operations instead (the modulus of the
whole (B, C, time) joint array, then the low-pass), which ``torch.func``
differentiates natively at the cost of holding that array and its tangents
(at the tiny preset, 2.5 to 3 times the time of a global forward and 3 to 4
times its memory).  A batch is computed in passes of at most
:data:`_PASS` padded samples.  ``benchmarks/jtfs_speed.py`` and
``benchmarks/jacobian_speed.py`` measure time and memory against kymatio main.
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

#: Negligible parts of linear operators are dropped below this fraction of the largest value:
#: columns of a frequential operator (see :meth:`JTFS._fr_operator`) and spectral periods of a
#: time filter before subsampling (see :func:`_filter_subsample`).
_PRUNE = 1e-13

#: Numbers per block of the joint modulus (time samples x batch x 2C): bounds its working memory.
_BLOCK = 2**19

#: Padded samples per pass of the scattering: a larger batch is computed in passes of this
#: size, which bounds the working memory (larger passes are not faster).
_PASS = 2**17

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
    T : 'global' or int
        Time averaging: ``'global'`` (the mean over time; output (B, P)) or the
        width in samples of the Gaussian low-pass ``phi_T``, a power of two with
        ``1 <= T <= N`` (output (B, P, frames), one frame every
        ``T / 2**oversampling`` samples, at least 1; see :class:`JTFS`).
    """

    N: int
    J: int
    Q: tuple[int, int] = (12, 1)
    J_fr: int = 3
    Q_fr: int = 1
    F: int | None = 2
    oversampling: int = 0
    T: str | int = "global"

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
        if not (isinstance(self.T, str) and self.T == "global"):
            T = self.T
            if not (isinstance(T, int) and not isinstance(T, bool) and 1 <= T <= self.N and not T & (T - 1)):
                raise ValueError(f"T must be 'global' or an int power of two with 1 <= T <= N = {self.N} "
                                 f"(a window of T samples), got {T!r}")


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


def _periods(h_hat: np.ndarray, factor: int) -> list[tuple[int, np.ndarray]]:
    """The terms of ``_periodize(h_hat, factor)`` worth computing, for :func:`_filter_subsample`.

    Parameters
    ----------
    h_hat : ndarray, shape (F, T) or (T,)
        Real filter spectra (F filters that share the subsampling).
    factor : int
        Subsampling, a power of two dividing T.

    Returns
    -------
    list of (int, ndarray)
        ``(p, h_hat[..., p L:(p + 1) L] / factor)`` with ``L = T / factor``, for
        the periods p where some filter exceeds :data:`_PRUNE` times its
        largest value: one or two of them, as the subsampling follows each
        filter's bandwidth.
    """
    h = np.asarray(h_hat).reshape(-1, h_hat.shape[-1])
    L = h.shape[-1] // factor
    peaks = np.abs(h).reshape(len(h), factor, L).max(-1)  # (F, factor)
    kept = np.flatnonzero((peaks > _PRUNE * np.abs(h).max(-1, keepdims=True)).any(0))
    return [(int(p), h_hat[..., p * L:(p + 1) * L] / factor) for p in kept]


def _two_sided(z_rfft: torch.Tensor, n: int, start: int, stop: int) -> torch.Tensor:
    """Bins ``start`` to ``stop - 1`` of the spectrum of real signals of length n, from their rfft.

    Bins above ``n / 2`` are the conjugates of the mirrored ones (``X[n - m] = conj X[m]``).

    Parameters
    ----------
    z_rfft : Tensor, shape (..., n // 2 + 1)
        ``torch.fft.rfft`` of the signals.
    n : int
        Signal length.
    start, stop : int
        Bin range, ``0 <= start < stop <= n``.

    Returns
    -------
    Tensor, shape (..., stop - start)
    """
    half = n // 2 + 1
    parts = []
    if start < half:
        parts.append(z_rfft[..., start:min(stop, half)])
    if stop > half:
        parts.append(z_rfft[..., n - stop + 1:n - max(start, half) + 1].flip(-1).conj())
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def _filter_subsample(z_rfft: torch.Tensor, n: int, periods: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Filter real signals and subsample the result: ``_periodize(z_hat * h_hat, factor)``, kept periods only.

    Parameters
    ----------
    z_rfft : Tensor, shape (..., n // 2 + 1)
        ``torch.fft.rfft`` of real signals of length n (``z_hat`` their full spectra).
    n : int
        Signal length.
    periods : list of (int, Tensor)
        :func:`_periods` of the filters ``h_hat``, each piece (F, L) or (L,), real.

    Returns
    -------
    Tensor, shape (..., F, L) or (..., L)
        The spectra of the filtered signals subsampled by ``factor = n / L``
        (broadcast as ``z_hat * piece``), complex.
    """
    L = periods[0][1].shape[-1]
    out = None
    for p, h in periods:
        term = _two_sided(z_rfft, n, p * L, (p + 1) * L) * h
        out = term if out is None else out + term
    return out


def _blocks(Y: torch.Tensor, Wb: torch.Tensor):
    """The joint paths a block of time samples at a time: ``Y^T W`` in real block form.

    Parameters
    ----------
    Y : Tensor, shape (B, R, T)
        Complex rows.
    Wb : Tensor, shape (2R, 2C)
        ``[[Re W, Im W], [-Im W, Re W]]`` for a complex (R, C) operator ``W``.

    Yields
    ------
    start : int
        First time sample of the block.
    P : Tensor, shape (Tb, B, 2C)
        Real parts, then imaginary parts, of ``sum_r Y[b, r, t] W[r, c]`` at the
        time samples ``start`` to ``start + Tb`` (Tb B 2C is about :data:`_BLOCK`).
    """
    B, R, T = Y.shape
    Yr = torch.view_as_real(Y).permute(2, 0, 3, 1)  # (T, B, 2, R), a view
    step = 2 ** max(0, (_BLOCK // (B * Wb.shape[1])).bit_length() - 1)  # a power of two, as T is
    for start in range(0, T, step):
        Yb = Yr[start:start + step].reshape(-1, 2 * R)  # (Tb B, 2R), a copy of the block
        yield start, (Yb @ Wb).view(-1, B, Wb.shape[1])


def _phase(P: torch.Tensor) -> torch.Tensor:
    """``z / |z|`` (0 where ``z = 0``), computed in place.

    Parameters
    ----------
    P : Tensor, shape (..., 2C)
        Complex numbers z stacked as real parts, then imaginary parts; overwritten.

    Returns
    -------
    Tensor, shape (..., 2C)
        P, holding the phases stacked the same way.
    """
    C = P.shape[-1] // 2
    inverse = torch.hypot(P[..., :C], P[..., C:]).clamp_min_(torch.finfo(P.dtype).tiny).reciprocal_()
    P.view(*P.shape[:-1], 2, C).mul_(inverse.unsqueeze(-2))
    return P


class _JointModulusMean(torch.autograd.Function):
    """The time average of the modulus of a complex matrix product, one block of time at a time.

    ``m[b, c] = mean_t |z[b, t, c]|`` with ``z[b, t, c] = sum_r Y[b, r, t] W[r, c]``,
    for complex rows ``Y`` (B, R, T) and a constant complex operator given in
    real block form ``Wb = [[Re W, Im W], [-Im W, Re W]]`` (2R, 2C) (see
    :func:`_blocks`).  The (B, T, C) array ``z`` never exists whole, neither in
    the forward pass nor saved for a derivative: derivatives recompute it block
    by block from ``Y``.  With ``u = z / |z|``, the gradient is
    ``dL/dY = mean_t (u dL/dm) W^H`` and the tangent along ``dY`` is
    ``mean_t Re(conj(u) (dY^T W))``, which :class:`_JointModulusMeanTangent`
    computes without forming the (T, C) tangent of ``z``.  Reverse mode,
    forward mode and ``vmap`` are supported.
    """

    @staticmethod
    def forward(Y: torch.Tensor, Wb: torch.Tensor) -> torch.Tensor:
        total = 0
        for _, P in _blocks(Y, Wb):
            C = P.shape[-1] // 2
            total = total + torch.hypot(P[..., :C], P[..., C:]).sum(0)
        return total / Y.shape[-1]

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        Y, Wb = inputs
        ctx.set_materialize_grads(False)  # the absent tangent of the constant Wb stays None
        ctx.save_for_backward(Y, Wb)
        ctx.save_for_forward(Y, Wb)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None):
        Y, Wb = ctx.saved_tensors
        if ctx.needs_input_grad[1]:
            raise NotImplementedError("the operator of the joint paths is a constant")
        if grad is None:
            return None, None
        g = torch.cat([grad, grad], dim=-1) / Y.shape[-1]  # (B, 2C)
        blocks = [(_phase(P) * g) @ Wb.T for _, P in _blocks(Y, Wb)]  # each (Tb, B, 2R)
        grad_Y = torch.cat(blocks).view(Y.shape[-1], Y.shape[0], 2, -1).permute(1, 3, 0, 2)  # (B, R, T, 2)
        return torch.view_as_complex(grad_Y.contiguous()), None

    @staticmethod
    def jvp(ctx, dY: torch.Tensor | None, dWb: torch.Tensor | None) -> torch.Tensor | None:
        Y, Wb = ctx.saved_tensors
        if dWb is not None:
            raise NotImplementedError("the operator of the joint paths is a constant")
        return None if dY is None else _JointModulusMeanTangent.apply(Y, Wb, dY)

    @staticmethod
    def vmap(info, in_dims, Y: torch.Tensor, Wb: torch.Tensor):
        if in_dims[1] is not None:
            raise NotImplementedError("the operator of the joint paths is a constant")
        Y = Y.movedim(in_dims[0], 0)  # (n, B, R, T): n B rows of signals
        out = _JointModulusMean.apply(Y.reshape(-1, *Y.shape[2:]), Wb)
        return out.view(*Y.shape[:2], -1), 0


class _JointModulusMeanTangent(torch.autograd.Function):
    """Tangents of :class:`_JointModulusMean` along K directions at once.

    ``forward(Y, Wb, dY)``, with ``dY`` (..., B, R, T) complex (leading
    dimensions: the K directions), returns the tangents (..., B, C).  Writing
    ``z = Y^T W`` and ``u = z / |z|`` for one signal, the tangent is
    ``mean_t Re(conj(u[t, c]) sum_r dY[r, t] W[r, c])
    = sum_r Re(W[r, c] G[r, c]) / T`` with ``G = dY conj(u)`` (R, C), a sum
    over time: per block of time samples, one batched matrix product (in
    real block form) over all directions and signals adds to ``G``, with
    ``u`` recomputed from ``Y``.  ``vmap`` folds a vmapped axis into the
    directions (when only ``dY`` has it) or the signals.  Not differentiable
    (no second derivatives).
    """

    @staticmethod
    def forward(Y: torch.Tensor, Wb: torch.Tensor, dY: torch.Tensor) -> torch.Tensor:
        B, R, T = Y.shape
        lead = dY.shape[:-3]
        # (B, K 2R, T): for each direction, real parts of the rows, then imaginary parts
        d = torch.view_as_real(dY.reshape(-1, B, R, T)).permute(1, 0, 4, 2, 3).reshape(B, -1, T)
        G = None
        for start, P in _blocks(Y, Wb):
            U = _phase(P).transpose(0, 1)  # (B, Tb, 2C)
            block = d[..., start:start + U.shape[1]]
            G = block @ U if G is None else G.baddbmm_(block, U)
        G = G.view(B, -1, 2 * R, Wb.shape[1]).mul_(Wb).sum(2)  # (B, K, 2C)
        C = G.shape[-1] // 2
        dm = (G[..., :C] + G[..., C:]) / T  # (B, K, C)
        return dm.transpose(0, 1).reshape(*lead, B, C)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError("second derivatives of the joint paths are not implemented")

    @staticmethod
    def vmap(info, in_dims, Y: torch.Tensor, Wb: torch.Tensor, dY: torch.Tensor):
        y_dim, w_dim, d_dim = in_dims
        if w_dim is not None:
            raise NotImplementedError("the operator of the joint paths is a constant")
        dY = dY.movedim(d_dim, 0) if d_dim is not None else dY.expand(info.batch_size, *dY.shape)
        if y_dim is None:  # the same signals: more directions
            return _JointModulusMeanTangent.apply(Y, Wb, dY), 0
        Y = Y.movedim(y_dim, 0)  # (n, B, R, T): more signals
        n, B = Y.shape[:2]
        dY = dY.movedim(0, -4)  # (..., n, B, R, T)
        out = _JointModulusMeanTangent.apply(Y.reshape(n * B, *Y.shape[2:]), Wb,
                                             dY.reshape(*dY.shape[:-4], n * B, *dY.shape[-2:]))
        return out.view(*out.shape[:-2], n, B, -1).movedim(-3, 0), 0


class JTFS:
    """Joint time-frequency scattering with global or local time averaging.

    Parameters
    ----------
    config : JTFSConfig
        Settings; ``config.T`` chooses the time averaging (module docstring).

    Attributes
    ----------
    paths : list of Path
        What each output coefficient is, in output order (the same for every T).
    n_pad : int
        Padded time length (a power of two).
    pad_left : int
        Zeros before the signal in the padded axis.
    n_fr : int
        Padded length of the log-frequency axis.
    log2_T : int or None
        ``log2 T`` for a local T; None for global averaging.
    stride : int or None
        Samples between time frames, ``2**max(log2_T - oversampling, 0)``;
        None for global averaging.
    frames : int
        Time frames per path: ``n_pad / stride`` for a local T (the output is
        (B, P, frames)); 1 for global averaging (the output is (B, P), with
        no frame axis).
    frame_times : ndarray of float, shape (frames,) or None
        Centre of each frame in signal samples, ``f * stride - pad_left``
        (frames outside ``[0, N)`` hold what the filters spread into the
        padding); None for global averaging.
    """

    def __init__(self, config: JTFSConfig):
        self.config = c = config
        self.n_pad = 2 ** math.ceil(math.log2(c.N + 2 ** (c.J + 1)))
        self.pad_left = (self.n_pad - c.N) // 2
        self.log2_T = None if c.T == "global" else c.T.bit_length() - 1
        # the wavelets do not depend on the factory's T, only its low-pass phi_T does
        phi_t, psi1, psi2 = scattering_filter_factory(self.n_pad, c.J, c.Q, 2**c.J if self.log2_T is None else c.T)
        self.psi1 = psi1
        self.psi2 = psi2
        self.j1 = [int(p["j"]) for p in psi1]
        self.j2 = [int(p["j"]) for p in psi2]
        # log2 of the subsampling of each first- and second-order output: as far as its bandwidth
        # allows, and for a local T no further than the frames' stride
        cap = (lambda j: j) if self.log2_T is None else (lambda j: min(j, self.log2_T))
        self.k1 = [max(cap(j) - c.oversampling, 0) for j in self.j1]
        self.k2 = [max(cap(j) - c.oversampling, 0) for j in self.j2]
        if self.log2_T is None:
            self.stride, self.frames, self.frame_times = None, 1, None
        else:
            self.stride = 2 ** max(self.log2_T - c.oversampling, 0)
            self.frames = self.n_pad // self.stride
            self.frame_times = np.arange(self.frames, dtype=float) * self.stride - self.pad_left
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
        # time filters as the spectral periods that matter after subsampling (see _filter_subsample)
        self._psi1_periods = {k: _periods(np.stack([psi1[n]["levels"][0] for n in idx]), 2**k)
                              for k, idx in self._k1_groups.items()}
        self._psi2_periods = {(n2, k): _periods(_decimated(psi2[n2]["levels"][0], k), 2 ** (self.k2[n2] - k))
                              for n2 in range(len(self.j2)) for k in self._k1_groups if k <= self.k2[n2]}
        self._fr_numpy = {(len(self.psi1), (0, 1)): self._fr_operator(len(self.psi1), (0, 1))}
        self._fr_numpy.update({(m, (0, 1, -1)): self._fr_operator(m, (0, 1, -1)) for m in n1_maxes})
        if self.log2_T is not None:
            # phi_T for a signal decimated by 2**k, as the spectral periods kept at the frames' stride
            phi_hat = np.asarray(phi_t["levels"][0])
            self._phi_periods = {k: _periods(_decimated(phi_hat, k), self.stride // 2**k)
                                 for k in {0} | set(self.k1) | set(self.k2)}
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
        """Filters and frequential operators as tensors of ``like``'s precision and device (cached).

        The time filters are stored as their kept spectral periods (:func:`_periods`).

        The joint paths' frequential filtering ``W`` (complex, (R, C)) is stored in
        real block form ``[[Re W, Im W], [-Im W, Re W]]`` (2R, 2C), which maps the
        stacked real and imaginary parts of the rows to those of the output
        (see :class:`_JointModulusMean`), or as ``W`` itself for a local T.
        A local T adds ``"phi"``: the time low-pass per input subsampling.
        """
        real = torch.float64 if like.dtype == torch.float64 else torch.float32
        key = (real, like.device)
        if key not in self._cache:
            cplx = torch.complex128 if real == torch.float64 else torch.complex64
            t = lambda a, dt: torch.as_tensor(np.asarray(a), dtype=dt, device=like.device)
            ops = {"psi1": {k: [(p, t(h, real)) for p, h in periods] for k, periods in self._psi1_periods.items()},
                   "psi2": {n2_k: [(p, t(h, real)) for p, h in periods]
                            for n2_k, periods in self._psi2_periods.items()},
                   "fr": {}}
            for key_fr, (W, A) in self._fr_numpy.items():
                if key_fr == (len(self.psi1), (0, 1)) or self.log2_T is not None:
                    ops["fr"][key_fr] = (t(W, cplx), t(A, real))
                else:
                    block = np.block([[W.real, W.imag], [-W.imag, W.real]])
                    ops["fr"][key_fr] = (t(block, real), t(A, real))
            if self.log2_T is not None:
                ops["phi"] = {k: [(p, t(h, real)) for p, h in periods] for k, periods in self._phi_periods.items()}
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
        Tensor, shape (B, P) or (P,) (global T), (B, P, frames) or (P, frames) (local T)
            Coefficients in the order of :attr:`paths`, in x's dtype; for a
            local T, the time frames of each path (:attr:`frames`,
            :attr:`frame_times`).
        """
        c = self.config
        if not isinstance(x, torch.Tensor) or x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"x must be a float32 or float64 tensor, got {getattr(x, 'dtype', type(x))}")
        if x.ndim not in (1, 2) or x.shape[-1] != c.N:
            raise ValueError(f"x must have shape (B, {c.N}) or ({c.N},), got {tuple(x.shape)}")
        batched = x.ndim == 2
        x = x if batched else x.unsqueeze(0)
        per_pass = max(1, _PASS // self.n_pad)
        if len(x) > per_pass:
            S = torch.cat([self.scattering(part) for part in x.split(per_pass)])
            return S if batched else S.squeeze(0)
        ops = self._operators(x)
        local = self.log2_T is not None
        x_pad = torch.nn.functional.pad(x, (self.pad_left, self.n_pad - c.N - self.pad_left))
        X_rfft = torch.fft.rfft(x_pad).unsqueeze(1)  # (B, 1, n_pad / 2 + 1)
        # first order, one group of filters per subsampling 2**k: U1 (B, filters with k1 = k, n_pad / 2**k),
        # kept as its time average (B, filters[, frames]) and its rfft
        S1, U1_rfft = [], {}
        for k, periods in ops["psi1"].items():
            U1 = torch.fft.ifft(_filter_subsample(X_rfft, self.n_pad, periods)).abs()
            U1_rfft[k] = torch.fft.rfft(U1)
            S1.append(_lowpass(U1_rfft[k], U1.shape[-1], ops["phi"][k]) if local else U1.mean(-1))
        S1 = torch.cat(S1, dim=1)  # (B, n1[, frames]), n1 in filter order
        W, A = ops["fr"][(len(self.psi1), (0, 1))]
        S0 = _lowpass(X_rfft, self.n_pad, ops["phi"][0]) if local else x_pad.mean(-1, keepdim=True)
        parts = [S0, ((S1.movedim(1, -1).to(W.dtype) @ W).abs() @ A).movedim(-1, 1)]
        for n2, j2 in enumerate(self.j2):
            n1_max = sum(j1 < j2 for j1 in self.j1)  # psi2 sees the rows n1 < n1_max
            if n1_max == 0:
                continue
            # Y2 = U1 * psi2, decimated to 2**k2: (B, n1_max, n_pad / 2**k2), complex
            groups = sorted({self.k1[n1] for n1 in range(n1_max)})
            Y2 = torch.fft.ifft(torch.cat([_filter_subsample(U1_rfft[k], self.n_pad // 2**k, ops["psi2"][(n2, k)])
                                           for k in groups], dim=1)[:, :n1_max])
            W2, A = ops["fr"][(n1_max, (0, 1, -1))]  # W2: W in real block form (global) or W (local)
            if local:  # A^T |W^T Y2| (B, R, n_pad / 2**k2), then phi_T along time
                joint = A.T @ (W2.T @ Y2).abs()
                parts.append(_lowpass(torch.fft.rfft(joint), Y2.shape[-1], ops["phi"][self.k2[n2]]))
            else:
                parts.append(_JointModulusMean.apply(Y2, W2) @ A)
        S = torch.cat(parts, dim=1)
        return S if batched else S.squeeze(0)

    __call__ = scattering


def _lowpass(v_rfft: torch.Tensor, n: int, phi_periods: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Local time average: real signals low-passed by ``phi_T`` and sampled at the frames' stride.

    Parameters
    ----------
    v_rfft : Tensor, shape (..., n // 2 + 1)
        ``torch.fft.rfft`` of real signals of length n (a time axis decimated by ``2**k``).
    n : int
        Signal length.
    phi_periods : list of (int, Tensor)
        :func:`_periods` of ``phi_T`` decimated by ``2**k``, at the subsampling
        ``stride / 2**k``; each piece (frames,).

    Returns
    -------
    Tensor, shape (..., frames)
        ``(v * phi_T)(f stride)`` for every frame f, real.
    """
    return torch.fft.ifft(_filter_subsample(v_rfft, n, phi_periods)).real


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
