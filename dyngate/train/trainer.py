"""Dense and gated training on real data (SGD, cosine/step schedule, CGNet threshold loss, KD):
the run's options (:class:`TrainConfig`) and the gated step on the shared loop (:mod:`dyngate.train.loop`).

Deterministic for a seed: the data order comes from a generator whose state is checkpointed,
so a resumed run continues bit-identically at epoch boundaries.
"""
from __future__ import annotations

import math
import os
from dataclasses import MISSING, dataclass, fields
from typing import Any

import torch
import torch.nn as nn

import models
from dyngate.checkpoint import _load_strict
from dyngate.checkpoint import read as read_checkpoint
from dyngate.errors import CheckpointError, ConfigError
from dyngate.gating.convert import RULES, GateOptions, convert
from dyngate.gating.gated_conv import gate_loss, gates_open
from dyngate.train.loop import TrainLoop, build_dense_model, evaluate
from dyngate.options import option
from models.data import DATASETS
from dyngate.train.optim import SCHEDULES


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
    schedule: str = option("cosine", "learning-rate schedule", choices=SCHEDULES)
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
    init: str | None = option(None, "start from a checkpoint's weights: a dense one, or a gated one "
                              "converted as this run converts (trains it on under this run's schedule)",
                              allowed="a dyngate checkpoint")
    seed: int = option(0, "seed of weights, data order and augmentation", allowed="any integer")
    train_limit: int | None = option(None, "use only the first N training images", allowed=">= 1", kind=int)
    test_limit: int | None = option(None, "evaluate on only the first N test images", allowed=">= 1", kind=int)
    threads: int | None = option(None, "torch CPU threads (none: torch's default)", allowed=">= 1", kind=int)
    out: str = option("runs/train", "output folder for checkpoints and metrics", allowed="a writable folder")
    cucb: bool = option(False, "CUCB dynamic channel execution (dyngate.train.cucb)")
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
            raise ConfigError(f"--model: unknown model {self.model!r}; known: {', '.join(sorted(models.REGISTRY))}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be 'cosine' or 'step', got {self.schedule!r}")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"--{_flag(f.name)} must be a finite number, got {v}")
        for name in ("epochs", "batch_size", "partitions", "granularity"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "test_limit", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} must be >= 1 (or left out), got {getattr(self, name)}")
        for name in ("lr", "weight_decay", "gate_lambda"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.kd_temperature <= 0:
            raise ConfigError(f"--kd-temperature must be > 0, got {self.kd_temperature}")
        if any(m < 1 for m in self.milestones):
            raise ConfigError(f"--milestones must be epochs >= 1, got {self.milestones}")
        if len(self.tile) != 2 or min(self.tile) < 1:
            raise ConfigError(f"--tile must be two integers >= 1 (rows columns), got {self.tile}")
        if self.rule not in RULES:
            raise ConfigError(f"--rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        if not 0 <= self.kd_weight <= 1:
            raise ConfigError(f"--kd-weight must be in [0, 1], got {self.kd_weight}")
        if not 0 < self.keep <= 1:
            raise ConfigError(f"--keep must be in (0, 1], got {self.keep}")
        for name in ("ucb_c", "cucb_warmup", "cucb_finetune", "cucb_finetune_lr", "cucb_bn_batches"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.cucb and self.gated:
            raise ConfigError("--cucb and --gated are exclusive: CUCB trains a dense model")
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
                raise ConfigError(f"--{_flag(f.name)} must be given a value, got null")
            continue
        want = (int,) if f.name.endswith("limit") or f.name == "threads" else (str,)
        if d is not None:
            want = (int, float) if isinstance(d, float) else (type(d),)
        bad = (isinstance(v, bool) and bool not in want) or not isinstance(v, want)
        if isinstance(v, list):
            bad = bad or any(isinstance(x, bool) or not isinstance(x, int) for x in v)
        if bad:
            raise ConfigError(f"training option '{f.name}' must be {want[-1].__name__}, got {v!r}")


# what a gated --init must share with the run that trains it on (not threshold_init: its
# thresholds are loaded, and not rule: the layer list is compared)
SAME_GATES = ("layers", "partitions", "grouped", "granularity", "tile", "alpha", "sparse_bp")


def _gated_init(cfg: TrainConfig) -> dict[str, Any] | None:
    """The ``--init`` checkpoint's contents when it is a gated one, else None."""
    payload = read_checkpoint(cfg.init) if cfg.init else None
    return payload if payload and payload.get("conversion") else None


def build_model(cfg: TrainConfig) -> nn.Module:
    """The dense model of :func:`~dyngate.train.loop.build_dense_model`, converted when
    ``cfg.gated``; a gated ``--init`` is loaded into the converted model (weights, thresholds,
    decision statistics) after checking it was converted the same way."""
    payload = _gated_init(cfg)
    if payload is None:
        model = build_dense_model(cfg)
        return convert(model, cfg.partitions, cfg.grouped, **cfg.convert_kwargs()) if cfg.gated else model
    if not cfg.gated:
        raise CheckpointError(f"--init {cfg.init}: this checkpoint is gated; train it on with --gated "
                              "and its gate options, or start from a dense checkpoint")
    model = convert(build_dense_model(cfg, load_init=False), cfg.partitions, cfg.grouped,
                    **cfg.convert_kwargs())
    arch = (payload.get("arch") or {}).get("name")
    if arch != cfg.model:
        raise CheckpointError(f"--init {cfg.init}: it holds a {arch or payload.get('class')} model, "
                              f"this run trains --model {cfg.model}")
    saved, own = payload["conversion"], model.dyngate_spec
    for k in SAME_GATES:
        if saved.get(k) != own[k]:
            flag = "--rule" if k == "layers" else f"--{_flag(k)}"
            raise CheckpointError(f"--init {cfg.init}: its gates have {k}={saved.get(k)!r}, "
                                  f"this run's {own[k]!r} (check {flag})")
    _load_strict(model, payload["state_dict"], cfg.init)
    return model.train()


class Trainer(TrainLoop):
    """Dense or CGNet-gated training: the shared loop with the gate loss in the step and, for a
    gated run from ``--init``, the starting dense model's accuracy measured first."""

    def build_model(self) -> nn.Module:
        return build_model(self.cfg)

    def measure_dense_accuracy(self) -> None:
        if not (self.cfg.gated and self.cfg.init and self.dense_accuracy is None and self.world.main):
            return
        gated = _gated_init(self.cfg)
        if gated is not None:  # trained on: the dense model is the one its first run started from
            self.dense_accuracy = ((gated.get("extra") or {}).get("trainer") or {}).get("dense_accuracy")
            return
        with gates_open(self.model):
            self.dense_accuracy = evaluate(self.model, self.test_set)[0]

    def training_loss(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loop's loss plus ``gate_lambda`` times the CGNet threshold loss when gated."""
        loss = super().training_loss(out, x, y)
        if self.cfg.gated:
            loss = loss + self.cfg.gate_lambda * gate_loss(self.model, self.cfg.target)
        return loss

    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Train to ``cfg.epochs`` (or stop after epoch ``stop_after``, as an interruption would)."""
        self.measure_dense_accuracy()
        return super().fit(stop_after)


def nonfinite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors in ``state`` holding NaN or infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"unknown training option(s): {sorted(unknown)}")
    cfg = TrainConfig(**d)
    cfg.validate()
    return cfg
