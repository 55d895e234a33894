"""Local time averaging of pnpbook.jtfs (``JTFSConfig(T=...)``, issue 3 part 1: "global, or a window T").

With a local T every path is low-passed in time by the Gaussian ``phi_T`` (kymatio 0.3.0's
``gauss_1d(n_pad, 0.1 / T)``, unit l1 norm, so its spectrum is ``exp(-f**2 / (2 (0.1 / T)**2))``
with value 1 at f = 0) and sampled every ``stride`` samples over the padded axis.  Two facts about
that spectrum set most tolerances below:

* at every nonzero multiple of the frame rate 1 / T it is below ``exp(-50)``, so (Poisson
  summation) the frames of a path sample its Gaussian-smoothed envelope with weights that add up
  to exactly the plain mean: the mean over the frames is the global average, to rounding, for
  every path whose modulus comes before the averaging;
* on a padded axis of ``n_pad = 2 T`` samples the periodised ``phi_T`` deviates from the constant
  ``1 / n`` by at most ``2 sum_m exp(-12.5 m**2) / n``, so each of the two frames of a
  nonnegative envelope ``v`` is its mean within ``2 exp(-12.5) mean(v) = 7.5e-6 mean(v)``.
"""
import math
import re

import numpy as np
import pytest
import torch
from torch.func import jacfwd, jacrev, vmap

from pnpbook.jtfs import FAMILIES, JTFS, JTFSConfig, phi
from test_jtfs import windowed  # Hann-windowed tone: windowed(n, start, length, f)

BASE = dict(N=2048, J=7, Q=(8, 1), J_fr=2, Q_fr=1, F=2)
SHORT = dict(N=2048, J=5, Q=(8, 1), J_fr=2, Q_fr=1, F=2)  # short wavelets: frames resolve events
#: Paths whose modulus precedes the time averaging (the frames' mean is their global average).
LINEAR_AFTER_MODULUS = ("S0", "S1_phi_fr", "psi_phi_fr", "psi_psi_up", "psi_psi_down")


@pytest.fixture(scope="module")
def ops():
    """Operators by T, built once: global, T = N, T = 2**J and T = 64 < 2**J on BASE."""
    return {T: JTFS(JTFSConfig(**BASE, T=T)) for T in ("global", 2048, 128, 64)}


def steady_am_tone(n, dtype=torch.float64):
    """``sin(2 pi t / 8) (1 + 0.5 sin(2 pi t / 32))`` over all n samples: periodic, period 32."""
    t = torch.arange(n, dtype=dtype)
    return torch.sin(2 * math.pi * t / 8) * (1 + 0.5 * torch.sin(2 * math.pi * t / 32))


def test_default_is_global_and_local_shapes(ops):
    """T defaults to 'global' (output (P,), one frame); a local T keeps the paths and adds frames."""
    glob = ops["global"]
    assert JTFSConfig(**BASE).T == "global" and glob.frames == 1 and glob.stride is None
    x = torch.stack([windowed(BASE["N"], 600, 700, 0.05), windowed(BASE["N"], 300, 900, 0.11)])
    assert glob(x).shape == (2, glob.size)
    for T in (2048, 128, 64):
        op = ops[T]
        assert op.paths == glob.paths and op.size == glob.size
        assert op.stride == T and op.frames == op.n_pad // T
        np.testing.assert_array_equal(op.frame_times, np.arange(op.frames) * T - op.pad_left)
    op = ops[64]
    S = op(x)
    assert S.shape == (2, op.size, op.frames) and S.dtype == torch.float64
    torch.testing.assert_close(op(x[1]), S[1], rtol=1e-12, atol=1e-15)
    S32 = op(x.float())
    assert S32.dtype == torch.float32
    torch.testing.assert_close(S32, S.float(), rtol=2e-4, atol=1e-6 * float(S.abs().max()))
    torch.testing.assert_close(phi(S, 1e3), torch.log1p(1e3 * S))
    assert JTFS(JTFSConfig(**BASE, T=64, oversampling=1)).stride == 32  # T / 2**oversampling


