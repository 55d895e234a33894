"""The encoder's input (a CQT) and the JTFS targets of a fold, cached on disk.

The front end follows the authors (spec section 9): nnAudio's ``CQT1992v2``
(Hann window, centred frames with reflection padding, L1-normalised kernels,
magnitude, librosa-style scaling), 12 bins per octave over ``octaves`` octaves
from :func:`cqt_fmin`, then ``log1p(CQT / 1e-3)``.  The settings per
(synth, scale) are the ``"cqt"`` entry of :data:`pnpbook.config.PRESETS`.

Both the features and the targets ``Phi(g(theta)) = log1p(c S(g(theta)))`` of a
fold are computed once and cached through :func:`pnpbook.cache.cached`; the
cache config holds everything that changes the numbers: synthesizer, scale,
sample rate and length, the CQT or JTFS settings (and ``c``), the fold's name,
size and SHA-256 of its ids and theta, and :data:`FEATURES_VERSION`.
"""
from __future__ import annotations

import copy
import functools
import hashlib
from pathlib import Path
from typing import Any, Iterable

import nnAudio
import numpy as np
import torch
from nnAudio.features import CQT1992v2
from tqdm import tqdm

from pnpbook import cache, config, data, jtfs
from pnpbook.synth import Synth

#: Bump by hand whenever a change in the code (here, in the synthesizers or in
#: the JTFS) changes the cached numbers, so old cache files are not read.
FEATURES_VERSION = 1

#: The CQT magnitude at which the log compression starts (the authors' 1e-3).
CQT_REFERENCE = 1e-3

#: The lowest bin when it fits: C1 = 32.7 Hz (the default ``fmin`` of librosa and nnAudio).
C1_HZ = 32.7


def cqt_fmin(sr: float, octaves: int) -> float:
    """The lowest CQT frequency by the authors' rule (spec section 9), in Hz.

    ``32.7`` Hz, unless ``octaves`` octaves above it would reach the Nyquist
    frequency (``2**octaves * 32.7 >= sr / 2``); then ``0.4 * sr / 2**octaves``,
    so that the top octave ends at ``0.8`` times Nyquist.

    Parameters
    ----------
    sr : float
        Sample rate in Hz.
    octaves : int
        Number of octaves J of the CQT.

    Returns
    -------
    float
        ``fmin`` in Hz (22050 Hz, J = 10: 8.613 Hz; 8192 Hz, J = 6: 32.7 Hz).
    """
    if not sr > 0 or octaves < 1:
        raise ValueError(f"need sr > 0 and octaves >= 1, got sr = {sr}, octaves = {octaves}")
    if 2**octaves * C1_HZ >= sr / 2:
        return 0.4 * sr / 2**octaves
    return C1_HZ


