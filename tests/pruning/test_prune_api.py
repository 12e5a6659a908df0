import numpy as np
import pytest
import torch
import torch.nn as nn

import dyngate
import models
from dyngate import ConversionError, GraphError
from dyngate.pruning.criteria import CRITERIA, DATA_DRIVEN
from dyngate.pruning.prune import select_keep

X = torch.randn(4, 1, 28, 28)


def _data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g))
            for _ in range(2)]


def _macs(m):
    return dyngate.profile(m, X).totals["dense_macs"]


@pytest.mark.parametrize("method", sorted(CRITERIA))
def test_every_criterion_prunes_globally_and_locally(resnet, method):
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    base = _macs(resnet)
    for scope in ("global", "local"):
        p = dyngate.prune(resnet, method, 0.3, scope=scope, example_input=X, data=_data(),
                          max_group_ratio=0.8)
        assert p(X).shape == (4, 10)
        assert 0.1 * base < _macs(p) < 0.8 * base  # cpmc spends the ratio on costly rows
        assert p.dyngate_pruning["steps"][-1]["meta"]["method"] == method
    after = resnet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # input never modified


def test_local_scope_prunes_each_group_by_ratio_and_round_to(resnet):
    p = dyngate.prune(resnet, "l1", 0.5, scope="local", example_input=X)
    assert p.layer1[0].conv1.out_channels == 8 and p.layer3[0].conv1.out_channels == 32
    p = dyngate.prune(resnet, "l1", 0.3, scope="global", example_input=X, round_to=4)
    widths = [m.out_channels for m in p.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 4 == 0 for w in widths)
    # option-A shortcuts stay symmetric whatever the ranking picks
    for blk in (p.layer2[0], p.layer3[0]):
        s = blk.shortcut
        assert s.out_planes == s.in_planes + 2 * s.pad == blk.conv2.out_channels


def test_ignore_and_per_layer(resnet):
    p = dyngate.prune(resnet, "l2", 0.5, scope="local", example_input=X,
                      ignore=["layer1.0.conv1"], per_layer={"layer3.1.conv1": 0.25})
    assert p.layer1[0].conv1.out_channels == 16
    assert p.layer1[1].conv1.out_channels == 8
    assert p.layer3[1].conv1.out_channels == 48


def test_l1_removes_the_smallest_filters():
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    with torch.no_grad():
        net[0].weight.mul_(10)
        net[0].weight[[1, 4]] *= 0.01
    x = torch.randn(1, 1, 5, 5)
    p = dyngate.prune(net, "l1", 0.34, example_input=x)
    kept = p.dyngate_pruning["steps"][0]["layers"]["0"]["out"]
    assert kept == [0, 2, 3, 5]


def test_fpgm_uses_raw_filters_and_drops_the_median():
    net = nn.Sequential(nn.Conv2d(1, 5, 1, bias=False), nn.ReLU(), nn.Conv2d(5, 2, 1)).eval()
    # filters +-a and +-b are far from each other; filter 4 = 0 sits at the geometric median of
    # the raw filters. On |W| (Torch-Pruning's variant) +a and -a would coincide instead.
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([3.0, -3.0, 2.0, -2.0, 0.1]).view(5, 1, 1, 1))
    p = dyngate.prune(net, "fpgm", 0.2, example_input=torch.randn(1, 1, 2, 2))
    assert p.dyngate_pruning["steps"][0]["layers"]["0"]["out"] == [0, 1, 2, 3]


def test_similarity_keeps_one_of_two_identical_channels():
    net = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1.0, 0], [-1, -1]]).view(4, 2, 1, 1))
        net[0].bias.zero_()
    p = dyngate.prune(net, "similarity", 0.25, example_input=torch.randn(1, 2, 3, 3))
    kept = p.dyngate_pruning["steps"][0]["layers"]["0"]["out"]
    assert len(kept) == 3 and (0 in kept) != (2 in kept)


@pytest.mark.parametrize("method", ["hrank", "ezcrop", "taylor"])
def test_data_criteria_drop_a_dead_channel(method):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 36, 3)).eval()
    with torch.no_grad():
        net[0].weight[2] = 0   # channel 2 is constant: rank <= 1, all FFT energy at DC,
        net[0].bias[2] = 0     # and no gradient flows through its (zero) filter
        net[1].weight[2] = 0
        net[1].bias[2] = 0.5
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(6, 1, 6, 6, generator=g), torch.randint(0, 3, (6,), generator=g))]
    p = dyngate.prune(net, method, 0.25, scope="local", example_input=data[0][0], data=data)
    assert p.dyngate_pruning["steps"][0]["layers"]["0"]["out"] == [0, 1, 3]


@pytest.mark.parametrize("method", sorted(DATA_DRIVEN))
def test_data_driven_criteria_say_data_is_missing(resnet, method):
    with pytest.raises(ConversionError, match=f"'{method}' is data-driven"):
        dyngate.prune(resnet, method, 0.3, example_input=X)


def test_bad_input_is_named(resnet):
    for bad in (1.0, -0.1, "0.5", float("nan"), True):
        with pytest.raises(ConversionError, match="ratio"):
            dyngate.prune(resnet, "l1", bad, example_input=X)
    with pytest.raises(ConversionError, match="unknown pruning method 'l3'"):
        dyngate.prune(resnet, "l3", 0.3, example_input=X)
    with pytest.raises(ConversionError, match="ignore: no conv/linear layer named 'layer9'"):
        dyngate.prune(resnet, "l1", 0.3, example_input=X, ignore=["layer9"])
    with pytest.raises(ConversionError, match=r"per_layer\['conv1'\]"):
        dyngate.prune(resnet, "l1", 0.3, example_input=X, per_layer={"conv1": 1.5})
    with pytest.raises(ConversionError, match="scope"):
        dyngate.prune(resnet, "l1", 0.3, scope="layer", example_input=X)
    with pytest.raises(ConversionError, match="round_to"):
        dyngate.prune(resnet, "l1", 0.3, example_input=X, round_to=0)

    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Conv2d(4, 4, 3, groups=2))

        def forward(self, x):
            return self.body(x)
    with pytest.raises(GraphError, match="body.1"):
        dyngate.prune(Grouped(), "l1", 0.3, example_input=torch.randn(1, 1, 4, 4))


def test_global_ranking_that_empties_a_group_is_an_error_unless_capped(resnet):
    view = dyngate.capture(resnet, X)
    scores = {g.id: np.ones(g.size) for g in view.groups if g.prunable}
    victim = view.group_of("layer1.0.conv1")[0].id
    scores[victim] = np.zeros(16)
    ratio = 16 / sum(len(s) for s in scores.values()) + 1e-6
    with pytest.raises(ConversionError, match="every channel of group .*layer1.0.conv1"):
        select_keep(view, scores, ratio, max_group_ratio=1.0)
    assert len(select_keep(view, scores, ratio)[victim]) == 16 - int(0.9 * 16)   # the default cap
    keep = select_keep(view, scores, ratio, max_group_ratio=0.5)
    assert len(keep[victim]) == 8
    dropped = sum(g.size - len(keep.get(g.id, range(g.size))) for g in view.groups if g.prunable)
    # the cap moves the drops to other groups; an option-A pad-zone group may keep one more
    assert int(ratio * sum(len(s) for s in scores.values())) - dropped in (0, 1)
