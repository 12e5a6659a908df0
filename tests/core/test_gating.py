"""GatedConv2d against the plain-torch reference (kernels.reference) on the same inputs.

Tolerances: fp32, 1e-5 absolute on unit-scale activations unless stated.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import dyngate
from dyngate.gating import GatedConv2d
from kernels.reference import base_mask, conditional_conv2d_reference


def _layer(cin, cout, k=3, stride=1, padding=1, p=4, grouped=True, granularity=1):
    conv = torch.nn.Conv2d(cin, cout, k, stride, padding, bias=False)
    g = GatedConv2d.from_conv(conv, name="t", partitions=p, grouped=grouped, granularity=granularity)
    with torch.no_grad():
        g.bn0.running_mean.uniform_(-0.5, 0.5)
        g.bn0.running_var.uniform_(0.5, 2.0)
        g.threshold.uniform_(-0.5, 0.5)
    dyngate.set_backend(g, "reference")
    return conv, g.eval()


shapes = st.tuples(st.sampled_from([4, 8, 12]), st.sampled_from([4, 8, 16]), st.sampled_from([1, 3]),
                   st.sampled_from([1, 2]), st.integers(0, 1), st.sampled_from([2, 4]), st.booleans(),
                   st.integers(5, 9))


@settings(max_examples=25, deadline=None)
@given(shapes)
def test_open_closed_identities_on_random_shapes(s):
    cin, cout, k, stride, pad, p, grouped, hw = s
    conv, g = _layer(cin, cout, k, stride, pad, p, grouped)
    x = torch.randn(2, cin, hw, hw)
    with torch.no_grad():
        with dyngate.gates_open(g):
            torch.testing.assert_close(g(x), conv(x), atol=1e-5, rtol=0)
        with dyngate.gates_closed(g):
            m = base_mask(cout, cin, p, grouped)
            torch.testing.assert_close(g(x), F.conv2d(x, conv.weight * m, None, stride, pad),
                                       atol=1e-5, rtol=0)
        # thresholds far below / above every score give the open / closed network
        g.threshold.fill_(-1e6)
        torch.testing.assert_close(g(x), conv(x), atol=1e-5, rtol=0)
        g.threshold.fill_(1e6)
        torch.testing.assert_close(g(x), F.conv2d(x, conv.weight * m, None, stride, pad), atol=1e-5, rtol=0)


@settings(max_examples=15, deadline=None)
@given(shapes, st.sampled_from([1, 2, 4]))
def test_eval_path_matches_reference_and_unfolded_decision(s, granularity):
    cin, cout, k, stride, pad, p, grouped, hw = s
    _, g = _layer(cin, cout, k, stride, pad, p, grouped, granularity)
    x = torch.randn(2, cin, hw, hw)
    dyngate.set_backend(g, "reference")
    with torch.no_grad():
        tau, inv_sigma = g.folded_threshold()
        ref, d_ref = conditional_conv2d_reference(x, g.weight, None, tau, inv_sigma, stride=stride,
                                                  padding=pad, partitions=p, grouped=grouped,
                                                  granularity=granularity, return_gate=True)
        torch.testing.assert_close(g(x), ref, atol=1e-5, rtol=0)
        # the folded compare agrees with the unfolded BN0(Yp) > delta except at float ties
        yp = F.conv2d(x, g.weight * g.mask, None, stride, pad)
        score = g._score(yp)
        decided = score.abs() > 1e-4
        assert torch.equal(d_ref[decided], (score > 0)[decided])
        assert decided.float().mean() > 0.95


def test_training_forward_matches_reference_with_batch_statistics():
    _, g = _layer(8, 8)
    g.train()
    x = torch.randn(4, 8, 6, 6)
    out = g(x)
    yp = F.conv2d(x, g.weight * g.mask, None, 1, 1)
    mean, var = yp.mean((0, 2, 3)), yp.var((0, 2, 3), unbiased=False)
    sigma = torch.sqrt(var + g.bn0.eps)
    ref = conditional_conv2d_reference(x, g.weight.detach(), None, mean + g.threshold.detach() * sigma,
                                       1 / sigma, stride=1, padding=1, partitions=4, grouped=True)
    torch.testing.assert_close(out.detach(), ref, atol=1e-5, rtol=0)


def test_straight_through_gradient_shape():
    _, g = _layer(8, 8)
    g.train()
    x = torch.randn(4, 8, 6, 6)
    out = g(x)
    (out * torch.randn_like(out)).sum().backward()
    assert g.threshold.grad is not None and g.threshold.grad.abs().sum() > 0
    assert g.weight.grad.abs().sum() > 0
    # with every gate off and sparse bp, no gradient reaches the thresholds
    g.zero_grad()
    with torch.no_grad():
        g.threshold.fill_(50.0)
    out = g(x)
    out.sum().backward()
    assert g.threshold.grad.abs().sum() == 0


def test_gate_loss_is_cgnet_threshold_loss():
    model = dyngate.convert(__import__("models").build("resnet20", in_channels=1))
    with torch.no_grad():
        for _, m in dyngate.gating.gated_layers(model):
            m.threshold.fill_(0.5)
    n = sum(m.out_channels for _, m in dyngate.gating.gated_layers(model))
    assert dyngate.gate_loss(model, 2.0).item() == pytest.approx(n * 1.5 ** 2)
    dyngate.gate_loss(model, 2.0).backward()
    assert all((m.threshold.grad < 0).all() for _, m in dyngate.gating.gated_layers(model))


def test_granularity_shares_one_decision_per_group():
    _, g = _layer(8, 16, granularity=4)
    dyngate.set_backend(g, "reference")
    with torch.no_grad():
        tau, s = g.folded_threshold()
        _, d = conditional_conv2d_reference(torch.randn(2, 8, 5, 5), g.weight, None, tau, s,
                                            padding=1, granularity=4, return_gate=True)
    d = d.view(2, 4, 4, 5, 5)
    assert (d == d[:, :, :1]).all()


def test_bad_layer_arguments():
    with pytest.raises(ValueError, match="not divisible by partitions"):
        GatedConv2d(6, 8, 3, partitions=4)
    with pytest.raises(ValueError, match="granularity"):
        GatedConv2d(8, 8, 3, granularity=3)
    with pytest.raises(ValueError, match="depthwise"):
        GatedConv2d.from_conv(torch.nn.Conv2d(8, 8, 3, groups=8), name="dw")
    _, g = _layer(8, 8)
    with pytest.raises(ValueError, match=r"t: expected input \(N, 8, H, W\)"):
        g(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="unknown backend"):
        dyngate.set_backend(g, "cuda-magic")


@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_model_backends_match_reference(backend):
    """A converted ResNet-20 in eval mode on the CPU fast path equals the reference backend
    (fp32, 1e-4 absolute after 20 layers)."""
    import models
    g = dyngate.convert(models.build("resnet20", in_channels=1)).train()
    g(torch.randn(16, 1, 28, 28))  # non-trivial decision-BN statistics
    g.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = dyngate.set_backend(g, "reference")(x)
        out = dyngate.set_backend(g, backend)(x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="triton"):
        dyngate.set_backend(g, "triton")(x)  # CPU tensors without the interpreter
