"""The four training losses behind one signature, and the PNP loss's constants.

Every loss is a callable ``loss(nu_hat, batch, state) -> scalar tensor``:

* ``nu_hat``, shape (B, d): the encoder's prediction in ``nu`` coordinates
  (:mod:`pnpbook.scaling`), float32 or float64;
* ``batch``: a dict of tensors for the same B samples, of which a loss reads
  only the keys in its ``needs`` attribute, so the training loop builds only
  those: ``"nu"`` (B, d) targets, ``"x"`` (B, N) target audio, ``"S"`` (B, P)
  ``Phi`` of the targets, ``"M"`` (B, d, d) the PNP metric at the targets;
* ``state``: a :class:`LossState`, the PNP loss's ``lambda``, ``mu`` and
  damping (the other losses ignore it).

Every loss is a mean of per-sample terms over the batch, so the loss of a batch
split across processes and averaged is the loss of the whole batch.

:class:`PLoss` compares parameters; :class:`MSSLoss` and :class:`DDSPJTFSLoss`
render the prediction with the synthesizer (``theta = h^-1(nu_hat)``, rendered
with ``validate="clip"``: a prediction outside the synthesizer's range is
clamped to it, with zero gradient along the clamped coordinates, and counted in
the loss's ``n_clipped``) and compare sounds; :class:`PNPLoss` is the quadratic
form of the PNP metric (spec 7.1, 7.3).  :func:`pnp_mu` and :func:`lambda0`
choose its scale and its initial damping from the train fold.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal, Mapping

import torch

from pnpbook import data, jtfs
from pnpbook.jtfs import JTFS, phi
from pnpbook.metric import Damping, damped
from pnpbook.scaling import Scaler
from pnpbook.synth import SYNTHS, Synth

#: Names accepted by :func:`make_loss`.
LOSSES: tuple[str, ...] = ("ploss", "mss", "ddsp_jtfs", "pnp")

#: FFT sizes of the multi-scale spectral loss (spec 8, ``specl2``).
MSS_N_FFT: tuple[int, ...] = (2048, 1024, 512, 256, 128, 64)

DAMPINGS: tuple[str, ...] = ("identity", "diag", "mean")
LAMBDA_RULES: tuple[str, ...] = ("ours", "authors")


@dataclasses.dataclass
class LossState:
    """What the training loop changes in the PNP loss during training.

    Attributes
    ----------
    lam : float
        Damping strength ``lambda >= 0``: in the units of M for
        ``damping="identity"``, dimensionless for ``"diag"`` and ``"mean"``.
    mu : float
        Overall scale ``mu > 0`` of the PNP loss (:func:`pnp_mu`).
    damping : {"identity", "diag", "mean"}
        ``D`` of ``M + lambda D`` (:func:`pnpbook.metric.damped`).
    M_mean : Tensor, shape (d, d), optional
        Mean metric over the train fold, needed for ``damping="mean"``.
    """

    lam: float = 0.0
    mu: float = 1.0
    damping: Damping = "identity"
    M_mean: torch.Tensor | None = None


def _batch_item(batch: Mapping[str, torch.Tensor], key: str, loss: object) -> torch.Tensor:
    """``batch[key]``, or a KeyError naming the loss and the keys it needs."""
    if key not in batch:
        raise KeyError(f"{type(loss).__name__} needs batch keys {sorted(loss.needs)}; "
                       f"{key!r} is missing (got {sorted(batch)})")
    return batch[key]


def _check_prediction(nu_hat: torch.Tensor, batch: Mapping[str, torch.Tensor], loss: object) -> torch.Tensor:
    """Check ``nu_hat`` against ``batch["nu"]``; return the target ``nu`` in ``nu_hat``'s dtype.

    Raises
    ------
    ValueError
        If ``nu_hat`` is not a float32/float64 tensor of ``batch["nu"]``'s shape
        (B, d), or holds NaN or infinite values.
    """
    nu = _batch_item(batch, "nu", loss)
    if not isinstance(nu_hat, torch.Tensor) or nu_hat.dtype not in (torch.float32, torch.float64):
        got = getattr(nu_hat, "dtype", type(nu_hat).__name__)
        raise ValueError(f"nu_hat must be a float32 or float64 tensor, got {got}")
    if nu_hat.ndim != 2 or nu_hat.shape != nu.shape:
        raise ValueError(f"nu_hat must have the shape (B, d) of batch['nu'], {tuple(nu.shape)}; "
                         f"got {tuple(nu_hat.shape)}")
    finite = torch.isfinite(nu_hat.detach())
    if not bool(finite.all()):
        row, col = (int(i) for i in (~finite).nonzero()[0])
        raise ValueError(f"nu_hat must be finite: nu_hat[{row}, {col}] = {float(nu_hat[row, col])}")
    return nu.to(nu_hat.dtype)


class PLoss:
    """Parameter loss: the mean squared error in ``nu``, ``mean_{b,k} (nu_hat - nu)**2`` (spec 8).

    The mean runs over batch and parameters, like the authors'
    ``F.mse_loss``.  Returns a scalar in ``nu_hat``'s dtype.
    """

    needs = frozenset({"nu"})

    def __call__(self, nu_hat: torch.Tensor, batch: Mapping[str, torch.Tensor],
                 state: LossState | None = None) -> torch.Tensor:
        """Loss of ``nu_hat`` (B, d) against ``batch["nu"]`` (B, d); ``state`` is unused."""
        nu = _check_prediction(nu_hat, batch, self)
        return torch.nn.functional.mse_loss(nu_hat, nu)


class _RenderingLoss:
    """Shared part of the losses that render ``nu_hat`` with the synthesizer."""

    needs: frozenset[str]

    def __init__(self, synth: Synth, scaler: Scaler):
        if len(scaler.low) != synth.d:
            raise ValueError(f"scaler has {len(scaler.low)} columns but {synth.name} has d = {synth.d}")
        self.synth = synth
        self.scaler = scaler
        #: Values of ``h^-1(nu_hat)`` outside the synthesizer's range at the last call, shape () int64.
        self.n_clipped = torch.zeros((), dtype=torch.int64)

    def render(self, nu_hat: torch.Tensor) -> torch.Tensor:
        """``g(clip(h^-1(nu_hat)))``, shape (B, N), in ``nu_hat``'s dtype; sets :attr:`n_clipped`."""
        x, self.n_clipped = self.synth(self.scaler.inverse(nu_hat), validate="clip")
        return x


