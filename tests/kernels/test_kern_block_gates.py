"""Block gates (one decision per tile x G channels): every CPU path against the float64
reference, and the work counter: the tile paths compute exactly the blocks that are on."""
from __future__ import annotations

import pytest
import torch

from kern_helpers import GEOMS, block_score_loop, check_against_reference, make_case, run_block_case
from kernels import conditional_conv2d
from kernels import cpu as kcpu
from kernels.reference import conditional_conv2d_reference, gate_from_partial

PATHS = ["tiles", "chunk_tiles", "block_tiles", "dense", "stacked", "union", "groups", "pipeline", "auto"]
TILES = [(2, 3), (4, 4), (7, 7)]          # (2, 3) and (4, 4) leave ragged edge tiles on 7x7/9x8 maps


_run = run_block_case


def test_reference_block_decision_is_the_block_mean():
    x, w, b, tau, isg = make_case(2, 8, 16, 9, 7, 3, density=0.5, seed=1)
    yp = torch.nn.functional.conv2d(x, w, b, 1, 1)
    for tile, g in [((4, 4), 4), ((2, 3), 1), ((9, 7), 16), ((1, 1), 2)]:
        want = block_score_loop((yp - tau.view(1, -1, 1, 1)) * isg.view(1, -1, 1, 1), g, tile) > 0
        assert torch.equal(gate_from_partial(yp, tau, isg, g, tile), want), (tile, g)


def test_tile_1x1_is_the_per_element_gate():
    case = make_case(2, 8, 8, 7, 7, 3, density=0.4, seed=2)
    a = conditional_conv2d_reference(*case, padding=1, return_gate=True)
    b = conditional_conv2d_reference(*case, padding=1, tile=(1, 1), return_gate=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("strategy", PATHS)
@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("gi", range(len(GEOMS) - 1))
def test_block_gates_every_cpu_path(strategy, grouped, tile, gi):
    geom = GEOMS[gi]
    stride, padding, dilation, h, w, k = geom
    case = make_case(2, 8, 16, h, w, k, density=0.5, seed=gi, grouped=grouped, stride=stride,
                     padding=padding, dilation=dilation)
    _run(case, geom, strategy, grouped=grouped, granularity=4, tile=tile)


def test_wide_grouped_block_gates_use_the_rotated_sum():
    """Output chunks of 64 take the exact-MAC rotated remaining sum; a G=16 group stays inside
    one chunk, so block_tiles runs it per group."""
    geom = (1, 1, 1, 7, 7, 3)
    case = make_case(1, 256, 256, 7, 7, 3, density=0.5, seed=4)
    for strategy in ("block_tiles", "chunk_tiles", "tiles"):
        _run(case, geom, strategy, grouped=True, granularity=16, tile=(4, 4))


def test_fused_refuses_block_gates():
    case = make_case(1, 8, 16, 7, 7, 3, seed=0)
    with pytest.raises(ValueError, match="decides per element"):
        _run(case, GEOMS[0], "fused", grouped=True, granularity=4, tile=(4, 4))


@pytest.mark.parametrize("tile,g", [((4, 4), 4), ((2, 3), 8), ((7, 7), 16)])
def test_tile_paths_compute_exactly_the_blocks_on(tile, g):
    """Work counter: block_tiles runs one gathered tile per (spatial tile, gate group) that is
    on, no more; tiles runs one per spatial tile with any block on."""
    geom = (1, 1, 1, 9, 8, 3)
    case = make_case(3, 8, 16, 9, 8, 3, density=0.5, seed=7, grouped=False)
    gate = _run(case, geom, "block_tiles", grouped=False, granularity=g, tile=tile)
    th, tw = tile
    blocks = gate[:, ::g, ::th, ::tw]                 # one element per block (the gate is constant on it)
    assert 0 < kcpu.last_tiles() == int(blocks.sum()) < blocks.numel()
    _run(case, geom, "tiles", grouped=False, granularity=g, tile=tile)
    assert kcpu.last_tiles() == int(blocks.any(dim=1).sum())


def test_public_api_passes_the_tile():
    case = make_case(2, 8, 16, 7, 9, 3, density=0.5, seed=9)
    out, gate = conditional_conv2d(*case, padding=1, granularity=4, tile=(3, 4), backend="cpu",
                                   return_gate=True)
    check_against_reference(out, gate, *case, padding=1, granularity=4, tile=(3, 4))
    with pytest.raises(ValueError, match="tile must be positive"):
        conditional_conv2d(*case, padding=1, tile=(0, 4), backend="reference")
