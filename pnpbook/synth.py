"""Two differentiable synthesizers: the AM/FM arpeggiator and the FTM drum.

Both are batched pure-torch functions of ``theta`` (the spec's units: log10 of
the parameters whose :class:`ParamSpec` says ``log``), mapping ``(B, d)`` to
``(B, N)`` (or ``(d,)`` to ``(N,)``).  They work in float32 and float64, under
autograd and under ``torch.func.jacfwd``, ``jacrev`` and ``vmap``: no Python
loop over the batch, no in-place writes.  Frequencies, decays and phases are
always computed in float64 (phases reach 1e4-1e5 rad, where float32 rounds to
1e-2 rad); the output is cast back to the dtype of ``theta``.

The raw functions :func:`amchirp` and :func:`ftm` are the physics.  The
registry :data:`SYNTHS` holds one :class:`Synth` record per synthesizer with the
paper's sample rate, length and parameter ranges; ``SYNTHS[name].at(scale)``
gives the record at a preset of :mod:`pnpbook.config`, and calling a record
checks ``theta`` against its ranges before rendering (see :meth:`Synth.check`).
"""
from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Callable, Literal, Mapping

import torch

from pnpbook import config

Validate = Literal["raise", "clip", "off"]
VALIDATE_MODES: tuple[str, ...] = ("raise", "clip", "off")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One synthesizer parameter.

    Attributes
    ----------
    name : str
        Column name in the authors' CSV files (``f0``, ``omega``, ...).
    unit : str
        Physical unit ("" when dimensionless).
    low, high : float
        Range in physical units.
    log : bool
        Whether ``theta`` holds ``log10`` of the physical value.
    description : str
        What the parameter means, for plots and error messages.
    """

    name: str
    unit: str
    low: float
    high: float
    log: bool
    description: str

    @property
    def theta_range(self) -> tuple[float, float]:
        """(low, high) in ``theta`` units (log10 when :attr:`log`)."""
        if self.log:
            return math.log10(self.low), math.log10(self.high)
        return self.low, self.high


def _as_batch(theta: torch.Tensor, d: int, names: tuple[str, ...]) -> torch.Tensor:
    """Check type, dtype and shape of ``theta``; return it as ``(B, d)``.

    Shapes and dtypes are static, so this check is safe inside ``torch.func``
    transforms.
    """
    if not isinstance(theta, torch.Tensor):
        raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
    if theta.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"theta must be float32 or float64, got {theta.dtype}")
    if theta.ndim not in (1, 2) or theta.shape[-1] != d:
        raise ValueError(f"theta must have shape (B, {d}) or ({d},) with columns "
                         f"{names}, got {tuple(theta.shape)}")
    return theta if theta.ndim == 2 else theta.unsqueeze(0)


def _finish(x64: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Cast the float64 render to theta's dtype; drop the batch axis if theta had none."""
    x = x64.to(theta.dtype)
    return x if theta.ndim == 2 else x.squeeze(0)


