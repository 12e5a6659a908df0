"""Pruning during training: soft (SFP), gradually hard (GHFP) and iterative schedules.

The schedules plug into the shared training loop (:class:`ScheduledTrainer` is a
:class:`~dyngate.train.loop.TrainLoop` whose epoch ends with the schedule's step) or into plain loops
(:func:`iterative_prune`); gradient masks and the Network Slimming penalty use tensor gradient hooks, which run between
``backward()`` and ``optimizer.step()`` without touching the training loop.

Soft pruning zeroes a removed row's filters *and* its BN gamma and beta. Zeroing only the
filters would leave the constant act(beta) flowing into the next layer (the leak NNI#4402 hit),
so the soft model and the final hard-pruned one would differ; with gamma = beta = 0 the channel
is exactly zero in train and eval mode, and :meth:`SoftPruningSchedule.finalize` is exact.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from dyngate.pruning import criteria
from dyngate.errors import ConfigError, ConversionError
from dyngate.graph import ChannelGroup, capture
from dyngate.pruning.prune import _check_ratio, prune, select_keep
from dyngate.pruning.surgery import prune_groups, refuse_gated
from dyngate.train.loop import TrainLoop

if TYPE_CHECKING:
    from dyngate.train.trainer import TrainConfig

MODES = ("sfp", "ghfp")


def _row_params(model: nn.Module, g: ChannelGroup) -> list[tuple[torch.Tensor, np.ndarray]]:
    """(parameter, indices along dim 0) for everything that produces group ``g``'s channels."""
    out = []
    for (layer, role), idx in g.members.items():
        if role == "out":
            m = model.get_submodule(layer)
            out.append((m.weight, idx.ravel()))
            if m.bias is not None:
                out.append((m.bias, idx.ravel()))
    for bn, idx in g.bns.items():
        m = model.get_submodule(bn)
        if m.affine:
            out += [(m.weight, idx.ravel()), (m.bias, idx.ravel())]
    return out


