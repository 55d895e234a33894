"""The experiment pipeline's bookkeeping (pnpbook.experiments): recipes, the results table, the
decision rule over pooled seeds, and what a restarted run skips.  The whole pipeline runs live in
book/06_losses.ipynb (under nbval)."""
import json
import os

import numpy as np
import pytest
import torch

from pnpbook import experiments, train


def test_variants_are_train_configs():
    cfg = experiments.train_config("amchirp", "tiny", "pnp_pretrained", seed=3, root="/r")
    assert cfg.loss == "pnp" and cfg.pretrain_epochs == cfg.epochs // 2 and cfg.seed == 3
    assert cfg.metric_dir == os.path.join("/r", "metric")
    assert experiments.train_config("ftm", "tiny", "mss", 0, epochs=6).epochs == 6
    assert experiments.run_dir("/r", cfg, "pnp_pretrained").as_posix() == "/r/runs/amchirp_tiny/pnp_pretrained_seed3"
    with pytest.raises(ValueError, match="variant 'adam'"):
        experiments.train_config("amchirp", "tiny", "adam", 0)


def fake_runs(ratios, seeds=("0", "1"), n=40, seed=0):
    """Per-sample JTFS distances with mean(variant) / mean(ddsp_jtfs) = ratios[variant] on shared sounds."""
    rng = np.random.default_rng(seed)
    runs = {}
    for s in seeds:
        base = rng.uniform(1.0, 3.0, n)
        for variant, r in ratios.items():
            values = {m: (base * r * (1 + 0.01 * rng.standard_normal(n))).tolist() for m in experiments.METRICS}
            summary = {m: {"mean": float(np.mean(v))} for m, v in values.items()}
            ev = {"checkpoint_epoch": 3, "summary": summary, "per_sample": values, "ids": [f"{i:05d}" for i in range(n)]}
            runs.setdefault(variant, {})[s] = {"eval": {"best": ev, "last": ev}}
    return runs


def test_decision_rule_on_pooled_seeds():
    runs = fake_runs({"ddsp_jtfs": 1.0, "pnp": 1.0, "ploss": 2.0, "mss": 0.8})
    d = experiments.decide(runs)
    assert d["pnp / ddsp_jtfs"]["verdict"] == "matches" and d["pnp / ddsp_jtfs"]["n"] == 80
    assert 0.9 <= d["pnp / ddsp_jtfs"]["lo"] <= 1 <= d["pnp / ddsp_jtfs"]["hi"] <= 1.1
    assert d["pnp / ploss"]["verdict"] == "beats" and abs(d["pnp / ploss"]["ratio"] - 0.5) < 0.01
    assert d["pnp / mss"]["verdict"] == "loses"
    assert not any(k.startswith("ploss") for k in d)  # only PNP variants are put to the test
    c = experiments.claims(runs)
    assert list(c) == [f"{a} / {b}" for a, b, _ in experiments.CLAIMS]
    assert c["pnp / ddsp_jtfs"]["holds"] and c["pnp / ploss"]["holds"] and not c["pnp / mss"]["holds"]
    assert c["ddsp_jtfs / ploss"]["verdict"] == "beats" and c["ddsp_jtfs / mss"]["verdict"] == "loses"
    better = experiments.claims(fake_runs({"ddsp_jtfs": 1.0, "pnp": 0.5}))["pnp / ddsp_jtfs"]
    assert better["verdict"] == "beats" and better["holds"]  # better than parity: the claim holds
    assert "ddsp_jtfs / mss" not in experiments.claims({k: runs[k] for k in ("pnp", "ddsp_jtfs", "ploss")})


def test_decision_refuses_unpaired_sounds():
    runs = fake_runs({"ddsp_jtfs": 1.0, "pnp": 1.0})
    runs["pnp"]["1"]["eval"]["best"] = dict(runs["pnp"]["1"]["eval"]["best"], ids=["x"] * 40)
    with pytest.raises(ValueError, match="different sounds"):
        experiments.decide(runs)


