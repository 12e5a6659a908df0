"""Backend selection and argument validation of ``kernels.conditional_conv2d``."""
from __future__ import annotations

import pytest
import torch

from kern_helpers import check_against_reference, make_case
from kernels import conditional_conv2d
from kernels.api import select_backend


@pytest.mark.parametrize("backend", ["auto", "cpu", "reference"])
def test_cpu_tensor_backends_match_reference(backend):
    x, w, b, tau, isg = make_case(2, 8, 8, 7, 7, 3, density=0.3)
    out, gate = conditional_conv2d(x, w, b, tau, isg, stride=(1, 1), padding=(1, 1),
                                   backend=backend, return_gate=True)
    check_against_reference(out, gate, x, w, b, tau, isg, padding=1)
    plain = conditional_conv2d(x, w, b, tau, isg, padding=1, backend=backend)
    assert isinstance(plain, torch.Tensor)
    torch.testing.assert_close(plain, out)


def test_auto_resolves_by_device():
    assert select_backend("auto", torch.device("cpu")) == "cpu"
    assert select_backend("auto", torch.device("cuda", 0)) == "triton"


def test_cpu_backend_on_cuda_is_an_error():
    with pytest.raises(ValueError, match="backend 'cpu'.*cuda"):
        select_backend("cpu", torch.device("cuda", 0))


def test_triton_backend_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w, b, tau, isg = make_case(1, 4, 4, 5, 5, 3)
    with pytest.raises(ValueError, match="backend 'triton'.*cpu"):
        conditional_conv2d(x, w, b, tau, isg, backend="triton")


def test_unknown_backend():
    x, w, b, tau, isg = make_case(1, 4, 4, 5, 5, 3)
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        conditional_conv2d(x, w, b, tau, isg, backend="tvm")


def _bad(**override):
    x, w, b, tau, isg = make_case(1, 8, 8, 5, 5, 3)
    args = dict(x=x, weight=w, bias=b, tau=tau, inv_sigma=isg)
    kw = {k: v for k, v in override.items() if k not in args}
    args.update({k: v for k, v in override.items() if k in args})
    return lambda: conditional_conv2d(args["x"], args["weight"], args["bias"], args["tau"],
                                      args["inv_sigma"], backend="cpu", **kw)


@pytest.mark.parametrize("override,message", [
    (dict(weight=torch.randn(8, 6, 3, 3)), "weight has 6 input channels but x has 8"),
    (dict(tau=torch.zeros(7)), r"tau must have shape \(8,\)"),
    (dict(inv_sigma=torch.ones(8, 1)), r"inv_sigma must have shape \(8,\)"),
    (dict(bias=torch.zeros(3)), r"bias must have shape \(8,\)"),
    (dict(partitions=3), "partitions=3 does not divide the input channels"),
    (dict(partitions=0), "partitions must be a positive int"),
    (dict(granularity=3), "granularity=3"),
    (dict(groups=2), "groups=2"),
    (dict(x=torch.randn(8, 5, 5)), "x must be 4-D"),
    (dict(stride=0), "stride/dilation must be >= 1"),
    (dict(padding=(1, 2, 3)), "padding must be an int or a pair"),
    (dict(x=torch.randn(1, 8, 2, 2)), "too small for kernel"),
])
def test_bad_arguments_name_the_argument(override, message):
    with pytest.raises(ValueError, match=message):
        _bad(**override)()


def test_partitions_must_divide_output_channels():
    x = torch.randn(1, 8, 5, 5)
    w = torch.randn(6, 8, 3, 3)
    with pytest.raises(ValueError, match="does not divide the output channels"):
        conditional_conv2d(x, w, None, torch.zeros(6), torch.ones(6), partitions=4, backend="cpu")


def test_bias_none_is_supported():
    x, w, _, tau, isg = make_case(2, 8, 8, 6, 6, 3, density=0.5)
    out, gate = conditional_conv2d(x, w, None, tau, isg, padding=1, backend="cpu", return_gate=True)
    check_against_reference(out, gate, x, w, None, tau, isg, padding=1)
