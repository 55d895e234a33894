"""The PNP metric: the Jacobian of nu -> Phi(g(h^-1(nu))), M = J^T J, its spectrum and damping.

``J`` is taken in the encoder's output coordinates ``nu`` (spec 7.2), by forward
mode: ``torch.func.jacfwd`` pushes the d tangents through synthesizer and JTFS
together (about one forward pass per tangent), and ``vmap`` batches samples.
``M`` is formed in float64.  Its spectrum comes from the singular values of
``J`` (``lambda_i(M) = sigma_i(J)**2``), never from the eigenvalues of a float32
``M``: J's rounding sets a noise floor of about ``eps_J sigma_1``, and forming M
squares it.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
from torch.func import jacfwd, vmap

from pnpbook.jtfs import JTFS, phi
from pnpbook.scaling import Scaler
from pnpbook.synth import Synth

Damping = Literal["identity", "diag", "mean"]


def pnp_forward(synth: Synth, op: JTFS, scaler: Scaler, c: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The map ``nu -> Phi(g(h^-1(nu)))`` whose Jacobian is the PNP metric's factor.

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset; its ``n_samples`` must equal ``op.config.N``.
    op : JTFS
        The scattering operator.
    scaler : Scaler
        ``h``, fitted on the train fold.
    c : float
        The log compression constant of Phi.

    Returns
    -------
    callable
        ``f(nu)``: (d,) -> (P,), in nu's dtype; with a local time window
        (``op.frames > 1``), (d,) -> (P * frames,), each path's frames in a row.  The synthesizer is called with
        ``validate="raise"``, which checks the concrete values even inside
        ``torch.func`` transforms.
    """
    if synth.n_samples != op.config.N:
        raise ValueError(f"synth renders {synth.n_samples} samples but the JTFS expects N = {op.config.N}")

    def forward(nu: torch.Tensor) -> torch.Tensor:
        S = op(synth(scaler.inverse(nu)))
        return phi(S.flatten(-2) if op.frames > 1 else S, c)  # local T: the frames of each path, path-major

    return forward


def jacobian(forward: Callable[[torch.Tensor], torch.Tensor], nu: torch.Tensor,
             chunk: int = 8) -> torch.Tensor:
    """Forward-mode Jacobian of ``forward`` at each row of ``nu``.

    Parameters
    ----------
    forward : callable
        (d,) -> (P,).
    nu : Tensor, shape (B, d) or (d,)
        Points, float32 or float64.
    chunk : int
        Samples per ``vmap`` call (memory grows with ``chunk * d``).

    Returns
    -------
    Tensor, shape (B, P, d) or (P, d)
        ``J[b, p, k] = d forward(nu_b)_p / d nu_k``.
    """
    if nu.ndim == 1:
        return jacfwd(forward)(nu)
    return torch.cat([vmap(jacfwd(forward))(part) for part in nu.split(chunk)])


def metric(J: torch.Tensor) -> torch.Tensor:
    """``M = J^T J`` in float64, shape (..., d, d), from J of shape (..., P, d)."""
    J64 = J.double()
    return J64.transpose(-1, -2) @ J64


def spectrum(J: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of M, descending, shape (..., d): the squared singular values of J (in float64)."""
    return torch.linalg.svdvals(J.double()) ** 2


def noise_floor(J: torch.Tensor) -> torch.Tensor:
    """The level below which M's eigenvalues are rounding noise, shape (...,).

    ``(10 eps_J sigma_1)**2``: a singular value of J below ten times J's
    machine epsilon times its largest is not distinguishable from zero.
    """
    sigma1 = torch.linalg.svdvals(J.double())[..., 0]
    return (10 * torch.finfo(J.dtype).eps * sigma1) ** 2


def damped(M: torch.Tensor, lam: float, kind: Damping = "identity",
           M_mean: torch.Tensor | None = None) -> torch.Tensor:
    """Levenberg-Marquardt damping ``M + lam D``, shape (..., d, d).

    Parameters
    ----------
    M : Tensor, shape (..., d, d)
        Metrics.
    lam : float
        Damping strength, in the units of M for ``kind="identity"``.
    kind : {"identity", "diag", "mean"}
        ``D = I`` (Levenberg), ``D = diag(M)`` (Marquardt), or ``D = M_mean``
        (the mean metric over the train fold).
    M_mean : Tensor, shape (d, d), optional
        Needed for ``kind="mean"``.
    """
    if kind == "identity":
        D = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    elif kind == "diag":
        D = torch.diag_embed(torch.diagonal(M, dim1=-2, dim2=-1))
    elif kind == "mean":
        if M_mean is None:
            raise ValueError("kind='mean' needs M_mean, the mean metric over the train fold")
        D = M_mean
    else:
        raise ValueError(f"damping kind must be 'identity', 'diag' or 'mean', got {kind!r}")
    return M + lam * D
