"""The training loop (issue 4 part 4): config, batches, the lambda and LR schedules, checkpoints and exact
resume (after an exception and after SIGKILL), restore-best, clipping, pretraining, logs, DDP on two gloo
processes, and one real run through features, metric store, encoder and evaluation.

Most tests run the loop on a stand-in Setup (random features, a small Conv1d encoder, the real P-loss and
PNP loss on random M) so that they take a fraction of a second each.  This file is also the torchrun and
subprocess worker (see the ``__main__`` block at the end).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pnpbook import losses, train
from pnpbook.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
D, BINS, FRAMES, P = 3, 4, 6, 8


# --------------------------------------------------------------------------------------------
# Stand-ins

class TinyCNN(torch.nn.Module):
    """Conv1d over frames (bins as channels) -> ReLU -> Linear -> tanh; optional BatchNorm, no dropout."""

    def __init__(self, d: int = D, n_bins: int = BINS, frames: int = FRAMES, batchnorm: bool = False,
                 bounded: bool = True):
        super().__init__()
        layers = [torch.nn.Conv1d(n_bins, 8, 3)]
        if batchnorm:
            layers.append(torch.nn.BatchNorm1d(8))
        layers += [torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * (frames - 2), d)]
        if bounded:
            layers.append(torch.nn.Tanh())
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def standin(cfg: TrainConfig, batchnorm: bool = False, bounded: bool = True, limit: float = 0.95,
            delay: float = 0.0) -> train.Setup:
    """A Setup with the loop's full interface: nu a smooth function of random features, S = tanh(A nu),
    M = J^T J of random J (so lambda0 and mu come from the real functions), range |nu| <= limit."""
    g = torch.Generator().manual_seed(1234)
    W = torch.randn(BINS * FRAMES, D, generator=g) / math.sqrt(BINS * FRAMES)
    A = torch.randn(P, D, generator=g)

    def fold(n: int) -> dict[str, torch.Tensor]:
        X = torch.randn(n, BINS, FRAMES, generator=g)
        nu = torch.tanh(2 * X.flatten(1) @ W)
        J = torch.randn(n, P, D, generator=g, dtype=torch.float64)
        return {"features": X, "nu": nu, "theta": nu.double(), "S": torch.tanh(nu @ A.T),
                "M": J.transpose(1, 2) @ J}

    tr, va = fold(cfg.n_train or 64), fold(cfg.n_val or 16)
    loss = losses.PNPLoss() if cfg.loss == "pnp" else losses.PLoss()
    lam0 = losses.lambda0(tr["M"], cfg.damping, cfg.k, cfg.lambda_rule) if cfg.loss == "pnp" else math.nan
    state = losses.LossState(lam=0.0 if math.isnan(lam0) else lam0, mu=losses.pnp_mu(tr["M"]), damping=cfg.damping)

    spec = {"batchnorm": batchnorm, "bounded": bounded}
    return train.Setup(
        make_model=lambda: TinyCNN(**spec), model_spec=spec,
        loss=Slow(loss, delay) if delay else loss, pretrain_loss=losses.PLoss() if cfg.pretrain_epochs else None,
        train=tr, val=va, state=state, lambda0=lam0,
        distance=lambda nu_hat, batch: torch.linalg.vector_norm(torch.tanh(nu_hat @ A.T) - batch["S"], dim=-1),
        count_out_of_range=lambda nu_hat: int((nu_hat.detach().abs() > limit).sum()))


class Slow:
    """A loss that sleeps first (so that a subprocess can be killed mid-epoch)."""

    def __init__(self, loss, delay: float):
        self.loss, self.delay, self.needs = loss, delay, loss.needs

    def __call__(self, nu_hat, batch, state):
        time.sleep(self.delay)
        return self.loss(nu_hat, batch, state)


def make_setup(**kw):
    """``setup(cfg)`` for train.train: the stand-in with these options."""
    return lambda cfg: standin(cfg, **kw)


def small(**kw) -> TrainConfig:
    base = dict(synth="amchirp", scale="tiny", loss="pnp", batch_size=8, epochs=3, steps_per_epoch=4,
                n_train=32, n_val=8, num_threads=1, seed=0)
    return TrainConfig(**{**base, **kw})


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --------------------------------------------------------------------------------------------
# Config, batches, schedule: pure units

def test_config_defaults_from_the_preset_and_json_round_trip(monkeypatch):
    monkeypatch.setenv("PNPBOOK_SCALE", "tiny")
    cfg = TrainConfig(synth="ftm", loss="mss")
    budget = train.config.preset("ftm", "tiny")["train"]
    assert (cfg.scale, cfg.encoder, cfg.batch_size, cfg.epochs, cfg.steps_per_epoch) == \
        ("tiny", budget["encoder"], budget["batch_size"], budget["epochs"], budget["steps_per_epoch"])
    assert (cfg.lr, cfg.k, cfg.mu, cfg.accelerator, cfg.brake, cfg.restore_best, cfg.grad_clip,
            cfg.pretrain_epochs, cfg.damping, cfg.lambda_rule, cfg.validate) == \
        (1e-3, 10.0, None, 0.05, 1.0, False, None, 0, "identity", "ours", "clip")
    odd = TrainConfig(synth="amchirp", scale="small", loss="pnp", mu=2.5e-3, grad_clip=3.0, damping="mean",
                      lambda_rule="authors", restore_best=True, pretrain_epochs=5)
    for c in (cfg, odd):
        back = TrainConfig.from_json(c.to_json())
        assert back == c and back.difference(c) == []
    assert TrainConfig.from_json(odd.to_json()).difference(cfg)  # not vacuous
    for bad in ({"loss": "l1"}, {"damping": "eye"}, {"batch_size": 0}, {"lr": -1.0}, {"grad_clip": float("nan")},
                {"pretrain_epochs": 99}, {"loss": "ploss", "restore_best": True}, {"validate": "off"}):
        with pytest.raises(ValueError):
            TrainConfig(**{"scale": "tiny", **bad})
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**cfg.to_dict(), "momentum": 0.9})


def test_epoch_indices_are_fresh_permutations_in_full_batches():
    g = torch.Generator().manual_seed(3)
    idx = train.epoch_indices(g, n=10, batch_size=3, steps=5)  # 3 batches per permutation, 1 item dropped
    assert idx.shape == (5, 3) and idx.dtype == torch.int64
    first, second = idx[:3].flatten(), idx[3:].flatten()
    assert len(set(first.tolist())) == 9 and len(set(second.tolist())) == 6
    assert int(idx.min()) >= 0 and int(idx.max()) <= 9
    again = train.epoch_indices(torch.Generator().manual_seed(3), 10, 3, 5)
    assert torch.equal(idx, again)
    assert not torch.equal(train.epoch_indices(g, 10, 3, 5), idx)  # the next epoch draws anew
    batch = torch.arange(12)
    assert torch.equal(torch.cat([train.shard(batch, r, 3) for r in range(3)]), batch)
    with pytest.raises(ValueError):
        train.shard(torch.arange(10), 0, 3)
    with pytest.raises(ValueError):
        train.epoch_indices(g, n=2, batch_size=3, steps=1)


def test_lambda_schedule_by_hand():
    s = train.LambdaSchedule(lambda0=100.0, accelerator=0.05, brake=2.0)
    lams = []
    for v in (5.0, 4.0, 4.5, 3.0, 3.5, 3.5):
        s.update(v)
        lams.append(s.lam)
    np.testing.assert_allclose(lams, [5.0, 0.25, 0.5, 0.025, 0.05, 0.1], rtol=1e-12)
    capped = train.LambdaSchedule(lambda0=100.0, accelerator=0.5, brake=1e6)
    capped.update(1.0)
    assert capped.update(2.0) is False and capped.lam == 100.0  # min(lam * brake, threshold = lambda0)
    restored = train.LambdaSchedule(1.0, 0.1, 1.0)
    restored.load_state_dict(s.state_dict())
    assert restored == s


# --------------------------------------------------------------------------------------------
# Whole runs on the stand-in

def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = train.train(small(), tmp_path / "a", setup=make_setup(), progress=False)
    b = train.train(small(), tmp_path / "b", setup=make_setup(), progress=False)
    c = train.train(small(seed=1), tmp_path / "c", setup=make_setup(), progress=False)
    assert_same_weights(weights(a / "checkpoints/last.pt"), weights(b / "checkpoints/last.pt"))
    wa, wc = weights(a / "checkpoints/last.pt"), weights(c / "checkpoints/last.pt")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def recompute_lambda_and_lr(rows, lambda0, accelerator, brake, lr0, patience, factor=0.1):
    """The lambda and lr each epoch should have used, from the logged validation losses (spec 7.4;
    torch's ReduceLROnPlateau: relative threshold 1e-4)."""
    lam, best_lam, lr, best_lr, bad = lambda0, math.inf, lr0, math.inf, 0
    out = []
    for r in rows:
        out.append((lam, lr))
        v = r["val_loss"]
        if v < best_lam:
            best_lam, lam = v, lam * accelerator
        else:
            lam = min(lam * brake, lambda0)
        if v < best_lr * (1 - 1e-4):
            best_lr, bad = v, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = lr * factor, 0
    return out


def test_run_dir_layout_log_and_schedules(tmp_path):
    cfg = small(epochs=8, lr=0.3, brake=3.0, lr_patience=0, accelerator=0.2)
    run = train.train(cfg, tmp_path / "run", setup=make_setup(), progress=False)
    assert TrainConfig.from_json((run / "config.json").read_text()) == cfg
    with open(run / "log.csv", newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames) == train.LOG_COLUMNS
    rows = train.read_log(run)
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert [r["step"] for r in rows] == [4 * e for e in range(1, 9)]
    assert {r["loss"] for r in rows} == {"pnp"}
    assert list((run / "tb").glob("events.out.tfevents.*"))
    last = torch.load(run / "checkpoints/last.pt", weights_only=True)
    for key in ("model", "config", "epoch", "optimizer", "scheduler", "lambda", "rng", "history"):
        assert key in last
    assert last["epoch"] == 8 and last["config"] == cfg.to_dict() and len(last["history"]) == 8
    best = torch.load(run / "checkpoints/best.pt", weights_only=True)
    distances = [r["val_jtfs_distance"] for r in rows]
    assert best["epoch"] == 1 + int(np.argmin(distances))
    # lambda and lr, recomputed from the logged validation losses
    lambda0 = standin(cfg).lambda0
    expected = recompute_lambda_and_lr(rows, lambda0, 0.2, 3.0, 0.3, patience=0)
    np.testing.assert_allclose([r["lambda"] for r in rows], [e[0] for e in expected], rtol=1e-12)
    np.testing.assert_allclose([r["lr"] for r in rows], [e[1] for e in expected], rtol=1e-12)
    losses_ = [r["val_loss"] for r in rows]
    assert any(b >= min(losses_[:i + 1]) for i, b in enumerate(losses_[1:])), "no non-improving epoch: vacuous"
    # the logged validation numbers are those of the last weights (independent recomputation)
    model = TinyCNN()
    model.load_state_dict(last["model"])
    setup = standin(cfg)
    with torch.no_grad():
        nu_hat = model.eval()(setup.val["features"])
    state = losses.LossState(lam=0.0, mu=setup.state.mu)
    np.testing.assert_allclose(rows[-1]["val_loss"], float(losses.PNPLoss()(nu_hat, setup.val, state)), rtol=1e-5)
    np.testing.assert_allclose(rows[-1]["val_jtfs_distance"],
                               float(setup.distance(nu_hat, setup.val).mean()), rtol=1e-5)


def test_resume_after_an_exception_equals_an_uninterrupted_run(tmp_path):
    """Interrupted after epoch 1 (end of pretraining) and after epoch 3, resumed each time: the final
    weights, optimizer state, history and best checkpoint equal an uninterrupted run's."""
    cfg = small(epochs=5, pretrain_epochs=1, restore_best=True, grad_clip=0.5, lr=0.05, brake=2.0)
    ref = train.train(cfg, tmp_path / "ref", setup=make_setup(), progress=False)

    class Stop(Exception):
        pass

    def stop_at(k):
        def cb(trainer):
            if trainer.epoch == k:
                raise Stop
        return cb

    run = tmp_path / "killed"
    for k in (1, 3):
        with pytest.raises(Stop):
            train.train(cfg, run, setup=make_setup(), progress=False, callback=stop_at(k))
        assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == k
    train.train(cfg, run, setup=make_setup(), progress=False)
    a, b = (torch.load(p / "checkpoints/last.pt", weights_only=True) for p in (ref, run))
    assert_same_weights(a["model"], b["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert a["lambda"] == b["lambda"] and a["scheduler"] == b["scheduler"]
    strip = lambda h: json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in h])  # NaN == NaN
    assert strip(a["history"]) == strip(b["history"])
    assert_same_weights(weights(ref / "checkpoints/best.pt"), weights(run / "checkpoints/best.pt"))
    assert len(train.read_log(run)) == 5
    # a finished run resumed does nothing; another config is refused
    train.train(cfg, run, setup=make_setup(), progress=False)
    assert torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"] == 5
    with pytest.raises(ValueError, match="another config"):
        train.train(small(epochs=5, lr=0.1), run, setup=make_setup(), progress=False)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    cfg = small(epochs=6, steps_per_epoch=5)
    ref = train.train(cfg, tmp_path / "ref", setup=make_setup(delay=0.02), progress=False)
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    worker = [sys.executable, str(Path(__file__)), "train", str(run), cfg.to_json()]
    proc = subprocess.Popen(worker, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if (run / "log.csv").exists() and len(train.read_log(run)) >= 2:
            break
        time.sleep(0.01)
    time.sleep(0.05)  # somewhere in epoch 3
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"]
    assert 2 <= done < 6
    train.train(cfg, run, setup=make_setup(delay=0.02), progress=False)  # resumed here: same ops, one thread
    assert_same_weights(weights(ref / "checkpoints/last.pt"), weights(run / "checkpoints/last.pt"))


def test_restore_best_restores_weights_and_adam_state(tmp_path):
    snaps = []

    def record(trainer):
        snaps.append((trainer.history[-1]["val_loss"], copy.deepcopy(trainer.module.state_dict()),
                      copy.deepcopy(trainer.optimizer.state_dict())))

    for restore in (True, False):
        snaps.clear()
        cfg = small(epochs=6, lr=0.1, brake=2.0, restore_best=restore)
        train.train(cfg, tmp_path / f"r{restore}", setup=make_setup(), progress=False, callback=record)
        best, best_state, checked = math.inf, None, 0
        for v, w, opt in snaps:
            if v < best:
                best, best_state = v, (w, opt)
                continue
            checked += 1
            same = all(torch.equal(w[k], best_state[0][k]) for k in w)
            assert same == restore
            if restore:
                for sa, sb in zip(opt["state"].values(), best_state[1]["state"].values()):
                    assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and sa["step"] == sb["step"]
        assert checked >= 1, "no non-improving epoch: vacuous"


def test_gradient_clipping_caps_the_total_norm(tmp_path):
    norms = {}
    for clip in (None, 1e-3):
        trainer = train.Trainer(small(grad_clip=clip), tmp_path / str(clip), setup=make_setup())
        out = trainer.step(torch.arange(8))
        held = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in trainer.module.parameters()]))
        norms[clip] = (out["grad_norm"], float(held))
        trainer.close()
    raw, held = norms[None]
    assert raw == pytest.approx(held, rel=1e-6) and raw > 1e-2
    raw_c, held_c = norms[1e-3]
    assert raw_c == pytest.approx(raw, rel=1e-6) and held_c == pytest.approx(1e-3, rel=1e-4)


