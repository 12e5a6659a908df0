"""Triton backend: host-side pieces here, kernels under the interpreter in a fresh process."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.geometry import ConvGeometry

CASES = Path(__file__).with_name("interp_kern_triton_cases.py")


def test_interpreter_cases_pass():
    """TRITON_INTERPRET must precede ``import triton``, and setting it in this process would
    leak into other tests (backend checks), so the kernel cases run in a child pytest."""
    pytest.importorskip("triton", reason="triton is the optional extra .[gpu] (the dev extra installs it)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
                           "-W", "ignore::DeprecationWarning", str(CASES)],
                          env=env, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(r"\b(1[0-9]|2[0-9]) passed", proc.stdout) and "skipped" not in proc.stdout, proc.stdout[-2000:]


def _triton_module():
    pytest.importorskip("triton")
    from kernels import triton_conv
    return triton_conv


def test_compaction_puts_active_tiles_first_in_order():
    tc = _triton_module()
    flags = torch.tensor([0, 1, 0, 1, 1, 0], dtype=torch.int32)
    order, count = tc.compact_tiles(flags)
    assert count.tolist() == [3]
    assert order[:3].tolist() == [1, 3, 4]
    assert sorted(order.tolist()) == list(range(6))


@pytest.mark.parametrize("c_in,c_out,p,grouped,g", [(8, 8, 4, True, 1), (64, 64, 4, True, 1),
                                                    (512, 512, 4, True, 1), (16, 32, 4, False, 1),
                                                    (64, 64, 4, True, 32), (12, 12, 4, True, 3)])
def test_tile_sizes_respect_gpu_dot_minimum(c_in, c_out, p, grouped, g):
    tc = _triton_module()
    geo = ConvGeometry(1, c_in, 8, 8, c_out, 3, 3, (1, 1), (1, 1), (1, 1))
    bm, bn, bk = tc.tile_sizes(geo, p, grouped, g)
    for b in (bm, bn, bk):
        assert b >= 16 and b & (b - 1) == 0
    if grouped and c_out // p >= 16:
        assert (c_out // p) % bn == 0 or bn % (c_out // p) == 0
