"""CUCB training: bandit-chosen channels per step, sliced forward/backward, compact model out.

Phases (all epochs of ``cfg.epochs`` are bandit epochs):

1. Bandit phase. Each step the keep fraction is annealed linearly from 1.0 to ``cfg.keep`` over
   ``cfg.cucb_warmup`` epochs; every prunable group plays its top-k arms by UCB index; the
   sliced sub-network runs forward and backward on the batch; the sliced SGD step updates only
   the kept blocks; the played arms get their Taylor rewards. Each epoch logs the training MACs
   actually executed against those of a dense step on the same images, and evaluates the
   exploitation sub-network (top-k by empirical mean) on the test set. Resumable like every
   run of the shared loop :class:`~dyngate.train.loop.TrainLoop` (the bandit statistics travel in the
   checkpoint).
2. Extraction. The top-k rows by empirical mean at the target keep fraction become a physically
   smaller model (:func:`dyngate.train.cucb.extract.extract`); with ``cfg.cucb_bn_batches`` its BN
   statistics are then recomputed on that many training batches (:meth:`recalibrate_bn`).
3. Fine-tune. ``cfg.cucb_finetune`` epochs of plain SGD on the compact model at
   ``cfg.cucb_finetune_lr`` (cosine), then the final evaluation with ``dyngate.profile``.

Training MACs are counted as 3x the forward MACs of the executed layers (forward, gradient with
respect to the input, gradient with respect to the weights), for the sliced and the dense step
alike; BN, activations and the bandit's bookkeeping are not counted (they are linear in the
activations and small next to the convolutions).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from dyngate.checkpoint import read as read_checkpoint
from dyngate.train.cucb.bandit import ChannelBandits, keep_fraction
from dyngate.train.cucb.extract import count_params, extract
from dyngate.train.cucb.plan import full_selection, make_plan
from dyngate.train.cucb.reward import row_scores, taylor_scores
from dyngate.train.cucb.sliced import SlicedExecutor, sliced_sgd_step
from dyngate.errors import CheckpointError, ConfigError
from dyngate.graph import capture
from dyngate.train.loop import TrainLoop, check_finite_loss, evaluate
from dyngate.train.optim import sgd_with_schedule
from dyngate.train.trainer import TrainConfig
from models.data import dataset_geometry

TRAIN_MACS_PER_FORWARD = 3


class CUCBTrainer(TrainLoop):
    """The shared training loop with CUCB channel selection in the step; same data, logging
    and checkpoint options as :class:`~dyngate.train.trainer.Trainer`. ``self.model`` is the dense
    model during the bandit phase and the compact model after :meth:`finish`."""

    def __init__(self, cfg: TrainConfig, progress: bool = True) -> None:
        if not cfg.cucb:
            raise ConfigError("CUCBTrainer needs cfg.cucb = True (--cucb)")
        super().__init__(cfg, progress)
        if self.world.size > 1:   # the sliced executor runs sub-networks outside DDP's hooks
            raise ConfigError(f"--cucb runs in one process; got a torchrun world of {self.world.size}")
        cin, size, _ = dataset_geometry(cfg.dataset)
        self.example_shape = (1, cin, size, size)
        self.dense_model = self.model
        self.view = capture(self.model, torch.zeros(self.example_shape))
        self.executor = SlicedExecutor(self.view)
        self.full_plan = make_plan(self.view, full_selection(self.view))
        self.bandits = ChannelBandits({g.id: g.size for g in self.view.groups if g.prunable},
                                      cfg.ucb_c)
        self.steps_per_epoch = math.ceil(len(self.train_set) / cfg.batch_size)
        self.warmup_steps = cfg.cucb_warmup * self.steps_per_epoch
        self.compact_selection: dict[int, np.ndarray] | None = None
        self.epoch_macs = [0, 0]   # (executed, dense) training MACs of the current bandit epoch

    # --- schedule ---------------------------------------------------------------------------
    @property
    def step(self) -> int:
        return self.epoch * self.steps_per_epoch

    def keep_at(self, step: int) -> float:
        return keep_fraction(step, self.warmup_steps, self.cfg.keep)

    # --- checkpoints ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Trainer state plus the bandits; after extraction also the kept rows per group (the
        compact model itself is an ordinary pruned model, its history rebuilds the shapes)."""
        st = {**super().state(), "cucb": self.bandits.state_dict()}
        if self.compact_selection is not None:
            st["cucb_selection"] = {str(g): [int(r) for r in rows]
                                    for g, rows in self.compact_selection.items()}
        return st

    def resume(self, path: str) -> None:
        payload = read_checkpoint(path)
        st = payload["extra"].get("trainer", {})
        if "cucb" not in st:
            raise CheckpointError(f"{path}: no CUCB bandit state (was it written by --cucb?)")
        if "cucb_selection" in st:
            raise CheckpointError(f"{path}: a compact CUCB checkpoint (after extraction) is final; "
                                  "resume from a bandit-phase checkpoint, or fine-tune it further "
                                  "with --init")
        super().resume(path)
        self.bandits.load_state_dict(st["cucb"])

    # --- bandit phase -----------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Bandit phase: the groups' chosen rows run forward and backward sliced, the sliced SGD
        step updates them and they get their rewards. Fine-tuning: the loop's plain step."""
        if self.compact_selection is not None:
            return super().train_step(x, y, b)
        selection = self.bandits.select(self.keep_at(self.step + b))
        plan = make_plan(self.view, selection)
        run = self.executor.run(x, plan, train=True, record=True)
        loss = self.training_loss(run.output, x, y)
        check_finite_loss(loss, self.epoch + 1, b)
        loss.backward()
        sliced_sgd_step(self.opt, run.slices)
        self.bandits.update(selection, row_scores(self.view, plan, taylor_scores(run.measured)))
        self.epoch_macs[0] += TRAIN_MACS_PER_FORWARD * plan.total_macs * len(y)
        self.epoch_macs[1] += TRAIN_MACS_PER_FORWARD * self.full_plan.total_macs * len(y)
        return run.output, loss

    def progress_fields(self, acc: float, b: int) -> dict[str, str]:
        if self.compact_selection is not None:
            return super().progress_fields(acc, b)
        return {"keep": f"{self.keep_at(self.step + b):.2f}"}

    def train_epoch(self) -> dict[str, float]:
        """The loop's epoch plus the keep fraction and training MACs during the bandit phase."""
        if self.compact_selection is not None:  # fine-tune: plain dense steps on the compact model
            return super().train_epoch()
        self.epoch_macs = [0, 0]
        step0 = self.step
        with warnings.catch_warnings():  # the sliced step bypasses opt.step(), which torch checks
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            row = self.run_epoch("cucb")
        macs, dense_macs = self.epoch_macs
        return {**row, "keep": self.keep_at(step0 + self.steps_per_epoch - 1),
                "train_macs": float(macs), "dense_train_macs": float(dense_macs),
                "train_mac_reduction": dense_macs / macs}

    @torch.no_grad()
    def evaluate_subnet(self, selection: dict[int, np.ndarray], batch_size: int = 500) -> float:
        """Test accuracy of the sub-network that keeps ``selection`` (eval-mode BN)."""
        plan = make_plan(self.view, selection)
        x_all, y_all = self.test_set.tensors
        correct, was_training = 0, self.model.training
        self.model.eval()  # modules the executor calls as they are (dropout) must not sample
        try:
            for i in range(0, len(x_all), batch_size):
                x = x_all[i:i + batch_size].contiguous(memory_format=torch.channels_last)
                out = self.executor.run(x, plan, train=False).output
                correct += int((out.argmax(1) == y_all[i:i + batch_size]).sum())
        finally:
            self.model.train(was_training)
        return correct / len(x_all)

    def subnet_params(self, selection: dict[int, np.ndarray]) -> int:
        """Parameters the sub-network keeping ``selection`` has (conv/linear/BN weights)."""
        plan = make_plan(self.view, selection)
        n = 0
        for name, info in self.view.layers.items():
            m = self.model.get_submodule(name)
            cout = len(plan.layer_out[name])
            n += info.layer_shape.with_channels(len(plan.in_features(name)), cout).params
            n += cout if m.bias is not None else 0
            if info.bn:
                n += 2 * cout
        return n

    # --- the whole run ----------------------------------------------------------------------
    def row_start(self) -> dict[str, Any]:
        return {"phase": "cucb", **super().row_start()}

    def evaluate_epoch(self, row: dict[str, Any]) -> dict[str, Any]:
        """Test accuracy and size of the sub-network the bandits would keep at this epoch's keep."""
        best = self.bandits.best(row["keep"])
        return dict(test_acc=self.evaluate_subnet(best), params=self.subnet_params(best))

    def fit(self, stop_after: int | None = None) -> list[dict[str, Any]]:
        """Bandit epochs to ``cfg.epochs`` (or stop after epoch ``stop_after``); once all ran,
        :meth:`finish` extracts and fine-tunes the compact model."""
        super().fit(stop_after)
        if self.epoch >= self.cfg.epochs and self.compact_selection is None:
            self.finish()
        return self.history

    def finish(self) -> None:
        """Extract the compact model from the most-rewarded rows and fine-tune it."""
        cfg = self.cfg
        self.compact_selection = self.bandits.best(cfg.keep)
        self.use_model(extract(self.dense_model, torch.zeros(self.example_shape), self.compact_selection))
        if cfg.cucb_bn_batches:
            self.recalibrate_bn(cfg.cucb_bn_batches)
        self.opt, self.sched = sgd_with_schedule(
            self.model, lr=cfg.cucb_finetune_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            schedule="cosine", epochs=max(1, cfg.cucb_finetune))
        rows = [("extract", 0)] + [("finetune", e + 1) for e in range(cfg.cucb_finetune)]
        for phase, e in rows:
            t0 = time.perf_counter()
            row: dict[str, Any] = {"phase": phase, "epoch": self.epoch + e,
                                   "lr": self.opt.param_groups[0]["lr"] if e else 0.0}
            if e:
                row.update(self.train_epoch())
            row["train_seconds"] = time.perf_counter() - t0
            acc, prof = evaluate(self.model, self.test_set)
            row.update(test_acc=acc, params=count_params(self.model),
                       inference_macs=prof.totals["dense_macs"])
            self._record(row, advance=False)

    @torch.no_grad()
    def recalibrate_bn(self, batches: int) -> None:
        """Recompute every BN's running statistics of ``self.model`` from ``batches`` training
        batches (forward only, no augmentation; the data order is not drawn from ``self.gen``).

        Why: during the bandit phase a channel's running statistics average over steps in which
        different subsets of its input channels ran, so they do not match the fixed sub-network
        that is extracted; batch statistics of that very sub-network do.
        """
        bns = [m for m in self.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        was_training = self.model.training
        self.model.train()
        x_all = self.train_set.tensors[0]
        bs = self.cfg.batch_size
        try:
            for i in range(min(batches, math.ceil(len(x_all) / bs))):
                self.model(x_all[i * bs:(i + 1) * bs].contiguous(memory_format=torch.channels_last))
        finally:
            for m, mom in zip(bns, saved):
                m.momentum = mom
            self.model.train(was_training)

    def metrics_header(self) -> dict[str, Any]:
        """As the loop's, but without a dense accuracy."""
        return {"config": asdict(self.cfg)}
