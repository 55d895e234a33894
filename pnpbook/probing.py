"""Probing the PNP metric: J at a point, M's spectrum above the noise floor, maps over two parameters.

The computations (:func:`jacobian_at`, :func:`analyse`, :func:`family_shares`,
:func:`metric_map`, :func:`eigen_walk`) need neither a kernel nor ipywidgets.
:func:`jacobian_explorer` builds a live widget (the sliders of
:func:`pnpbook.widgets.make_sliders`, in physical units) that redraws J's
columns, M's spectrum and eigenvectors when a slider is released;
:func:`jacobian_explorer_static` draws the same figure at one point, for pages
rendered without a kernel.

Everything lives in the encoder's coordinates ``nu`` (:mod:`pnpbook.scaling`):
``J = d Phi(g(h^-1(nu))) / d nu``, shape (P, d), and ``M = J^T J``.  M's
eigenvalues ``sigma_1 >= ... >= sigma_d`` (the book's notation) are the squared
singular values of J (:func:`pnpbook.metric.spectrum`); those at or below
:func:`pnpbook.metric.noise_floor`, ``(10 eps_J sqrt(sigma_1))**2``, cannot be told
from rounding noise and are *dropped*: the log-determinant and the condition
number are taken over the kept ones, and the number dropped is reported with them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from pnpbook import data, jtfs, metric, widgets
from pnpbook.jtfs import FAMILIES, JTFS
from pnpbook.scaling import Scaler
from pnpbook.synth import ParamSpec, Synth

if TYPE_CHECKING:
    import ipywidgets


@dataclasses.dataclass(frozen=True)
class Probe:
    """Everything needed to take the PNP Jacobian of one synthesizer preset.

    Attributes
    ----------
    synth : Synth
        Synthesizer at a preset.
    op : JTFS
        The preset's scattering operator.
    scaler : Scaler
        ``h``, fitted on the train fold.
    c : float
        Phi's log compression.
    dtype : torch.dtype
        Precision of the Jacobian (float32, as the metric store computes it, or float64).
    """

    synth: Synth
    op: JTFS
    scaler: Scaler
    c: float
    dtype: torch.dtype = torch.float32

    def forward(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``nu -> Phi(g(h^-1(nu)))``, (d,) -> (P,) (:func:`pnpbook.metric.pnp_forward`)."""
        return metric.pnp_forward(self.synth, self.op, self.scaler, self.c)


def make_probe(synth: Synth, dtype: torch.dtype = torch.float32) -> Probe:
    """The probe of ``synth``'s preset: its JTFS, its calibrated ``c``, its train scaler.

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset.
    dtype : torch.dtype
        Precision of the Jacobian.

    Returns
    -------
    Probe
    """
    return Probe(synth, jtfs.operator(synth), data.train_scaler(synth), jtfs.preset_c(synth), dtype)


def phys_to_theta(synth: Synth, phys: Mapping[str, float]) -> torch.Tensor:
    """``theta``, shape (d,) float64, from one value per parameter name in physical units."""
    return synth.to_theta(torch.tensor([float(phys[name]) for name in synth.names], dtype=torch.float64))


