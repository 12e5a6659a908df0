"""The one training loop: data order, augmentation, progress bar, loss/accuracy bookkeeping,
epoch-end evaluation, checkpoints, resume and the metrics files.

Dense and gated training (:mod:`dyngate.train.trainer`), CUCB (:mod:`dyngate.train.cucb.trainer`) and the
soft-pruning schedules (:mod:`dyngate.train.prune_schedule`) subclass :class:`TrainLoop` and override
only what differs: the SGD step (:meth:`TrainLoop.train_step`, :meth:`TrainLoop.training_loss`)
and, where they really differ, the epoch-end hooks.

Deterministic for a seed: the data order comes from a generator whose state is checkpointed,
so a resumed run continues bit-identically at epoch boundaries.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

import models
from dyngate.checkpoint import _load_strict, load, save
from dyngate.checkpoint import read as read_checkpoint
from dyngate.profile import SparsityProfile, profile
from dyngate.train import distributed
from dyngate.errors import CheckpointError, TrainingError
from dyngate.gating.gated_conv import GatedConv2d
from dyngate.train.optim import sgd_with_schedule
from fsio import atomic_write
from models.data import dataset_geometry, load_dataset

if TYPE_CHECKING:
    from dyngate.train.trainer import TrainConfig

# options that may differ on resume: they change how fast or where a run writes, not its numbers
RESUME_NEUTRAL = frozenset({"threads", "out"})


def build_dense_model(cfg: TrainConfig, load_init: bool = True) -> nn.Module:
    """The registry model ``cfg.model`` for the dataset's geometry, with ``cfg.init``'s weights
    (unless ``load_init`` is False: a gated init is loaded after conversion)."""
    cin, _, classes = dataset_geometry(cfg.dataset)
    model = models.build(cfg.model, in_channels=cin, num_classes=classes)
    if cfg.init and load_init:
        if read_checkpoint(cfg.init).get("conversion"):
            raise CheckpointError(f"--init {cfg.init}: expected a dense checkpoint, this one is gated")
        model = load(cfg.init, model=model).train()
    return model


# what only --resume reads: a shipped checkpoint drops it (a few MB of momentum buffers)
RESUME_STATE = ("optimizer", "scheduler", "generator", "torch_rng")


def ship(src: str, dst: str) -> None:
    """Write the training checkpoint ``src`` to ``dst`` without its resume state: weights, gate
    spec, config, history and dense accuracy stay (all that eval, profile and --init read)."""
    payload = read_checkpoint(src)
    extra = dict(payload.get("extra") or {})
    trainer = extra.get("trainer")
    if not isinstance(trainer, dict):
        raise CheckpointError(f"{src}: not a training checkpoint (no trainer record)")
    extra["trainer"] = {k: v for k, v in trainer.items() if k not in RESUME_STATE}
    save(load(src), dst, extra=extra)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop with 2-pixel zero padding and random horizontal flip, per image."""
    n, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2))
    dy = torch.randint(0, 5, (n,), generator=g)
    dx = torch.randint(0, 5, (n,), generator=g)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1),
                 rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    flip = torch.rand(n, generator=g) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): T^2 * KL(softmax(t/T) || softmax(s/T))."""
    return F.kl_div(F.log_softmax(student / temperature, 1), F.log_softmax(teacher / temperature, 1),
                    reduction="batchmean", log_target=True) * temperature ** 2


def check_finite_loss(loss: torch.Tensor, epoch: int, step: int) -> None:
    """Stop before a non-finite loss reaches the weights (and then every checkpoint)."""
    if not torch.isfinite(loss.detach()).all():
        raise TrainingError(f"epoch {epoch}, step {step}: the training loss is {float(loss.detach())}; "
                            "stopped before updating the weights (try a lower --lr)")


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, batch_size: int = 500,
             progress: bool = False) -> tuple[float, SparsityProfile]:
    """Accuracy and the measured sparsity profile on ``data`` in one pass."""
    correct = [0]
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)

    def count(out, batch):
        if not torch.isfinite(out).all():   # NaN activations close every gate: a fake speedup
            raise TrainingError("evaluation: the model's outputs are not finite (NaN/inf weights "
                                "or inputs); accuracy and MAC reduction would be meaningless")
        correct[0] += int((out.argmax(1) == batch[1]).sum())

    prof = profile(model, loader, progress=progress, on_batch=count)
    return correct[0] / len(data), prof


def mean_threshold(model: nn.Module) -> float | None:
    """Mean gate threshold over the gated layers (None for a dense model)."""
    th = [m.threshold.detach() for m in model.modules() if isinstance(m, GatedConv2d)]
    return float(torch.cat(th).mean()) if th else None


def write_metrics(out: str, doc: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """``metrics.json`` and ``metrics.csv`` in ``out``, each written atomically; CSV columns
    are the union of the rows' keys (CUCB phases log different columns)."""
    with atomic_write(os.path.join(out, "metrics.json")) as f:
        json.dump(doc, f, indent=1)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with atomic_write(os.path.join(out, "metrics.csv"), newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(rows)


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: str) -> None:
    """Refuse to resume ``path`` under options that would change the run (a new lr would be
    overridden by the restored scheduler while metrics.json claimed it). Options an older
    checkpoint lacks count as their defaults."""
    now = asdict(cfg)
    default = asdict(type(cfg)())
    diff = [f"{k} (checkpoint {saved.get(k, default[k])!r}, now {now[k]!r})"
            for k in now if k not in RESUME_NEUTRAL and saved.get(k, default[k]) != now[k]]
    if diff:
        raise TrainingError(f"--resume {path}: the training options differ from the checkpoint's: "
                            + "; ".join(diff) + "; resume with the same options or start a new run")


