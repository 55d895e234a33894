"""The command-line tool: ``python -m pnpbook SUBCOMMAND ...``.

Subcommands
-----------
render
    Write a fold (or its first n items) to WAV files, with a parameter table
    and a manifest.
calibrate
    Choose the log compression ``c`` of Phi for a preset (1 / median S) and
    write it, with its check on a second subset, to ``data/results/``.

precompute
    Compute the PNP metric M = J^T J for a fold into a metric store
    (:mod:`pnpbook.store`): resumable, in worker processes or under
    ``torchrun``; ``--estimate`` predicts its time and disk first.
train
    Train one encoder with one loss (:mod:`pnpbook.train`): checkpoints every
    epoch, resumes, runs under ``torchrun``.
evaluate
    Evaluate a run's best and last checkpoints on a fold (:mod:`pnpbook.evaluate`).
run
    The whole pipeline (:mod:`pnpbook.experiments`): metric, trainings of every
    loss and seed, evaluation, the results table; resumable.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import soundfile as sf
import torch
from tqdm import tqdm

from pnpbook import config, data, experiments, jtfs, store
from pnpbook.provenance import provenance, write_atomic
from pnpbook.synth import SYNTHS


def render(args: argparse.Namespace) -> int:
    """Render a fold to ``OUT/<id>.wav`` (32-bit float WAV), ``params.csv`` and ``manifest.json``."""
    synth = SYNTHS[args.synth].at(args.scale)
    items = data.fold(synth, args.fold, n=args.n)
    out = Path(args.out or Path("data") / "audio" / f"{synth.name}_{synth.scale}_{args.fold}")
    targets = [out / f"{i}.wav" for i in items.ids] + [out / "params.csv", out / "manifest.json"]
    existing = [p for p in targets if p.exists()]
    if existing and not args.force:
        print(f"error: {len(existing)} of the {len(targets)} output files already exist in {out} "
              f"(first: {existing[0].name}); pass --force to overwrite", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    theta = torch.from_numpy(items.theta.copy())
    with tqdm(total=len(items), desc=f"render {synth.name}/{synth.scale}/{args.fold}", unit="wav") as bar:
        for start in range(0, len(items), args.batch):
            x = synth(theta[start:start + args.batch]).numpy()
            for item_id, xi in zip(items.ids[start:start + args.batch], x):
                write_atomic(out / f"{item_id}.wav",
                             lambda tmp, xi=xi: sf.write(tmp, xi, int(synth.sr), subtype="FLOAT", format="WAV"))
            bar.update(len(x))

    def write_csv(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["ID", *synth.names, "fold"])
            for item_id, row in zip(items.ids, items.theta):
                w.writerow([item_id, *(repr(float(v)) for v in row), args.fold])

    write_atomic(out / "params.csv", write_csv)
    manifest = {"command": "render", "synth": synth.name, "scale": synth.scale, "fold": args.fold,
                "n": len(items), "sr": synth.sr, "n_samples": synth.n_samples,
                "params": [{"name": p.name, "unit": p.unit, "low": p.low, "high": p.high, "log": p.log}
                           for p in synth.params],
                "provenance": provenance()}
    write_atomic(out / "manifest.json", lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))
    print(f"wrote {len(items)} WAV files ({synth.sr:g} Hz, {synth.n_samples} samples) to {out}")
    return 0


def calibrate(args: argparse.Namespace) -> int:
    """Calibrate c for one preset and write ``data/results/calibration_SYNTH_SCALE.json``."""
    synth = SYNTHS[args.synth].at(args.scale)
    out = Path(args.out or Path("data") / "results" / f"calibration_{synth.name}_{synth.scale}.json")
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    result = jtfs.calibrate(synth, n=args.n)
    result.update({"synth": synth.name, "scale": synth.scale, "jtfs": dict(config.preset(synth.name, synth.scale)["jtfs"]),
                   "provenance": provenance()})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"{synth.name}/{synth.scale}: c = {result['c']:.6g} (1 / median S over {args.n} train items); "
          f"median on the next {args.n}: {result['median_check']:.6g} "
          f"({100 * result['relative_difference']:.1f} % apart); wrote {out}")
    return 0


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def precompute(args: argparse.Namespace) -> int:
    """Compute (or resume) a metric store, or with ``--estimate`` predict its cost."""
    req = store.Request(synth=args.synth, scale=config.get_scale(args.scale), fold=args.fold, n=args.n,
                        dtype=args.dtype, save_J=args.save_J, chunk=args.chunk)
    workers = args.workers or os.cpu_count() or 1
    if args.estimate:
        e = store.estimate(req, n_timed=args.estimate_samples, workers=workers)
        print(f"{req.synth}/{req.scale}/{req.fold}: {e['n']} samples\n"
              f"  start-up (build, first Jacobian): {e['startup_s']:.2f} s\n"
              f"  per sample: {e['per_sample_s']:.3f} s (timed on {args.estimate_samples} with the threads "
              f"of one worker), {e['per_sample_bytes']} bytes on disk\n"
              f"  whole fold with {workers} worker(s): {_duration(e['total_s'])}, "
              f"{e['total_bytes'] / 2**20:.2f} MiB of data (+ a few KiB of HDF5 metadata)")
        return 0
    path = store.precompute(req, args.out, workers=workers, device=args.device, force=args.force)
    if int(os.environ.get("RANK", "0")) == 0:
        s = store.read(path)
        print(f"{path}: M for {len(s)} {s.fold} samples of {req.synth}/{req.scale}, config {s.hash[:12]}")
    return 0


def _train_overrides(args: argparse.Namespace) -> dict[str, object]:
    """TrainConfig fields given on the command line (None: the preset's or the default)."""
    keys = ("epochs", "steps_per_epoch", "batch_size", "encoder", "lr", "num_threads", "device")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def train_cmd(args: argparse.Namespace) -> int:
    """Train (or resume) one run of a variant and seed."""
    from pnpbook import train
    cfg = experiments.train_config(args.synth, args.scale, args.variant, args.seed, args.root,
                                   **_train_overrides(args))
    path = Path(args.out) if args.out else experiments.run_dir(args.root, cfg, args.variant)
    train.train(cfg, path, resume=not args.restart, progress=not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        last = train.read_log(path)[-1]
        print(f"{path}: {last['epoch']} epochs, val JTFS distance {last['val_jtfs_distance']:.4g}")
    return 0


def evaluate_cmd(args: argparse.Namespace) -> int:
    """Evaluate a run's checkpoints on a fold."""
    from pnpbook import evaluate
    for checkpoint in args.checkpoint:
        r = evaluate.evaluate(args.run_dir, args.fold, checkpoint, n=args.n)
        cells = ", ".join(f"{m} {r['summary'][m]['mean']:.4g}" for m in experiments.METRICS)
        print(f"{args.run_dir} [{checkpoint}, epoch {r['checkpoint_epoch']}] on {r['n']} {args.fold} sounds: {cells}")
    return 0


def run_cmd(args: argparse.Namespace) -> int:
    """The whole pipeline: metric, trainings, evaluation, table."""
    result = experiments.run(args.synth, args.scale, args.variants, args.seeds, args.root, args.results,
                             workers=args.workers or os.cpu_count(), progress=not args.no_progress,
                             **_train_overrides(args))
    print(experiments.format_table(result))
    print(f"wrote {result['path']} ({_duration(result['seconds'])})")
    if args.export:
        paths = experiments.export_encoders(result, args.export)
        print(f"exported {len(paths)} encoders (best checkpoints, weights only) to {args.export}")
    return 0


def _training_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``run``."""
    p.add_argument("--synth", choices=sorted(SYNTHS), required=True)
    p.add_argument("--scale", choices=config.SCALES, default=None,
                   help=f"preset (default: ${config.SCALE_ENV} or {config.DEFAULT_SCALE})")
    p.add_argument("--root", default="data", help="data root: metric stores, runs (default: data)")
    p.add_argument("--epochs", type=_positive, default=None, help="epochs (default: the preset's)")
    p.add_argument("--steps-per-epoch", type=_positive, default=None, help="steps per epoch (default: the preset's)")
    p.add_argument("--batch-size", type=_positive, default=None, help="global batch size (default: the preset's)")
    p.add_argument("--encoder", choices=("cnn", "effnet"), default=None, help="encoder (default: the preset's)")
    p.add_argument("--lr", type=float, default=None, help="Adam's learning rate (default 1e-3)")
    p.add_argument("--num-threads", type=_positive, default=None, help="torch threads per process")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m pnpbook``."""
    p = argparse.ArgumentParser(prog="python -m pnpbook",
                                description="pnpbook: perceptual-neural-physical sound matching, "
                                            "from a laptop CPU to GPUs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    r = sub.add_parser("render", help="write a fold (or its first n items) to WAV files",
                       description="Render a fold of the parameter grid to 32-bit float WAV files "
                                   "(atomic writes), with params.csv and manifest.json.")
    r.add_argument("--synth", choices=sorted(SYNTHS), required=True)
    r.add_argument("--fold", choices=data.FOLDS, default="test")
    r.add_argument("--scale", choices=config.SCALES, default=None,
                   help=f"preset (default: ${config.SCALE_ENV} or {config.DEFAULT_SCALE})")
    r.add_argument("--n", type=_positive, default=None,
                   help="render only the first n items of the fold (default: the scale's fold size)")
    r.add_argument("--out", default=None, help="output folder (default: data/audio/SYNTH_SCALE_FOLD)")
    r.add_argument("--batch", type=_positive, default=16, help="items rendered per call")
    r.add_argument("--force", action="store_true", help="overwrite existing files")
    r.set_defaults(func=render)
    c = sub.add_parser("calibrate", help="choose c of Phi = log1p(c S) for a preset (1 / median S)",
                       description="Compute c = 1 / median of the JTFS coefficients over the first N train "
                                   "items of a preset, check it on the next N, and write the result with its "
                                   "provenance to data/results/calibration_SYNTH_SCALE.json.")
    c.add_argument("--synth", choices=sorted(SYNTHS), required=True)
    c.add_argument("--scale", choices=config.SCALES, default=None,
                   help=f"preset (default: ${config.SCALE_ENV} or {config.DEFAULT_SCALE})")
    c.add_argument("--n", type=_positive, default=256, help="items per subset (default 256)")
    c.add_argument("--out", default=None, help="results file (default: data/results/calibration_SYNTH_SCALE.json)")
    c.add_argument("--force", action="store_true", help="overwrite an existing results file")
    c.set_defaults(func=calibrate)
    m = sub.add_parser("precompute", help="compute the PNP metric M for a fold (resumable)",
                       description="Compute M = J^T J of nu -> Phi(g(h^-1(nu))) for the first N items of a fold "
                                   "into one HDF5 metric store, chunk by chunk (atomic writes; rerun the same "
                                   "command to resume after a crash). Under torchrun, chunks are sharded over "
                                   "ranks.")
    m.add_argument("--synth", choices=sorted(SYNTHS), required=True)
    m.add_argument("--scale", choices=config.SCALES, default=None,
                   help=f"preset (default: ${config.SCALE_ENV} or {config.DEFAULT_SCALE})")
    m.add_argument("--fold", choices=data.FOLDS, default="train")
    m.add_argument("--n", "--n-items", dest="n", type=_positive, default=None,
                   help="first n items of the fold (default: the preset's); under torchrun write --n-items, "
                        "since torchrun's own parser takes --n for an abbreviation of its options")
    m.add_argument("--dtype", choices=sorted(store.DTYPES), default="float32", help="precision of J (M is float64)")
    m.add_argument("--save-J", action="store_true", help="also store J (n x P x d)")
    m.add_argument("--chunk", type=_positive, default=8, help="samples per chunk file (default 8)")
    m.add_argument("--workers", type=_positive, default=None,
                   help="worker processes (default: one per CPU); ignored under torchrun")
    m.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: cuda:LOCAL_RANK)")
    m.add_argument("--out", default=None, help="store path (default: data/metric/SYNTH_SCALE_FOLD.h5)")
    m.add_argument("--force", action="store_true", help="delete an existing store (or one in progress) first")
    m.add_argument("--estimate", action="store_true", help="only time a few samples and predict time and disk")
    m.add_argument("--estimate-samples", type=_positive, default=4, help="samples timed by --estimate")
    m.set_defaults(func=precompute)
    t = sub.add_parser("train", help="train one encoder with one loss (resumable; torchrun for DDP)",
                       description="Train the preset's encoder with one variant (a loss, or PNP after P-loss "
                                   "pretraining): checkpoints every epoch in the run folder, and the same "
                                   "command resumes where it stopped.")
    _training_options(t)
    t.add_argument("--variant", choices=sorted(experiments.VARIANTS), default="pnp")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="run folder (default: ROOT/runs/SYNTH_SCALE/VARIANT_seedS)")
    t.add_argument("--restart", action="store_true", help="start again instead of resuming")
    t.set_defaults(func=train_cmd)
    e = sub.add_parser("evaluate", help="evaluate a run's checkpoints on a fold",
                       description="JTFS, multi-scale spectral and MFCC distances and parameter errors of a "
                                   "run's checkpoints on a fold, with listening examples; writes "
                                   "RUN/eval_CHECKPOINT_FOLD.json.")
    e.add_argument("run_dir", help="a run folder of `train`")
    e.add_argument("--fold", choices=data.FOLDS, default="test")
    e.add_argument("--checkpoint", nargs="+", choices=experiments.CHECKPOINTS, default=list(experiments.CHECKPOINTS))
    e.add_argument("--n", type=_positive, default=None, help="first n items of the fold (default: the preset's)")
    e.set_defaults(func=evaluate_cmd)
    u = sub.add_parser("run", help="the whole pipeline: metric, four trainings, evaluation, table",
                       description="From nothing to a results table: the metric stores, one training per "
                                   "variant and seed, the evaluation of best and last checkpoints on the test "
                                   "fold, and the decision rule (PNP vs the others on the JTFS distance). Every "
                                   "stage resumes.")
    _training_options(u)
    u.add_argument("--variants", nargs="+", choices=sorted(experiments.VARIANTS),
                   default=list(experiments.DEFAULT_VARIANTS))
    u.add_argument("--seeds", nargs="+", type=int, default=[0])
    u.add_argument("--results", default=None, help="results file (default: ROOT/runs/SYNTH_SCALE/results.json)")
    u.add_argument("--workers", type=_positive, default=None,
                   help="worker processes of the metric precomputation (default: one per CPU)")
    u.add_argument("--export", default=None, metavar="DIR",
                   help="also copy each run's best encoder, weights only, to DIR (for listening without training)")
    u.set_defaults(func=run_cmd)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
