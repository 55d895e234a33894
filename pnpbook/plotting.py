"""One figure style for the book, and the plots every chapter reuses."""
from __future__ import annotations

from typing import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

#: rcParams of the book's figures: small, legible, vector-like PNGs.
STYLE = {
    "figure.figsize": (7.0, 3.0),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 9,
    "image.cmap": "magma",
}


def use_style() -> None:
    """Apply :data:`STYLE` to matplotlib (call once at the top of a chapter)."""
    mpl.rcParams.update(STYLE)


def spectrogram(x: torch.Tensor | np.ndarray, sr: float, n_fft: int = 512,
                hop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magnitude spectrogram in dB (Hann window, centred frames, zero padding at the ends).

    Parameters
    ----------
    x : Tensor or ndarray, shape (N,)
        Signal.
    sr : float
        Sample rate in Hz.
    n_fft : int
        FFT size in samples.
    hop : int or None
        Hop in samples (default ``n_fft // 8``).

    Returns
    -------
    times : ndarray, shape (T,)
        Frame centres in seconds from the first sample.
    freqs : ndarray, shape (F,)
        Bin frequencies in Hz.
    db : ndarray, shape (F, T)
        20 log10 magnitude, floored 100 dB below the maximum.
    """
    x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    hop = hop or n_fft // 8
    mag = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft, dtype=x.dtype), pad_mode="constant",
                     return_complex=True).abs().numpy()
    db = 20 * np.log10(np.maximum(mag, 1e-12))
    db = np.maximum(db, db.max() - 100)
    times = np.arange(mag.shape[1]) * hop / sr
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    return times, freqs, db


def plot_spectrogram(ax: plt.Axes, x: torch.Tensor | np.ndarray, sr: float, t0: float = 0.0,
                     n_fft: int = 512, fmax: float | None = None, title: str | None = None) -> None:
    """Draw :func:`spectrogram` of ``x`` on ``ax``; ``t0`` is the time of the first sample in seconds."""
    times, freqs, db = spectrogram(x, sr, n_fft)
    ax.pcolormesh(times + t0, freqs, db, shading="auto", rasterized=True)
    ax.set_ylim(0, fmax or sr / 2)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    ax.grid(False)
    if title:
        ax.set_title(title)


def plot_waveform(ax: plt.Axes, x: torch.Tensor | np.ndarray, sr: float, t0: float = 0.0,
                  title: str | None = None) -> None:
    """Draw the waveform ``x`` (N,) against time in seconds on ``ax``; ``t0`` is the time of sample 0."""
    x = np.asarray(x, dtype=np.float64)
    ax.plot(t0 + np.arange(len(x)) / sr, x, lw=0.5)
    ax.set_xlim(t0, t0 + len(x) / sr)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("amplitude")
    if title:
        ax.set_title(title)


def plot_sound(x: torch.Tensor | np.ndarray, sr: float, t0: float = 0.0, n_fft: int = 512,
               fmax: float | None = None, title: str | None = None) -> plt.Figure:
    """A new figure with the waveform (left) and the spectrogram (right) of one sound.

    Parameters
    ----------
    x : Tensor or ndarray, shape (N,)
        Signal.
    sr : float
        Sample rate in Hz.
    t0 : float
        Time of the first sample in seconds.
    n_fft : int
        FFT size of the spectrogram in samples.
    fmax : float or None
        Upper frequency limit in Hz (default Nyquist).
    title : str or None
        Figure title.

    Returns
    -------
    Figure
        Two axes.
    """
    fig, (ax_w, ax_s) = plt.subplots(1, 2, figsize=(7.0, 2.4), layout="constrained")
    plot_waveform(ax_w, x, sr, t0)
    plot_spectrogram(ax_s, x, sr, t0, n_fft, fmax)
    if title:
        fig.suptitle(title)
    return fig


def spectrogram_grid(signals: Sequence[Sequence[torch.Tensor | np.ndarray]], sr: float,
                     t0: float = 0.0, n_fft: int = 256, fmax: float | None = None,
                     titles: Sequence[Sequence[str]] | None = None,
                     row_labels: Sequence[str] | None = None,
                     panel_size: tuple[float, float] = (1.5, 1.05)) -> tuple[plt.Figure, np.ndarray]:
    """Small multiples: one spectrogram per signal, on shared axes.

    Parameters
    ----------
    signals : sequence of rows, each a sequence of signals of shape (N,)
        ``signals[i][j]`` is drawn in row ``i``, column ``j``; rows may be shorter
        than the longest (the missing panels are hidden).
    sr : float
        Sample rate in Hz.
    t0 : float
        Time of the first sample in seconds.
    n_fft : int
        FFT size in samples.
    fmax : float or None
        Upper frequency limit in Hz (default Nyquist).
    titles : rows of str, or None
        Panel titles, same layout as ``signals``.
    row_labels : sequence of str, or None
        Written as the y label of each row's first panel.
    panel_size : (float, float)
        Width and height of one panel in inches.

    Returns
    -------
    fig : Figure
    axes : ndarray of Axes, shape (rows, columns)
        Hidden panels are removed from ``fig.axes``.
    """
    n_rows, n_cols = len(signals), max(len(row) for row in signals)
    fig, axes = plt.subplots(n_rows, n_cols, sharex=True, sharey=True, squeeze=False,
                             figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows + 0.4),
                             layout="constrained")
    for i, row in enumerate(signals):
        for j in range(n_cols):
            ax = axes[i, j]
            if j >= len(row):
                fig.delaxes(ax)
                continue
            plot_spectrogram(ax, row[j], sr, t0, n_fft, fmax, titles[i][j] if titles else None)
            ax.title.set_fontsize(7)
            ax.set_xlabel("time (s)" if i == n_rows - 1 else "")
            ax.set_ylabel("" if j else (f"{row_labels[i]}\nfrequency (Hz)" if row_labels else "frequency (Hz)"))
    return fig, axes
