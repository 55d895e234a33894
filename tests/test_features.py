"""The CQT front end and the cached features and JTFS targets of a fold (issue 4 part 1).

Physics ground truth: a pure tone's CQT peaks at the bin nearest its frequency.  The fmin rule at the
paper's settings gives the spec's values (spec 9).  Cached arrays equal arrays computed on the fly
without the cache, and a damaged or foreign cache file gives a clear error."""
import math
import warnings

import numpy as np
import pytest
import torch

from pnpbook import cache, config, data, features, jtfs
from pnpbook.synth import SYNTHS

SYNTH_NAMES = ("amchirp", "ftm")


def render(name, fold_name, n):
    """The fold's first n sounds, rendered here without pnpbook.features: float64 physics, float32 out."""
    s = SYNTHS[name].at("tiny")
    theta = torch.from_numpy(data.fold(s, fold_name, n=n).theta.copy())
    return s(theta).float()


def test_fmin_rule_at_the_papers_settings():
    assert features.cqt_fmin(22050, 10) == pytest.approx(8.613, abs=5e-4)  # FTM: 2**10 * 32.7 >= 11025
    assert features.cqt_fmin(22050, 10) == pytest.approx(0.4 * 22050 / 1024, rel=1e-15)
    assert features.cqt_fmin(8192, 6) == 32.7  # AM: 2**6 * 32.7 = 2092.8 < 4096
    assert features.cqt_fmin(4096, 6) == pytest.approx(25.6)  # tiny AM: 2092.8 >= 2048
    with pytest.raises(ValueError, match="sr > 0"):
        features.cqt_fmin(0, 6)


