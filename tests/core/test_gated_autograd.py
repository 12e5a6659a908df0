"""Eval-mode gated layers under autograd: the fast CPU path computes no gradients, so a call
that needs them runs the differentiable reference (same input and weight gradients)."""
import pytest
import torch

import dyngate
import kernels
import models


def _grads(backend: str, model, x):
    dyngate.set_backend(model, backend)
    model.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    out = model(xi)
    out.square().sum().backward()
    conv = model.get_submodule("layer1.0.conv1")
    return out.detach(), xi.grad, conv.weight.grad


def test_eval_mode_autograd_matches_the_reference_backend():
    torch.manual_seed(0)
    g = dyngate.convert(models.build("resnet20", in_channels=1, num_classes=10), partitions=2)
    g.train()
    g(torch.randn(8, 1, 28, 28))
    g.eval()
    x = torch.randn(4, 1, 28, 28)
    out_r, gx_r, gw_r = _grads("reference", g, x)
    out_c, gx_c, gw_c = _grads("cpu", g, x)
    assert gw_r is not None and gw_c is not None, "no weight gradient from the cpu backend"
    torch.testing.assert_close(out_c, out_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx_c, gx_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw_c, gw_r, rtol=1e-4, atol=1e-4)
    with torch.no_grad():   # plain inference still takes the fast path
        g(x)
    assert kernels.last_path() != "reference"


def test_cpu_kernel_refuses_non_floating_inputs():
    w = torch.randn(8, 4, 3, 3)
    tau, inv = torch.zeros(8), torch.ones(8)
    x = torch.randint(0, 5, (1, 4, 6, 6))
    with pytest.raises(ValueError, match="x must be a floating-point tensor, got torch.int64"):
        kernels.conditional_conv2d(x, w, None, tau, inv, padding=1, partitions=2, backend="cpu")
    with pytest.raises(ValueError, match="weight must be a floating-point"):
        kernels.conditional_conv2d(x.float(), w.long(), None, tau, inv, padding=1, partitions=2,
                                   backend="cpu")