def amchirp_time(sr: float, n_samples: int) -> torch.Tensor:
    """Time axis of the AM chirp in seconds: ``(k - N // 2) / sr``, shape ``(N,)``, float64.

    For the paper's N = 32768 at 8192 Hz this is ``arange(-2, 2, 1 / sr)``.
    """
    k = torch.arange(n_samples, dtype=torch.float64)
    return (k - n_samples // 2) / sr


def amchirp(theta: torch.Tensor, sr: float = 8192.0, n_samples: int = 2**15) -> torch.Tensor:
    r"""Amplitude-modulated exponential chirp (spec section 2).

    .. math::
        x(t) = \gamma \sin\Big(\frac{2\pi f_c}{\gamma\ln 2}(2^{\gamma t}-1)\Big)
               \sin(2\pi f_m t)\, \exp\Big(-\frac{n^2}{2(\sigma_t s_r)^2}\Big),
        \qquad \sigma_t = 0.2/\gamma \text{ s},

    with ``n = k - (N - 1) / 2`` the sample index from the window centre.  The
    instantaneous carrier frequency is ``f_c 2**(gamma t)``.  Not normalised:
    the factor gamma partly compensates the window length, as in the paper.

    Parameters
    ----------
    theta : Tensor, shape (B, 3) or (3,)
        ``(log10 f_c [Hz], log10 f_m [Hz], log10 gamma [oct/s])``.
    sr : float
        Sample rate in Hz.
    n_samples : int
        Signal length N.

    Returns
    -------
    Tensor, shape (B, N) or (N,)
        The signal, in theta's dtype.
    """
    th = _as_batch(theta, 3, ("f0", "fm", "gamma")).to(torch.float64)
    fc, fm, gamma = (10.0 ** th).unsqueeze(-1).unbind(-2)  # each (B, 1)
    t = amchirp_time(sr, n_samples).to(th.device)  # (N,)
    rate = gamma * math.log(2.0)  # (B, 1), natural-log rate of 2**(gamma t)
    phase = 2 * math.pi * fc * torch.expm1(rate * t) / rate  # (B, N), rad
    n = (torch.arange(n_samples, dtype=torch.float64, device=th.device)
         - (n_samples - 1) / 2)
    sigma = 0.2 / gamma * sr  # (B, 1), in samples
    window = torch.exp(-(n**2) / (2 * sigma**2))
    x = gamma * torch.sin(phase) * torch.sin(2 * math.pi * fm * t) * window
    return _finish(x, theta)


#: FTM constants (spec 3.1): side l1, excitation/observation point, amplitude, modes.
FTM_L1 = math.pi
FTM_X = 0.4
FTM_H = 0.03
FTM_MODES = 10


def ftm_time(sr: float, n_samples: int) -> torch.Tensor:
    """Time axis of the drum in seconds: exactly ``n / sr``, shape ``(N,)``, float64.

    (The authors' ``linspace(0, N, N) / sr`` has a step of N / ((N - 1) sr).)
    """
    return torch.arange(n_samples, dtype=torch.float64) / sr


def ftm_modes(theta: torch.Tensor, sr: float) -> dict[str, torch.Tensor]:
    r"""Modal frequencies, decays, amplitudes and the kept set of the FTM drum.

    From the PDE coefficients of spec 3.2, for the 10 x 10 modes
    ``mu = (mu1, mu2)`` (flattened row-major, ``mu1`` slow):
    ``n_mu = mu1**2 + (mu2 / alpha)**2`` (with ``l1 = pi``),
    ``beta_mu = S^4 n_mu^2 + c^2 n_mu``, ``a_mu = (d1 - d3 n_mu) / 2`` and
    ``Omega_mu = sqrt(beta_mu - a_mu^2)`` (positive for every mode: the book
    derives the closed form).  A mode is kept exactly when ``Omega_mu < pi sr``,
    i.e. below Nyquist.

    Parameters
    ----------
    theta : Tensor, shape (B, 5) or (5,)
        ``(log10 omega [rad/s], tau [s], log10 p, log10 D, alpha)``.
    sr : float
        Sample rate in Hz.

    Returns
    -------
    dict of Tensor, each (B, 100), float64
        ``mu1``, ``mu2`` (mode indices, (100,)), ``Omega`` (rad/s), ``a`` (1/s),
        ``amp`` (amplitude before peak normalisation) and ``kept`` (bool).
    """
    th = _as_batch(theta, 5, ("omega", "tau", "p", "D", "alpha")).to(torch.float64)
    omega, tau, p, D, alpha = th.unsqueeze(-1).unbind(-2)  # each (B, 1)
    omega, p, D = 10.0**omega, 10.0**p, 10.0**D
    l1 = FTM_L1
    l2 = alpha * l1
    beta_a = alpha + 1 / alpha
    s4 = (l1 / math.pi) ** 4 * ((D * omega * alpha) ** 2 + (p * alpha / tau) ** 2)
    c2 = (l1 / math.pi) ** 2 * (alpha * (1 / beta_a - p**2 * beta_a) / tau**2
                                + alpha * omega**2 * (1 / beta_a - D**2 * beta_a))
    d1 = 2 * (1 - p * beta_a) / tau
    d3 = -2 * p * alpha / tau * (l1 / math.pi) ** 2
    idx = torch.arange(1, FTM_MODES + 1, dtype=torch.float64, device=th.device)
    mu1 = idx.repeat_interleave(FTM_MODES)  # (100,)
    mu2 = idx.repeat(FTM_MODES)  # (100,)
    n_mu = (mu1 * math.pi / l1) ** 2 + (mu2 * math.pi / l2) ** 2  # (B, 100)
    beta_mu = s4 * n_mu**2 + c2 * n_mu
    a_mu = (d1 - d3 * n_mu) / 2
    big_omega = torch.sqrt(beta_mu - a_mu**2)
    k_mu = torch.sin(mu1 * math.pi * FTM_X) * torch.sin(mu2 * math.pi * FTM_X)
    n_norm = l1 * l2 / 4
    amp = FTM_H * k_mu**2 / (n_norm * big_omega)
    return {"mu1": mu1, "mu2": mu2, "Omega": big_omega, "a": a_mu, "amp": amp,
            "kept": big_omega < math.pi * sr}


def ftm(theta: torch.Tensor, sr: float = 22050.0, n_samples: int = 2**16) -> torch.Tensor:
    r"""Rectangular drum by the functional transformation method (spec section 3).

    .. math::
        y(t) = \sum_{\mu:\ \Omega_\mu < \pi s_r} \frac{h K_\mu^2}{N_\mu \Omega_\mu}
               e^{-a_\mu t}\sin(\Omega_\mu t), \qquad x = y / \max_t |y|,

    over the full 10 x 10 mode grid (:func:`ftm_modes`), with ``t = n / sr``
    exactly.  Peak normalised, guarded against division by zero.

    Each mode is ``Im(z^n)`` with the pole ``z = exp((-a + i Omega) / sr)``.
    Writing ``n = L j + k`` (``L ~ sqrt(N)``), ``z^n = z^(L j) z^k``: the sum
    over modes becomes, per batch item, one complex matrix product of a
    (N / L, modes) matrix by a (modes, L) matrix, each entry an exact ``exp``
    (no recursion, so no accumulated rounding).  This avoids the
    (B, modes, N) array of ``exp(-a t) sin(Omega t)``: same result to 1e-13,
    20 to 60 times faster at the presets and far less memory under ``jacfwd``
    (``benchmarks/synth_speed.py``).

    Parameters
    ----------
    theta : Tensor, shape (B, 5) or (5,)
        ``(log10 omega [rad/s], tau [s], log10 p, log10 D, alpha)``.
    sr : float
        Sample rate in Hz.
    n_samples : int
        Signal length N.

    Returns
    -------
    Tensor, shape (B, N) or (N,)
        The signal, peak 1, in theta's dtype.
    """
    modes = ftm_modes(theta, sr)
    weight = (modes["amp"] * modes["kept"]).to(torch.complex128)  # (B, M): zero for aliased modes
    pole = torch.complex(-modes["a"], modes["Omega"]) / sr  # (B, M): log z, per sample
    n_fine = math.isqrt(n_samples - 1) + 1  # L
    n_coarse = -(-n_samples // n_fine)  # ceil(N / L)
    k = torch.arange(n_fine, dtype=torch.float64, device=pole.device)
    j = torch.arange(n_coarse, dtype=torch.float64, device=pole.device)
    fine = torch.exp(pole.unsqueeze(-1) * k)  # (B, M, L): z^k
    coarse = torch.exp(pole.unsqueeze(-1) * (n_fine * j))  # (B, M, N / L): z^(L j)
    y = torch.einsum("bmj,bmk->bjk", weight.unsqueeze(-1) * coarse, fine).imag  # y[L j + k]
    y = y.reshape(y.shape[0], n_coarse * n_fine)[:, :n_samples]
    peak = y.abs().amax(dim=-1, keepdim=True)
    x = y / peak.clamp_min(torch.finfo(torch.float64).tiny)
    return _finish(x, theta)


def _concrete(t: torch.Tensor) -> torch.Tensor | None:
    """The concrete values under ``torch.func`` wrappers, or None if unreachable.

    Inside ``jacfwd``/``vmap`` a tensor is wrapped; peeling the wrappers gives
    the plain tensor of all values, which can be checked without breaking the
    transform.  Each ``vmap`` level inserts its batch dimension where its
    ``in_dims`` put it, so the parameter axis (the last axis of ``t``) is
    tracked through the levels and moved last.  This uses torch's private
    functorch API; if that fails, the value check is skipped (shape and dtype
    are still checked).
    """
    try:
        functorch = torch._C._functorch
        axis = t.ndim - 1
        while functorch.is_functorch_wrapped_tensor(t):
            if functorch.is_batchedtensor(t):
                axis += int(axis >= functorch.maybe_get_bdim(t))
            t = functorch.get_unwrapped(t)
        return t.detach().movedim(axis, -1)
    except (AttributeError, RuntimeError):
        return None


@dataclasses.dataclass(frozen=True)
class Synth:
    """A synthesizer record: its physics function and one preset's settings.

    Attributes
    ----------
    name : str
        Registry key (``"amchirp"`` or ``"ftm"``).
    kernel : callable
        ``kernel(theta, sr, n_samples) -> x``, the raw physics.
    time : callable
        ``time(sr, n_samples) -> t``, the time axis in seconds.
    sr : float
        Sample rate in Hz.
    n_samples : int
        Signal length N.
    params : tuple of ParamSpec
        One per column of ``theta``, in order.
    scale : str
        The preset these settings come from.
    note : str
        What the preset changes and why.
    """

    name: str
    kernel: Callable[..., torch.Tensor]
    time: Callable[[float, int], torch.Tensor]
    sr: float
    n_samples: int
    params: tuple[ParamSpec, ...]
    scale: str = "paper"
    note: str = ""

    @property
    def d(self) -> int:
        """Number of parameters."""
        return len(self.params)

    @property
    def names(self) -> tuple[str, ...]:
        """Parameter names, the CSV column names."""
        return tuple(p.name for p in self.params)

    @property
    def duration(self) -> float:
        """Signal duration in seconds."""
        return self.n_samples / self.sr

    def theta_bounds(self, like: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high) of ``theta``, each shape (d,), on ``like``'s dtype and device."""
        lo, hi = zip(*(p.theta_range for p in self.params))
        kw = {"dtype": torch.float64} if like is None else {"dtype": like.dtype, "device": like.device}
        return torch.tensor(lo, **kw), torch.tensor(hi, **kw)

    def to_theta(self, phys: torch.Tensor) -> torch.Tensor:
        """Physical units ``(..., d)`` to ``theta`` (log10 on the log columns)."""
        log = torch.tensor([p.log for p in self.params], device=phys.device)
        return torch.where(log, torch.log10(phys), phys)

    def to_phys(self, theta: torch.Tensor) -> torch.Tensor:
        """``theta`` ``(..., d)`` to physical units."""
        log = torch.tensor([p.log for p in self.params], device=theta.device)
        return torch.where(log, 10.0**theta, theta)

    def at(self, scale: str | None = None) -> "Synth":
        """This synthesizer at a preset of :mod:`pnpbook.config`.

        Parameters
        ----------
        scale : str or None
            ``tiny``, ``small`` or ``paper``; None reads ``$PNPBOOK_SCALE``.
        """
        row = config.preset(self.name, scale)
        base = SYNTHS[self.name]
        unknown = set(row["ranges"]) - set(base.names)
        if unknown:
            raise ValueError(f"preset {self.name}/{scale} narrows unknown parameters {unknown}")
        params = tuple(dataclasses.replace(p, low=row["ranges"][p.name][0], high=row["ranges"][p.name][1])
                       if p.name in row["ranges"] else p for p in base.params)
        return dataclasses.replace(base, sr=row.get("sr", base.sr),
                                   n_samples=row.get("n_samples", base.n_samples),
                                   params=params, scale=config.get_scale(scale), note=row["note"])

    def check(self, theta: torch.Tensor, validate: Validate = "raise") -> tuple[torch.Tensor, torch.Tensor]:
        """Check ``theta`` against this preset's ranges.

        Parameters
        ----------
        theta : Tensor, shape (B, d) or (d,)
            Parameters in ``theta`` units, float32 or float64.
        validate : {"raise", "clip", "off"}
            ``"raise"``: ``ValueError`` naming the parameter, the value and the
            range for NaN or out-of-range values (a rounding tolerance of a few
            float32 ulps is allowed, in either dtype).  Inside ``torch.func`` transforms the concrete
            values under the wrappers are checked, so it works under
            ``jacfwd``/``vmap`` too.  ``"clip"``: ``torch.clamp`` to the range
            (NaN passes through).  ``"off"``: no value check.  Type, dtype and
            shape are checked in every mode.

        Returns
        -------
        theta : Tensor
            Unchanged, or clamped in "clip" mode.
        n_clipped : Tensor, shape ()
            Number of values outside the range before clamping (int64; zero
            unless ``validate="clip"``).
        """
        if validate not in VALIDATE_MODES:
            raise ValueError(f"validate must be one of {VALIDATE_MODES}, got {validate!r}")
        _as_batch(theta, self.d, self.names)
        lo, hi = self.theta_bounds(theta)
        if validate == "clip":
            outside = (theta < lo) | (theta > hi)
            return torch.clamp(theta, lo, hi), outside.sum()
        if validate == "raise":
            values = _concrete(theta)
            if values is not None:
                self._raise_if_bad(values.reshape(-1, self.d))
        return theta, torch.zeros((), dtype=torch.int64, device=theta.device)

    def _raise_if_bad(self, values: torch.Tensor) -> None:
        """Raise ``ValueError`` on the first NaN or out-of-range column of ``values`` (n, d)."""
        with torch._C._DisableFuncTorch():
            v = values.double()
            lo, hi = self.theta_bounds(v)
            # a few float32 ulps whatever the dtype, so a float32 theta cast to float64 still passes
            tol = 8 * torch.finfo(torch.float32).eps * torch.maximum(lo.abs().maximum(hi.abs()),
                                                                     torch.ones_like(lo))
            bad = torch.isnan(v) | (v < lo - tol) | (v > hi + tol)
            if not bool(bad.any()):
                return
            row, col = (int(i) for i in bad.nonzero()[0])
            p, value = self.params[col], float(v[row, col])
        kind = "NaN" if math.isnan(value) else "out of range"
        unit = "log10 " if p.log else ""
        raise ValueError(
            f"{self.name} parameter {p.name!r} ({p.description}) is {kind}: theta[{row}, {col}] = {value!r}, "
            f"accepted {unit}range [{p.theta_range[0]:.6g}, {p.theta_range[1]:.6g}] "
            f"(= [{p.low:g}, {p.high:g}] {p.unit or 'dimensionless'}) at scale {self.scale!r}")

    def __call__(self, theta: torch.Tensor, *, validate: Validate = "raise",
                 n_samples: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Render ``theta`` at this preset.

        Parameters
        ----------
        theta : Tensor, shape (B, d) or (d,)
            Parameters in ``theta`` units.
        validate : {"raise", "clip", "off"}
            See :meth:`check`.
        n_samples : int or None
            Render this many samples instead of the preset's (same time origin
            convention as the full render).

        Returns
        -------
        x : Tensor, shape (B, N) or (N,)
            The signal.  With ``validate="clip"`` the pair ``(x, n_clipped)``.
        """
        if n_samples is not None and (isinstance(n_samples, bool) or not isinstance(n_samples, int)
                                      or n_samples < 1):
            raise ValueError(f"n_samples must be a positive int or None, got {n_samples!r}")
        theta, n_clipped = self.check(theta, validate)
        x = self.kernel(theta, sr=self.sr, n_samples=self.n_samples if n_samples is None else n_samples)
        return (x, n_clipped) if validate == "clip" else x


SYNTHS: Mapping[str, Synth] = MappingProxyType({
    "amchirp": Synth(
        name="amchirp", kernel=amchirp, time=amchirp_time, sr=8192.0, n_samples=2**15,
        params=(
            ParamSpec("f0", "Hz", 512.0, 1024.0, True, "carrier frequency at the window centre"),
            ParamSpec("fm", "Hz", 4.0, 16.0, True, "amplitude-modulation frequency"),
            ParamSpec("gamma", "oct/s", 0.5, 4.0, True, "chirp rate"),
        ),
        note="the paper's settings (spec section 2)"),
    "ftm": Synth(
        name="ftm", kernel=ftm, time=ftm_time, sr=22050.0, n_samples=2**16,
        params=(
            ParamSpec("omega", "rad/s", 2 * math.pi * 40, 2 * math.pi * 1000, True,
                      "angular frequency of the (1,1) mode"),
            ParamSpec("tau", "s", 0.07, 0.8, False, "decay time of the (1,1) mode"),
            ParamSpec("p", "", 1e-5, 0.2, True, "frequency-dependent damping"),
            ParamSpec("D", "", 1e-5, 0.3, True, "dispersion (stiffness)"),
            ParamSpec("alpha", "", 0.01, 1.0, False, "side-length ratio l2 / l1"),
        ),
        note="the paper's settings (spec section 3); alpha starts at 0.01, not 0"),
})
