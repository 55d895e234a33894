"""Benchmark: pnpbook's JTFS against kymatio main's, side by side, each in a fresh subprocess.

Settings: the paper preset for the drum (2**16 samples, J = 13, Q = (12, 1), J_fr = 3, Q_fr = 1,
F = 2, global time averaging), float32.  For each implementation: forward time at batch 1 and 4,
forward + backward time at batch 1, and peak memory (peak RSS minus the RSS after imports and
building the operator).  Before any ratio counts, both must compute the same thing: coefficient
counts within 10 %, and a Spearman correlation of at least 0.95 between their pairwise distances
(Phi = log1p(S / median S), kymatio's coefficients re-expressed as time means as in
tests/test_jtfs_oracle.py) over 20 drum sounds (190 pairs).

kymatio main lives only in the oracle environment (tests/oracle/README.md); pass its Python with
``--oracle-python``.  Writes ``data/results/bench_jtfs.json`` with provenance.

Usage: ``python benchmarks/jtfs_speed.py --oracle-python /tmp/oracle-venv/bin/python``
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import median_time, peak_rss_mib, write_result

SETTINGS = {"J": 13, "Q": [12, 1], "J_fr": 3, "Q_fr": 1, "F": 2}


def worker(kind: str, signals_path: str, out_path: str, repeats: int) -> None:
    """Runs in a fresh process: build, measure, and save S of every signal and the timings."""
    import torch

    x = torch.from_numpy(np.load(signals_path)["x"]).float()
    n = x.shape[-1]
    if kind == "ours":
        from pnpbook.jtfs import JTFS, JTFSConfig

        op = JTFS(JTFSConfig(N=n, J=SETTINGS["J"], Q=tuple(SETTINGS["Q"]), J_fr=SETTINGS["J_fr"],
                             Q_fr=SETTINGS["Q_fr"], F=SETTINGS["F"]))
        forward = op
        gains = None
    else:
        import kymatio_main

        tfs, forward = kymatio_main.build(n, SETTINGS)
        paths = tfs(x[:1])
        n_pad = int(tfs._N_padded) if hasattr(tfs, "_N_padded") else None
        psi2_j = [int(p["j"]) for p in tfs.psi2_f]
        gains = []
        for p in paths:
            if p["order"] == 0 and len(p["n"]) == 0:
                gains.append(("S0", n_pad))
            elif len(p["n"]) == 2:  # first order: (n1, n_fr)
                gains.append(("S1", n_pad / 2.0 ** SETTINGS["J"]))
            else:  # second order: (n1, n2, n_fr)
                gains.append(("S2", n_pad / 2.0 ** psi2_j[p["n"][1]]))
    base = peak_rss_mib()
    S = torch.cat([forward(part) for part in x.split(4)]).double().numpy()
    one, four = x[:1], x[:4]
    t1 = median_time(lambda: forward(one), repeats)
    t4 = median_time(lambda: forward(four), repeats)

    def fwd_bwd():
        v = one.clone().requires_grad_()
        forward(v).sum().backward()

    tb = median_time(fwd_bwd, repeats)
    result = {"P": int(S.shape[1]), "forward_b1_s": t1, "forward_b4_s": t4, "forward_backward_b1_s": tb,
              "peak_mib_above_baseline": peak_rss_mib() - base, "threads": torch.get_num_threads()}
    np.savez(out_path, S=S, gains=np.array([g for _, g in gains]) if gains else np.ones(S.shape[1]),
             result=json.dumps(result))


def spearman_of_distances(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    compress = lambda S: np.log1p(np.abs(S) / np.median(np.abs(S)))
    a, b = compress(a), compress(b)
    pairs = [(i, j) for i in range(len(a)) for j in range(i + 1, len(a))]
    return float(spearmanr([np.linalg.norm(a[i] - a[j]) for i, j in pairs],
                           [np.linalg.norm(b[i] - b[j]) for i, j in pairs])[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--oracle-python", default="/tmp/oracle-venv/bin/python")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="data/results/bench_jtfs.json")
    ap.add_argument("--worker", choices=["ours", "kymatio"], help=argparse.SUPPRESS)
    ap.add_argument("--signals", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.signals, args.result, args.repeats)
        return
    import torch

    from pnpbook import data
    from pnpbook.synth import SYNTHS

    synth = SYNTHS["ftm"].at("paper")
    theta = torch.from_numpy(data.fold(synth, "test", n=20).theta.copy())
    with tempfile.TemporaryDirectory() as tmp:
        signals = Path(tmp) / "x.npz"
        np.savez(signals, x=synth(theta).numpy())
        runs = {}
        for kind, python in (("ours", sys.executable), ("kymatio", args.oracle_python)):
            out = Path(tmp) / f"{kind}.npz"
            subprocess.run([python, __file__, "--worker", kind, "--signals", str(signals), "--result", str(out),
                            "--repeats", str(args.repeats)], check=True, cwd=Path(__file__).resolve().parents[1])
            z = np.load(out)
            runs[kind] = {"S": z["S"] / z["gains"], "timing": json.loads(str(z["result"]))}
    ours, kym = runs["ours"], runs["kymatio"]
    count_ok = abs(ours["timing"]["P"] / kym["timing"]["P"] - 1) <= 0.10
    rho = spearman_of_distances(ours["S"], kym["S"])
    same = count_ok and rho >= 0.95
    ratios = {k: kym["timing"][k] / ours["timing"][k] for k in ("forward_b1_s", "forward_b4_s", "forward_backward_b1_s")}
    memory_ratio = ours["timing"]["peak_mib_above_baseline"] / max(kym["timing"]["peak_mib_above_baseline"], 1e-9)
    print(f"coefficients: ours {ours['timing']['P']}, kymatio main {kym['timing']['P']} (within 10 %: {count_ok})")
    print(f"Spearman of pairwise distances over 190 pairs: {rho:.3f} (>= 0.95: {rho >= 0.95})")
    for k, r in ratios.items():
        print(f"{k:22s} ours {ours['timing'][k]:7.3f} s  kymatio main {kym['timing'][k]:7.3f} s  "
              f"speed-up {r:5.1f}x" + ("" if same else "  (does not count: checks failed)"))
    print(f"peak memory above baseline: ours {ours['timing']['peak_mib_above_baseline']:.0f} MiB, kymatio main "
          f"{kym['timing']['peak_mib_above_baseline']:.0f} MiB (ratio {memory_ratio:.2f})")
    result = {"benchmark": "jtfs_speed", "settings": SETTINGS, "n_samples": synth.n_samples, "checks_pass": same,
              "spearman": rho, "ours": ours["timing"], "kymatio_main": kym["timing"], "speedups": ratios,
              "memory_ratio": memory_ratio}
    print(f"wrote {write_result(args.out, result)}")


if __name__ == "__main__":
    main()
