"""Tests of pnpbook.probing: the metric's spectrum with its noise floor, maps over two parameters,
walks along eigenvectors, the live Jacobian explorer and its static stand-in."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.func import jacfwd  # noqa: E402

from pnpbook import data, jtfs, metric, probing, widgets  # noqa: E402
from pnpbook.synth import SYNTHS  # noqa: E402

ipywidgets = pytest.importorskip("ipywidgets")

EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def probes():
    return {name: probing.make_probe(SYNTHS[name].at("tiny")) for name in SYNTHS}


@pytest.fixture(scope="module")
def centre_J(probes):
    """J at the centre of each preset's box, float32."""
    return {name: probing.jacobian_at(p, probing.phys_to_theta(p.synth, widgets.centre_phys(p.synth)))
            for name, p in probes.items()}


def constructed_J(singular_values, P=40, dtype=torch.float32, seed=0):
    """A (P, d) matrix with the given singular values and random orthonormal factors."""
    gen = torch.Generator().manual_seed(seed)
    d = len(singular_values)
    U, _ = torch.linalg.qr(torch.randn(P, d, dtype=torch.float64, generator=gen))
    V, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=gen))
    return (U @ torch.diag(torch.tensor(singular_values, dtype=torch.float64)) @ V.T).to(dtype)


def test_map_values_match_an_independent_computation(probes):
    """log10 det M and log10 cond M of the map at two points, against numpy's eigenvalues of a float64 M
    built with metric.metric from a Jacobian taken by plain jacfwd (no probing, no metric.jacobian)."""
    probe = probes["amchirp"]
    synth = probe.synth
    mmap = probing.metric_map(probe, "fm", "gamma", 2, 1)
    assert mmap.theta.shape == (1, 2, 3) and mmap.spectrum.values.shape == (1, 2, 3)
    centre = widgets.centre_phys(synth)
    op = jtfs.operator(synth)
    scaler = data.train_scaler(synth)
    c = jtfs.preset_c(synth)

    def forward(nu):
        return jtfs.phi(op(synth(scaler.inverse(nu))), c)

    for j in range(2):
        # the cell centre: geometric mean of the cell's edges, the others at the box centre
        fm = math.sqrt(mmap.x_edges[j] * mmap.x_edges[j + 1])
        gamma = math.sqrt(mmap.y_edges[0] * mmap.y_edges[1])
        theta = torch.log10(torch.tensor([centre["f0"], fm, gamma], dtype=torch.float64))
        torch.testing.assert_close(mmap.theta[0, j], theta, rtol=0, atol=1e-12)
        J = jacfwd(forward)(scaler(theta).float())
        # float32 rounding differs between a vmapped and a single call: compare columns in norm
        assert float(((mmap.J[0, j] - J).norm(dim=0) / J.norm(dim=0)).max()) < 1e-4
        eig = np.linalg.eigvalsh(metric.metric(J).numpy())[::-1]
        floor = (10 * EPS32) ** 2 * eig[0]
        kept = eig[eig > floor]
        assert len(kept) == 3  # the chirp's metric is well conditioned here
        assert abs(float(mmap.spectrum.log10_det[0, j]) - np.log10(kept).sum()) < 1e-3
        assert abs(float(mmap.spectrum.log10_cond[0, j]) - np.log10(kept[0] / kept[-1])) < 1e-3
        np.testing.assert_allclose(mmap.spectrum.values[0, j].numpy(), eig, rtol=1e-3)


