"""The table of presets: one row per (synthesizer, scale).

A *scale* (``tiny``, ``small``, ``paper``) sets everything that trades fidelity for
cost: sample rate, signal length, parameter ranges and how much of each fold is
used.  ``paper`` is the paper's settings (spec sections 2, 3 and 15).  The
synthesizer's own record (:mod:`pnpbook.synth`) holds the paper's values; a
preset lists only what it changes, so the paper values are written down once.

Choose the scale with the environment variable ``PNPBOOK_SCALE`` (default
``tiny``) or pass it explicitly; :func:`get_scale` resolves and checks it.

Why ``tiny`` narrows ranges
---------------------------
``tiny`` signals have at most 2**13 samples, and the physics must stay inside
the signal:

* amchirp: the Gaussian window has sigma = 0.2 / gamma seconds.  At 4096 Hz,
  8192 samples last 2 s (t in [-1, 1) s), so gamma >= 1 keeps +-5 sigma inside
  the signal (gamma = 0.5 would need +-2 s).  Lowering the sample rate to
  4096 Hz is safe: within +-5 sigma the carrier sweeps at most +-1 octave, so
  it stays below f_c * 2 = 2048 Hz, the Nyquist frequency.
* ftm: the fundamental decays as exp(-t / tau).  At 8192 Hz, 8192 samples last
  1 s, so tau <= 0.25 s leaves at least 4 tau of ringing (exp(-4) = 1.8 %).
  The fundamental (at most 1000 Hz) stays far below Nyquist (4096 Hz); more of
  the high modes are cut than at 22050 Hz.

``small`` keeps the paper's ranges and durations at half the sample rate.
"""
from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any, Mapping

#: The scales, from cheapest to the paper's settings.
SCALES: tuple[str, ...] = ("tiny", "small", "paper")

#: Environment variable that selects the scale.
SCALE_ENV = "PNPBOOK_SCALE"

#: Default scale when nothing is set: what CI, nbval and Colab run.
DEFAULT_SCALE = "tiny"