class MSSLoss(_RenderingLoss):
    r"""Multi-scale spectral loss through the synthesizer (the authors' ``specl2``, spec 8).

    .. math::

        L = \frac1B \sum_b \frac16 \sum_s
            \big\| |\mathrm{STFT}_s(\hat x_b)| - |\mathrm{STFT}_s(x_b)| \big\|_F,
        \qquad \hat x_b = g(h^{-1}(\hat\nu_b)),

    with ``n_fft`` in (2048, 1024, 512, 256, 128, 64), hop ``n_fft / 4``, a
    periodic Hann window of length ``n_fft``, ``center=True`` (reflect padding)
    and magnitudes, the norm neither squared nor normalised.  This is a
    per-sample mean: the authors took each scale's Frobenius norm over the whole
    (B, frequencies, frames) tensor, which grows like sqrt(B) with the batch size
    and couples the samples of a batch (each sample's gradient is divided by the
    whole batch's error), so their loss is not a mean over samples.  An ``n_fft``
    larger than the signal length N is clamped to N (still six terms, some
    repeated): :attr:`n_ffts` holds the sizes used.  Where a prediction renders
    exactly the target, the norm's gradient is taken as 0 (torch's convention).

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset, ``g``.
    scaler : Scaler
        ``h``, fitted on the train fold.

    Attributes
    ----------
    n_ffts : tuple of int
        FFT sizes used, :data:`MSS_N_FFT` clamped to N.
    n_clipped : Tensor, shape ()
        Clipped parameter values at the last call.

    Returns a scalar in ``nu_hat``'s dtype (in units of the audio's amplitude).
    """

    needs = frozenset({"nu", "x"})

    def __init__(self, synth: Synth, scaler: Scaler):
        super().__init__(synth, scaler)
        self.n_ffts = tuple(min(n, synth.n_samples) for n in MSS_N_FFT)

    def magnitudes(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``|STFT_s(x)|`` for each scale, shapes (B, n_fft_s / 2 + 1, frames_s), in x's dtype.

        A bin that is exactly zero (a silent stretch of a sound) gets the
        gradient 0: torch's complex ``abs`` returns NaN there, which one such
        prediction spreads to every weight through Adam.
        """
        out = []
        for n in self.n_ffts:
            z = torch.stft(x, n, hop_length=max(n // 4, 1), window=torch.hann_window(n, dtype=x.dtype, device=x.device),
                           center=True, return_complex=True)
            power = torch.view_as_real(z).pow(2).sum(-1)
            nonzero = power > 0
            out.append(torch.where(nonzero, power, torch.ones_like(power)).sqrt() * nonzero)
        return out

    def __call__(self, nu_hat: torch.Tensor, batch: Mapping[str, torch.Tensor],
                 state: LossState | None = None) -> torch.Tensor:
        """Loss of ``nu_hat`` (B, d) against ``batch["x"]`` (B, N); ``state`` is unused."""
        _check_prediction(nu_hat, batch, self)
        x = _batch_item(batch, "x", self)
        if x.shape != (nu_hat.shape[0], self.synth.n_samples):
            expected = (nu_hat.shape[0], self.synth.n_samples)
            raise ValueError(f"batch['x'] must have shape (B, N) = {expected}, got {tuple(x.shape)}")
        x_hat = self.render(nu_hat)
        per_scale = [torch.linalg.vector_norm(a - b, dim=(-2, -1))
                     for a, b in zip(self.magnitudes(x_hat), self.magnitudes(x.to(x_hat.dtype)))]
        return torch.stack(per_scale).mean(0).mean()


class DDSPJTFSLoss(_RenderingLoss):
    """Spectral loss with ``Phi`` = JTFS through the synthesizer (spec 7.1).

    ``L = 1/2 mean_b ||Phi(g(h^-1(nu_hat_b))) - S_b||^2`` with
    ``Phi(x) = log1p(c JTFS(x))`` and the targets' ``S_b = Phi(g(theta_b))``
    precomputed once (``batch["S"]``), as a fair DDSP would: only the prediction
    goes through synthesizer and JTFS at each step.  At ``nu_hat`` near ``nu``
    this is the PNP loss with ``mu = 1`` and ``lambda = 0`` to second order in
    ``nu_hat - nu``.

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset; its ``n_samples`` must equal ``op.config.N``.
    scaler : Scaler
        ``h``, fitted on the train fold.
    op : JTFS
        The scattering operator that made ``batch["S"]``.
    c : float
        The log compression constant of ``Phi`` that made ``batch["S"]``.

    Returns a scalar in ``nu_hat``'s dtype (``Phi`` is dimensionless).
    """

    needs = frozenset({"nu", "S"})

    def __init__(self, synth: Synth, scaler: Scaler, op: JTFS, c: float):
        super().__init__(synth, scaler)
        if synth.n_samples != op.config.N:
            raise ValueError(f"synth renders {synth.n_samples} samples but the JTFS expects "
                             f"N = {op.config.N}")
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
            raise ValueError(f"c must be a positive finite number, got {c!r}")
        self.op = op
        self.c = float(c)

    def __call__(self, nu_hat: torch.Tensor, batch: Mapping[str, torch.Tensor],
                 state: LossState | None = None) -> torch.Tensor:
        """Loss of ``nu_hat`` (B, d) against ``batch["S"]`` (B, P); ``state`` is unused."""
        _check_prediction(nu_hat, batch, self)
        S = _batch_item(batch, "S", self)
        if S.shape != (nu_hat.shape[0], self.op.size):
            raise ValueError(f"batch['S'] must have shape (B, P) = {(nu_hat.shape[0], self.op.size)}, "
                             f"got {tuple(S.shape)}")
        S_hat = phi(self.op(self.render(nu_hat)), self.c)
        return 0.5 * (S_hat - S.to(S_hat.dtype)).pow(2).sum(-1).mean()


def _check_state(state: LossState, d: int) -> None:
    """Raise ValueError unless ``state`` is a usable PNP state for d parameters."""
    if not isinstance(state, LossState):
        raise ValueError(f"state must be a LossState, got {type(state).__name__}")
    if not (math.isfinite(state.lam) and state.lam >= 0):
        raise ValueError(f"state.lam must be finite and >= 0, got {state.lam!r}")
    if not (math.isfinite(state.mu) and state.mu > 0):
        raise ValueError(f"state.mu must be finite and > 0, got {state.mu!r}")
    if state.damping not in DAMPINGS:
        raise ValueError(f"state.damping must be one of {DAMPINGS}, got {state.damping!r}")
    if state.damping == "mean":
        if state.M_mean is None or tuple(state.M_mean.shape) != (d, d):
            shape = None if state.M_mean is None else tuple(state.M_mean.shape)
            raise ValueError(f"damping 'mean' needs state.M_mean of shape ({d}, {d}), the mean metric over "
                             f"the train fold; got {shape}")


class PNPLoss:
    """The perceptual-neural-physical loss (spec 7.1, 7.3).

    ``L = 1/2 mean_b dnu_b^T mu (M_b + lambda D_b) dnu_b`` with
    ``dnu = nu_hat - nu``, ``M_b = batch["M"][b]`` and ``D`` from
    ``state.damping`` (:func:`pnpbook.metric.damped`), computed in float64 and
    returned as a float64 scalar (its gradient reaches ``nu_hat`` in
    ``nu_hat``'s dtype).  The authors wrap the quadratic form in a ReLU; it is
    not needed here: M is positive semidefinite (``J^T J``), so is every D
    (I, diag(M), the mean of PSD matrices) and ``lambda >= 0`` is checked, so
    the form is nonnegative up to float64 rounding of order
    ``eps ||M|| ||dnu||^2``, harmless to the gradient.

    Validation should call it with ``lam = 0`` (the authors' undamped PNP).
    """

    needs = frozenset({"nu", "M"})

    def __call__(self, nu_hat: torch.Tensor, batch: Mapping[str, torch.Tensor],
                 state: LossState | None = None) -> torch.Tensor:
        """Loss of ``nu_hat`` (B, d) against ``batch["nu"]`` (B, d) and ``batch["M"]`` (B, d, d).

        ``state`` None means ``LossState()``: ``lambda = 0``, ``mu = 1``.
        """
        nu = _check_prediction(nu_hat, batch, self)
        B, d = nu_hat.shape
        state = LossState() if state is None else state
        _check_state(state, d)
        M = _batch_item(batch, "M", self)
        if tuple(M.shape) != (B, d, d):
            raise ValueError(f"batch['M'] must have shape (B, d, d) = {(B, d, d)}, got {tuple(M.shape)}")
        M_mean = None if state.M_mean is None else state.M_mean.to(device=M.device, dtype=torch.float64)
        A = damped(M.double(), state.lam, state.damping, M_mean)
        dnu = (nu_hat - nu).double()
        return 0.5 * state.mu * torch.einsum("bi,bij,bj->b", dnu, A, dnu).mean()


def _check_metrics(M_train: torch.Tensor) -> torch.Tensor:
    """``M_train`` as float64 after checking it is a finite (n, d, d) tensor with n >= 1."""
    if not isinstance(M_train, torch.Tensor):
        raise ValueError(f"M_train must be a tensor of shape (n, d, d), got {type(M_train).__name__}")
    if M_train.ndim != 3 or M_train.shape[1] != M_train.shape[2] or M_train.shape[0] == 0:
        raise ValueError(f"M_train must have shape (n, d, d) with n >= 1, got {tuple(M_train.shape)}")
    if not bool(torch.isfinite(M_train).all()):
        n = int((~torch.isfinite(M_train)).flatten(1).any(1).nonzero()[0])
        raise ValueError(f"M_train must be finite: M_train[{n}] holds NaN or inf")
    return M_train.double()


def pnp_mu(M_train: torch.Tensor) -> float:
    """``mu = 1 / median_n trace(M_n)`` over the train fold.

    For an error ``dnu`` with uncorrelated coordinates of mean square
    ``sigma**2`` each, ``E[dnu^T M dnu] = sigma**2 trace(M)``; with this ``mu``
    the PNP loss of a typical sample is ``sigma**2 / 2``, of the order of the
    P-loss (``sigma**2``), which is order one at initialization (``nu`` lies in
    [-1, 1]).  The median (the mean of the two middle values for even n) is
    robust to the few samples whose M is huge.

    Parameters
    ----------
    M_train : Tensor, shape (n, d, d)
        Metrics of the train fold.

    Returns
    -------
    float
        ``mu``, in the inverse units of M.
    """
    M = _check_metrics(M_train)
    median = float(torch.quantile(torch.diagonal(M, dim1=-2, dim2=-1).sum(-1), 0.5))
    if not median > 0:
        raise ValueError(f"the median trace of M_train is {median}; mu = 1 / median needs it > 0")
    return 1.0 / median


def lambda0(M_train: torch.Tensor, damping: Damping, k: float = 10.0,
            rule: Literal["ours", "authors"] = "ours") -> float:
    """The initial damping ``lambda_0`` of the adaptive schedule, from the train fold.

    ``rule="ours"``: ``k * max_n lambda_max(M_n)`` for ``damping="identity"``
    (``lambda`` has the units of M, and ``k`` times the largest eigenvalue makes
    ``lambda I`` dominate every M of the fold), ``k`` for ``"diag"`` and
    ``"mean"`` (there D has M's units and ``lambda`` is dimensionless).  Any
    ``k > 0`` is accepted; ``k >= 10`` is what makes early training P-loss-like:
    with ``D = I``, ``M_n <= lambda_0 I / k`` for every train sample, so
    ``M + lambda_0 I`` is within ``1 / k`` (10 %) of ``lambda_0 I``, a scaled
    P-loss; with ``D = diag(M)``, ``M <= d diag(M)`` for any PSD M, so it is
    within ``d / k`` of ``lambda_0 diag(M)``, a P-loss weighted per parameter;
    with ``D = M_mean`` no such bound holds (a sample's M may exceed the mean in
    some direction), and ``k`` only sets ``lambda_0`` against the average metric.

    ``rule="authors"``: ``(max_n lambda_max(M_n))**2`` whatever the damping
    (spec 7.2, with λ₀ taken from the train fold): ``k`` is ignored.  Squaring an
    eigenvalue gives the square of M's units, so this rule is kept only for
    comparison.

    Parameters
    ----------
    M_train : Tensor, shape (n, d, d)
        Metrics of the train fold, symmetric (the lower triangle is read).
    damping : {"identity", "diag", "mean"}
        The damping D the schedule will use.
    k : float
        Multiplier, finite and > 0 (``rule="ours"`` only).
    rule : {"ours", "authors"}
        Which rule.

    Returns
    -------
    float
        ``lambda_0``.
    """
    if damping not in DAMPINGS:
        raise ValueError(f"damping must be one of {DAMPINGS}, got {damping!r}")
    if rule not in LAMBDA_RULES:
        raise ValueError(f"rule must be one of {LAMBDA_RULES}, got {rule!r}")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not (math.isfinite(k) and k > 0):
        raise ValueError(f"k must be a finite number > 0 (k >= 10 makes early training P-loss-like), "
                         f"got {k!r}")
    M = _check_metrics(M_train)
    if rule == "ours" and damping != "identity":
        return float(k)
    top = float(torch.linalg.eigvalsh(M)[:, -1].max())
    return top**2 if rule == "authors" else k * top


def make_loss(name: str, synth: str | Synth, scale: str | None = None,
              scaler: Scaler | None = None) -> PLoss | MSSLoss | DDSPJTFSLoss | PNPLoss:
    """One of the four losses at a preset.

    Parameters
    ----------
    name : {"ploss", "mss", "ddsp_jtfs", "pnp"}
        Which loss.
    synth : str or Synth
        A registry name (then ``scale`` picks the preset) or a record.
    scale : str or None
        Scale for a registry name; None reads ``$PNPBOOK_SCALE``.  With a
        record it must be None or the record's scale.
    scaler : Scaler or None
        ``h`` for the rendering losses; None fits it on the train fold
        (:func:`pnpbook.data.train_scaler`).

    Returns
    -------
    callable
        ``loss(nu_hat, batch, state) -> scalar``, with its ``needs``.
        ``"ddsp_jtfs"`` uses the preset's JTFS and ``c``
        (:func:`pnpbook.jtfs.operator`, :func:`pnpbook.jtfs.preset_c`).
    """
    if name not in LOSSES:
        raise ValueError(f"loss name must be one of {LOSSES}, got {name!r}")
    if isinstance(synth, str):
        if synth not in SYNTHS:
            raise ValueError(f"synth {synth!r} is not one of {tuple(SYNTHS)}")
        synth = SYNTHS[synth].at(scale)
    elif not isinstance(synth, Synth):
        raise ValueError(f"synth must be a registry name or a Synth record, got {type(synth).__name__}")
    elif scale is not None and scale != synth.scale:
        raise ValueError(f"scale {scale!r} disagrees with the record's scale {synth.scale!r}")
    if name == "ploss":
        return PLoss()
    if name == "pnp":
        return PNPLoss()
    scaler = data.train_scaler(synth) if scaler is None else scaler
    if name == "mss":
        return MSSLoss(synth, scaler)
    return DDSPJTFSLoss(synth, scaler, jtfs.operator(synth), jtfs.preset_c(synth))