def test_dropped_values_on_a_constructed_jacobian():
    """A singular value of 1e-9 sigma_1 is below float32's floor (10 eps sigma_1 = 1.2e-6 sigma_1) and above
    float64's; the log det and the condition number are then taken over the other two."""
    s = [2.0, 0.2, 2e-9]
    sp32 = probing.analyse(constructed_J(s, dtype=torch.float32))
    assert sp32.kept.tolist() == [True, True, False] and int(sp32.n_dropped) == 1
    assert float(sp32.floor) == pytest.approx((10 * EPS32 * 2.0) ** 2, rel=1e-6)
    assert float(sp32.log10_det) == pytest.approx(2 * math.log10(2.0 * 0.2), abs=1e-6)
    assert float(sp32.log10_cond) == pytest.approx(2 * math.log10(2.0 / 0.2), abs=1e-6)
    sp64 = probing.analyse(constructed_J(s, dtype=torch.float64))
    assert int(sp64.n_dropped) == 0
    assert float(sp64.log10_det) == pytest.approx(2 * math.log10(2.0 * 0.2 * 2e-9), abs=1e-6)
    assert float(sp64.log10_cond) == pytest.approx(2 * math.log10(2.0 / 2e-9), abs=1e-6)


def test_map_figure_marks_the_cells_with_dropped_values():
    synth = SYNTHS["amchirp"].at("tiny")
    tiny = [2e-9, 0.1, 0.1, 0.1, 0.1, 2e-9]  # cells (0, 0) and (1, 2) have a dropped value
    J = torch.stack([constructed_J([1.0, 0.5, t], seed=i) for i, t in enumerate(tiny)]).reshape(2, 3, 40, 3)
    spectrum = probing.analyse(J)
    assert spectrum.n_dropped.tolist() == [[1, 0, 0], [0, 0, 1]]
    x, x_edges = probing.cell_centres(synth.params[1], 3)
    y, y_edges = probing.cell_centres(synth.params[2], 2)
    mmap = probing.MetricMap(synth, "fm", "gamma", x, y, x_edges, y_edges, torch.zeros(2, 3, 3), J, spectrum,
                             {"f0": 724.0})
    fig = probing.plot_metric_map(mmap)
    for ax in fig.axes[:2]:
        (line,) = ax.get_lines()
        assert sorted(zip(line.get_xdata(), line.get_ydata())) == sorted([(x[0], y[0]), (x[2], y[1])])
    plt.close(fig)


def test_cell_centres_tile_the_range():
    for p in SYNTHS["ftm"].at("tiny").params:
        centres, edges = probing.cell_centres(p, 4)
        assert edges[0] == p.low and edges[-1] == p.high and len(edges) == 5
        assert np.all((edges[:-1] < centres) & (centres < edges[1:]))
        steps = np.diff(np.log10(edges) if p.log else edges)
        np.testing.assert_allclose(steps, steps[0], rtol=1e-9)


def test_eigenvectors_and_family_shares(probes, centre_J):
    for name, J in centre_J.items():
        sp = probing.analyse(J)
        M = metric.metric(J)
        V, lam = sp.vectors, sp.values
        torch.testing.assert_close(V.T @ V, torch.eye(J.shape[1], dtype=torch.float64), rtol=0, atol=1e-12)
        # M v_i = lambda_i v_i, to M's rounding (relative to lambda_1)
        assert float((M @ V - V * lam).abs().max()) < 1e-10 * float(lam[0])
        assert bool((V.gather(0, V.abs().argmax(0, keepdim=True)) > 0).all())
        shares = probing.family_shares(J, probes[name].op)
        assert shares.shape == (len(jtfs.FAMILIES), J.shape[1])
        torch.testing.assert_close(shares.sum(0), torch.ones(J.shape[1], dtype=torch.float64))
        s1 = probes[name].op.family_mask("S1_phi_fr")
        torch.testing.assert_close(shares[1], (J[s1].double() ** 2).sum(0) / (J.double() ** 2).sum(0))


