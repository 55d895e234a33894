"""Benchmark: render cost of both synthesizers at each scale, measured side by side in one run.

Prints, per (synth, scale), the median time per item of a batched render (batch 16),
of a single-item render, and of the d-column forward-mode Jacobian of the render,
with the ratios batched/single and Jacobian/forward.  Writes
``data/results/bench_synth.json`` with provenance.

Usage: ``python benchmarks/synth_speed.py [--repeats 5] [--out data/results/bench_synth.json]``
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.func import jacfwd

from pnpbook import config, data
from pnpbook.provenance import provenance, write_atomic
from pnpbook.synth import SYNTHS


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="data/results/bench_synth.json")
    args = ap.parse_args()
    rows = []
    for name in SYNTHS:
        for scale in config.SCALES:
            s = SYNTHS[name].at(scale)
            theta = torch.from_numpy(data.fold(s, "val", n=16).theta.copy()).float()
            batch = median_time(lambda: s(theta, validate="off"), args.repeats) / len(theta)
            single = median_time(lambda: s(theta[0], validate="off"), args.repeats)
            jac = median_time(lambda: jacfwd(lambda t: s(t, validate="off"))(theta[0]), args.repeats)
            rows.append({"synth": name, "scale": scale, "sr": s.sr, "n_samples": s.n_samples,
                         "s_per_item_batched": batch, "s_per_item_single": single, "s_per_jacobian": jac,
                         "batched_over_single": batch / single, "jacobian_over_forward": jac / single})
            print(f"{name:8s} {scale:6s} N={s.n_samples:6d}  batched {batch * 1e3:8.2f} ms/item  "
                  f"single {single * 1e3:8.2f} ms  jacfwd {jac * 1e3:8.2f} ms  "
                  f"batched/single {batch / single:5.2f}  jacfwd/forward {jac / single:5.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "synth_speed", "repeats": args.repeats, "rows": rows, "provenance": provenance()}
    write_atomic(out, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
