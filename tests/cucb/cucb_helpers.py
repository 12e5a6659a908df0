"""Shared fixtures of the CUCB tests: tiny nets, random selections, the masked reference."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

import models
from dyngate.train.cucb.plan import SlicePlan


class TinyVGG(nn.Module):
    """Conv with bias, BN, pool, a flatten into a hidden linear (in_factor > 1), classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.b1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.b1(self.c1(x))))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def tiny_nets():
    """(name, model, input) pairs: option-A ResNet-20 on 8x8 and the tiny VGG on 8x8."""
    return [("resnet20", models.build("resnet20", in_channels=1, num_classes=5),
             torch.randn(6, 1, 8, 8)),
            ("tinyvgg", TinyVGG(), torch.randn(6, 1, 8, 8))]


def random_selection(view, frac: float, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {g.id: np.sort(rng.choice(g.size, max(1, int(g.size * frac)), replace=False))
            for g in view.groups if g.prunable}


def masked_hooks(view, plan: SlicePlan):
    """Forward pre-hooks that zero every conv/linear input channel the plan drops: the dense
    network with the unselected channels masked out, the reference the sliced step must equal."""
    handles = []
    for name, info in view.layers.items():
        n = info.in_channels
        mask = torch.zeros(n)
        mask[torch.as_tensor(plan.in_features(name))] = 1.0
        shape = (1, n, 1, 1) if info.kind == "conv2d" else (1, n)

        def hook(mod, args, mask=mask.view(shape)):
            return (args[0] * mask,)
        handles.append(view.module.get_submodule(name).register_forward_pre_hook(hook))
    return handles
