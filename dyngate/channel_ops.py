"""The channel ops dyngate knows out of the box, registered through
:func:`dyngate.graph.register_channel_op` like a user's own.

``GatedConv2d`` is a conv for the analysis. The option-A shortcut (``models.resnet.PadShortcut``)
maps input channel c to output channel c + pad and pads zero channels below and above; the
sliced executor never materialises those zeros, and surgery gives the shortcut as many zero
channels below and above its copied block as its partner layer keeps in each band (history
record ``[in_planes, out_planes, pad_low]``). This module is the one place that imports the
model zoo: ``models`` must not import dyngate, and ``dyngate/__init__`` imports this, so the
ops are registered before any capture.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from dyngate.gating.gated_conv import GatedConv2d
from dyngate.graph import ChannelOp, register_channel_op
from models.resnet import PadShortcut


def _pad_source(m: PadShortcut, n_in: int) -> np.ndarray:
    return np.concatenate([np.full(m.pad, -1), np.arange(n_in), np.full(m.pad_high, -1)])


def _pad_sliced(m: PadShortcut, x: torch.Tensor) -> torch.Tensor:
    return x[:, :, ::m.stride, ::m.stride]  # its zero channels are never materialised


def _pad_resize(m: PadShortcut, kept: np.ndarray, source: np.ndarray) -> list[int]:
    """[in_planes, out_planes, pad_low] after surgery, from the partner's kept outputs."""
    lo, hi = int((kept < m.pad).sum()), int((kept >= m.pad + m.in_planes).sum())
    mid = len(kept) - lo - hi
    return [mid, mid + lo + hi, lo]


def _pad_rebuild(m: PadShortcut, record: Sequence[int]) -> nn.Module:
    cin, cout = record[:2]
    low = int(record[2]) if len(record) > 2 else None   # histories before asymmetric pads
    return PadShortcut(int(cin), int(cout), m.stride, pad_low=low)


register_channel_op(GatedConv2d, ChannelOp(conv=True))
register_channel_op(PadShortcut, ChannelOp(source=_pad_source, sliced_forward=_pad_sliced,
                                           resize=_pad_resize, rebuild=_pad_rebuild))
