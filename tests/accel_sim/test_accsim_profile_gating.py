"""Sparsity-profile validation and matching; the gating scheduler's counters."""
import subprocess
import sys

import numpy as np
import pytest
import yaml

from accel_sim import AccelConfig, GateSpec, ProfileError, build_network, load_profile, match_profile, simulate
from accel_sim.gating import conditional_schedule, gated_layer
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
    d["version"] = 2
    with pytest.raises(ProfileError, match="field 'version' must be 1"):
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


def test_cgnet_rule():
    r18 = cgnet_gated(build_network("resnet18"))
    assert "layer1.0.conv1" in r18 and "layer1.0.conv2" not in r18 and "conv1" not in r18
    assert not any("downsample" in n or n == "fc" for n in r18)
    r50 = cgnet_gated(build_network("resnet50"))
    assert {"layer1.0.conv1", "layer1.0.conv2"} <= r50 and "layer1.0.conv3" not in r50
    mb = cgnet_gated(build_network("mobilenetv2"))
    assert "features.2.conv.0.0" in mb and "features.2.conv.1.0" not in mb  # depthwise stays dense


def test_conditional_schedule_by_hand():
    # OS on a 2x2 array, 4 pixels x 3 channels; column 0 has 3 active, column 1 has 1, column 2 has 2
    mask = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 1], [0, 0, 0]], dtype=bool)
    col = conditional_schedule("os", 2, 2, mask, k_c=5, schedule="column")
    # fold 0 (cols 0,1): longest list 3 -> 2 row folds; fold 1 (col 2): 2 -> 1 row fold; 2+2+5-2 = 7 each
    assert col["cycles"] == 3 * 7 and col["folds"] == 3
    uni = conditional_schedule("os", 2, 2, mask, k_c=5, schedule="union")
    assert uni["cycles"] == 3 * 7          # union of fold 0 = 3 pixels, fold 1 = 2
    ws = conditional_schedule("ws", 2, 2, mask, k_c=5, schedule="column")
    # 3 row folds of the reduction; fold 0 streams 3, fold 1 streams 2: 3*(4+2+3-2) + 3*(4+2+2-2)
    assert ws["cycles"] == 3 * 7 + 3 * 6
    assert ws["ifmap_reads"] == 6 * 5 and ws["ofmap_writes"] == 6 * 3


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_gated_counters(dataflow):
    layer = conv("c", 64, 64, 3, (14, 14))
    cfg = AccelConfig(dataflow=dataflow, rows=16, cols=16)
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    full = gated_layer(layer, GateSpec(4, np.ones(64)), cfg, rng())
    assert full.executed_macs == layer.macs and full.skipped_macs == 0
    none = gated_layer(layer, GateSpec(4, np.zeros(64)), cfg, rng())
    assert none.executed_macs == layer.macs // 4 and none.cond_cycles == 0
    half = gated_layer(layer, GateSpec(4, np.full(64, 0.35)), cfg, rng())
    assert half.executed_macs + half.skipped_macs == layer.macs
    assert none.compute_cycles < half.compute_cycles < full.compute_cycles
    assert half.cond_balanced_cycles <= half.cond_cycles
    union = gated_layer(layer, GateSpec(4, np.full(64, 0.35)), cfg.replace(gate_schedule="union"), rng())
    assert union.cond_cycles >= half.cond_cycles   # a shared stream cannot beat per-column lists


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
