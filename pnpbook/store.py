"""The metric store: M = J^T J (and its spectrum) for every sample of a fold, on disk.

A store is one HDF5 file (``h5py``) holding, for the first ``n`` items of a fold,
one ``(n, d, d)`` array ``M`` plus the sample ids and their ``theta``, ``nu``,
spectrum and noise floor (and ``J`` when asked), in fold order.  Its *config* is
everything that changes the numbers: synthesizer and preset (sample rate,
length, parameter ranges), JTFS settings and ``c``, the scaler (``r`` and the
fitted min and max), the dtype of the computation and :data:`METRIC_VERSION`.
The config's SHA-256 (:func:`config_hash`) is stored with it; the package
version and commit are provenance, outside the hash, so a store started in one
session resumes in the next.

Work proceeds in chunks of samples.  Each chunk is written to a temporary file
and renamed into place in a ``.parts`` folder beside the store, so a killed run
loses at most the chunks in flight; a restarted run reads which chunks exist and
computes the rest.  When every chunk exists they are merged into the store
(again through a temporary file and a rename) and the folder is removed.  A
chunk always holds the same samples (its boundaries are recorded in the
folder's manifest), so a resumed store equals an uninterrupted one.

Chunks are spread over worker processes (``workers``) or, under ``torchrun``,
over ranks (chunk ``i`` goes to rank ``i mod world_size``; rank 0 merges).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from pnpbook import cache, config, data, jtfs
from pnpbook.metric import jacobian, metric, noise_floor, pnp_forward, spectrum
from pnpbook.provenance import provenance, write_atomic
from pnpbook.synth import SYNTHS, Synth

#: Bump by hand whenever a change in the code changes the stored numbers.
METRIC_VERSION = 1

#: The ``format`` attribute of every store, to tell it from other HDF5 files.
FORMAT = "pnpbook-metric-store"

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclasses.dataclass(frozen=True)
class Request:
    """What to precompute.

    Attributes
    ----------
    synth : str
        Registry name (``"amchirp"``, ``"ftm"``).
    scale : str
        Preset (``"tiny"``, ``"small"``, ``"paper"``).
    fold : str
        ``"train"``, ``"val"`` or ``"test"``.
    n : int or None
        The first ``n`` items of the fold (None: the preset's fold size).
    dtype : {"float32", "float64"}
        Precision of the Jacobian (M is always formed in float64).
    save_J : bool
        Also store J, shape (n, P, d), in ``dtype``.
    chunk : int
        Samples per chunk (one ``vmap`` call, one file).
    keep_log : bool
        The scaler's ``r`` (True: identity, the paper's default).
    c : float or None
        Phi's log compression (None: the preset's calibrated value).
    """

    synth: str
    scale: str
    fold: str = "train"
    n: int | None = None
    dtype: str = "float32"
    save_J: bool = False
    chunk: int = 8
    keep_log: bool = True
    c: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")
        if self.n is not None and self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    def synthesizer(self) -> Synth:
        """The synthesizer record at the request's preset."""
        return SYNTHS[self.synth].at(self.scale)

    def default_path(self) -> Path:
        """``data/metric/SYNTH_SCALE_FOLD.h5``."""
        return Path("data") / "metric" / f"{self.synth}_{self.scale}_{self.fold}.h5"


def store_config(req: Request) -> dict[str, Any]:
    """Everything that changes the stored numbers, JSON-ready (hashed by :func:`config_hash`)."""
    synth = req.synthesizer()
    cfg = {
        "synth": synth.name,
        "scale": synth.scale,
        "sr": synth.sr,
        "n_samples": synth.n_samples,
        "params": [{"name": p.name, "low": p.low, "high": p.high, "log": p.log} for p in synth.params],
        "jtfs": {"N": synth.n_samples, **config.preset(synth.name, synth.scale)["jtfs"]},
        "c": float(req.c) if req.c is not None else jtfs.preset_c(synth),
        "scaler": data.train_scaler(synth, keep_log=req.keep_log).to_dict(),
        "dtype": req.dtype,
        "save_J": req.save_J,
        "metric_version": METRIC_VERSION,
    }
    return cache.normalise(cfg)  # tuples become lists: equal to a config read back from disk


#: SHA-256 (hex) of a config's canonical JSON, the same hash the array cache uses.
config_hash = cache.config_hash