@pytest.mark.parametrize("scale", config.SCALES)
@pytest.mark.parametrize("name", SYNTH_NAMES)
def test_every_preset_builds_without_warnings(name, scale):
    """Kernel fits the signal (reflection padding), top bin below Nyquist, no warning, spec 9 shapes."""
    s = SYNTHS[name].at(scale)
    cqt = config.preset(name, scale)["cqt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fe = features.CQTFrontEnd(s.sr, s.n_samples, cqt["octaves"], cqt["bins_per_octave"], cqt["hop_length"])
    assert fe.n_bins == 12 * cqt["octaves"] and fe.frames == s.n_samples // cqt["hop_length"] + 1
    assert fe.frequencies[-1] < s.sr / 2 and fe.kernel_width // 2 < s.n_samples
    np.testing.assert_allclose(fe.frequencies, fe.fmin * 2 ** (np.arange(fe.n_bins) / 12), rtol=1e-12)
    if name == "amchirp":  # the paper's 32 frames/s at every scale (8192 / 256); see test_am_envelope_...
        assert s.sr / fe.hop_length == 32
    if scale == "paper":  # spec 9: FTM 120 x 257 from 8.613 Hz, AM 72 x 129 from 32.7 Hz
        expected = {"ftm": (120, 257, 8.613), "amchirp": (72, 129, 32.7)}[name]
        assert (fe.n_bins, fe.frames) == expected[:2] and fe.fmin == pytest.approx(expected[2], abs=5e-4)


@pytest.mark.parametrize("sr", [4096, 8192, 11025, 16000, 22050, 44100, 48000])
def test_fmin_rule_keeps_the_top_bin_below_nyquist(sr):
    for octaves in range(1, 12):
        fmin = features.cqt_fmin(sr, octaves)
        top = fmin * 2 ** (octaves - 1 / 12)
        assert top < fmin * 2**octaves <= max(0.4 * sr, 32.7 * 2**octaves) and top < sr / 2
        assert fmin == 32.7 or fmin == pytest.approx(0.4 * sr / 2**octaves)


def test_kernel_longer_than_the_signal_is_refused():
    with pytest.raises(ValueError, match="too long for signals of 1024 samples"):
        features.CQTFrontEnd(8192, 1024, octaves=6)  # fmin 32.7 Hz: kernel of 8192 samples


@pytest.mark.parametrize("name", SYNTH_NAMES)
def test_pure_tone_peaks_at_the_nearest_bin(name):
    """Tones at bin k + offset, |offset| <= 0.4 bin, peak at bin k in the middle frames."""
    fe = features.front_end(name, "tiny")
    bins = sorted(set(range(0, fe.n_bins, 5)) | {fe.n_bins - 1})
    offsets = (-0.4, 0.0, 0.4)
    k = torch.tensor([b for b in bins for _ in offsets])
    f = fe.fmin * 2 ** ((k + torch.tensor(offsets * len(bins))) / 12)
    t = torch.arange(fe.n_samples, dtype=torch.float64) / fe.sr
    x = torch.sin(2 * math.pi * f[:, None] * t + 0.7)
    y = fe(x)
    assert y.shape == (len(k), fe.n_bins, fe.frames) and y.dtype == torch.float32
    middle = y[:, :, fe.frames // 4: 3 * fe.frames // 4]
    assert torch.equal(middle.argmax(dim=1), k[:, None].expand(-1, middle.shape[2]))


def test_front_end_output_and_bad_input():
    fe = features.front_end("ftm", "tiny")
    x = render("ftm", "val", 2)
    y = fe(x)
    assert y.shape == (2, 84, 65) and y.dtype == torch.float32 and bool((y >= 0).all())
    torch.testing.assert_close(fe(x.double()), y)  # float64 input is computed in float32
    assert features.front_end("ftm", "tiny") is fe  # built once per setting
    with pytest.raises(ValueError, match=r"shape \(B, 8192\).*got shape \(2, 8000\)"):
        fe(torch.zeros(2, 8000))
    with pytest.raises(ValueError, match=r"got shape \(8192,\)"):
        fe(torch.zeros(8192))
    with pytest.raises(TypeError, match="floating-point"):
        fe(torch.zeros(2, 8192, dtype=torch.int64))


def test_am_envelope_frequency_is_seen_below_the_frame_rate_nyquist():
    """The AM chirp's modulator is a plain sine, so the CQT magnitude beats at 2 fm.  At 32 frames/s the
    beat is seen at its true frequency while 2 fm < 16 Hz, and aliased above (fm = 9 Hz looks like 7 Hz):
    an inherited limit of the authors' hop, which 16 frames/s would make total."""
    s = SYNTHS["amchirp"].at("small")
    fe = features.front_end(s)
    fms = torch.tensor([5.0, 7.0, 9.0])
    theta = torch.stack([torch.full((3,), math.log10(700.0)), fms.log10(), torch.full((3,), math.log10(0.5))], 1)
    energy = torch.expm1(fe(s(theta.double()))).sum(1)  # (3, frames): CQT magnitude summed over bins
    middle = energy[:, fe.frames // 4: 3 * fe.frames // 4]
    middle = (middle - middle.mean(1, keepdim=True)) * torch.hann_window(middle.shape[1])
    spectrum = torch.fft.rfft(middle, n=8 * middle.shape[1]).abs()
    freqs = torch.fft.rfftfreq(8 * middle.shape[1], d=fe.hop_length / fe.sr)
    spectrum[:, freqs < 2] = 0  # the Gaussian window's slow envelope
    peak = freqs[spectrum.argmax(1)]
    fps = fe.sr / fe.hop_length
    torch.testing.assert_close(peak, torch.tensor([10.0, 14.0, fps - 18.0]), atol=0.5, rtol=0)


@pytest.mark.parametrize("name", SYNTH_NAMES)
def test_cached_features_equal_features_on_the_fly(name, tmp_path):
    n = 6
    expected = features.front_end(name, "tiny")(render(name, "train", n))
    first = features.features(name, "train", "tiny", n=n, root=tmp_path, batch=4)  # computes, writes
    (path,) = (tmp_path / "features").glob(f"{name}_tiny_train-*.npz")
    second = features.features(name, "train", "tiny", n=n, root=tmp_path)  # reads
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)  # batching may change float32 sums
    assert torch.equal(second, first) and second.dtype == torch.float32
    assert len(list(tmp_path.rglob("*.npz"))) == 1
    # the file really is what was read: damage it and the next read says so
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        features.features(name, "train", "tiny", n=n, root=tmp_path)
    assert str(path) in str(e.value) and "delete" in str(e.value)


def test_cached_targets_equal_phi_on_the_fly(tmp_path):
    s = SYNTHS["amchirp"].at("tiny")
    expected = jtfs.phi(jtfs.operator(s)(render("amchirp", "val", 3)), jtfs.preset_c(s))
    first = features.targets("amchirp", "val", "tiny", n=3, root=tmp_path, batch=2)
    second = features.targets("amchirp", "val", "tiny", n=3, root=tmp_path)
    assert first.shape == (3, jtfs.operator(s).size) and first.dtype == torch.float32
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)  # Phi is O(1); batching changes float32 sums
    assert torch.equal(second, first)
    (path,) = (tmp_path / "targets").glob("amchirp_tiny_val-*.npz")
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        features.targets("amchirp", "val", "tiny", n=3, root=tmp_path)
    assert str(path) in str(e.value)


def test_configs_hold_what_changes_the_numbers():
    base = features.features_config("ftm", "train", "tiny", n=4)
    assert base["cqt"]["fmin"] == 25.6 and base["cqt"]["hop_length"] == 128 and base["version"] >= 1
    assert base["sr"] == 8192 and base["n_samples"] == 8192 and base["n"] == 4
    others = [features.features_config("ftm", "train", "tiny", n=5),  # more items
              features.features_config("ftm", "val", "tiny", n=4),  # another fold
              features.features_config("amchirp", "train", "tiny", n=4),  # another synth
              features.features_config("ftm", "train", "small", n=4),  # another preset
              features.targets_config("ftm", "train", "tiny", n=4)]  # targets, not features
    hashes = {cache.config_hash(c) for c in [base, *others]}
    assert len(hashes) == 1 + len(others)
    t = features.targets_config("ftm", "train", "tiny", n=4)
    assert t["c"] == jtfs.preset_c(SYNTHS["ftm"].at("tiny")) and t["jtfs"]["J"] == 10 and t["jtfs"]["N"] == 8192


def test_a_different_config_never_reads_the_other_file(tmp_path):
    a = features.features("amchirp", "val", "tiny", n=2, root=tmp_path)
    b = features.features("amchirp", "val", "tiny", n=3, root=tmp_path)
    c = features.features("amchirp", "test", "tiny", n=2, root=tmp_path)
    assert len(list((tmp_path / "features").glob("*.npz"))) == 3
    torch.testing.assert_close(b[:2], a, rtol=1e-5, atol=1e-5)  # same items, separate file
    assert not torch.allclose(c, a)


def test_bad_fold_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="n = 5000 is outside"):  # the whole val fold has 2,744 items
        features.features("amchirp", "val", "tiny", n=5000, root=tmp_path)
    with pytest.raises(ValueError, match="fold 'trian'"):
        features.features("amchirp", "trian", "tiny", n=2, root=tmp_path)
