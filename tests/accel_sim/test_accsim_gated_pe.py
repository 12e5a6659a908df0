"""Gated schedules: closed form against the cycle-stepped PE array, and dyngate profiles end to end."""
import numpy as np
import pytest

from accel_sim import AccelConfig, GateSpec, ProfileError, build_network, load_profile, match_profile, simulate
from accel_sim.dataflow import layer_epilogue
from accel_sim.gating import MODES, gate_classes, gate_drain, gated_layer, pass_counts
from accel_sim.pe_array import simulate_gated
from accel_sim.topology import conv


def _reference(a, b, mask, partitions, grouped):
    """base + mask x conditional, per filter, from the partition definition."""
    cls, base, cond = gate_classes(b.shape[1], a.shape[1], partitions, grouped)
    out = np.empty(mask.shape)
    for n in range(b.shape[1]):
        bs, cs = base[cls[n]], cond[cls[n]]
        out[:, n] = a[:, bs] @ b[bs, n] + mask[:, n] * (a[:, cs] @ b[cs, n])
    return out


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_gated_closed_form_equals_cycle_stepped_array(dataflow):
    """Every base x conditional mapping, random shapes, partitions and gate masks (including
    all-off and all-on): cycles, MACs and the gated result must agree."""
    rng = np.random.default_rng({"os": 11, "ws": 12, "is": 13}[dataflow])
    latency = 3
    for trial in range(14):
        rows, cols = (int(x) for x in rng.integers(1, 6, 2))
        p = int(rng.choice([2, 3, 4]))
        grouped = bool(trial % 2)
        m, n, k = int(rng.integers(1, 11)), p * int(rng.integers(1, 4)), p * int(rng.integers(1, 4))
        a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        density = {0: 0.0, 1: 1.0}.get(trial, rng.random())
        mask = rng.random((m, n)) < density
        cls, base_set, cond_set = gate_classes(n, k, p, grouped)
        for base_mode in ("packed", "group"):
            base = pass_counts(dataflow, rows, cols, np.ones((m, n), bool), cls, base_set, base_mode, False)
            for cond_mode in MODES:
                cond = pass_counts(dataflow, rows, cols, mask, cls, cond_set, cond_mode, True)
                closed = (base.cycles + gate_drain(dataflow, rows, cond, latency) + cond.cycles
                          + layer_epilogue(dataflow, rows, False))
                run = simulate_gated(dataflow, a, b, rows, cols, mask, p, grouped, base_mode, cond_mode, latency)
                case = (rows, cols, p, grouped, m, n, k, base_mode, cond_mode)
                assert run.cycles == closed, case
                assert run.macs == base.macs + cond.macs, case
                np.testing.assert_allclose(run.output, _reference(a, b, mask, p, grouped), atol=1e-9)


@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_chosen_layer_schedule_runs_on_the_array(dataflow):
    """The schedule gated_layer picks for a small conv, replayed on the PE array."""
    layer = conv("c", 8, 8, 1, (3, 3))            # M=9, N=8, K=8
    spec = GateSpec(2, np.full(8, 0.4))
    cfg = AccelConfig(rows=4, cols=4, dataflow=dataflow, gate_latency=2, dense_fallback=False)
    mask = np.random.default_rng(7).random((9, 8)) < 0.4
    g = gated_layer(layer, spec, cfg, np.random.default_rng(0), mask=mask)
    base_mode, cond_mode = (g.schedule.split("+") + ["column"])[:2]
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((9, 8)), rng.standard_normal((8, 8))
    run = simulate_gated(dataflow, a, b, 4, 4, mask, 2, True, base_mode, cond_mode, 2)
    assert run.cycles == g.compute_cycles + layer_epilogue(dataflow, 4, False)
    assert run.macs == g.executed_macs


def _dyngate_profile(model_name, path, in_channels=1, hw=28):
    torch = pytest.importorskip("torch")
    dyngate = pytest.importorskip("dyngate")
    models = pytest.importorskip("models")
    torch.manual_seed(0)
    gated = dyngate.convert(models.build(model_name, in_channels=in_channels, num_classes=10)).eval()
    dyngate.profile(gated, torch.randn(2, in_channels, hw, hw)).to_yaml(path)


def test_dyngate_profile_end_to_end(tmp_path):
    path = tmp_path / "r20.yaml"
    _dyngate_profile("resnet20", path)
    layers = build_network("resnet20", (1, 28, 28))
    specs = match_profile(load_profile(path), layers)
    assert specs, "the converted resnet20 has gated layers"
    res = simulate(layers, AccelConfig(), specs)
    t = res.totals
    assert t["gated_layers"] == len(specs) and t["gated_cycles"] <= t["dense_cycles"]
    for row in res.rows:
        assert row["gated_cycles"] <= row["dense_cycles"], row["name"]
        assert row["schedule"] != "dense" or not row["gated"]
    osr = simulate(layers, AccelConfig(dataflow="os", rows=16, cols=16), specs)
    assert osr.totals["gated_cycles"] <= osr.totals["dense_cycles"]


def test_mismatched_profile_is_a_clear_error(tmp_path):
    path = tmp_path / "vgg.yaml"
    _dyngate_profile("vgg16", path, hw=32)
    with pytest.raises(ProfileError, match=r"vgg\.yaml \(profile of model '.*'\): does not match the topology: "
                                           r"layer conv1 of the topology is missing from the profile"):
        match_profile(load_profile(path), build_network("resnet20", (1, 28, 28)))