def jacobian_at(probe: Probe, theta: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """The PNP Jacobian in ``nu`` coordinates at each row of ``theta``.

    Parameters
    ----------
    probe : Probe
        Synthesizer, operator, scaler, ``c`` and precision.
    theta : Tensor, shape (B, d) or (d,)
        Points in ``theta`` units, inside the preset's ranges.
    chunk : int
        Points per ``vmap`` call (:func:`pnpbook.metric.jacobian`).

    Returns
    -------
    Tensor, shape (B, P, d) or (P, d), in ``probe.dtype``
        ``J[b, p, k] = d Phi_p / d nu_k`` at ``nu_b = h(theta_b)``.
    """
    nu = probe.scaler(theta.double()).to(probe.dtype)
    return metric.jacobian(probe.forward(), nu, chunk)


@dataclasses.dataclass(frozen=True)
class MetricSpectrum:
    """M's eigen-decomposition, from J's singular value decomposition, with the noise floor.

    Batched: every field has the leading shape ``(...)`` of the Jacobians it came from.

    Attributes
    ----------
    values : Tensor, shape (..., d), float64
        Eigenvalues of M, descending (``sigma_k`` in the book's notation): the
        squared singular values of J.
    vectors : Tensor, shape (..., d, d), float64
        Column ``i`` is the unit eigenvector of ``values[..., i]`` in ``nu``
        coordinates (J's right singular vector), signed so that its largest
        component is positive.
    floor : Tensor, shape (...,), float64
        :func:`pnpbook.metric.noise_floor`.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    floor: torch.Tensor

    @property
    def kept(self) -> torch.Tensor:
        """Which eigenvalues are above the noise floor, shape (..., d), bool."""
        return self.values > self.floor.unsqueeze(-1)

    @property
    def n_dropped(self) -> torch.Tensor:
        """How many eigenvalues are at or below the floor, shape (...,), int64."""
        return (~self.kept).sum(-1)

    @property
    def log10_det(self) -> torch.Tensor:
        """``log10 det M`` over the kept eigenvalues, shape (...,)."""
        return torch.where(self.kept, self.values, torch.ones_like(self.values)).log10().sum(-1)

    @property
    def log10_cond(self) -> torch.Tensor:
        """``log10(sigma_1 / sigma_min)`` over the kept eigenvalues, shape (...,).

        Where eigenvalues were dropped, the condition number of M itself is at
        least ``sigma_1 / floor = 1 / (10 eps_J)**2``, larger than this value.
        """
        smallest = torch.where(self.kept, self.values, torch.full_like(self.values, math.inf)).amin(-1)
        return (self.values[..., 0] / smallest).log10()


def analyse(J: torch.Tensor) -> MetricSpectrum:
    """M's eigenvalues, eigenvectors and noise floor from J.

    Parameters
    ----------
    J : Tensor, shape (..., P, d)
        Jacobians, float32 or float64 (the floor follows J's precision).

    Returns
    -------
    MetricSpectrum
        With leading shape ``(...)``.
    """
    vectors = torch.linalg.svd(J.double(), full_matrices=False).Vh.transpose(-1, -2)
    biggest = vectors.gather(-2, vectors.abs().argmax(-2, keepdim=True))
    return MetricSpectrum(metric.spectrum(J), vectors * torch.sign(biggest), metric.noise_floor(J))


def family_shares(J: torch.Tensor, op: JTFS) -> torch.Tensor:
    """How each column's squared norm splits over the JTFS path families.

    Parameters
    ----------
    J : Tensor, shape (P, d)
        One Jacobian.
    op : JTFS
        The operator whose paths index J's rows.

    Returns
    -------
    Tensor, shape (len(FAMILIES), d), float64
        ``shares[f, k] = ||J[family f, k]||**2 / ||J[:, k]||**2``; each column sums to 1.
    """
    sq = J.double() ** 2
    per_family = torch.stack([sq[op.family_mask(f)].sum(0) for f in FAMILIES])
    return per_family / sq.sum(0)


def cell_centres(spec: ParamSpec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut a parameter's range into ``n`` equal cells in ``theta`` units.

    Parameters
    ----------
    spec : ParamSpec
        The parameter.
    n : int
        Number of cells, at least 1.

    Returns
    -------
    centres : ndarray of float64, shape (n,)
        Cell centres in physical units (geometric means for log parameters).
    edges : ndarray of float64, shape (n + 1,)
        Cell edges in physical units, the range's ends included
        (:func:`pnpbook.widgets.sweep_values`).
    """
    edges = widgets.sweep_values(spec, n + 1)
    centres = np.sqrt(edges[:-1] * edges[1:]) if spec.log else (edges[:-1] + edges[1:]) / 2
    return centres, edges


@dataclasses.dataclass(frozen=True)
class MetricMap:
    """M's spectrum over a grid of two parameters, the others fixed.

    Attributes
    ----------
    synth : Synth
        The synthesizer it was computed for.
    x_name, y_name : str
        The parameters along the columns and the rows.
    x, y : ndarray of float64, shapes (n_x,) and (n_y,)
        Cell centres in physical units.
    x_edges, y_edges : ndarray of float64, shapes (n_x + 1,) and (n_y + 1,)
        Cell edges in physical units.
    theta : Tensor, shape (n_y, n_x, d), float64
        The points, in ``theta`` units.
    J : Tensor, shape (n_y, n_x, P, d)
        The Jacobians there, in the probe's precision.
    spectrum : MetricSpectrum
        With leading shape ``(n_y, n_x)``.
    fixed : dict of str to float
        The values of all parameters but ``x_name`` and ``y_name``, physical units.
    """

    synth: Synth
    x_name: str
    y_name: str
    x: np.ndarray
    y: np.ndarray
    x_edges: np.ndarray
    y_edges: np.ndarray
    theta: torch.Tensor
    J: torch.Tensor
    spectrum: MetricSpectrum
    fixed: dict[str, float]


def metric_map(probe: Probe, x_name: str, y_name: str, n_x: int, n_y: int,
               centre: Mapping[str, float] | None = None, chunk: int = 8) -> MetricMap:
    """M's spectrum on an ``n_y`` by ``n_x`` grid of cell centres over two parameters.

    Each parameter's range is cut into equal cells in ``theta`` units
    (:func:`cell_centres`); the other parameters stay at ``centre``.  All
    ``n_x * n_y`` Jacobians are taken in one call to :func:`jacobian_at`
    (``vmap`` over chunks of ``chunk`` points).

    Parameters
    ----------
    probe : Probe
        Synthesizer, operator, scaler, ``c`` and precision.
    x_name, y_name : str
        Two different parameter names.
    n_x, n_y : int
        Cells along each.
    centre : mapping of str to float, or None
        Physical values of all parameters (default
        :func:`pnpbook.widgets.centre_phys`).
    chunk : int
        Points per ``vmap`` call.

    Returns
    -------
    MetricMap
    """
    synth = probe.synth
    if x_name == y_name or {x_name, y_name} - set(synth.names):
        raise ValueError(f"need two different parameters of {synth.name} {synth.names}, got {x_name!r}, {y_name!r}")
    centre = widgets.centre_phys(synth) if centre is None else centre
    ix, iy = synth.names.index(x_name), synth.names.index(y_name)
    x, x_edges = cell_centres(synth.params[ix], n_x)
    y, y_edges = cell_centres(synth.params[iy], n_y)
    phys = torch.tensor([float(centre[k]) for k in synth.names], dtype=torch.float64).repeat(n_y, n_x, 1)
    phys[..., ix] = torch.from_numpy(x)
    phys[..., iy] = torch.from_numpy(y).unsqueeze(1)
    theta = synth.to_theta(phys)
    J = jacobian_at(probe, theta.reshape(-1, synth.d), chunk).reshape(n_y, n_x, -1, synth.d)
    fixed = {k: float(centre[k]) for k in synth.names if k not in (x_name, y_name)}
    return MetricMap(synth, x_name, y_name, x, y, x_edges, y_edges, theta, J, analyse(J), fixed)


def step_limit(probe: Probe, theta: torch.Tensor, direction: torch.Tensor) -> float:
    """The largest ``t`` such that ``h^-1(h(theta) +- t direction)`` stays in the preset's box.

    ``h`` is monotone in each coordinate, so the box is a box in ``nu`` too.

    Parameters
    ----------
    probe : Probe
        Gives the synthesizer's ranges and the scaler.
    theta : Tensor, shape (d,)
        The starting point.
    direction : Tensor, shape (d,)
        A direction in ``nu`` coordinates.

    Returns
    -------
    float
        In ``nu`` units along ``direction`` (inf for a zero direction).
    """
    lo, hi = (probe.scaler(b) for b in probe.synth.theta_bounds())
    nu, v = probe.scaler(theta.double()), direction.double()
    moving = v != 0
    room = torch.minimum((hi - nu) / v.abs(), (nu - lo) / v.abs())
    return float(room[moving].min()) if bool(moving.any()) else math.inf


def eigen_walk(probe: Probe, theta: torch.Tensor, direction: torch.Tensor,
               steps: Sequence[float] | np.ndarray) -> torch.Tensor:
    """Points along a straight line in ``nu`` coordinates, mapped back to ``theta``.

    Parameters
    ----------
    probe : Probe
        Gives the scaler and the synthesizer's ranges.
    theta : Tensor, shape (d,)
        The starting point.
    direction : Tensor, shape (d,)
        A direction in ``nu`` coordinates (an eigenvector of M, say).
    steps : sequence of float, length n
        Signed distances along ``direction``, in ``nu`` units.

    Returns
    -------
    Tensor, shape (n, d), float64
        ``h^-1(h(theta) + s direction)`` for each ``s`` in ``steps``.

    Raises
    ------
    ValueError
        If a step leaves the preset's box (see :func:`step_limit`).
    """
    s = torch.as_tensor(np.asarray(steps, dtype=np.float64))
    limit = step_limit(probe, theta, direction)
    if bool((s.abs() > limit * (1 + 1e-12)).any()):
        raise ValueError(f"steps {s.tolist()} leave the box of {probe.synth.name}: |step| <= {limit:.4g} along this "
                         f"direction")
    nu = probe.scaler(theta.double()) + s.unsqueeze(1) * direction.double()
    return probe.scaler.inverse(nu)


# ---------------------------------------------------------------------------------------------- figures
def _param_label(spec: ParamSpec) -> str:
    return spec.name + (f" ({spec.unit})" if spec.unit else "")


def _point_title(synth: Synth, theta: torch.Tensor) -> str:
    phys = synth.to_phys(theta.double())
    return ", ".join(f"{p.name} = {float(v):.4g}" + (f" {p.unit}" if p.unit else "")
                     for p, v in zip(synth.params, phys))


def family_order(op: JTFS) -> tuple[torch.Tensor, list[tuple[str, int, int]]]:
    """An order of Phi's coefficients that groups them by path family.

    ``op.paths`` interleaves the joint families (it runs over the second-order
    wavelets, each holding its three joint families); figures regroup them.

    Parameters
    ----------
    op : JTFS
        The operator.

    Returns
    -------
    order : Tensor, shape (P,), int64
        Coefficient indices, family by family in :data:`pnpbook.jtfs.FAMILIES` order.
    spans : list of (str, int, int)
        ``(family, start, stop)``: the family's positions in ``order``.
    """
    groups = [(f, torch.nonzero(op.family_mask(f)).flatten()) for f in FAMILIES]
    spans, start = [], 0
    for f, rows in groups:
        spans.append((f, start, start + len(rows)))
        start += len(rows)
    return torch.cat([rows for _, rows in groups]), spans


#: Short family names for figure labels (the joint families by their frequential spin).
_FAMILY_LABELS = {"S0": "S0", "S1_phi_fr": "S1 phi", "S1_psi_fr": "S1", "psi_phi_fr": "spin 0",
                  "psi_psi_up": "spin +1", "psi_psi_down": "spin -1"}


def plot_probe(probe: Probe, theta: torch.Tensor, J: torch.Tensor,
               spectrum: MetricSpectrum | None = None) -> plt.Figure:
    """One figure of the metric at one point: J's columns, M's spectrum and its eigenvectors.

    Left, one row per parameter ``k``: the column ``J[:, k]``, the change of
    each coefficient of Phi per unit of ``nu_k``, with the coefficients grouped
    by path family (:func:`family_order`; families shaded alternately, those
    wider than 3 % of P named on top).  Top right: the eigenvalues of M on a
    log scale, the noise floor dashed, dropped eigenvalues hatched; the title
    gives the condition number.  Bottom right: the eigenvectors, one group of
    bars per eigenvalue, one bar per parameter (components in ``nu``).

    Parameters
    ----------
    probe : Probe
        The probe J came from.
    theta : Tensor, shape (d,)
        The point, in ``theta`` units (for the title).
    J : Tensor, shape (P, d)
        The Jacobian at ``theta``.
    spectrum : MetricSpectrum or None
        ``analyse(J)``, computed here if None.

    Returns
    -------
    Figure
        ``d + 2`` axes: the J rows first, then the spectrum, then the eigenvectors.
    """
    synth = probe.synth
    spectrum = analyse(J) if spectrum is None else spectrum
    d = synth.d
    fig = plt.figure(figsize=(7.0, 1.3 + 0.75 * d), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=(1.6, 1.0))
    j_axes = left.subplots(d, 1, sharex=True)
    ax_spec, ax_vec = right.subplots(2, 1)
    order, spans = family_order(probe.op)
    Jn = J.double().numpy()[order.numpy()]
    for k, (ax, p) in enumerate(zip(j_axes, synth.params)):
        for i, (_, a, b) in enumerate(spans):
            if i % 2:
                ax.axvspan(a, b, color="0.9", lw=0)
        ax.plot(Jn[:, k], lw=0.5, color=f"C{k}")
        ax.set_xlim(0, len(Jn))
        ax.set_ylabel(p.name, fontsize=8)
        ax.tick_params(labelsize=7)
    wide = [(f, a, b) for f, a, b in spans if b - a >= 0.03 * len(Jn)]
    j_axes[0].secondary_xaxis("top").set_xticks([(a + b) / 2 for _, a, b in wide],
                                                [_FAMILY_LABELS[f] for f, _, _ in wide], fontsize=6)
    j_axes[-1].set_xlabel("coefficient of Phi, grouped by path family")
    left.suptitle("columns of J: d Phi / d nu_k", fontsize=8)
    values = spectrum.values.numpy()
    kept = spectrum.kept.numpy()
    idx = np.arange(1, d + 1)
    ax_spec.bar(idx[kept], values[kept], color="C0", label="kept")
    if (~kept).any():
        ax_spec.bar(idx[~kept], values[~kept], color="none", edgecolor="C3", hatch="///", label="dropped")
    ax_spec.axhline(float(spectrum.floor), ls="--", color="C3", lw=1, label="noise floor")
    ax_spec.set(yscale="log", xticks=idx, xlabel="k", ylabel="eigenvalue $\\sigma_k$ of M")
    ax_spec.set_title(f"log10 cond M = {float(spectrum.log10_cond):.2f}" + (
        f" ({int(spectrum.n_dropped)} dropped)" if int(spectrum.n_dropped) else ""), fontsize=8)
    ax_spec.legend(fontsize=6, loc="best")
    width = 0.8 / d
    vectors = spectrum.vectors.numpy()
    for k, p in enumerate(synth.params):
        ax_vec.bar(idx + (k - (d - 1) / 2) * width, vectors[k], width, color=f"C{k}", label=p.name)
    ax_vec.axhline(0, color="k", lw=0.5)
    ax_vec.set(xticks=idx, xticklabels=[f"v{i}" for i in idx], ylim=(-1.05, 1.05), ylabel="component in nu")
    ax_vec.legend(fontsize=6, ncols=min(d, 3), loc="best")
    fig.suptitle(f"{synth.name} ({synth.scale}, J in {str(J.dtype).removeprefix('torch.')}): "
                 + _point_title(synth, theta), fontsize=8)
    return fig


def plot_metric_map(mmap: MetricMap) -> plt.Figure:
    """Two maps side by side: ``log10 det M`` and ``log10 cond M`` over the kept eigenvalues.

    Cells where eigenvalues were dropped are marked with a cross.

    Parameters
    ----------
    mmap : MetricMap
        From :func:`metric_map`.

    Returns
    -------
    Figure
        Two map axes and their two colour bars.
    """
    synth = mmap.synth
    sx, sy = (synth.params[synth.names.index(n)] for n in (mmap.x_name, mmap.y_name))
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0), layout="constrained")
    X, Y = np.meshgrid(mmap.x, mmap.y)
    dropped = mmap.spectrum.n_dropped.numpy() > 0
    for ax, z, label, cmap in ((axes[0], mmap.spectrum.log10_det, "log10 det M", "viridis"),
                               (axes[1], mmap.spectrum.log10_cond, "log10 cond M", "magma")):
        mesh = ax.pcolormesh(mmap.x_edges, mmap.y_edges, z.numpy(), cmap=cmap, shading="flat")
        fig.colorbar(mesh, ax=ax, label=label)
        if dropped.any():
            ax.plot(X[dropped], Y[dropped], "x", color="w", mec="k", mew=1.2, ms=7,
                    label="eigenvalue(s) below the noise floor")
            ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        ax.set(xscale="log" if sx.log else "linear", yscale="log" if sy.log else "linear",
               xlabel=_param_label(sx), ylabel=_param_label(sy))
        for axis, spec in ((ax.xaxis, sx), (ax.yaxis, sy)):
            if spec.log and spec.high / spec.low < 100:  # a short log axis: 1, 2, 4 x 10^n in plain numbers
                axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 4.0)))
                axis.set_major_formatter(FormatStrFormatter("%g"))
                axis.set_minor_formatter(NullFormatter())
        ax.grid(False)
    fixed = "".join(f"; {k} = {v:.4g}" for k, v in mmap.fixed.items())
    fig.suptitle(f"{synth.name} ({synth.scale}): M over {mmap.x_name} and {mmap.y_name}{fixed}", fontsize=8)
    return fig


