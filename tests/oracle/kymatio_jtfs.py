"""Oracle: kymatio main's joint time-frequency scattering (JTFS) of a batch of signals.

Runs ONLY in the oracle environment (see ``tests/oracle/README.md``): kymatio
main (0.4.0.dev0) is importable only through the ``scrapl-loss`` package, which
appends its bundled copy of kymatio to ``sys.path`` and so cannot share an
interpreter with PyPI's kymatio 0.3.0.  ``make_reference.py`` (main
environment) drives this script through a subprocess.

Input ``.npz``: ``signals`` float64 (n, N) and the scalar settings ``J``,
``Q1``, ``Q2``, ``J_fr``, ``Q_fr``, ``F`` (time averaging is always global).

Output ``.npz``:

* ``S`` float64 (n, P): every path's coefficient, in kymatio's list order;
* per coefficient (P,): ``order`` (scattering order 0/1/2, as kymatio's
  ``meta()``), ``order_list`` (the ``order`` field of kymatio's list output,
  which is one less for first- and second-order paths), ``spin`` (sign of
  the frequential filter's centre frequency; 0 for S0 and low-pass paths),
  ``n_fr``, ``j_fr``, ``n1``, ``n2`` (kymatio's indices; -1 where absent),
  ``n1_actual`` (the first-order filter index the coefficient is centred on;
  differs from ``n1`` on spin-0 paths, see README) and ``family``;
* filter tables: ``psi1_xi``, ``psi1_sigma``, ``psi1_j``, the same for
  ``psi2``, ``psi_fr`` (the frequential filters in kymatio's n_fr order) and
  the scalars ``phi_sigma``, ``phi_j``, ``phi_fr_sigma``, ``phi_fr_j`` (the
  frequential low-pass of width F);
* ``info``: a JSON string with versions, settings, padding and timings.
"""
from __future__ import annotations

import argparse
import inspect
import json
import platform
import time
from pathlib import Path

import numpy as np
import scrapl  # noqa: F401  (puts the bundled kymatio main on sys.path)
import kymatio
import torch
from kymatio.scattering1d.frontend.base_frontend import ScatteringBase1D, TimeFrequencyScatteringBase
from kymatio.torch import TimeFrequencyScattering

SETTING_KEYS = ("J", "Q1", "Q2", "J_fr", "Q_fr", "F")


class ZeroPadding:
    """kymatio's backend with the time padding switched from 'reflect' (its default) to zeros.

    kymatio main caps its padded length at 2**floor(log2(3 N - 2)), so at N = 2**13 it pads
    4096 samples on each side: a reflection that long mirrors half of the signal, a time-reversed
    copy that puts an up-chirp's joint energy on both spins (asymmetry 0.01 instead of 0.80 for a
    Gaussian-windowed chirp).  The paper's recipe (spec 15.3) and pnpbook use zero padding.
    """

    def __init__(self, backend: object):
        self._backend = backend

    def __getattr__(self, name: str) -> object:
        return getattr(self._backend, name)

    def pad(self, x: torch.Tensor, pad_left: int, pad_right: int) -> torch.Tensor:
        return self._backend.pad(x, pad_left, pad_right, mode="constant")


def build(n_samples: int, settings: dict[str, int]) -> TimeFrequencyScattering:
    """kymatio main's JTFS with global time averaging, zero padding and 'time' format, list output."""
    s = settings
    jtfs = TimeFrequencyScattering(shape=(n_samples,), J=s["J"], Q=(s["Q1"], s["Q2"]), J_fr=s["J_fr"],
                                   Q_fr=s["Q_fr"], F=s["F"], T="global", format="time", out_type="list")
    jtfs.backend = ZeroPadding(jtfs.backend)
    return jtfs


def _filter_arrays(jtfs: TimeFrequencyScattering) -> list[np.ndarray]:
    """Every filter level as float64 numpy, in the order kymatio numbers its buffers."""
    fr_low, fr_bank = jtfs.filters_fr
    banks = [[jtfs.phi_f], jtfs.psi1_f, jtfs.psi2_f, [fr_low], fr_bank]
    return [np.asarray(level, dtype=np.float64) for bank in banks for f in bank for level in f["levels"]]