def config_difference(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Lines ``key: a-value != b-value`` for every top-level key where two configs differ."""
    return [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


# --------------------------------------------------------------------------------------------
# Computing one chunk (in this process or in a worker)

@dataclasses.dataclass
class _Engine:
    """The map nu -> Phi(g(h^-1(nu))) of a request, built once per process."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    nu: torch.Tensor  # (n, d), the whole selection, in the request's dtype
    chunk: int


_ENGINES: dict[tuple, _Engine] = {}


def _engine(req: Request, device: str) -> _Engine:
    key = (req, device)
    if key not in _ENGINES:
        cfg = store_config(req)
        synth = req.synthesizer()
        scaler = data.train_scaler(synth, keep_log=req.keep_log)
        op = jtfs.operator(synth)
        _ENGINES[key] = _Engine(pnp_forward(synth, op, scaler, cfg["c"]), _nu(req).to(device), req.chunk)
    return _ENGINES[key]


def compute_chunk(req: Request, index: int, device: str = "cpu") -> dict[str, np.ndarray]:
    """M, spectrum and noise floor (and J) of chunk ``index`` of a request.

    Returns
    -------
    dict of ndarray
        ``M`` (b, d, d) float64, ``spectrum`` (b, d) float64 descending,
        ``noise_floor`` (b,) float64, and ``J`` (b, P, d) if ``req.save_J``.
    """
    eng = _engine(req, device)
    nu = eng.nu[index * eng.chunk:(index + 1) * eng.chunk]
    J = jacobian(eng.forward, nu, chunk=len(nu))
    out = {"M": metric(J), "spectrum": spectrum(J), "noise_floor": noise_floor(J)}
    if req.save_J:
        out["J"] = J
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def _worker(req: Request, index: int, path: str, threads: int) -> int:
    """Worker-process entry: compute chunk ``index`` and write it atomically to ``path``."""
    torch.set_num_threads(threads)
    _write_chunk(Path(path), compute_chunk(req, index))
    return index


def _write_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    write_atomic(path, write)


# --------------------------------------------------------------------------------------------
# The store on disk

@dataclasses.dataclass
class MetricStore:
    """A complete store read into memory.

    Attributes
    ----------
    path : Path
    ids : ndarray of str, shape (n,)
    theta, nu : ndarray of float64, shape (n, d)
    M : ndarray of float64, shape (n, d, d)
    spectrum : ndarray of float64, shape (n, d)
        Eigenvalues of M, descending (squared singular values of J).
    noise_floor : ndarray of float64, shape (n,)
        ``(10 eps_J sigma_1)**2`` per sample.
    J : ndarray or None, shape (n, P, d)
    config : dict
    hash : str
    provenance : dict
        Of the merge; ``provenance["started"]`` is the run that began the store.
    fold : str
    """

    path: Path
    ids: np.ndarray
    theta: np.ndarray
    nu: np.ndarray
    M: np.ndarray
    spectrum: np.ndarray
    noise_floor: np.ndarray
    J: np.ndarray | None
    config: dict[str, Any]
    hash: str
    provenance: dict[str, Any]
    fold: str

    def __len__(self) -> int:
        return len(self.ids)


#: Datasets of a store with one row per sample, in this order.
PER_SAMPLE = ("theta", "nu", "M", "spectrum", "noise_floor")


def read(path: str | Path, expect: dict[str, Any] | None = None) -> MetricStore:
    """Read a store, checking that it is one and that it is whole.

    Parameters
    ----------
    path : path-like
        The ``.h5`` file.
    expect : dict, optional
        A config (:func:`store_config`) the store must have been computed with.

    Raises
    ------
    FileNotFoundError
        If there is no file.
    ValueError
        If the file is not HDF5, not a pnpbook metric store, inconsistent
        (truncated, a hash that does not match its config, rows of different
        lengths), or computed with another config than ``expect`` (the message
        lists the differing keys).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no metric store at {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 file ({e}): not a pnpbook metric store, "
                         f"or a corrupt one; delete it and run `python -m pnpbook precompute` again") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is an HDF5 file but not a pnpbook metric store "
                             f"(format attribute {f.attrs.get('format')!r}, expected {FORMAT!r})")
        try:
            cfg = json.loads(f.attrs["config"])
            stored_hash = str(f.attrs["config_hash"])
            arrays = {k: f[k][()] for k in ("ids", *PER_SAMPLE)}
            J = f["J"][()] if "J" in f else None
            prov = json.loads(f.attrs["provenance"])
            fold = str(f.attrs["fold"])
        except (KeyError, OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is a damaged pnpbook metric store ({type(e).__name__}: {e}); "
                             f"delete it and run `python -m pnpbook precompute` again") from None
    if config_hash(cfg) != stored_hash:
        raise ValueError(f"{path}: its config does not match its stored hash {stored_hash[:12]}: the file was "
                         f"edited or damaged; delete it and run `python -m pnpbook precompute` again")
    n, d = len(arrays["ids"]), len(cfg["params"])
    expected_shapes = {"theta": (n, d), "nu": (n, d), "M": (n, d, d), "spectrum": (n, d), "noise_floor": (n,)}
    for k, shape in expected_shapes.items():
        if arrays[k].shape != shape:
            raise ValueError(f"{path}: dataset {k} has shape {arrays[k].shape}, expected {shape}")
    if cfg["save_J"] != (J is not None) or (J is not None and (J.shape[0], J.shape[2]) != (n, d)):
        raise ValueError(f"{path}: dataset J is inconsistent with save_J = {cfg['save_J']}")
    if expect is not None and config_hash(expect) != stored_hash:
        raise ValueError(f"{path} was computed with another config (hash {stored_hash[:12]}, asked for "
                         f"{config_hash(expect)[:12]}): " + "; ".join(config_difference(cfg, expect)))
    return MetricStore(path=path, ids=arrays["ids"].astype(str), J=J, config=cfg, hash=stored_hash,
                       provenance=prov, fold=fold, **{k: arrays[k] for k in PER_SAMPLE})


def per_sample_bytes(cfg: dict[str, Any], P: int | None = None) -> int:
    """Bytes of data one sample adds to a store (exact: datasets are contiguous, uncompressed).

    Parameters
    ----------
    cfg : dict
        A store config.
    P : int, optional
        Number of JTFS coefficients; needed when ``cfg["save_J"]``.
    """
    d = len(cfg["params"])
    floats = 2 * d + d * d + d + 1  # theta, nu, M, spectrum, noise floor
    total = 8 * floats + _ID_BYTES
    if cfg["save_J"]:
        if P is None:
            raise ValueError("P (the number of JTFS coefficients) is needed when save_J is set")
        total += P * d * np.dtype(cfg["dtype"]).itemsize
    return total


#: Bytes per stored sample id (fixed-width ASCII).
_ID_BYTES = data.ID_WIDTH


class _Parts:
    """The ``.parts`` folder of a store in progress: its manifest and chunk files."""

    def __init__(self, store: Path):
        self.dir = store.with_name(store.name + ".parts")
        self.manifest_path = self.dir / "manifest.json"

    def chunk_path(self, index: int) -> Path:
        return self.dir / f"chunk{index:06d}.npz"

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.manifest_path} is damaged ({e}); delete {self.dir} to start over") from None

    def done(self, n_chunks: int) -> list[int]:
        return [i for i in range(n_chunks) if self.chunk_path(i).exists()]

    def load(self, index: int, rows: int, d: int, save_J: bool) -> dict[str, np.ndarray]:
        """A chunk file, checked: every array present with ``rows`` rows and the right shape."""
        path = self.chunk_path(index)
        expected = {"M": (rows, d, d), "spectrum": (rows, d), "noise_floor": (rows,)}
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"chunk file {path} is corrupt ({type(e).__name__}: {e}); "
                             f"delete it and run again to recompute it") from None
        for k, shape in expected.items():
            if k not in arrays or arrays[k].shape != shape:
                raise ValueError(f"chunk file {path}: {k} has shape "
                                 f"{arrays[k].shape if k in arrays else 'missing'}, expected {shape}; "
                                 f"delete it and run again to recompute it")
        if save_J and ("J" not in arrays or arrays["J"].shape[0] != rows or arrays["J"].shape[2] != d):
            raise ValueError(f"chunk file {path}: J missing or of the wrong shape; delete it and run again")
        return arrays


def _selection(req: Request) -> data.Fold:
    return data.fold(req.synthesizer(), req.fold, n=req.n)


def _nu(req: Request) -> torch.Tensor:
    """The selection's nu, shape (n, d), in the request's dtype (the points where J is taken)."""
    scaler = data.train_scaler(req.synthesizer(), keep_log=req.keep_log)
    return scaler(torch.from_numpy(_selection(req).theta.copy())).to(DTYPES[req.dtype])


def plan(req: Request, path: str | Path) -> dict[str, Any]:
    """What a run of ``req`` into ``path`` has to do, checking what is on disk.

    Returns
    -------
    dict
        ``config``, ``hash``, ``ids``, ``n_chunks``, ``chunk`` (the chunk size
        in force: a resumed store keeps the one it started with), ``todo`` (the
        chunk indices still missing), ``complete`` (the store exists, whole,
        with this config).

    Raises
    ------
    ValueError
        If a store or a store in progress at ``path`` has another config or
        other samples (the message says which keys differ), or is damaged.
    """
    path = Path(path)
    cfg = store_config(req)
    h = config_hash(cfg)
    ids = [str(i) for i in _selection(req).ids]
    if path.exists():
        store = read(path)
        if store.hash != h:
            raise ValueError(f"{path} holds a store computed with another config (hash {store.hash[:12]}, asked "
                             f"for {h[:12]}): " + "; ".join(config_difference(store.config, cfg))
                             + ". A store never mixes configs: pass --out for a new file, or --force to replace it")
        if list(store.ids) != ids or store.fold != req.fold:
            raise ValueError(f"{path} holds {len(store)} items of fold {store.fold!r}; asked for {len(ids)} of "
                             f"{req.fold!r}: pass --out for a new file, or --force to replace it")
        return {"config": cfg, "hash": h, "ids": ids, "n_chunks": 0, "chunk": req.chunk, "todo": [],
                "complete": True}
    parts = _Parts(path)
    manifest = parts.manifest()
    chunk = req.chunk
    if manifest is not None:
        if manifest.get("hash") != h:
            raise ValueError(f"{parts.dir} holds a store in progress with another config (hash "
                             f"{str(manifest.get('hash'))[:12]}, asked for {h[:12]}): "
                             + "; ".join(config_difference(manifest.get("config", {}), cfg))
                             + ". Delete that folder (or pass --force) to start over, or --out for a new file")
        if manifest.get("ids") != ids or manifest.get("fold") != req.fold:
            raise ValueError(f"{parts.dir} holds a store in progress for {len(manifest.get('ids', []))} items of "
                             f"fold {manifest.get('fold')!r}; asked for {len(ids)} of {req.fold!r}: delete it (or "
                             f"pass --force) to start over")
        chunk = int(manifest["chunk"])
    n_chunks = math.ceil(len(ids) / chunk)
    done = set(parts.done(n_chunks))
    return {"config": cfg, "hash": h, "ids": ids, "n_chunks": n_chunks, "chunk": chunk,
            "todo": [i for i in range(n_chunks) if i not in done], "complete": False}


def _start(req: Request, path: Path, p: dict[str, Any]) -> None:
    """Create the parts folder and its manifest (once; a resumed run keeps the first manifest)."""
    parts = _Parts(path)
    parts.dir.mkdir(parents=True, exist_ok=True)
    if not parts.manifest_path.exists():
        manifest = {"format": FORMAT, "config": p["config"], "hash": p["hash"], "fold": req.fold,
                    "ids": p["ids"], "chunk": p["chunk"], "provenance": provenance()}
        write_atomic(parts.manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1) + "\n"))
    for leftover in parts.dir.glob(".*.tmp"):  # chunks in flight when a run was killed
        leftover.unlink(missing_ok=True)


def merge(req: Request, path: str | Path, world_size: int = 1) -> Path:
    """Merge a finished parts folder into the store at ``path`` (atomically) and remove the folder.

    ``world_size`` (the number of ``torchrun`` ranks that computed the chunks) is recorded as provenance.
    """
    import h5py

    path = Path(path)
    parts = _Parts(path)
    manifest = parts.manifest()
    if manifest is None:
        raise ValueError(f"nothing to merge: {parts.manifest_path} does not exist")
    cfg, ids, chunk = manifest["config"], manifest["ids"], int(manifest["chunk"])
    d, n = len(cfg["params"]), len(ids)
    n_chunks = math.ceil(n / chunk)
    missing = [i for i in range(n_chunks) if not parts.chunk_path(i).exists()]
    if missing:
        raise ValueError(f"cannot merge {path}: chunks {missing[:5]}{'...' if len(missing) > 5 else ''} are missing")
    chunks = [parts.load(i, min(chunk, n - i * chunk), d, cfg["save_J"]) for i in range(n_chunks)]
    items = _selection(req)
    columns = {"theta": items.theta, "nu": _nu(req).double().numpy(),
               **{k: np.concatenate([c[k] for c in chunks]) for k in ("M", "spectrum", "noise_floor")}}

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["config"] = json.dumps(cfg, sort_keys=True)
            f.attrs["config_hash"] = manifest["hash"]
            f.attrs["fold"] = manifest["fold"]
            f.attrs["provenance"] = json.dumps({**provenance(), "world_size": world_size,
                                                   "started": manifest["provenance"]})
            f.create_dataset("ids", data=np.array(ids, dtype=f"S{_ID_BYTES}"))
            for k, v in columns.items():
                f.create_dataset(k, data=np.ascontiguousarray(v, dtype=np.float64))
            if cfg["save_J"]:
                f.create_dataset("J", data=np.concatenate([c["J"] for c in chunks]))

    write_atomic(path, write)
    shutil.rmtree(parts.dir)
    return path


def _distributed() -> tuple[int, int]:
    """(rank, world size) under ``torchrun``, initialising a gloo process group; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return dist.get_rank(), world


def precompute(req: Request, path: str | Path | None = None, workers: int = 1, device: str = "cpu",
               progress: bool = True, force: bool = False) -> Path:
    """Compute (or finish) the store of ``req`` at ``path``.

    Parameters
    ----------
    req : Request
        What to compute.
    path : path-like, optional
        The store (default :meth:`Request.default_path`).
    workers : int
        Worker processes on this machine (each with ``cpus // workers``
        threads); ignored under ``torchrun``, where each rank is one worker.
    device : str
        ``"cpu"``, or ``"cuda"`` (under ``torchrun``: ``cuda:LOCAL_RANK``).
    progress : bool
        Show a progress bar (rank 0 only).
    force : bool
        Delete an existing store or store in progress at ``path`` first.

    Returns
    -------
    Path
        The store.
    """
    from tqdm import tqdm

    path = Path(path or req.default_path())
    rank, world = _distributed()
    if device == "cuda" and world > 1:
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    if rank == 0:
        if force:
            path.unlink(missing_ok=True)
            shutil.rmtree(_Parts(path).dir, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        p = plan(req, path)
        if not p["complete"]:
            _start(req, path, p)
    p = _broadcast(p if rank == 0 else None, world)
    if p["complete"]:
        return path
    req = dataclasses.replace(req, chunk=p["chunk"])
    mine = p["todo"][rank::world]
    parts = _Parts(path)
    with tqdm(total=len(mine), unit="chunk", disable=not progress or rank > 0,
              desc=f"precompute {req.synth}/{req.scale}/{req.fold} ({p['n_chunks'] - len(p['todo'])} of "
                   f"{p['n_chunks']} chunks already done)") as bar:
        for _ in _run_chunks(req, mine, parts, workers if world == 1 else 1, device):
            bar.update(1)
    _barrier(world)
    if rank == 0:
        merge(req, path, world)
    _barrier(world)
    return path


def _run_chunks(req: Request, indices: list[int], parts: _Parts, workers: int, device: str) -> Iterable[int]:
    """Compute and write the given chunks, yielding each index as it lands."""
    if workers <= 1 or len(indices) <= 1:
        for i in indices:
            _write_chunk(parts.chunk_path(i), compute_chunk(req, i, device))
            yield i
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_worker, req, i, str(parts.chunk_path(i)), threads) for i in indices]
        for fut in as_completed(futures):
            yield fut.result()


