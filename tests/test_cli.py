"""python -m pnpbook: help, render, refusal to overwrite, atomic writes, bad arguments."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from pnpbook import cli, data
from pnpbook.synth import SYNTHS


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "pnpbook", "--help"], capture_output=True, text=True, check=True)
    assert "render" in out.stdout


def test_render_writes_fold_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "wav"
    args = ["render", "--synth", "amchirp", "--fold", "val", "--scale", "tiny", "--n", "3", "--out", str(out)]
    assert cli.main(args) == 0
    synth, items = SYNTHS["amchirp"].at("tiny"), data.fold("amchirp", "val", "tiny", n=3)
    wavs = sorted(out.glob("*.wav"))
    assert [w.stem for w in wavs] == sorted(items.ids)
    x, sr = sf.read(out / f"{items.ids[0]}.wav", dtype="float32")
    assert sr == synth.sr and x.shape == (synth.n_samples,)
    np.testing.assert_array_equal(x, synth(torch.tensor(items.theta[0])).float().numpy())
    assert np.abs(x).max() > 1  # float WAV keeps the un-normalised AM amplitude (gamma up to 4)
    rows = list(csv.DictReader(open(out / "params.csv")))
    assert [r["ID"] for r in rows] == list(items.ids) and float(rows[1]["fm"]) == items.theta[1, 1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scale"] == "tiny" and manifest["n"] == 3 and "commit" in manifest["provenance"]
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind
    before = (out / f"{items.ids[0]}.wav").stat().st_mtime_ns
    assert cli.main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / f"{items.ids[0]}.wav").stat().st_mtime_ns == before
    assert cli.main(args + ["--force"]) == 0


def test_render_rejects_bad_arguments(tmp_path, capsys):
    assert cli.main(["render", "--synth", "ftm", "--fold", "test", "--scale", "tiny",
                     "--n", "100000", "--out", str(tmp_path)]) == 2
    assert "outside [0, 10000]" in capsys.readouterr().err
    for bad in (["--n", "0"], ["--scale", "huge"], ["--synth", "fm"]):
        with pytest.raises(SystemExit):
            cli.main(["render", "--synth", "ftm", *bad][:5] if bad[0] == "--synth" else ["render", "--synth", "ftm", *bad])


def test_render_reads_scale_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PNPBOOK_SCALE", "small")
    assert cli.main(["render", "--synth", "ftm", "--n", "1", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "manifest.json").read_text())["sr"] == SYNTHS["ftm"].at("small").sr


def test_write_atomic_keeps_old_file_on_failure(tmp_path):
    from pnpbook.provenance import write_atomic
    target = tmp_path / "a.txt"
    target.write_text("old")

    def crash(tmp):
        tmp.write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(target, crash)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_provenance_records_the_load_average(monkeypatch):
    import os

    from pnpbook import provenance as prov

    monkeypatch.setattr(os, "getloadavg", lambda: (1.234, 0.5, 2.0))
    assert prov.provenance()["machine"]["load_average"] == [1.23, 0.5, 2.0]

    def unavailable():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", unavailable)
    assert prov.load_average() is None