def to_float64(jtfs: TimeFrequencyScattering) -> None:
    """Replace kymatio's float32 filter buffers by float64 ones from the same design.

    kymatio casts its numpy (float64) filters to float32 buffers.  The design is
    deterministic, so it is recomputed in numpy and every buffer is replaced by
    its float64 original, after checking that the float32 buffer is exactly that
    original rounded (which proves the traversal order matches kymatio's).
    """
    ScatteringBase1D.create_filters(jtfs)
    TimeFrequencyScatteringBase.create_filters(jtfs)
    originals = _filter_arrays(jtfs)
    buffers = dict(jtfs.named_buffers())
    if len(buffers) != len(originals):
        raise RuntimeError(f"{len(buffers)} buffers but {len(originals)} filter levels")
    for i, a in enumerate(originals):
        old = buffers[f"tensor{i}"].numpy().ravel()
        if not np.array_equal(old, a.astype(np.float32)):
            raise RuntimeError(f"buffer tensor{i} is not the float32 rounding of filter level {i}")
        jtfs.register_buffer(f"tensor{i}", torch.from_numpy(a.copy()).view(-1, 1))
    jtfs.load_filters()


def family(order: int, spin: int) -> str:
    """Path family label from the scattering order and kymatio's spin."""
    if order == 0:
        return "S0"
    if order == 1:
        return {0: "S1_phi_fr", 1: "S1_psi_fr"}[spin]
    return {0: "psi_phi_fr", 1: "psi_psi_spin+1", -1: "psi_psi_spin-1"}[spin]


def coefficient_table(paths: list[dict], jtfs: TimeFrequencyScattering) -> dict[str, np.ndarray]:
    """Per-coefficient metadata of kymatio's list output (one coefficient per path).

    ``meta()`` lists the same paths sorted by key; the list output is in
    computation order, which is the order of ``S``.
    """
    meta = jtfs.meta()
    order_of = dict(zip(meta["key"], (int(o) for o in meta["order"])))
    keys = [p["n"] for p in paths]
    if sorted(keys) != sorted(order_of):
        raise RuntimeError("list output and meta() disagree on the paths")
    meta_order = np.array([order_of[k] for k in keys])
    fr_bank = jtfs.filters_fr[1]
    cols: dict[str, list] = {k: [] for k in ("order_list", "spin", "n_fr", "j_fr", "n1", "n2", "n1_actual",
                                              "family")}
    row_in_path: dict[tuple, int] = {}
    for p, order in zip(paths, meta_order):
        n = p["n"]
        if order == 0:
            spin, n_fr, j_fr, n1, n2, n1_actual = 0, -1, -1, -1, -1, -1
        else:
            spin, n_fr, j_fr = int(p["spin"]), int(p["n_fr"][0]), int(p["j_fr"][0])
            n1, n2 = int(n[0]), (int(n[1]) if order == 2 else -1)
            # The coefficients of one frequential path come in row order along n1.
            # Spin-0 paths are low-passed by the n_fr = 0 filter and subsampled by
            # 2**min(j_fr, log2_stride_fr) only, but kymatio labels their rows with a
            # stride of 2**j_fr; spinned paths are averaged by phi_F and their labels
            # match their stride 2**log2_stride_fr.
            path_key = n[1:]
            r = row_in_path.get(path_key, 0)
            row_in_path[path_key] = r + 1
            if spin == 0:
                k_fr = min(fr_bank[n_fr]["j"], jtfs.log2_stride_fr)
            else:
                k_fr = jtfs.log2_stride_fr
            n1_actual = r * 2**k_fr
        for k, v in zip(cols, (int(p["order"]), spin, n_fr, j_fr, n1, n2, n1_actual, family(order, spin))):
            cols[k].append(v)
    table = {k: np.asarray(v, dtype=np.int16) for k, v in cols.items() if k != "family"}
    table["order"] = meta_order.astype(np.int16)
    table["family"] = np.asarray(cols["family"])
    return table