def test_eigen_walk_stays_in_the_box_and_is_straight_in_nu(probes):
    probe = probes["ftm"]
    synth = probe.synth
    theta = probing.phys_to_theta(synth, widgets.centre_phys(synth))
    v = torch.tensor([0.6, 0.0, -0.8, 0.0, 0.0], dtype=torch.float64)
    t = probing.step_limit(probe, theta, v)
    walk = probing.eigen_walk(probe, theta, v, [-t, 0.0, t / 2, t])
    nu = probe.scaler(walk)
    torch.testing.assert_close(nu - nu[1], torch.tensor([-t, 0, t / 2, t]).double().unsqueeze(1) * v)
    torch.testing.assert_close(walk[1], theta)
    lo, hi = synth.theta_bounds()
    assert bool(((walk >= lo - 1e-12) & (walk <= hi + 1e-12)).all())
    assert bool(((walk[[0, 3]] - lo).abs().amin(1) < 1e-9).any() or ((walk[[0, 3]] - hi).abs().amin(1) < 1e-9).any())
    with pytest.raises(ValueError, match="leave the box"):
        probing.eigen_walk(probe, theta, v, [1.01 * t])
    assert probing.step_limit(probe, theta, torch.zeros(5)) == math.inf


def test_metric_map_checks_names(probes):
    with pytest.raises(ValueError):
        probing.metric_map(probes["amchirp"], "fm", "fm", 2, 2)
    with pytest.raises(ValueError):
        probing.metric_map(probes["amchirp"], "fm", "bogus", 2, 2)


@pytest.mark.parametrize("name", tuple(SYNTHS))
def test_explorer_builds_and_redraws(probes, centre_J, name, monkeypatch):
    probe = probes[name]
    synth = probe.synth
    points = []
    real = probing.jacobian_at

    def recording(probe, theta, chunk=8):
        points.append(theta)
        return real(probe, theta, chunk)

    monkeypatch.setattr(probing, "jacobian_at", recording)
    seen = []
    open_before = plt.get_fignums()
    box = probing.jacobian_explorer(probe, on_update=lambda J, sp: seen.append((J, sp)))
    sliders = box.children[0].children
    assert [s.description for s in sliders] == list(synth.names)
    assert isinstance(box.children[1], ipywidgets.Output)
    assert len(seen) == 1
    J0, sp0 = seen[0]
    assert J0.shape == (probe.op.size, synth.d) and J0.dtype == torch.float32
    assert float(((J0 - centre_J[name]).norm(dim=0) / centre_J[name].norm(dim=0)).max()) < 1e-5
    p = synth.params[1]
    sliders[1].value = p.low
    assert len(seen) == 2 and len(points) == 2
    expected = probing.phys_to_theta(synth, {**widgets.centre_phys(synth), p.name: sliders[1].value})
    torch.testing.assert_close(points[1], expected, rtol=0, atol=1e-12)
    J1, sp1 = seen[1]
    torch.testing.assert_close(sp1.values, probing.analyse(J1).values, rtol=0, atol=0)
    assert not torch.allclose(sp1.values, sp0.values)
    assert plt.get_fignums() == open_before  # the explorer closes its figures


@pytest.mark.parametrize("name", tuple(SYNTHS))
def test_static_stand_in_draws_columns_spectrum_and_eigenvectors(probes, centre_J, name):
    probe = probes[name]
    d = probe.synth.d
    fig = probing.jacobian_explorer_static(probe, J=centre_J[name])
    assert isinstance(fig, plt.Figure)
    axes = fig.axes
    assert len(axes) == d + 2
    order, spans = probing.family_order(probe.op)
    assert sorted(order.tolist()) == list(range(probe.op.size))
    assert [f for f, _, _ in spans] == list(jtfs.FAMILIES) and spans[-1][2] == probe.op.size
    for f, a, b in spans:
        assert all(probe.op.paths[i].family == f for i in order[a:b].tolist())
    for k in range(d):
        np.testing.assert_array_equal(axes[k].get_lines()[0].get_ydata(), centre_J[name][order, k].double().numpy())
    heights = [patch.get_height() for patch in axes[d].patches]
    np.testing.assert_allclose(heights, probing.analyse(centre_J[name]).values.numpy())
    assert len(axes[d + 1].patches) == d * d
    assert axes[d].get_title().startswith("log10 cond M = ")
    plt.close(fig)
