"""``dyngate.convert``: turn a CNN into a channel-gated copy of itself."""
from __future__ import annotations

import copy
import warnings
from typing import Iterable

import torch
import torch.nn as nn

from dyngate.errors import ConversionError
from dyngate.gating import GatedConv2d
from dyngate.graph import GraphView, LayerInfo, capture

SPEC_VERSION = 2   # 2 adds the gate block tile and the rule; version 1 reads as tile 1x1
RULES = ("cgnet", "all")


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


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
    """Which convs to gate. Never the stem conv (it reads the image) nor the classifier.
    ``rule="cgnet"`` (CGNet's released code on pre-activation nets): only convs followed by an
    activation (through an optional BN). ``rule="all"``: every ``groups=1`` conv, including
    the last conv of a residual block and 1x1 shortcut convs; where such a gate is off its
    output is the base partial sum, as in CGNet's gated layers. ``include`` replaces the rule
    with an explicit list; ``skip`` removes names. Returns (gated names, {skipped name: reason})."""
    if rule not in RULES:
        raise ConversionError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    skip = list(skip)
    for label, names in (("include", include or []), ("skip", skip)):
        for n in names:
            if n not in view.layers:
                convs = ", ".join(l.name for l in view.convs())
                raise ConversionError(f"{label}: no conv/linear layer named '{n}' in the model; "
                                      f"conv layers are: {convs}")
    chosen, skipped = [], {}
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
        elif info.reads_graph_input:
            skipped[info.name] = "stem conv (reads the model input)"
        elif rule == "cgnet" and not info.followed_by_activation:
            skipped[info.name] = "not followed by an activation (e.g. feeds a residual add)"
        else:
            why = _why_not_gatable(info, partitions, grouped, granularity)
            if why:
                skipped[info.name] = why
                warnings.warn(f"dyngate.convert: not gating '{info.name}': {why}", stacklevel=3)
            else:
                chosen.append(info.name)
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