def test_pretraining_then_fresh_optimiser_for_the_named_loss(tmp_path):
    states = []
    cfg = small(epochs=4, pretrain_epochs=2, lr=0.3, lr_patience=0)
    train.train(cfg, tmp_path / "run", setup=make_setup(), progress=False,
                callback=lambda t: states.append(float(next(iter(t.optimizer.state_dict()["state"].values()))["step"])))
    rows = train.read_log(tmp_path / "run")
    assert [r["loss"] for r in rows] == ["ploss", "ploss", "pnp", "pnp"]
    assert all(math.isnan(r["lambda"]) for r in rows[:2])
    assert rows[2]["lambda"] == pytest.approx(standin(cfg).lambda0, rel=1e-12)  # a fresh schedule
    assert rows[2]["lr"] == cfg.lr  # a fresh scheduler
    assert states == [4, 8, 4, 8]  # a fresh Adam


def test_out_of_range_predictions_are_counted_or_raise(tmp_path):
    cfg = small(epochs=2)
    run = train.train(cfg, tmp_path / "clip", setup=make_setup(bounded=False, limit=0.1), progress=False)
    rows = train.read_log(run)
    assert all(r["clipped_train"] > 0 and r["clipped_val"] > 0 for r in rows)
    model = TinyCNN(bounded=False)
    model.load_state_dict(weights(run / "checkpoints/last.pt"))
    with torch.no_grad():
        nu_hat = model.eval()(standin(cfg).val["features"])
    assert rows[-1]["clipped_val"] == int((nu_hat.abs() > 0.1).sum())
    quiet = train.read_log(train.train(cfg, tmp_path / "in", setup=make_setup(limit=1.0), progress=False))
    assert all(r["clipped_train"] == 0 and r["clipped_val"] == 0 for r in quiet)  # tanh stays inside
    with pytest.raises(ValueError, match="outside"):
        train.train(small(epochs=2, validate="raise"), tmp_path / "raise",
                    setup=make_setup(bounded=False, limit=0.1), progress=False)


