"""The bandit's reward: first-order Taylor saliency of each played channel, per group in [0, 1].

Choice (the paper's reward is not known to us, see research notes 3.3): for a channel ``c`` of
layer ``l`` we take ``s = mean_n | sum_hw a[n,c,h,w] * dL/da[n,c,h,w] |`` with ``a`` the layer's
pre-activation output (after its BN; the layer's own output if it has no BN). This is the
first-order estimate of how much the loss of each sample changes if the channel is removed
(Molchanov et al. 2017): zeroing the BN output of a conv-BN-ReLU channel is exactly removing the
channel for its consumers. Why not |gamma| * mean|a|: right after a BN every channel has unit
batch variance, so the magnitude says little beyond |gamma|, and it credits channels that are
large but that the loss does not use; the Taylor term credits only what the loss depends on (the
planted test in ``tests/cucb/test_cucb_bandit.py`` has equally large informative and nuisance
channels and the bandit must find the informative ones). It is nearly free: ``a`` and ``dL/da`` exist during the
sliced backward, and the sum is one elementwise product per measured tensor.

A row of a group spans several layers (a residual stream is produced by the stem and every
block's last conv); its score is the sum over those layers. Scores are normalised per group by
the round's largest score (:func:`dyngate.train.cucb.bandit.normalise`), so layers with different
activation scales share one exploration constant.
"""
from __future__ import annotations

import numpy as np
import torch

from dyngate.train.cucb.plan import SlicePlan
from dyngate.graph import GraphView


@torch.no_grad()
def taylor_scores(measured: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Per layer, the Taylor saliency of each kept output channel (in kept order)."""
    out = {}
    for layer, a in measured.items():
        g = a.grad
        if g is None:
            out[layer] = np.zeros(a.shape[1])
            continue
        prod = (a * g).float()
        per_sample = prod.flatten(2).sum(2) if prod.dim() > 2 else prod
        out[layer] = per_sample.abs().mean(0).double().numpy()
    return out


def row_scores(view: GraphView, plan: SlicePlan, scores: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    """Per selected group, the raw score of each played row (same order as ``plan.selection``):
    the sum of its channels' scores over every layer that produces them."""
    by_id = {g.id: g for g in view.groups}
    out: dict[int, np.ndarray] = {}
    for gid, rows in plan.selection.items():
        total = np.zeros(len(rows))
        for (layer, role), arr in by_id[gid].members.items():
            if role != "out" or layer not in scores:
                continue
            pos = np.searchsorted(plan.layer_out[layer], arr[rows])  # (rows, k) positions
            total += scores[layer][pos].sum(axis=1)
        out[gid] = total
    return out
