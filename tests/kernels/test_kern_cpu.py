"""CPU fast path against the reference: strategies, geometry, granularity, dtypes, layouts."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kern_helpers import GEOMS, check_against_reference, make_case
from kernels import conditional_conv2d
from kernels.api import validate
from kernels.cpu import _costs, conditional_conv2d_cpu



def _run(case, geom, *, strategy, grouped, granularity=1, partitions=4):
    stride, padding, dilation, _, _, _ = geom
    x, w, b, tau, isg = case
    geo = validate(x, w, b, tau, isg, stride, padding, dilation, partitions, grouped, granularity)
    out, gate = conditional_conv2d_cpu(x, w, b, tau, isg, geo, partitions=partitions, grouped=grouped,
                                       granularity=granularity, return_gate=True, strategy=strategy)
    check_against_reference(out, gate, x, w, b, tau, isg, stride=stride, padding=padding,
                            dilation=dilation, partitions=partitions, grouped=grouped,
                            granularity=granularity)
    return out, gate


@pytest.mark.parametrize("strategy", ["groups", "union", "dense", "stacked", "tiles", "pipeline", "auto"])
@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("geom", GEOMS)
def test_strategies_match_reference(strategy, grouped, geom):
    stride, padding, dilation, h, w, k = geom
    case = make_case(2, 8, 12, h, w, k, density=0.4, grouped=grouped, stride=stride, padding=padding,
                     dilation=dilation, seed=hash(geom) % 1000)
    _, gate = _run(case, geom, strategy=strategy, grouped=grouped)
    assert 0 < gate.float().mean() < 1


@pytest.mark.parametrize("strategy", ["groups", "union", "dense", "stacked", "tiles"])
@pytest.mark.parametrize("granularity", [2, 3])
def test_granularity_shares_gate_across_channel_groups(strategy, granularity):
    geom = GEOMS[0]
    case = make_case(2, 8, 12, 7, 7, 3, density=0.5, seed=granularity)
    _, gate = _run(case, geom, strategy=strategy, grouped=True, granularity=granularity)
    g = gate.view(2, 12 // granularity, granularity, 7, 7)
    assert (g == g[:, :, :1]).all()


@pytest.mark.parametrize("density", [0.0, 1.0])
@pytest.mark.parametrize("strategy", ["groups", "union", "dense", "auto"])
def test_all_off_and_all_on(density, strategy):
    x, w, b, tau, isg = make_case(2, 8, 8, 6, 6, 3, density=density)
    out, gate = conditional_conv2d(x, w, b, tau, isg, padding=1, backend="cpu", return_gate=True)
    assert gate.all() if density else not gate.any()
    ref = conditional_conv2d(x, w, b, tau, isg, padding=1, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_dense_fallback_rotated_grouped_conv(monkeypatch, stride):
    """Wide chunks use one grouped conv over rotated inputs; force it on a small layer."""
    monkeypatch.setattr("kernels.cpu.ROTATED_MIN_CHUNK", 1)
    geom = (stride, 1, 1, 9, 8, 3)
    case = make_case(2, 16, 12, 9, 8, 3, density=0.6, stride=stride, padding=1)
    _run(case, geom, strategy="dense", grouped=True)


def test_partitions_two_and_one():
    for p in (1, 2):
        case = make_case(1, 6, 6, 5, 5, 3, density=0.5, partitions=p)
        _run(case, GEOMS[0], strategy="groups", grouped=True, partitions=p)


def test_fp16_inputs_keep_dtype():
    x, w, b, tau, isg = make_case(2, 8, 8, 7, 7, 3, density=0.5, dtype=torch.float16)
    out, gate = conditional_conv2d(x, w, b, tau, isg, padding=1, backend="cpu", return_gate=True)
    assert out.dtype == torch.float16
    check_against_reference(out, gate, x, w, b, tau, isg, padding=1, tol=2e-3, margin=1e-2)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_output_keeps_input_memory_format(fmt):
    x, w, b, tau, isg = make_case(2, 8, 8, 7, 7, 3, density=0.5)
    out = conditional_conv2d(x.contiguous(memory_format=fmt), w, b, tau, isg, padding=1, backend="cpu")
    assert out.is_contiguous(memory_format=fmt)


def test_in_place_weight_update_is_seen():
    """The per-weight layout cache must notice in-place changes (tensor version counter)."""
    x, w, b, tau, isg = make_case(2, 8, 8, 7, 7, 3, density=1.0)
    first = conditional_conv2d(x, w, b, tau, isg, padding=1, backend="cpu")
    with torch.no_grad():
        w.mul_(2)
    second = conditional_conv2d(x, w, b, tau, isg, padding=1, backend="cpu")
    torch.testing.assert_close(second - b.view(1, -1, 1, 1), 2 * (first - b.view(1, -1, 1, 1)),
                               rtol=1e-5, atol=1e-5)


def test_cost_model_prefers_dense_when_all_rows_active_and_gather_when_few():
    x, w, b, tau, isg = make_case(8, 128, 128, 28, 28, 3, density=0.5)
    geo = validate(x, w, b, tau, isg, 1, 1, 1, 4, True, 1)
    k = 9 * 128
    m = geo.positions
    all_tiles = 8 * 4 * 4                          # 7x7 tiles of the 28x28 output
    full = _costs(geo, k, 4, True, m, [m] * 4, (all_tiles, (7, 7)))
    assert min(full, key=full.get) == "dense"
    few = _costs(geo, k, 4, True, m // 10, [m // 10] * 4, (all_tiles // 10, (7, 7)))
    assert min(few, key=few.get) != "dense"


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 2), p=st.sampled_from([1, 2, 4]), cin_mult=st.integers(1, 3),
       cout_mult=st.integers(1, 3), h=st.integers(3, 9), w=st.integers(3, 9),
       k=st.sampled_from([1, 2, 3]), stride=st.integers(1, 2), padding=st.integers(0, 2),
       dilation=st.integers(1, 2), grouped=st.booleans(), density=st.floats(0.0, 1.0),
       strategy=st.sampled_from(["auto", "groups", "union", "dense", "stacked", "tiles", "chunk_tiles"]),
       seed=st.integers(0, 99))
def test_random_shapes_property(n, p, cin_mult, cout_mult, h, w, k, stride, padding, dilation,
                                grouped, density, strategy, seed):
    c_in, c_out = p * cin_mult, p * cout_mult
    if h + 2 * padding < dilation * (k - 1) + 1 or w + 2 * padding < dilation * (k - 1) + 1:
        return
    case = make_case(n, c_in, c_out, h, w, k, seed=seed, density=density, partitions=p,
                     grouped=grouped, stride=stride, padding=padding, dilation=dilation)
    x, wt, b, tau, isg = case
    geo = validate(x, wt, b, tau, isg, stride, padding, dilation, p, grouped, 1)
    out, gate = conditional_conv2d_cpu(x, wt, b, tau, isg, geo, partitions=p, grouped=grouped,
                                       return_gate=True, strategy=strategy)
    check_against_reference(out, gate, x, wt, b, tau, isg, stride=stride, padding=padding,
                            dilation=dilation, partitions=p, grouped=grouped)


@pytest.mark.parametrize("strategy", ["groups", "union", "dense", "stacked", "tiles", "fused", "prefix"])
def test_inference_mode_then_no_grad(strategy):
    """Reused buffers first made under torch.inference_mode() stay writable after it: a path run
    there and then under no_grad (and back) gives the same output every time."""
    from kernels import workspace
    workspace.release()                     # this thread's buffers are made afresh below
    case = make_case(2, 16, 16, 9, 9, 3, density=0.4, seed=11)
    geom = GEOMS[0]
    with torch.inference_mode():
        a, _ = _run(case, geom, strategy=strategy, grouped=True)
    with torch.no_grad():
        b, _ = _run(case, geom, strategy=strategy, grouped=True)
    with torch.inference_mode():
        c, _ = _run(case, geom, strategy=strategy, grouped=True)
    assert torch.equal(a, b) and torch.equal(a, c)