def _broadcast(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def estimate(req: Request, n_timed: int = 4, workers: int = 1,
             timer: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time a few samples and predict the whole run's time and disk.

    The start-up (building the synthesizer, JTFS operator and scaler, and a
    first one-sample Jacobian, which pays one-time costs) is timed once; then
    one chunk of ``n_timed`` samples gives the per-sample time.

    Parameters
    ----------
    req : Request
        What would be computed.
    n_timed : int
        Samples in the timed chunk.
    workers : int
        Parallel workers the run would use: samples are timed with the threads
        each worker would get (``cpus // workers``), and the per-sample time is
        divided by ``workers``.
    timer : callable
        Clock in seconds (injectable for tests).

    Returns
    -------
    dict
        ``startup_s``, ``per_sample_s``, ``per_sample_bytes``, ``n``,
        ``total_s`` (startup + n per_sample / workers), ``total_bytes``
        (n per_sample_bytes: the data; HDF5 adds a few KiB of metadata).
    """
    n = len(_selection(req))
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))  # as each worker will run
    try:
        return _estimate(req, n, n_timed, workers, timer)
    finally:
        torch.set_num_threads(threads)


def _estimate(req: Request, n: int, n_timed: int, workers: int, timer: Callable[[], float]) -> dict[str, Any]:
    t0 = timer()
    timed = dataclasses.replace(req, chunk=n_timed, n=None)
    eng = _engine(timed, "cpu")
    J1 = jacobian(eng.forward, eng.nu[:1], chunk=1)
    t1 = timer()
    compute_chunk(timed, 0)
    t2 = timer()
    startup, per_sample = t1 - t0, (t2 - t1) / n_timed
    per_bytes = per_sample_bytes(store_config(req), J1.shape[1])
    return {"n": n, "startup_s": startup, "per_sample_s": per_sample, "workers": workers,
            "total_s": startup + n * per_sample / workers, "per_sample_bytes": per_bytes,
            "total_bytes": n * per_bytes}
