"""Derivatives of the synthesizers with respect to theta.

Renders are cut to at most 2**10 samples (``n_samples=`` of the record) so
that Jacobians are cheap.  Three independent checks at random interior points
of the paper and tiny ranges (float64):

* ``torch.autograd.gradcheck`` (fast mode);
* forward mode (``torch.func.jacfwd``) against reverse mode (``jacrev``);
* forward mode against central finite differences with Richardson
  extrapolation, one step per column.

FTM points are drawn at least 2 % away (in Omega) from any mode sitting on
the Nyquist frequency, where the kept mode set (and hence the signal) jumps.
"""
from __future__ import annotations

import pytest
import torch
from torch.func import jacfwd, jacrev

from pnpbook.synth import SYNTHS, Synth, ftm_modes

N_SAMPLES = 2**10
#: jacrev costs one backward pass per output sample; the drum's (B, 100, N)
#: intermediate makes that O(100 N**2), so jacrev of the drum uses 256 samples.
N_SAMPLES_JACREV = {"amchirp": 2**10, "ftm": 2**8}
N_POINTS = 3


def interior_points(synth: Synth, n: int, seed: int) -> torch.Tensor:
    """``n`` points drawn uniformly in the middle 80 % of each theta range, (n, d) float64.

    For the drum, candidates with a mode within 2 % of ``pi sr`` are rejected.
    """
    lo, hi = synth.theta_bounds()
    gen = torch.Generator().manual_seed(seed)
    points = []
    while len(points) < n:
        theta = lo + (hi - lo) * (0.1 + 0.8 * torch.rand(synth.d, generator=gen, dtype=torch.float64))
        if synth.name == "ftm":
            omega = ftm_modes(theta, synth.sr)["Omega"]
            if ((omega / (torch.pi * synth.sr) - 1).abs() < 0.02).any():
                continue
        points.append(theta)
    return torch.stack(points)


CASES = [(name, scale, i) for name in ("amchirp", "ftm") for scale in ("paper", "tiny")
         for i in range(N_POINTS)]
IDS = [f"{name}-{scale}-{i}" for name, scale, i in CASES]
SEEDS = {("amchirp", "paper"): 111, ("amchirp", "tiny"): 112, ("ftm", "paper"): 121, ("ftm", "tiny"): 122}


def case(name: str, scale: str, i: int) -> tuple[Synth, torch.Tensor]:
    """The record at ``scale`` and its ``i``-th test point, shape (d,)."""
    synth = SYNTHS[name].at(scale)
    return synth, interior_points(synth, N_POINTS, SEEDS[name, scale])[i]


@pytest.mark.parametrize("name,scale,i", CASES, ids=IDS)
def test_gradcheck(name, scale, i):
    synth, theta = case(name, scale, i)
    assert torch.autograd.gradcheck(lambda th: synth(th, n_samples=N_SAMPLES),
                                    (theta.clone().requires_grad_(),), fast_mode=True)


@pytest.mark.parametrize("name", ["amchirp", "ftm"])
def test_gradcheck_batched(name):
    """A batch of points: each row's render depends on its own row only."""
    synth = SYNTHS[name].at("tiny")
    theta = interior_points(synth, N_POINTS, SEEDS[name, "tiny"])
    assert torch.autograd.gradcheck(lambda th: synth(th, n_samples=N_SAMPLES // 2),
                                    (theta.clone().requires_grad_(),), fast_mode=True)


def column_errors(j_test: torch.Tensor, j_ref: torch.Tensor) -> torch.Tensor:
    """Per column ``||J_test[:, k] - J_ref[:, k]|| / ||J_ref[:, k]||``, shape (d,)."""
    return (j_test - j_ref).norm(dim=0) / j_ref.norm(dim=0)


@pytest.mark.parametrize("name,scale,i", CASES, ids=IDS)
def test_jacfwd_equals_jacrev(name, scale, i):
    synth, theta = case(name, scale, i)

    def render(th):
        return synth(th, n_samples=N_SAMPLES_JACREV[name])

    j_fwd, j_rev = jacfwd(render)(theta), jacrev(render)(theta)
    assert j_fwd.shape == j_rev.shape == (N_SAMPLES_JACREV[name], synth.d)
    assert (j_rev.norm(dim=0) > 0).all()
    assert (column_errors(j_fwd, j_rev) < 1e-10).all()


def richardson_jacobian(render, theta: torch.Tensor, steps: list[float]) -> torch.Tensor:
    """Central differences at steps h and h / 2, combined as (4 D(h/2) - D(h)) / 3.

    The combination cancels the h**2 term of the central difference, leaving
    an O(h**4) truncation error.  Returns shape (N, d).
    """
    columns = []
    for k, h in enumerate(steps):
        e = torch.zeros_like(theta)
        e[k] = 1.0

        def central(step):
            return (render(theta + step * e) - render(theta - step * e)) / (2 * step)

        columns.append((4 * central(h / 2) - central(h)) / 3)
    return torch.stack(columns, dim=-1)


FD_TOL = 1e-5


@pytest.mark.parametrize("name,scale,i", CASES, ids=IDS)
def test_jacobian_matches_finite_differences(name, scale, i):
    """jacfwd against Richardson-extrapolated central differences.

    Step per column: ``h_k = 1e-3 / max(1, kappa_k)``, where ``kappa_k`` is the
    column's sensitivity ``max |dx/dtheta_k| / max |x|`` estimated by a
    one-sided pilot difference (step 1e-7).  Frequency columns have kappa of
    several thousand (the phase at the end of the render, in radians per unit
    of log10), so a fixed step would either drown in truncation error or in
    rounding; with this step the truncation error is ~(1e-3)**4 / 480 and the
    rounding error ~1e-16 / 1e-3, both far below the tolerance.  Compared for
    every column whose norm exceeds 1e-6 of the largest column's norm.
    """
    synth, theta = case(name, scale, i)

    def render(th):
        return synth(th, n_samples=N_SAMPLES)

    x = render(theta)
    kappa = []
    for k in range(synth.d):
        e = torch.zeros_like(theta)
        e[k] = 1e-7
        kappa.append(((render(theta + e) - x) / 1e-7).abs().max().item() / x.abs().max().item())
    steps = [1e-3 / max(1.0, kk) for kk in kappa]
    j_fd = richardson_jacobian(render, theta, steps)
    j_fwd = jacfwd(render)(theta)
    norms = j_fwd.norm(dim=0)
    tested = norms > 1e-6 * norms.max()
    assert tested.sum() >= 3
    errors = column_errors(j_fwd, j_fd)
    assert (errors[tested] < FD_TOL).all(), f"per-column errors {errors.tolist()}"
