"""The compact model: a physically smaller copy that keeps the chosen rows of every group.

Extraction is static pruning: :func:`dyngate.pruning.surgery.prune_groups` with ``fold_shift=False``,
so a dropped channel is *absent* (its consumers lose its contribution), exactly as in the
sliced training steps, and the result carries a pruning history. A compact model is therefore
an ordinary pruned dyngate model: ``dyngate.save`` writes it, ``dyngate.load`` and
``python -m dyngate eval`` read it, and ``dyngate.convert`` can gate it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from dyngate.pruning.surgery import prune_groups


def extract(model: nn.Module, example_input: torch.Tensor,
            selection: Mapping[int, Sequence[int]]) -> nn.Module:
    """A smaller copy of ``model`` keeping ``selection[gid]`` rows of each group (by the group
    ids of ``dyngate.capture(model, example_input)``); ``model`` is not modified."""
    return prune_groups(model, example_input, {int(g): [int(r) for r in rows] for g, rows in selection.items()},
                        fold_shift=False, meta={"method": "cucb"})


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
