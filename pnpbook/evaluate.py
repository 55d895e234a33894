"""Evaluation of a trained encoder: per-sample distances, summaries, paired comparisons, listening examples.

Every distance re-synthesises both the target and the predicted parameters
(spec 10) and is returned per sample, so that two models evaluated on the same
fold can be compared pairwise (:func:`paired_ratio_interval`):

* JTFS distance ``||Phi(g(theta_hat)) - Phi(g(theta))||_2`` with the preset's
  operator and ``c`` (not squared, not divided by the number of coefficients P,
  as the authors' "macro" metric);
* MSS distance: ``auraloss``'s ``MultiResolutionSTFTLoss()`` with its defaults
  (spectral convergence + mean L1 log-magnitude at three resolutions), as the
  authors, but one value per sample (auraloss reduces over the whole batch);
* MFCC distance: a distance that no training loss uses (see :func:`mfcc_settings`);
* parameter errors ``|nu_hat - nu|`` in the encoder's output units and in
  physical units.

Predicted parameters outside the preset's ranges are clipped to them before
rendering and counted per sample (``n_clipped``); every metric, the parameter
errors included, is computed from the clipped parameters, i.e. from what is
heard.  Audio is rendered in float64; the JTFS runs in float32 on the float32
cast of the audio, like :func:`pnpbook.features.targets`, so cached targets and
predictions are transformed the same way.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import auraloss
import librosa
import numpy as np
import soundfile
import torch

from pnpbook import data, jtfs
from pnpbook.provenance import provenance, write_atomic
from pnpbook.scaling import Scaler
from pnpbook.synth import SYNTHS, Synth

#: The audio distances, in the order of the results files.
DISTANCES: tuple[str, ...] = ("jtfs", "mss", "mfcc")

#: Checkpoints a run directory holds (:mod:`pnpbook.train`).
CHECKPOINTS: tuple[str, ...] = ("best", "last")

#: Peak amplitude of the louder sound of each listening pair.
EXAMPLE_PEAK = 0.9

Verdict = Literal["beats", "matches", "loses", "inconclusive"]


# ----------------------------------------------------------------------------------------------
# input checks and rendering


def _as_theta(a: torch.Tensor | np.ndarray, synth: Synth, name: str) -> torch.Tensor:
    """``a`` as a float64 CPU tensor of shape (B, d) with finite values; ValueError otherwise."""
    t = torch.as_tensor(a).detach().cpu()
    if not (t.is_floating_point()):
        raise ValueError(f"{name} must hold floating-point values, got dtype {t.dtype}")
    t = t.double()
    if t.ndim != 2 or t.shape[1] != synth.d or t.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, {synth.d}) with B >= 1 and columns {synth.names}, "
                         f"got {tuple(t.shape)}")
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        rows = sorted({int(r) for r in bad.nonzero()[:, 0]})
        raise ValueError(f"{name} has non-finite values in rows {rows[:10]}{' ...' if len(rows) > 10 else ''}")
    return t


def check_pair(synth: Synth, theta: torch.Tensor | np.ndarray,
               theta_hat: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check target and predicted parameters; clip the predictions to the preset's ranges.

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset.
    theta : Tensor or ndarray, shape (B, d)
        Target parameters in ``theta`` units (log10 on the log columns).  They
        must lie in the preset's ranges.
    theta_hat : Tensor or ndarray, shape (B, d)
        Predicted parameters, same units.

    Returns
    -------
    theta : Tensor, shape (B, d), float64
        The targets.
    theta_hat : Tensor, shape (B, d), float64
        The predictions clipped to the ranges.
    n_clipped : Tensor, shape (B,), int64
        How many parameters of each prediction were outside the ranges.

    Raises
    ------
    ValueError
        On a wrong shape, a shape mismatch, a non-finite value, or a target
        outside the ranges (the message names the parameter).
    """
    theta = _as_theta(theta, synth, "theta")
    theta_hat = _as_theta(theta_hat, synth, "theta_hat")
    if theta.shape != theta_hat.shape:
        raise ValueError(f"theta {tuple(theta.shape)} and theta_hat {tuple(theta_hat.shape)} differ in shape")
    synth.check(theta, validate="raise")
    lo, hi = synth.theta_bounds(theta_hat)
    n_clipped = ((theta_hat < lo) | (theta_hat > hi)).sum(dim=1)
    theta_hat, _ = synth.check(theta_hat, validate="clip")
    return theta, theta_hat, n_clipped


