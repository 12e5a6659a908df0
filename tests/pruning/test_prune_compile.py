import importlib.util

import pytest
import torch

import dyngate
import models
from dyngate import CompileError, ConfigError
from dyngate.pruning.compiler import compile_model as tvm_compile

X = torch.randn(2, 1, 28, 28)


def test_compile_is_the_old_name_of_compile_model():
    from dyngate.compile import compile as old
    assert dyngate.compile is old is tvm_compile


def test_compile_refuses_gated_models_before_touching_tvm():
    gated = dyngate.convert(models.build("resnet20", in_channels=1))
    with pytest.raises(CompileError, match="GatedConv2d"):
        tvm_compile(gated, example_input=X)


@pytest.mark.skipif(importlib.util.find_spec("tvm") is not None, reason="TVM is installed")
def test_compile_without_tvm_says_how_to_get_it():
    with pytest.raises(CompileError, match="pip install apache-tvm"):
        tvm_compile(models.build("resnet20", in_channels=1), example_input=X)


def _check_against_eager(compiled, model):
    """Same output as eager on a fresh batch (rtol = atol = 1e-4); other shapes are refused."""
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
    assert compiled.max_abs_error < 1e-4
    with pytest.raises(ConfigError, match="input shape"):
        compiled(torch.randn(3, 1, 28, 28))


def test_compiled_pruned_model_matches_torch():
    pytest.importorskip("tvm.relax")
    net = models.build("resnet20", in_channels=1).eval()
    pruned = dyngate.prune(net, "l1", 0.4, example_input=X, round_to=4)
    _check_against_eager(tvm_compile(pruned, example_input=X), pruned)


def test_inductor_compiled_pruned_model_matches_torch():
    """The deployment path the latency benchmark times: torch.compile with frozen weights (BN
    folded, weights pre-packed)."""
    net = models.build("resnet20", in_channels=1).eval()
    _randomize_bn(net)
    pruned = dyngate.prune(net, "l1", 0.4, example_input=X)
    _check_against_eager(tvm_compile(pruned, "inductor", example_input=X), pruned)
    with pytest.raises(CompileError, match="GatedConv2d"):
        tvm_compile(dyngate.convert(net), "inductor", example_input=X)


def _randomize_bn(net):
    for bn in net.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.2, 0.2)


def test_torch_deploy_form_matches_eager_at_odd_widths():
    """target="torch": BN folded, channels_last. Widths that are not a multiple of 16 are the
    case it is for; any batch size runs (no static shape); rtol = atol = 1e-4."""
    net = models.build("resnet20", in_channels=1).eval()
    _randomize_bn(net)
    pruned = dyngate.prune(net, "l1", 0.3, example_input=X)
    assert any(c.out_channels % 16 for c in pruned.modules() if isinstance(c, torch.nn.Conv2d))
    deployed = tvm_compile(pruned, "torch", example_input=X)
    assert deployed.max_abs_error < 1e-4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.module.modules())
    assert pruned.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in pruned.modules())
    for n in (1, 5):
        x = torch.randn(n, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(deployed(x), pruned(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(CompileError, match="GatedConv2d"):
        tvm_compile(dyngate.convert(net), "torch", example_input=X)


def test_torch_deploy_form_names_an_untraceable_model():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else -self.conv(x)

    with pytest.raises(CompileError, match="fx-traceable"):
        tvm_compile(Branchy(), "torch", example_input=X)


def test_inductor_compiles_many_instances_of_one_class():
    """Dynamo caches per forward code object; past its recompile limit (8) it would run new
    instances eagerly. Every compile must stay compiled: more instances than the limit."""
    import torch._dynamo.utils as dynamo_utils

    class Small(torch.nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, width, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(width)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x))).mean((2, 3))

    x = torch.randn(2, 1, 8, 8)
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    for width in range(3, 12):  # 9 instances, one past the limit
        m = Small(width).eval()
        c = tvm_compile(m, "inductor", example_input=x)
        with torch.no_grad():
            torch.testing.assert_close(c(x), m(x), rtol=1e-4, atol=1e-4)
    assert dynamo_utils.counters["stats"]["unique_graphs"] - before == 9  # one compiled graph each
