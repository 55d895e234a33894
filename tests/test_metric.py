"""The PNP metric: J by forward mode against reverse mode and finite differences, M's spectrum,
and the quadratic model dnu^T M dnu against the true squared distance (issue 3 part 4)."""
import dataclasses

import numpy as np
import pytest
import torch
from torch.func import vjp

from finite_differences import jacobian_fd

from pnpbook import data
from pnpbook.jtfs import JTFS, JTFSConfig
from pnpbook.metric import damped, jacobian, metric, noise_floor, pnp_forward, spectrum
from pnpbook.synth import SYNTHS

N = 8192
OP = JTFS(JTFSConfig(N=N, J=10, Q=(8, 1), J_fr=3, Q_fr=1, F=2))  # the tiny preset's sizes


def setup(name):
    synth = SYNTHS[name].at("tiny")
    scaler = data.train_scaler(synth)
    f = pnp_forward(synth, OP, scaler, c=1e3)
    nu = scaler(torch.from_numpy(data.fold(synth, "val", n=2).theta.copy()))
    return f, nu


@pytest.fixture(scope="module", params=["amchirp", "ftm"])
def case(request):
    f, nu = setup(request.param)
    return f, nu, jacobian(f, nu)


def test_jacobian_equals_reverse_mode(case):
    f, nu, J = case
    gen = torch.Generator().manual_seed(1)
    for b in range(len(nu)):
        _, pull = vjp(f, nu[b])
        for _ in range(2):
            u = torch.randn(J.shape[1], dtype=torch.float64, generator=gen)
            ref = pull(u)[0]
            assert float((u @ J[b] - ref).norm() / ref.norm()) < 1e-10


def test_jacobian_matches_central_differences(case):
    """Central differences with Richardson extrapolation in float64, the step chosen per parameter
    without looking at J: over steps h = 1e-3 / 2**m, the pair of successive estimates that agree
    best marks where truncation error (shrinking with h) meets rounding error (growing as 1/h).
    Pitch-like parameters need steps near 1e-5 in nu; the others take 1e-3."""
    f, nu, J = case
    fd = jacobian_fd(f, nu[0])
    for k in range(nu.shape[1]):
        assert float((fd[:, k] - J[0, :, k]).norm() / J[0, :, k].norm()) < 1e-4, k


def test_spectrum_from_singular_values(case):
    _, _, J = case
    M = metric(J)
    assert M.dtype == torch.float64 and M.shape == (J.shape[0], J.shape[2], J.shape[2])
    lam = torch.linalg.eigvalsh(M).flip(-1)
    sig2 = spectrum(J)
    d = J.shape[-1]
    bound = 10 * d * torch.finfo(torch.float64).eps * sig2[:, :1]
    assert bool(((lam - sig2).abs() <= bound).all())
    assert bool((noise_floor(J) < sig2[:, 0]).all())


@pytest.mark.parametrize("b", [0, 1])
def test_quadratic_model_error_is_first_order(b):
    """||Phi(g(nu + dnu)) - Phi(g(nu))||^2 / (dnu^T M dnu) -> 1, with an error of order ||dnu||:
    a log-log slope of about 1 over three decades of ||dnu||.

    The AM chirp only: the drum is peak normalised, and the sample holding the peak can jump as
    the parameters move, which makes Phi o g only piecewise smooth (issue 3's note)."""
    f, nu = setup("amchirp")
    J = jacobian(f, nu[b])
    M = metric(J)
    direction = torch.tensor([0.6, -0.3, 0.5], dtype=torch.float64)
    direction = direction / direction.norm()
    y0 = f(nu[b])
    sizes = np.logspace(-4, -1, 4)
    errors = []
    for s in sizes:
        dnu = s * direction
        ratio = float((f(nu[b] + dnu) - y0).pow(2).sum() / (dnu @ M @ dnu))
        errors.append(abs(ratio - 1))
    slope = np.polyfit(np.log10(sizes), np.log10(errors), 1)[0]
    assert errors[0] < 1e-3 and 0.9 < slope < 1.1, (errors, slope)


def test_damping():
    M = torch.tensor([[[4.0, 1.0], [1.0, 2.0]]], dtype=torch.float64)
    torch.testing.assert_close(damped(M, 0.5), M + 0.5 * torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(damped(M, 0.5, "diag"), M + 0.5 * torch.diag(torch.tensor([4.0, 2.0], dtype=torch.float64)))
    mean = torch.eye(2, dtype=torch.float64) * 3
    torch.testing.assert_close(damped(M, 2.0, "mean", mean), M + 6 * torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="M_mean"):
        damped(M, 1.0, "mean")
    with pytest.raises(ValueError, match="damping kind"):
        damped(M, 1.0, "trace")


def test_forward_rejects_mismatched_lengths():
    synth = SYNTHS["ftm"].at("tiny")
    short = dataclasses.replace(synth, n_samples=2048)
    with pytest.raises(ValueError, match="expects N = 8192"):
        pnp_forward(short, OP, data.train_scaler(synth), 1e3)


def test_local_time_window_flattens_frames_into_the_jacobian():
    """With a local window T, Phi has P * frames entries per sound (each path's frames in a row), and its
    forward-mode Jacobian still equals reverse-mode vector-Jacobian products."""
    synth = SYNTHS["amchirp"].at("tiny")
    op = JTFS(JTFSConfig(N=N, J=10, Q=(8, 1), J_fr=3, Q_fr=1, F=2, T=2048))
    scaler = data.train_scaler(synth)
    f = pnp_forward(synth, op, scaler, c=1e3)
    nu = scaler(torch.from_numpy(data.fold(synth, "val", n=1).theta.copy()))
    J = jacobian(f, nu)
    assert op.frames > 1 and J.shape == (1, op.size * op.frames, 3)
    S = op(synth(scaler.inverse(nu)))
    assert S.shape == (1, op.size, op.frames)
    assert torch.allclose(f(nu[0]), torch.log1p(1e3 * S[0]).flatten(), rtol=1e-6)
    u = torch.randn(J.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = vjp(f, nu[0])[1](u)[0]
    assert float((u @ J[0] - ref).norm() / ref.norm()) < 1e-10
