"""c of Phi = log1p(c S): the calibration rule, the recorded values and the CLI (issue 3 part 1)."""
import json
from pathlib import Path

import pytest
import torch

from pnpbook import cli, config, data
from pnpbook.jtfs import calibrate, operator, preset_c
from pnpbook.synth import SYNTHS

RESULTS = Path(__file__).resolve().parents[1] / "data" / "results"


@pytest.mark.parametrize("scale", config.SCALES)
@pytest.mark.parametrize("name", ["amchirp", "ftm"])
def test_recorded_c_comes_from_its_results_file(name, scale):
    """A preset has a c exactly when its calibration file exists; c is the file's result (to 6 significant
    digits), computed at a clean commit with the preset's JTFS, and the check subset agrees within 10 %."""
    path = RESULTS / f"calibration_{name}_{scale}.json"
    assert (config.preset(name, scale)["c"] is not None) == path.exists()
    if not path.exists():
        return
    result = json.loads(path.read_text())
    synth = SYNTHS[name].at(scale)
    assert preset_c(synth) == pytest.approx(result["c"], rel=1e-5)
    assert result["relative_difference"] < 0.10 and result["n"] == 256
    assert result["jtfs"] == {k: list(v) if isinstance(v, tuple) else v
                              for k, v in config.preset(name, scale)["jtfs"].items()}
    assert result["provenance"]["commit"] and not result["provenance"]["commit"].endswith("-dirty")


def test_calibration_is_one_over_the_median():
    synth = SYNTHS["ftm"].at("tiny")
    result = calibrate(synth, n=3, batch=2)
    items = data.fold(synth, "train", n=6)
    S = operator(synth)(synth(torch.from_numpy(items.theta[:3].copy()).float()))
    assert result["c"] == pytest.approx(1 / float(S.median()), rel=1e-6)
    assert result["subsets"] == [[items.ids[0], items.ids[2]], [items.ids[3], items.ids[5]]]


def test_uncalibrated_preset_says_how_to_calibrate(monkeypatch):
    preset = config.preset
    monkeypatch.setattr(config, "preset", lambda name, scale=None: {**preset(name, scale), "c": None})
    with pytest.raises(ValueError, match="python -m pnpbook calibrate --synth ftm --scale paper"):
        preset_c(SYNTHS["ftm"].at("paper"))


def test_operator_follows_the_preset():
    synth = SYNTHS["amchirp"].at("tiny")
    op = operator(synth)
    assert op is operator(synth) and op.config.N == synth.n_samples and op.config.J == 10


def test_cli_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "c.json"
    args = ["calibrate", "--synth", "amchirp", "--scale", "tiny", "--n", "2", "--out", str(out)]
    assert cli.main(args) == 0
    assert json.loads(out.read_text())["n"] == 2
    assert cli.main(args) == 2 and "--force" in capsys.readouterr().err
