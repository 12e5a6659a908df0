"""BatchNorm folding (dyngate.gating.fold) for dense and gated models: the folded copy computes
the same outputs and the same gate decisions.

Tolerance: folding changes only fp32 rounding (weights scaled once in float64, then rounded),
so outputs agree to 1e-4 of their scale after ~20 layers; a decision can differ only where
the score lies within rounding of its threshold, so at most 0.1 % of decisions may differ."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import dyngate
import models
from dyngate.gating.fold import fold_batchnorm
from dyngate.gating.gated_conv import GatedConv2d, gated_layers
from dyngate.gating.timing import compare, to_dense


def _random_bn_stats(model: nn.Module, seed: int, negative: str | None = None) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d) and m.affine:
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                if name == negative:
                    m.weight[0] = -m.weight[0]


def _gated(name="resnet20", **kw):
    g = dyngate.convert(models.build(name, in_channels=1), **kw).train()
    with torch.no_grad():
        g(torch.randn(32, 1, 28, 28))   # decision-BN statistics
    _random_bn_stats(g, seed=1)
    return g.eval()


def _decisions(model, x):
    layers = dict(gated_layers(model))
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, i[0]))
             for n, m in layers.items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    out = {}
    for n, m in layers.items():
        tau, inv = m.folded_threshold()
        yp = m._base_conv(seen[n])
        out[n] = (yp - tau.view(1, -1, 1, 1)) * inv.view(1, -1, 1, 1) > 0
    return out


@pytest.mark.parametrize("kw", [dict(), dict(rule="all", tile=(4, 4), granularity=4)])
def test_folded_gated_model_same_outputs_and_decisions(kw):
    g = _gated(**kw)
    f, kept = fold_batchnorm(g)
    assert kept == {}
    bns = [m for m in f.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]
    assert bns == []                      # every BN of ResNet-20 follows a conv: all folded
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref, out = g(x), f(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    da, db = _decisions(g, x), _decisions(f, x)
    for n in da:
        assert float((da[n] != db[n]).float().mean()) <= 1e-3, n


def test_folded_dense_copy_equals_dense_model():
    g = _gated()
    d = to_dense(g)
    f, kept = fold_batchnorm(d)
    assert kept == {} and not any(isinstance(m, nn.BatchNorm2d) for m in f.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = d(x)
        torch.testing.assert_close(f(x), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))


def test_gated_layer_with_a_negative_bn_scale_keeps_its_bn():
    g = _gated()
    conv_name = next(n for n, _ in gated_layers(g))
    bn_name = conv_name.rsplit(".", 1)[0] + ".bn1"
    assert isinstance(g.get_submodule(bn_name), nn.BatchNorm2d)
    _random_bn_stats(g, seed=2, negative=bn_name)
    f, kept = fold_batchnorm(g)
    assert list(kept) == [bn_name] and "<= 0" in kept[bn_name]
    assert isinstance(f.get_submodule(bn_name), nn.BatchNorm2d)
    assert isinstance(f.get_submodule(conv_name), GatedConv2d)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = g(x)
        torch.testing.assert_close(f(x), ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    # the dense copy folds it (no gate to keep): a plain conv takes any scale
    assert fold_batchnorm(to_dense(g))[1] == {}


def test_fold_leaves_the_model_alone_and_compare_reports_it():
    g = _gated()
    before = {k: v.clone() for k, v in g.state_dict().items()}
    res = compare(g, [torch.randn(4, 1, 28, 28)], warmup=1)
    assert res["bn_folded"] == 19 and res["bn_kept"] == {}
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    unfolded = compare(g, [torch.randn(4, 1, 28, 28)], warmup=1, fold_bn=False)
    assert unfolded["bn_folded"] == 0
