"""``kernels.bind``: the compiled path ``auto`` chose, bound once to a layer's tensors.

A bound call runs the same kernel on the same packed weights as ``conditional_conv2d``, so its
output must be bitwise equal to that call's (which is checked against the float64 reference
here too, at kern_helpers' tolerance: fp32 sums in another order, ~1e-6 relative).
"""
from __future__ import annotations

import pytest
import torch

from kern_helpers import check_against_reference, isa_target, make_case  # noqa: F401
from kernels import KernelArgError, autotune, bind, conditional_conv2d, last_path
from kernels.api import validate
from kernels.cpu import _runnable, _tiles

pytestmark = pytest.mark.usefixtures("isa_target")
CL = torch.channels_last


def _choose(path, x, w, b, tau, isg, *, grouped, granularity, tile):
    """Make ``path`` auto's choice for this layer (as if measured fastest); skip if it cannot run."""
    geo = validate(x, w, b, tau, isg, 1, 1, 1, 4, grouped, granularity, 1, tile)
    ktile, gate_tile = _tiles(geo, None, tile)
    if path not in _runnable(geo, 4, grouped, granularity, gate_tile):
        pytest.skip(f"{path} is not offered for this layer on this ISA target")
    k = autotune.key(geo, 4, grouped, granularity, ktile, torch.get_num_threads(), gate_tile)
    autotune.tune(k, {path: lambda: None})


@pytest.mark.parametrize("path,c_in,c_out,grouped,granularity,tile", [
    ("prefix", 16, 16, True, 1, (1, 1)),          # 4-channel chunks: vectors across chunks
    ("fused", 16, 32, True, 1, (1, 1)),
    ("fused", 16, 64, False, 1, (1, 1)),
    ("fused_swap", 16, 64, False, 1, (1, 1)),     # the other loop order
    ("prefix_swap", 16, 16, True, 1, (1, 1)),
    ("fused_blocks", 16, 16, False, 16, (4, 4)),   # block gates, ragged edge blocks on 9x9
    ("fused_blocks", 12, 32, True, 8, (3, 5)),
])
def test_bound_call_equals_the_call_it_replaces(path, c_in, c_out, grouped, granularity, tile):
    x, w, b, tau, isg = make_case(2, c_in, c_out, 9, 9, 3, density=0.4, grouped=grouped, seed=c_out)
    x = x.contiguous(memory_format=CL)
    _choose(path, x, w, b, tau, isg, grouped=grouped, granularity=granularity, tile=tile)
    kw = dict(padding=1, partitions=4, grouped=grouped, granularity=granularity, tile=tile, backend="cpu")
    out, gate = conditional_conv2d(x, w, b, tau, isg, return_gate=True, **kw)
    assert last_path() == path
    check_against_reference(out, gate, x, w, b, tau, isg, padding=1, grouped=grouped,
                            granularity=granularity, tile=tile)
    with torch.no_grad():
        call = bind(x, w, b, tau, isg, **kw)
        assert call is not None and call.path == path
        assert torch.equal(call(x), out)
        x2 = torch.randn_like(x)             # another input of the same shape
        assert torch.equal(call(x2), conditional_conv2d(x2, w, b, tau, isg, **kw))
        with pytest.raises(KernelArgError, match="shape"):
            call(x[:1].contiguous(memory_format=CL))
        with pytest.raises(KernelArgError, match="channels-last"):
            call(x.contiguous())
    w.requires_grad_(True)
    with pytest.raises(KernelArgError, match="no gradients"):
        call(x)


def test_nothing_to_bind():
    """None where the call has no compiled path to bind: tuning off, float64, a non-CPU
    backend, gradients needed, or auto's choice a torch-op path."""
    x, w, b, tau, isg = make_case(2, 16, 16, 9, 9, 3, density=0.4)
    x = x.contiguous(memory_format=CL)
    kw = dict(padding=1, partitions=4)
    with torch.no_grad():
        assert bind(x, w, b, tau, isg, **kw, backend="reference") is None
        assert bind(x.double(), w.double(), b.double(), tau.double(), isg.double(), **kw) is None
        _choose("dense", x, w, b, tau, isg, grouped=True, granularity=1, tile=(1, 1))
        assert bind(x, w, b, tau, isg, **kw) is None
    w.requires_grad_(True)
    assert bind(x, w, b, tau, isg, **kw) is None
