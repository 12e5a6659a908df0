"""Plain-torch reference of the conditional partial-sum convolution (CGNet inference).

This is the contract every backend is tested against. Semantics, per output element
(n, c, h, w) of a conv with weight W and base mask M (see :func:`base_mask`):

    Yp    = conv2d(x, W * M) + bias                   # base partial sum
    score = (Yp - tau[c]) * inv_sigma[c]              # folded decision-BN compare
    score = mean of score over the gate block of (n, c, h, w): the ``tile`` (th x tw)
            output positions holding (h, w) x the G channels of c's group (1x1 x 1: itself)
    d     = score > 0                                 # per element: exactly Yp > tau[c]
    out   = Yp + d * conv2d(x, W * (1 - M))           # conditional pass only where d

The reference computes both convolutions densely: it defines the result, it saves nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.errors import KernelArgError


def base_mask(out_channels: int, in_channels: int, partitions: int, grouped: bool,
              device=None, dtype=torch.float32) -> torch.Tensor:
    """(C_out, C_in, 1, 1) 0/1 mask of the base path.

    grouped: block diagonal, output chunk i (C_out/p channels) reads input chunk i
    (C_in/p channels), so every input channel is in the base path of 1/p of the outputs.
    not grouped: every output reads the first C_in/p input channels.
    """
    if partitions < 1:
        raise KernelArgError(f"partitions must be >= 1, got {partitions}")
    if in_channels % partitions:
        raise KernelArgError(f"in_channels={in_channels} is not divisible by partitions={partitions}")
    m = torch.zeros(out_channels, in_channels, 1, 1, device=device, dtype=dtype)
    ci = in_channels // partitions
    if grouped:
        if out_channels % partitions:
            raise KernelArgError(
                f"out_channels={out_channels} is not divisible by partitions={partitions} "
                "(needed for grouped base paths)")
        co = out_channels // partitions
        for i in range(partitions):
            m[i * co:(i + 1) * co, i * ci:(i + 1) * ci] = 1
    else:
        m[:, :ci] = 1
    return m


def block_scores(score: torch.Tensor, granularity: int = 1, tile: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """(N, C/G, ceil(H/th), ceil(W/tw)) mean of a per-element score (N, C, H, W) over each gate
    block of ``tile`` positions x G channels; an edge block of a ragged map averages the
    elements it has (avg-pool, ceil mode, no padding: the divisor is the in-bounds count)."""
    n, c, h, w = score.shape
    if c % granularity:
        raise KernelArgError(f"out_channels={c} is not divisible by gate granularity={granularity}")
    if granularity > 1:
        score = score.view(n, c // granularity, granularity, h, w).mean(dim=2)
    if tuple(tile) != (1, 1):
        score = F.avg_pool2d(score, tuple(tile), tuple(tile), ceil_mode=True)
    return score


def expand_blocks(d: torch.Tensor, granularity: int, tile: tuple[int, int], h: int, w: int) -> torch.Tensor:
    """Per-block values (N, C/G, Hb, Wb) broadcast back to every element (N, C, h, w)."""
    th, tw = tile
    if (th, tw) != (1, 1):
        d = d.repeat_interleave(th, dim=2)[:, :, :h].repeat_interleave(tw, dim=3)[:, :, :, :w]
    if granularity > 1:
        d = d.repeat_interleave(granularity, dim=1)
    return d


def gate_from_partial(yp: torch.Tensor, tau: torch.Tensor, inv_sigma: torch.Tensor,
                      granularity: int = 1, tile: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Boolean gate d from the base partial sum (N, C, H, W): one decision per block of
    ``tile`` positions x ``granularity`` channels (1x1 x 1: exactly CGNet's ``Yp > tau``)."""
    c = yp.shape[1]
    tile = tuple(tile)
    if granularity == 1 and tile == (1, 1):
        return yp > tau.view(1, c, 1, 1)
    if c % granularity:
        raise KernelArgError(f"out_channels={c} is not divisible by gate granularity={granularity}")
    score = (yp - tau.view(1, c, 1, 1)) * inv_sigma.view(1, c, 1, 1)
    n, _, h, w = yp.shape
    if tile == (1, 1):
        g = score.view(n, c // granularity, granularity, h, w).mean(dim=2, keepdim=True) > 0
        return g.expand(n, c // granularity, granularity, h, w).reshape(n, c, h, w)
    return expand_blocks(block_scores(score, granularity, tile) > 0, granularity, tile, h, w)


def conditional_conv2d_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                 tau: torch.Tensor, inv_sigma: torch.Tensor, *, stride=1,
                                 padding=0, dilation=1, partitions: int = 4, grouped: bool = True,
                                 granularity: int = 1, tile: tuple[int, int] = (1, 1),
                                 return_gate: bool = False):
    """Dense reference; returns ``out`` or ``(out, gate)``."""
    m = base_mask(weight.shape[0], weight.shape[1], partitions, grouped, weight.device, weight.dtype)
    yp = F.conv2d(x, weight * m, bias, stride, padding, dilation)
    rest = F.conv2d(x, weight * (1 - m), None, stride, padding, dilation)
    d = gate_from_partial(yp, tau, inv_sigma, granularity, tile)
    out = torch.where(d, yp + rest, yp)
    return (out, d) if return_gate else out
