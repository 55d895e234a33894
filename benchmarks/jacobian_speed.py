"""Benchmark: the drum's 5-parameter PNP Jacobian, pnpbook against kymatio main, each in a fresh subprocess.

The map is ``nu -> Phi(g(h^-1(nu)))`` at the paper preset of the drum (2**16 samples at
22050 Hz; JTFS with J = 13, Q = (12, 1), J_fr = 3, Q_fr = 1, F = 2, global time
averaging), in float32, with ``Phi = log1p(c S)`` and the preset's calibrated c
(:mod:`pnpbook.config`; c does not change the cost).  Both sides differentiate the whole
map, synthesizer included, with pnpbook's synthesizer and train-fold scaler:
``pnpbook.synth``, ``pnpbook.scaling`` and ``pnpbook.data`` import no kymatio, so the
kymatio worker imports them from this checkout next to kymatio main (which cannot share
an interpreter with pnpbook's JTFS, see ``tests/oracle/README.md``).

* ours: ``pnpbook.metric.jacobian`` (``vmap`` over the batch of ``jacfwd``) of
  ``pnpbook.metric.pnp_forward``;
* kymatio main: ``torch.func.jacfwd`` of the same map with kymatio main's JTFS, one
  sample at a time, its modulus made usable by ``torch.func``
  (:func:`kymatio_main.make_modulus_functorch_compatible`).

For each, after a warm-up call of both, ``--repeats`` alternating timings of the forward map
on the batch (synthesizer + JTFS + Phi) and of the Jacobian of the batch: their medians, the
Jacobian per sample, and the median ratio Jacobian / forward of the pairs; and the peak
memory (peak RSS minus the RSS after imports and building).  Checks, printed as True/False:
our Jacobian costs at most 1.5 (1 + d) forward passes of the same batch and is at least 5
times faster than kymatio main's; both Jacobians are finite with full rank d (d singular
values above :func:`pnpbook.metric.noise_floor`).  Writes ``data/results/bench_jacobian.json``
with provenance.

Usage: ``python benchmarks/jacobian_speed.py --oracle-python /tmp/oracle-venv/bin/python``
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import peak_rss_mib, wall_time, write_result

ROOT = Path(__file__).resolve().parents[1]


def worker(kind: str, inputs_path: str, out_path: str, repeats: int) -> None:
    """Runs in a fresh process: build, time the forward map and the Jacobian, save J and the timings."""
    sys.path.insert(0, str(ROOT))  # pnpbook's synthesizer and scaler, also in the oracle environment
    import torch

    from pnpbook import data
    from pnpbook.synth import SYNTHS

    inputs = np.load(inputs_path)
    settings = json.loads(str(inputs["settings"]))
    c = float(inputs["c"])
    synth = SYNTHS["ftm"].at("paper")
    scaler = data.train_scaler(synth)
    nu = scaler(torch.from_numpy(inputs["theta"])).float()
    if kind == "ours":
        from pnpbook.jtfs import operator, phi
        from pnpbook.metric import jacobian, pnp_forward

        op = operator(synth)  # the preset's JTFS, whose settings main() passes to kymatio main

        def forward(v):
            return phi(op(synth(scaler.inverse(v))), c)

        def jac():
            return jacobian(pnp_forward(synth, op, scaler, c), nu, chunk=len(nu))
    else:
        import kymatio_main
        from torch.func import jacfwd

        kymatio_main.make_modulus_functorch_compatible()
        _, scattering = kymatio_main.build(synth.n_samples, settings)

        def forward(v):
            return torch.log1p(c * scattering(synth(scaler.inverse(v))))

        def jac():
            return torch.stack([jacfwd(lambda u: forward(u.unsqueeze(0)).squeeze(0))(v) for v in nu])
    base = peak_rss_mib()
    forward(nu)  # warm-up calls; the Jacobian is kept
    J = jac()
    # forward and Jacobian alternate, so that each pair sees the same machine conditions
    pairs = [(wall_time(lambda: forward(nu)), wall_time(jac)) for _ in range(repeats)]
    t_forward = statistics.median(f for f, _ in pairs)
    t_jacobian = statistics.median(j for _, j in pairs)
    result = {"P": int(J.shape[1]), "d": int(J.shape[2]), "batch": len(nu), "forward_s": t_forward,
              "jacobian_s": t_jacobian, "jacobian_s_per_sample": t_jacobian / len(nu),
              "jacobian_over_forward": statistics.median(j / f for f, j in pairs),
              "peak_mib_above_baseline": peak_rss_mib() - base, "repeats": repeats,
              "threads": torch.get_num_threads()}
    np.savez(out_path, J=J.detach().numpy(), result=json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle-python", default="/tmp/oracle-venv/bin/python")
    ap.add_argument("--batch", type=int, default=2, help="samples (from the paper preset's test fold)")
    ap.add_argument("--repeats", type=int, default=5, help="timed pairs of ours, after a warm-up")
    ap.add_argument("--oracle-repeats", type=int, default=1, help="timed pairs of kymatio main's, after a warm-up")
    ap.add_argument("--out", default="data/results/bench_jacobian.json")
    ap.add_argument("--worker", choices=["ours", "kymatio"], help=argparse.SUPPRESS)
    ap.add_argument("--inputs", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.inputs, args.result, args.repeats)
        return
    import torch

    from pnpbook import config, data, jtfs
    from pnpbook.metric import noise_floor, spectrum
    from pnpbook.synth import SYNTHS

    synth = SYNTHS["ftm"].at("paper")
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in config.preset("ftm", "paper")["jtfs"].items()}
    c = jtfs.preset_c(synth)
    fold = data.fold(synth, "test", n=args.batch)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.npz"
        np.savez(inputs, theta=fold.theta, settings=json.dumps(settings), c=c)
        for kind, python, repeats in (("ours", sys.executable, args.repeats),
                                      ("kymatio", args.oracle_python, args.oracle_repeats)):
            out = Path(tmp) / f"{kind}.npz"
            subprocess.run([python, __file__, "--worker", kind, "--inputs", str(inputs), "--result", str(out),
                            "--repeats", str(repeats)], check=True, cwd=ROOT)
            z = np.load(out)
            J = torch.from_numpy(z["J"])
            timing = json.loads(str(z["result"]))
            timing["finite"] = bool(torch.isfinite(J).all())
            timing["full_rank"] = timing["finite"] and bool((spectrum(J) > noise_floor(J)[:, None]).all())
            runs[kind] = timing
    ours, kym = runs["ours"], runs["kymatio"]
    d = ours["d"]
    speedup = kym["jacobian_s"] / ours["jacobian_s"]
    checks = {"passes_at_most_1.5_(1+d)": ours["jacobian_over_forward"] <= 1.5 * (1 + d),
              "speedup_at_least_5": speedup >= 5, "full_rank": ours["full_rank"] and kym["full_rank"]}
    rows = [("forward of the batch (s)", "forward_s", ".3f"), ("Jacobian of the batch (s)", "jacobian_s", ".3f"),
            ("Jacobian per sample (s)", "jacobian_s_per_sample", ".3f"),
            ("Jacobian / forward (passes)", "jacobian_over_forward", ".1f"),
            ("peak memory above baseline (MiB)", "peak_mib_above_baseline", ".0f")]
    print(f"drum, paper preset, batch {args.batch}, d = {d}; coefficients: ours {ours['P']}, kymatio main {kym['P']}")
    print(f"{'':34s}{'ours':>12s}{'kymatio main':>14s}")
    for label, key, fmt in rows:
        print(f"{label:34s}{ours[key]:>12{fmt}}{kym[key]:>14{fmt}}")
    print(f"Jacobian speed-up {speedup:.1f}x (>= 5: {checks['speedup_at_least_5']}); ours costs "
          f"{ours['jacobian_over_forward']:.1f} forward passes (<= 1.5 (1 + d) = {1.5 * (1 + d):g}: "
          f"{checks['passes_at_most_1.5_(1+d)']}); finite and full rank: ours {ours['full_rank']}, "
          f"kymatio main {kym['full_rank']}")
    result = {"benchmark": "jacobian_speed", "synth": "ftm", "scale": "paper", "settings": settings,
              "n_samples": synth.n_samples, "sr": synth.sr, "c": c, "test_fold_ids": [str(i) for i in fold.ids],
              "ours": ours, "kymatio_main": kym,
              "jacobian_speedup": speedup, "checks": checks}
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
