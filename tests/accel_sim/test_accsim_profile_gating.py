"""Sparsity-profile validation and matching; the gating scheduler's counters."""
import subprocess
import sys

import numpy as np
import pytest
import yaml

from accel_sim import AccelConfig, GateSpec, ProfileError, build_network, load_profile, match_profile, simulate
from accel_sim.dataflow import dense_cycles, layer_epilogue
from accel_sim.gating import draw_mask, gate_classes, gated_layer, pass_counts
from accel_sim.networks import cgnet_gated
from accel_sim.topology import conv


def _profile_dict(layers, gated, density=0.3):
    out = []
    for l in layers:
        e = {"name": l.name, **l.shape_fields(), "gated": l.name in gated, "density": 1.0,
             "dense_macs": l.macs, "executed_macs": l.macs}
        if l.name in gated:
            e.update(partitions=4, grouped=True, granularity=1, base_fraction=0.25, density=density,
                     channel_density=[density] * l.out_channels, base_macs=l.macs // 4)
        out.append(e)
    return {"schema": "dyngate.sparsity_profile", "version": 1, "model": "resnet20",
            "input_shape": [1, 1, 28, 28], "samples": 4, "layers": out, "totals": {}}


@pytest.fixture
def r20():
    return build_network("resnet20", (1, 28, 28))


def _write(tmp_path, data):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_profile_round_trip(tmp_path, r20):
    gated = cgnet_gated(r20)
    specs = match_profile(load_profile(_write(tmp_path, _profile_dict(r20, gated))), r20)
    assert set(specs) == gated and all(s.density == pytest.approx(0.3) for s in specs.values())


def test_profile_errors_name_layer_and_field(tmp_path, r20):
    d = _profile_dict(r20, cgnet_gated(r20))
    d["layers"][3]["stride"] = [2, 2]
    with pytest.raises(ProfileError, match=r"layer layer1.1.conv1: field 'stride' is \[2, 2\] in the profile"):
        match_profile(load_profile(_write(tmp_path, d)), r20)
    d = _profile_dict(r20, cgnet_gated(r20))
    del d["layers"][5]
    with pytest.raises(ProfileError, match=f"layer {r20[5].name} of the topology is missing"):
        match_profile(load_profile(_write(tmp_path, d)), r20)
    d = _profile_dict(r20, cgnet_gated(r20))
    with pytest.raises(ProfileError, match="layer fc in the profile is not in the topology"):
        match_profile(load_profile(_write(tmp_path, d)), r20[:-1])
    d["version"] = 3
    with pytest.raises(ProfileError, match="field 'version' must be one of 1, 2"):
        load_profile(_write(tmp_path, d))
    d = _profile_dict(r20, cgnet_gated(r20))
    d["layers"][1]["channel_density"] = [0.5] * 3
    with pytest.raises(ProfileError, match="layer layer1.0.conv1: field 'channel_density' has 3 entries"):
        load_profile(_write(tmp_path, d))
    d = _profile_dict(r20, cgnet_gated(r20))
    d["layers"][0]["in_channels"] = "1"
    with pytest.raises(ProfileError, match="layer conv1: field 'in_channels' must be int"):
        load_profile(_write(tmp_path, d))


def test_profile_loader_does_not_import_torch():
    code = ("import sys, accel_sim, accel_sim.__main__; "
            "r = accel_sim.simulate(accel_sim.build_network('resnet18'), accel_sim.AccelConfig(), "
            "accel_sim.uniform_gates(accel_sim.build_network('resnet18'), 0.4)); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_accel_sim_and_netspec_import_without_torch():
    code = "import sys, accel_sim, netspec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cgnet_rule():
    r18 = cgnet_gated(build_network("resnet18"))
    assert "layer1.0.conv1" in r18 and "layer1.0.conv2" not in r18 and "conv1" not in r18
    assert not any("downsample" in n or n == "fc" for n in r18)
    r50 = cgnet_gated(build_network("resnet50"))
    assert {"layer1.0.conv1", "layer1.0.conv2"} <= r50 and "layer1.0.conv3" not in r50
    mb = cgnet_gated(build_network("mobilenetv2"))
    assert "features.2.conv.0.0" in mb and "features.2.conv.1.0" not in mb  # depthwise stays dense


def test_conditional_pass_by_hand():
    # 4 pixels x 3 filters, ungrouped base (p=3, K=6: base rows 0-1, conditional rows 2-5);
    # column 0 has 3 active pixels, column 1 has 1, column 2 has 2
    mask = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=bool)
    cls, _, cond = gate_classes(3, 6, 3, grouped=False)
    col = pass_counts("os", 2, 2, mask, cls, cond, "column", accumulate=True)
    # OS 2x2: fold 0 (cols 0,1) longest list 3 -> 2 row folds; fold 1 (col 2) 2 -> 1; 2+2+4-2 = 6 each
    assert col.cycles == 3 * 6 and col.folds == 3
    uni = pass_counts("os", 2, 2, mask, cls, cond, "packed", accumulate=True)
    assert uni.cycles == 3 * 6      # unions: pixels {0,1,2} then {0,2}
    ws = pass_counts("ws", 2, 2, mask, cls, cond, "column", accumulate=True)
    # 2 row folds of the 4 conditional rows; fold 0 streams 3, fold 1 streams 2
    assert ws.cycles == 2 * (4 + 2 + 3 - 2) + 2 * (4 + 2 + 2 - 2)
    # per-column lists: each active output reads its own 4 inputs; 2 psum updates per output
    assert ws.ifmap_reads == 6 * 4 and ws.ofmap_writes == ws.ofmap_reads == 6 * 2
    wsu = pass_counts("ws", 2, 2, mask, cls, cond, "packed", accumulate=True)
    assert wsu.ifmap_reads == (3 + 2) * 4   # the shared stream reads each union pixel once per row


def test_grouped_base_packed_vs_group_by_hand():
    # WS 8x8, 5 pixels, 4 filters in p=2 groups, K=8 (partition 0: rows 0-3, partition 1: 4-7)
    cls, base, _ = gate_classes(4, 8, 2, grouped=True)
    every = np.ones((5, 4), dtype=bool)
    packed = pass_counts("ws", 8, 8, every, cls, base, "packed", accumulate=False)
    group = pass_counts("ws", 8, 8, every, cls, base, "group", accumulate=False)
    # both groups share the column tile: one block-diagonal fold of 8 rows, 2*8+8+5-2 = 27
    assert packed.cycles == 27 and packed.macs == 5 * 4 * 4
    assert group.cycles == 2 * 27       # group by group streams the pixels twice
    assert packed.cycles == int(dense_cycles("ws", 8, 8, 5, 4, 8))   # and equals the dense fold


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_gated_counters(dataflow):
    layer = conv("c", 64, 64, 3, (14, 14))
    cfg = AccelConfig(dataflow=dataflow, rows=16, cols=16, dense_fallback=False)
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    full = gated_layer(layer, GateSpec(4, np.ones(64)), cfg, rng())
    assert full.executed_macs == layer.macs and full.skipped_macs == 0
    none = gated_layer(layer, GateSpec(4, np.zeros(64)), cfg, rng())
    assert none.executed_macs == layer.macs // 4 and none.cond_cycles == 0 and none.gate_cycles == 0
    half = gated_layer(layer, GateSpec(4, np.full(64, 0.35)), cfg, rng())
    assert half.executed_macs + half.skipped_macs == layer.macs
    assert none.compute_cycles < half.compute_cycles < full.compute_cycles
    assert half.cond_balanced_cycles <= half.cond_cycles
    assert half.compute_cycles == min(half.candidates.values())
    union = gated_layer(layer, GateSpec(4, np.full(64, 0.35)), cfg.replace(gate_schedule="union"), rng())
    assert union.cond_cycles >= half.cond_cycles   # auto may also pick lists; never worse
    assert union.schedule.split("+")[1] in ("packed", "group")
    streamed = lambda g: g.ifmap_reads + g.filter_reads  # noqa: E731
    assert streamed(union) < streamed(half)        # the shared stream keeps operand reuse


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_gated_never_slower_than_dense_with_fallback(dataflow):
    rng = np.random.default_rng(3)
    for cin, cout, hw in [(16, 16, 28), (32, 32, 14), (64, 128, 7), (128, 256, 14)]:
        layer = conv("c", cin, cout, 3, (hw, hw))
        spec = GateSpec(4, rng.uniform(0.1, 0.9, cout))
        cfg = AccelConfig(dataflow=dataflow)
        g = gated_layer(layer, spec, cfg, np.random.default_rng(0))
        dense = int(dense_cycles(dataflow, 32, 32, layer.gemm_m, layer.gemm_n, layer.gemm_k)) \
            - layer_epilogue(dataflow, 32, False)
        assert g.compute_cycles <= dense
        if g.schedule == "dense":   # fell back: its best gated schedule really was not faster
            assert g.gated_compute_cycles >= dense and g.executed_macs == layer.macs
        else:
            assert g.compute_cycles < dense and g.executed_macs == g.gated_macs


def test_fallback_reported_and_switchable():
    layers = build_network("resnet20", (1, 28, 28))
    gates = {n: GateSpec(4, np.full(16, 0.5)) for n in ("layer1.0.conv1",)}
    on = simulate(layers, AccelConfig(), gates)
    row = next(r for r in on.rows if r["name"] == "layer1.0.conv1")
    # WS, N=16 <= C=32: the block-diagonal base pass alone already costs the dense folds
    assert row["schedule"] == "dense-fallback" and row["gated_cycles"] == row["dense_cycles"]
    assert row["best_gated_compute_cycles"] > row["dense_compute_cycles"]
    assert on.totals["dense_fallback_layers"] == ["layer1.0.conv1"]
    off = simulate(layers, AccelConfig(dense_fallback=False), gates)
    row = next(r for r in off.rows if r["name"] == "layer1.0.conv1")
    assert row["schedule"] == "packed+column" and row["gated_cycles"] > row["dense_cycles"]


def test_network_totals_and_seed():
    layers = build_network("resnet18")
    specs = {n: GateSpec(4, np.full(l.out_channels, 0.3)) for l in layers for n in [l.name]
             if n in cgnet_gated(layers)}
    a = simulate(layers, AccelConfig(), specs).totals
    b = simulate(layers, AccelConfig(), specs).totals
    assert a == b
    assert 1.0 < a["speedup"] < a["theoretical_speedup"]
    assert a["executed_macs"] + a["skipped_macs"] == a["macs"]
    dense = simulate(layers, AccelConfig()).totals
    assert dense["dense_cycles"] == dense["gated_cycles"] == a["dense_cycles"]


def test_tile_profile_is_scheduled_with_block_masks(tmp_path):
    """A tile-gated profile is simulated with its decision blocks: masks constant on every
    (tile x G) block (ragged edges clipped), at the measured density, and scheduled by the same
    mappings as per-element masks, column runs sharing feeds (test_block_gates_share_column_feeds)."""
    r20 = build_network("resnet20")
    d = _profile_dict(r20, cgnet_gated(r20))
    d["version"] = 2
    for l in d["layers"]:
        if l["gated"]:
            l.update(tile=[4, 4], block_density=0.3, granularity=8)
    specs = match_profile(load_profile(_write(tmp_path, d)), r20)
    assert {s.tile for s in specs.values()} == {(4, 4)}
    layer = next(l for l in r20 if l.name == "layer1.0.conv1")   # 32x32 output: 8x8 blocks
    mask = draw_mask(layer, specs[layer.name], np.random.default_rng(0))
    blocks = mask.reshape(8, 4, 8, 4, 2, 8)                      # (bh, th, bw, tw, groups, G)
    assert (blocks == blocks[:, :1, :, :1, :, :1]).all()
    assert 0.2 < mask.mean() < 0.4
    edge = conv("edge", 16, 16, 3, (7, 7))                        # 7x7 map: ragged 4x4 blocks
    m = draw_mask(edge, GateSpec(4, np.full(16, 0.5), True, 16, (4, 4)), np.random.default_rng(1))
    m = m.reshape(7, 7, 16)
    assert all((m[r0:r0 + 4, c0:c0 + 4] == m[r0, c0]).all() for r0 in (0, 4) for c0 in (0, 4))
    for df in ("ws", "os"):   # non-grouped base (a grouped one costs WS the dense folds here)
        tile = {n: GateSpec(4, np.full(s.channel_density.size, 0.3), False, 8, (4, 4)) for n, s in specs.items()}
        t = simulate(r20, AccelConfig(dataflow=df), tile).totals
        assert 1.0 < t["speedup"] < t["theoretical_speedup"], df
    d["layers"][1]["tile"] = [0, 4]
    with pytest.raises(ProfileError, match="field 'tile' must be a list of two integers >= 1"):
        load_profile(_write(tmp_path, d))


def test_block_masks_switch_on_each_groups_share_of_blocks():
    """Block masks are stratified: a group with density d switches on floor(d n) or ceil(d n) of
    its n blocks (unbiased over seeds) and the layer's total is right to one block, not a
    Bernoulli count that can land far off with 16 blocks."""
    layer = conv("c", 64, 64, 3, (28, 28))                  # 4x4 = 16 blocks of 7x7 per image
    dens = np.repeat([0.445, 0.019, 0.5, 1.0], 16)
    spec = GateSpec(4, dens, False, 16, (7, 7))
    counts = []
    for seed in range(400):
        m = draw_mask(layer, spec, np.random.default_rng(seed)).reshape(4, 7, 4, 7, 4, 16)
        assert (m == m[:, :1, :, :1, :, :1]).all()          # constant on each block
        counts.append(m[:, 0, :, 0, :, 0].sum(axis=(0, 1)))
    counts = np.array(counts)
    expect = np.array([0.445, 0.019, 0.5, 1.0]) * 16
    assert (np.abs(counts - expect) < 1).all()
    assert (np.abs(counts.sum(axis=1) - expect.sum()) < 1).all()   # the layer's total too
    # stochastic rounding keeps the mean: each count is floor or ceil (sd <= 0.5 blocks), so the
    # mean of 400 seeds has sd <= 0.5 / sqrt(400) = 0.025 blocks; 4 sd
    assert np.allclose(counts.mean(axis=0), expect, atol=4 * 0.025)
    assert len({tuple(np.flatnonzero(draw_mask(layer, spec, np.random.default_rng(s))[:, 0]))
                for s in range(5)}) == 5                      # the places are random


@pytest.mark.parametrize("df", ["os", "ws"])
def test_block_gates_share_column_feeds(df):
    """G-channel block gates: aligned runs of gcd(G, C) columns carry one list and one gather
    feed, so the column pass reads its input once per run: same cycles and MACs as per-column
    feeds, input reads divided by the run width; a mask that is not constant on the runs, and
    IS (pixels on the columns), get no sharing."""
    from accel_sim.gating import feed_share, gate_classes, gated_layer, pass_counts  # noqa: PLC0415

    rng = np.random.default_rng(3)
    m, n, k, p = 40, 24, 36, 4
    blocks = rng.random((m, n // 8)) < 0.4
    mask = np.repeat(blocks, 8, axis=1)                       # G = 8
    cls, _, cond = gate_classes(n, k, p, False)
    assert feed_share(df, 16, mask, 8, cls) == 8              # gcd(8, 16)
    assert feed_share(df, 12, mask, 8, cls) == 4              # runs must not straddle a 12-wide tile
    assert feed_share("is", 16, mask, 8, cls) == 1
    ragged = mask.copy()
    ragged[0, 1] = not ragged[0, 1]
    assert feed_share(df, 16, ragged, 8, cls) == 1
    # grouped base, partitions of 6 filters: a run may not mix two partitions' conditional rows
    grouped_cls, _, _ = gate_classes(n, k, p, True)
    assert feed_share(df, 16, mask, 8, grouped_cls) == 2
    for cols, share in ((16, 8), (12, 4)):
        one = pass_counts(df, 8, cols, mask, cls, cond, "column", True)
        run = pass_counts(df, 8, cols, mask, cls, cond, "column", True, share)
        assert (run.cycles, run.macs, run.filter_reads, run.ofmap_writes) == \
               (one.cycles, one.macs, one.filter_reads, one.ofmap_writes)
        assert run.ifmap_reads * share == one.ifmap_reads > 0
    # whole layers: a block-gated layer reads less input (and spends less energy) than the same
    # per-column schedule would; the simulated schedule uses the sharing
    layer = conv("c", 64, 64, 3, (14, 14))
    spec = GateSpec(4, np.full(64, 0.3), False, 16, (7, 7))
    cfg = AccelConfig(dataflow=df, gate_schedule="column", dense_fallback=False, gather_buffer_kb=0)
    g = gated_layer(layer, spec, cfg, np.random.default_rng(0))
    assert g.schedule.endswith("+column")
    mask16 = draw_mask(layer, spec, np.random.default_rng(5))
    shared = gated_layer(layer, spec, cfg, np.random.default_rng(0), mask=mask16)
    unshared = mask16.copy()
    unshared[0, 0] = not unshared[0, 0]                       # breaks one run: no sharing anywhere
    plain = gated_layer(layer, spec, cfg, np.random.default_rng(0), mask=unshared)
    assert shared.ifmap_reads < plain.ifmap_reads / 10
