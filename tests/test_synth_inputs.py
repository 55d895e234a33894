"""The synthesizers' contract on inputs: batching, precision, validation, presets.

The reference ranges, sample rates and lengths are written down here from the
spec (sections 2, 3.1 and 3.4) and :data:`pnpbook.config.PRESETS`, not read
from the :class:`~pnpbook.synth.Synth` records under test.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from torch.func import jacfwd, jacrev, vmap

from pnpbook import config
from pnpbook.synth import SYNTHS, amchirp, ftm

#: The paper's settings (spec 2 and 3): sample rate, length, physical ranges
#: (low, high, unit) and whether theta holds log10 of the value.
PAPER = {
    "amchirp": {
        "sr": 8192.0, "n_samples": 2**15, "kernel": amchirp,
        "ranges": {"f0": (512.0, 1024.0, "Hz", True), "fm": (4.0, 16.0, "Hz", True),
                   "gamma": (0.5, 4.0, "oct/s", True)},
    },
    "ftm": {
        "sr": 22050.0, "n_samples": 2**16, "kernel": ftm,
        "ranges": {"omega": (2 * math.pi * 40, 2 * math.pi * 1000, "rad/s", True),
                   "tau": (0.07, 0.8, "s", False), "p": (1e-5, 0.2, "", True),
                   "D": (1e-5, 0.3, "", True), "alpha": (0.01, 1.0, "", False)},
    },
}
SCALES = ("tiny", "small", "paper")
NAMES = ("amchirp", "ftm")


def expected(name: str, scale: str) -> dict:
    """sr, n_samples and physical ranges {param: (low, high, unit, log)} at a preset."""
    row = config.PRESETS[name][scale]
    ranges = {p: (row["ranges"][p][0], row["ranges"][p][1], unit, log) if p in row["ranges"]
              else (lo, hi, unit, log) for p, (lo, hi, unit, log) in PAPER[name]["ranges"].items()}
    return {"sr": row.get("sr", PAPER[name]["sr"]),
            "n_samples": row.get("n_samples", PAPER[name]["n_samples"]), "ranges": ranges}


def theta_bounds(name: str, scale: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) in theta units from :func:`expected`, each (d,) float64."""
    lo, hi = zip(*((math.log10(a), math.log10(b)) if log else (a, b)
                   for a, b, _, log in expected(name, scale)["ranges"].values()))
    return torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64)


def random_theta(name: str, scale: str, batch: int, seed: int) -> torch.Tensor:
    """Uniform points in the preset's theta box, shape (batch, d) float64."""
    lo, hi = theta_bounds(name, scale)
    gen = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(batch, len(lo), generator=gen, dtype=torch.float64)


def centre(name: str, scale: str) -> torch.Tensor:
    lo, hi = theta_bounds(name, scale)
    return (lo + hi) / 2


N_SHORT = 256  # renders whose content does not matter here


# --------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", SCALES)
def test_at_scale_matches_presets(name, scale):
    synth = SYNTHS[name].at(scale)
    want = expected(name, scale)
    assert synth.scale == scale
    assert synth.sr == want["sr"] and synth.n_samples == want["n_samples"]
    assert synth.names == tuple(want["ranges"])
    for param in synth.params:
        low, high, unit, log = want["ranges"][param.name]
        assert (param.low, param.high, param.unit, param.log) == (low, high, unit, log)
    lo, hi = synth.theta_bounds()
    want_lo, want_hi = theta_bounds(name, scale)
    torch.testing.assert_close(lo, want_lo, rtol=1e-15, atol=0)
    torch.testing.assert_close(hi, want_hi, rtol=1e-15, atol=0)


def test_registry_record_is_the_paper_preset():
    for name in NAMES:
        base, paper = SYNTHS[name], SYNTHS[name].at("paper")
        assert (base.sr, base.n_samples, base.params) == (paper.sr, paper.n_samples, paper.params)


@pytest.mark.parametrize("name", NAMES)
def test_at_reads_the_environment(name, monkeypatch):
    monkeypatch.delenv(config.SCALE_ENV, raising=False)
    assert SYNTHS[name].at().scale == "tiny"
    monkeypatch.setenv(config.SCALE_ENV, "small")
    assert SYNTHS[name].at().scale == "small"
    assert SYNTHS[name].at().sr == expected(name, "small")["sr"]
    monkeypatch.setenv(config.SCALE_ENV, "huge")
    with pytest.raises(ValueError, match="huge"):
        SYNTHS[name].at()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", ["huge", "Paper", ""])
