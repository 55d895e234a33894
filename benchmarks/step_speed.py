"""Benchmark: time per training step of the four losses, side by side, and what PNP's precomputation buys.

At the ``small`` preset of each synthesizer given (default: amchirp), for each encoder
(:func:`pnpbook.models.build_encoder` kinds ``cnn`` and ``effnet``), one
:class:`pnpbook.train.Trainer` per loss (P-loss, PNP, MSS, DDSP-JTFS), all from the same
initial weights, each timed on the same batches of the preset's size (64):
``Trainer.step`` is one training step as :func:`pnpbook.train.train` takes it: the batch
fetched by indexing the train tensors held in memory (M as one ``(n, d, d)`` float64
tensor; MSS also renders the target audio), the encoder's forward, the loss, the backward,
the gradient norm and Adam's step.  The losses are interleaved in rounds (each round one
fresh batch for every loss and for the encoder alone, their order rotated from round to
round), after one warm-up round, and the medians are reported.  DDSP-JTFS costs seconds per step, so it is
timed in the first ``--slow-repeats`` rounds only (and warmed up on two items).

The data are not the cached features, targets and metrics: ``theta`` is the real train fold
(:func:`pnpbook.data.fold`; MSS and DDSP-JTFS render the predictions, so the parameters
reach the synthesizer), but the CQT features are uniform noise of the front end's shape
(:func:`pnpbook.features.front_end`), the targets ``S`` noise of the operator's size P, and M
random positive definite matrices.  Values do not change the cost: every operation on them
is dense arithmetic of fixed shape (the clipping of out-of-range predictions only zeroes
some gradients).

Also timed: the encoder alone (forward; forward and backward of a dummy scalar), so that each
step splits into the encoder and the rest (the loss, the batch fetch and Adam; the P-loss
step is almost only encoder); the P-loss and PNP calls alone (forward, forward + backward, on
a leaf ``nu_hat`` of the batch, in microseconds); and, for chapter 7's growth with signal
length and batch, the DDSP-JTFS and PNP losses alone (forward + backward, no encoder) for
amchirp at the tiny, small and paper signal lengths with batches 8, 16 and 32 (DDSP-JTFS
timed once after a warm-up per preset, PNP as a median).

Printed, per synthesizer and encoder: the step times, PNP / P-loss (required within 10 %),
DDSP-JTFS / PNP (the paper's abstract claims about 100x per step), where the time
goes, and the break-even: PNP pays once for M on the train fold, ``T_pre = n_train / r``
with ``r`` the precomputation's samples per second at this preset
(``data/results/bench_precompute.json``, measured with all cores), and then saves
``t_DDSP-JTFS - t_PNP`` per step, so DDSP-JTFS training costs more than PNP's precomputation
after ``T_pre / (steps_per_epoch * (t_DDSP-JTFS - t_PNP))`` epochs.  Writes
``data/results/bench_steps.json`` with provenance.

The load average (1, 5, 15 minutes) at the start and at the end is stored with the
results: other work on the machine inflates every time, the slow steps most.

Usage: ``python benchmarks/step_speed.py [--synth amchirp ftm] [--repeats 15] [--slow-repeats 3]``
(about 6 minutes for amchirp on 2 quiet cores, about 8 more for ftm; ``--repeats 1
--slow-repeats 1 --out /tmp/bench_steps.json`` for a smoke run).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from common import median_time, wall_time, write_result

from pnpbook import config, data, features, jtfs, losses, models, train
from pnpbook.synth import SYNTHS, Synth

ROOT = Path(__file__).resolve().parents[1]
SCALE = "small"
LOSS_ORDER = ("ploss", "pnp", "mss", "ddsp_jtfs")
SLOW = frozenset({"ddsp_jtfs"})
LABELS = {"ploss": "P-loss", "pnp": "PNP", "mss": "MSS", "ddsp_jtfs": "DDSP-JTFS"}
PNP_TOLERANCE = 0.10
PAPER_SPEEDUP = 100.0
GROWTH_SYNTH = "amchirp"
GROWTH_BATCHES = (8, 16, 32)


def train_tensors(synth: Synth, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The train fold as the loop holds it: real theta and nu, stand-in features, S and M (see the docstring)."""
    theta = torch.from_numpy(np.array(data.fold(synth, "train", n=n).theta, dtype=np.float64))
    fe = features.front_end(synth)
    A = torch.randn(n, synth.d, synth.d, dtype=torch.float64, generator=generator)
    return {"theta": theta, "nu": data.train_scaler(synth)(theta).float(),
            "features": torch.rand(n, fe.n_bins, fe.frames, generator=generator),
            "S": torch.rand(n, jtfs.operator(synth).size, generator=generator),
            "M": A @ A.transpose(1, 2) + 1e-3 * torch.eye(synth.d, dtype=torch.float64)}


