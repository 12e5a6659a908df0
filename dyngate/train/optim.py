"""The one SGD + learning-rate schedule factory of every training run (dense, gated, CUCB,
pruning schedules): the options come from the caller, nothing here has a default of its own
beyond Nesterov momentum, which all of them use."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from dyngate.errors import ConfigError

SCHEDULES = ("cosine", "step")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Thresholds, BN and bias parameters get no weight decay (as in the CGNet scripts)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith("threshold") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sgd_with_schedule(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
                      schedule: str, epochs: int, milestones: Sequence[int] = (),
                      nesterov: bool = True) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LRScheduler]:
    """SGD over :func:`param_groups` and its per-epoch scheduler: ``cosine`` anneals to 0 over
    ``epochs``, ``step`` multiplies the rate by 0.1 at each of ``milestones``."""
    opt = torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum,
                          nesterov=nesterov)
    if schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    if schedule == "step":
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), 0.1)
    raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
