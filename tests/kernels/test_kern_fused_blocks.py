"""Compiled block-gate path (``fused_blocks``) against the float64 reference, on every ISA
target this machine runs, and its work counter: it computes exactly the blocks that are on.

Tolerance: the fp32 output within 1e-5 of the output scale (different summation order from
the float64 reference, as for the per-tile fused kernel); gate decisions must agree wherever
the float64 block score is farther than 1e-4 of the score scale from the threshold."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from kern_helpers import GEOMS, isa_target, make_case, run_block_case  # noqa: F401
from kernels import cpu as kcpu, cpu_fused
from kernels.api import validate

pytestmark = [pytest.mark.skipif(not cpu_fused.available(), reason="no C compiler on this machine"),
              pytest.mark.usefixtures("isa_target")]


def _run(case, geom, *, grouped, granularity, tile, strategy="fused_blocks"):
    return run_block_case(case, geom, strategy, grouped=grouped, granularity=granularity, tile=tile)


@pytest.mark.parametrize("tile", [(2, 3), (4, 4), (7, 7)])   # ragged edge blocks on 7x7/9x8 maps
@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("c_out,g", [(16, 16), (32, 16), (64, 32), (16, 4), (32, 8)])
def test_fused_blocks_match_reference(c_out, g, geom, grouped, tile):
    """G filling whole channel tiles, and G dividing a vector (groups sharing a tile, lane mask)."""
    stride, padding, dilation, h, w, k = geom
    case = make_case(2, 12, c_out, h, w, k, density=0.5, grouped=grouped, stride=stride,
                     padding=padding, dilation=dilation, seed=c_out + h + tile[0])
    _run(case, geom, grouped=grouped, granularity=g, tile=tile)


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("geom", GEOMS)
@pytest.mark.parametrize("c_out,g", [(32, 8), (64, 32)])
def test_onednn_blocks_match_reference(c_out, g, geom, grouped):
    """The same block decisions and remaining sums after oneDNN's base pass (grouped: a
    groups=p conv; else a conv over the first C_in/p inputs)."""
    stride, padding, dilation, h, w, k = geom
    case = make_case(2, 12, c_out, h, w, k, density=0.5, grouped=grouped, stride=stride,
                     padding=padding, dilation=dilation, seed=c_out + w)
    _run(case, geom, grouped=grouped, granularity=g, tile=(4, 4), strategy="onednn_blocks")


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 3), c_in=st.sampled_from([8, 12, 16, 32]), c_out=st.sampled_from([16, 32, 64]),
       h=st.integers(3, 12), w=st.integers(3, 12), stride=st.integers(1, 2),
       th=st.integers(1, 8), tw=st.integers(1, 8), grouped=st.booleans(), g=st.sampled_from([2, 4, 8, 16]),
       seed=st.integers(0, 999))
def test_fused_blocks_random_shapes(n, c_in, c_out, h, w, stride, th, tw, grouped, g, seed):
    if (th, tw) == (1, 1):
        th = 2
    geom = (stride, 1, 1, h, w, 3)
    case = make_case(n, c_in, c_out, h, w, 3, density=0.5, grouped=grouped, stride=stride,
                     padding=1, seed=seed)
    _run(case, geom, grouped=grouped, granularity=g, tile=(th, tw))


@pytest.mark.parametrize("tile", [(4, 4), (2, 3), (7, 7)])
def test_fused_blocks_compute_exactly_the_blocks_on(tile):
    """Work counter: one block run per (spatial tile, gate group) that is on, no more."""
    geom = (1, 1, 1, 9, 8, 3)
    case = make_case(3, 8, 32, 9, 8, 3, density=0.5, seed=7, grouped=False)
    gate = _run(case, geom, grouped=False, granularity=16, tile=tile)
    th, tw = tile
    blocks = gate[:, ::16, ::th, ::tw]             # one element per block (constant on it)
    assert 0 < kcpu.last_tiles() == int(blocks.sum()) < blocks.numel()


def test_all_off_and_all_on_blocks():
    """Every block off leaves Yp alone; every block on is the dense conv (within fp32)."""
    geom = GEOMS[0]
    for density in (0.0, 1.0):
        case = make_case(2, 16, 32, 8, 8, 3, density=density, seed=3)
        gate = _run(case, geom, grouped=True, granularity=16, tile=(4, 4))
        assert bool(gate.all()) == (density == 1.0) and bool(gate.any()) == (density == 1.0)


def test_fused_blocks_refuses_what_it_cannot_run():
    case = make_case(1, 8, 48, 7, 7, 3, seed=0, grouped=False)   # vectors of 4, 8 or 16
    with pytest.raises(ValueError, match="fused_blocks.*6 channels neither fill nor divide"):
        _run(case, GEOMS[0], grouped=False, granularity=6, tile=(4, 4))
    geo = validate(*make_case(1, 8, 2048, 5, 66, 1, padding=0), 1, 0, 1, 4, False, 16, 1, (1, 2))
    assert "exceeds the decision pass's 256 KiB row buffer" in cpu_fused.blocks_unsupported_reason(
        geo, 4, False, 16, (1, 2))                                 # 33 blocks x 2048 channels
    case = make_case(1, 8, 16, 7, 7, 3, seed=0)
    with pytest.raises(ValueError, match="fused_blocks.*per-element"):
        _run(case, GEOMS[0], grouped=True, granularity=16, tile=(1, 1))


def test_auto_measures_fused_blocks_for_block_gates(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNGATE_KERNEL_CACHE", str(tmp_path))
    geo = validate(*make_case(1, 8, 32, 8, 8, 3), 1, 1, 1, 4, False, 16, 1, (4, 4))
    assert {"fused_blocks", "onednn_blocks"} <= set(kcpu._runnable(geo, 4, False, 16, (4, 4)))
    assert not {"fused_blocks", "onednn_blocks"} & set(kcpu._runnable(geo, 4, False, 1, (1, 1)))
