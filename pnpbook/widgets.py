"""Interactive synthesizer explorers, and their static stand-ins for the rendered book.

The pure functions (:func:`centre_phys`, :func:`sweep_values`,
:func:`render_phys`, :func:`render_sweep`) compute what the widgets show; they
need neither a kernel nor ipywidgets.  :func:`synth_explorer` builds the live
widget (one slider per parameter, in physical units) and imports ipywidgets
when it is called, so ``import pnpbook.widgets`` works without the ``book``
extra.  :func:`synth_explorer_static` draws the same sounds as a figure, for
pages rendered without a kernel.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from pnpbook import plotting
from pnpbook.synth import ParamSpec, Synth

if TYPE_CHECKING:
    import ipywidgets


def centre_phys(synth: Synth) -> dict[str, float]:
    """The centre of the parameter box in physical units.

    The geometric mean of the range for parameters stored as log10, the
    arithmetic mean otherwise (the centre of the range in ``theta`` units).

    Parameters
    ----------
    synth : Synth
        A synthesizer record at some preset.

    Returns
    -------
    dict of str to float
        One value per parameter name, in parameter order.
    """
    return {p.name: math.sqrt(p.low * p.high) if p.log else (p.low + p.high) / 2 for p in synth.params}


def sweep_values(spec: ParamSpec, n: int) -> np.ndarray:
    """``n`` values across the range of one parameter, end points included.

    Evenly spaced in ``theta`` units: geometric steps for log parameters,
    arithmetic steps otherwise.

    Parameters
    ----------
    spec : ParamSpec
        The parameter.
    n : int
        Number of values, at least 2.

    Returns
    -------
    ndarray of float64, shape (n,)
        Physical values, ``[spec.low, ..., spec.high]`` exactly at the ends.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    frac = np.linspace(0.0, 1.0, n)
    values = spec.low * (spec.high / spec.low) ** frac if spec.log else spec.low + (spec.high - spec.low) * frac
    values[0], values[-1] = spec.low, spec.high
    return values


def render_phys(synth: Synth, phys: Mapping[str, float]) -> torch.Tensor:
    """Render one sound from physical parameter values.

    Parameters
    ----------
    synth : Synth
        A synthesizer record at some preset.
    phys : mapping of str to float
        One value per parameter name of ``synth``, in physical units (Hz, s, ...).

    Returns
    -------
    Tensor, shape (N,), float64
        ``synth(synth.to_theta(phys))``, with ``validate="raise"``.

    Raises
    ------
    KeyError
        If a parameter is missing or an unknown name is given.
    ValueError
        If a value is outside the preset's range.
    """
    unknown = set(phys) - set(synth.names)
    missing = [name for name in synth.names if name not in phys]
    if unknown or missing:
        raise KeyError(f"{synth.name} takes parameters {synth.names}; missing {missing}, unknown {sorted(unknown)}")
    values = torch.tensor([float(phys[name]) for name in synth.names], dtype=torch.float64)
    return synth(synth.to_theta(values))


def render_sweep(synth: Synth, name: str, values: Sequence[float] | np.ndarray,
                 centre: Mapping[str, float] | None = None) -> torch.Tensor:
    """Render sounds where one parameter takes ``values`` and the others stay at ``centre``.

    Parameters
    ----------
    synth : Synth
        A synthesizer record at some preset.
    name : str
        The parameter that moves.
    values : sequence of float, length n
        Its values in physical units.
    centre : mapping of str to float, or None
        Values of all parameters in physical units (default :func:`centre_phys`).

    Returns
    -------
    Tensor, shape (n, N), float64
        One sound per value, rendered as one batch.
    """
    if name not in synth.names:
        raise KeyError(f"{synth.name} has no parameter {name!r}; it has {synth.names}")
    centre = centre_phys(synth) if centre is None else centre
    phys = torch.tensor([[float(centre[k]) for k in synth.names]] * len(values), dtype=torch.float64)
    phys[:, synth.names.index(name)] = torch.as_tensor(np.asarray(values, dtype=np.float64))
    return synth(synth.to_theta(phys))


def _start_time(synth: Synth) -> float:
    """Time of the first sample of a render, in seconds (negative for the AM chirp)."""
    return float(synth.time(synth.sr, synth.n_samples)[0])


def _label(spec: ParamSpec, value: float) -> str:
    """``"name = value unit"`` for plot titles."""
    return f"{spec.name} = {value:.4g}" + (f" {spec.unit}" if spec.unit else "")