def make_trainer(synth: Synth, loss_name: str, encoder: str, tensors: dict[str, torch.Tensor], batch_size: int,
                 run_dir: Path) -> train.Trainer:
    """A Trainer of ``loss_name`` on ``tensors`` (only the keys the real setup would hold), seed 0."""
    scaler = data.train_scaler(synth)
    loss = losses.make_loss(loss_name, synth, scaler=scaler)
    keys = {"theta", "nu", "features"} | (set(loss.needs) & {"S", "M"})
    fold = {k: tensors[k] for k in keys}
    state, lam0 = losses.LossState(), math.nan
    if loss_name == "pnp":
        lam0 = losses.lambda0(fold["M"], "identity")
        state = losses.LossState(lam=lam0, mu=losses.pnp_mu(fold["M"]))
    _, n_bins, frames = fold["features"].shape
    spec = {"kind": encoder, "d": synth.d, "n_bins": int(n_bins), "frames": int(frames)}

    def not_timed(*_: Any) -> torch.Tensor:
        raise RuntimeError("validation is not part of the timed step")

    def setup(_cfg: train.TrainConfig) -> train.Setup:
        return train.Setup(
            make_model=lambda: models.build_encoder(**spec), model_spec=spec, loss=loss, pretrain_loss=None,
            train=fold, val=fold, state=state, lambda0=lam0, distance=not_timed,
            count_out_of_range=lambda nu_hat: int(synth.check(scaler.inverse(nu_hat.detach().double()),
                                                              validate="clip")[1]),
            render_x=(lambda theta: synth(theta).float()) if "x" in loss.needs else None)

    cfg = train.TrainConfig(synth=synth.name, scale=synth.scale, loss=loss_name, encoder=encoder,
                            batch_size=batch_size, device="cpu")
    return train.Trainer(cfg, run_dir / f"{encoder}_{loss_name}", resume=False, progress=False, setup=setup)


def loss_alone(loss: train.LossFn, batch: dict[str, torch.Tensor], state: losses.LossState | None,
               backward: bool) -> Callable[[], None]:
    """A call of ``loss`` alone on a leaf ``nu_hat`` near the batch's ``nu`` (with its backward if asked)."""
    nu_hat = (batch["nu"] + 0.05 * torch.randn_like(batch["nu"])).clamp(-0.99, 0.99).requires_grad_()

    def call() -> None:
        value = loss(nu_hat, batch, state)
        if backward:
            value.backward()

    return call


def per_call_us(fn: Callable[[], None], calls: int, repeats: int) -> float:
    """Median over ``repeats`` blocks of ``calls`` calls of ``fn``, per call, in microseconds."""
    def block() -> None:
        for _ in range(calls):
            fn()

    return median_time(block, repeats) / calls * 1e6


