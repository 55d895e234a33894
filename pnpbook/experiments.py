"""The experiment pipeline: data, metric, trainings, evaluation, one results table.

``python -m pnpbook run --synth amchirp --scale tiny`` calls :func:`run`.  Every
stage is resumable and skipped when its output exists: the metric stores
(:mod:`pnpbook.store`), the feature and target caches (:mod:`pnpbook.features`),
each training (:func:`pnpbook.train.train` resumes from ``last.pt``) and each
evaluation (:func:`pnpbook.evaluate.evaluate`, redone only when its checkpoint
is newer).  A killed run, restarted with the same arguments, goes on where it
stopped.

Layout under ``root`` (default ``data``, relative to the working directory)::

    metric/SYNTH_SCALE_FOLD.h5                the metric stores
    runs/SYNTH_SCALE/VARIANT_seedS/           one training run each (pnpbook.train)
    runs/SYNTH_SCALE/results.json             the table (or --results PATH)

A *variant* is a training recipe: one of the four losses, or PNP after P-loss
pretraining (:data:`VARIANTS`).  The decision rule of the issue compares PNP
with DDSP-JTFS on the JTFS distance: the 95 % paired bootstrap interval of the
ratio of mean distances, over test sounds with seeds pooled, "matches" inside
[0.9, 1.1] and "beats" below 1 (:func:`pnpbook.evaluate.verdict`).
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch

from pnpbook import data, evaluate, store, train
from pnpbook.provenance import load_average, provenance, write_atomic
from pnpbook.synth import SYNTHS

#: Training recipes: overrides of :class:`pnpbook.train.TrainConfig`.  ``pretrain_epochs``
#: given as the string ``"half"`` is half of the run's epochs (the authors' 35 of 70).
VARIANTS: Mapping[str, Mapping[str, Any]] = {
    "ploss": {"loss": "ploss"},
    "mss": {"loss": "mss"},
    "ddsp_jtfs": {"loss": "ddsp_jtfs"},
    "pnp": {"loss": "pnp"},
    "pnp_pretrained": {"loss": "pnp", "pretrain_epochs": "half"},
}

#: What ``run`` trains unless told otherwise: the four losses of chapter 6.
DEFAULT_VARIANTS = ("ploss", "mss", "ddsp_jtfs", "pnp")

#: The per-sample metrics of the table, with the checkpoint rule of spec 13.7 applied to both.
METRICS = ("jtfs", "mss", "mfcc", "nu_abs_mean")
CHECKPOINTS = ("best", "last")

#: Folds smaller than this are precomputed in-process (no worker start-up).
SPAWN_MIN_ITEMS = 256


def train_config(synth: str, scale: str | None, variant: str, seed: int, root: str | Path = "data",
                 **overrides: Any) -> train.TrainConfig:
    """The :class:`~pnpbook.train.TrainConfig` of a variant and seed.

    Parameters
    ----------
    synth, scale : str
        Synthesizer and preset.
    variant : str
        A key of :data:`VARIANTS`.
    seed : int
        The run's seed.
    root : path-like
        Data root; the metric stores live in ``root/metric``.
    **overrides
        Further TrainConfig fields (e.g. ``num_threads``, ``epochs``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {tuple(VARIANTS)}")
    fields = {**VARIANTS[variant], **overrides}
    if fields.get("pretrain_epochs") == "half":
        epochs = fields.get("epochs") or train.TrainConfig(synth=synth, scale=scale).epochs
        fields["pretrain_epochs"] = epochs // 2
    return train.TrainConfig(synth=synth, scale=scale, seed=seed, metric_dir=str(Path(root) / "metric"),
                             **fields)


def run_dir(root: str | Path, cfg: train.TrainConfig, variant: str) -> Path:
    """``root/runs/SYNTH_SCALE/VARIANT_seedS``."""
    return Path(root) / "runs" / f"{cfg.synth}_{cfg.scale}" / f"{variant}_seed{cfg.seed}"


def _finished(path: Path, cfg: train.TrainConfig) -> bool:
    """Whether the run at ``path`` has trained all its epochs."""
    if not (path / "log.csv").exists():
        return False
    rows = train.read_log(path)
    return bool(rows) and max(r["epoch"] for r in rows) >= cfg.epochs  # the log counts completed epochs


def _evaluated(path: Path, checkpoint: str) -> dict[str, Any] | None:
    """The evaluation file of a checkpoint if it is newer than the checkpoint, else None."""
    result, ckpt = path / f"eval_{checkpoint}_test.json", path / "checkpoints" / f"{checkpoint}.pt"
    if result.exists() and result.stat().st_mtime >= ckpt.stat().st_mtime:
        return json.loads(result.read_text())
    return None


def _checkpoint_epoch(path: Path, checkpoint: str) -> int:
    """The epoch a checkpoint of the run at ``path`` was saved at."""
    return int(torch.load(path / "checkpoints" / f"{checkpoint}.pt", map_location="cpu", weights_only=True)["epoch"])


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block (None: unchanged), restored after it."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def precompute_metric(synth: str, scale: str | None, root: str | Path, workers: int | None,
                      progress: bool) -> dict[str, str]:
    """The train and val metric stores under ``root/metric`` (computed if missing); their paths."""
    paths = {}
    for fold in ("train", "val"):
        req = store.Request(synth, scale, fold=fold)
        path = Path(root) / "metric" / req.default_path().name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            n = len(data.fold(synth, fold, scale))
            # worker processes pay seconds of start-up: worth it only for folds of a few hundred items
            store.precompute(req, path, workers=(workers or 1) if n >= SPAWN_MIN_ITEMS else 1, progress=progress)
        store.read(path, expect=store.store_config(req))
        paths[fold] = str(path)
    return paths