class CQTFrontEnd(torch.nn.Module):
    """``|log1p(CQT(x) / 1e-3)|`` with nnAudio's ``CQT1992v2``.

    The CQT magnitude is non-negative, so the authors' absolute value changes
    nothing and is not applied.  Computed in float32 (nnAudio's kernels).

    Parameters
    ----------
    sr : float
        Sample rate in Hz.
    n_samples : int
        Signal length N the front end accepts.
    octaves : int
        Octaves J; ``n_bins = octaves * bins_per_octave``.
    bins_per_octave : int
        Bins per octave (the authors: 12).
    hop_length : int
        Hop between frames in samples; ``frames = n_samples // hop_length + 1``.

    Attributes
    ----------
    fmin : float
        Lowest bin centre in Hz (:func:`cqt_fmin`).
    n_bins, frames : int
        Output shape per signal.
    frequencies : ndarray, shape (n_bins,)
        Bin centres in Hz, ``fmin * 2**(k / bins_per_octave)``.
    kernel_width : int
        Length of nnAudio's kernels (a power of two >= the longest window).

    Notes
    -----
    The top bin, ``fmin * 2**(octaves - 1 / bins_per_octave)``, is below
    ``fmin * 2**octaves``, which the rule of :func:`cqt_fmin` keeps below
    the Nyquist frequency (at most ``0.4 sr``), so every setting passes
    nnAudio's Nyquist check.

    Raises
    ------
    ValueError
        If the kernel is too long for the signal (reflection padding of
        ``kernel_width // 2`` samples needs ``kernel_width // 2 < n_samples``).
    """

    def __init__(self, sr: float, n_samples: int, octaves: int, bins_per_octave: int = 12,
                 hop_length: int = 256):
        super().__init__()
        self.sr, self.n_samples = float(sr), int(n_samples)
        self.octaves, self.bins_per_octave, self.hop_length = int(octaves), int(bins_per_octave), int(hop_length)
        self.fmin = cqt_fmin(sr, octaves)
        self.n_bins = self.octaves * self.bins_per_octave
        self.cqt = CQT1992v2(sr=sr, hop_length=hop_length, fmin=self.fmin, n_bins=self.n_bins,
                             bins_per_octave=bins_per_octave, verbose=False)
        self.kernel_width = int(self.cqt.kernel_width)
        if self.kernel_width // 2 >= n_samples:
            raise ValueError(f"CQT kernel of {self.kernel_width} samples (fmin = {self.fmin:.3f} Hz at "
                             f"sr = {sr:g} Hz) is too long for signals of {n_samples} samples: reflection "
                             f"padding needs kernel_width // 2 < n_samples; raise fmin or lengthen the signal")
        self.frequencies = np.asarray(self.cqt.frequencies, dtype=np.float64)
        self.frames = self.n_samples // self.hop_length + 1

    def settings(self) -> dict[str, Any]:
        """Everything that sets the output, JSON-ready (part of the features' cache config)."""
        return {"sr": self.sr, "n_samples": self.n_samples, "octaves": self.octaves,
                "bins_per_octave": self.bins_per_octave, "hop_length": self.hop_length, "fmin": self.fmin,
                "n_bins": self.n_bins, "reference": CQT_REFERENCE, "implementation": "nnAudio.CQT1992v2",
                "window": "hann", "center": True, "pad_mode": "reflect", "norm": 1, "filter_scale": 1,
                "nnAudio": nnAudio.__version__}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of a batch of signals.

        Parameters
        ----------
        x : Tensor, shape (B, n_samples)
            Signals, float32 or float64 (computed in float32).

        Returns
        -------
        Tensor, shape (B, n_bins, frames), float32
            ``log1p(|CQT| / 1e-3)``, dimensionless, >= 0.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point torch.Tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 2 or x.shape[1] != self.n_samples:
            raise ValueError(f"CQT front end expects signals of shape (B, {self.n_samples}) "
                             f"({self.n_samples} samples at {self.sr:g} Hz), got shape {tuple(x.shape)}")
        magnitude = self.cqt(x.to(self.cqt.cqt_kernels_real.dtype))
        return torch.log1p(magnitude / CQT_REFERENCE)


@functools.lru_cache(maxsize=8)
def _front_end(sr: float, n_samples: int, octaves: int, bins_per_octave: int, hop_length: int) -> CQTFrontEnd:
    return CQTFrontEnd(sr, n_samples, octaves, bins_per_octave, hop_length).eval()


def front_end(synth: str | Synth, scale: str | None = None) -> CQTFrontEnd:
    """The preset's CQT front end, built once per setting and shared.

    Parameters
    ----------
    synth : str or Synth
        A registry name (then ``scale`` picks the preset) or a record at a preset.
    scale : str or None
        Scale for a registry name; None reads ``$PNPBOOK_SCALE``.

    Returns
    -------
    CQTFrontEnd
        In eval mode, on the CPU.  It is shared: to move it to another device,
        move a copy (``copy.deepcopy(front_end(...)).to(device)``).
    """
    s = data.resolve_synth(synth, scale)
    c = config.preset(s.name, s.scale)["cqt"]
    return _front_end(float(s.sr), s.n_samples, c["octaves"], c["bins_per_octave"], c["hop_length"])


def _sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _fold_config(s: Synth, fold: data.Fold) -> dict[str, Any]:
    """What identifies a fold's sounds: preset, fold, and hashes of its ids and theta."""
    return {"synth": s.name, "scale": s.scale, "sr": float(s.sr), "n_samples": s.n_samples,
            "fold": fold.name, "n": len(fold),
            "ids_sha256": _sha256(fold.ids.astype(f"U{data.ID_WIDTH}")),
            "theta_sha256": _sha256(np.asarray(fold.theta, dtype="<f8")),
            "version": FEATURES_VERSION}


def _render(s: Synth, theta: np.ndarray) -> torch.Tensor:
    """Sounds of a block of theta rows (float64 physics), as float32, shape (b, N)."""
    return s(torch.from_numpy(np.array(theta, dtype=np.float64))).float()


def _batches(n: int, size: int, progress: bool, desc: str) -> Iterable[int]:
    """Start indices of blocks of ``size`` items, with an optional progress bar."""
    return tqdm(range(0, n, size), desc=desc, unit="batch", disable=not progress)