def time_synth(name: str, encoders: list[str], repeats: int, slow_repeats: int, n: int | None,
               precompute: dict[str, Any] | None) -> dict[str, Any]:
    """Step times of every loss with every encoder at the small preset of ``name``, printed and returned."""
    synth = SYNTHS[name].at(SCALE)
    preset = config.preset(name, SCALE)
    budget = preset["train"]
    batch_size, steps_per_epoch = budget["batch_size"], budget["steps_per_epoch"]
    n_train = preset["folds"]["train"] if n is None else n
    generator = torch.Generator().manual_seed(0)
    tensors = train_tensors(synth, n_train, generator)
    out: dict[str, Any] = {
        "n_samples": synth.n_samples, "sr": float(synth.sr), "d": synth.d, "P": int(tensors["S"].shape[1]),
        "features_shape": list(tensors["features"].shape[1:]), "n_train": n_train, "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch, "epochs": budget["epochs"], "encoders": {}}
    print(f"\n== {name} at {SCALE}: {synth.n_samples} samples at {synth.sr:g} Hz, d = {synth.d}, "
          f"P = {out['P']}, features {tuple(out['features_shape'])}, batch {batch_size}, n = {n_train}")

    batch = {k: v[:batch_size] for k, v in tensors.items()}
    pnp_state = losses.LossState(lam=losses.lambda0(tensors["M"], "identity"), mu=losses.pnp_mu(tensors["M"]))
    calls = {}
    for loss_name, state in (("ploss", None), ("pnp", pnp_state)):
        loss = losses.make_loss(loss_name, synth)
        calls[loss_name] = {kind: per_call_us(loss_alone(loss, batch, state, kind == "forward_backward"),
                                              calls=200, repeats=max(repeats, 3))
                            for kind in ("forward", "forward_backward")}
        print(f"{LABELS[loss_name]:9s} call alone (batch {batch_size}): forward "
              f"{calls[loss_name]['forward']:.0f} us, forward + backward {calls[loss_name]['forward_backward']:.0f} us")
    out["loss_call_us"] = calls

    with tempfile.TemporaryDirectory() as tmp:
        for encoder in encoders:
            trainers = {loss: make_trainer(synth, loss, encoder, tensors, batch_size, Path(tmp))
                        for loss in LOSS_ORDER}
            torch.manual_seed(0)
            probe = models.build_encoder(encoder, synth.d, *out["features_shape"]).train()
            keys = (*LOSS_ORDER, "encoder_forward", "encoder_forward_backward")
            times: dict[str, list[float]] = {key: [] for key in keys}

            def encoder_forward() -> None:
                probe(tensors["features"][idx])

            def encoder_forward_backward() -> None:
                probe.zero_grad(set_to_none=True)
                probe(tensors["features"][idx]).square().mean().backward()

            jobs = {"encoder_forward": encoder_forward, "encoder_forward_backward": encoder_forward_backward,
                    **{loss: (lambda t=trainers[loss]: t.step(idx)) for loss in LOSS_ORDER}}
            for loss in SLOW:  # warm the slow losses up on two items (operator tables), not a whole step
                trainer = trainers[loss]
                two = trainer.batch(trainer.setup.train, torch.arange(2), set(trainer.setup.loss.needs))
                loss_alone(trainer.setup.loss, two, trainer.setup.state, backward=True)()
            for r in range(1 + repeats):  # round 0 warms the fast jobs up
                idx = torch.randperm(n_train, generator=generator)[:batch_size]
                for key in (keys[(i + r) % len(keys)] for i in range(len(keys))):
                    if key in SLOW and (r == 0 or r > slow_repeats):
                        continue
                    seconds = wall_time(jobs[key])
                    if r > 0:
                        times[key].append(seconds)
            for trainer in trainers.values():
                trainer.close()
            step = {loss: statistics.median(times[loss]) for loss in LOSS_ORDER}
            enc_f = statistics.median(times["encoder_forward"])
            enc_fb = statistics.median(times["encoder_forward_backward"])
            ratios = {"pnp_over_ploss": step["pnp"] / step["ploss"],
                      "ddsp_jtfs_over_pnp": step["ddsp_jtfs"] / step["pnp"],
                      "mss_over_pnp": step["mss"] / step["pnp"],
                      "ddsp_jtfs_over_mss": step["ddsp_jtfs"] / step["mss"]}
            row = {"parameters": sum(p.numel() for p in probe.parameters() if p.requires_grad),
                   "step_s": step, "step_s_all": {loss: times[loss] for loss in LOSS_ORDER},
                   "encoder_forward_s": enc_f, "encoder_forward_backward_s": enc_fb,
                   "rest_s": {loss: step[loss] - enc_fb for loss in LOSS_ORDER}, "ratios": ratios,
                   "checks": {"pnp_within_10pct_of_ploss": abs(ratios["pnp_over_ploss"] - 1) <= PNP_TOLERANCE,
                              "ddsp_jtfs_over_pnp_at_least_100": ratios["ddsp_jtfs_over_pnp"] >= PAPER_SPEEDUP}}
            print(f"-- encoder {encoder} ({row['parameters']:,} trainable parameters); medians of {repeats} "
                  f"rounds ({slow_repeats} for DDSP-JTFS)")
            for loss in LOSS_ORDER:
                print(f"   {LABELS[loss]:9s} step {step[loss] * 1e3:10.1f} ms   of which encoder forward + backward "
                      f"{enc_fb * 1e3:.1f} ms ({enc_fb / step[loss]:.0%}), loss, fetch and Adam "
                      f"{row['rest_s'][loss] * 1e3:.1f} ms")
            print(f"   encoder forward {enc_f * 1e3:.1f} ms, backward {(enc_fb - enc_f) * 1e3:.1f} ms")
            print(f"   PNP / P-loss = {ratios['pnp_over_ploss']:.3f}; PNP step within 10 % of P-loss: "
                  f"{row['checks']['pnp_within_10pct_of_ploss']}")
            print(f"   DDSP-JTFS / PNP = {ratios['ddsp_jtfs_over_pnp']:.0f}x per step (the paper's abstract: about "
                  f"100x); at least 100x here: {row['checks']['ddsp_jtfs_over_pnp_at_least_100']}")
            print(f"   MSS / PNP = {ratios['mss_over_pnp']:.1f}x, "
                  f"DDSP-JTFS / MSS = {ratios['ddsp_jtfs_over_mss']:.1f}x")
            row["break_even"] = break_even(precompute, n_train, steps_per_epoch, budget["epochs"],
                                           step["ddsp_jtfs"] - step["pnp"])
            out["encoders"][encoder] = row
    return out


def break_even(precompute: dict[str, Any] | None, n_train: int, steps_per_epoch: int, epochs: int,
               saved_per_step: float) -> dict[str, Any] | None:
    """Epochs of DDSP-JTFS training whose extra cost over PNP pays for M on the train fold (printed)."""
    if precompute is None:
        print("   break-even: no precomputation rate for this preset in bench_precompute.json")
        return None
    rate = precompute["samples_per_s"]
    precompute_s = n_train / rate
    per_epoch_s = steps_per_epoch * saved_per_step
    epochs_to_pay = precompute_s / per_epoch_s
    print(f"   break-even: T_pre = n_train / r = {n_train} / {rate:.3f} samples/s = {precompute_s:.0f} s; "
          f"per epoch DDSP-JTFS costs steps_per_epoch x (t_DDSP-JTFS - t_PNP) = {steps_per_epoch} x "
          f"{saved_per_step:.3f} s = {per_epoch_s:.0f} s more;")
    print(f"   epochs = T_pre / (steps_per_epoch (t_DDSP-JTFS - t_PNP)) = {epochs_to_pay:.2f} "
          f"(the preset trains {epochs} epochs: PNP saves {epochs * per_epoch_s - precompute_s:.0f} s net)")
    return {"samples_per_s": rate, "precompute_s": precompute_s, "saved_per_step_s": saved_per_step,
            "saved_per_epoch_s": per_epoch_s, "epochs": epochs_to_pay,
            "net_saving_over_preset_s": epochs * per_epoch_s - precompute_s}


def growth(repeats: int) -> dict[str, Any]:
    """DDSP-JTFS and PNP loss forward + backward (no encoder) over signal length and batch, for amchirp."""
    rows = []
    print(f"\n== growth: loss forward + backward alone, {GROWTH_SYNTH}, batches {GROWTH_BATCHES}")
    for scale in config.SCALES:
        synth = SYNTHS[GROWTH_SYNTH].at(scale)
        full = train_tensors(synth, max(GROWTH_BATCHES), torch.Generator().manual_seed(0))
        P = int(full["S"].shape[1])
        ddsp, pnp = losses.make_loss("ddsp_jtfs", synth), losses.make_loss("pnp", synth)
        pnp_state = losses.LossState(lam=losses.lambda0(full["M"], "identity"), mu=losses.pnp_mu(full["M"]))
        loss_alone(ddsp, {k: v[:2] for k, v in full.items()}, None, backward=True)()  # warm-up
        for b in GROWTH_BATCHES:
            batch = {k: v[:b] for k, v in full.items()}
            t_ddsp = wall_time(loss_alone(ddsp, batch, None, backward=True))
            t_pnp = per_call_us(loss_alone(pnp, batch, pnp_state, backward=True), calls=200,
                                repeats=max(repeats, 3)) * 1e-6
            rows.append({"scale": scale, "n_samples": synth.n_samples, "sr": float(synth.sr), "P": P, "batch": b,
                         "ddsp_jtfs_s": t_ddsp, "pnp_s": t_pnp, "ratio": t_ddsp / t_pnp})
            print(f"   {scale:6s} N = {synth.n_samples:6d}, P = {P}, batch {b:3d}: DDSP-JTFS {t_ddsp:8.3f} s, "
                  f"PNP {t_pnp * 1e6:6.0f} us, ratio {t_ddsp / t_pnp:,.0f}")
    return {"synth": GROWTH_SYNTH, "batches": list(GROWTH_BATCHES), "ddsp_jtfs_repeats": 1, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synth", nargs="+", default=["amchirp"], choices=["amchirp", "ftm"])
    ap.add_argument("--encoders", nargs="+", default=["cnn", "effnet"], choices=["cnn", "effnet"])
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds (P-loss, PNP, MSS, encoder alone)")
    ap.add_argument("--slow-repeats", type=int, default=3, help="timed rounds of DDSP-JTFS (the first ones)")
    ap.add_argument("--n", type=int, default=None, help="train items held in memory (default: the preset's fold)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    ap.add_argument("--no-growth", action="store_true", help="skip the growth with signal length and batch")
    ap.add_argument("--precompute", default="data/results/bench_precompute.json")
    ap.add_argument("--out", default="data/results/bench_steps.json")
    args = ap.parse_args()
    if not 1 <= args.slow_repeats <= args.repeats:
        ap.error("--slow-repeats must be in [1, --repeats]")
    if args.threads:
        torch.set_num_threads(args.threads)
    source = ROOT / args.precompute
    rates = json.loads(source.read_text()) if source.exists() else {"presets": {}}
    result: dict[str, Any] = {
        "benchmark": "step_speed", "scale": SCALE, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "slow_repeats": args.slow_repeats, "load_average_at_start": os.getloadavg(),
        "pnp_tolerance": PNP_TOLERANCE, "paper_speedup": PAPER_SPEEDUP,
        "precompute_source": {"path": args.precompute, "workers": rates.get("workers"),
                              "provenance": rates.get("provenance")},
        "synths": {}}
    for name in args.synth:
        result["synths"][name] = time_synth(name, args.encoders, args.repeats, args.slow_repeats, args.n,
                                            rates["presets"].get(f"{name}/{SCALE}"))
    if not args.no_growth:
        result["growth"] = growth(args.repeats)
    result["load_average_at_end"] = os.getloadavg()
    print(f"wrote {write_result(ROOT / args.out, result)}")


if __name__ == "__main__":
    main()