def run(synth: str, scale: str | None = None, variants: Iterable[str] = DEFAULT_VARIANTS,
        seeds: Iterable[int] = (0,), root: str | Path = "data", results: str | Path | None = None,
        workers: int | None = None, num_threads: int | None = None, progress: bool = True,
        **overrides: Any) -> dict[str, Any]:
    """Train every variant with every seed, evaluate, and write the results table.

    Parameters
    ----------
    synth : {"amchirp", "ftm"}
    scale : {"tiny", "small", "paper"} or None
        None reads ``$PNPBOOK_SCALE``.
    variants : iterable of str
        Keys of :data:`VARIANTS`.
    seeds : iterable of int
    root : path-like
        Data root (see the module docstring).
    results : path-like or None
        Where the table goes (default ``root/runs/SYNTH_SCALE/results.json``).
    workers : int or None
        Worker processes of the metric precomputation (default 1).
    num_threads : int or None
        ``torch.set_num_threads`` during each training and evaluation (None:
        unchanged).  Two processes side by side on two cores need 1 each: two
        evaluations of 2 threads each on 2 cores ran about 5x slower than alone.
    progress : bool
        Progress bars.
    **overrides
        Further :class:`~pnpbook.train.TrainConfig` fields for every run.

    Returns
    -------
    dict
        What the results file holds: ``provenance``, ``synth``, ``scale``,
        ``variants``, ``seeds``, ``runs`` (per variant and seed: the run
        directory, its config, wall time, and the summary of the best and last
        checkpoints, the load average around its training), ``table`` (per variant and checkpoint: mean and spread over
        seeds of each metric's mean) and ``decision`` (:func:`decide`).
    """
    synth = SYNTHS[synth].at(scale)
    variants, seeds = list(variants), [int(s) for s in seeds]
    t0 = time.perf_counter()
    cfgs = {(v, s): train_config(synth.name, synth.scale, v, s, root, num_threads=num_threads, **overrides)
            for v in variants for s in seeds}
    metric = (precompute_metric(synth.name, synth.scale, root, workers, progress)
              if any(c.loss == "pnp" for c in cfgs.values()) else {})
    runs: dict[str, dict[str, Any]] = {}
    for (variant, seed), cfg in cfgs.items():
        path = run_dir(root, cfg, variant)
        started = time.perf_counter()
        if not _finished(path, cfg):
            load = {"before": load_average()}
            train.train(cfg, path, resume=True, progress=progress)
            load["after"] = load_average()
            write_atomic(path / "load.json", lambda tmp: tmp.write_text(json.dumps(load) + "\n"))
        with _threads(num_threads):
            evaluations = {"best": _evaluated(path, "best") or evaluate.evaluate(path, "test", "best")}
            if _checkpoint_epoch(path, "last") == evaluations["best"]["checkpoint_epoch"]:
                evaluations["last"] = evaluations["best"]  # the same weights: the last epoch was the best
            else:
                evaluations["last"] = _evaluated(path, "last") or evaluate.evaluate(path, "test", "last")
        log = train.read_log(path)
        runs.setdefault(variant, {})[str(seed)] = {
            "run_dir": str(path), "config": cfg.to_dict(),
            "train_seconds": float(sum(r["seconds"] for r in log)),
            "pipeline_seconds": time.perf_counter() - started,
            # the machine's load average (1, 5, 15 min) before and after the last training session of this run
            "load_average": json.loads((path / "load.json").read_text()) if (path / "load.json").exists() else None,
            "epochs": [{k: r[k] for k in train.LOG_COLUMNS} for r in log],
            "eval": {c: {"checkpoint_epoch": e["checkpoint_epoch"], "summary": e["summary"],
                         "commit": e["provenance"]["commit"],
                         "per_sample": {m: e["per_sample"][m] for m in METRICS}, "ids": e["ids"]}
                     for c, e in evaluations.items()},
        }
    result = {
        "provenance": provenance(), "synth": synth.name, "scale": synth.scale, "variants": variants,
        "seeds": seeds, "metric_stores": metric, "runs": runs, "table": table(runs),
        "decision": decide(runs), "claims": claims(runs), "seconds": time.perf_counter() - t0,
    }
    out = Path(results) if results else Path(root) / "runs" / f"{synth.name}_{synth.scale}" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: tmp.write_text(json.dumps(result, indent=1) + "\n"))
    result["path"] = str(out)
    return result


