import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import dyngate
import models
from dyngate.pruning.surgery import SurgeryError, apply_pruning_history, prune_groups


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def _keep_half(view, rng):
    """Random half of every prunable group; balanced pad zones for option-A shortcut groups."""
    from dyngate.pruning.surgery import shortcut_zones, zone_of_rows
    zones = zone_of_rows(view, shortcut_zones(view))
    keep = {}
    for g in view.groups:
        if not g.prunable:
            continue
        if g.id in zones:
            z = next(iter(zones[g.id].values()))
            lo, hi = np.flatnonzero(z < 0), np.flatnonzero(z > 0)
            n = len(lo) // 2
            keep[g.id] = sorted(rng.choice(lo, n, replace=False).tolist() + rng.choice(hi, n, replace=False).tolist())
        else:
            keep[g.id] = sorted(rng.choice(g.size, g.size // 2, replace=False).tolist())
    return keep


def _zero_removed(model, view, keep, zero_shift):
    """Reference: the original with removed channels' filters and biases (and optionally BN
    shift) zeroed."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for g in view.groups:
            if g.id not in keep:
                continue
            gone = np.setdiff1d(np.arange(g.size), keep[g.id])
            for (layer, role), idx in g.members.items():
                if role == "out":
                    m = ref.get_submodule(layer)
                    m.weight[idx[gone].ravel()] = 0
                    if m.bias is not None:
                        m.bias[idx[gone].ravel()] = 0
            if zero_shift:
                for bn, idx in g.bns.items():
                    b = ref.get_submodule(bn)
                    b.bias[idx[gone].ravel()] = 0
                    b.running_mean[idx[gone].ravel()] = 0
    return ref


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet20_pruned_equals_zeroed_original_exactly(shortcut):
    model = _randomise_bn(models.build("resnet20", in_channels=1, shortcut=shortcut))
    x = torch.randn(3, 1, 28, 28)
    view = dyngate.capture(model, x)
    keep = _keep_half(view, np.random.default_rng(1))
    # soft-pruned reference: removed filters and BN shifts zero, so those channels are exactly 0
    ref = _zero_removed(model, view, keep, zero_shift=True)
    pruned = prune_groups(ref, x, keep)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model(x), ref(x), atol=1e-3)  # the removal did change something
    n_orig = sum(p.numel() for p in model.parameters())
    n_new = sum(p.numel() for p in pruned.parameters())
    assert n_new < 0.4 * n_orig
    assert pruned.layer1[0].conv1.out_channels == 8 and pruned.fc.in_features == 32
    # input model untouched
    assert model.layer1[0].conv1.out_channels == 16


def test_option_a_shortcut_gets_new_pads_including_unbalanced_bands():
    model = models.build("resnet20", in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    view = dyngate.capture(model, x)
    gid = view.group_of("layer2.0.conv2")[1].id  # the stage-2 pad-zone group
    sc = dyngate.capture(model, x)
    rows = sc.groups[gid].members[("layer2.0.conv2", "out")][:, 0]
    lo = np.flatnonzero(rows < 8)
    hi = np.flatnonzero(rows >= 24)
    pruned = prune_groups(model, x, {gid: lo[:3].tolist() + hi[:3].tolist(), 1: list(range(10))})
    s = pruned.layer2[0].shortcut
    assert (s.in_planes, s.out_planes, s.pad) == (10, 16, 3)
    assert pruned.layer3[0].shortcut.in_planes == 16
    # 3 rows of the low band and 1 of the high one: pads (3, 1), outputs as if the removed
    # channels were dropped (fold_shift=False) on the original model
    keep = lo[:3].tolist() + hi[:1].tolist()
    lop = prune_groups(model, x, {gid: keep}, fold_shift=False)
    s = lop.layer2[0].shortcut
    assert (s.in_planes, s.out_planes, s.pad, s.pad_high) == (16, 20, 3, 1)
    ref = copy.deepcopy(model)
    gone = np.setdiff1d(np.arange(len(rows)), keep)
    with torch.no_grad():  # removed rows emit exact zeros: conv rows and their BN's affine
        for (layer, role), idx in sc.groups[gid].members.items():
            if role == "out":
                i = torch.as_tensor(idx[gone, 0])
                ref.get_submodule(layer).weight[i] = 0
                bn = ref.get_submodule(layer.replace("conv", "bn"))
                bn.weight[i] = 0
                bn.bias[i] = 0
    torch.testing.assert_close(lop(x), ref(x), rtol=1e-5, atol=1e-5)


def _small_net():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bna = nn.BatchNorm2d(8)
            self.b = nn.Conv2d(8, 6, 1, bias=False)
            self.bnb = nn.BatchNorm2d(6)
            self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
            self.c = nn.Conv2d(6, 5, 1)  # no BN: the fold goes into its bias
            self.fc = nn.Linear(5, 4)

        def forward(self, x):
            y = torch.relu(self.bna(self.a(x)))
            y = torch.relu(self.bnb(self.b(y)))
            y = torch.relu(self.c(torch.relu(self.dw(y))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))
    net = _randomise_bn(Net())
    for bn in (net.bna, net.bnb):  # positive shifts: removed channels emit relu(shift) > 0
        bn.bias.data.uniform_(0.3, 0.6)
        bn.running_mean.uniform_(-0.1, 0.1)
    net.dw.bias.data.uniform_(0.1, 0.3)
    return net


def test_bn_shift_is_folded_exactly_into_1x1_and_linear_consumers():
    net = _small_net()
    x = torch.randn(2, 3, 6, 6)
    view = dyngate.capture(net, x)
    ga, gb, gc = view.group_of("a")[0], view.group_of("b")[0], view.group_of("c")[0]
    keep = {ga.id: [0, 2, 5], gb.id: [1, 3, 4], gc.id: [0, 4]}
    # soft-pruned: removed filters are zero, so those channels emit the constant relu(shift)
    soft = _zero_removed(net, view, keep, zero_shift=False)
    with torch.no_grad():
        pruned = prune_groups(soft, x, keep)
        torch.testing.assert_close(pruned(x), soft(x), rtol=1e-4, atol=1e-5)
        unfolded = prune_groups(soft, x, keep, fold_shift=False)
        assert not torch.allclose(unfolded(x), soft(x), atol=1e-3)  # without the fold it leaks
    assert pruned.dw.groups == 3 and pruned.dw.weight.shape == (3, 1, 3, 3)
    assert pruned.fc.in_features == 2


def test_live_channel_is_replaced_by_its_mean_activation():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    x = torch.randn(5, 2, 6, 6)
    view = dyngate.capture(net, x)
    g = view.group_of("0")[0]
    pruned = prune_groups(net, x, {g.id: [0, 1, 3]})
    with torch.no_grad():
        h = torch.relu(net[0](x))
        h[:, 2] = h[:, 2].mean()   # channel 2 replaced by its mean over the batch and space
        torch.testing.assert_close(pruned(x), net[2](h), rtol=1e-4, atol=1e-5)


def test_flatten_linear_in_factor_slices_feature_blocks():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 3)).eval()
    x = torch.randn(2, 2, 3, 3)
    view = dyngate.capture(net, x)
    g = view.group_of("0")[0]
    ref = _zero_removed(net, view, {g.id: [1, 3]}, zero_shift=False)
    pruned = prune_groups(ref, x, {g.id: [1, 3]})
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref(x), rtol=1e-4, atol=1e-5)
    assert pruned[3].in_features == 18


def test_bad_keep_sets_are_named():
    model = models.build("resnet20", in_channels=1)
    x = torch.randn(1, 1, 28, 28)
    view = dyngate.capture(model, x)
    inner = view.group_of("layer1.0.conv1")[0].id
    with pytest.raises(SurgeryError, match="layer1.0.conv1"):
        prune_groups(model, x, {inner: []})
    with pytest.raises(SurgeryError, match="not prunable"):
        prune_groups(model, x, {view.group_of("fc")[-1].id: [0]})
    with pytest.raises(SurgeryError, match="no channel group"):
        prune_groups(model, x, {999: [0]})
    with pytest.raises(SurgeryError, match=r"\[0, 16\)"):
        prune_groups(model, x, {inner: [0, 16]})
    gated = dyngate.convert(model)
    with pytest.raises(SurgeryError, match="GatedConv2d"):
        prune_groups(gated, x, {inner: [0]})


def test_history_is_plain_data_and_save_load_rebuilds(tmp_path):
    model = _randomise_bn(models.build("resnet20", in_channels=1))
    x = torch.randn(2, 1, 28, 28)
    view = dyngate.capture(model, x)
    p1 = prune_groups(model, x, _keep_half(view, np.random.default_rng(0)))
    view2 = dyngate.capture(p1, x)
    p2 = prune_groups(p1, x, {view2.group_of("layer3.0.conv1")[0].id: [0, 1, 2]})
    assert len(p2.dyngate_pruning["steps"]) == 2 and len(p1.dyngate_pruning["steps"]) == 1

    def plain(o):
        if isinstance(o, dict):
            return all(isinstance(k, str) and plain(v) for k, v in o.items())
        if isinstance(o, list):
            return all(plain(v) for v in o)
        return isinstance(o, (int, str, float, bool)) or o is None
    assert plain(p2.dyngate_pruning)
    dyngate.save(p2, tmp_path / "p.pt")
    back = dyngate.load(tmp_path / "p.pt")
    with torch.no_grad():
        torch.testing.assert_close(back(x), p2.eval()(x))
    assert back.layer3[0].conv1.out_channels == 3
    gated = dyngate.convert(p2, partitions=1)  # prune first, gate afterwards; both survive save/load
    dyngate.save(gated, tmp_path / "g.pt")
    assert dyngate.load(tmp_path / "g.pt").layer3[0].conv1.out_channels == 3
    fresh = apply_pruning_history(models.build("resnet20", in_channels=1), p2.dyngate_pruning)
    assert fresh.layer1[0].conv1.out_channels == 8
    with pytest.raises(SurgeryError, match="version"):
        apply_pruning_history(model, {"version": 99})
