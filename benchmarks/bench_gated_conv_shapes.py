"""Layer tables and gate construction shared by the gated-conv benchmarks (CPU and GPU).

Conv shapes of torchvision ResNet-18 (224x224) and CIFAR ResNet-20 (32x32, option-A
shortcuts, so no 1x1 convs). Gating rules:

* ``cgnet``: CGNet's rule (``netspec.archs.rule_gates``), conv1 of every BasicBlock (conv2
  feeds the residual add);
* ``all3x3``: rule ``all`` on the 3x3 convs, every 3x3 conv with groups=1 except the stem.

Everything else (stem, 1x1 downsamples, ungated conv2) is timed as a dense conv and counted
at that time in whole-network numbers. Weights and inputs are random: the time of the gated
kernel depends on the gate mask, not on trained values.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from kernels.reference import base_mask
from netspec.archs import rule_gates


@dataclass(frozen=True)
class ConvLayer:
    name: str
    c_in: int
    c_out: int
    hw: int            # input height = width
    k: int
    stride: int
    padding: int
    role: str          # "stem", "conv1", "conv2", "downsample"
    count: int = 1     # identical layers in the network (timed once)

    @property
    def out_hw(self) -> int:
        return (self.hw + 2 * self.padding - self.k) // self.stride + 1

    def macs(self, batch: int) -> int:
        return batch * self.out_hw ** 2 * self.c_out * self.c_in * self.k * self.k

    def gated(self, rule: str) -> bool:
        """``cgnet`` is the shared rule; ``all3x3`` is rule ``all`` on the 3x3 convs."""
        if rule not in ("cgnet", "all3x3"):
            raise ValueError(f"unknown gating rule {rule!r}")
        return (rule == "cgnet" or self.k == 3) and rule_gates(
            "cgnet" if rule == "cgnet" else "all", reads_input=self.role == "stem",
            feeds_activation=self.role == "conv1")


def resnet18_layers() -> list[ConvLayer]:
    layers = [ConvLayer("stem", 3, 64, 224, 7, 2, 3, "stem")]
    c_prev, hw = 64, 56
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        s = 1 if stage == 1 else 2
        out = hw // s
        if s == 1:
            layers += [ConvLayer(f"layer{stage}.conv1", c, c, hw, 3, 1, 1, "conv1", 2),
                       ConvLayer(f"layer{stage}.conv2", c, c, hw, 3, 1, 1, "conv2", 2)]
        else:
            layers += [ConvLayer(f"layer{stage}.0.conv1", c_prev, c, hw, 3, 2, 1, "conv1"),
                       ConvLayer(f"layer{stage}.0.downsample", c_prev, c, hw, 1, 2, 0, "downsample"),
                       ConvLayer(f"layer{stage}.1.conv1", c, c, out, 3, 1, 1, "conv1"),
                       ConvLayer(f"layer{stage}.conv2", c, c, out, 3, 1, 1, "conv2", 2)]
        c_prev, hw = c, out
    return layers


def resnet20_layers() -> list[ConvLayer]:
    layers = [ConvLayer("stem", 3, 16, 32, 3, 1, 1, "stem")]
    c_prev, hw = 16, 32
    for stage, c in enumerate((16, 32, 64), start=1):
        if stage == 1:
            layers += [ConvLayer("layer1.conv1", c, c, hw, 3, 1, 1, "conv1", 3),
                       ConvLayer("layer1.conv2", c, c, hw, 3, 1, 1, "conv2", 3)]
        else:
            out = hw // 2
            layers += [ConvLayer(f"layer{stage}.0.conv1", c_prev, c, hw, 3, 2, 1, "conv1"),
                       ConvLayer(f"layer{stage}.12.conv1", c, c, out, 3, 1, 1, "conv1", 2),
                       ConvLayer(f"layer{stage}.conv2", c, c, out, 3, 1, 1, "conv2", 3)]
            hw = out
        c_prev = c
    return layers


NETWORKS: dict[str, tuple[Callable[[], list[ConvLayer]], int]] = {
    "resnet18": (resnet18_layers, 8),
    "resnet20": (resnet20_layers, 64),
}


def blob_mask(n: int, hw: int, density: float, gen: torch.Generator) -> torch.Tensor:
    """(n, 1, hw, hw) bool: smooth random field above its (1-density) quantile, i.e. blobs."""
    coarse = torch.randn(n, 1, max(hw // 8, 2), max(hw // 8, 2), generator=gen)
    field = F.interpolate(coarse, size=(hw, hw), mode="bicubic", align_corners=False)
    q = torch.quantile(field.view(n, -1), 1 - density, dim=1).view(n, 1, 1, 1)
    return field > q


PATTERNS = ("random", "clustered", "tile")


def tile_inputs(layer: ConvLayer, batch: int, density: float, partitions: int, grouped: bool,
                tile: tuple[int, int], gen: torch.Generator):
    """(x, w, b, tau) whose gates switch whole (output tile x output chunk) blocks.

    The base weights keep only their centre tap (made positive), so an output's partial sum
    reads exactly one input position per base channel: the input is positive there for the
    outputs of on blocks and zero for the others, and tau = bias + 1e-3 turns exactly the on
    blocks on. Blocks are (th x tw positions) x (C_out/p channels of one base chunk) when the
    base path is grouped, else all channels (every output then reads the same base inputs).
    Exactly round(density * blocks) blocks are on.
    """
    ho = wo = layer.out_hw
    th, tw = tile
    nty, ntx = -(-ho // th), -(-wo // tw)
    chunks = partitions if grouped else 1
    blocks = batch * chunks * nty * ntx
    on = torch.zeros(blocks, dtype=torch.bool)
    on[torch.randperm(blocks, generator=gen)[:round(density * blocks)]] = True
    on = on.view(batch, chunks, nty, ntx).repeat_interleave(th, 2).repeat_interleave(tw, 3)[:, :, :ho, :wo]
    x = torch.randn(batch, layer.c_in, layer.hw, layer.hw, generator=gen)
    c = layer.k // 2 - layer.padding                      # input offset of the centre tap
    rows = torch.arange(ho) * layer.stride + c
    ci = layer.c_in // partitions
    for i in range(partitions if grouped else 1):
        src = slice(i * ci, (i + 1) * ci) if grouped else slice(0, ci)
        vals = x[:, src][:, :, rows][:, :, :, rows].abs() + 0.5
        centre = torch.where(on[:, i:i + 1], vals, torch.zeros(()))
        x[:, src, rows[:, None], rows[None, :]] = centre
    w = torch.randn(layer.c_out, layer.c_in, layer.k, layer.k, generator=gen) / (layer.c_in * layer.k ** 2) ** 0.5
    m = base_mask(layer.c_out, layer.c_in, partitions, grouped).bool().expand_as(w)
    centre_only = torch.zeros_like(w)
    centre_only[:, :, layer.k // 2, layer.k // 2] = w[:, :, layer.k // 2, layer.k // 2].abs() + 0.1
    w = torch.where(m, centre_only, w)
    b = torch.randn(layer.c_out, generator=gen) * 0.01
    return x, w, b, b + 1e-3


def layer_inputs(layer: ConvLayer, batch: int, *, clustered: bool = False, density: float, partitions: int,
                 grouped: bool, seed: int = 0, device="cpu", dtype=torch.float32, pattern: str | None = None,
                 tile: tuple[int, int] = (8, 8)):
    """(x channels-last, weight, bias, tau, inv_sigma) giving about ``density`` gates on.

    Random: tau[c] is the (1-density) quantile of channel c's base partial sum for this input,
    so gates are on at random positions per element. Clustered: the input is large inside
    random blobs and small outside, and the base weights are made non-negative so the
    partial sums (and thus the gates) follow the blobs; tau is again the per-channel quantile.
    Tile: whole (output tile x channel chunk) blocks on or off, see :func:`tile_inputs`.
    """
    pattern = pattern or ("clustered" if clustered else "random")
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    clustered = pattern == "clustered"
    gen = torch.Generator().manual_seed(seed)
    to = (lambda t: t.to(device=device, dtype=dtype))
    if pattern == "tile" and density < 1:
        x, w, b, tau = tile_inputs(layer, batch, density, partitions, grouped, tile, gen)
        return (to(x).contiguous(memory_format=torch.channels_last), to(w), to(b), to(tau),
                to(torch.ones(layer.c_out)))
    x = torch.randn(batch, layer.c_in, layer.hw, layer.hw, generator=gen)
    w = torch.randn(layer.c_out, layer.c_in, layer.k, layer.k, generator=gen)
    w /= (layer.c_in * layer.k ** 2) ** 0.5
    b = torch.randn(layer.c_out, generator=gen) * 0.01
    m = base_mask(layer.c_out, layer.c_in, partitions, grouped)
    if clustered and density < 1:
        x = x.abs() * (0.05 + blob_mask(batch, layer.hw, density, gen).float())
        w = torch.where(m.bool().expand_as(w), w.abs(), w)
    yp = F.conv2d(x, w * m, b, layer.stride, layer.padding)
    if density >= 1:
        tau = yp.amin(dim=(0, 2, 3)) - 1.0
    else:
        tau = torch.quantile(yp.transpose(0, 1).reshape(layer.c_out, -1), 1 - density, dim=1)
    inv_sigma = torch.ones(layer.c_out)
    return (to(x).contiguous(memory_format=torch.channels_last), to(w), to(b), to(tau), to(inv_sigma))


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                        sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median wall time in seconds of each callable over ``repeats`` rounds that call them in turn
    (after ``warmup`` rounds; ``sync`` waits for a device after each call): drift of the machine
    (other load, the allocator's state after large frees) falls on all alike, where timing one
    after the other let it favour one side (ResNet-18 layer1 at batch 8: 10.3 ms gated against
    6.2 ms in the autotuner's interleaved run minutes apart)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 2,
                sync: Callable[[], None] = lambda: None) -> float:
    """Median wall time in seconds over ``repeats`` calls after ``warmup`` calls."""
    return interleaved_medians({"fn": fn}, repeats, warmup, sync)["fn"]


def theoretical_speedup(density: float, partitions: int) -> float:
    """Dense MACs over gated MACs (base pass 1/p plus the remaining (p-1)/p where on)."""
    base = 1.0 / partitions
    return 1.0 / (base + (1.0 - base) * density)
