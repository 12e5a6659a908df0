"""``dyngate.convert``: turn a CNN into a channel-gated copy of itself."""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn

from dyngate.errors import ConversionError
from dyngate.options import option
from dyngate.gating.gated_conv import GatedConv2d
from dyngate.graph import GraphView, LayerInfo, capture
from netspec.archs import GATE_RULES as RULES, rule_gates

SPEC_VERSION = 2   # 2 adds the gate block tile and the rule; version 1 reads as tile 1x1


@dataclass
class GateOptions:
    """The gate settings ``convert`` takes, as config fields shared by ``train`` and the
    ``convert`` command (help text and allowed values are the CLI's)."""
    partitions: int = option(4, "gate partitions p: the base path reads 1/p of the input channels",
                             allowed=">= 1, dividing the gated layers' channels")
    grouped: bool = option(True, "block-diagonal base path (CGNet's grouped channel gating)")
    granularity: int = option(1, "output channels per gate decision", allowed=">= 1, dividing C_out")
    tile: list[int] = option([1, 1], "gate block: TH TW output positions per decision",
                             allowed="two integers >= 1")
    rule: str = option("cgnet", "which convs to gate", choices=RULES)
    alpha: float = option(2.0, "CGNet's gate sharpness alpha", allowed="> 0")
    threshold_init: float = option(0.0, "initial gate threshold Delta", allowed="finite")

    def convert_kwargs(self) -> dict:
        return dict(granularity=self.granularity, tile=tuple(self.tile), rule=self.rule,
                    alpha=self.alpha, threshold_init=self.threshold_init)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def gatable_width_multiple(partitions: int, grouped: bool = True, granularity: int = 1) -> int:
    """Smallest channel step at which every layer can be gated with these settings and run by
    the fused CPU kernel on any ISA: inputs split into ``partitions`` chunks, grouped outputs
    into chunks of a multiple of 4 (``kernels.cpu_fused.MIN_CHUNK``) that hold whole gate groups."""
    from kernels.cpu_fused import MIN_CHUNK  # noqa: PLC0415 (kernels import torch extensions lazily)
    lanes = math.lcm(MIN_CHUNK, granularity)
    return partitions * lanes if grouped else math.lcm(partitions, lanes)


def _why_not_gatable(info: LayerInfo, partitions: int, grouped: bool, granularity: int) -> str | None:
    if info.kind != "conv2d":
        return f"is a {info.kind} layer, only Conv2d can be gated"
    if info.groups != 1:
        return f"is a grouped/depthwise conv (groups={info.groups})"
    if info.in_channels % partitions:
        return f"in_channels={info.in_channels} is not divisible by partitions={partitions}"
    if grouped and info.out_channels % partitions:
        return f"out_channels={info.out_channels} is not divisible by partitions={partitions}"
    if info.out_channels % granularity:
        return f"out_channels={info.out_channels} is not divisible by granularity={granularity}"
    return None