def test_table_mean_and_spread_over_seeds():
    runs = fake_runs({"pnp": 1.0, "ddsp_jtfs": 1.0}, seeds=("0", "1", "2"))
    means = [runs["pnp"][s]["eval"]["last"]["summary"]["jtfs"]["mean"] for s in ("0", "1", "2")]
    cell = experiments.table(runs)["pnp"]["last"]["jtfs"]
    assert cell["n_seeds"] == 3 and cell["mean"] == pytest.approx(np.mean(means))
    assert cell["std"] == pytest.approx(np.std(means, ddof=1))
    text = experiments.format_table({"synth": "amchirp", "scale": "tiny", "seeds": [0, 1, 2],
                                     "table": experiments.table(runs), "decision": experiments.decide(runs)})
    assert "pnp / ddsp_jtfs" in text and len(text.splitlines()) == 2 + 4 + 1  # title, header, rows, decision


def test_restart_skips_finished_work(tmp_path):
    """A run whose log holds every epoch is not trained again, and an evaluation newer than its
    checkpoint is reused; an older one is redone."""
    cfg = experiments.train_config("amchirp", "tiny", "ploss", 0, root=tmp_path)
    path = experiments.run_dir(tmp_path, cfg, "ploss")
    (path / "checkpoints").mkdir(parents=True)
    row = {k: 0 for k in train.LOG_COLUMNS}
    lines = [",".join(train.LOG_COLUMNS)]
    for epoch in range(1, cfg.epochs):  # the log's epoch column counts completed epochs
        lines.append(",".join(str(epoch if k == "epoch" else "ploss" if k == "loss" else row[k])
                              for k in train.LOG_COLUMNS))
    (path / "log.csv").write_text("\n".join(lines) + "\n")
    assert not experiments._finished(path, cfg)  # killed before its last epoch
    lines.append(lines[-1].replace(f"{cfg.epochs - 1},", f"{cfg.epochs},", 1))
    (path / "log.csv").write_text("\n".join(lines) + "\n")
    assert experiments._finished(path, cfg)
    ckpt, result = path / "checkpoints" / "best.pt", path / "eval_best_test.json"
    torch.save({"epoch": 2}, ckpt)
    result.write_text(json.dumps({"checkpoint_epoch": 2}))
    os.utime(ckpt, (1, 1))
    assert experiments._evaluated(path, "best") == {"checkpoint_epoch": 2}
    assert experiments._checkpoint_epoch(path, "best") == 2
    os.utime(result, (0, 0))
    assert experiments._evaluated(path, "best") is None


def test_exported_encoders_load_without_training_state(tmp_path):
    from pnpbook import models

    spec = {"kind": "cnn", "d": 3, "n_bins": 24, "frames": 16}
    model = models.build_encoder(**spec)
    cfg = experiments.train_config("amchirp", "tiny", "pnp", 1, root=tmp_path)
    path = experiments.run_dir(tmp_path, cfg, "pnp")
    (path / "checkpoints").mkdir(parents=True)
    full = {"model": model.state_dict(), "model_spec": spec, "config": cfg.to_dict(), "epoch": 3, "step": 12,
            "best_distance": 1.5, "provenance": {"commit": "abc"}, "optimizer": {"state": {}}, "rng": [1, 2]}
    torch.save(full, path / "checkpoints" / "best.pt")
    result = {"runs": {"pnp": {"1": {"run_dir": str(path)}}}}
    [out] = experiments.export_encoders(result, tmp_path / "export")
    assert out.name == "pnp_seed1_best.pt"
    slim = torch.load(out, weights_only=True)
    assert set(slim) == set(experiments.EXPORT_KEYS)  # no optimizer, no RNG states
    loaded, loaded_cfg = train.load_encoder(out)
    assert loaded_cfg == cfg and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    with pytest.raises(ValueError, match="checkpoint must be one of"):
        experiments.export_encoders(result, tmp_path / "export", checkpoint="first")


def test_thread_limit_is_scoped():
    before = torch.get_num_threads()
    with experiments._threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with experiments._threads(None):
        assert torch.get_num_threads() == before
