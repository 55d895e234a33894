"""Tests of pnpbook.widgets: the pure renderers, the live explorer and its static stand-in."""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pnpbook import widgets  # noqa: E402
from pnpbook.synth import SYNTHS  # noqa: E402

ipywidgets = pytest.importorskip("ipywidgets")

SYNTH_NAMES = tuple(SYNTHS)


@pytest.fixture(params=SYNTH_NAMES)
def synth(request):
    return SYNTHS[request.param].at("tiny")


def test_centre_is_mid_range_in_theta_units(synth):
    centre = widgets.centre_phys(synth)
    assert list(centre) == list(synth.names)
    theta = synth.to_theta(torch.tensor(list(centre.values()), dtype=torch.float64))
    lo, hi = synth.theta_bounds()
    torch.testing.assert_close(theta, (lo + hi) / 2, rtol=0, atol=1e-12)


def test_sweep_values_span_the_range(synth):
    for p in synth.params:
        v = widgets.sweep_values(p, 5)
        assert v.shape == (5,) and v[0] == p.low and v[-1] == p.high
        steps = np.diff(np.log10(v) if p.log else v)
        np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
    with pytest.raises(ValueError):
        widgets.sweep_values(synth.params[0], 1)


def test_render_phys_matches_synth_and_checks_names(synth):
    centre = widgets.centre_phys(synth)
    x = widgets.render_phys(synth, centre)
    theta = synth.to_theta(torch.tensor(list(centre.values()), dtype=torch.float64))
    assert x.shape == (synth.n_samples,) and x.dtype == torch.float64
    torch.testing.assert_close(x, synth(theta), rtol=0, atol=0)
    with pytest.raises(KeyError):
        widgets.render_phys(synth, {k: v for k, v in list(centre.items())[1:]})
    with pytest.raises(KeyError):
        widgets.render_phys(synth, {**centre, "bogus": 1.0})
    p = synth.params[0]
    with pytest.raises(ValueError, match=p.name):
        widgets.render_phys(synth, {**centre, p.name: p.high * 1.5})


def test_render_sweep_moves_one_parameter(synth):
    centre = widgets.centre_phys(synth)
    p = synth.params[-1]
    values = widgets.sweep_values(p, 3)
    xs = widgets.render_sweep(synth, p.name, values, centre)
    assert xs.shape == (3, synth.n_samples)
    for v, x in zip(values, xs):
        torch.testing.assert_close(x, widgets.render_phys(synth, {**centre, p.name: v}), rtol=0, atol=1e-12)
    assert not torch.allclose(xs[0], xs[-1])
    with pytest.raises(KeyError):
        widgets.render_sweep(synth, "bogus", [1.0])


def test_sliders_match_the_preset_ranges(synth):
    box = widgets.synth_explorer(synth)
    sliders = box.children[0].children
    assert len(sliders) == synth.d
    for s, p in zip(sliders, synth.params):
        assert s.description == p.name
        lo, hi = p.theta_range
        if p.log:
            assert isinstance(s, ipywidgets.FloatLogSlider) and s.base == 10
            assert math.isclose(s.min, lo) and math.isclose(s.max, hi)
        else:
            assert isinstance(s, ipywidgets.FloatSlider)
            assert math.isclose(s.min, p.low) and math.isclose(s.max, p.high)
        assert math.isclose(s.value, widgets.centre_phys(synth)[p.name], rel_tol=1e-9)
    assert isinstance(box.children[1], ipywidgets.Output)
    plt.close("all")


def test_moving_a_slider_re_renders(synth):
    rendered = []
    open_before = plt.get_fignums()
    box = widgets.synth_explorer(synth, on_render=rendered.append)
    centre = widgets.centre_phys(synth)
    assert len(rendered) == 1
    torch.testing.assert_close(rendered[0], widgets.render_phys(synth, centre), rtol=0, atol=0)
    slider = box.children[0].children[1]
    p = synth.params[1]
    slider.value = p.low
    assert len(rendered) == 2
    expected = widgets.render_phys(synth, {**centre, p.name: slider.value})
    torch.testing.assert_close(rendered[1], expected, rtol=0, atol=0)
    assert not torch.allclose(rendered[1], rendered[0])
    assert plt.get_fignums() == open_before  # the explorer closes its figures


def test_static_stand_in_has_one_panel_per_sound(synth):
    fig = widgets.synth_explorer_static(synth, n_values=3)
    assert isinstance(fig, plt.Figure)
    assert len(fig.axes) == 3 * synth.d
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith(f"{synth.params[0].name} = ")
    plt.close(fig)