def _freeze(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(
        {k: _freeze(v) if isinstance(v, Mapping) else v for k, v in d.items()}
    )


#: Per (synth, scale): what the preset changes from the paper's record.
#: ``ranges`` are (low, high) in physical units (Hz, s, dimensionless);
#: ``folds`` is how many items of each fold the scale uses (None: all);
#: ``cqt`` the encoder's CQT front end (spec 9: ``octaves`` J and 12 bins per
#: octave, fmin by the authors' rule in :mod:`pnpbook.features`); ``train`` the
#: training budget (encoder, batch size, epochs of ``steps_per_epoch`` steps);
#: ``jtfs`` the JTFS settings (:class:`pnpbook.jtfs.JTFSConfig`, N is the signal
#: length; ``paper`` follows the authors' kymatio-0.4 settings: J = 13,
#: Q = (12, 1), J_fr = 3, Q_fr = 1, F = 2, global time averaging); ``c`` the
#: log compression of Phi = log1p(c S), 1 / median S over 256 train samples,
#: written by ``python -m pnpbook calibrate`` (results in
#: ``data/results/calibration_SYNTH_SCALE.json``; None until it has run).
PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = _freeze({
    "amchirp": {
        "tiny": {
            "sr": 4096, "n_samples": 2**13,
            "ranges": {"gamma": (1.0, 4.0)},
            "folds": {"train": 128, "val": 16, "test": 64},
            "jtfs": {"J": 10, "Q": (8, 1), "J_fr": 3, "Q_fr": 1, "F": 2},
            "cqt": {"octaves": 6, "bins_per_octave": 12, "hop_length": 128},
            "train": {"encoder": "cnn", "batch_size": 16, "epochs": 4, "steps_per_epoch": 4},
            "c": 17995.8,  # data/results/calibration_amchirp_tiny.json
            "note": "2 s at 4096 Hz; gamma >= 1 keeps +-5 sigma = +-1/gamma s inside the signal",
        },
        "small": {
            "sr": 4096, "n_samples": 2**14,
            "ranges": {},
            "folds": {"train": 2048, "val": 128, "test": 512},
            "jtfs": {"J": 12, "Q": (12, 1), "J_fr": 3, "Q_fr": 1, "F": 2},
            # hop 128 at 4096 Hz keeps the paper's 32 frames/s: the |AM| envelope beats at 2 fm = 8-32 Hz,
            # which 16 frames/s (hop 256) would alias entirely
            "cqt": {"octaves": 6, "bins_per_octave": 12, "hop_length": 128},
            # folds and budget sized so that chapter 6's five variants x three seeds fit about three hours
            # of 2 CPU cores: DDSP-JTFS costs ~0.35 s per sound (forward + backward, 1 thread), so
            # 300 steps x 16 sounds ~ 28 min per seed; every loss gets the same steps and batch
            "train": {"encoder": "cnn", "batch_size": 16, "epochs": 10, "steps_per_epoch": 30},
            "c": 1256385.1,  # data/results/calibration_amchirp_small.json
            "note": "the paper's 4 s and ranges at half the sample rate",
        },
        "paper": {
            "ranges": {},
            "folds": {"train": None, "val": None, "test": None},
            "jtfs": {"J": 13, "Q": (12, 1), "J_fr": 3, "Q_fr": 1, "F": 2},
            "cqt": {"octaves": 6, "bins_per_octave": 12, "hop_length": 256},
            "train": {"encoder": "effnet", "batch_size": 256, "epochs": 70, "steps_per_epoch": 100},
            "c": 2864586.7,  # data/results/calibration_amchirp_paper.json
            "note": "the paper's settings (spec section 2)",
        },
    },
    "ftm": {
        "tiny": {
            "sr": 8192, "n_samples": 2**13,
            "ranges": {"tau": (0.07, 0.25)},
            "folds": {"train": 128, "val": 16, "test": 64},
            "jtfs": {"J": 10, "Q": (8, 1), "J_fr": 3, "Q_fr": 1, "F": 2},
            "cqt": {"octaves": 7, "bins_per_octave": 12, "hop_length": 128},
            "train": {"encoder": "cnn", "batch_size": 16, "epochs": 4, "steps_per_epoch": 4},
            "c": 26605.8,  # data/results/calibration_ftm_tiny.json
            "note": "1 s at 8192 Hz; tau <= 0.25 s leaves >= 4 tau of ringing",
        },
        "small": {
            "sr": 11025, "n_samples": 2**15,
            "ranges": {},
            "folds": {"train": 2048, "val": 128, "test": 512},
            "jtfs": {"J": 12, "Q": (12, 1), "J_fr": 3, "Q_fr": 1, "F": 2},
            "cqt": {"octaves": 9, "bins_per_octave": 12, "hop_length": 256},
            "train": {"encoder": "cnn", "batch_size": 16, "epochs": 10, "steps_per_epoch": 30},
            "c": 91784.6,  # data/results/calibration_ftm_small.json
            "note": "the paper's 2.97 s and ranges at half the sample rate",
        },
        "paper": {
            "ranges": {},
            "folds": {"train": None, "val": None, "test": None},
            "jtfs": {"J": 13, "Q": (12, 1), "J_fr": 3, "Q_fr": 1, "F": 2},
            "cqt": {"octaves": 10, "bins_per_octave": 12, "hop_length": 256},
            "train": {"encoder": "effnet", "batch_size": 256, "epochs": 70, "steps_per_epoch": 100},
            "c": 144106.3,  # data/results/calibration_ftm_paper.json
            "note": "the paper's settings (spec section 3)",
        },
    },
})


def get_scale(scale: str | None = None) -> str:
    """Resolve the scale: the argument, else ``$PNPBOOK_SCALE``, else ``tiny``.

    Parameters
    ----------
    scale : str or None
        One of :data:`SCALES`, or None to read the environment.

    Returns
    -------
    str
        The checked scale name.

    Raises
    ------
    ValueError
        If the name is not one of :data:`SCALES`.
    """
    if scale is None:
        scale = os.environ.get(SCALE_ENV, DEFAULT_SCALE)
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r} is not one of {SCALES} "
                         f"(set by argument or ${SCALE_ENV})")
    return scale


def preset(synth: str, scale: str | None = None) -> Mapping[str, Any]:
    """The preset row of ``synth`` at ``scale`` (see :data:`PRESETS`).

    Raises
    ------
    ValueError
        If the synthesizer or the scale is unknown.
    """
    if synth not in PRESETS:
        raise ValueError(f"synth {synth!r} is not one of {tuple(PRESETS)}")
    return PRESETS[synth][get_scale(scale)]
