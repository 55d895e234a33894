"""Benchmark: render cost of both synthesizers at each scale, measured side by side in one run.

Prints, per (synth, scale), the median time per item of a batched render (batch 16),
of a single-item render, and of the d-column forward-mode Jacobian of the render,
with the ratios batched/single and Jacobian/forward.  Then, for the drum, the
direct modal sum (a (B, modes, N) array of ``exp(-a t) sin(Omega t)``, written
here as the reference) against pnpbook's factorised sum, forward and ``jacfwd``,
with their ratio and largest difference.  Writes ``data/results/bench_synth.json``
with provenance.

Usage: ``python benchmarks/synth_speed.py [--repeats 5] [--out data/results/bench_synth.json]``
"""
from __future__ import annotations

import argparse

import torch
from torch.func import jacfwd

from common import median_time, write_result

from pnpbook import config, data
from pnpbook.synth import SYNTHS, ftm, ftm_modes, ftm_time


def ftm_direct(theta: torch.Tensor, sr: float, n_samples: int) -> torch.Tensor:
    """The drum as the direct modal sum over a (B, modes, N) array (float64): the reference."""
    modes = ftm_modes(theta, sr)
    t = ftm_time(sr, n_samples)
    ringing = torch.exp(-modes["a"].unsqueeze(-1) * t) * torch.sin(modes["Omega"].unsqueeze(-1) * t)
    y = torch.einsum("bm,bmn->bn", modes["amp"] * modes["kept"], ringing)
    return y / y.abs().amax(dim=-1, keepdim=True)


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
    factorised = []
    for scale in config.SCALES:
        s = SYNTHS["ftm"].at(scale)
        theta = torch.from_numpy(data.fold(s, "val", n=16).theta.copy())
        diff = float((ftm_direct(theta, s.sr, s.n_samples) - ftm(theta, s.sr, s.n_samples)).abs().max())
        row = {"scale": scale, "n_samples": s.n_samples, "max_abs_difference": diff}
        for label, fn in (("direct", ftm_direct), ("factorised", ftm)):
            row[f"{label}_s_per_item"] = median_time(lambda: fn(theta, s.sr, s.n_samples), args.repeats) / len(theta)
            row[f"{label}_s_per_jacobian"] = median_time(
                lambda: jacfwd(lambda t: fn(t, s.sr, s.n_samples))(theta[:1]), args.repeats)
        factorised.append(row)
        print(f"ftm {scale:6s} direct/factorised: forward {row['direct_s_per_item'] / row['factorised_s_per_item']:6.1f}x"
              f"  jacfwd {row['direct_s_per_jacobian'] / row['factorised_s_per_jacobian']:6.1f}x"
              f"  max |difference| {diff:.1e}")
    result = {"benchmark": "synth_speed", "repeats": args.repeats, "rows": rows, "ftm_direct_vs_factorised": factorised}
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
