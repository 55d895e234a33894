"""The command-line tool: ``python -m pnpbook SUBCOMMAND ...``.

Subcommands
-----------
render
    Write a fold (or its first n items) to WAV files, with a parameter table
    and a manifest.
calibrate
    Choose the log compression ``c`` of Phi for a preset (1 / median S) and
    write it, with its check on a second subset, to ``data/results/``.

Later issues add ``precompute``, ``train``, ``evaluate`` and ``run``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import soundfile as sf
import torch
from tqdm import tqdm

from pnpbook import config, data, jtfs
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
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