class SoftPruningSchedule:
    """Soft filter pruning (He et al., IJCAI'18, arXiv:1808.06866) and a gradually hard variant.

    ``sfp``: after every epoch, re-score with ``method`` and zero the lowest ``ratio`` of each
    group's rows (local) or of all rows (global); zeroed rows keep training and may come back.
    ``ghfp``: the same, but a growing share h(e) = (e + 1) / epochs of each group's removed rows
    (the lowest-scoring) becomes *hard*: their gradients are masked and they are never revived,
    so the schedule moves from fully soft to fully hard by the last epoch. (Our reading of
    "gradually hard filter pruning"; the published details were not verified.)
    ``finalize`` removes the last selection physically with :func:`surgery.prune_groups`.
    """

    def __init__(self, model: nn.Module, method: str, ratio: float, *, example_input: torch.Tensor,
                 epochs: int, mode: str = "sfp", scope: str = "local", data: Any = None,
                 round_to: int | None = None, ignore: Iterable[str] = (),
                 max_group_ratio: float | None = None) -> None:
        if mode not in MODES:
            raise ConversionError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(epochs, int) or epochs < 1:
            raise ConversionError(f"epochs must be a positive integer, got {epochs!r}")
        if method not in criteria.CRITERIA:
            raise ConversionError(f"unknown pruning method {method!r}; known: {', '.join(sorted(criteria.CRITERIA))}")
        refuse_gated(model, "SoftPruningSchedule")
        self.ratio = _check_ratio(ratio, "ratio")
        self.method, self.mode, self.epochs, self.scope = method, mode, epochs, scope
        self.example_input, self.data, self.round_to = example_input, data, round_to
        self.max_group_ratio = max_group_ratio
        self.view = capture(model, example_input)
        ignore = set(ignore)
        missing = ignore - set(self.view.layers)
        if missing:
            raise ConversionError(f"ignore: no conv/linear layer named {sorted(missing)[0]!r}")
        self.groups = [g for g in self.view.groups if g.prunable
                       and not any(role == "out" and l in ignore for l, role in g.members)]
        self.keep: dict[int, list[int]] = {}
        self.hard: dict[int, set[int]] = {g.id: set() for g in self.groups}
        self._masks: dict[int, torch.Tensor] = {}   # id(param) -> 0/1 gradient mask
        self._handles: list = []

    # --- per epoch -----------------------------------------------------------------------------
    def on_epoch_end(self, model: nn.Module, epoch: int) -> dict[int, list[int]]:
        """Re-select and zero; ``epoch`` counts from 0. Returns the keep set."""
        ctx = criteria.Context(model, self.view, self.groups, self.data)
        scores = criteria.score(self.method, ctx)
        for gid, rows in self.hard.items():
            if rows:
                scores[gid] = scores[gid].copy()
                scores[gid][list(rows)] = -np.inf  # hard rows are never revived
        self.keep = select_keep(self.view, scores, self.ratio, scope=self.scope,
                                round_to=self.round_to, max_group_ratio=self.max_group_ratio)
        if self.mode == "ghfp":
            share = min(1.0, (epoch + 1) / self.epochs)
            for gid, kept in self.keep.items():
                removed = np.setdiff1d(np.arange(len(scores[gid])), kept)
                target = math.ceil(share * len(removed))
                soft = [r for r in removed[np.argsort(scores[gid][removed], kind="stable")]
                        if r not in self.hard[gid]]
                self.hard[gid].update(int(r) for r in soft[:max(0, target - len(self.hard[gid]))])
            self._update_grad_masks(model)
        self.zero(model)
        return self.keep

    def zero(self, model: nn.Module) -> None:
        """Zero the removed rows' filters, biases and BN gamma/beta (see the module docstring)."""
        by_id = {g.id: g for g in self.groups}
        with torch.no_grad():
            for gid, kept in self.keep.items():
                gone = np.setdiff1d(np.arange(by_id[gid].size), kept)
                for p, idx in _row_params(model, by_id[gid]):
                    p[idx.reshape(by_id[gid].size, -1)[gone].ravel()] = 0

    def _update_grad_masks(self, model: nn.Module) -> None:
        by_id = {g.id: g for g in self.groups}
        for gid, rows in self.hard.items():
            g = by_id[gid]
            for p, idx in _row_params(model, g):
                mask = self._masks.get(id(p))
                if mask is None:
                    mask = torch.ones(p.shape[0], *([1] * (p.dim() - 1)), dtype=p.dtype)
                    self._masks[id(p)] = mask
                    self._handles.append(p.register_hook(lambda grad, m=mask: grad * m))
                if rows:
                    mask[idx.reshape(g.size, -1)[sorted(rows)].ravel()] = 0

    def finalize(self, model: nn.Module) -> nn.Module:
        """Physically remove the last selection (exact: the rows are already zero)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if not self.keep:
            raise ConversionError("finalize: on_epoch_end has not selected anything yet")
        self.zero(model)
        meta = {"method": self.method, "ratio": self.ratio, "scope": self.scope, "schedule": self.mode}
        return prune_groups(model, self.example_input, self.keep, meta=meta)


def add_slimming_penalty(model: nn.Module, lam: float = 1e-5) -> list:
    """Network Slimming's sparsity term lam * sum |gamma| as gradient hooks on every BN weight
    (grad += lam * sign(gamma)), for training before ``bn_scale`` pruning. Returns the hook
    handles; call ``h.remove()`` on each to stop."""
    handles = []
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.affine:
            w = m.weight
            handles.append(w.register_hook(lambda g, w=w: g + lam * torch.sign(w.detach())))
    return handles


class ScheduledTrainer(TrainLoop):
    """The project's training loop, optionally on a given (e.g. pruned) model, with a
    soft-pruning schedule applied after every epoch. Everything else (data, SGD, schedule,
    checkpoints, evaluation) is the loop's. Dense models only: the schedules refuse gated ones."""

    def __init__(self, cfg: TrainConfig, *, model: nn.Module | None = None,
                 schedule: SoftPruningSchedule | None = None, progress: bool = True) -> None:
        if cfg.gated:
            raise ConfigError("ScheduledTrainer: --gated is not supported; pruning schedules "
                              "train dense models (gated training is dyngate.train.Trainer)")
        super().__init__(cfg, progress, model=model)
        self.schedule = schedule

    def train_epoch(self) -> dict[str, float]:
        row = super().train_epoch()
        if self.schedule is not None:
            self.schedule.on_epoch_end(self.model, self.epoch)
        return row


def iterative_prune(model: nn.Module, method: str, ratio: float, steps: int, *,
                    finetune: Callable[[nn.Module], nn.Module] | None = None,
                    **prune_kwargs: Any) -> nn.Module:
    """Prune to ``ratio`` of the original rows in ``steps`` equal steps (cumulative targets
    ratio * i / steps, as Torch-Pruning's linear scheduler), calling ``finetune`` after each.

    Each step's ratio is relative to the current model: 1 - (1 - r_i) / (1 - r_{i-1}); each
    step floors its per-group count, so a group may end a channel wider than one-shot pruning."""
    ratio = _check_ratio(ratio, "ratio")
    if not isinstance(steps, int) or steps < 1:
        raise ConversionError(f"steps must be a positive integer, got {steps!r}")
    prev = 0.0
    for i in range(1, steps + 1):
        target = ratio * i / steps
        model = prune(model, method, 1 - (1 - target) / (1 - prev), **prune_kwargs)
        prev = target
        if finetune is not None:
            model = finetune(model)
    return model
