"""One training loop for every loss: data in memory, Adam, the adaptive lambda, checkpoints, DDP.

:func:`train` fits an encoder ``features -> nu_hat`` with one of the losses of
:mod:`pnpbook.losses` (spec 7-9, with the bugs of spec 13 fixed):

* **Data.** Per fold, in memory: the CQT features (:func:`pnpbook.features.features`),
  ``nu = h(theta)`` (the train-fold scaler), and only what the loss needs: the
  targets' ``S = Phi(g(theta))`` (:func:`pnpbook.features.targets`), the metric
  ``M`` (one ``(n, d, d)`` float64 tensor read from the metric store,
  :mod:`pnpbook.store`, computed first if missing) and the target audio ``x``
  (rendered per batch).  Validation always has ``S``: it measures the JTFS
  distance.
* **Batches.** A seeded :class:`torch.Generator` draws each "epoch" of
  ``steps_per_epoch`` steps (spec 9: an epoch is a fixed number of samples, not a
  pass): a fresh permutation of the train items cut into full batches (drop last),
  another permutation appended if the epoch needs more batches than one holds.
* **Optimisation.** Adam, :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau`
  (patience 3, factor 0.1) on the validation loss, optional gradient clipping
  (total norm), optional P-loss pretraining for ``pretrain_epochs`` epochs before
  the named loss (at the switch: a fresh Adam, scheduler and lambda schedule,
  as a fine-tuning run that starts from the pretrained weights).
* **Validation**, each epoch, on the whole validation subset: (a) the loss, with
  ``lambda = 0`` for PNP (the undamped loss, spec 7.3), which drives the LR
  scheduler and the lambda schedule; (b) the JTFS distance
  ``mean_b ||Phi(g(h^-1(nu_hat_b))) - S_b||_2`` (spec 10), which picks the
  ``best.pt`` checkpoint.
* **Adaptive lambda** (PNP only, spec 7.4, TASLP final): ``lambda_0`` from the
  *train* fold's M (:func:`pnpbook.losses.lambda0`), no update from a sanity pass
  (there is none); after each validation: on improvement of the validation loss
  ``lambda *= accelerator``, otherwise ``lambda = min(lambda * brake, lambda_0)``.
  "Restore the best weights" is off by default (the authors' revert was a no-op,
  spec 13.4); when on, a non-improving epoch really restores the weights *and*
  the Adam state of the best epoch (a Levenberg-Marquardt rejected step: go back
  and retry with the new lambda); the batch stream and the LR scheduler go on.
* **Predictions outside the parameter range** (``theta_hat = h^-1(nu_hat)``
  outside the synthesizer's preset range) are counted, in training and in
  validation, and logged per epoch.  With ``validate="clip"`` they are clipped
  to the range when rendered (by the rendering losses, :mod:`pnpbook.losses`, and
  by the validation distance, :func:`pnpbook.evaluate.jtfs_distance`); with
  ``"raise"`` the first one stops the run with a ValueError.
* **Checkpoints** every epoch, atomically: ``last.pt`` holds model, optimizer,
  scheduler, lambda schedule, the RNG states of every rank (torch, CUDA, NumPy,
  Python, the batch generator), the epoch and the history, so a resumed run
  continues exactly where the checkpoint left it.
* **DDP** under ``torchrun`` (gloo on CPU, nccl on CUDA): every rank draws the
  same global batch and takes its contiguous slice, so with per-sample-mean
  losses the averaged gradient is the single-process gradient of the global
  batch; rank 0 writes logs and checkpoints.  BatchNorm layers see their rank's
  slice only (no SyncBatchNorm).

Run directory::

    run_dir/config.json            the TrainConfig (JSON)
    run_dir/log.csv                one row per epoch (:data:`LOG_COLUMNS`)
    run_dir/tb/                    TensorBoard events
    run_dir/checkpoints/last.pt    after every epoch
    run_dir/checkpoints/best.pt    the epoch of the smallest validation JTFS distance
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from pnpbook import config, data, losses, store
from pnpbook.provenance import provenance, write_atomic
from pnpbook.synth import SYNTHS, Synth

#: Columns of ``log.csv``, one row per epoch.
LOG_COLUMNS: tuple[str, ...] = ("epoch", "step", "loss", "train_loss", "val_loss", "val_jtfs_distance",
                                "lambda", "lr", "clipped_train", "clipped_val", "seconds")

#: Fields of :class:`TrainConfig` that may change when a run is resumed.
RESUMABLE_CHANGES: frozenset[str] = frozenset({"epochs", "num_threads", "device"})

#: How rendering treats predictions outside the parameter range (see :meth:`pnpbook.synth.Synth.check`).
VALIDATE_CHOICES: tuple[str, ...] = ("clip", "raise")

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, Mapping[str, torch.Tensor], Any], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Configuration

@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a training run (JSON round trip: :meth:`to_json`, :meth:`from_json`).

    Fields left None take the preset's value (``pnpbook.config.PRESETS[synth][scale]["train"]``
    for ``encoder``, ``batch_size``, ``epochs``, ``steps_per_epoch``; ``$PNPBOOK_SCALE`` for
    ``scale``) when the config is made, so the stored config is explicit.

    Attributes
    ----------
    synth : {"amchirp", "ftm"}
        Synthesizer.
    scale : {"tiny", "small", "paper"}
        Preset.
    loss : {"ploss", "mss", "ddsp_jtfs", "pnp"}
        Training loss (:func:`pnpbook.losses.make_loss`).
    encoder : {"cnn", "effnet"}
        :func:`pnpbook.models.build_encoder` kind.
    batch_size : int
        Global batch size (split across DDP ranks).
    epochs : int
        Epochs in all, pretraining included.
    steps_per_epoch : int
        Optimizer steps per epoch.
    lr : float
        Adam's initial learning rate.
    seed : int
        Seeds model init, batch order and every RNG.
    damping : {"identity", "diag", "mean"}
        PNP damping D.
    lambda_rule : {"ours", "authors"}
        Rule for lambda_0 (:func:`pnpbook.losses.lambda0`).
    k : float
        Multiplier of the ``"ours"`` rule.
    mu : float or None
        PNP scale; None: :func:`pnpbook.losses.pnp_mu` over the train subset.
    accelerator : float
        Lambda factor after an improving epoch (TASLP final: 0.05).
    brake : float
        Lambda factor after a non-improving epoch, capped at lambda_0 (TASLP final: 1).
    restore_best : bool
        Revert weights and Adam state to the best validation-loss epoch after a
        non-improving one (PNP only).
    grad_clip : float or None
        Maximum total gradient norm (None: no clipping).
    pretrain_epochs : int
        Epochs of P-loss before the named loss.
    lr_patience : int
        ReduceLROnPlateau patience, in epochs.
    validate : {"clip", "raise"}
        Predictions outside the parameter range: clipped when rendered, or an error.
    n_train, n_val : int or None
        Use the first n items of the fold (None: the preset's fold size).
    num_threads : int or None
        ``torch.set_num_threads`` during the run (None: unchanged).
    device : str or None
        ``"cpu"``, ``"cuda"`` (under DDP: ``cuda:LOCAL_RANK``), None: CUDA if available.
    metric_dir : str
        Folder of the metric stores (``SYNTH_SCALE_FOLD.h5``).
    """

    synth: str = "amchirp"
    scale: str | None = None
    loss: str = "pnp"
    encoder: str | None = None
    batch_size: int | None = None
    epochs: int | None = None
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    seed: int = 0
    damping: str = "identity"
    lambda_rule: str = "ours"
    k: float = 10.0
    mu: float | None = None
    accelerator: float = 0.05
    brake: float = 1.0
    restore_best: bool = False
    grad_clip: float | None = None
    pretrain_epochs: int = 0
    lr_patience: int = 3
    validate: str = "clip"
    n_train: int | None = None
    n_val: int | None = None
    num_threads: int | None = None
    device: str | None = None
    metric_dir: str = "data/metric"

    def __post_init__(self) -> None:
        if self.synth not in SYNTHS:
            raise ValueError(f"synth {self.synth!r} is not one of {tuple(SYNTHS)}")
        self.scale = config.get_scale(self.scale)
        budget = config.preset(self.synth, self.scale)["train"]
        for key in ("encoder", "batch_size", "epochs", "steps_per_epoch"):
            if getattr(self, key) is None:
                setattr(self, key, budget[key])
        choices = {"loss": losses.LOSSES, "damping": losses.DAMPINGS, "lambda_rule": losses.LAMBDA_RULES,
                   "validate": VALIDATE_CHOICES}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        positive = {"batch_size": self.batch_size, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch,
                    "lr": self.lr, "k": self.k, "accelerator": self.accelerator, "brake": self.brake,
                    "mu": self.mu, "grad_clip": self.grad_clip, "n_train": self.n_train, "n_val": self.n_val,
                    "num_threads": self.num_threads}
        for key, value in positive.items():
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a finite number > 0 (or None where allowed), got {value!r}")
        if not 0 <= self.pretrain_epochs <= self.epochs:
            raise ValueError(f"pretrain_epochs must be in [0, epochs = {self.epochs}], got {self.pretrain_epochs}")
        if self.lr_patience < 0:
            raise ValueError(f"lr_patience must be >= 0, got {self.lr_patience}")
        if self.restore_best and self.loss != "pnp":
            raise ValueError("restore_best belongs to the adaptive lambda schedule, which only the 'pnp' loss has")

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """JSON text (indented)."""
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    def difference(self, other: "TrainConfig") -> list[str]:
        """``field: self-value != other-value`` for every field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]


# --------------------------------------------------------------------------------------------
# What the loop trains on

@dataclasses.dataclass
class Setup:
    """Data, model and loss of a run, as the loop sees them (:func:`build_setup` makes the real one).

    Attributes
    ----------
    make_model : callable
        ``make_model() -> nn.Module``, mapping features (B, ...) to nu_hat (B, d);
        called right after ``torch.manual_seed(cfg.seed)``.
    model_spec : dict
        JSON data from which :func:`load_encoder` rebuilds the model (by default
        keyword arguments of :func:`pnpbook.models.build_encoder`).
    loss : callable
        ``loss(nu_hat, batch, state) -> scalar`` with a ``needs`` set of batch keys.
    pretrain_loss : callable or None
        The loss of the pretraining epochs (P-loss).
    train, val : dict of Tensor
        Per fold, tensors with one row per item: ``"features"``, ``"nu"`` (n, d)
        float32, ``"theta"`` (n, d) float64, and ``"S"`` (n, P) float32 and
        ``"M"`` (n, d, d) float64 where needed (``val`` always has ``"S"``).
    state : object
        The loss state at the start (a :class:`pnpbook.losses.LossState`, with
        ``lam = lambda_0`` for PNP); the loop replaces its ``lam``.
    lambda0 : float
        lambda_0 and the schedule's threshold (NaN for losses without lambda).
    distance : callable
        ``distance(nu_hat, batch) -> (B,)``: the JTFS distance
        ``||Phi(g(h^-1(nu_hat_b))) - batch["S"]_b||_2`` of each validation item
        (predictions clipped to the range before rendering).
    count_out_of_range : callable
        ``count_out_of_range(nu_hat) -> int``: values of ``h^-1(nu_hat)`` outside the
        synthesizer's range.
    render_x : callable or None
        ``render_x(theta) -> x`` (B, N) float32, the target audio, for losses
        that need ``"x"``.
    """

    make_model: Callable[[], torch.nn.Module]
    model_spec: dict[str, Any]
    loss: LossFn
    pretrain_loss: LossFn | None
    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]
    state: Any
    lambda0: float
    distance: Callable[[torch.Tensor, Batch], torch.Tensor]
    count_out_of_range: Callable[[torch.Tensor], int]
    render_x: Callable[[torch.Tensor], torch.Tensor] | None = None


def metric_tensor(synth: Synth, fold_name: str, n: int | None = None, metric_dir: str | Path = "data/metric",
                  progress: bool = False) -> torch.Tensor:
    """M of the first ``n`` items of a fold, from the metric store (computed first if missing).

    ``METRIC_DIR/SYNTH_SCALE_FOLD.h5`` is used when it holds (at least) these
    items; otherwise the store ``METRIC_DIR/SYNTH_SCALE_FOLD_nN.h5`` of exactly
    these items is read, or computed first (:func:`pnpbook.store.precompute`),
    so a partial store never takes the place of a whole one.  A whole fold
    (``n`` the preset's fold size) is computed into ``SYNTH_SCALE_FOLD.h5`` if
    that does not exist.  Stores are read with ``expect=`` this preset's store
    config, so M computed with another config is refused.  Under ``torchrun``
    every rank must call it (the computation is sharded over the ranks).

    Returns
    -------
    Tensor, shape (n, d, d), float64
        Row ``i`` is the fold's item ``i``.
    """
    items = data.fold(synth, fold_name, n=n)
    req = store.Request(synth.name, synth.scale, fold=fold_name)
    expect = store.store_config(req)
    default = Path(metric_dir) / req.default_path().name
    ids = [str(i) for i in items.ids]
    if default.exists():
        s = store.read(default, expect=expect)
        if list(s.ids[:len(ids)]) == ids:
            return torch.from_numpy(np.ascontiguousarray(s.M[:len(ids)]))
    if not default.exists() and len(items) == len(data.fold(synth, fold_name)):
        path = default
    else:
        req, path = dataclasses.replace(req, n=len(items)), default.with_name(f"{default.stem}_n{len(items)}.h5")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        store.precompute(req, path, progress=progress)
    s = store.read(path, expect=expect)
    if list(s.ids) != ids:
        raise ValueError(f"{path} holds {len(s)} items, not the first {len(ids)} of fold {fold_name!r}: delete it")
    return torch.from_numpy(np.ascontiguousarray(s.M))


def build_setup(cfg: TrainConfig, progress: bool = False) -> Setup:
    """The real :class:`Setup` of a config: preset synthesizer, features, losses, encoder.

    The P-loss needs nothing beyond ``nu``; DDSP-JTFS adds the train targets
    ``S``; MSS renders ``x``; PNP reads M for both folds and takes ``mu``
    (unless given) and ``lambda_0`` from the train subset's M.  Features,
    targets and M are computed (and cached) where missing, with progress bars
    if ``progress``.
    """
    from pnpbook import evaluate, features, models  # late: heavy imports, needed by real runs only

    synth = SYNTHS[cfg.synth].at(cfg.scale)
    scaler = data.train_scaler(synth)
    loss = losses.make_loss(cfg.loss, synth, scaler=scaler)
    needs = set(loss.needs)
    folds = {}
    for name, n, keys in (("train", cfg.n_train, needs), ("val", cfg.n_val, needs | {"S"})):
        items = data.fold(synth, name, n=n)
        theta = torch.from_numpy(np.array(items.theta, dtype=np.float64))
        tensors = {"theta": theta, "nu": scaler(theta).float(),
                   "features": features.features(synth, name, n=len(items), progress=progress)}
        if "S" in keys:
            tensors["S"] = features.targets(synth, name, n=len(items), progress=progress)
        if "M" in keys:
            tensors["M"] = metric_tensor(synth, name, len(items), cfg.metric_dir, progress)
        folds[name] = tensors
    state = losses.LossState(damping=cfg.damping)
    lam0 = math.nan
    if cfg.loss == "pnp":
        M = folds["train"]["M"]
        lam0 = losses.lambda0(M, cfg.damping, cfg.k, cfg.lambda_rule)
        state = losses.LossState(lam=lam0, mu=cfg.mu if cfg.mu is not None else losses.pnp_mu(M),
                                 damping=cfg.damping, M_mean=M.mean(0) if cfg.damping == "mean" else None)

    def distance(nu_hat: torch.Tensor, batch: Batch) -> torch.Tensor:
        theta_hat = scaler.inverse(nu_hat.detach().double())
        return torch.from_numpy(evaluate.jtfs_distance(synth, batch["theta"], theta_hat, phi_target=batch["S"],
                                                       batch=len(nu_hat)))

    def count_out_of_range(nu_hat: torch.Tensor) -> int:
        return int(synth.check(scaler.inverse(nu_hat.detach().double()), validate="clip")[1])

    _, n_bins, frames = folds["train"]["features"].shape
    spec = {"kind": cfg.encoder, "d": synth.d, "n_bins": int(n_bins), "frames": int(frames)}
    return Setup(make_model=lambda: models.build_encoder(**spec), model_spec=spec, loss=loss,
                 pretrain_loss=losses.PLoss() if cfg.pretrain_epochs else None,
                 train=folds["train"], val=folds["val"], state=state, lambda0=lam0,
                 distance=distance, count_out_of_range=count_out_of_range,
                 render_x=(lambda theta: synth(theta).float()) if "x" in needs else None)


# --------------------------------------------------------------------------------------------
# The adaptive lambda schedule

@dataclasses.dataclass
class LambdaSchedule:
    """Spec 7.4's "adaptive" schedule (TASLP final), run once per validation.

    Attributes
    ----------
    lambda0 : float
        Initial lambda and the threshold that caps it.
    accelerator : float
        Factor on improvement.
    brake : float
        Factor otherwise (then capped at ``lambda0``).
    lam : float
        Current lambda (starts at ``lambda0``).
    best : float
        Smallest validation loss so far.
    """

    lambda0: float
    accelerator: float
    brake: float
    lam: float = math.nan
    best: float = math.inf

    def __post_init__(self) -> None:
        if math.isnan(self.lam):
            self.lam = self.lambda0

    def update(self, val_loss: float) -> bool:
        """Update lambda after a validation; True if ``val_loss`` improved on the best so far."""
        if val_loss < self.best:
            self.best = val_loss
            self.lam *= self.accelerator
            return True
        self.lam = min(self.lam * self.brake, self.lambda0)
        return False

    def state_dict(self) -> dict[str, float]:
        """Plain floats (checkpointable)."""
        return dataclasses.asdict(self)

    def load_state_dict(self, d: Mapping[str, float]) -> None:
        """Inverse of :meth:`state_dict`."""
        for k, v in d.items():
            setattr(self, k, float(v))


# --------------------------------------------------------------------------------------------
# Distributed helpers

def _dist():
    import torch.distributed as dist

    return dist


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if _world() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    _dist().all_reduce(t)
    return t.tolist()


def _barrier() -> None:
    if _world() > 1:
        _dist().barrier()


def epoch_indices(generator: torch.Generator, n: int, batch_size: int, steps: int) -> torch.Tensor:
    """The global batches of one epoch, shape (steps, batch_size), int64.

    Fresh permutations of ``range(n)`` from ``generator``, each cut into
    ``n // batch_size`` full batches (the rest dropped), as many permutations
    as the ``steps`` batches need.
    """
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} is larger than the {n} train items")
    per_perm = n // batch_size
    perms = [torch.randperm(n, generator=generator)[:per_perm * batch_size] for _ in range(math.ceil(steps / per_perm))]
    return torch.cat(perms)[:steps * batch_size].view(steps, batch_size)


def shard(indices: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of a global batch of indices (its length divides by ``world``)."""
    if len(indices) % world:
        raise ValueError(f"batch size {len(indices)} is not a multiple of the {world} DDP ranks")
    b = len(indices) // world
    return indices[rank * b:(rank + 1) * b]


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(),
                                            "pos": int(np_state["state"]["pos"])}},
            "python": random.getstate(), "batches": generator.get_state()}