def test_window_N_gives_global_value_in_every_frame(ops):
    """T = N with n_pad = 2 N: two frames, each equal to the global value within 2 exp(-12.5).

    The Gaussian low-pass of width T is not a plain mean: on the padded circle of 2T samples its
    periodisation varies by up to 2 exp(-12.5) = 7.5e-6 of its mean (first Fourier coefficient at
    frequency 1 / (2T)).  Each frame of a nonnegative envelope is therefore within that fraction
    of the global mean (S1_phi_fr and the joint paths: nonnegative averages of moduli).  For
    S0 the envelope is x itself, so the bound is that fraction of mean |x|; for S1_psi_fr the
    frequential wavelet W follows the average: ``||S1_f W| - |S1 W|| <= eps S1 |W|``.
    """
    op, glob = ops[2048], ops["global"]
    assert op.n_pad == 2 * op.config.N and op.frames == 2
    x = windowed(BASE["N"], 300, 700, 0.05) + 0.5 * windowed(BASE["N"], 1200, 500, 0.21)
    S, G = op(x), glob(x)
    eps = 2 * math.exp(-12.5) * (1 + 1e-6) + 1e-12  # plus rounding and the filters' pruning at 1e-13
    nonneg = torch.zeros(op.size, dtype=torch.bool)
    for f in ("S1_phi_fr", "psi_phi_fr", "psi_psi_up", "psi_psi_down"):
        nonneg |= op.family_mask(f)
    dev = (S - G[:, None]).abs().amax(-1)
    assert torch.all(dev[nonneg] <= eps * G[nonneg])
    assert float(dev[0]) <= eps * float(x.abs().sum()) / op.n_pad
    # S1_psi_fr: the bound through the first-order frequential operator (W, A) of the module
    U1_mean = torch.stack([torch.fft.ifft(torch.fft.fft(torch.nn.functional.pad(x, (op.pad_left, op.pad_left)))
                                          * torch.as_tensor(p["levels"][0])).abs().mean() for p in op.psi1])
    W, A = op._fr_numpy[(len(op.psi1), (0, 1))]
    bound = (U1_mean.numpy() @ np.abs(W)) @ np.abs(A)
    psi_fr = op.family_mask("S1_psi_fr")
    first = (op.family_mask("S1_phi_fr") | psi_fr)[1:1 + A.shape[1]]
    assert first.all()  # the first-order frequential paths come right after S0, in A's column order
    psi_cols = psi_fr[1:1 + A.shape[1]].numpy()
    assert np.all(dev[psi_fr].numpy() <= eps * bound[psi_cols] + 1e-12 * float(G.abs().max()))
    # and the deviation is not zero: the frames are a Gaussian low-pass, not a plain mean
    assert float(dev[nonneg].max()) > 0


@pytest.mark.parametrize("T", [2048, 128, 64])
def test_frames_of_a_stationary_tone_average_to_the_global_value(ops, T):
    """Mean over the frames = global average, for every path whose modulus precedes the average.

    The frames sample the Gaussian-smoothed envelope; phi_T's spectrum at the nonzero multiples of
    the frame rate is below exp(-50), so the sampled weights sum to the plain mean to rounding
    (1e-9 allowed).  For T < 2**J the paths with j > log2 T are decimated less than in the global
    operator, which changes them by the aliasing of decimated moduli (1e-3 allowed, as in
    tests/test_jtfs.py).  S1_psi_fr takes its modulus after the average: the mean of moduli is at
    least the modulus of the mean.
    """
    op, glob = ops[T], ops["global"]
    x = steady_am_tone(BASE["N"])
    S, G = op(x), glob(x)
    mean = S.mean(-1)
    tol = 1e-9 if T >= 2 ** BASE["J"] else 1e-3
    scale = float(G.abs().max())
    for family in LINEAR_AFTER_MODULUS:
        m = op.family_mask(family)
        torch.testing.assert_close(mean[m], G[m], rtol=tol, atol=tol * scale)
    m = op.family_mask("S1_psi_fr")
    assert torch.all(mean[m] >= G[m] * (1 - 1e-9) - 1e-12 * scale)