def make_sliders(synth: Synth, phys: Mapping[str, float] | None = None
                 ) -> dict[str, "ipywidgets.FloatLogSlider | ipywidgets.FloatSlider"]:
    """One slider per parameter, in physical units.

    A ``FloatLogSlider`` (base 10) for parameters stored as log10, a
    ``FloatSlider`` otherwise; each spans the preset's range in 200 steps and
    updates on release (``continuous_update=False``).

    Parameters
    ----------
    synth : Synth
        A synthesizer record at some preset.
    phys : mapping of str to float, or None
        Initial values in physical units (default :func:`centre_phys`).

    Returns
    -------
    dict of str to slider
        In parameter order.
    """
    import ipywidgets as widgets

    phys = centre_phys(synth) if phys is None else phys
    sliders = {}
    for p in synth.params:
        lo, hi = p.theta_range
        common = dict(value=float(phys[p.name]), step=(hi - lo) / 200, description=p.name,
                      tooltip=f"{p.description} ({p.unit or 'dimensionless'})", readout_format=".3g",
                      continuous_update=False, style={"description_width": "4em"},
                      layout=widgets.Layout(width="28em"))
        sliders[p.name] = (widgets.FloatLogSlider(base=10, min=lo, max=hi, **common) if p.log
                           else widgets.FloatSlider(min=lo, max=hi, **common))
    return sliders


def synth_explorer(synth: Synth, phys: Mapping[str, float] | None = None, *, n_fft: int = 512,
                   fmax: float | None = None,
                   on_render: Callable[[torch.Tensor], None] | None = None) -> "ipywidgets.VBox":
    """A live explorer: sliders, then the waveform, spectrogram and an audio player.

    Each slider release re-renders the sound with :func:`render_phys` and
    redraws the output (``ipywidgets.interactive_output``).  The player
    normalises the loudness (the AM chirp is not normalised).  Needs ipywidgets
    (the ``book`` extra), imported here.

    Parameters
    ----------
    synth : Synth
        A synthesizer record at some preset.
    phys : mapping of str to float, or None
        Initial values in physical units (default :func:`centre_phys`).
    n_fft : int
        FFT size of the spectrogram in samples.
    fmax : float or None
        Upper frequency limit of the spectrogram in Hz (default Nyquist).
    on_render : callable or None
        Called with each rendered signal, shape (N,) float64 (for tests and
        for readers who want to keep the sound).

    Returns
    -------
    ipywidgets.VBox
        ``children[0]`` is a VBox of the sliders (as :func:`make_sliders`, in
        parameter order) and ``children[1]`` the Output that shows the sound.
    """
    import ipywidgets as widgets
    from IPython.display import Audio, display

    sliders = make_sliders(synth, phys)
    t0 = _start_time(synth)

    def show(**values: float) -> None:
        x = render_phys(synth, values)
        fig = plotting.plot_sound(x, synth.sr, t0, n_fft, fmax,
                                  ", ".join(_label(p, values[p.name]) for p in synth.params))
        display(fig)
        plt.close(fig)
        display(Audio(x.numpy(), rate=int(synth.sr)))
        if on_render is not None:
            on_render(x)

    out = widgets.interactive_output(show, sliders)
    return widgets.VBox([widgets.VBox(list(sliders.values())), out])


def synth_explorer_static(synth: Synth, phys: Mapping[str, float] | None = None, n_values: int = 3, *,
                          n_fft: int = 256, fmax: float | None = None) -> plt.Figure:
    """The explorer as a figure: one row per parameter, ``n_values`` spectrograms across its range.

    In row ``k`` parameter ``k`` takes :func:`sweep_values` (end points
    included) while the others stay at ``phys``.

    Parameters
    ----------
    synth : Synth
        A synthesizer record at some preset.
    phys : mapping of str to float, or None
        The point the rows move away from, in physical units (default
        :func:`centre_phys`).
    n_values : int
        Panels per row, at least 2.
    n_fft : int
        FFT size of the spectrograms in samples.
    fmax : float or None
        Upper frequency limit in Hz (default Nyquist).

    Returns
    -------
    Figure
        ``synth.d * n_values`` axes.
    """
    phys = centre_phys(synth) if phys is None else phys
    rows, titles = [], []
    for p in synth.params:
        values = sweep_values(p, n_values)
        rows.append(list(render_sweep(synth, p.name, values, phys)))
        titles.append([_label(p, v) for v in values])
    t0 = _start_time(synth)
    fig, _ = plotting.spectrogram_grid(rows, synth.sr, t0, n_fft, fmax, titles)
    fig.suptitle(f"{synth.name} ({synth.scale}): one parameter moves per row; the others stay at\n"
                 + ", ".join(_label(p, phys[p.name]) for p in synth.params), fontsize=8)
    return fig
