"""Benchmark: `python -m pnpbook precompute` throughput per preset, and its estimate against a real run.

For each preset given (default: every (synth, scale) whose c is calibrated), `--estimate` times a few
samples in a fresh process and reports samples per second.  At the tiny preset, a 200-sample run is then
timed end to end (fresh process, worker start-up included) and printed against the estimate's prediction.
The paper's 100,000 FTM Jacobians are extrapolated from the paper preset's rate.  Writes
``data/results/bench_precompute.json`` with provenance.

Usage: ``python benchmarks/precompute_speed.py [--presets ftm/tiny amchirp/tiny ftm/paper]``
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parents[1]
PAPER_FTM_SAMPLES = 100_000


def cli(*args: str) -> tuple[str, float]:
    """Run ``python -m pnpbook precompute ARGS`` in a fresh process: (stdout, wall seconds)."""
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "pnpbook", "precompute", *args], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return run.stdout, time.perf_counter() - t0


def estimate(synth: str, scale: str, n: int, workers: int, timed: int) -> dict[str, float]:
    out, _ = cli("--synth", synth, "--scale", scale, "--n", str(n), "--workers", str(workers), "--estimate",
                 "--estimate-samples", str(timed))
    number = lambda pattern: float(re.search(pattern, out).group(1))
    per_sample = number(r"per sample: ([\d.]+) s")
    return {"startup_s": number(r"start-up \(build, first Jacobian\): ([\d.]+) s"), "per_sample_s": per_sample,
            "samples_per_s": workers / per_sample, "per_sample_bytes": int(number(r"([\d]+) bytes on disk"))}


def main() -> None:
    from pnpbook import config

    calibrated = [f"{s}/{sc}" for s in ("amchirp", "ftm") for sc in config.SCALES if config.preset(s, sc)["c"]]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=calibrated, help="SYNTH/SCALE (default: the calibrated ones)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--timed", type=int, default=4, help="samples timed per estimate")
    ap.add_argument("--run-n", type=int, default=200, help="samples of the timed end-to-end run at tiny")
    ap.add_argument("--out", default="data/results/bench_precompute.json")
    args = ap.parse_args()
    rows = {}
    for preset in args.presets:
        synth, scale = preset.split("/")
        row = estimate(synth, scale, args.run_n, args.workers, args.timed)
        print(f"{preset:13s} {row['samples_per_s']:6.2f} samples/s with {args.workers} workers "
              f"({row['per_sample_s']:.3f} s per sample per worker, start-up {row['startup_s']:.1f} s, "
              f"{row['per_sample_bytes']} B per sample)")
        if scale == "tiny":
            predicted = row["startup_s"] + args.run_n * row["per_sample_s"] / args.workers
            with tempfile.TemporaryDirectory() as tmp:
                _, wall = cli("--synth", synth, "--scale", scale, "--n", str(args.run_n), "--workers",
                              str(args.workers), "--out", str(Path(tmp) / "m.h5"))
            row.update({"run_n": args.run_n, "predicted_s": predicted, "measured_s": wall})
            print(f"{'':13s} {args.run_n}-sample run: predicted {predicted:.1f} s, measured {wall:.1f} s "
                  f"(measured / predicted {wall / predicted:.2f}; the run also pays Python and worker start-up)")
        rows[preset] = row
    result = {"benchmark": "precompute_speed", "workers": args.workers, "presets": rows}
    if "ftm/paper" in rows:
        hours = PAPER_FTM_SAMPLES / rows["ftm/paper"]["samples_per_s"] / 3600
        result["paper_ftm_100k_hours"] = hours
        print(f"the paper's {PAPER_FTM_SAMPLES:,} FTM samples at the paper preset here: {hours:.1f} h")
    print(f"wrote {write_result(ROOT / args.out, result)}")


if __name__ == "__main__":
    main()
