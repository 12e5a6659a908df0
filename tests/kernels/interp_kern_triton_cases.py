"""Triton kernels under the interpreter against the reference (run by test_kern_triton.py).

Not collected directly (the name does not start with ``test_``): TRITON_INTERPRET must be
set before triton is imported, so test_kern_triton.py runs this file in a fresh process.
Run by hand: ``TRITON_INTERPRET=1 python -m pytest tests/kernels/interp_kern_triton_cases.py``.
"""
from __future__ import annotations

import os

import pytest
import torch

from kern_helpers import check_against_reference, make_case
from kernels import conditional_conv2d

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported", allow_module_level=True)

CASES = [  # n, c_in, c_out, h, w, stride, padding, grouped, granularity, density
    pytest.param(2, 8, 8, 7, 7, 1, 1, True, 1, 0.4, id="grouped-s1-odd"),
    pytest.param(1, 64, 64, 6, 5, 2, 1, True, 1, 0.4, id="grouped-s2-chunk-skip"),
    pytest.param(1, 16, 32, 6, 6, 1, 1, False, 1, 0.4, id="ungrouped"),
    pytest.param(1, 8, 8, 7, 6, 2, 0, False, 1, 0.5, id="ungrouped-s2-nopad"),
    pytest.param(1, 8, 8, 5, 5, 1, 2, True, 1, 0.5, id="pad2"),
    pytest.param(1, 8, 8, 5, 5, 1, 1, True, 1, 1.0, id="all-on"),
    pytest.param(1, 8, 8, 5, 5, 1, 1, True, 1, 0.0, id="all-off"),
    pytest.param(1, 64, 64, 5, 5, 1, 1, True, 4, 0.5, id="granularity4-fused"),
    pytest.param(1, 12, 12, 5, 5, 1, 1, True, 3, 0.5, id="granularity3-host-gate"),
]


@pytest.mark.parametrize("n,c_in,c_out,h,w,stride,padding,grouped,granularity,density", CASES)
def test_triton_matches_reference_fp32(n, c_in, c_out, h, w, stride, padding, grouped, granularity,
                                       density):
    x, wt, b, tau, isg = make_case(n, c_in, c_out, h, w, 3, density=density, grouped=grouped,
                                   stride=stride, padding=padding, seed=c_in + h)
    out, gate = conditional_conv2d(x, wt, b, tau, isg, stride=stride, padding=padding,
                                   grouped=grouped, granularity=granularity, backend="triton",
                                   return_gate=True)
    check_against_reference(out, gate, x, wt, b, tau, isg, stride=stride, padding=padding,
                            grouped=grouped, granularity=granularity)
    if density in (0.0, 1.0):
        assert bool(gate.all()) == (density == 1.0) and bool(gate.any()) == (density == 1.0)


@pytest.mark.parametrize("grouped", [True, False])
def test_triton_fp16(grouped):
    x, wt, b, tau, isg = make_case(2, 8, 8, 7, 7, 3, density=0.4, grouped=grouped,
                                   dtype=torch.float16)
    out, gate = conditional_conv2d(x, wt, b, tau, isg, padding=1, grouped=grouped, backend="triton",
                                   return_gate=True)
    check_against_reference(out, gate, x, wt, b, tau, isg, padding=1, grouped=grouped, tol=2e-3,
                            margin=1e-2)


def test_triton_bias_none_and_channels_last():
    x, wt, _, tau, isg = make_case(1, 8, 8, 6, 6, 3, density=0.5)
    x = x.contiguous(memory_format=torch.channels_last)
    out, gate = conditional_conv2d(x, wt, None, tau, isg, padding=1, backend="triton", return_gate=True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    check_against_reference(out, gate, x, wt, None, tau, isg, padding=1)


@pytest.mark.parametrize("tile,granularity,grouped", [((3, 4), 4, False), ((4, 4), 8, True)],
                         ids=["ragged-3x4-G4", "4x4-G8-grouped"])
def test_triton_block_gates(tile, granularity, grouped):
    """Block gates: one decision per tile x G channels, ragged edge tiles included."""
    x, wt, b, tau, isg = make_case(2, 16, 16, 7, 9, 3, density=0.5, grouped=grouped, seed=5)
    out, gate = conditional_conv2d(x, wt, b, tau, isg, padding=1, grouped=grouped,
                                   granularity=granularity, tile=tile, backend="triton", return_gate=True)
    check_against_reference(out, gate, x, wt, b, tau, isg, padding=1, grouped=grouped,
                            granularity=granularity, tile=tile)


@pytest.mark.parametrize("tile,per", [((3, 3), 1), ((7, 7), 2)], ids=["3x3-one-program", "7x7-two-programs"])
def test_triton_block_gates_skip_exactly_the_off_blocks(tile, per):
    """G = 16 = BLOCK_N and programs ordered by gate tile: the conditional launch runs PER
    programs per block that is on (7x7 = 49 slots -> 64 = 2 programs of 32 here), none else."""
    from kernels import triton_conv
    x, wt, b, tau, isg = make_case(2, 32, 32, 9, 10, 3, density=0.5, grouped=False, seed=11)
    out, gate = conditional_conv2d(x, wt, b, tau, isg, padding=1, grouped=False, granularity=16,
                                   tile=tile, backend="triton", return_gate=True)
    check_against_reference(out, gate, x, wt, b, tau, isg, padding=1, grouped=False,
                            granularity=16, tile=tile)
    th, tw = tile
    on_blocks = int(gate[:, ::16, ::th, ::tw].sum())
    assert 0 < on_blocks < gate[:, ::16, ::th, ::tw].numel()
    assert triton_conv.last_active_programs() == per * on_blocks