def _set_rng_state(state: Mapping[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.array(np_state["state"]["key"], dtype=np.uint32),
                         "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    random.setstate(_tuples(state["python"]))
    generator.set_state(state["batches"])


def _tuples(x: Any) -> Any:
    """Lists back to tuples (Python's RNG state is nested tuples)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------------------------
# The trainer

class Trainer:
    """A run in progress: :meth:`fit` trains it; :meth:`step` and :meth:`compute_gradients` are its steps.

    Parameters
    ----------
    cfg : TrainConfig
        The run.
    run_dir : path-like
        Where logs and checkpoints go (rank 0 writes).
    resume : bool
        Continue from ``run_dir/checkpoints/last.pt`` if it exists (its config
        must equal ``cfg`` up to :data:`RESUMABLE_CHANGES`); False starts over,
        deleting the run's previous logs and checkpoints.
    progress : bool
        Show a progress bar (rank 0, and only on a terminal).
    setup : callable, optional
        ``setup(cfg) -> Setup`` (default :func:`build_setup`).
    callback : callable, optional
        ``callback(trainer)`` after each epoch's checkpoint, on every rank
        (``trainer.epoch``, ``trainer.history[-1]`` is the epoch's log row).

    Under ``torchrun`` (``WORLD_SIZE > 1``) the constructor joins the process
    group (gloo on CPU, nccl on CUDA) and :meth:`close` leaves it if it joined.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, resume: bool = True, progress: bool = True,
                 setup: Callable[[TrainConfig], Setup] | None = None,
                 callback: Callable[["Trainer"], None] | None = None):
        self.cfg, self.run_dir, self.progress, self.callback = cfg, Path(run_dir), progress, callback
        self.world = _world()
        self._owns_group = False
        self._threads = torch.get_num_threads()
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.world > 1:
            dist = _dist()
            if device == "cuda":
                device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
                torch.cuda.set_device(torch.device(device))
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
                self._owns_group = True
            self.rank = dist.get_rank()
        else:
            self.rank = 0
        self.device = torch.device(device)
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of the {self.world} DDP ranks")

        self.setup = setup(cfg) if setup is not None else build_setup(cfg, progress=progress and self.rank == 0)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        module = self.setup.make_model().to(self.device)
        if self.rank:  # per-rank streams (dropout) after the shared model init
            torch.manual_seed(cfg.seed + self.rank)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(module, device_ids=ids)
        else:
            self.model = module
        self.module = module
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self._fresh_optimisation()
        self.epoch, self.global_step = 0, 0
        self.history: list[dict[str, Any]] = []
        self.best_distance = math.inf
        self.restore: dict[str, Any] | None = None

        self.ckpt_dir = self.run_dir / "checkpoints"
        last = self.ckpt_dir / "last.pt"
        if resume and last.exists():
            self._load(last)
        elif not resume and self.rank == 0:
            for p in (self.ckpt_dir, self.run_dir / "tb"):
                shutil.rmtree(p, ignore_errors=True)
            (self.run_dir / "log.csv").unlink(missing_ok=True)
        _barrier()

    # ---- state

    def _fresh_optimisation(self) -> None:
        """New Adam, LR scheduler and lambda schedule (at the start and at the end of pretraining)."""
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, patience=self.cfg.lr_patience)
        self.schedule = LambdaSchedule(self.setup.lambda0, self.cfg.accelerator, self.cfg.brake)
        self.restore = None

    @property
    def pretraining(self) -> bool:
        """Whether the next epoch is a P-loss pretraining epoch."""
        return self.epoch < self.cfg.pretrain_epochs

    @property
    def damped(self) -> bool:
        """Whether the adaptive lambda schedule is in force for the next epoch."""
        return self.cfg.loss == "pnp" and not self.pretraining

    def loss_fn(self) -> LossFn:
        """The loss of the next epoch."""
        return self.setup.pretrain_loss if self.pretraining else self.setup.loss

    def loss_state(self, validation: bool = False) -> Any:
        """The loss state: the schedule's lambda, or 0 for validation (the undamped PNP loss)."""
        if not self.damped:
            return self.setup.state
        return dataclasses.replace(self.setup.state, lam=0.0 if validation else self.schedule.lam)

    def checkpoint(self) -> dict[str, Any]:
        """Everything :meth:`fit` needs to continue exactly (the RNG states gathered from every rank)."""
        rng = _rng_state(self.generator)
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            _dist().all_gather_object(gathered, rng)
            rng_states = gathered
        else:
            rng_states = [rng]
        return {"model": self.module.state_dict(), "config": self.cfg.to_dict(), "model_spec": self.setup.model_spec,
                "epoch": self.epoch, "step": self.global_step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "lambda": self.schedule.state_dict(),
                "loss_state": {"mu": float(getattr(self.setup.state, "mu", math.nan)),
                               "damping": str(getattr(self.setup.state, "damping", ""))},
                "restore": self.restore, "best_distance": self.best_distance, "rng": rng_states,
                "history": self.history, "provenance": json.loads(json.dumps(provenance()))}

    def _load(self, path: Path) -> None:
        ckpt = torch.load(path, map_location=self.device, weights_only=True)
        saved = TrainConfig.from_dict(ckpt["config"])
        diff = [line for line in saved.difference(self.cfg) if line.split(":")[0] not in RESUMABLE_CHANGES]
        if diff:
            raise ValueError(f"{path} belongs to a run with another config ({'; '.join(diff)}): pass resume=False "
                             f"to start over, or use another run directory")
        self.epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["step"])
        self.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.schedule.load_state_dict(ckpt["lambda"])
        self.restore = ckpt["restore"]
        self.best_distance = float(ckpt["best_distance"])
        self.history = list(ckpt["history"])
        _set_rng_state(ckpt["rng"][self.rank % len(ckpt["rng"])], self.generator)

    # ---- steps

    def batch(self, fold: Mapping[str, torch.Tensor], indices: torch.Tensor, needs: set[str]) -> Batch:
        """The rows ``indices`` of a fold on the run's device, with the target audio if the loss needs it."""
        out = {k: v[indices].to(self.device) for k, v in fold.items()}
        if "x" in needs:
            out["x"] = self.setup.render_x(out["theta"])
        return out

    def _check_range(self, nu_hat: torch.Tensor) -> int:
        n = self.setup.count_out_of_range(nu_hat)
        if n and self.cfg.validate == "raise":
            raise ValueError(f"{n} predicted parameter values are outside the synthesizer's range "
                             f"(validate='raise'; 'clip' clips and counts them)")
        return n

    def compute_gradients(self, indices: torch.Tensor) -> tuple[float, int]:
        """Loss and gradients of this rank's slice of a global batch.

        Under DDP the gradients (in ``p.grad``) are averaged across ranks, so with
        a per-sample-mean loss they are the gradients of the whole global batch.

        Parameters
        ----------
        indices : Tensor, shape (batch_size,)
            The global batch (train item indices), the same on every rank.

        Returns
        -------
        loss : float
            This rank's loss.
        n_out : int
            This rank's predicted values outside the parameter range.
        """
        loss_fn = self.loss_fn()
        batch = self.batch(self.setup.train, shard(indices, self.rank, self.world), set(loss_fn.needs))
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        nu_hat = self.model(batch["features"])
        n_out = self._check_range(nu_hat)
        loss = loss_fn(nu_hat, batch, self.loss_state())
        loss.backward()
        return float(loss.detach()), n_out

    def step(self, indices: torch.Tensor) -> dict[str, float]:
        """One optimizer step on a global batch: gradients, clipping, Adam.

        Returns
        -------
        dict
            ``loss`` (this rank's), ``grad_norm`` (total norm before clipping),
            ``n_out`` (this rank's predictions outside the range).
        """
        loss, n_out = self.compute_gradients(indices)
        params = [p for p in self.module.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.global_step += 1
        return {"loss": loss, "grad_norm": grad_norm, "n_out": n_out}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss (undamped for PNP) and JTFS distance over the whole validation subset.

        Each rank takes every ``world``-th item; the sums are reduced across ranks
        (with rank 0's BatchNorm statistics, broadcast first).

        For DDSP-JTFS, whose loss is half the squared JTFS distance, the
        validation loss is derived from the distance (one JTFS pass per item,
        in float64, where the training loss runs in float32).

        Returns
        -------
        dict
            ``val_loss``, ``val_jtfs_distance`` (mean_b ||Phi_hat_b - S_b||_2),
            ``clipped_val`` (predicted values outside the range).
        """
        if self.world > 1:
            for buf in self.module.buffers():
                _dist().broadcast(buf, 0)
        self.model.eval()
        loss_fn, state = self.loss_fn(), self.loss_state(validation=True)
        val = self.setup.val
        n = len(val["nu"])
        mine = torch.arange(self.rank, n, self.world)
        loss_sum = dist_sum = n_out = 0.0
        for start in range(0, len(mine), self.cfg.batch_size):
            idx = mine[start:start + self.cfg.batch_size]
            batch = self.batch(val, idx, set(loss_fn.needs))
            nu_hat = self.module(batch["features"])
            n_out += self._check_range(nu_hat)
            distance = self.setup.distance(nu_hat, batch)
            dist_sum += float(distance.sum())
            if isinstance(loss_fn, losses.DDSPJTFSLoss):  # its loss is half the squared distance: no second JTFS
                loss_sum += 0.5 * float(distance.pow(2).sum())
            else:
                loss_sum += float(loss_fn(nu_hat, batch, state)) * len(idx)
        loss_sum, dist_sum, n_out = _all_reduce_sum([loss_sum, dist_sum, n_out], self.device)
        return {"val_loss": loss_sum / n, "val_jtfs_distance": dist_sum / n, "clipped_val": int(n_out)}

    # ---- the run

    def _run_epoch(self, bar: Any) -> dict[str, Any]:
        cfg = self.cfg
        if self.epoch == cfg.pretrain_epochs > 0:  # pretraining is over: fine-tune with a fresh optimiser
            self._fresh_optimisation()
        t0 = time.perf_counter()
        name = "ploss" if self.pretraining else cfg.loss
        lam = self.schedule.lam if self.damped else math.nan
        lr = self.optimizer.param_groups[0]["lr"]
        batches = epoch_indices(self.generator, len(self.setup.train["nu"]), cfg.batch_size, cfg.steps_per_epoch)
        loss_sum = n_out = 0.0
        for indices in batches:
            out = self.step(indices)
            loss_sum += out["loss"]
            n_out += out["n_out"]
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.4g}", lam="-" if math.isnan(lam) else f"{lam:.3g}")
            if self.rank == 0 and self.writer is not None:
                self.writer.add_scalar("train/loss_step", out["loss"], self.global_step)
        loss_sum, n_out = _all_reduce_sum([loss_sum, n_out], self.device)
        val = self.validate()
        self.scheduler.step(val["val_loss"])
        if self.damped:
            improved = self.schedule.update(val["val_loss"])
            if cfg.restore_best:
                if improved:
                    self.restore = {"model": copy.deepcopy(self.module.state_dict()),
                                    "optimizer": copy.deepcopy(self.optimizer.state_dict())}
                elif self.restore is not None:
                    self.module.load_state_dict(self.restore["model"])
                    self.optimizer.load_state_dict(copy.deepcopy(self.restore["optimizer"]))
        self.epoch += 1
        return {"epoch": self.epoch, "step": self.global_step, "loss": name,
                "train_loss": loss_sum / (self.world * len(batches)), **val,
                "lambda": lam, "lr": lr, "clipped_train": int(n_out), "seconds": time.perf_counter() - t0}

    def fit(self) -> Path:
        """Train until ``cfg.epochs``; returns the run directory."""
        from tqdm import tqdm

        cfg = self.cfg
        self.writer = None
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.run_dir / "config.json", lambda tmp: tmp.write_text(cfg.to_json()))
            self._write_csv()
            if self.epoch < cfg.epochs:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tb"),
                                            purge_step=self.global_step + 1 if self.global_step else None)
        total = cfg.epochs * cfg.steps_per_epoch
        disable = True if (not self.progress or self.rank) else None  # None: only on a terminal
        with tqdm(total=total, initial=self.epoch * cfg.steps_per_epoch, disable=disable, unit="step",
                  desc=f"{cfg.loss} {cfg.synth}/{cfg.scale}", file=sys.stderr) as bar:
            while self.epoch < cfg.epochs:
                row = self._run_epoch(bar)
                self.history.append(row)
                improved = row["val_jtfs_distance"] < self.best_distance
                if improved:
                    self.best_distance = row["val_jtfs_distance"]
                ckpt = self.checkpoint()  # collective under DDP
                if self.rank == 0:
                    if improved:
                        self._save(ckpt, "best.pt")
                    self._save(ckpt, "last.pt")
                    self._write_csv()
                    self._log_tb(row)
                _barrier()
                if self.callback is not None:
                    self.callback(self)
        if self.writer is not None:
            self.writer.close()
        return self.run_dir

    def _save(self, ckpt: dict[str, Any], name: str) -> None:
        write_atomic(self.ckpt_dir / name, lambda tmp: torch.save(ckpt, tmp))

    def _write_csv(self) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
                w.writeheader()
                w.writerows(self.history)

        write_atomic(self.run_dir / "log.csv", write)

    def _log_tb(self, row: Mapping[str, Any]) -> None:
        for key in ("train_loss", "val_loss", "val_jtfs_distance", "lambda", "lr", "clipped_train", "clipped_val",
                    "seconds"):
            if not (isinstance(row[key], float) and math.isnan(row[key])):
                self.writer.add_scalar(f"epoch/{key}", row[key], self.global_step)
        self.writer.flush()

    def close(self) -> None:
        """Restore the thread count; leave the process group if this trainer joined it."""
        torch.set_num_threads(self._threads)
        if self._owns_group:
            _dist().destroy_process_group()
            self._owns_group = False


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = True, progress: bool = True,
          setup: Callable[[TrainConfig], Setup] | None = None,
          callback: Callable[[Trainer], None] | None = None) -> Path:
    """Train (or finish training) one run; see :class:`Trainer` for the parameters.

    Returns
    -------
    Path
        ``run_dir``, holding ``config.json``, ``log.csv``, ``tb/`` and
        ``checkpoints/{last,best}.pt``.
    """
    trainer = Trainer(cfg, run_dir, resume=resume, progress=progress, setup=setup, callback=callback)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``run_dir/log.csv`` with numbers parsed (the ``loss`` column stays a string)."""
    with open(Path(run_dir) / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ints = {"epoch", "step", "clipped_train", "clipped_val"}
    return [{k: (v if k == "loss" else int(v) if k in ints else float(v)) for k, v in r.items()} for r in rows]


def load_encoder(checkpoint_path: str | Path, build: Callable[..., torch.nn.Module] | None = None,
                 map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The trained encoder of a checkpoint, in eval mode, and its run's config.

    Parameters
    ----------
    checkpoint_path : path-like
        A ``last.pt`` or ``best.pt``.
    build : callable, optional
        ``build(**model_spec) -> nn.Module`` (default :func:`pnpbook.models.build_encoder`).
    map_location : str or torch.device
        Where the weights go.
    """
    ckpt = torch.load(checkpoint_path, map_location=map_location, weights_only=True)
    if build is None:
        from pnpbook.models import build_encoder as build
    model = build(**ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    return model.to(map_location).eval(), TrainConfig.from_dict(ckpt["config"])
