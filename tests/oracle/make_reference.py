"""Write the kymatio-main JTFS golden files ``tests/data/kymatio_jtfs_tiny_{synth}.npz``.

Runs in the main environment (it imports pnpbook) and drives
``kymatio_jtfs.py`` in the oracle environment through a subprocess; see
``tests/oracle/README.md``.  Usage, from the repository root::

    python tests/oracle/make_reference.py [--oracle-python /tmp/oracle-venv/bin/python]

Sounds (tiny preset, theta chosen deterministically from the test fold):

* ``random``: the first 16 test items;
* ``near``: the next 8 test items, each followed by 3 neighbours at
  ``0.01 <= ||dnu|| <= 0.05`` (random direction in nu, clipped to [-1, 1],
  mapped back with the train scaler's inverse);
* ``reversal`` (amchirp only): the next 12 test items, each followed by its time
  reversal (same theta, ``reversed`` True: the signal is flipped in time).

The golden file stores theta, not the signals: a test re-renders them with
pnpbook in float64 (``x.flip(-1)`` where ``reversed``) and can check them
against the stored ``x_energy``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from pnpbook import data
from pnpbook.provenance import provenance, write_atomic
from pnpbook.synth import SYNTHS

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
SCALE = "tiny"
#: The tiny JTFS preset shared by both synths (time averaging is global).
SETTINGS: dict[str, int] = {"J": 10, "Q1": 8, "Q2": 1, "J_fr": 3, "Q_fr": 1, "F": 2}
SEEDS: dict[str, int] = {"amchirp": 20240301, "ftm": 20240302}
N_RANDOM, N_NEAR_BASE, N_NEIGHBOURS, N_REVERSAL = 16, 8, 3, 12
DNU_RANGE = (0.01, 0.05)
#: Per-coefficient arrays copied from the oracle's output.
COEF_KEYS = ("order", "order_list", "spin", "n_fr", "j_fr", "n1", "n2", "n1_actual", "family")
FILTER_KEYS = ("psi1_xi", "psi1_sigma", "psi1_j", "psi2_xi", "psi2_sigma", "psi2_j", "psi_fr_xi",
               "psi_fr_sigma", "psi_fr_j", "phi_sigma", "phi_j", "phi_fr_sigma", "phi_fr_j")


def neighbours(nu0: np.ndarray, rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` points at a random distance in :data:`DNU_RANGE` from ``nu0`` (d,), inside [-1, 1].

    A random direction and radius are drawn and the point clipped to [-1, 1];
    a draw whose clipped step falls below the range is drawn again.

    Returns
    -------
    nu : ndarray, shape (k, d)
    norm : ndarray, shape (k,)
        The realised ``||nu - nu0||``.
    """
    out = []
    while len(out) < k:
        u = rng.standard_normal(nu0.shape)
        step = rng.uniform(*DNU_RANGE) * u / np.linalg.norm(u)
        nu = np.clip(nu0 + step, -1.0, 1.0)
        if DNU_RANGE[0] <= np.linalg.norm(nu - nu0) <= DNU_RANGE[1]:
            out.append(nu)
    nu = np.stack(out)
    return nu, np.linalg.norm(nu - nu0, axis=1)


def sound_sets(name: str) -> dict[str, np.ndarray]:
    """theta (n, d) and the row labels of one synth's golden file."""
    synth = SYNTHS[name].at(SCALE)
    scaler = data.train_scaler(synth)
    n_fold = N_RANDOM + N_NEAR_BASE + (N_REVERSAL if name == "amchirp" else 0)
    fold = data.fold(synth, "test", n=n_fold)
    rng = np.random.Generator(np.random.PCG64(SEEDS[name]))
    rows: list[tuple] = []  # (theta, group, base, reversed, dnu_norm, fold_id)
    for i in range(N_RANDOM):
        rows.append((fold.theta[i], "random", -1, False, np.nan, fold.ids[i]))
    for i in range(N_RANDOM, N_RANDOM + N_NEAR_BASE):
        base = len(rows)
        rows.append((fold.theta[i], "near", -1, False, np.nan, fold.ids[i]))
        nu0 = scaler(torch.from_numpy(np.array(fold.theta[i]))).numpy()
        nu, norm = neighbours(nu0, rng, N_NEIGHBOURS)
        theta = scaler.inverse(torch.from_numpy(nu)).numpy()
        rows += [(t, "near", base, False, r, "") for t, r in zip(theta, norm)]
    if name == "amchirp":
        for i in range(N_RANDOM + N_NEAR_BASE, n_fold):
            rows.append((fold.theta[i], "reversal", -1, False, np.nan, fold.ids[i]))
            rows.append((fold.theta[i], "reversal", len(rows) - 1, True, np.nan, fold.ids[i]))
    theta, group, base, rev, dnu, ids = zip(*rows)
    return {"theta": np.stack(theta).astype(np.float64), "group": np.array(group),
            "base": np.array(base, dtype=np.int16), "reversed": np.array(rev), "dnu_norm": np.array(dnu),
            "fold_id": np.array(ids)}


