"""Correctness of pnpbook.jtfs against known signals and stated bounds (spec section 6, issue 3 part 2)."""
import math

import numpy as np
import pytest
import torch

from pnpbook.jtfs import FAMILIES, JTFS, JTFSConfig, phi
from pnpbook.synth import amchirp

SMALL = JTFSConfig(N=2048, J=7, Q=(8, 1), J_fr=2, Q_fr=1, F=2)
TINY = JTFSConfig(N=8192, J=10, Q=(8, 1), J_fr=3, Q_fr=1, F=2)


@pytest.fixture(scope="module")
def small():
    return JTFS(SMALL)


@pytest.fixture(scope="module")
def tiny():
    return JTFS(TINY)


def windowed(n, start, length, f, fm=0.0, depth=0.0, dtype=torch.float64):
    """A Hann-windowed tone of ``length`` samples at normalised frequency f, optionally AM (1 + depth sin)."""
    x = torch.zeros(n, dtype=dtype)
    t = torch.arange(length, dtype=dtype)
    tone = torch.sin(2 * math.pi * f * t) * (1 + depth * torch.sin(2 * math.pi * fm * t))
    return x.index_copy(0, torch.arange(start, start + length), tone * torch.hann_window(length, dtype=dtype))


def geometric_band(psis):
    """Indices and band [xi_last, xi_0] of the constant-Q part of a filter bank (ratio 2**(1/Q))."""
    xi = np.array([p["xi"] for p in psis])
    ratio = xi[:-1] / xi[1:]
    geometric = np.isclose(ratio, ratio[0])
    last = len(xi) - 1 if geometric.all() else int(np.argmin(geometric))
    return xi[last], xi[0]


@pytest.mark.parametrize("config", [SMALL, TINY, JTFSConfig(N=2**16, J=13, Q=(12, 1))], ids=["small", "tiny", "paper"])
def test_littlewood_paley_sum_of_first_order_filters(config):
    """Filters are normalised to a peak of 1 in frequency and adjacent ones cross at r = 1/sqrt(2).

    For equal-width Gaussian bumps crossing at r, the sum of squared magnitudes is at least
    2 r**2 = 1 (at a crossing) and at most 1 + 2 r**8 (at a centre, where each neighbour is
    at r**4).  Over the constant-Q band, constant-Q filters deviate from equal widths by
    2**(1/Q) - 1 relative, which moves the bounds by a little: 1% below, 1% above.
    """
    op = JTFS(config)
    n = op.n_pad
    h = np.stack([p["levels"][0] for p in op.psi1])
    peaks = np.abs(h).max(1)  # sampled on the FFT grid: the narrowest filters peak between bins
    assert np.all(peaks <= 1 + 1e-12) and np.all(peaks > 0.95)
    lp = (np.abs(h) ** 2).sum(0)
    lo, hi = geometric_band(op.psi1)
    k = np.arange(n) / n
    band = (k >= lo) & (k <= hi)
    r = math.sqrt(0.5)
    assert lp[band].min() >= 2 * r**2 - 0.01
    assert lp[band].max() <= 1 + 2 * r**8 + 0.01


def test_shift_invariance(small):
    """Global averaging: a shift by a multiple of 2**J is exact; any other shift within the margin is
    exact up to the aliasing of the decimated moduli (measured 1e-5; 1e-3 allowed)."""
    x = windowed(SMALL.N, 700, 600, 0.05, fm=0.004, depth=0.5)
    S = small(x)
    for s in (2**SMALL.J, -2 * 2**SMALL.J):
        torch.testing.assert_close(small(torch.roll(x, s)), S, rtol=1e-10, atol=1e-14)
    for s in (1, 17, -45):
        assert float((small(torch.roll(x, s)) - S).norm() / S.norm()) < 1e-3


def test_up_and_down_chirps_use_opposite_spins(tiny):
    """An exponential up-chirp puts its joint energy on spin 'up', its time reversal on spin 'down'."""
    sr, n = 4096.0, TINY.N
    theta = torch.tensor([[math.log10(600.0), math.log10(3.0), math.log10(1.5)]], dtype=torch.float64)
    up = amchirp(theta, sr, n)[0]
    up_m, down_m = tiny.family_mask("psi_psi_up"), tiny.family_mask("psi_psi_down")

    def asymmetry(x):
        E = tiny(x) ** 2
        e_up, e_down = E[up_m].sum(), E[down_m].sum()
        return float((e_up - e_down) / (e_up + e_down))

    a_up, a_down = asymmetry(up), asymmetry(up.flip(-1))
    assert a_up > 0.3 and a_down < -0.3, (a_up, a_down)


def second_order_energy_by_n2(op, x):
    E = op(x) ** 2
    out = torch.zeros(len(op.psi2), dtype=E.dtype)
    for i, p in enumerate(op.paths):
        if p.n2 >= 0:
            out[p.n2] += E[i]
    return out