def load_teacher(path: str) -> nn.Module:
    """The dense KD teacher saved at ``path``, in eval mode."""
    teacher = load(path).eval().to(memory_format=torch.channels_last)
    if any(isinstance(m, GatedConv2d) for m in teacher.modules()):
        raise CheckpointError(f"--teacher {path}: the teacher must be a dense model")
    return teacher


class TrainLoop:
    """SGD training of ``cfg.model`` on ``cfg.dataset`` with cross-entropy (and KD with
    ``cfg.teacher``); subclasses override :meth:`train_step` and the epoch-end hooks.

    ``model`` replaces the model built from ``cfg`` (which is still built first, so the global
    RNG draws, and with them every later one, do not depend on whether a model is given).
    """

    def __init__(self, cfg: TrainConfig, progress: bool = True, model: nn.Module | None = None) -> None:
        cfg.validate()
        self.world = distributed.init(cfg.batch_size)
        self.cfg, self.progress = cfg, progress and self.world.main
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.train_limit)
        self.test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.test_limit)
        built = self.build_model()
        self.use_model(built if model is None else model)
        self.teacher = load_teacher(cfg.teacher) if cfg.teacher else None
        self.opt, self.sched = sgd_with_schedule(
            self.model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            schedule=cfg.schedule, epochs=cfg.epochs, milestones=cfg.milestones)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        # accuracy of the model a run starts from, where a subclass measures it (gated runs
        # from --init); kept in the checkpoint so eval can report the accuracy cost
        self.dense_accuracy: float | None = None
        if self.world.main:
            os.makedirs(cfg.out, exist_ok=True)

    def build_model(self) -> nn.Module:
        return build_dense_model(self.cfg)

    def use_model(self, model: nn.Module) -> None:
        """Train ``model`` from now on: ``self.model`` and ``self.net`` (what steps call, DDP on
        more than one rank) always name the same weights."""
        self.model = model.to(memory_format=torch.channels_last)
        self.net = distributed.wrap(self.model, self.world)

    # --- checkpoints -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "generator": self.gen.get_state(),
                "torch_rng": torch.get_rng_state(), "history": self.history,
                "config": asdict(self.cfg), "dense_accuracy": self.dense_accuracy}

    def save(self, path: str) -> None:
        """Rank 0 writes; on more ranks the others wait until the file is complete."""
        if self.world.main:
            self._write_checkpoint(path)
        self.world.barrier()

    def _write_checkpoint(self, path: str) -> None:
        save(self.model, path, extra={"trainer": self.state(),
                                      "metrics": self.history[-1] if self.history else {}})

    def resume(self, path: str) -> None:
        payload = read_checkpoint(path)
        st = payload["extra"].get("trainer")
        if st is None or "optimizer" not in st:
            raise CheckpointError(f"{path}: no trainer state to resume from (a shipped checkpoint "
                                  "keeps only its weights and config; start from it with --init)")
        check_resume_config(st.get("config", {}), self.cfg, path)
        _load_strict(self.model, payload["state_dict"], path)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.gen.set_state(st["generator"])
        torch.set_rng_state(st["torch_rng"])
        self.epoch, self.history = st["epoch"], st["history"]
        self.dense_accuracy = st.get("dense_accuracy")

    # --- one step ---------------------------------------------------------------------------
    def training_loss(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy; with a teacher, (1 - w) of it plus w times the KD term."""
        cfg = self.cfg
        loss = F.cross_entropy(out, y)
        if self.teacher is not None:
            with torch.no_grad():
                t = self.teacher(x)
            loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd_loss(out, t, cfg.kd_temperature)
        return loss

    def train_step(self, x: torch.Tensor, y: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD update on batch ``b``; returns the logits and the loss for the bookkeeping."""
        out = self.net(x)
        loss = self.training_loss(out, x, y)
        check_finite_loss(loss, self.epoch + 1, b)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return out, loss

    def progress_fields(self, acc: float, b: int) -> dict[str, str]:
        """What the progress bar shows beside the running loss."""
        return {"acc": f"{acc:.3f}"}

    # --- one epoch --------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        return self.run_epoch("epoch")

    def run_epoch(self, label: str) -> dict[str, float]:
        """One pass over the training set in the generator's order, :meth:`train_step` per
        batch, then one scheduler step; ``label`` names the pass on the progress bar."""
        cfg = self.cfg
        self.model.train()
        x_all, y_all = self.train_set.tensors
        order = torch.randperm(len(x_all), generator=self.gen)
        nb = (len(order) + cfg.batch_size - 1) // cfg.batch_size
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(range(nb), desc=f"{label} {self.epoch + 1}/{cfg.epochs}", disable=not self.progress,
                   leave=False)
        for b in bar:
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = x_all[idx], y_all[idx]
            if cfg.augment:   # on the whole batch, so every rank's generator stays in step
                x = augment(x, self.gen)
            mine = self.world.slice(len(idx))
            if mine.start == mine.stop:
                continue
            x, y = x[mine], y[mine]
            x = x.contiguous(memory_format=torch.channels_last)  # ~1.3x faster convs on CPU
            out, loss = self.train_step(x, y, b)
            total += len(y)
            correct += int((out.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
            if b % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / total:.3f}", **self.progress_fields(correct / total, b))
        self.sched.step()
        total, correct, loss_sum = distributed.sum_across([total, correct, loss_sum], self.world)
        return {"train_loss": loss_sum / total, "train_acc": correct / total}

    def row_start(self) -> dict[str, Any]:
        """The first columns of an epoch's metrics row (before training changes the lr)."""
        return {"epoch": self.epoch + 1, "lr": self.opt.param_groups[0]["lr"]}

    def evaluate_epoch(self, row: dict[str, Any]) -> dict[str, Any]:
        """Test metrics after a training epoch (``row`` holds its training metrics)."""
        acc, prof = evaluate(self.model, self.test_set)
        t = prof.totals
        return dict(test_acc=acc, mac_reduction=t["mac_reduction"],
                    gated_mac_reduction=t["gated_mac_reduction"],
                    mean_threshold=mean_threshold(self.model))

    # --- the run ----------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train to ``cfg.epochs`` (or stop after epoch ``stop_after``, as an interruption would)."""
        cfg = self.cfg
        last = min(cfg.epochs, stop_after or cfg.epochs)
        while self.epoch < last:
            t0 = time.perf_counter()
            row = {**self.row_start(), **self.train_epoch()}
            row["train_seconds"] = time.perf_counter() - t0
            if self.world.main:   # one evaluation; rank 0's weights are every rank's
                row.update(self.evaluate_epoch(row))
            self._record(row)
        return self.history

    def _record(self, row: dict[str, Any], advance: bool = True) -> None:
        """Append ``row`` (a finished epoch when ``advance``), checkpoint, then log it."""
        if advance:
            self.epoch += 1
        self.history.append(row)
        self.save(os.path.join(self.cfg.out, "last.pt"))
        if self.world.main:   # after the checkpoint: metrics never describe weights not on disk
            self._log()
        if self.progress:
            tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                for k, v in row.items()))

    def metrics_header(self) -> dict[str, Any]:
        """What ``metrics.json`` holds before the per-epoch rows."""
        return {"config": asdict(self.cfg), "dense_accuracy": self.dense_accuracy}

    def _log(self) -> None:
        write_metrics(self.cfg.out, {**self.metrics_header(), "epochs": self.history}, self.history)