def test_frames_of_a_stationary_tone_are_constant_inside_the_signal():
    """A tone with period 32 = stride: frames whose filters stay inside the signal are all equal.

    The infinite tone is invariant under a shift by the stride, and the operator is exactly
    covariant under it, so its frames are identical.  Our tone stops at the signal's ends; a frame
    at distance d from an end differs by the Gaussian tails of the cascade phi_T, psi1, psi2 (each
    of unit l1 norm, time widths sigma = 1 / (2 pi sigma_f)), whose combined width is
    sigma_tot = sqrt(sum sigma**2): by about exp(-d**2 / (2 sigma_tot**2)) relative, at most
    exp(-18) = 1.5e-8 for d >= 6 sigma_tot.  S0 of this tone (no energy near 0 Hz) is zero.
    """
    T = 32
    op = JTFS(JTFSConfig(**SHORT, T=T))
    S = op(steady_am_tone(SHORT["N"]))
    # the widest filter of each stage: sigma_f is the frequency width in cycles per sample
    sigma_f = (0.1 / T, min(p["sigma"] for p in op.psi1), min(p["sigma"] for p in op.psi2))
    sigma_tot = math.sqrt(sum((1 / (2 * math.pi * s)) ** 2 for s in sigma_f))
    d = 6 * sigma_tot
    inner = np.flatnonzero((op.frame_times >= d) & (op.frame_times <= SHORT["N"] - d))
    assert len(inner) >= 10
    Si = S[:, inner]
    scale = float(Si.abs().max())
    assert float(Si[0].abs().max()) <= 1e-12 * scale
    for family in FAMILIES[1:]:
        F = Si[op.family_mask(family)]
        assert float((F - F[:, :1]).abs().max()) <= math.exp(-18) * float(F.abs().max()), family
    # outside, the frames do change: the test is not vacuous
    assert float((S[1:] - S[1:, inner[:1]]).abs().max()) > 0.1 * scale


def test_two_events_show_in_their_frames():
    """Two tone bursts (centred at samples 464 and 1464): the two largest local maxima of the
    frames' energy (all paths but S0) are the frames nearest the bursts' centres, and
    the frame halfway between holds less than 1e-4 of the peak (it is 8 Gaussian widths of phi_T,
    sigma = 1.6 T, plus the wavelets' widths away from each burst)."""
    T = 64
    op = JTFS(JTFSConfig(**SHORT, T=T))
    centres = (464.0, 1464.0)
    x = windowed(SHORT["N"], 400, 128, 0.1) + windowed(SHORT["N"], 1400, 128, 0.1)
    E = (op(x)[1:] ** 2).sum(0).numpy()
    peaks = [f for f in range(1, op.frames - 1) if E[f] >= E[f - 1] and E[f] >= E[f + 1]]
    top = sorted(sorted(peaks, key=lambda f: -E[f])[:2])
    assert len(top) == 2
    for f, c in zip(top, centres):
        assert abs(op.frame_times[f] - c) <= op.stride / 2, (op.frame_times[f], c)
    middle = int(np.argmin(np.abs(op.frame_times - sum(centres) / 2)))
    assert E[middle] < 1e-4 * E.max()


def test_shift_by_one_stride_shifts_the_frames(ops):
    """Shifting a zero-padded input by k strides rolls the frames by k: every subsampling of the
    local operator divides the stride, so this holds on the padded circle up to rounding."""
    op = ops[64]
    x = windowed(BASE["N"], 700, 600, 0.05)
    S = op(x)
    for k in (1, -2):
        torch.testing.assert_close(op(torch.roll(x, k * op.stride)), torch.roll(S, k, -1),
                                   rtol=1e-10, atol=1e-12 * float(S.abs().max()))


GRAD = dict(N=128, J=3, Q=(4, 1), J_fr=2, Q_fr=1, F=2, T=4)  # T < 2**J: capped subsampling


def test_gradcheck_float64_local():
    op = JTFS(JTFSConfig(**GRAD))
    x = torch.randn(GRAD["N"], dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    assert torch.autograd.gradcheck(op, (x,), fast_mode=True)


def test_forward_mode_and_vmap_local():
    """jacfwd equals jacrev (three input directions, the frames around the signal's centre), and
    vmap over signals equals the batched call."""
    op = JTFS(JTFSConfig(**GRAD))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(GRAD["N"], dtype=torch.float64, generator=g)
    V = torch.randn(GRAD["N"], 3, dtype=torch.float64, generator=g)
    centre = int(np.argmin(np.abs(op.frame_times - GRAD["N"] / 2)))

    def f(a):
        return op(x + V @ a)[:, centre - 1:centre + 1]

    a = torch.zeros(3, dtype=torch.float64)
    J_fwd, J_rev = jacfwd(f)(a), jacrev(f)(a)
    assert J_fwd.shape == (op.size, 2, 3)
    torch.testing.assert_close(J_fwd, J_rev, rtol=1e-10, atol=1e-12 * float(J_rev.abs().max()))
    xs = torch.randn(3, GRAD["N"], dtype=torch.float64, generator=g)
    torch.testing.assert_close(vmap(op)(xs), op(xs), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("T", [3, 96, 4096, 0, -4, float("nan"), 64.0, "local", True, None])
def test_bad_T_raises(T):
    with pytest.raises(ValueError, match=re.escape(repr(T))) as err:
        JTFSConfig(**BASE, T=T)
    assert "power of two with 1 <= T <= N = 2048" in str(err.value)
