import pytest
import torch
import torch.nn as nn

import dyngate
import models
from dyngate import ConversionError, GatedConv2d


def _gated_names(m):
    return [n for n, mod in m.named_modules() if isinstance(mod, GatedConv2d)]


@pytest.mark.parametrize("name,shape", [("resnet18", (2, 3, 112, 112)), ("resnet20", (4, 3, 32, 32)),
                                        ("vgg16", (2, 3, 32, 32))])
def test_gates_open_reproduces_original(name, shape):
    """Open-gate identity: max abs error <= 1e-5 in fp32 (the issue's bar)."""
    dense = models.build(name, num_classes=10).eval()
    gated = dyngate.convert(dense)
    dyngate.set_backend(gated, "reference")
    gated.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        ref = dense(x)
        with dyngate.gates_open(gated):
            out = gated(x)
        err = (out - ref).abs().max().item()
        assert err <= 1e-5, err
        # gated output differs from dense when gates decide (thresholds at 0 close about half)
        assert (gated(x) - ref).abs().max() > 1e-3


def test_gates_closed_is_base_path_network():
    dense = models.build("resnet20", in_channels=1).eval()
    gated = dyngate.convert(dense)
    base_only = models.build("resnet20", in_channels=1).eval()
    base_only.load_state_dict(dense.state_dict())
    with torch.no_grad():
        for name in gated.dyngate_spec["layers"]:
            base_only.get_submodule(name).weight.mul_(gated.get_submodule(name).mask)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad(), dyngate.gates_closed(gated):
        torch.testing.assert_close(gated.eval()(x), base_only(x), atol=1e-5, rtol=0)


def test_default_rule_and_original_untouched():
    dense = models.build("resnet18", num_classes=10)
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    gated = dyngate.convert(dense)
    assert not any(isinstance(m, GatedConv2d) for m in dense.modules())
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    assert _gated_names(gated) == [f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2)]
    assert "conv1" in gated.dyngate_spec["skipped"]
    # state-dict names of the wrapped conv weights are unchanged
    assert torch.equal(gated.state_dict()["layer1.0.conv1.weight"], before["layer1.0.conv1.weight"])
    vgg = dyngate.convert(models.build("vgg16"))
    assert len(_gated_names(vgg)) == 12 and "features.0" not in _gated_names(vgg)


def test_include_and_skip_lists():
    dense = models.build("resnet20")
    g = dyngate.convert(dense, include=["layer1.0.conv1", "layer1.0.conv2"])
    assert _gated_names(g) == ["layer1.0.conv1", "layer1.0.conv2"]
    g = dyngate.convert(dense, skip=["layer1.0.conv1"])
    assert "layer1.0.conv1" not in _gated_names(g) and len(_gated_names(g)) == 8
    with pytest.raises(ConversionError, match="skip: no conv/linear layer named 'layer9.conv'"):
        dyngate.convert(dense, skip=["layer9.conv"])
    with pytest.raises(ConversionError, match="include: no conv/linear layer named 'nope'"):
        dyngate.convert(dense, include=["nope"])
    with pytest.raises(ConversionError, match="include: layer 'fc' is a linear layer"):
        dyngate.convert(dense, include=["fc"])
    with pytest.raises(ConversionError, match="include: layer 'conv1' in_channels=3 is not divisible"):
        dyngate.convert(dense, include=["conv1"])
    with pytest.raises(ConversionError, match="already gated"):
        dyngate.convert(g)


def test_indivisible_layers_are_reported_not_silently_skipped():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 6, 3)
            self.c = nn.Conv2d(6, 8, 3)
            self.d = nn.Conv2d(8, 8, 3)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            x = torch.relu(self.c(x))
            x = torch.relu(self.d(x))
            return self.fc(x.mean((2, 3)))

    with pytest.warns(UserWarning, match="not gating 1 of .*'c': in_channels=6.*partitions=4"):
        g = dyngate.convert(Net())
    assert _gated_names(g) == ["d"]
    assert "in_channels=6" in g.dyngate_spec["skipped"]["c"]


def test_gated_model_trains_end_to_end():
    gated = dyngate.convert(models.build("resnet20", in_channels=1)).train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(gated(x), y) + 1e-4 * dyngate.gate_loss(gated, 1.0)
    loss.backward()
    assert all(m.threshold.grad is not None for m in gated.modules() if isinstance(m, GatedConv2d))


@pytest.mark.parametrize("name", ["resnet18", "resnet20", "resnet50", "resnet56", "vgg16", "mobilenetv2"])
def test_convert_gates_what_accel_sim_gates(name):
    """One rule (netspec.archs.rule_gates): the graph-based and the name-based facts agree."""
    from accel_sim import build_network, cgnet_gated
    gated = dyngate.convert(models.build(name), example_input=torch.randn(1, 3, 32, 32))
    assert set(gated.dyngate_spec["layers"]) == cgnet_gated(build_network(name, (3, 32, 32)))


def test_rule_gates_states_both_rules():
    from netspec.archs import rule_gates
    assert not rule_gates("all", reads_input=True, feeds_activation=True)
    assert rule_gates("all", reads_input=False, feeds_activation=False)
    assert not rule_gates("cgnet", reads_input=False, feeds_activation=False)
    assert rule_gates("cgnet", reads_input=False, feeds_activation=True)
    with pytest.raises(ValueError, match="rule must be one of cgnet, all"):
        rule_gates("some", reads_input=False, feeds_activation=True)