def test_unknown_scale_raises(name, scale):
    with pytest.raises(ValueError, match=re.escape(repr(scale))):
        SYNTHS[name].at(scale)


# --------------------------------------------------------------------------
# Batching and precision
# --------------------------------------------------------------------------

def assert_same_render(x: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to the final rounding to the output dtype (a few ulp of the peak)."""
    assert x.dtype == ref.dtype and x.shape == ref.shape
    atol = 4 * torch.finfo(x.dtype).eps * ref.abs().max().item()
    torch.testing.assert_close(x, ref, rtol=0, atol=atol)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_equals_stack_of_singles(name, dtype):
    synth = SYNTHS[name].at("tiny")
    theta = random_theta(name, "tiny", 4, seed=5).to(dtype)
    batch = synth(theta)
    assert batch.shape == (4, synth.n_samples)
    singles = [synth(row) for row in theta]
    assert all(x.shape == (synth.n_samples,) for x in singles)
    assert_same_render(batch, torch.stack(singles))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vmap_equals_batched_call(name, dtype):
    synth = SYNTHS[name].at("tiny")
    theta = random_theta(name, "tiny", 4, seed=6).to(dtype)
    assert_same_render(vmap(synth)(theta), synth(theta))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", SCALES)
def test_float32_matches_float64(name, scale):
    synth = SYNTHS[name].at(scale)
    theta32 = random_theta(name, scale, 3, seed=7).float()
    x32, x64 = synth(theta32), synth(theta32.double())
    assert x32.dtype == torch.float32 and x64.dtype == torch.float64
    rel = (x32.double() - x64).norm(dim=-1) / x64.norm(dim=-1)
    assert (rel < 1e-5).all()


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

PARAMS = [(name, k, p) for name in NAMES for k, p in enumerate(PAPER[name]["ranges"])]
PARAM_IDS = [f"{name}-{p}" for name, _, p in PARAMS]


def range_pattern(name: str, scale: str, param: str, value: float, kind: str) -> str:
    """Regex for the error message: parameter, kind, value, physical range and unit."""
    low, high, unit, _ = expected(name, scale)["ranges"][param]
    return (re.escape(repr(param)) + ".*" + kind + ".*" + re.escape(repr(value))
            + ".*" + re.escape(f"[{low:g}, {high:g}] {unit or 'dimensionless'}"))


@pytest.mark.parametrize("scale", ["paper", "tiny"])
@pytest.mark.parametrize("side", ["low", "high"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,k,param", PARAMS, ids=PARAM_IDS)
def test_out_of_range_raises(name, k, param, side, scale, dtype):
    synth = SYNTHS[name].at(scale)
    lo, hi = theta_bounds(name, scale)
    theta = centre(name, scale).repeat(2, 1)
    margin = 1e-3 * max(1.0, abs(lo[k].item()), abs(hi[k].item()))
    theta[1, k] = lo[k] - margin if side == "low" else hi[k] + margin
    theta = theta.to(dtype)
    value = float(theta[1, k])
    with pytest.raises(ValueError, match=range_pattern(name, scale, param, value, "out of range")):
        synth(theta)
    with pytest.raises(ValueError, match=re.escape(repr(param))):
        synth(theta[1])  # unbatched
    synth(theta[0], n_samples=N_SHORT)  # the centre itself is fine


def test_tiny_ranges_are_enforced():
    """gamma = 0.7 and tau = 0.5 are paper values outside the tiny ranges."""
    gamma = torch.tensor([math.log10(700.0), math.log10(8.0), math.log10(0.7)], dtype=torch.float64)
    SYNTHS["amchirp"].at("paper")(gamma, n_samples=N_SHORT)
    with pytest.raises(ValueError, match=range_pattern("amchirp", "tiny", "gamma", float(gamma[2]),
                                                       "out of range")):
        SYNTHS["amchirp"].at("tiny")(gamma)
    tau = centre("ftm", "paper")
    tau[1] = 0.5
    SYNTHS["ftm"].at("paper")(tau, n_samples=N_SHORT)
    with pytest.raises(ValueError, match=range_pattern("ftm", "tiny", "tau", 0.5, "out of range")):
        SYNTHS["ftm"].at("tiny")(tau)


@pytest.mark.parametrize("name,k,param", PARAMS, ids=PARAM_IDS)
def test_nan_raises(name, k, param):
    synth = SYNTHS[name].at("tiny")
    theta = centre(name, "tiny").repeat(3, 1)
    theta[2, k] = float("nan")
    for t in (theta, theta.float(), theta[2]):
        with pytest.raises(ValueError, match=range_pattern(name, "tiny", param, math.nan, "NaN")):
            synth(t)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", ["3-D", "d+1", "d-1", "batch d-1", "scalar", "empty"])
def test_wrong_shape_raises(name, shape):
    synth = SYNTHS[name].at("tiny")
    d = synth.d
    theta = {"3-D": centre(name, "tiny").repeat(2, 1, 1), "d+1": torch.zeros(d + 1, dtype=torch.float64),
             "d-1": centre(name, "tiny")[:-1], "batch d-1": centre(name, "tiny").repeat(2, 1)[:, :-1],
             "scalar": torch.tensor(1.0, dtype=torch.float64), "empty": torch.zeros(0, dtype=torch.float64)}[shape]
    for validate in ("raise", "clip", "off"):
        with pytest.raises(ValueError, match=re.escape(f"shape (B, {d}) or ({d},)")):
            synth(theta, validate=validate)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float16, torch.bfloat16,
                                   torch.complex64, torch.complex128, torch.bool])
def test_wrong_dtype_raises(name, dtype):
    synth = SYNTHS[name].at("tiny")
    theta = centre(name, "tiny").round().to(dtype)
    for validate in ("raise", "clip", "off"):
        with pytest.raises(ValueError, match=re.escape("float32 or float64") + ".*" + re.escape(str(dtype))):
            synth(theta, validate=validate)
        with pytest.raises(ValueError, match="float32 or float64"):
            synth.kernel(theta, synth.sr, N_SHORT)


@pytest.mark.parametrize("name", NAMES)
def test_non_tensor_raises_type_error(name):
    synth = SYNTHS[name].at("tiny")
    good = centre(name, "tiny")
    for theta in (good.tolist(), good.numpy(), tuple(good.tolist()), 3.0, None):
        with pytest.raises(TypeError, match="torch.Tensor"):
            synth(theta)
        with pytest.raises(TypeError, match="torch.Tensor"):
            synth.kernel(theta, synth.sr, N_SHORT)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_mode(name, dtype):
    synth = SYNTHS[name].at("tiny")
    lo, hi = theta_bounds(name, "tiny")
    width = hi - lo
    theta = random_theta(name, "tiny", 4, seed=8)
    theta[0, 0] = lo[0] - 0.3 * width[0]
    theta[1, -1] = hi[-1] + 0.1 * width[-1]
    theta[1, 1] = lo[1] - 2.0 * width[1]
    theta[3, :] = hi + 1.0
    theta = theta.to(dtype)
    n_outside = 3 + synth.d
    x, n_clipped = synth(theta, validate="clip")
    assert isinstance(n_clipped, torch.Tensor) and n_clipped.shape == () and n_clipped.dtype == torch.int64
    assert n_clipped.item() == n_outside
    clamped = torch.clamp(theta, lo.to(dtype), hi.to(dtype))
    assert_same_render(x, synth(clamped, validate="raise"))
    assert (x - synth(theta, validate="off")).abs().max() > 1e-3  # clamping changed the render

    inside = random_theta(name, "tiny", 2, seed=9).to(dtype)
    x, n_clipped = synth(inside, validate="clip", n_samples=N_SHORT)
    assert n_clipped.item() == 0
    assert torch.equal(x, synth(inside, n_samples=N_SHORT))


@pytest.mark.parametrize("name", NAMES)
def test_off_mode_renders_without_checking(name):
    synth = SYNTHS[name].at("tiny")
    lo, hi = theta_bounds(name, "tiny")
    theta = torch.stack([lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)])
    with pytest.raises(ValueError):
        synth(theta)
    x = synth(theta, validate="off", n_samples=N_SHORT)
    assert torch.equal(x, PAPER[name]["kernel"](theta, expected(name, "tiny")["sr"], N_SHORT))
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["strict", "RAISE", "", None, True])
def test_unknown_validate_mode_raises(name, mode):
    synth = SYNTHS[name].at("tiny")
    with pytest.raises(ValueError, match="validate"):
        synth(centre(name, "tiny"), validate=mode)


@pytest.mark.parametrize("name", NAMES)
def test_validation_under_func_transforms(name):
    synth = SYNTHS[name].at("tiny")
    lo, hi = theta_bounds(name, "tiny")
    good = centre(name, "tiny")
    for k, param in enumerate(PAPER[name]["ranges"]):
        bad = good.clone()
        bad[k] = hi[k] + 0.1 * (hi[k] - lo[k])
        pattern = range_pattern(name, "tiny", param, float(bad[k]), "out of range")
        for transform in (jacfwd, jacrev):
            with pytest.raises(ValueError, match=pattern):
                transform(lambda th: synth(th, n_samples=N_SHORT))(bad)
        with pytest.raises(ValueError, match=pattern):
            vmap(lambda th: synth(th, n_samples=N_SHORT))(torch.stack([good, bad]))

    def render(validate):
        return lambda th: synth(th, validate=validate, n_samples=N_SHORT)

    assert torch.equal(jacfwd(render("raise"))(good), jacfwd(render("off"))(good))
    assert torch.equal(jacrev(render("raise"))(good), jacrev(render("off"))(good))


@pytest.mark.parametrize("name", NAMES)
def test_validation_under_vmap_with_batch_axis_not_first(name):
    """vmap over a batch axis other than the first checks each parameter against its own range."""
    synth = SYNTHS[name].at("tiny")
    lo, hi = theta_bounds(name, "tiny")
    theta = random_theta(name, "tiny", 4, seed=10)

    def render(th):
        return synth(th, n_samples=N_SHORT)

    columns = theta.T.contiguous()  # (d, B): vmap over the last axis
    assert_same_render(vmap(render, in_dims=1)(columns), render(theta))
    assert_same_render(vmap(render, in_dims=-1)(columns), render(theta))
    nested = theta.reshape(2, 2, -1).permute(2, 0, 1).contiguous()  # (d, 2, 2)
    assert_same_render(vmap(vmap(render, in_dims=1), in_dims=2)(nested).transpose(0, 1),
                       render(theta).reshape(2, 2, -1))
    for k, param in enumerate(PAPER[name]["ranges"]):
        bad = theta.clone()
        bad[2, k] = hi[k] + 0.1 * (hi[k] - lo[k])
        pattern = range_pattern(name, "tiny", param, float(bad[2, k]), "out of range")
        with pytest.raises(ValueError, match=pattern):
            vmap(render, in_dims=1)(bad.T.contiguous())
        with pytest.raises(ValueError, match=pattern):
            vmap(vmap(render, in_dims=1), in_dims=2)(bad.reshape(2, 2, -1).permute(2, 0, 1).contiguous())


def bound_values(name: str, dtype: torch.dtype) -> list[tuple[int, float]]:
    """(column, value): each tiny-preset bound rounded to ``dtype`` and 2 ulp outside it."""
    lo, hi = theta_bounds(name, "tiny")
    out = []
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    for k in range(len(lo)):
        for bound, outward in ((lo[k].item(), -np.inf), (hi[k].item(), np.inf)):
            v = np_dtype(bound)
            out.append((k, float(v)))
            out.append((k, float(np.nextafter(np.nextafter(v, np_dtype(outward)), np_dtype(outward)))))
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bounds_within_a_few_ulp_are_accepted(name, dtype):
    synth = SYNTHS[name].at("tiny")
    base = centre(name, "tiny").to(dtype)
    for k, value in bound_values(name, dtype):
        theta = base.clone()
        theta[k] = value
        assert torch.isfinite(synth(theta, n_samples=N_SHORT)).all()


def test_float32_log10_of_bound_is_accepted():
    f0 = torch.tensor(math.log10(1024.0), dtype=torch.float32)
    theta = torch.stack([f0, torch.tensor(math.log10(4.0)), torch.tensor(math.log10(0.5))])
    assert theta.dtype == torch.float32
    SYNTHS["amchirp"].at("paper")(theta, n_samples=N_SHORT)


@pytest.mark.parametrize("bad", [0, -4, 2.5, True])
def test_bad_n_samples_raises(bad):
    s = SYNTHS["amchirp"].at("tiny")
    lo, hi = s.theta_bounds()
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        s((lo + hi) / 2, n_samples=bad)
