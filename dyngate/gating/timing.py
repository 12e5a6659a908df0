"""Wall-clock speedup of a gated model over the same model run dense.

A speedup is the time of the best dense baseline on the same machine, threads and batch
(oneDNN through torch, channels-last) divided by ours. The dense baseline is the gated
model's own architecture with every :class:`GatedConv2d` replaced by a plain ``nn.Conv2d``
holding the same weights (what all gates open computes), so the two runs differ only in the
gating. Both are timed in their inference form, each BatchNorm folded into the conv before it
(:mod:`.fold`): a dense conv with a separate BatchNorm pass is not the best dense baseline,
and the separate passes (~20 % of a Fashion-MNIST ResNet-20 at batch 256) would dilute the
difference the gating makes. Dense and gated batches are interleaved, so machine noise falls
on both alike.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Iterable

import torch
import torch.nn as nn

from dyngate.errors import ConfigError
from dyngate.gating.fold import fold_batchnorm
from dyngate.gating.gated_conv import GatedConv2d

CL = torch.channels_last


def to_dense(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every gated conv turned back into the ``nn.Conv2d`` it wraps."""
    dense = copy.deepcopy(model)
    for name, m in list(dense.named_modules()):
        if isinstance(m, GatedConv2d):
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                             m.dilation, bias=m.bias is not None).to(m.weight.device, m.weight.dtype)
            with torch.no_grad():
                conv.weight.copy_(m.weight)
                if m.bias is not None:
                    conv.bias.copy_(m.bias)
            parent_name, _, child = name.rpartition(".")
            setattr(dense.get_submodule(parent_name) if parent_name else dense, child, conv)
    return dense


def compare(model: nn.Module, batches: Iterable[torch.Tensor], *, warmup: int = 2,
            fold_bn: bool = True) -> dict:
    """Median ms per batch of the dense copy and of ``model`` (eval mode, no grad, channels
    last), timed alternately on the same batches after ``warmup`` untimed rounds (the gated
    model's first calls also measure its execution paths, see :mod:`kernels.autotune`).
    With ``fold_bn`` both are timed with their BatchNorms folded (copies; ``model`` is not
    changed); ``bn_folded`` counts the gated copy's folded BatchNorms, ``bn_kept`` names those
    it kept, and why."""
    model.eval()
    dense = to_dense(model)
    kept: dict[str, str] = {}
    n_folded = 0
    if fold_bn:
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        model, kept = fold_batchnorm(model)
        n_folded = n_bn - sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        dense, _ = fold_batchnorm(dense)
    gated = model.eval().to(memory_format=CL)
    dense = dense.eval().to(memory_format=CL)
    xs = [x.contiguous(memory_format=CL) for x in batches]
    if not xs:
        raise ConfigError("timing: no batches given")
    d_ms, g_ms = [], []
    with torch.no_grad():
        for i in range(warmup):
            dense(xs[i % len(xs)])
            gated(xs[i % len(xs)])
        for x in xs:
            for net, out in ((dense, d_ms), (gated, g_ms)):
                t0 = time.perf_counter()
                net(x)
                out.append(1e3 * (time.perf_counter() - t0))
    dm, gm = statistics.median(d_ms), statistics.median(g_ms)
    return {"dense_ms": dm, "gated_ms": gm, "real_speedup": dm / gm, "batches": len(xs),
            "batch_size": int(xs[0].shape[0]), "threads": torch.get_num_threads(),
            "bn_folded": n_folded, "bn_kept": kept}