def _check_phi_target(phi_target: torch.Tensor | np.ndarray, n: int, P: int) -> torch.Tensor:
    t = torch.as_tensor(phi_target).detach().cpu()
    if tuple(t.shape) != (n, P):
        raise ValueError(f"phi_target must have shape ({n}, {P}) (one row of Phi per target), "
                         f"got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("phi_target has non-finite values")
    return t.float()


# ----------------------------------------------------------------------------------------------
# the distances on one block of audio: x, x_hat (b, N) float64 -> (b,) float64


def _jtfs_block(synth: Synth, x: torch.Tensor, x_hat: torch.Tensor,
                phi_x: torch.Tensor | None) -> np.ndarray:
    op, c = jtfs.operator(synth), jtfs.preset_c(synth)
    if phi_x is None:
        phi_x = jtfs.phi(op(x.float()), c)
    phi_hat = jtfs.phi(op(x_hat.float()), c)
    return (phi_hat.double() - phi_x.double()).norm(dim=1).numpy()


def mss_module() -> auraloss.freq.MultiResolutionSTFTLoss:
    """``auraloss.freq.MultiResolutionSTFTLoss()`` with its defaults, as the authors' MSS metric.

    FFT sizes (1024, 2048, 512), hops (120, 240, 50), windows (600, 1200, 240)
    samples, Hann; per resolution spectral convergence plus the mean absolute
    difference of log magnitudes (magnitudes floored at 1e-4); mean over the
    three resolutions.  The sizes are in samples whatever the sample rate.
    """
    return auraloss.freq.MultiResolutionSTFTLoss()


def _mss_block(x: torch.Tensor, x_hat: torch.Tensor, module: auraloss.freq.MultiResolutionSTFTLoss) -> np.ndarray:
    """auraloss's value for each pair alone, for a whole block at once.

    auraloss reduces over the batch: its spectral convergence is one ratio of
    Frobenius norms over all samples, and its log-magnitude term one mean over
    all samples, so a batched call weights loud samples more and is not the
    mean of per-sample values.  Here both terms are reduced over each sample's
    own (frequency, frame) axes, with auraloss's own STFT (window, floor), so
    row b equals ``module(x_hat[b:b+1, None], x[b:b+1, None])``
    (tests/test_evaluate.py checks it).  Prediction first, as auraloss's
    ``input``; the target is the reference of the spectral convergence.
    """
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for f in module.stft_losses:  # defaults: no linear-magnitude, phase, mel or weighting terms
        pred_mag, _ = f.stft(x_hat.float())
        ref_mag, _ = f.stft(x.float())
        sc = (ref_mag - pred_mag).flatten(1).norm(dim=1) / ref_mag.flatten(1).norm(dim=1)
        log_mag = (torch.log(pred_mag) - torch.log(ref_mag)).abs().flatten(1).mean(dim=1)
        total += (f.w_sc * sc + f.w_log_mag * log_mag).double()
    return (total / len(module.stft_losses)).numpy()


def mfcc_settings(sr: float) -> dict[str, Any]:
    """librosa MFCC settings for a sample rate.

    The window is the power of two nearest 32 ms (128 samples at 4096 Hz, 256
    at 8192 Hz, 256 at 11025 Hz, 512 at 22050 Hz: 23 to 32 ms), short enough to
    follow the amchirp's amplitude modulation (at most 16 Hz, a 62.5 ms
    period); hop a quarter window; 40 mel bands over [0, sr / 2] (every band
    keeps at least two FFT bins at 4096 Hz, where 128 bands would leave some
    empty); 20 coefficients, of which c0 (the overall level) is dropped by
    :func:`mfcc_distance`.

    Returns
    -------
    dict
        ``sr`` (int), ``n_mfcc``, ``n_mels``, ``n_fft``, ``hop_length``, ``fmin``,
        ``fmax`` (Hz): keyword arguments of ``librosa.feature.mfcc``.
    """
    n_fft = 2 ** round(math.log2(0.032 * sr))
    return {"sr": int(sr), "n_mfcc": 20, "n_mels": 40, "n_fft": n_fft, "hop_length": n_fft // 4,
            "fmin": 0.0, "fmax": float(sr) / 2}


def _mfcc(x: np.ndarray, settings: Mapping[str, Any]) -> np.ndarray:
    """``librosa.feature.mfcc(y=x[b], **settings)`` for each row b, shape (b, n_mfcc, frames).

    The mel spectrogram is batched, the dB conversion is not: on a
    multichannel array ``librosa.power_to_db`` floors every channel 80 dB below
    the loudest value of the *whole* array, which would make a sound's MFCCs
    depend on the other sounds of its block.
    """
    mel_settings = {k: v for k, v in settings.items() if k != "n_mfcc"}
    mel = librosa.feature.melspectrogram(y=x, **mel_settings)
    return np.stack([librosa.feature.mfcc(S=librosa.power_to_db(m), n_mfcc=settings["n_mfcc"]) for m in mel])


def _mfcc_block(synth: Synth, x: torch.Tensor, x_hat: torch.Tensor) -> np.ndarray:
    settings = mfcc_settings(synth.sr)
    m, m_hat = _mfcc(x.numpy(), settings), _mfcc(x_hat.numpy(), settings)  # dB-scaled cepstra
    return np.linalg.norm(m_hat[:, 1:] - m[:, 1:], axis=1).mean(axis=1)


Block = Callable[[torch.Tensor, torch.Tensor, slice], np.ndarray]


@torch.no_grad()
def _over_blocks(synth: Synth, theta: torch.Tensor, theta_hat: torch.Tensor,
                 blocks: Mapping[str, Block], batch: int) -> dict[str, np.ndarray]:
    """Render target and prediction ``batch`` rows at a time and apply each block function."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    out: dict[str, list[np.ndarray]] = {k: [] for k in blocks}
    for i in range(0, theta.shape[0], batch):
        rows = slice(i, i + batch)
        x = synth(theta[rows], validate="off")
        x_hat = synth(theta_hat[rows], validate="off")
        for k, fn in blocks.items():
            out[k].append(fn(x, x_hat, rows))
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def _blocks(synth: Synth, names: Sequence[str], phi_target: torch.Tensor | np.ndarray | None,
            n: int) -> dict[str, Block]:
    """The block functions of the distances ``names`` (``phi_target``: the n targets' Phi, or None)."""
    blocks: dict[str, Block] = {}
    if "jtfs" in names:
        if phi_target is not None:
            phi_target = _check_phi_target(phi_target, n, jtfs.operator(synth).size)
        blocks["jtfs"] = lambda x, x_hat, rows: _jtfs_block(
            synth, x, x_hat, None if phi_target is None else phi_target[rows])
    if "mss" in names:
        module = mss_module()
        blocks["mss"] = lambda x, x_hat, rows: _mss_block(x, x_hat, module)
    if "mfcc" in names:
        blocks["mfcc"] = lambda x, x_hat, rows: _mfcc_block(synth, x, x_hat)
    return blocks


def _distances(synth: Synth, theta: torch.Tensor | np.ndarray, theta_hat: torch.Tensor | np.ndarray,
               names: Sequence[str], phi_target: torch.Tensor | np.ndarray | None,
               batch: int) -> dict[str, np.ndarray]:
    theta, theta_hat, _ = check_pair(synth, theta, theta_hat)
    return _over_blocks(synth, theta, theta_hat, _blocks(synth, names, phi_target, len(theta)), batch)


# ----------------------------------------------------------------------------------------------
# public per-sample distances


def jtfs_distance(synth: Synth, theta: torch.Tensor | np.ndarray, theta_hat: torch.Tensor | np.ndarray, *,
                  phi_target: torch.Tensor | np.ndarray | None = None, batch: int = 16) -> np.ndarray:
    """``||Phi(g(theta_hat)) - Phi(g(theta))||_2`` per sample (spec 10).

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset; its JTFS and ``c`` are the preset's
        (:func:`pnpbook.jtfs.operator`, :func:`pnpbook.jtfs.preset_c`).
    theta, theta_hat : Tensor or ndarray, shape (B, d)
        Target and predicted parameters in ``theta`` units; see :func:`check_pair`.
    phi_target : Tensor or ndarray, shape (B, P), optional
        ``Phi(g(theta))`` if already known (:func:`pnpbook.features.targets`);
        computed otherwise.
    batch : int
        Sounds rendered and transformed together.

    Returns
    -------
    ndarray, shape (B,), float64
        Dimensionless L2 norms over the P coefficients, not squared, not divided by P.
    """
    return _distances(synth, theta, theta_hat, ["jtfs"], phi_target, batch)["jtfs"]


def mss_distance(synth: Synth, theta: torch.Tensor | np.ndarray, theta_hat: torch.Tensor | np.ndarray, *,
                 batch: int = 64) -> np.ndarray:
    """auraloss's multi-resolution STFT loss (defaults, :func:`mss_module`) for each pair alone.

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset.
    theta, theta_hat : Tensor or ndarray, shape (B, d)
        Target and predicted parameters; see :func:`check_pair`.
    batch : int
        Sounds rendered and transformed together (the result does not depend on it).

    Returns
    -------
    ndarray, shape (B,), float64
        Dimensionless (spectral convergence plus mean log-magnitude difference
        in nepers, averaged over three resolutions).
    """
    return _distances(synth, theta, theta_hat, ["mss"], None, batch)["mss"]


def mfcc_distance(synth: Synth, theta: torch.Tensor | np.ndarray, theta_hat: torch.Tensor | np.ndarray, *,
                  batch: int = 64) -> np.ndarray:
    """Mean over frames of the Euclidean distance between MFCC vectors without c0.

    librosa's MFCCs are the orthonormal DCT-II of the mel spectrogram in dB
    (``power_to_db``, floored 80 dB below each sound's peak), so the distance is
    in dB: by Parseval it is the RMS difference, over the mel bands, of the two
    dB spectral envelopes smoothed to 19 cepstral coefficients, ignoring the
    overall level (c0).  Dropping c0 follows the mel-cepstral distortion
    convention; we keep librosa's dB cepstra rather than rescaling to the
    ``10 / ln 10 * sqrt(2 ...)`` MCD formula, which assumes natural-log
    cepstra.  No training loss uses mel bands or cepstra, so this distance
    judges every loss from outside.  Settings: :func:`mfcc_settings`.

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset (its sample rate sets the MFCC settings).
    theta, theta_hat : Tensor or ndarray, shape (B, d)
        Target and predicted parameters; see :func:`check_pair`.
    batch : int
        Sounds rendered and analysed together (the result does not depend on it).

    Returns
    -------
    ndarray, shape (B,), float64
        Distance in dB.
    """
    return _distances(synth, theta, theta_hat, ["mfcc"], None, batch)["mfcc"]


def param_errors(synth: Synth, theta: torch.Tensor | np.ndarray, theta_hat: torch.Tensor | np.ndarray,
                 scaler: Scaler) -> dict[str, np.ndarray]:
    """Parameter errors per sample, in ``nu`` and in physical units.

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset.
    theta, theta_hat : Tensor or ndarray, shape (B, d)
        Target and predicted parameters; see :func:`check_pair` (predictions
        are clipped to the ranges first).
    scaler : Scaler
        ``nu = h(theta)``, fitted on the train fold.

    Returns
    -------
    dict of str to ndarray, each shape (B,), float64
        ``nu_abs_NAME``: ``|nu_hat - nu|`` per parameter (dimensionless, the
        train fold spans [-1, 1]); ``nu_abs_mean``: their mean over the d
        parameters; ``phys_abs_NAME``: ``|p_hat - p|`` in the parameter's
        physical unit (:func:`units`); ``phys_rel_NAME``: ``|p_hat / p - 1|``
        for the log-scaled parameters (frequencies f0, fm, omega and the other
        scale parameters gamma, p, D), whose ranges span ratios, so that an
        error of 10 Hz at 100 Hz and at 1000 Hz are told apart.
    """
    theta, theta_hat, _ = check_pair(synth, theta, theta_hat)
    nu_err = (scaler(theta_hat) - scaler(theta)).abs()
    phys, phys_hat = synth.to_phys(theta), synth.to_phys(theta_hat)
    out = {f"nu_abs_{p.name}": nu_err[:, k].numpy() for k, p in enumerate(synth.params)}
    out["nu_abs_mean"] = nu_err.mean(dim=1).numpy()
    for k, p in enumerate(synth.params):
        out[f"phys_abs_{p.name}"] = (phys_hat[:, k] - phys[:, k]).abs().numpy()
        if p.log:
            out[f"phys_rel_{p.name}"] = (phys_hat[:, k] / phys[:, k] - 1).abs().numpy()
    return out


def units(synth: Synth) -> dict[str, str]:
    """The unit of each per-sample metric of :func:`per_sample_metrics` ("" when dimensionless)."""
    out = {"jtfs": "", "mss": "", "mfcc": "dB", "n_clipped": "count", "nu_abs_mean": ""}
    for p in synth.params:
        out[f"nu_abs_{p.name}"] = ""
        out[f"phys_abs_{p.name}"] = p.unit
        if p.log:
            out[f"phys_rel_{p.name}"] = ""
    return out


def per_sample_metrics(synth: Synth, theta: torch.Tensor | np.ndarray, theta_hat: torch.Tensor | np.ndarray,
                       scaler: Scaler, *, phi_target: torch.Tensor | np.ndarray | None = None,
                       batch: int = 16) -> dict[str, np.ndarray]:
    """Every metric per sample, rendering each sound once.

    Parameters
    ----------
    synth : Synth
        Synthesizer at a preset.
    theta, theta_hat : Tensor or ndarray, shape (B, d)
        Target and predicted parameters in ``theta`` units; predictions outside
        the ranges are clipped and counted (:func:`check_pair`).
    scaler : Scaler
        ``nu = h(theta)`` of the run.
    phi_target : Tensor or ndarray, shape (B, P), optional
        ``Phi(g(theta))`` if known (see :func:`jtfs_distance`).
    batch : int
        Sounds rendered and transformed together.

    Returns
    -------
    dict of str to ndarray, each shape (B,)
        ``jtfs``, ``mss``, ``mfcc`` (float64; :func:`jtfs_distance`,
        :func:`mss_distance`, :func:`mfcc_distance`), the entries of
        :func:`param_errors` (float64) and ``n_clipped`` (int64).  Units: :func:`units`.
    """
    theta, theta_hat, n_clipped = check_pair(synth, theta, theta_hat)
    out = _over_blocks(synth, theta, theta_hat, _blocks(synth, DISTANCES, phi_target, len(theta)), batch)
    out.update(param_errors(synth, theta, theta_hat, scaler))
    out["n_clipped"] = n_clipped.numpy()
    return out


# ----------------------------------------------------------------------------------------------
# summaries and paired comparisons


def _as_samples(a: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(a, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"{name} must be a 1-D array of at least 2 samples, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} has non-finite values")
    return v


def _bootstrap_means(arrays: Sequence[np.ndarray], n_boot: int, seed: int) -> list[np.ndarray]:
    """Means of ``n_boot`` resamples with replacement, the same resampled indices for every array.

    Returns one array of shape (n_boot,) per input (all inputs share their length n).
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    step = max(1, 2**22 // n)  # resamples per block: at most ~4 M indices in memory
    means: list[list[np.ndarray]] = [[] for _ in arrays]
    for start in range(0, n_boot, step):
        idx = rng.integers(0, n, size=(min(step, n_boot - start), n))
        for m, a in zip(means, arrays):
            m.append(a[idx].mean(axis=1))
    return [np.concatenate(m) for m in means]


def summarize(per_sample: Mapping[str, Sequence[float] | np.ndarray], *, n_boot: int = 10000,
              seed: int = 0, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Mean, spread and a bootstrap interval of the mean for each per-sample metric.

    Parameters
    ----------
    per_sample : mapping of str to array, each shape (n,)
        Values per sample (e.g. :func:`per_sample_metrics`), n >= 2, finite.
    n_boot : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling (the same resampled indices for every metric).
    level : float
        Coverage of the percentile interval, in (0, 1).

    Returns
    -------
    dict of str to dict
        Per metric: ``n``, ``mean``, ``std`` (sample standard deviation,
        ddof = 1), ``median``, ``ci_low`` and ``ci_high`` (the percentile
        bootstrap interval of the mean at ``level``), in the metric's unit.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    out = {}
    for name, values in per_sample.items():
        v = _as_samples(values, name)
        (boot,) = _bootstrap_means([v], n_boot, seed)
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
        out[name] = {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std(ddof=1)),
                     "median": float(np.median(v)), "ci_low": float(lo), "ci_high": float(hi)}
    return out


def paired_ratio_interval(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                          n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """``mean(a) / mean(b)`` and its paired percentile bootstrap interval.

    Parameters
    ----------
    a, b : array, shape (n,)
        One distance per sound for two models, on the same sounds in the same
        order (row i of both is sound i), n >= 2, finite, positive means.
    n_boot : int
        Bootstrap resamples; each draws n sounds with replacement and takes the
        same sounds for both models, so the interval accounts for the sounds
        being shared.
    seed : int
        Seed of the resampling.
    level : float
        Coverage of the interval.

    Returns
    -------
    ratio, lo, hi : float
        The ratio of means over all sounds and the interval's ends.  With a
        distance (lower is better), a ratio below 1 means ``a`` is better.
    """
    a, b = _as_samples(a, "a"), _as_samples(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must hold the same sounds: lengths {a.size} and {b.size} differ")
    if not (a.mean() > 0 and b.mean() > 0):
        raise ValueError(f"means must be positive, got mean(a) = {a.mean()}, mean(b) = {b.mean()}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    ma, mb = _bootstrap_means([a, b], n_boot, seed)
    if not (mb > 0).all():
        raise ValueError("a bootstrap resample of b has mean 0: the ratio is undefined")
    lo, hi = np.quantile(ma / mb, [(1 - level) / 2, (1 + level) / 2])
    return float(a.mean() / b.mean()), float(lo), float(hi)


def verdict(lo: float, hi: float, tolerance: float = 0.1) -> Verdict:
    """The issue's decision rule on an interval of ``mean(a) / mean(b)`` of a distance.

    Parameters
    ----------
    lo, hi : float
        Interval of the ratio (:func:`paired_ratio_interval`), ``lo <= hi``.
    tolerance : float
        "Matches" means the whole interval lies in [1 - tolerance, 1 + tolerance].

    Returns
    -------
    {"beats", "matches", "loses", "inconclusive"}
        ``"beats"`` when the interval lies below 1 (a is better; this wins over
        "matches" when both hold, as the stronger statement); ``"matches"``
        when it lies in [1 - tolerance, 1 + tolerance]; ``"loses"`` when it
        lies above 1 and reaches past 1 + tolerance; otherwise ``"inconclusive"``.
    """
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"need finite lo <= hi, got lo = {lo}, hi = {hi}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must lie in (0, 1), got {tolerance}")
    if hi < 1:
        return "beats"
    if lo >= 1 - tolerance and hi <= 1 + tolerance:
        return "matches"
    if lo > 1:
        return "loses"
    return "inconclusive"


# ----------------------------------------------------------------------------------------------
# listening examples and the whole evaluation


@torch.no_grad()
def write_listening_examples(directory: str | Path, synth: Synth, theta: torch.Tensor | np.ndarray,
                             theta_hat: torch.Tensor | np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    """Write target and prediction of each pair as OGG/Vorbis files.

    Both sounds of a pair share one gain, which brings the louder of the two to
    a peak of :data:`EXAMPLE_PEAK`, so their loudness difference is kept (the
    amchirp's level grows with gamma) and Vorbis has headroom for its
    overshoot.  Files: ``NAME_target.ogg`` and ``NAME_pred.ogg`` at the preset's
    sample rate, mono.

    Parameters
    ----------
    directory : path-like
        Created if needed.
    synth : Synth
        Synthesizer at a preset.
    theta, theta_hat : Tensor or ndarray, shape (k, d)
        Target and predicted parameters (predictions clipped as in :func:`check_pair`).
    names : sequence of str, length k
        File name stem of each pair.

    Returns
    -------
    list of dict
        Per pair: ``name``, ``target`` and ``pred`` (file names), ``gain`` (linear).
    """
    theta, theta_hat, _ = check_pair(synth, theta, theta_hat)
    if len(names) != len(theta):
        raise ValueError(f"need one name per pair: {len(names)} names for {len(theta)} pairs")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x, x_hat = synth(theta, validate="off"), synth(theta_hat, validate="off")
    out = []
    for name, a, b in zip(names, x.numpy(), x_hat.numpy()):
        peak = max(np.abs(a).max(), np.abs(b).max())
        gain = EXAMPLE_PEAK / peak if peak > 0 else 1.0
        files = {}
        for role, signal in (("target", a), ("pred", b)):
            path = directory / f"{name}_{role}.ogg"
            write_atomic(path, lambda tmp, s=signal: soundfile.write(
                tmp, (gain * s).astype(np.float32), int(synth.sr), format="OGG", subtype="VORBIS"))
            files[role] = path.name
        out.append({"name": name, **files, "gain": float(gain)})
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, features: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """The encoder's ``nu_hat`` for every item, in eval mode, ``batch`` items at a time.

    Parameters
    ----------
    model : Module
        Encoder, input (B, n_bins, frames), output (B, d).
    features : Tensor, shape (n, n_bins, frames)
        CQT features of the fold.
    batch : int
        Items per forward pass.

    Returns
    -------
    Tensor, shape (n, d), float64, on the CPU
    """
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(features[i:i + batch].to(device)).double().cpu()
                      for i in range(0, len(features), batch)])


def evaluate(run_dir: str | Path, fold: str = "test", checkpoint: str = "best", n: int | None = None, *,
             k_audio: int = 4, batch: int = 16, n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Evaluate a run's checkpoint on a fold and write the results file and listening examples.

    Parameters
    ----------
    run_dir : path-like
        A run directory of :func:`pnpbook.train.train` (``checkpoints/best.pt``, ``checkpoints/last.pt``).
    fold : {"train", "val", "test"}
        The fold, in its fixed order.
    checkpoint : {"best", "last"}
        Best validation JTFS distance, or the last epoch.  Report both (spec 13.7).
    n : int or None
        The first ``n`` items of the fold (default: the preset's fold size).
    k_audio : int
        Listening examples: the fold's first ``k_audio`` sounds.
    batch : int
        Sounds per rendering and JTFS block.
    n_boot, seed : int
        Bootstrap of :func:`summarize`.

    Returns
    -------
    dict
        What ``run_dir/eval_{checkpoint}_{fold}.json`` holds: ``provenance``,
        the run's ``config``, ``synth``, ``scale``, ``fold``, ``checkpoint``,
        ``checkpoint_epoch``, ``n``, ``ids``, ``theta`` and ``theta_hat`` (n, d; theta_hat clipped),
        ``settings`` (of every metric), ``units``, ``summary``
        (:func:`summarize`), ``per_sample`` (lists of n values, in the order of
        ``ids``, for paired comparisons across runs), ``n_clipped_total`` and
        ``audio`` (files under ``run_dir/audio/``).
    """
    from pnpbook import features as feats  # late: only evaluate() needs them
    from pnpbook.train import load_encoder

    run_dir = Path(run_dir)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    if fold not in data.FOLDS:
        raise ValueError(f"fold must be one of {data.FOLDS}, got {fold!r}")
    if isinstance(k_audio, bool) or not isinstance(k_audio, int) or k_audio < 0:
        raise ValueError(f"k_audio must be a non-negative int, got {k_audio!r}")
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}: train the run first (python -m pnpbook train)")
    model, cfg = load_encoder(path)
    epoch = torch.load(path, map_location="cpu", weights_only=True).get("epoch")
    synth = SYNTHS[cfg.synth].at(cfg.scale)
    items = data.fold(synth, fold, n=n)
    scaler = data.train_scaler(synth)
    X = feats.features(synth, fold, n=n)
    if len(X) != len(items):
        raise ValueError(f"features hold {len(X)} items, the fold {len(items)}")
    theta = torch.from_numpy(np.array(items.theta, dtype=np.float64))
    theta_hat = scaler.inverse(predict(model, X))
    metrics = per_sample_metrics(synth, theta, theta_hat, scaler,
                                 phi_target=feats.targets(synth, fold, n=n), batch=batch)
    theta_hat = check_pair(synth, theta, theta_hat)[1]  # clipped, as the metrics saw it
    ids = [str(i) for i in items.ids]
    k = min(k_audio, len(ids))
    audio = write_listening_examples(run_dir / "audio", synth, theta[:k], theta_hat[:k],
                                     [f"{checkpoint}_{fold}_{i}" for i in ids[:k]])
    mss = mss_module()
    result = {
        "provenance": provenance(),
        "run_dir": str(run_dir),
        "config": dataclasses.asdict(cfg),
        "synth": synth.name, "scale": synth.scale, "fold": fold, "checkpoint": checkpoint,
        "checkpoint_epoch": None if epoch is None else int(epoch),
        "n": len(ids), "ids": ids, "param_names": list(synth.names),
        "theta": theta.tolist(), "theta_hat": theta_hat.tolist(),
        "settings": {
            "jtfs": {"c": jtfs.preset_c(synth), "P": jtfs.operator(synth).size,
                     "norm": "L2 over the P coefficients, not squared, not divided by P"},
            "mss": {"library": f"auraloss {importlib.metadata.version('auraloss')}",
                    "fft_sizes": list(mss.fft_sizes), "hop_sizes": list(mss.hop_sizes),
                    "win_lengths": list(mss.win_lengths), "reduction": "per sample"},
            "mfcc": {**mfcc_settings(synth.sr), "library": f"librosa {librosa.__version__}",
                     "distance": "mean over frames of the Euclidean distance of MFCCs 1..n_mfcc-1 (c0 dropped)"},
            "bootstrap": {"n_boot": n_boot, "seed": seed, "level": 0.95, "kind": "percentile, of the mean"},
            "clipping": "predictions clipped to the preset's ranges before every metric",
        },
        "units": units(synth),
        "summary": summarize(metrics, n_boot=n_boot, seed=seed),
        "per_sample": {name: v.tolist() for name, v in metrics.items()},
        "n_clipped_total": int(metrics["n_clipped"].sum()),
        "audio": audio,
    }
    write_atomic(run_dir / f"eval_{checkpoint}_{fold}.json",
                 lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
    return result
