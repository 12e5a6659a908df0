"""BatchNorm folded into the conv before it, for plain and gated convs: the inference form that
gated models are timed in, against a dense copy folded the same way (the best dense baseline
is a conv with its BatchNorm folded, not a conv followed by a separate BatchNorm pass).

An eval-mode BatchNorm is ``y -> s*y + t`` per channel (``s = gamma / sqrt(var + eps)``,
``t = beta - s*mean``). Folded into a conv, the weight becomes ``s*W`` and the bias
``s*b + t``. In a :class:`GatedConv2d` that makes the base partial sum Yp, the remaining sum
and the output each the BatchNorm of themselves, so the output is unchanged. The gate compares
Yp against ``tau = mu + delta*sigma`` (``bn0``'s running statistics of Yp): Yp's statistics
become ``s*mu + t`` and ``s*sigma``, so setting ``bn0`` to them keeps every decision (up to
fp32 rounding) when ``s > 0``. A channel with ``s <= 0`` would reverse the comparison; a gated
layer with such a channel keeps its BatchNorm unfolded (``kept`` says which).
"""
from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.nn as nn

from dyngate.gating.gated_conv import GatedConv2d
from dyngate.graph import capture


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, dict[str, str]]:
    """An eval-mode copy of ``model`` with every BatchNorm2d that is the only consumer of a
    conv's (or gated conv's) output folded into that conv and replaced by ``nn.Identity``.

    Returns ``(copy, kept)``: ``kept`` maps each BatchNorm that follows a conv but stays
    unfolded to why. ``model`` itself is not modified."""
    folded = copy.deepcopy(model).eval()
    view = capture(folded)
    calls = Counter(str(n.target) for n in view.graph.graph.nodes if n.op == "call_module")
    kept: dict[str, str] = {}
    for name, info in view.layers.items():
        if info.bn is None:
            continue
        conv, bn = folded.get_submodule(name), folded.get_submodule(info.bn)
        if not isinstance(conv, (nn.Conv2d, GatedConv2d)) or not isinstance(bn, nn.BatchNorm2d):
            continue
        reason = _unfoldable(conv, bn, calls[name], calls[info.bn])
        if reason is not None:
            kept[info.bn] = reason
            continue
        _fold(conv, *_scale_shift(bn))
        parent, _, child = info.bn.rpartition(".")
        setattr(folded.get_submodule(parent) if parent else folded, child, nn.Identity())
    return folded, kept


def _scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) of the eval-mode BatchNorm ``y -> s*y + t``, in float64."""
    var, mean = bn.running_var.double(), bn.running_mean.double()
    s = 1.0 / torch.sqrt(var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight.detach().double()
    t = -s * mean
    if bn.bias is not None:
        t = t + bn.bias.detach().double()
    return s, t


def _gate_statistics(bn0: nn.BatchNorm2d, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(running mean, running var) of ``s*Yp + t``, from the gate BN's statistics of Yp."""
    return (s * bn0.running_mean.double() + t,
            s * s * (bn0.running_var.double() + bn0.eps) - bn0.eps)


def _unfoldable(conv: nn.Module, bn: nn.BatchNorm2d, conv_calls: int, bn_calls: int) -> str | None:
    if conv_calls != 1 or bn_calls != 1:
        return "the conv or the BatchNorm is called more than once"
    if bn.running_mean is None or bn.running_var is None:
        return "the BatchNorm keeps no running statistics"
    if isinstance(conv, GatedConv2d):
        s, t = _scale_shift(bn)
        if not bool((s > 0).all()):
            return "a channel's BatchNorm scale is <= 0, which would reverse its gate's comparison"
        if not bool((_gate_statistics(conv.bn0, s, t)[1] > 0).all()):
            return "the gate's folded variance would not be positive"
    return None


@torch.no_grad()
def _fold(conv: nn.Module, s: torch.Tensor, t: torch.Tensor) -> None:
    """Fold the BatchNorm ``y -> s*y + t`` into ``conv`` (checked by :func:`_unfoldable`)."""
    dtype = conv.weight.dtype
    conv.weight.copy_((conv.weight.double() * s.view(-1, 1, 1, 1)).to(dtype))
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(s)
    conv.bias = nn.Parameter((s * b + t).to(dtype), requires_grad=False)
    if isinstance(conv, GatedConv2d):   # Yp -> s*Yp + t: its statistics follow
        mean, var = _gate_statistics(conv.bn0, s, t)
        conv.bn0.running_mean.copy_(mean)
        conv.bn0.running_var.copy_(var)
