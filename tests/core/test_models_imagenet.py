"""resnet50 / mobilenetv2: torchvision layout, and the dyngate pipeline runs on both."""
import warnings

import pytest
import torch
import torch.nn as nn

import dyngate
import models
from accel_sim import networks

X = torch.randn(1, 3, 64, 64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Many small ops on a shared box: one thread avoids contention (restored afterwards)."""
    n, _ = torch.get_num_threads(), torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _count(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_and_names_match_torchvision():
    r50, mb2 = models.build("resnet50"), models.build("mobilenetv2")
    assert _count(r50) == 25_557_032 and _count(mb2) == 3_504_872   # torchvision's published sizes
    assert _count(models.build("mobilenetv2", width_mult=0.5)) == 1_968_680  # mobilenet_v2(width_mult=0.5)
    assert len(r50.state_dict()) == 320 and len(mb2.state_dict()) == 314   # torchvision's key counts
    keys = set(r50.state_dict())
    for k in ["conv1.weight", "bn1.running_mean", "layer1.0.conv3.weight", "layer1.0.bn3.bias",
              "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_var",
              "layer4.2.conv2.weight", "fc.weight"]:
        assert k in keys
    assert r50.fc.in_features == 2048 and r50.layer2[0].conv2.stride == (2, 2)   # v1.5 stride
    keys = set(mb2.state_dict())
    for k in ["features.0.0.weight", "features.0.1.running_var", "features.1.conv.0.0.weight",
              "features.1.conv.1.weight", "features.1.conv.2.bias", "features.2.conv.0.0.weight",
              "features.2.conv.1.0.weight", "features.2.conv.2.weight", "features.2.conv.3.running_mean",
              "features.18.0.weight", "features.18.1.bias", "classifier.1.weight"]:
        assert k in keys
    assert isinstance(mb2.classifier[0], nn.Dropout) and mb2.features[2].conv[1][0].groups == 96
    assert models.build("mobilenetv2", in_channels=1, num_classes=10).eval()(
        torch.randn(2, 1, 28, 28)).shape == (2, 10)


def _torch_layers(model, x):
    """(name, kind, cin, cout, kernel, stride, padding, groups, in_hw, out_hw) of every conv/linear."""
    rows, hooks = [], []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inp, out, name=name):
                if isinstance(mod, nn.Conv2d):
                    rows.append((name, "conv2d", mod.in_channels, mod.out_channels, mod.kernel_size,
                                 mod.stride, mod.padding, mod.groups, tuple(inp[0].shape[2:]),
                                 tuple(out.shape[2:])))
                else:
                    rows.append((name, "linear", mod.in_features, mod.out_features))
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return rows


def _sim_layers(layers):
    return [(l.name, l.kind, l.in_channels, l.out_channels, l.kernel_size, l.stride, l.padding, l.groups,
             l.input_hw, l.output_hw) if l.kind == "conv2d" else (l.name, l.kind, l.in_channels, l.out_channels)
            for l in layers]


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2"])
@pytest.mark.parametrize("chw", [(3, 64, 64), (3, 224, 224), (1, 28, 28)])
def test_layer_shapes_agree_with_accel_sim_builtins(name, chw):
    model = models.build(name, in_channels=chw[0], num_classes=10)
    got = _torch_layers(model, torch.randn(1, *chw))
    want = _sim_layers(networks.build(name, input_chw=chw, num_classes=10))
    # accel_sim lists layers in its own order (e.g. downsample after conv3): compare by name
    assert sorted(got) == sorted(want)
    assert [r[0] for r in got if r[1] == "linear"] == [r[0] for r in want if r[1] == "linear"]


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2"])
def test_capture_convert_profile_prune(name):
    model = models.build(name, num_classes=10).eval()
    view = dyngate.capture(model, X)
    n_conv = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert len(view.convs()) == n_conv
    assert any(g.prunable for g in view.groups)
    gated_by_rule = {}
    for rule in ("cgnet", "all"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # mobilenetv2: "not gating depthwise conv" notices
            gated = dyngate.set_backend(dyngate.convert(model, rule=rule, example_input=X), "reference")
        gated_by_rule[rule] = set(gated.dyngate_spec["layers"])
        with torch.no_grad(), dyngate.gates_open(gated):
            torch.testing.assert_close(gated.eval()(X), model(X), atol=1e-5, rtol=0)
        prof = dyngate.profile(gated, X)
        assert prof.totals["mac_reduction"] > 1.0
        assert {l.name for l in prof.layers if l.gated} == gated_by_rule[rule]
    assert gated_by_rule["cgnet"] < gated_by_rule["all"]
    if name == "resnet50":   # CGNet gates a Bottleneck's conv1 and conv2 (as accel_sim's rule says)
        sim = networks.cgnet_gated(networks.build("resnet50", input_chw=(3, 64, 64)))
        assert gated_by_rule["cgnet"] == sim
    else:                    # expansion 1x1 convs and the last 1x1; never depthwise or projections
        assert "features.2.conv.0.0" in gated_by_rule["cgnet"]
        assert not any(n.endswith((".conv.1.0", ".conv.2")) for n in gated_by_rule["cgnet"] if n.startswith("features.2"))
    pruned = dyngate.prune(model, "l1", 0.3, example_input=X)
    assert pruned(X).shape == (1, 10)
    dense_macs = dyngate.profile(model, X).totals["dense_macs"]
    assert dyngate.profile(pruned, X).totals["dense_macs"] < 0.9 * dense_macs