def render(name: str, theta: np.ndarray, reversed_: np.ndarray) -> np.ndarray:
    """Float64 signals (n, N) of the tiny preset, time-reversed where ``reversed_``."""
    x = SYNTHS[name].at(SCALE)(torch.from_numpy(theta), validate="raise")
    rev = torch.from_numpy(reversed_)[:, None]
    return torch.where(rev, x.flip(-1), x).numpy()


def run_oracle(oracle_python: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """kymatio main's JTFS of ``x`` (n, N) through ``kymatio_jtfs.py`` in the oracle environment."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "signals.npz", Path(tmp) / "jtfs.npz"
        np.savez(inp, signals=x, **SETTINGS)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        subprocess.run([oracle_python, str(HERE / "kymatio_jtfs.py"), str(inp), str(out)],
                       check=True, cwd=tmp, env=env)
        with np.load(out) as f:
            return {k: f[k] for k in f.files}


def summary(golden: dict[str, np.ndarray]) -> dict[str, object]:
    """Counts per family, energy shares over the random sounds, spin asymmetry of the reversal pairs."""
    fam, s = golden["family"], golden["S"].astype(np.float64)
    families = list(dict.fromkeys(fam.tolist()))
    energy = s**2
    random = golden["group"] == "random"
    total = energy[random].sum(1)
    out: dict[str, object] = {
        "P": int(s.shape[1]), "count": {f: int((fam == f).sum()) for f in families},
        "energy_share_random": {f: float((energy[random][:, fam == f].sum(1) / total).mean())
                                for f in families}}
    if (golden["group"] == "reversal").any():
        up, down = energy[:, fam == "psi_psi_spin+1"].sum(1), energy[:, fam == "psi_psi_spin-1"].sum(1)
        asym = (up - down) / (up + down)
        rows = golden["group"] == "reversal"
        out["asymmetry_original"] = asym[rows & ~golden["reversed"]].round(4).tolist()
        out["asymmetry_reversed"] = asym[rows & golden["reversed"]].round(4).tolist()
    return out


def make(name: str, oracle_python: str) -> Path:
    """Render, run the oracle and write one synth's golden file."""
    synth = SYNTHS[name].at(SCALE)
    sets = sound_sets(name)
    x = render(name, sets["theta"], sets["reversed"])
    oracle = run_oracle(oracle_python, x)
    info = json.loads(str(oracle["info"]))
    golden = {
        "synth": np.array(name), "scale": np.array(SCALE), "sr": np.float64(synth.sr),
        "n_samples": np.int64(synth.n_samples), **sets,
        "x_energy": (x**2).sum(1), "S": oracle["S"].astype(np.float32),
        **{k: oracle[k] for k in COEF_KEYS + FILTER_KEYS},
        **{k: np.int64(v) for k, v in SETTINGS.items()}, "T": np.array("global"),
        **{k: np.int64(info[k]) for k in ("N_padded", "pad_left", "pad_right", "N_padded_fr")},
        "time_padding_mode": np.array(info["time_padding_mode"]),
        "provenance": np.array(json.dumps({
            "oracle": info, "generator": provenance(), "seed": SEEDS[name],
            "sets": {"random": N_RANDOM, "near_bases": N_NEAR_BASE, "neighbours_per_base": N_NEIGHBOURS,
                     "dnu_range": DNU_RANGE, "reversal": N_REVERSAL if name == "amchirp" else 0}})),
    }
    path = DATA / f"kymatio_jtfs_{SCALE}_{name}.npz"

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: savez would append ".npz" to a path
            np.savez_compressed(f, **golden)

    write_atomic(path, save)
    print(json.dumps({"file": str(path), "bytes": path.stat().st_size,
                      "oracle_seconds_float64": round(info["run_seconds_float64"], 1),
                      **summary(golden)}, indent=1))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--oracle-python", default="/tmp/oracle-venv/bin/python",
                        help="python of the oracle environment (kymatio main through scrapl-loss)")
    parser.add_argument("--synth", nargs="*", default=["amchirp", "ftm"], choices=sorted(SYNTHS))
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    for name in args.synth:
        make(name, args.oracle_python)


if __name__ == "__main__":
    main()