def features_config(synth: str | Synth, fold_name: str, scale: str | None = None,
                    n: int | None = None) -> dict[str, Any]:
    """The cache config of :func:`features` (JSON-ready)."""
    s = data.resolve_synth(synth, scale)
    fold = data.fold(s, fold_name, n=n)
    return {"kind": "cqt_features", **_fold_config(s, fold), "cqt": front_end(s).settings()}


def targets_config(synth: str | Synth, fold_name: str, scale: str | None = None,
                   n: int | None = None) -> dict[str, Any]:
    """The cache config of :func:`targets` (JSON-ready)."""
    s = data.resolve_synth(synth, scale)
    fold = data.fold(s, fold_name, n=n)
    settings = {"N": s.n_samples, **config.preset(s.name, s.scale)["jtfs"]}
    return {"kind": "jtfs_targets", **_fold_config(s, fold), "jtfs": settings, "c": jtfs.preset_c(s),
            "dtype": "float32"}


def features(synth: str | Synth, fold_name: str, scale: str | None = None, n: int | None = None, *,
             root: str | Path | None = None, batch: int = 16, device: str | torch.device = "cpu",
             progress: bool = False) -> torch.Tensor:
    """CQT features of a fold, from the cache or computed and cached.

    Parameters
    ----------
    synth : str or Synth
        A registry name (then ``scale`` picks the preset) or a record at a preset.
    fold_name : {"train", "val", "test"}
        The fold, in its fixed order (:func:`pnpbook.data.fold`).
    scale : str or None
        Scale for a registry name; None reads ``$PNPBOOK_SCALE``.
    n : int or None
        The first ``n`` items (default: the preset's fold size).
    root : path-like, optional
        Cache root (default ``$PNPBOOK_CACHE``, else ``data/cache``).
    batch : int
        Items rendered and transformed together when computing.
    device : str or torch.device
        Where the CQT runs when computing (not part of the cache config: CPU
        and GPU agree to float32 rounding).
    progress : bool
        Show a progress bar while computing.

    Returns
    -------
    Tensor, shape (n, n_bins, frames), float32
        Row ``i`` is the fold's item ``i`` (``data.fold(...).ids[i]``).
    """
    s = data.resolve_synth(synth, scale)
    cfg = features_config(s, fold_name, n=n)

    def compute() -> dict[str, np.ndarray]:
        fold = data.fold(s, fold_name, n=n)
        fe = front_end(s)
        if torch.device(device).type != "cpu":
            fe = copy.deepcopy(fe).to(device)
        out = np.empty((len(fold), fe.n_bins, fe.frames), dtype=np.float32)
        with torch.no_grad():
            for i in _batches(len(fold), batch, progress, f"CQT {s.name}/{s.scale}/{fold_name}"):
                x = _render(s, fold.theta[i:i + batch]).to(device)
                out[i:i + batch] = fe(x).cpu().numpy()
        return {"features": out}

    stem = f"features/{s.name}_{s.scale}_{fold_name}"
    return torch.from_numpy(cache.cached(stem, cfg, compute, root)["features"])


def targets(synth: str | Synth, fold_name: str, scale: str | None = None, n: int | None = None, *,
            root: str | Path | None = None, batch: int = 8, progress: bool = False) -> torch.Tensor:
    """``Phi(g(theta)) = log1p(c S)`` of a fold's sounds, from the cache or computed and cached.

    The preset's JTFS (:func:`pnpbook.jtfs.operator`) and ``c``
    (:func:`pnpbook.jtfs.preset_c`), in float32, ``batch`` sounds at a time
    under ``torch.no_grad``: the DDSP-JTFS loss's targets and the JTFS
    distance's reference.

    Parameters
    ----------
    synth, fold_name, scale, n, root, progress
        As in :func:`features`.
    batch : int
        Sounds per JTFS call.

    Returns
    -------
    Tensor, shape (n, P), float32
        Dimensionless; row ``i`` is the fold's item ``i``.
    """
    s = data.resolve_synth(synth, scale)
    cfg = targets_config(s, fold_name, n=n)

    def compute() -> dict[str, np.ndarray]:
        fold = data.fold(s, fold_name, n=n)
        op, c = jtfs.operator(s), cfg["c"]
        out = np.empty((len(fold), op.size), dtype=np.float32)
        with torch.no_grad():
            for i in _batches(len(fold), batch, progress, f"JTFS {s.name}/{s.scale}/{fold_name}"):
                out[i:i + batch] = jtfs.phi(op(_render(s, fold.theta[i:i + batch])), c).numpy()
        return {"S": out}

    stem = f"targets/{s.name}_{s.scale}_{fold_name}"
    return torch.from_numpy(cache.cached(stem, cfg, compute, root)["S"])