def test_progress_bar_on_a_terminal_only(tmp_path, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    shown = {}
    for name, stream, progress in (("tty", Terminal(), True), ("pipe", io.StringIO(), True),
                                   ("off", Terminal(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        train.train(small(epochs=1), tmp_path / name, setup=make_setup(), progress=progress)
        shown[name] = stream.getvalue()
    monkeypatch.undo()
    assert "loss=" in shown["tty"] and "lam=" in shown["tty"] and "4/4" in shown["tty"]
    assert shown["pipe"] == "" and shown["off"] == ""


def test_load_encoder(tmp_path):
    run = train.train(small(epochs=2), tmp_path / "run", setup=make_setup(), progress=False)
    model, cfg = train.load_encoder(run / "checkpoints/best.pt", build=TinyCNN)
    assert not model.training and cfg == small(epochs=2)
    assert_same_weights(model.state_dict(), weights(run / "checkpoints/best.pt"))


# --------------------------------------------------------------------------------------------
# DDP on two gloo processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_CFG = dict(batch_size=8, epochs=4, steps_per_epoch=4, lr=3e-3)


@pytest.fixture(scope="module")
def ddp_outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(free_port()), str(Path(__file__)), "ddp", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def global_batch() -> torch.Tensor:
    return train.epoch_indices(torch.Generator().manual_seed(5), 32, 8, 1)[0]


def test_ddp_gradients_equal_single_process_gradients(ddp_outputs, tmp_path):
    trainer = train.Trainer(small(**DDP_CFG), tmp_path / "single", setup=make_setup())
    loss, _ = trainer.compute_gradients(global_batch())
    single = [p.grad.clone() for p in trainer.module.parameters()]
    trainer.close()
    local = [torch.load(ddp_outputs / f"loss{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert local[0] != local[1] and (local[0] + local[1]) / 2 == pytest.approx(loss, rel=1e-6)  # halves of the batch
    for rank in (0, 1):
        ddp = torch.load(ddp_outputs / f"grads{rank}.pt", weights_only=True)
        assert len(ddp) == len(single)
        for a, b in zip(ddp, single):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert any(float(g.abs().max()) > 1e-3 for g in single)  # not trivially zero


def test_ddp_runs_a_batchnorm_encoder_and_the_loss_falls(ddp_outputs):
    rows = train.read_log(ddp_outputs / "bn")
    assert len(rows) == 4 and all(math.isfinite(r["train_loss"]) for r in rows)
    assert rows[-1]["train_loss"] < 0.6 * rows[0]["train_loss"]
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    ckpt = torch.load(ddp_outputs / "bn/checkpoints/last.pt", weights_only=True)
    assert len(ckpt["rng"]) == 2  # one RNG state per rank
    assert any("running_mean" in k for k in ckpt["model"])


# --------------------------------------------------------------------------------------------
# The real pipeline

def test_real_pipeline_all_losses(tmp_path, monkeypatch):
    """amchirp tiny, a few items: features, targets and metric stores computed into tmp folders, the preset's
    encoder; the logged validation distance equals pnpbook.evaluate's on the last checkpoint."""
    pytest.importorskip("pnpbook.models")
    from pnpbook import data, evaluate, features, store

    monkeypatch.setenv("PNPBOOK_CACHE", str(tmp_path / "cache"))
    common = dict(synth="amchirp", scale="tiny", batch_size=2, epochs=1, steps_per_epoch=2, n_train=4, n_val=2,
                  num_threads=1, metric_dir=str(tmp_path / "metric"))
    for loss in losses.LOSSES:
        run = train.train(TrainConfig(loss=loss, **common), tmp_path / loss, progress=False)
        row = train.read_log(run)[-1]
        assert row["loss"] == loss and math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"])
    # lambda_0 and mu from the TRAIN fold's M (spec 13.6); the validation loss undamped (spec 7.3)
    M_train = torch.from_numpy(store.read(tmp_path / "metric" / "amchirp_tiny_train_n4.h5").M)
    M_val = torch.from_numpy(store.read(tmp_path / "metric" / "amchirp_tiny_val_n2.h5").M)
    row = train.read_log(tmp_path / "pnp")[-1]
    ckpt = torch.load(tmp_path / "pnp/checkpoints/last.pt", weights_only=True)
    assert row["lambda"] == pytest.approx(losses.lambda0(M_train, "identity", 10.0), rel=1e-12)
    mu = losses.pnp_mu(M_train)
    assert ckpt["loss_state"]["mu"] == pytest.approx(mu, rel=1e-12)
    model, cfg = train.load_encoder(tmp_path / "pnp/checkpoints/last.pt")
    synth = train.SYNTHS["amchirp"].at("tiny")
    theta = torch.from_numpy(np.array(data.fold(synth, "val", n=2).theta))
    nu_hat = evaluate.predict(model, features.features(synth, "val", n=2))
    dnu = nu_hat - data.train_scaler(synth)(theta)
    val_loss = 0.5 * mu * torch.einsum("bi,bij,bj->b", dnu, M_val, dnu).mean()
    assert row["val_loss"] == pytest.approx(float(val_loss), rel=1e-4)
    d = evaluate.jtfs_distance(synth, theta, data.train_scaler(synth).inverse(nu_hat))
    np.testing.assert_allclose(row["val_jtfs_distance"], d.mean(), rtol=1e-4)
    # DDSP-JTFS's validation loss, derived from the float64 distance, equals the float32 loss itself
    model, _ = train.load_encoder(tmp_path / "ddsp_jtfs/checkpoints/last.pt")
    nu_hat = evaluate.predict(model, features.features(synth, "val", n=2))
    ddsp = losses.make_loss("ddsp_jtfs", synth, scaler=data.train_scaler(synth))
    batch = {"nu": data.train_scaler(synth)(theta).float(), "S": features.targets(synth, "val", n=2)}
    assert train.read_log(tmp_path / "ddsp_jtfs")[-1]["val_loss"] == pytest.approx(float(ddsp(nu_hat, batch)), rel=1e-4)
    # a store at the default name serves any head of the fold it holds; a longer head gets its own file
    other = tmp_path / "other"
    other.mkdir()
    (other / "amchirp_tiny_train.h5").write_bytes((tmp_path / "metric" / "amchirp_tiny_train_n4.h5").read_bytes())
    assert torch.equal(train.metric_tensor(synth, "train", 3, other), M_train[:3])
    assert not list(other.glob("*_n3.h5"))


# --------------------------------------------------------------------------------------------
# Worker entry points (subprocess and torchrun)

def _main(argv: list[str]) -> None:
    mode, out = argv[0], Path(argv[1])
    if mode == "train":  # the SIGKILL test's worker
        train.train(TrainConfig.from_json(argv[2]), out, setup=make_setup(delay=0.02), progress=False)
    elif mode == "ddp":
        rank = int(os.environ["RANK"])
        trainer = train.Trainer(small(**DDP_CFG), out / "grads", setup=make_setup())
        loss, _ = trainer.compute_gradients(global_batch())
        torch.save([p.grad for p in trainer.module.parameters()], out / f"grads{rank}.pt")
        torch.save(loss, out / f"loss{rank}.pt")
        train.train(small(**{**DDP_CFG, "lr": 1e-2}, loss="ploss"), out / "bn", setup=make_setup(batchnorm=True), progress=False)
        trainer.close()  # leaves the process group it joined


if __name__ == "__main__":
    _main(sys.argv[1:])
