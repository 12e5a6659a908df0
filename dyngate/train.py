"""Dense and gated training on real data (SGD, cosine/step schedule, CGNet threshold loss, KD).

Deterministic for a seed: the data order comes from a generator whose state is checkpointed,
so a resumed run continues bit-identically at epoch boundaries.
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

import dyngate
import models
from dyngate import distributed
from dyngate.checkpoint import read as read_checkpoint
from dyngate.errors import CheckpointError, TrainingError
from dyngate.convert import RULES, GateOptions
from dyngate.gating import GatedConv2d
from dyngate.options import option
from fsio import atomic_write
from models.data import DATASETS, dataset_geometry, load_dataset


@dataclass
class TrainConfig(GateOptions):
    model: str = option("resnet20", "architecture from the model registry (models.REGISTRY)",
                        allowed="one of: " + ", ".join(sorted(models.REGISTRY)))
    dataset: str = option("fashion-mnist", "training and test data", choices=DATASETS)
    data_dir: str | None = option(None, "dataset folder (Fashion-MNIST: /usr/share/datasets/fashion-mnist)",
                                  allowed="a folder holding the dataset's files")
    epochs: int = option(10, "training epochs", allowed=">= 1")
    batch_size: int = option(128, "images per SGD step", allowed=">= 1")
    lr: float = option(0.1, "initial SGD learning rate (0 evaluates the losses without updates)", allowed=">= 0, finite")
    momentum: float = option(0.9, "SGD momentum", allowed="[0, 1)")
    weight_decay: float = option(5e-4, "L2 weight decay (not on BN, bias or thresholds)", allowed=">= 0")
    schedule: str = option("cosine", "learning-rate schedule", choices=("cosine", "step"))
    milestones: list[int] = option([], "epochs at which the step schedule multiplies lr by 0.1",
                                   allowed="increasing epochs")
    augment: bool = option(True, "random crop (pad 2) and horizontal flip of training images")
    gated: bool = option(False, "train a CGNet-gated model (dyngate.convert)")
    target: float = option(1.0, "CGNet target threshold T of the gate loss", allowed="finite")
    gate_lambda: float = option(1e-4, "weight of the gate loss sum (Delta - T)^2", allowed=">= 0")
    teacher: str | None = option(None, "dense teacher checkpoint for knowledge distillation",
                                 allowed="a dyngate checkpoint")
    kd_temperature: float = option(4.0, "distillation temperature", allowed="> 0")
    kd_weight: float = option(0.9, "weight of the KD term; (1 - w) on cross-entropy", allowed="[0, 1]")
    init: str | None = option(None, "start from a dense checkpoint's weights", allowed="a dyngate checkpoint")
    seed: int = option(0, "seed of weights, data order and augmentation", allowed="any integer")
    train_limit: int | None = option(None, "use only the first N training images", allowed=">= 1", kind=int)
    test_limit: int | None = option(None, "evaluate on only the first N test images", allowed=">= 1", kind=int)
    threads: int | None = option(None, "torch CPU threads (none: torch's default)", allowed=">= 1", kind=int)
    out: str = option("runs/train", "output folder for checkpoints and metrics", allowed="a writable folder")
    cucb: bool = option(False, "CUCB dynamic channel execution (dyngate.cucb)")
    keep: float = option(0.5, "CUCB target fraction of each group's channels", allowed="(0, 1]")
    ucb_c: float = option(1.5, "CUCB exploration constant c (3/2: Chen et al. 2013)", allowed=">= 0")
    cucb_warmup: int = option(1, "epochs over which keep anneals from 1.0 to --keep", allowed=">= 0")
    cucb_finetune: int = option(1, "epochs of fine-tuning the extracted compact model", allowed=">= 0")
    cucb_finetune_lr: float = option(0.01, "learning rate of the CUCB fine-tuning", allowed=">= 0")
    cucb_bn_batches: int = option(0, "forward-only BN re-calibration batches after extraction",
                                  allowed=">= 0")

    def validate(self) -> None:
        """One-line error naming the option for any value that would make the run fail late
        or train silently wrong (a NaN lr, a negative limit that slices from the end)."""
        _check_types(self)
        if self.model not in models.REGISTRY:
            raise ValueError(f"--model: unknown model {self.model!r}; known: {', '.join(sorted(models.REGISTRY))}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"--schedule must be 'cosine' or 'step', got {self.schedule!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"--{_flag(f.name)} must be a finite number, got {v}")
        for name in ("epochs", "batch_size", "partitions", "granularity"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "test_limit", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{_flag(name)} must be >= 1 (or left out), got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "gate_lambda"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.kd_temperature <= 0:
            raise ValueError(f"--kd-temperature must be > 0, got {self.kd_temperature}")
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"--milestones must be epochs >= 1, got {self.milestones}")
        if len(self.tile) != 2 or min(self.tile) < 1:
            raise ValueError(f"--tile must be two integers >= 1 (rows columns), got {self.tile}")
        if self.rule not in RULES:
            raise ValueError(f"--rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not 0 <= self.kd_weight <= 1:
            raise ValueError(f"--kd-weight must be in [0, 1], got {self.kd_weight}")
        if not 0 < self.keep <= 1:
            raise ValueError(f"--keep must be in (0, 1], got {self.keep}")
        for name in ("ucb_c", "cucb_warmup", "cucb_finetune", "cucb_finetune_lr", "cucb_bn_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.cucb and self.gated:
            raise ValueError("--cucb and --gated are exclusive: CUCB trains a dense model")
        for name in ("teacher", "init"):
            p = getattr(self, name)
            if p is not None and not os.path.exists(p):
                raise CheckpointError(f"--{name}: checkpoint {p} does not exist")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _check_types(cfg: TrainConfig) -> None:
    """Values from YAML arrive untyped: each must have its default's type (an int may stand
    for a float), lists of ints where the default is a list."""
    for f in fields(TrainConfig):
        v = getattr(cfg, f.name)
        d = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
        if v is None:
            if d is not None:
                raise ValueError(f"--{_flag(f.name)} must be given a value, got null")
            continue
        want = (int,) if f.name.endswith("limit") or f.name == "threads" else (str,)
        if d is not None:
            want = (int, float) if isinstance(d, float) else (type(d),)
        bad = (isinstance(v, bool) and bool not in want) or not isinstance(v, want)
        if isinstance(v, list):
            bad = bad or any(isinstance(x, bool) or not isinstance(x, int) for x in v)
        if bad:
            raise ValueError(f"training option '{f.name}' must be {want[-1].__name__}, got {v!r}")


def build_model(cfg: TrainConfig) -> nn.Module:
    cin, _, classes = dataset_geometry(cfg.dataset)
    model = models.build(cfg.model, in_channels=cin, num_classes=classes)
    if cfg.init:
        if read_checkpoint(cfg.init).get("conversion"):
            raise CheckpointError(f"--init {cfg.init}: expected a dense checkpoint, this one is gated")
        model = dyngate.load(cfg.init, model=model).train()
    if cfg.gated:
        model = dyngate.convert(model, cfg.partitions, cfg.grouped, **cfg.convert_kwargs())
    return model


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Thresholds, BN and bias parameters get no weight decay (as in the CGNet scripts)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("threshold") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): T^2 * KL(softmax(t/T) || softmax(s/T))."""
    return F.kl_div(F.log_softmax(student / temperature, 1), F.log_softmax(teacher / temperature, 1),
                    reduction="batchmean", log_target=True) * temperature ** 2


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, batch_size: int = 500,
             progress: bool = False) -> tuple[float, dyngate.SparsityProfile]:
    """Accuracy and the measured sparsity profile on ``data`` in one pass."""
    correct = [0]
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)

    def count(out, batch):
        if not torch.isfinite(out).all():   # NaN activations close every gate: a fake speedup
            raise TrainingError("evaluation: the model's outputs are not finite (NaN/inf weights "
                                "or inputs); accuracy and MAC reduction would be meaningless")
        correct[0] += int((out.argmax(1) == batch[1]).sum())

    prof = dyngate.profile(model, loader, progress=progress, on_batch=count)
    return correct[0] / len(data), prof