def filter_tables(jtfs: TimeFrequencyScattering) -> dict[str, np.ndarray]:
    """Centre frequency xi (cycles/sample), bandwidth sigma and subsampling j of every filter."""
    out: dict[str, np.ndarray] = {}
    for name, bank in (("psi1", jtfs.psi1_f), ("psi2", jtfs.psi2_f), ("psi_fr", jtfs.filters_fr[1])):
        out[f"{name}_xi"] = np.array([f["xi"] for f in bank], dtype=np.float64)
        out[f"{name}_sigma"] = np.array([f["sigma"] for f in bank], dtype=np.float64)
        out[f"{name}_j"] = np.array([f["j"] for f in bank], dtype=np.int16)
    out["phi_sigma"], out["phi_j"] = np.float64(jtfs.phi_f["sigma"]), np.int16(jtfs.phi_f["j"])
    phi_fr = jtfs.filters_fr[0]
    out["phi_fr_sigma"], out["phi_fr_j"] = np.float64(phi_fr["sigma"]), np.int16(phi_fr["j"])
    return out


def run(jtfs: TimeFrequencyScattering, x: np.ndarray, dtype: torch.dtype, batch: int) -> np.ndarray:
    """S (n, P) in ``dtype``, computed ``batch`` signals at a time."""
    rows = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            paths = jtfs(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(dtype))
            rows.append(torch.cat([p["coef"].reshape(p["coef"].shape[0], -1) for p in paths], dim=1))
    return torch.cat(rows).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("inp", type=Path, help="input .npz (signals and settings)")
    parser.add_argument("out", type=Path, help="output .npz")
    parser.add_argument("--batch", type=int, default=8, help="signals per forward call")
    args = parser.parse_args()

    data = np.load(args.inp)
    x = np.asarray(data["signals"], dtype=np.float64)
    settings = {k: int(data[k]) for k in SETTING_KEYS}
    n_samples = x.shape[1]

    jtfs32 = build(n_samples, settings)
    paths = jtfs32(torch.zeros(1, n_samples))
    table = coefficient_table(paths, jtfs32)

    jtfs = build(n_samples, settings)
    to_float64(jtfs)
    t0 = time.perf_counter()
    s64 = run(jtfs, x, torch.float64, args.batch)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    s32 = run(jtfs32, x, torch.float32, args.batch)
    seconds32 = time.perf_counter() - t0
    if s64.shape[1] != len(table["family"]):
        raise RuntimeError(f"{s64.shape[1]} coefficients but {len(table['family'])} paths")

    info = {
        "kymatio": kymatio.__version__, "kymatio_path": str(Path(kymatio.__file__).parent),
        "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "dtype": "float64",
        "dtype_note": "filters rebuilt in float64 from kymatio's numpy design; input and all arithmetic float64",
        "settings": {**settings, "T": "global", "format": "time", "out_type": "list", "N": n_samples},
        "N_padded": int(jtfs._N_padded), "pad_left": int(jtfs.pad_left), "pad_right": int(jtfs.pad_right),
        "time_padding_mode": "constant (zeros; kymatio's default is "
                             f"{inspect.signature(jtfs.backend._backend.pad).parameters['mode'].default!r})",
        "N_padded_fr": int(jtfs._N_padded_fr), "frequency_padding": "zeros after the last n1 (constant 0)",
        "log2_stride_fr": int(jtfs.log2_stride_fr), "T_parsed": int(jtfs.T), "F_parsed": int(jtfs.F),
        "n_signals": int(len(x)), "run_seconds_float64": seconds,
        "run_seconds_float32": seconds32,
        "float32_max_abs_diff_over_max": float(np.abs(s32 - s64).max() / np.abs(s64).max()),
    }
    np.savez(args.out, S=s64, info=np.array(json.dumps(info)), **table, **filter_tables(jtfs))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