#: What an exported encoder keeps of a training checkpoint: enough for :func:`pnpbook.train.load_encoder`.
EXPORT_KEYS = ("model", "model_spec", "config", "epoch", "step", "best_distance", "provenance")


def export_encoders(result: Mapping[str, Any], dest: str | Path, checkpoint: str = "best") -> list[Path]:
    """Copy each run's trained encoder, without its training state, to ``dest``.

    The checkpoints under ``root/runs`` hold Adam's moments and RNG states for
    resuming; readers who only want to listen need the weights.  Each file
    ``dest/VARIANT_seedS_CHECKPOINT.pt`` keeps :data:`EXPORT_KEYS` (weights
    in float32, the model spec, the run's config, the epoch and the training
    provenance), loads with :func:`pnpbook.train.load_encoder`, and is written
    atomically.

    Parameters
    ----------
    result : dict
        What :func:`run` returned (or its results file, read back).
    dest : path-like
        Folder of the exported files (created).
    checkpoint : {"best", "last"}

    Returns
    -------
    list of Path
        The files written, in the order of ``result["runs"]``.
    """
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for variant, by_seed in result["runs"].items():
        for seed, entry in by_seed.items():
            source = Path(entry["run_dir"]) / "checkpoints" / f"{checkpoint}.pt"
            ckpt = torch.load(source, map_location="cpu", weights_only=True)
            slim = {k: ckpt[k] for k in EXPORT_KEYS}
            path = dest / f"{variant}_seed{seed}_{checkpoint}.pt"
            write_atomic(path, lambda tmp: torch.save(slim, tmp))
            written.append(path)
    return written


def table(runs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per variant and checkpoint, each metric's test mean: its mean and standard deviation over seeds.

    Returns
    -------
    dict
        ``table[variant][checkpoint][metric] = {"mean", "std", "n_seeds"}``
        (std with ddof = 1; NaN for one seed).
    """
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for variant, by_seed in runs.items():
        for checkpoint in CHECKPOINTS:
            for metric in METRICS:
                means = np.array([r["eval"][checkpoint]["summary"][metric]["mean"] for r in by_seed.values()])
                out.setdefault(variant, {}).setdefault(checkpoint, {})[metric] = {
                    "mean": float(means.mean()), "std": float(means.std(ddof=1)) if len(means) > 1 else float("nan"),
                    "n_seeds": len(means)}
    return out


def pooled(runs: Mapping[str, Mapping[str, Any]], variant: str, checkpoint: str, metric: str,
           seeds: Iterable[str]) -> np.ndarray:
    """A variant's per-sample values of a metric, seeds concatenated in the given order."""
    return np.concatenate([runs[variant][s]["eval"][checkpoint]["per_sample"][metric] for s in seeds])


#: The paper's claims on the JTFS distance, as (variant, other, the verdict the claim expects).
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("pnp", "ddsp_jtfs", "matches"),
    ("pnp", "ploss", "beats"),
    ("pnp", "mss", "beats"),
    ("ddsp_jtfs", "ploss", "beats"),
    ("ddsp_jtfs", "mss", "beats"),
)