def select_layers(view: GraphView, partitions: int, grouped: bool, granularity: int,
                  include: Iterable[str] | None, skip: Iterable[str],
                  rule: str = "cgnet") -> tuple[list[str], dict[str, str]]:
    """Which convs to gate: those :func:`netspec.archs.rule_gates` picks for ``rule`` from the
    graph (the stem reads the model input; a conv feeds an activation through an optional BN),
    never the classifier. Under ``rule="all"`` the last conv of a residual block and 1x1
    shortcut convs are gated too; where such a gate is off its output is the base partial sum,
    as in CGNet's gated layers. ``include`` replaces the rule with an explicit list; ``skip``
    removes names. Returns (gated names, {skipped name: reason})."""
    if rule not in RULES:
        raise ConversionError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    skip = list(skip)
    for label, names in (("include", include or []), ("skip", skip)):
        for n in names:
            if n not in view.layers:
                convs = ", ".join(l.name for l in view.convs())
                raise ConversionError(f"{label}: no conv/linear layer named '{n}' in the model; "
                                      f"conv layers are: {convs}")
    chosen, skipped, unfit = [], {}, []
    if include is not None:
        for n in include:
            why = _why_not_gatable(view.layers[n], partitions, grouped, granularity)
            if why:
                raise ConversionError(f"include: layer '{n}' {why}")
            if n not in skip:
                chosen.append(n)
        return chosen, skipped
    for info in view.convs():
        if info.name in skip:
            skipped[info.name] = "in the skip list"
        elif not rule_gates(rule, reads_input=info.reads_graph_input,
                            feeds_activation=info.followed_by_activation):
            skipped[info.name] = ("stem conv (reads the model input)" if info.reads_graph_input
                                  else "not followed by an activation (e.g. feeds a residual add)")
        else:
            why = _why_not_gatable(info, partitions, grouped, granularity)
            if why:
                skipped[info.name] = why
                unfit.append(f"'{info.name}': {why}")
            else:
                chosen.append(info.name)
    if unfit:  # one summary, with the way out
        step = gatable_width_multiple(partitions, grouped, granularity)
        warnings.warn(f"dyngate.convert: not gating {len(unfit)} of {len(unfit) + len(chosen)} "
                      f"candidate convs ({'; '.join(unfit)}); dyngate.prune(..., partitions={partitions}) "
                      f"keeps widths at multiples of {step}, which gate", stacklevel=3)
    return chosen, skipped


def convert(model: nn.Module, partitions: int = 4, grouped: bool = True, *,
            granularity: int = 1, tile: int | tuple[int, int] = (1, 1), rule: str = "cgnet",
            alpha: float = 2.0, threshold_init: float = 0.0,
            sparse_bp: bool = True, include: Iterable[str] | None = None,
            skip: Iterable[str] = (), example_input: torch.Tensor | None = None) -> nn.Module:
    """Return a gated copy of ``model`` (the original is untouched).

    Each selected ``nn.Conv2d`` becomes a :class:`GatedConv2d` under the same name, with the
    same weights, so all gates open reproduces the original model. ``tile`` (th, tw) and
    ``granularity`` G set the gate's decision block: one decision per th x tw output positions
    x G channels (1x1 x 1 is CGNet's per-element gate); kernels skip whole blocks. ``rule``
    picks the layers (see :func:`select_layers`). The conversion spec is kept on the copy as
    ``dyngate_spec`` (what ``dyngate.save`` writes).
    """
    tile = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if len(tile) != 2 or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in tile):
        raise ConversionError(f"tile must be a positive int or a pair of positive ints, got {tile!r}")
    if not isinstance(partitions, int) or partitions < 1:
        raise ConversionError(f"partitions must be a positive integer, got {partitions!r}")
    if not isinstance(granularity, int) or granularity < 1:
        raise ConversionError(f"granularity must be a positive integer, got {granularity!r}")
    if any(isinstance(m, GatedConv2d) for m in model.modules()):
        raise ConversionError("model is already gated (it contains GatedConv2d layers)")
    gated = copy.deepcopy(model)
    view = capture(gated, example_input)
    names, skipped = select_layers(view, partitions, grouped, granularity, include, skip, rule)
    kwargs = dict(partitions=partitions, grouped=grouped, granularity=granularity, tile=tile,
                  alpha=alpha, threshold_init=threshold_init, sparse_bp=sparse_bp)
    for name in names:
        conv = gated.get_submodule(name)
        if not isinstance(conv, nn.Conv2d):
            raise ConversionError(f"layer '{name}' is {type(conv).__name__}, not nn.Conv2d")
        g = GatedConv2d.from_conv(conv, name=name, **kwargs)
        g.train(conv.training)
        _set_submodule(gated, name, g)
    gated.dyngate_spec = {"version": SPEC_VERSION, "layers": names, "skipped": skipped, "rule": rule,
                          **kwargs, "tile": list(tile)}
    return gated
