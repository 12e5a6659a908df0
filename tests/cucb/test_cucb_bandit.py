"""CUCB statistics and index on hand-computed cases; the schedule; a planted toy problem."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dyngate
from dyngate.train.cucb import (ChannelBandits, GroupBandit, SlicedExecutor, keep_count, keep_fraction,
                                make_plan, normalise, row_scores, taylor_scores)


def test_index_and_topk_by_hand():
    b = GroupBandit(3, c=1.5)
    b.t, b.counts, b.means = 3, np.array([2, 1, 0]), np.array([0.5, 0.2, 0.0])
    idx = b.index()  # next round t = 4
    assert idx[0] == pytest.approx(0.5 + math.sqrt(1.5 * math.log(4) / 2))  # = 1.519667
    assert idx[0] == pytest.approx(1.519667, abs=1e-6)
    assert idx[1] == pytest.approx(1.642027, abs=1e-6)  # 0.2 + sqrt(1.5 ln 4)
    assert idx[2] == math.inf
    assert b.select(2).tolist() == [1, 2]    # unplayed first, then the larger index
    assert b.best(1).tolist() == [0]         # exploitation ignores the bonus
    b.c = 0.0
    assert b.select(2).tolist() == [0, 2]


def test_semi_bandit_update_by_hand():
    b = GroupBandit(4)
    b.update(np.array([0, 2]), np.array([1.0, 0.5]))
    b.update(np.array([0, 3]), np.array([0.0, 0.25]))
    assert b.t == 2
    assert b.counts.tolist() == [2, 0, 1, 1]
    assert b.means.tolist() == [0.5, 0.0, 0.5, 0.25]   # arm 1 never played: untouched
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        b.update(np.array([1]), np.array([1.5]))
    with pytest.raises(ValueError, match="reported twice"):
        b.update(np.array([1, 1]), np.array([0.1, 0.2]))


def test_every_arm_is_tried_before_any_is_repeated():
    b = GroupBandit(5)
    seen = []
    for _ in range(2):
        rows = b.select(2)
        seen += rows.tolist()
        b.update(rows, np.ones(2))
    assert seen == [0, 1, 2, 3]
    assert 4 in b.select(2)


def test_normalise_keep_count_and_schedule():
    assert normalise(np.array([2.0, 1.0, 0.0])).tolist() == [1.0, 0.5, 0.0]
    assert normalise(np.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    assert keep_count(16, 0.5) == 8 and keep_count(10, 0.01) == 1 and keep_count(3, 1.0) == 3
    with pytest.raises(ValueError, match="\\(0, 1\\]"):
        keep_count(4, 0.0)
    assert keep_fraction(0, 100, 0.5) == 1.0
    assert keep_fraction(50, 100, 0.5) == 0.75
    assert keep_fraction(100, 100, 0.5) == keep_fraction(500, 100, 0.5) == 0.5
    assert keep_fraction(0, 0, 0.3) == 0.3


def test_state_roundtrip():
    a = ChannelBandits({0: 4, 3: 6}, c=2.0)
    a.update(a.select(0.5), {0: np.array([0.2, 1.0]), 3: np.array([1.0, 0.0, 0.5])})
    b = ChannelBandits({0: 4, 3: 6})
    b.load_state_dict(a.state_dict())
    assert b.select(0.5).keys() == a.select(0.5).keys()
    assert all((b.select(0.5)[g] == a.select(0.5)[g]).all() for g in (0, 3))
    with pytest.raises(ValueError, match="groups"):
        ChannelBandits({1: 4}).load_state_dict(a.state_dict())


class Planted(nn.Module):
    """Channels 0-1 of ``conv`` detect the class pattern and the classifier reads them;
    channels 2-7 detect an equally strong nuisance pattern the classifier barely uses. After
    BN every channel has the same scale, so only a loss-aware reward can tell them apart."""

    def __init__(self, pattern: torch.Tensor, nuisance: torch.Tensor) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 5, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            signs = torch.tensor([1., -1., 1., -1., 1., -1., 1., -1.])
            self.conv.weight.copy_(torch.stack([pattern if i < 2 else nuisance for i in range(8)])
                                   .unsqueeze(1) * signs.view(8, 1, 1, 1))
            self.fc.weight.copy_(0.05 * torch.randn(2, 8, generator=torch.Generator().manual_seed(1)))
            self.fc.weight[:, :2] = torch.tensor([[2.0, -2.0], [-2.0, 2.0]])
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


def test_planted_bandit_prefers_informative_channels():
    g = torch.Generator().manual_seed(0)
    pattern, nuisance = torch.randn(5, 5, generator=g), torch.randn(5, 5, generator=g)
    model = Planted(pattern / pattern.norm(), nuisance / nuisance.norm()).train()
    view = dyngate.capture(model, torch.zeros(1, 1, 5, 5))
    ex = SlicedExecutor(view)
    group = view.group_of("conv")[0]
    assert group.prunable and group.size == 8
    bandits = ChannelBandits({group.id: 8})
    played = np.zeros(8)
    for step in range(80):
        y = torch.randint(0, 2, (16,), generator=g)
        n = torch.randint(0, 2, (16,), generator=g) * 2.0 - 1
        x = ((1 - 2.0 * y).view(-1, 1, 1) * pattern / pattern.norm() + n.view(-1, 1, 1) * nuisance
             / nuisance.norm() + 0.05 * torch.randn(16, 5, 5, generator=g)).unsqueeze(1)
        sel = bandits.select(0.25)  # 2 of 8 channels per step
        plan = make_plan(view, sel)
        run = ex.run(x, plan, train=True, record=True)
        F.cross_entropy(run.output, y).backward()  # no optimizer step: a stationary problem
        bandits.update(sel, row_scores(view, plan, taylor_scores(run.measured)))
        if step >= 40:
            played[sel[group.id]] += 1
    assert bandits.best(0.25)[group.id].tolist() == [0, 1]
    assert played[:2].min() > 2 * played[2:].max()   # exploitation dominates in the second half