class Trainer:
    def __init__(self, cfg: TrainConfig, progress: bool = True) -> None:
        cfg.validate()
        self.world = distributed.init(cfg.batch_size)
        self.cfg, self.progress = cfg, progress and self.world.main
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.train_limit)
        self.test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, cfg.test_limit)
        self.model = build_model(cfg).to(memory_format=torch.channels_last)
        self.net = distributed.wrap(self.model, self.world)   # what training steps call
        self.teacher = None
        if cfg.teacher:
            self.teacher = dyngate.load(cfg.teacher).eval().to(memory_format=torch.channels_last)
            if any(isinstance(m, GatedConv2d) for m in self.teacher.modules()):
                raise CheckpointError(f"--teacher {cfg.teacher}: the teacher must be a dense model")
        self.opt = torch.optim.SGD(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                   momentum=cfg.momentum, nesterov=True)
        steps = cfg.epochs
        self.sched = (torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, steps)
                      if cfg.schedule == "cosine" else
                      torch.optim.lr_scheduler.MultiStepLR(self.opt, cfg.milestones, 0.1))
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        # accuracy of the dense model a gated run starts from (all gates open = the --init
        # weights exactly), kept in the checkpoint so eval can report the accuracy cost
        self.dense_accuracy: float | None = None
        if self.world.main:
            os.makedirs(cfg.out, exist_ok=True)

    def measure_dense_accuracy(self) -> None:
        if self.cfg.gated and self.cfg.init and self.dense_accuracy is None and self.world.main:
            with dyngate.gates_open(self.model):
                self.dense_accuracy = evaluate(self.model, self.test_set)[0]

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
        dyngate.save(self.model, path, extra={"trainer": self.state(),
                                              "metrics": self.history[-1] if self.history else {}})

    def resume(self, path: str) -> None:
        payload = read_checkpoint(path)
        st = payload["extra"].get("trainer")
        if st is None or "optimizer" not in st:
            raise CheckpointError(f"{path}: no trainer state to resume from (a shipped checkpoint "
                                  "keeps only its weights and config; start from it with --init)")
        check_resume_config(st.get("config", {}), self.cfg, path)
        dyngate.checkpoint._load_strict(self.model, payload["state_dict"], path)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.gen.set_state(st["generator"])
        torch.set_rng_state(st["torch_rng"])
        self.epoch, self.history = st["epoch"], st["history"]
        self.dense_accuracy = st.get("dense_accuracy")

    # --- training ---------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        model.train()
        x_all, y_all = self.train_set.tensors
        order = torch.randperm(len(x_all), generator=self.gen)
        nb = (len(order) + cfg.batch_size - 1) // cfg.batch_size
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(range(nb), desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not self.progress,
                   leave=False)
        for b in bar:
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = x_all[idx], y_all[idx]
            if cfg.augment:   # on the whole batch, so every rank's generator stays in step
                x = _augment(x, self.gen)
            mine = self.world.slice(len(idx))
            if mine.start == mine.stop:
                continue
            x, y = x[mine], y[mine]
            x = x.contiguous(memory_format=torch.channels_last)  # ~1.3x faster convs on CPU
            out = self.net(x)
            loss = F.cross_entropy(out, y)
            if self.teacher is not None:
                with torch.no_grad():
                    t = self.teacher(x)
                loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd_loss(out, t, cfg.kd_temperature)
            if cfg.gated:
                loss = loss + cfg.gate_lambda * dyngate.gate_loss(model, cfg.target)
            check_finite_loss(loss, self.epoch + 1, b)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += len(y)
            correct += int((out.argmax(1) == y).sum())
            loss_sum += float(loss.detach()) * len(y)
            if b % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        self.sched.step()
        total, correct, loss_sum = distributed.sum_across([total, correct, loss_sum], self.world)
        return {"train_loss": loss_sum / total, "train_acc": correct / total}

    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train to ``cfg.epochs`` (or stop after epoch ``stop_after``, as an interruption would)."""
        cfg = self.cfg
        self.measure_dense_accuracy()
        last = min(cfg.epochs, stop_after or cfg.epochs)
        while self.epoch < last:
            t0 = time.perf_counter()
            row = {"epoch": self.epoch + 1, "lr": self.opt.param_groups[0]["lr"], **self.train_epoch()}
            row["train_seconds"] = time.perf_counter() - t0
            if self.world.main:   # one evaluation; rank 0's weights are every rank's
                acc, prof = evaluate(self.model, self.test_set)
                t = prof.totals
                row.update(test_acc=acc, mac_reduction=t["mac_reduction"],
                           gated_mac_reduction=t["gated_mac_reduction"],
                           mean_threshold=_mean_threshold(self.model))
            self.epoch += 1
            self.history.append(row)
            self.save(os.path.join(cfg.out, "last.pt"))
            if self.world.main:   # after the checkpoint: metrics never describe weights not on disk
                self._log()
            if self.progress:
                tqdm.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                    for k, v in row.items()))
        return self.history

    def _log(self) -> None:
        write_metrics(self.cfg.out, {"config": asdict(self.cfg), "dense_accuracy": self.dense_accuracy,
                                     "epochs": self.history}, self.history)


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


# options that may differ on resume: they change how fast or where a run writes, not its numbers
RESUME_NEUTRAL = frozenset({"threads", "out"})


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: str) -> None:
    """Refuse to resume ``path`` under options that would change the run (a new lr would be
    overridden by the restored scheduler while metrics.json claimed it). Options an older
    checkpoint lacks count as their defaults."""
    now = asdict(cfg)
    default = asdict(TrainConfig())
    diff = [f"{k} (checkpoint {saved.get(k, default[k])!r}, now {now[k]!r})"
            for k in now if k not in RESUME_NEUTRAL and saved.get(k, default[k]) != now[k]]
    if diff:
        raise TrainingError(f"--resume {path}: the training options differ from the checkpoint's: "
                            + "; ".join(diff) + "; resume with the same options or start a new run")


def check_finite_loss(loss: torch.Tensor, epoch: int, step: int) -> None:
    """Stop before a non-finite loss reaches the weights (and then every checkpoint)."""
    if not torch.isfinite(loss.detach()).all():
        raise TrainingError(f"epoch {epoch}, step {step}: the training loss is {float(loss.detach())}; "
                            "stopped before updating the weights (try a lower --lr)")


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors in ``state`` holding NaN or infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def _mean_threshold(model: nn.Module) -> float | None:
    th = [m.threshold.detach() for m in model.modules() if isinstance(m, GatedConv2d)]
    return float(torch.cat(th).mean()) if th else None


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown training option(s): {sorted(unknown)}")
    cfg = TrainConfig(**d)
    cfg.validate()
    return cfg
