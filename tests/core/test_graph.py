import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from dyngate import GraphError, capture, prune
from dyngate.errors import ConfigError
from dyngate.graph import ChannelOp, register_channel_op


def test_resnet18_groups_couple_residual_stream():
    v = capture(models.build("resnet18", num_classes=10), torch.randn(1, 3, 64, 64))
    stage1 = v.group_of("layer1.0.conv2")[0]
    # stem output, both block outputs of stage 1 and the readers of stage 1 are one group
    for layer, role in [("conv1", "out"), ("layer1.0.conv2", "out"), ("layer1.1.conv2", "out"),
                        ("layer2.0.conv1", "in"), ("layer2.0.downsample.0", "in")]:
        assert (layer, role) in stage1.members
    assert set(stage1.bns) == {"bn1", "layer1.0.bn2", "layer1.1.bn2"}
    inner = v.group_of("layer1.0.conv1")[0]
    assert set(inner.members) == {("layer1.0.conv1", "out"), ("layer1.0.conv2", "in")}
    assert inner.prunable and inner.size == 64
    fc_in = [g for g in v.groups if ("fc", "in") in g.members][0]
    assert ("layer4.1.conv2", "out") in fc_in.members and fc_in.in_factor["fc"] == 1
    assert not v.group_of("fc", "out")[0].prunable


def test_option_a_shortcut_maps_channels_with_padding():
    v = capture(models.build("resnet20", in_channels=1), torch.randn(1, 1, 32, 32))
    g = v.group_of("conv1")[0]
    # stem channel c reaches stage-2 conv1 input channel c + 8 through the padded shortcut
    assert (g.members[("layer2.1.conv1", "in")][:, 0] == g.members[("conv1", "out")][:, 0] + 8).all()
    assert v.layers["layer1.0.conv1"].activation is not None
    assert v.layers["layer1.0.conv2"].activation is None  # feeds the residual add


def test_concat_and_depthwise_and_flatten_linear():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(3, 6, 1)
            self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
            self.pw = nn.Conv2d(10, 8, 1)
            self.fc = nn.Linear(8 * 4 * 4, 5)

        def forward(self, x):
            y = torch.cat([self.a(x), self.b(x)], dim=1)
            y = torch.relu(self.pw(self.dw(y)))
            return self.fc(torch.flatten(y, 1))

    v = capture(Net(), torch.randn(1, 3, 4, 4))
    ga = v.group_of("a")[0]
    assert ("dw", "out") in ga.members and ("dw", "in") in ga.members
    assert (ga.members[("dw", "in")][:, 0] == ga.members[("a", "out")][:, 0]).all()
    gb = v.group_of("b")[0]
    assert (gb.members[("pw", "in")][:, 0] == gb.members[("b", "out")][:, 0] + 4).all()
    gfc = v.group_of("pw")[0]
    assert gfc.in_factor["fc"] == 16 and gfc.size == 8
    dw, fc = v.layers["dw"].layer_shape, v.layers["fc"].layer_shape
    assert (dw.input_hw, dw.output_hw, dw.groups, dw.macs) == ((4, 4), (4, 4), 10, 4 * 4 * 10 * 9)
    assert (fc.kind, fc.macs, fc.params) == ("linear", 128 * 5, 128 * 5)
    with pytest.raises(GraphError, match="layer 'dw': no output shape"):
        capture(Net()).layers["dw"].layer_shape


def test_untraceable_model_names_the_module():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            if x.sum() > 0:
                return self.conv(x)
            return x

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = Bad()

        def forward(self, x):
            return self.block(x)

    with pytest.raises(GraphError, match="in module 'block'"):
        capture(Outer())


def test_unsupported_op_is_named():
    class Roll(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return torch.roll(self.conv(x), 1, dims=1)

    with pytest.raises(GraphError, match="unsupported op 'roll'"):
        capture(Roll(), torch.randn(1, 3, 4, 4))


class Twice(nn.Module):
    """A user's channel-duplicating op; ``repeat`` alone is not analysed, the registration is."""

    def forward(self, x):
        return x.repeat(1, 2, 1, 1)


class ZeroPad(nn.Module):
    """A user's channel-padding op: ``lo`` zero channels below the input, ``hi`` above."""

    def __init__(self, lo: int, hi: int) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return F.pad(x, (0, 0, 0, 0, self.lo, self.hi))


register_channel_op(Twice, ChannelOp(source=lambda m, n: np.concatenate([np.arange(n), np.arange(n)])))
register_channel_op(ZeroPad, ChannelOp(
    source=lambda m, n: np.concatenate([np.full(m.lo, -1), np.arange(n), np.full(m.hi, -1)]),
    sliced_forward=lambda m, x: x,
    resize=lambda m, kept, src: [int((kept < m.lo).sum()), int((kept >= len(src) - m.hi).sum())],
    rebuild=lambda m, record: ZeroPad(*record)))


class CustomOpNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.twice = Twice()
        self.b = nn.Conv2d(8, 6, 3, padding=1)
        self.pad = ZeroPad(1, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.a(x)))
        y = torch.relu(self.b(self.twice(h)) + self.pad(h))
        return self.fc(y.mean((2, 3)))


def test_registered_custom_ops_flow_through_capture_surgery_and_sliced_plan(tmp_path):
    from dyngate.train.cucb import SlicedExecutor, extract, make_plan
    from dyngate.pruning.surgery import apply_pruning_history

    torch.manual_seed(0)
    net, x = CustomOpNet().eval(), torch.randn(3, 2, 5, 5)
    v = capture(net, x)
    ga, gz = v.group_of("a")[0], v.group_of("b")[-1]
    assert (ga.members[("b", "in")] == np.stack([np.arange(4), np.arange(4) + 4], 1)).all()
    assert (ga.members[("b", "out")][:, 0] == np.arange(4) + 1).all()  # copied block of the pad
    assert gz.members[("b", "out")][:, 0].tolist() == [0, 5] and gz.prunable  # its zero bands
    sel = {ga.id: [0, 2, 3], gz.id: [1]}
    plan = make_plan(v, sel)
    assert plan.layer_in["b"].tolist() == [0, 2, 3, 4, 6, 7] and plan.layer_out["b"].tolist() == [1, 3, 4, 5]
    with torch.no_grad():
        want = SlicedExecutor(v).run(x, plan, train=False).output
    compact = extract(net, x, sel).eval()
    assert (compact.pad.lo, compact.pad.hi) == (0, 1) and compact.b.weight.shape[:2] == (4, 6)
    assert compact.dyngate_pruning["steps"][-1]["shortcuts"] == {"pad": [0, 1]}
    with torch.no_grad():
        torch.testing.assert_close(compact(x), want, rtol=1e-5, atol=1e-5)
    fresh = apply_pruning_history(CustomOpNet(), compact.dyngate_pruning)
    assert (fresh.pad.lo, fresh.pad.hi) == (0, 1) and fresh.a.out_channels == 3
    pruned = prune(net, "l1", 0.5, scope="local", example_input=x)  # balanced pad bands
    assert (pruned.pad.lo, pruned.pad.hi) == (1, 1) and pruned(x).shape == (3, 3)


def test_channel_op_registration_is_checked():
    with pytest.raises(ConfigError, match="exactly one of conv=True or source="):
        register_channel_op(ZeroPad, ChannelOp())
    with pytest.raises(ConfigError, match="resize= and rebuild= go together"):
        register_channel_op(ZeroPad, ChannelOp(source=lambda m, n: np.arange(n), resize=lambda m, k, s: []))
