"""Fused compiled CPU kernel against the float64 reference (rtol 1e-5 of the output scale)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kern_helpers import GEOMS as CPU_GEOMS, check_against_reference, isa_target, make_case  # noqa: F401
from kernels import conditional_conv2d, cpu_fused
from kernels.api import validate
from kernels.cpu import conditional_conv2d_cpu

pytestmark = [pytest.mark.skipif(not cpu_fused.available(), reason="no C compiler on this machine"),
              pytest.mark.usefixtures("isa_target")]

GEOMS = CPU_GEOMS + [(1, 1, 1, 5, 31, 3)]   # a row of 31: ragged last tile on every ISA


def _fused(case, geom, *, grouped=True, granularity=1, partitions=4, strategy="fused"):
    stride, padding, dilation, _, _, _ = geom
    x, w, b, tau, isg = case
    geo = validate(x, w, b, tau, isg, stride, padding, dilation, partitions, grouped, granularity)
    if strategy.startswith("prefix"):
        reason = cpu_fused.prefix_unsupported_reason(geo, partitions, grouped, granularity)
        if reason is not None:
            pytest.skip(f"prefix not offered: {reason}")
    out, gate = conditional_conv2d_cpu(x, w, b, tau, isg, geo, partitions=partitions, grouped=grouped,
                                       granularity=granularity, return_gate=True, strategy=strategy)
    check_against_reference(out, gate, x, w, b, tau, isg, stride=stride, padding=padding,
                            dilation=dilation, partitions=partitions, grouped=grouped,
                            granularity=granularity)
    return out, gate


@pytest.mark.parametrize("strategy", ["fused", "select", "prefix"])
@pytest.mark.parametrize("c_out", [16, 32, 64])   # channel tiles of 4, 8 and 16 at p=4
@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("geom", GEOMS)
def test_fused_matches_reference(geom, grouped, c_out, strategy):
    stride, padding, dilation, h, w, k = geom
    case = make_case(2, 12, c_out, h, w, k, density=0.4, grouped=grouped, stride=stride,
                     padding=padding, dilation=dilation, seed=c_out + h)
    _, gate = _fused(case, geom, grouped=grouped, strategy=strategy)
    assert 0 < gate.float().mean() < 1


@pytest.mark.parametrize("strategy", ["fused_swap", "prefix_swap"])
@pytest.mark.parametrize("c_out", [16, 64])
@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("geom", [GEOMS[0], GEOMS[1], GEOMS[-1]])   # stride 1, 2, a ragged row
def test_other_loop_order_matches_reference(geom, grouped, c_out, strategy):
    """The same kernels in the other loop order (channel- instead of position-tile-major on
    these small weights); random shapes in both orders: the hypothesis properties below."""
    stride, padding, dilation, h, w, k = geom
    case = make_case(2, 12, c_out, h, w, k, density=0.4, grouped=grouped, stride=stride,
                     padding=padding, dilation=dilation, seed=c_out + h)
    _, gate = _fused(case, geom, grouped=grouped, strategy=strategy)
    assert 0 < gate.float().mean() < 1


@pytest.mark.parametrize("strategy", ["fused", "select", "prefix"])
@pytest.mark.parametrize("granularity", [2, 4, 8, 16])
def test_fused_granularity(granularity, strategy):
    case = make_case(2, 16, 64, 7, 9, 3, density=0.5, seed=granularity)
    _, gate = _fused(case, GEOMS[0], granularity=granularity, strategy=strategy)
    g = gate.view(2, 64 // granularity, granularity, 7, 9)
    assert (g == g[:, :, :1]).all()


@pytest.mark.parametrize("partitions", [1, 2, 8])
def test_fused_partitions(partitions):
    case = make_case(1, 16, 64, 6, 6, 3, density=0.5, partitions=partitions)
    _fused(case, GEOMS[0], partitions=partitions)


def _work(case):
    x, w, b, tau, isg = case
    geo = validate(x, w, b, tau, isg, 1, 1, 1, 4, True, 1)
    _, _, ran = cpu_fused.run(x, w, b, tau, isg, geo, partitions=4,
                              grouped=True, granularity=1, return_gate=False)
    return ran, cpu_fused.tiles(geo, 4, True, 1)


def test_work_counter_counts_skipped_tiles():
    """All off runs no conditional pass, all on runs every tile, a gated-off half skips."""
    ran, total = _work(make_case(2, 16, 64, 8, 28, 3, density=0.0))
    assert ran == 0
    ran, total = _work(make_case(2, 16, 64, 8, 28, 3, density=1.0))
    assert ran == total > 0
    x, w, b, _, isg = make_case(2, 16, 64, 8, 28, 3, density=1.0)
    x[:, :, :, 13:] = 0         # Yp = bias in output columns 14.. (output 13 still sees x[12])
    x[:, :, :, :13] = x[:, :, :, :13].abs() + 1
    w = w.abs()                 # and Yp > bias + 1e-3 in output columns 0..13
    ran, total = _work((x, w, b, b + 1e-3, isg))
    geo = validate(x, w, b, b, isg, 1, 1, 1, 4, True, 1)
    d = cpu_fused._defines(geo, 4, True, 1)
    # a tile is RH x RW output positions (clipped at the map's edge) times one channel tile;
    # it runs when one of its columns is in 0..13
    rh, rw = d["RH"], d["R"] // d["RH"]
    col_tiles = -(-geo.wo // rw)
    per_ch = 2 * -(-geo.ho // rh) * sum(t * rw <= 13 for t in range(col_tiles))
    ch_tiles = 64 // (d["VW"] * d["NBT"])
    assert total == 2 * -(-geo.ho // rh) * col_tiles * ch_tiles
    assert 0 < ran == per_ch * ch_tiles < total


def test_fp16_and_memory_format():
    x, w, b, tau, isg = make_case(2, 16, 32, 7, 7, 3, density=0.5, dtype=torch.float16)
    out, gate = conditional_conv2d(x, w, b, tau, isg, padding=1, backend="cpu", return_gate=True)
    assert out.dtype == torch.float16 and out.is_contiguous()
    check_against_reference(out, gate, x, w, b, tau, isg, padding=1, tol=2e-3, margin=1e-2)


def test_forced_fused_on_unsupported_layer_is_an_error():
    case = make_case(1, 8, 12, 5, 5, 3, density=0.5)     # chunks of 3 channels
    with pytest.raises(ValueError, match="fused.*3 channels"):
        _fused(case, GEOMS[0])


def test_auto_without_compiler_falls_back_with_warning(monkeypatch):
    monkeypatch.setattr(cpu_fused, "available", lambda: False)
    monkeypatch.setattr("kernels.cpu._WARNED", set())
    x, w, b, tau, isg = make_case(2, 16, 16, 6, 6, 3, density=0.5)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        out, gate = conditional_conv2d(x, w, b, tau, isg, padding=1, backend="cpu", return_gate=True)
    check_against_reference(out, gate, x, w, b, tau, isg, padding=1)


def test_kernel_cache_dir_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNGATE_KERNEL_CACHE", str(tmp_path))
    cpu_fused._load.cache_clear()
    case = make_case(1, 8, 16, 5, 7, 3, density=0.5, seed=3)
    _fused(case, GEOMS[0])
    assert list(tmp_path.glob("gated_conv_*.so"))
    cpu_fused._load.cache_clear()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), p=st.sampled_from([1, 2, 4]), cin_mult=st.integers(1, 3),
       cout_mult=st.sampled_from([4, 8, 16]), h=st.integers(3, 9), w=st.integers(3, 17),
       k=st.sampled_from([1, 2, 3]), stride=st.integers(1, 2), padding=st.integers(0, 2),
       dilation=st.integers(1, 2), grouped=st.booleans(), density=st.floats(0.0, 1.0),
       seed=st.integers(0, 99), strategy=st.sampled_from(["fused", "fused_swap"]))
def test_fused_random_shapes_property(n, p, cin_mult, cout_mult, h, w, k, stride, padding, dilation,
                                      grouped, density, seed, strategy):
    c_in, c_out = p * cin_mult, p * cout_mult
    if h + 2 * padding < dilation * (k - 1) + 1 or w + 2 * padding < dilation * (k - 1) + 1:
        return
    case = make_case(n, c_in, c_out, h, w, k, seed=seed, density=density, partitions=p,
                     grouped=grouped, stride=stride, padding=padding, dilation=dilation)
    _fused(case, (stride, padding, dilation, h, w, k), grouped=grouped, partitions=p, strategy=strategy)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 2), p=st.sampled_from([2, 4, 8]), cin_mult=st.integers(1, 4),
       c_out=st.sampled_from([8, 16, 32]), h=st.integers(3, 9), w=st.integers(3, 17),
       k=st.sampled_from([1, 3]), stride=st.integers(1, 2), padding=st.integers(0, 1),
       granularity=st.sampled_from([1, 2, 4]), density=st.floats(0.0, 1.0), seed=st.integers(0, 99),
       strategy=st.sampled_from(["prefix", "prefix_swap"]))
def test_prefix_random_shapes_property(n, p, cin_mult, c_out, h, w, k, stride, padding, granularity,
                                       density, seed, strategy):
    """The prefix path (Yp as differences of in-order partial sums) on grouped layers with
    output chunks narrower than a vector, any shape, against the float64 reference."""
    if c_out % p or (c_out // p) % granularity or h + 2 * padding < k or w + 2 * padding < k:
        return
    case = make_case(n, p * cin_mult, c_out, h, w, k, seed=seed, density=density, partitions=p,
                     grouped=True, stride=stride, padding=padding)
    geo = validate(*case, stride, padding, 1, p, True, granularity)
    if cpu_fused.prefix_unsupported_reason(geo, p, True, granularity) is not None:
        return                   # (a skip would end the whole property test)
    _fused(case, (stride, padding, 1, h, w, k), grouped=True, partitions=p, granularity=granularity,
           strategy=strategy)



def test_prefix_is_offered_where_fused_tiles_are_narrow_or_masked():
    """16 channels at p=4 (4-channel chunks: SPAN on every vector target) get the prefix path;
    128 channels at p=4 (32-channel chunks: the fused kernel's tiles are as wide) and ungrouped
    layers (exact sums over whole vectors) do not."""
    from kernels.cpu import _runnable
    narrow = validate(*make_case(1, 16, 16, 6, 6, 3, density=0.5), 1, 1, 1, 4, True, 1)
    wide = validate(*make_case(1, 128, 128, 6, 6, 3, density=0.5), 1, 1, 1, 4, True, 1)
    if cpu_fused.isa() != "generic":
        assert "prefix" in _runnable(narrow, 4, True, 1)
    assert "prefix" not in _runnable(wide, 4, True, 1)
    assert "prefix" not in _runnable(wide, 4, False, 1)
    assert "prefix" not in _runnable(narrow, 4, False, 1)
    assert cpu_fused.prefix_unsupported_reason(wide, 4, True, 1) is not None


def test_auto_falls_back_when_the_kernel_does_not_build(monkeypatch, tmp_path):
    """A compiler that fails (here: a CC that exits 1) leaves auto on the torch pipeline with a
    warning naming the failure; a forced 'fused' raises the compiler's error."""
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'broken compiler' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(cpu_fused, "compiler", lambda: str(fake))
    monkeypatch.setenv("DYNGATE_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("kernels.cpu._WARNED", set())
    cpu_fused._load.cache_clear()
    try:
        case = make_case(1, 8, 16, 5, 6, 3, density=0.5, seed=7)
        x, w, b, tau, isg = case
        with pytest.warns(RuntimeWarning, match="did not build"):
            out, gate = conditional_conv2d(x, w, b, tau, isg, padding=1, backend="cpu", return_gate=True)
        check_against_reference(out, gate, x, w, b, tau, isg, padding=1)
        with pytest.raises(cpu_fused.NativeBuildError, match="broken compiler"):
            _fused(case, GEOMS[0])
    finally:
        cpu_fused._load.cache_clear()


def test_packed_weight_cache_does_not_keep_weights_alive():
    import gc
    import weakref
    x, w, b, tau, isg = make_case(1, 8, 16, 5, 5, 3, density=0.5)
    conditional_conv2d(x, w, b, tau, isg, padding=1, backend="cpu")
    ref = weakref.ref(w)
    del w
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("c, partitions", [(16, 4), (32, 8), (8, 2), (32, 4)])
@pytest.mark.parametrize("geom", GEOMS)
def test_exact_base_span_tiles(c, partitions, geom):
    """C_in == C_out with chunks narrower than a vector: the base pass runs at its exact MACs
    (shuffled input vectors, EXACT_BASE); 32 channels at p=4 (chunks of 8) is the control."""
    stride, padding, dilation, h, w, k = geom
    case = make_case(2, c, c, h, w, k, density=0.4, partitions=partitions, stride=stride,
                     padding=padding, dilation=dilation, seed=c + partitions)
    x, wt, b, tau, isg = case
    geo = validate(x, wt, b, tau, isg, stride, padding, dilation, partitions, True, 1)
    d = cpu_fused._defines(geo, partitions, True, 1)
    assert d["EXACT_BASE"] == (d["SPAN"] and cpu_fused.isa() == "avx512")
    _fused(case, geom, partitions=partitions)


def test_truncated_cached_kernel_is_rebuilt(tmp_path, monkeypatch):
    """A cut-short .so in the cache (copy interrupted, disk full) is rebuilt, not a crash.
    The damaged file is planted at a path this process never loaded: dlopen hands back an
    already-loaded path without reading the file, and overwriting a mapped .so would crash."""
    monkeypatch.setenv("DYNGATE_KERNEL_CACHE", str(tmp_path))
    case = make_case(1, 8, 16, 5, 7, 3, density=0.5, seed=3)
    stride, padding, dilation, _, _, _ = GEOMS[0]
    geo = validate(*case, stride, padding, dilation, 4, True, 1)
    defines = tuple(sorted(cpu_fused._defines(geo, 4, True, 1).items()))
    _, _, so = cpu_fused._build_plan(defines, cpu_fused.isa())
    so.write_bytes(b"\x7fELF" + bytes(96))        # a header and nothing else
    cpu_fused._load.cache_clear()
    try:
        _fused(case, GEOMS[0])                    # rebuilt, still right
        assert so.stat().st_size > 100
    finally:
        cpu_fused._load.cache_clear()


@pytest.mark.parametrize("rows,cols", [(28, 28), (14, 14), (7, 7), (32, 32), (16, 16), (8, 8), (3, 31), (1, 5)])
def test_tile_shape_fits_registers_and_covers_with_little_waste(rows, cols):
    """Tiles never exceed the ISA's register budget and the slots they compute beyond the area
    stay under a quarter (a 7-wide map gets 2 x 7 tiles, not 1 x 7 tiles with idle FMA units)."""
    for nbt in (1, 2):
        rh, rw = cpu_fused.tile_shape(rows, cols, nbt)
        assert 1 <= rh <= rows and 1 <= rw <= cols and rh * rw <= cpu_fused._max_tile(nbt)
        slots = -(-rows // rh) * rh * -(-cols // rw) * rw
        assert slots <= 1.25 * rows * cols or rh * rw == min(rows * cols, cpu_fused._max_tile(nbt))


def test_channel_loop_unroll_only_on_avx2_two_vector_tiles():
    """CU (the kernel's channel-loop unroll) is 4 exactly for AVX2's two-vector per-element
    tiles, the one shape where it measured as a gain; test_fused_matches_reference's 12->64
    grouped case (3 and 9 channels per range: unrolled loops with remainders) runs that build on
    avx2."""
    from kernels.geometry import ConvGeometry
    geo = ConvGeometry(2, 12, 7, 7, 64, 3, 3, (1, 1), (1, 1), (1, 1))
    d, target = cpu_fused._defines(geo, 4, True, 1), cpu_fused.isa()   # the module's isa_target
    assert d["CU"] == (4 if target == "avx2" and d["NBT"] == 2 else 1)
    if target == "avx2":
        assert d["NBT"] == 2
    assert cpu_fused._defines(geo, 4, True, 1, prefix=True)["CU"] == 1
    assert cpu_fused._block_defines(geo, 4, True, 16, (4, 4))["CU"] == 1   # block builds: measured a loss