# ---------------------------------------------------------------------------------------------- widgets
def jacobian_explorer(probe: Probe, phys: Mapping[str, float] | None = None, *,
                      on_update: Callable[[torch.Tensor, MetricSpectrum], None] | None = None) -> "ipywidgets.VBox":
    """A live explorer of the metric: sliders, then :func:`plot_probe` at the sliders' point.

    Each slider release takes J at the new point (about a second on two cores
    at the tiny scale) and redraws.  Needs ipywidgets (the ``book`` extra),
    imported here.

    Parameters
    ----------
    probe : Probe
        Synthesizer, operator, scaler, ``c`` and precision.
    phys : mapping of str to float, or None
        Initial values in physical units (default :func:`pnpbook.widgets.centre_phys`).
    on_update : callable or None
        Called with ``(J, spectrum)`` after each redraw: J of shape (P, d) and
        its :class:`MetricSpectrum` (for tests, and for readers who want to keep them).

    Returns
    -------
    ipywidgets.VBox
        ``children[0]`` is a VBox of the sliders (:func:`pnpbook.widgets.make_sliders`)
        and ``children[1]`` the Output that shows the figure.
    """
    import ipywidgets as ipw
    from IPython.display import display

    sliders = widgets.make_sliders(probe.synth, phys)

    def show(**values: float) -> None:
        theta = phys_to_theta(probe.synth, values)
        J = jacobian_at(probe, theta)
        spectrum = analyse(J)
        fig = plot_probe(probe, theta, J, spectrum)
        display(fig)
        plt.close(fig)
        if on_update is not None:
            on_update(J, spectrum)

    out = ipw.interactive_output(show, sliders)
    return ipw.VBox([ipw.VBox(list(sliders.values())), out])


def jacobian_explorer_static(probe: Probe, phys: Mapping[str, float] | None = None,
                             J: torch.Tensor | None = None) -> plt.Figure:
    """The explorer as a figure: :func:`plot_probe` at one point.

    Parameters
    ----------
    probe : Probe
        Synthesizer, operator, scaler, ``c`` and precision.
    phys : mapping of str to float, or None
        The point in physical units (default :func:`pnpbook.widgets.centre_phys`).
    J : Tensor, shape (P, d), or None
        The Jacobian there, if already computed.

    Returns
    -------
    Figure
        As :func:`plot_probe`.
    """
    phys = widgets.centre_phys(probe.synth) if phys is None else phys
    theta = phys_to_theta(probe.synth, phys)
    return plot_probe(probe, theta, jacobian_at(probe, theta) if J is None else J)