def decide(runs: Mapping[str, Mapping[str, Any]], metric: str = "jtfs", checkpoint: str = "best",
           n_boot: int = 10000, seed: int = 0,
           pairs: Iterable[tuple[str, str]] | None = None) -> dict[str, dict[str, Any]]:
    """The decision rule for pairs of variants (default: every PNP variant against every other variant).

    The ratio ``mean(a) / mean(b)`` of the JTFS distance over the test sounds of
    all seeds both variants share (a sound of seed s in one paired with the same
    sound of seed s in the other), with its 95 % paired bootstrap interval and
    :func:`pnpbook.evaluate.verdict`.  ``pairs`` (a, b) absent from ``runs``
    are skipped.

    Returns
    -------
    dict
        ``decision["pnp / ddsp_jtfs"] = {"ratio", "lo", "hi", "verdict", "n", "metric", "checkpoint"}``.
    """
    if pairs is None:
        pairs = [(a, b) for a in runs if VARIANTS[a]["loss"] == "pnp" for b in runs if b != a]
    out = {}
    for a, b in pairs:
        if a not in runs or b not in runs:
            continue
        seeds = sorted(set(runs[a]) & set(runs[b]), key=int)
        if not seeds:
            continue
        if any(runs[a][s]["eval"][checkpoint]["ids"] != runs[b][s]["eval"][checkpoint]["ids"] for s in seeds):
            raise ValueError(f"{a} and {b} were evaluated on different sounds: cannot pair them")
        x, y = (pooled(runs, v, checkpoint, metric, seeds) for v in (a, b))
        ratio, lo, hi = evaluate.paired_ratio_interval(x, y, n_boot=n_boot, seed=seed)
        out[f"{a} / {b}"] = {"ratio": ratio, "lo": lo, "hi": hi, "verdict": evaluate.verdict(lo, hi),
                             "n": len(x), "metric": metric, "checkpoint": checkpoint}
    return out


def claims(runs: Mapping[str, Mapping[str, Any]], checkpoint: str = "best") -> dict[str, dict[str, Any]]:
    """The decision rule applied to the paper's claims (:data:`CLAIMS`) on the JTFS distance.

    Returns
    -------
    dict
        Per pair ``"a / b"``: what :func:`decide` gives, plus ``expected`` (the
        claim's verdict) and ``holds``: the rule's verdict is the claim's, or
        "beats" where the claim is "matches" (at least as good: the stronger
        statement); "inconclusive" never holds.
    """
    expected = {f"{a} / {b}": v for a, b, v in CLAIMS}
    out = decide(runs, checkpoint=checkpoint, pairs=[(a, b) for a, b, _ in CLAIMS])
    return {k: {**d, "expected": expected[k],
                "holds": d["verdict"] == expected[k] or (expected[k], d["verdict"]) == ("matches", "beats")}
            for k, d in out.items()}


def format_table(result: Mapping[str, Any]) -> str:
    """The results table as text: one row per variant and checkpoint, mean (std over seeds)."""
    head = f"{'variant':16s}{'ckpt':6s}" + "".join(f"{m:>20s}" for m in METRICS)
    lines = [f"{result['synth']} / {result['scale']}, test fold, seeds {result['seeds']}", head]
    for variant, by_ckpt in result["table"].items():
        for checkpoint, metrics in by_ckpt.items():
            cells = "".join(f"{metrics[m]['mean']:11.4g} " + (f"({metrics[m]['std']:6.2g})" if metrics[m]["n_seeds"] > 1
                                                               else " " * 8) for m in METRICS)
            lines.append(f"{variant:16s}{checkpoint:6s}{cells}")
    for pair, d in result["decision"].items():
        lines.append(f"{pair}: JTFS distance ratio {d['ratio']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}] -> {d['verdict']}")
    return "\n".join(lines)