def test_amplitude_modulation_shows_at_its_rate(tiny):
    """A tone modulated as (1 + m sin 2 pi f_m t) puts its second-order energy on the psi2 at f_m;
    amchirp's suppressed-carrier AM sin(2 pi f_m t) has an envelope |sin| at 2 f_m.

    The modulation must fall inside one first-order filter's band (here 22 Hz around a 410 Hz
    tone with 8 filters per octave), and the Gaussian window of amchirp has its own slow
    envelope (below 1 Hz for gamma = 1), so amchirp is read on the psi2 above 4 Hz.
    """
    sr = 4096.0
    xi2 = [p["xi"] for p in tiny.psi2]
    target = 6  # psi2 centred at 22.4 Hz
    fm = xi2[target]  # cycles per sample
    energy = second_order_energy_by_n2(tiny, windowed(TINY.N, 500, 7000, 0.1, fm=fm, depth=0.8))
    assert int(energy.argmax()) == target
    theta = torch.tensor([[math.log10(700.0), math.log10(fm / 2 * sr), math.log10(1.0)]], dtype=torch.float64)
    energy = second_order_energy_by_n2(tiny, amchirp(theta, sr, TINY.N)[0])
    above_window = [n2 for n2, xi in enumerate(xi2) if xi * sr > 4.0]
    assert max(above_window, key=lambda n2: float(energy[n2])) == target


def test_batch_equals_stack_of_single_calls(small):
    xs = torch.stack([windowed(SMALL.N, 300 + 50 * i, 900, 0.02 + 0.03 * i, fm=0.01, depth=0.5) for i in range(3)])
    batch = small(xs)
    torch.testing.assert_close(batch, torch.stack([small(x) for x in xs]), rtol=1e-12, atol=1e-15)
    assert batch.shape == (3, small.size)
    torch.testing.assert_close(small(xs.float()), batch.float(), rtol=2e-4, atol=1e-7)


def test_path_table_matches_output():
    op = JTFS(SMALL)
    counts = {f: int(op.family_mask(f).sum()) for f in FAMILIES}
    assert sum(counts.values()) == op.size == op(torch.randn(SMALL.N, dtype=torch.float64)).shape[0]
    assert counts["S0"] == 1 and counts["psi_psi_up"] == counts["psi_psi_down"] > 0
    assert all(p.n2 == -1 for p in op.paths if p.family.startswith("S"))
    assert all(p.spin == {"psi_psi_up": 1, "psi_psi_down": -1}.get(p.family, p.spin) for p in op.paths)


def test_gradcheck_float64():
    """Gradients of S by finite differences (the log1p of Phi is elementwise and exact; with c = 1e3
    its curvature makes finite differences of Phi itself too coarse at eps = 1e-6)."""
    op = JTFS(JTFSConfig(N=256, J=4, Q=(4, 1), J_fr=2, Q_fr=1, F=2))
    x = torch.randn(256, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    assert torch.autograd.gradcheck(op, (x,), fast_mode=True)


def test_bad_input_raises(small):
    with pytest.raises(ValueError, match="shape"):
        small(torch.zeros(3, SMALL.N + 1))
    with pytest.raises(ValueError, match="float32 or float64"):
        small(torch.zeros(SMALL.N, dtype=torch.int64))
    with pytest.raises(ValueError, match="N = 100"):
        JTFSConfig(N=100, J=7)
    with pytest.raises(ValueError, match="power of two"):
        JTFSConfig(N=2048, J=7, F=3)
    with pytest.raises(ValueError, match="c must be positive"):
        phi(torch.ones(3), 0.0)


def test_joint_paths_equal_a_direct_undecimated_computation():
    """Every joint coefficient of one psi2, against the definition computed directly at the full rate:
    U1 = |x * psi1| (no subsampling), Y2 = U1 * psi2, Z = Y2 convolved along n1 (zero-padded to the
    frequential length) with each frequential filter, |Z| averaged over time, rows taken at the
    frequential stride.  No decimation, no precomputed matrices: only the filters are shared.  The
    decimated pipeline differs by the aliasing of decimated moduli (1e-5 measured; 1e-3 allowed)."""
    op = JTFS(JTFSConfig(N=2048, J=7, Q=(8, 1), J_fr=2, Q_fr=1, F=None))
    sr = 4096.0
    theta = torch.tensor([[math.log10(600.0), math.log10(8.0), math.log10(3.0)]], dtype=torch.float64)
    x = amchirp(theta, sr, 2048)[0]
    S = op(x)
    pad = op.pad_left
    X = torch.fft.fft(torch.nn.functional.pad(x, (pad, op.n_pad - 2048 - pad)))
    psi1 = torch.as_tensor(np.stack([p["levels"][0] for p in op.psi1]))
    U1 = torch.fft.ifft(X * psi1).abs()  # (n1, n_pad), full rate
    for n2 in (len(op.psi2) - 3, len(op.psi2) - 1):
        rows = [n1 for n1, j1 in enumerate(op.j1) if j1 < op.j2[n2]]
        Y2 = torch.fft.ifft(torch.fft.fft(U1[rows]) * torch.as_tensor(op.psi2[n2]["levels"][0]))  # (n1_max, n_pad)
        Y2_hat = torch.fft.fft(torch.nn.functional.pad(Y2.T, (0, op.n_fr - len(rows))), dim=-1)  # (n_pad, n_fr)
        for n_fr, h in enumerate(op.fr_filters):
            direct = torch.fft.ifft(Y2_hat * torch.as_tensor(h), dim=-1).abs().mean(0)  # (n_fr,)
            stride = 2 ** op.fr_j[n_fr]
            expected = direct[: len(rows)][::stride]
            mine = S[[i for i, p in enumerate(op.paths) if p.n2 == n2 and p.n_fr == n_fr]]
            torch.testing.assert_close(mine, expected, rtol=1e-3, atol=1e-6 * float(expected.max()))
