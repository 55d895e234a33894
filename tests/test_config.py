"""The scale switch and the preset table."""
import pytest

from pnpbook import config
from pnpbook.synth import SYNTHS


def test_scale_from_argument_environment_and_default(monkeypatch):
    monkeypatch.delenv(config.SCALE_ENV, raising=False)
    assert config.get_scale() == "tiny"
    monkeypatch.setenv(config.SCALE_ENV, "paper")
    assert config.get_scale() == "paper" and config.get_scale("small") == "small"
    monkeypatch.setenv(config.SCALE_ENV, "huge")
    with pytest.raises(ValueError, match="'huge' is not one of"):
        config.get_scale()


@pytest.mark.parametrize("name", ["amchirp", "ftm"])
def test_tiny_keeps_the_physics_inside_the_signal(name):
    """tiny: at most 2**13 samples; the sound fits in the signal (see config's docstring)."""
    s = SYNTHS[name].at("tiny")
    assert s.n_samples <= 2**13
    ranges = {p.name: (p.low, p.high) for p in s.params}
    if name == "amchirp":
        sigma_max = 0.2 / ranges["gamma"][0]
        assert 5 * sigma_max <= s.duration / 2  # +-5 sigma inside t in [-T/2, T/2)
        assert ranges["f0"][1] * 2 ** (0.2 * 4) < s.sr / 2  # carrier below Nyquist within +-4 sigma
    else:
        assert 4 * ranges["tau"][1] <= s.duration
        assert ranges["omega"][1] / (2 * 3.141592653589793) < s.sr / 2


def test_presets_table_is_read_only_and_complete():
    for name in SYNTHS:
        assert set(config.PRESETS[name]) == set(config.SCALES)
    with pytest.raises(TypeError):
        config.PRESETS["ftm"]["tiny"]["sr"] = 1
    with pytest.raises(ValueError, match="synth 'fm'"):
        config.preset("fm", "tiny")
