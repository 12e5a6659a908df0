"""``python -m dyngate convert`` and ``prune``: model-to-model steps on saved checkpoints, with
options declared once as dataclasses (help, defaults and allowed values come from them)."""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

import dyngate
from dyngate.pruning import criteria
from dyngate.gating.convert import GateOptions
from dyngate.errors import CheckpointError, ConfigError
from dyngate.options import add_options, option
from models.data import DATASETS, load_dataset


@dataclass
class ConvertConfig(GateOptions):
    include: list[str] = option([], "gate exactly these conv layers (replaces --rule)",
                                allowed="layer names", item=str)
    skip: list[str] = option([], "never gate these conv layers", allowed="layer names", item=str)


@dataclass
class PruneConfig:
    method: str = option("l1", "channel importance criterion (dyngate.pruning.criteria)",
                         choices=sorted(criteria.CRITERIA))
    ratio: float = option(0.3, "share of prunable channels to remove", allowed="[0, 1)")
    scope: str = option("global", "one ranking over all groups, or the same ratio in each",
                        choices=("global", "local"))
    round_to: int | None = option(None, "keep every group's width a multiple of N", allowed=">= 1",
                                  kind=int)
    partitions: int | None = option(None, "prune for gating with this many partitions: widths "
                                    "convert and the fused kernel accept", allowed=">= 1", kind=int)
    max_group_ratio: float | None = option(None, "largest share global ranking takes from one "
                                           "group (none: 0.9)", allowed="(0, 1]", kind=float)
    ignore: list[str] = option([], "layers whose output channels stay", allowed="layer names", item=str)
    dataset: str | None = option(None, "images for data-driven criteria and bias folding (none: the "
                                 "checkpoint's training set)", choices=DATASETS)
    data_dir: str | None = option(None, "dataset folder", allowed="a folder holding the dataset's files")
    batch_size: int = option(64, "images per calibration batch", allowed=">= 1")
    max_batches: int = option(4, "calibration batches read by data-driven criteria", allowed=">= 1")
    seed: int = option(0, "seed of the random criterion and of the calibration order", allowed="any integer")
    fold_shift: bool = option(True, "fold each removed channel's mean activation into its consumers")


def add_parsers(sub: Any) -> None:
    """Register ``convert`` and ``prune`` on the top-level subparsers."""
    for name, cls, func, verb, help_, desc in (
            ("convert", ConvertConfig, cmd_convert, "gate", "gate a dense checkpoint's convs (dyngate.convert)",
             "Gate a dense checkpoint (CGNet channel gating) and save it; fine-tune it with "
             "`train --gated --init`, or evaluate it."),
            ("prune", PruneConfig, cmd_prune, "prune", "remove channels for real (dyngate.prune)",
             "Prune a dense checkpoint with a seed paper's criterion and save the smaller model; "
             "add --partitions P to gate it afterwards.")):
        p = sub.add_parser(name, help=help_, description=desc)
        p.add_argument("checkpoint", help=f"dense dyngate checkpoint to {verb} (from train or prune)")
        p.add_argument("--out", required=True, help="checkpoint to write (required; .pt)")
        add_options(p, cls)
        p.set_defaults(func=func)


def _config(cls: type, args: argparse.Namespace) -> Any:
    given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name) is not None}
    return cls(**given)


def _source(path: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    model = dyngate.load(path)
    if any(isinstance(m, dyngate.GatedConv2d) for m in model.modules()):
        raise CheckpointError(f"{path}: this checkpoint is already gated; give the dense checkpoint")
    return model, dyngate.checkpoint.read(path)["extra"].get("trainer", {}).get("config", {})


def _check_out(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ConfigError(f"--out {path}: folder {folder} does not exist or is not writable")


def _save(model: torch.nn.Module, out: str, tcfg: dict[str, Any], step: str, cfg: Any, src: str) -> None:
    # the source's data config travels along so `eval` finds the same test set
    dyngate.save(model, out, extra={"trainer": {"config": tcfg},
                                    "derived": {"step": step, "from": src, "options": asdict(cfg)}})


def cmd_convert(args: argparse.Namespace) -> int:
    cfg = _config(ConvertConfig, args)
    _check_out(args.out)
    model, tcfg = _source(args.checkpoint)
    gated = dyngate.convert(model, cfg.partitions, cfg.grouped, **cfg.convert_kwargs(),
                            include=cfg.include or None, skip=cfg.skip)
    spec = gated.dyngate_spec
    _save(gated, args.out, tcfg, "convert", cfg, args.checkpoint)
    print(f"gated {len(spec['layers'])} convs: {', '.join(spec['layers']) or 'none'}")
    for name, why in spec["skipped"].items():
        print(f"  not gated {name}: {why}")
    print(f"saved {args.out}")
    return 0


def _calibration(cfg: PruneConfig, tcfg: dict[str, Any]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    name = cfg.dataset or tcfg.get("dataset", "fashion-mnist")
    ds = load_dataset(name, "train", cfg.data_dir or tcfg.get("data_dir"), cfg.batch_size * cfg.max_batches)
    x, y = ds.tensors
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))
    return [(x[order[i:i + cfg.batch_size]], y[order[i:i + cfg.batch_size]])
            for i in range(0, len(x), cfg.batch_size)]


def cmd_prune(args: argparse.Namespace) -> int:
    cfg = _config(PruneConfig, args)
    for name in ("batch_size", "max_batches"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    _check_out(args.out)
    model, tcfg = _source(args.checkpoint)
    batches = _calibration(cfg, tcfg)
    pruned = dyngate.prune(model.eval(), cfg.method, cfg.ratio, scope=cfg.scope, example_input=batches[0][0],
                           data=batches, round_to=cfg.round_to, ignore=cfg.ignore,
                           max_group_ratio=cfg.max_group_ratio, max_batches=cfg.max_batches,
                           seed=cfg.seed, fold_shift=cfg.fold_shift, partitions=cfg.partitions)
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in pruned.parameters())
    macs = [dyngate.profile(m, batches[0][0][:1]).totals["dense_macs"] for m in (model, pruned)]
    _save(pruned, args.out, tcfg, "prune", cfg, args.checkpoint)
    print(f"{cfg.method} {cfg.ratio} ({cfg.scope}): parameters {before:,} -> {after:,}, "
          f"MACs {macs[0]:,} -> {macs[1]:,} ({macs[0] / max(macs[1], 1):.2f}x fewer)")
    print(f"saved {args.out}")
    return 0
