"""The four losses (issue 4 part 3): gradients against central finite differences in float64, the
PNP gradient against the DDSP-JTFS gradient as the error shrinks, exact values on hand-made inputs,
the per-sample mean, clipping, and the input checks."""
import dataclasses
import functools
import math

import numpy as np
import pytest
import torch

from finite_differences import jacobian_fd

from pnpbook import data, jtfs
from pnpbook.losses import (DDSPJTFSLoss, LossState, MSSLoss, PLoss, PNPLoss, lambda0, make_loss,
                            pnp_mu)
from pnpbook.metric import jacobian, metric, pnp_forward
from pnpbook.synth import SYNTHS


@dataclasses.dataclass
class Case:
    """A synthesizer at the tiny preset with float64 targets from the val fold."""

    synth: object
    scaler: object
    op: object
    c: float
    theta: torch.Tensor  # (2, d) float64
    nu: torch.Tensor  # (2, d) float64
    x: torch.Tensor  # (2, N) float64
    S: torch.Tensor  # (2, P) float64


@functools.lru_cache(maxsize=None)
def case(name: str) -> Case:
    synth = SYNTHS[name].at("tiny")
    scaler = data.train_scaler(synth)
    op, c = jtfs.operator(synth), jtfs.preset_c(synth)
    theta = torch.from_numpy(data.fold(synth, "val", n=2).theta.copy())
    x = synth(theta)
    return Case(synth, scaler, op, c, theta, scaler(theta), x, jtfs.phi(op(x), c))


def batch_of(cs: Case, rows: slice = slice(None)) -> dict:
    return {"nu": cs.nu[rows], "theta": cs.theta[rows], "x": cs.x[rows], "S": cs.S[rows]}


def gradient_error(loss, nu_hat: torch.Tensor, batch: dict, state=None, **fd) -> float:
    """||autograd - finite differences|| / ||autograd|| of the loss's gradient in nu_hat (float64)."""
    v = nu_hat.clone().requires_grad_()
    (grad,) = torch.autograd.grad(loss(v, batch, state), v)
    shape = nu_hat.shape
    with torch.no_grad():
        ref = jacobian_fd(lambda flat: loss(flat.reshape(shape), batch, state).reshape(1),
                          nu_hat.flatten(), **fd).reshape(shape)
    return float((grad - ref).norm() / grad.norm())


def random_psd(B: int, d: int, seed: int) -> torch.Tensor:
    A = torch.randn(B, d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return A @ A.transpose(-1, -2)


# ---------------------------------------------------------------- P-loss and PNP: exact values

def test_ploss_is_mean_squared_error():
    gen = torch.Generator().manual_seed(0)
    nu, nu_hat = torch.rand(2, 6, 4, generator=gen) * 2 - 1
    ref = sum(float(a - b) ** 2 for a, b in zip(nu_hat.flatten(), nu.flatten())) / 24
    assert float(PLoss()(nu_hat, {"nu": nu})) == pytest.approx(ref, rel=1e-6)
    assert PLoss.needs == {"nu"}


def test_pnp_with_identity_metric_is_half_mean_squared_norm():
    gen = torch.Generator().manual_seed(1)
    nu, nu_hat = torch.rand(2, 7, 5, generator=gen) * 2 - 1
    batch = {"nu": nu, "M": torch.eye(5, dtype=torch.float64).repeat(7, 1, 1)}
    value = PNPLoss()(nu_hat, batch, LossState(lam=0.0, mu=1.0))
    dnu = (nu_hat - nu).double()
    assert value.dtype == torch.float64
    assert float(value) == pytest.approx(0.5 * float((dnu**2).sum(1).mean()), rel=1e-12)


@pytest.mark.parametrize("damping", ["identity", "diag", "mean"])
def test_pnp_damping_kinds(damping):
    """1/2 mean_b dnu^T mu (M + lam D) dnu with D written out by hand, in numpy."""
    M = random_psd(4, 3, seed=2)
    M_mean = M.mean(0)
    gen = torch.Generator().manual_seed(3)
    nu, nu_hat = torch.rand(2, 4, 3, generator=gen, dtype=torch.float64)
    lam, mu = 0.7, 0.3
    value = PNPLoss()(nu_hat, {"nu": nu, "M": M}, LossState(lam, mu, damping, M_mean))
    ref = 0.0
    for b in range(4):
        Mb = M[b].numpy()
        D = {"identity": np.eye(3), "diag": np.diag(np.diag(Mb)), "mean": M_mean.numpy()}[damping]
        dnu = (nu_hat[b] - nu[b]).numpy()
        ref += 0.5 * mu * dnu @ (Mb + lam * D) @ dnu / 4
    assert float(value) == pytest.approx(ref, rel=1e-12)


def test_pnp_mu_and_lambda0_on_hand_made_metrics():
    # traces 5, 4, 1 (median 4); largest eigenvalues 4, 3, 0.5 (max 4)
    M = torch.tensor([[[1.0, 0.0], [0.0, 4.0]],
                      [[2.0, 1.0], [1.0, 2.0]],
                      [[0.5, 0.0], [0.0, 0.5]]], dtype=torch.float64)
    assert pnp_mu(M) == 0.25
    assert pnp_mu(M[:2]) == 1 / 4.5  # even n: the mean of the two middle traces
    assert lambda0(M, "identity") == pytest.approx(40.0, rel=1e-14)
    assert lambda0(M, "identity", k=3.0) == pytest.approx(12.0, rel=1e-14)
    assert lambda0(M, "diag") == 10.0
    assert lambda0(M, "mean", k=25.0) == 25.0
    for damping in ("identity", "diag", "mean"):
        assert lambda0(M, damping, k=3.0, rule="authors") == pytest.approx(16.0, rel=1e-14)
    assert lambda0(M[1:], "identity", rule="authors") == pytest.approx(9.0, rel=1e-14)


# ---------------------------------------------------------------- gradients against finite differences

def test_ploss_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(4)
    nu, nu_hat = torch.rand(2, 3, 5, generator=gen, dtype=torch.float64) * 2 - 1
    assert gradient_error(PLoss(), nu_hat, {"nu": nu}) < 1e-8


@pytest.mark.parametrize("damping", ["identity", "diag", "mean"])
def test_pnp_gradient_matches_finite_differences(damping):
    M = random_psd(3, 5, seed=5)
    gen = torch.Generator().manual_seed(6)
    nu, nu_hat = torch.rand(2, 3, 5, generator=gen, dtype=torch.float64) * 2 - 1
    state = LossState(lam=0.7, mu=0.3, damping=damping, M_mean=M.mean(0))
    assert gradient_error(PNPLoss(), nu_hat, {"nu": nu, "M": M}, state) < 1e-8


@pytest.mark.parametrize("name, h0", [("amchirp", 1e-4), ("ftm", 1e-5)])
def test_mss_gradient_matches_finite_differences(name, h0):
    """Central differences at h0 / 2 and h0 / 4 in nu, Richardson-extrapolated.  The drum needs the
    smaller steps: at h = 5e-5 its error is 3e-3 (its pitch moves the partials fast), at 5e-6 1e-9."""
    cs = case(name)
    nu_hat = cs.nu + torch.tensor([0.03, -0.02, 0.025, -0.015, 0.02][:cs.synth.d], dtype=torch.float64)
    loss = MSSLoss(cs.synth, cs.scaler)
    assert gradient_error(loss, nu_hat[:1], batch_of(cs, slice(0, 1)), h0=h0, steps=3) < 1e-4


def test_ddsp_jtfs_gradient_matches_finite_differences():
    """At a point inside the range (no clipping); central differences at 5e-5 and 2.5e-5 in nu,
    Richardson-extrapolated."""
    cs = case("amchirp")
    nu_hat = cs.nu[:1] + torch.tensor([0.03, -0.02, 0.025], dtype=torch.float64)
    loss = DDSPJTFSLoss(cs.synth, cs.scaler, cs.op, cs.c)
    assert gradient_error(loss, nu_hat, batch_of(cs, slice(0, 1)), h0=1e-4, steps=3) < 1e-4
    assert int(loss.n_clipped) == 0


# ---------------------------------------------------------------- PNP is DDSP-JTFS to first order

def test_pnp_gradient_over_ddsp_jtfs_gradient_tends_to_one():
    """With M = J^T J at the target, lam = 0 and mu = 1, the two gradients differ by a relative
    O(||dnu||): grad DDSP = J(nu_hat)^T (Phi(nu_hat) - Phi(nu)) = M dnu + O(||dnu||^2).  The log-log
    slope of the relative difference against ||dnu|| is about 1 over two decades (3e-3 to 3e-5;
    at 1e-2 the third-order terms still show: slope 1.1).
    The AM chirp only: the drum's peak normalisation makes Phi o g only piecewise smooth."""
    cs = case("amchirp")
    nu = cs.nu[:1]
    f = pnp_forward(cs.synth, cs.op, cs.scaler, cs.c)
    batch = {"nu": nu, "S": f(nu[0]).unsqueeze(0), "M": metric(jacobian(f, nu[0])).unsqueeze(0)}
    ddsp, pnp = DDSPJTFSLoss(cs.synth, cs.scaler, cs.op, cs.c), PNPLoss()
    direction = torch.tensor([[0.6, -0.3, 0.5]], dtype=torch.float64)
    direction = direction / direction.norm()
    sizes = [3e-3, 3e-4, 3e-5]
    rel = []
    for t in sizes:
        v = (nu + t * direction).requires_grad_()
        (g_ddsp,) = torch.autograd.grad(ddsp(v, batch), v)
        (g_pnp,) = torch.autograd.grad(pnp(v, batch, LossState(lam=0.0, mu=1.0)), v)
        rel.append(float((g_pnp - g_ddsp).norm() / g_ddsp.norm()))
    slope = np.polyfit(np.log(sizes), np.log(rel), 1)[0]
    steps = np.diff(np.log10(rel))
    assert 0.8 < slope < 1.2 and bool((-1.2 < steps).all() and (steps < -0.8).all()), (slope, rel)
    assert rel[-1] < 1e-3, rel


# ---------------------------------------------------------------- MSS, per-sample means, clipping

@pytest.mark.parametrize("name", ["amchirp", "ftm"])
def test_mss_is_zero_for_identical_signals_and_positive_otherwise(name):
    cs = case(name)
    loss = MSSLoss(cs.synth, cs.scaler)
    batch = batch_of(cs)
    batch["x"] = cs.synth(cs.scaler.inverse(cs.nu))  # the render of exactly nu, so x_hat == x
    v = cs.nu.clone().requires_grad_()
    value = loss(v, batch)
    (grad,) = torch.autograd.grad(value, v)
    assert float(value.detach()) == 0.0 and bool(torch.isfinite(grad).all())
    assert float(loss(cs.nu + 0.01, batch)) > 0


def test_mss_clamps_n_fft_to_short_signals():
    cs = case("amchirp")
    short = dataclasses.replace(cs.synth, n_samples=1000)
    loss = MSSLoss(short, cs.scaler)
    assert loss.n_ffts == (1000, 1000, 512, 256, 128, 64)
    value = loss(cs.nu + 0.01, {"nu": cs.nu, "x": short(cs.theta)})
    assert math.isfinite(float(value)) and float(value) > 0


@pytest.mark.parametrize("which", ["mss", "ddsp_jtfs", "pnp"])
def test_loss_is_the_mean_of_per_sample_losses(which):
    """Unlike the authors' MSS (one norm over the whole batch tensor), every loss of a batch is the
    mean of its samples' losses, so DDP's gradient averaging gives the single-process gradient."""
    cs = case("amchirp")
    batch = batch_of(cs)
    batch["M"] = random_psd(2, 3, seed=7)
    loss = {"mss": MSSLoss(cs.synth, cs.scaler), "pnp": PNPLoss(),
            "ddsp_jtfs": DDSPJTFSLoss(cs.synth, cs.scaler, cs.op, cs.c)}[which]
    nu_hat = cs.nu + torch.tensor([[0.05, -0.04, 0.03], [-0.02, 0.06, 0.01]], dtype=torch.float64)
    state = LossState(lam=0.5, mu=2.0)
    whole = float(loss(nu_hat, batch, state))
    parts = [float(loss(nu_hat[b:b + 1], {k: v[b:b + 1] for k, v in batch.items()}, state)) for b in range(2)]
    assert whole == pytest.approx(sum(parts) / 2, rel=1e-12)
    assert parts[0] != pytest.approx(parts[1], rel=1e-3)


@pytest.mark.parametrize("which", ["mss", "ddsp_jtfs"])
def test_predictions_outside_the_range_are_clipped(which):
    cs = case("amchirp")
    loss = make_loss(which, cs.synth, scaler=cs.scaler)
    batch = {k: v.float() for k, v in batch_of(cs).items()}
    nu_hat = torch.tensor([[3.0, 0.1, -0.2], [0.2, -4.0, 0.3]], requires_grad=True)
    value = loss(nu_hat, batch)
    (grad,) = torch.autograd.grad(value, nu_hat)
    assert value.dtype == torch.float32 and math.isfinite(float(value.detach()))
    assert int(loss.n_clipped) == 2
    assert float(grad[0, 0]) == 0.0 and float(grad[1, 1]) == 0.0 and float(grad[0, 1]) != 0.0


def test_make_loss_builds_each_loss_with_its_needs():
    cs = case("ftm")
    expected = {"ploss": (PLoss, {"nu"}), "mss": (MSSLoss, {"nu", "x"}),
                "ddsp_jtfs": (DDSPJTFSLoss, {"nu", "S"}), "pnp": (PNPLoss, {"nu", "M"})}
    for name, (cls, needs) in expected.items():
        loss = make_loss(name, "ftm", "tiny", scaler=cs.scaler)
        assert isinstance(loss, cls) and loss.needs == needs
    ddsp = make_loss("ddsp_jtfs", cs.synth, scaler=cs.scaler)
    assert ddsp.op is cs.op and ddsp.c == jtfs.preset_c(cs.synth)
    assert make_loss("mss", "ftm", "tiny").scaler == cs.scaler  # fitted on the train fold


# ---------------------------------------------------------------- bad inputs

def test_bad_predictions_raise():
    nu = torch.zeros(3, 5)
    batch = {"nu": nu, "M": torch.eye(5, dtype=torch.float64).repeat(3, 1, 1)}
    for loss in (PLoss(), PNPLoss()):
        with pytest.raises(ValueError, match=r"shape \(B, d\) of batch\['nu'\], \(3, 5\); got \(3, 4\)"):
            loss(torch.zeros(3, 4), batch)
        with pytest.raises(ValueError, match="shape"):
            loss(torch.zeros(15), batch)
        bad = torch.zeros(3, 5)
        bad[1, 2] = float("nan")
        with pytest.raises(ValueError, match=r"finite: nu_hat\[1, 2\] = nan"):
            loss(bad, batch)
        bad[1, 2] = float("inf")
        with pytest.raises(ValueError, match=r"nu_hat\[1, 2\] = inf"):
            loss(bad, batch)
        with pytest.raises(ValueError, match="float32 or float64"):
            loss(torch.zeros(3, 5, dtype=torch.int64), batch)
    with pytest.raises(KeyError, match="PNPLoss needs batch keys.*'M' is missing"):
        PNPLoss()(nu, {"nu": nu})
    with pytest.raises(KeyError, match="'nu' is missing"):
        PLoss()(nu, {"x": nu})


def test_bad_pnp_inputs_raise():
    nu = torch.zeros(2, 3)
    M = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    cases = [({"nu": nu, "M": M[:, :2]}, LossState(), r"batch\['M'\] must have shape"),
             ({"nu": nu, "M": M}, LossState(lam=-1.0), "lam must be finite and >= 0"),
             ({"nu": nu, "M": M}, LossState(lam=float("nan")), "lam must be finite"),
             ({"nu": nu, "M": M}, LossState(mu=0.0), "mu must be finite and > 0"),
             ({"nu": nu, "M": M}, LossState(damping="levenberg"), "damping must be one of"),
             ({"nu": nu, "M": M}, LossState(damping="mean"), "needs state.M_mean of shape"),
             ({"nu": nu, "M": M}, LossState(damping="mean", M_mean=torch.eye(2)), "needs state.M_mean")]
    for batch, state, message in cases:
        with pytest.raises(ValueError, match=message):
            PNPLoss()(nu, batch, state)


def test_bad_rendering_inputs_raise():
    cs = case("amchirp")
    with pytest.raises(ValueError, match=r"batch\['x'\] must have shape"):
        MSSLoss(cs.synth, cs.scaler)(cs.nu, {"nu": cs.nu, "x": cs.x[:, :100]})
    with pytest.raises(ValueError, match=r"batch\['S'\] must have shape"):
        DDSPJTFSLoss(cs.synth, cs.scaler, cs.op, cs.c)(cs.nu, {"nu": cs.nu, "S": cs.S[:, :10]})
    with pytest.raises(ValueError, match="expects N = 8192"):
        DDSPJTFSLoss(dataclasses.replace(cs.synth, n_samples=4096), cs.scaler, cs.op, cs.c)
    with pytest.raises(ValueError, match="c must be a positive"):
        DDSPJTFSLoss(cs.synth, cs.scaler, cs.op, 0.0)
    with pytest.raises(ValueError, match="scaler has 5 columns"):
        MSSLoss(cs.synth, case("ftm").scaler)
    with pytest.raises(ValueError, match="loss name must be one of"):
        make_loss("l2", "amchirp", "tiny")
    with pytest.raises(ValueError, match="synth 'drum' is not one of"):
        make_loss("mss", "drum", "tiny")
    with pytest.raises(ValueError, match="disagrees with the record's scale 'tiny'"):
        make_loss("mss", cs.synth, "small")


def test_bad_metrics_for_mu_and_lambda0_raise():
    M = torch.eye(3, dtype=torch.float64).repeat(4, 1, 1)
    nan = M.clone()
    nan[2, 0, 1] = float("nan")
    for bad, message in [(nan, r"finite: M_train\[2\]"), (M[0], r"shape \(n, d, d\)"),
                         (M[:, :2], r"shape \(n, d, d\)"), (M[:0], "n >= 1"), (M.numpy(), "tensor")]:
        with pytest.raises(ValueError, match=message):
            pnp_mu(bad)
        with pytest.raises(ValueError, match=message):
            lambda0(bad, "identity")
    with pytest.raises(ValueError, match="median trace .* > 0"):
        pnp_mu(torch.zeros(2, 3, 3, dtype=torch.float64))
    for k in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="k must be a finite number > 0"):
            lambda0(M, "diag", k=k)
    with pytest.raises(ValueError, match="rule must be one of"):
        lambda0(M, "identity", rule="paper")
    with pytest.raises(ValueError, match="damping must be one of"):
        lambda0(M, "id")


def test_mss_gradient_is_finite_on_silent_stretches():
    """A prediction whose STFT has exact zeros (silence) must not give NaN gradients (complex abs does)."""
    synth = data.resolve_synth("amchirp", "tiny")
    loss = make_loss("mss", synth)
    x = torch.zeros(2, synth.n_samples)
    x[:, : synth.n_samples // 2] = torch.randn(2, synth.n_samples // 2)  # second half silent
    x_hat = x.clone().requires_grad_()
    mags = loss.magnitudes(x_hat)
    assert any(bool((m == 0).any()) for m in mags)  # the case is exercised
    sum(m.sum() for m in mags).backward()
    assert torch.isfinite(x_hat.grad).all()
    z = torch.stft(x, 256, hop_length=64, window=torch.hann_window(256), center=True, return_complex=True)
    torch.testing.assert_close(loss.magnitudes(x)[loss.n_ffts.index(256)], z.abs(), rtol=1e-6, atol=1e-7)
