"""Issue 16: energy breakdown, per-layer choice on total cycles / energy / EDP, stall and psum-width fixes."""
import numpy as np
import pytest

import accel_sim.cost as cost
from accel_sim import AccelConfig, GateSpec, build_network, simulate, uniform_gates
from accel_sim.__main__ import main
from accel_sim.cost import ENERGY_PARTS, EnergyRates, sram_word_pj
from accel_sim.cost_tables import TABLE
from accel_sim.gating import gather_window, gather_window_os
from accel_sim.memory import psum_spill_words, stall_cycles
from accel_sim.topology import conv

R20 = ("resnet20", (1, 28, 28))


def _run(net, chw, density, **cfg):
    layers = build_network(net, chw)
    return simulate(layers, AccelConfig(**cfg), uniform_gates(layers, density) if density < 1 else {})


def test_breakdown_sums_to_total():
    res = _run("resnet18", (3, 64, 64), 0.35)
    for row in res.rows:
        for pre, total in (("energy_", "energy_pj"), ("dense_energy_", "dense_energy_pj")):
            assert sum(row[f"{pre}{k}_pj"] for k in ENERGY_PARTS) == pytest.approx(row[total], rel=1e-12)
    t = res.totals
    assert sum(t["energy_breakdown_pj"].values()) == pytest.approx(t["energy_pj"], rel=1e-12)
    assert sum(t["dense_energy_breakdown_pj"].values()) == pytest.approx(t["dense_energy_pj"], rel=1e-12)
    assert all(r["choice_reason"] for r in res.rows if r["gated"])


# dense cycles and DRAM bytes recorded from the code before issue 16 (commit 6e6b2f2): default
# config, and 16x16 OS/IS.  (Dense energy changed on purpose twice since: psums at 32 bits, then
# CACTI SRAM energies by capacity and port width plus the DRAM fill/drain accesses of the SRAMs;
# test_dense_energy_from_counts recomputes it from the counts.)
DENSE_BEFORE = {("resnet18", "ws"): (3007545, 27234984),
                ("resnet18", "os"): (8051229, 48368296),
                ("resnet20", "ws"): (72453, 554282),
                ("resnet20", "is"): (354932, 554282)}


@pytest.mark.parametrize("net,df", list(DENSE_BEFORE))
def test_dense_unchanged(net, df):
    """Dense cycles and traffic are unchanged, gated or not."""
    chw = None if net == "resnet18" else R20[1]
    extra = {} if df == "ws" else dict(dataflow=df, rows=16, cols=16)
    for density in (0.35, 1.0):
        t = _run(net, chw, density, **extra).totals
        assert (t["dense_cycles"], t["dense_dram_bytes"]) == DENSE_BEFORE[(net, df)]


@pytest.mark.parametrize("df", ["os", "ws", "is"])
def test_dense_energy_from_counts(df):
    """Dense energy by part, recomputed by hand from the fold counts, the DRAM words and the
    per-access CACTI energies: reads at the buffer's port width, DRAM fills written into the
    ifmap/filter SRAMs, outputs read from the ofmap SRAM on their way out (operand width)."""
    from accel_sim.cost import port_lanes, sram_access_pj  # noqa: PLC0415
    from accel_sim.dataflow import sram_accesses  # noqa: PLC0415
    from accel_sim.memory import dram_words  # noqa: PLC0415

    cfg = AccelConfig(dataflow=df, rows=16, cols=8, ifmap_sram_kb=32, filter_sram_kb=64, ofmap_sram_kb=16)
    layer = conv("c", 32, 48, 3, (14, 14))
    row = simulate([layer], cfg).rows[0]
    m, n, k = layer.gemm_m, layer.gemm_n, layer.gemm_k
    acc = sram_accesses(df, 16, 8, m, n, k)
    d_if, d_fi, d_of = (float(w) for w in dram_words(cfg, m, n, k, 1, layer.ifmap_words, layer.filter_words,
                                                     layer.ofmap_words))
    lanes = port_lanes(cfg)
    assert lanes == {"ifmap": 16 if df != "is" else 8, "filter": 8 if df != "is" else 16, "ofmap": 8, "gather": 16}
    per = lambda kb, lane, bits, op: sram_access_pj(kb, lanes[lane] * bits, op) / lanes[lane]  # noqa: E731
    want = {
        "ifmap_sram": acc["ifmap_reads"] * per(32, "ifmap", 8, "read") + d_if * per(32, "ifmap", 8, "write"),
        "filter_sram": acc["filter_reads"] * per(64, "filter", 8, "read") + d_fi * per(64, "filter", 8, "write"),
        "ofmap_sram": (acc["ofmap_reads"] * per(16, "ofmap", 32, "read") + acc["ofmap_writes"] * per(16, "ofmap", 32, "write")
                       + d_of * per(16, "ofmap", 32, "read") * 8 / 32),
        "dram": (d_if + d_fi + d_of) * 8 * 8.0,
        "mac": m * n * k * cost.mac_energy_pj("int8"),
    }
    for part, value in want.items():
        assert row[f"dense_energy_{part}_pj"] == pytest.approx(float(value), rel=1e-12), part


@pytest.mark.parametrize("density", [0.5, 0.35, 0.1])
def test_gated_beats_dense_on_resnet18_default(density):
    t = _run("resnet18", None, density).totals
    assert t["gated_cycles"] < t["dense_cycles"] and t["energy_pj"] < t["dense_energy_pj"]


@pytest.mark.parametrize("chw", [(1, 28, 28), (3, 32, 32)])
def test_resnet20_default_never_worse_and_says_why(chw):
    """N <= 32 filters on a 32-wide WS array: the base pass alone costs the dense folds, so every
    layer falls back and the report says why; never worse than dense in cycles or energy."""
    res = _run("resnet20", chw, 0.35)
    t = res.totals
    assert t["gated_cycles"] <= t["dense_cycles"] and t["energy_pj"] <= t["dense_energy_pj"]
    for row in (r for r in res.rows if r["gated"]):
        assert row["gated_cycles"] <= row["dense_cycles"] and row["energy_pj"] <= row["dense_energy_pj"]
        if row["schedule"] == "dense-fallback":
            assert row["choice_reason"].startswith("cycles: dense; best gated ") and ": " in row["choice_reason"]


def test_optimize_changes_the_choice_on_a_constructed_layer():
    """16 filters on a 32x32 WS array: gating cannot save cycles (dense wins on cycles) but skips
    MACs and psum traffic (a gated schedule wins on energy)."""
    layer = conv("c", 16, 16, 3, (28, 28))
    gates = {"c": GateSpec(4, np.full(16, 0.35))}
    res = {o: simulate([layer], AccelConfig(optimize=o), gates).rows[0] for o in ("cycles", "energy", "edp")}
    assert res["cycles"]["schedule"] == "dense-fallback"
    assert res["energy"]["schedule"] != "dense-fallback"
    assert res["energy"]["energy_pj"] < res["cycles"]["energy_pj"] == res["cycles"]["dense_energy_pj"]
    assert res["cycles"]["gated_cycles"] < res["energy"]["gated_cycles"]
    for o, row in res.items():
        assert row["choice_reason"].startswith(f"{o}: ")
    edp = lambda r: r["energy_pj"] * r["gated_cycles"]  # noqa: E731
    assert edp(res["edp"]) <= min(edp(res["cycles"]), edp(res["energy"]))


def test_fallback_decided_on_total_cycles_with_stalls():
    """A starved DRAM: a gated schedule with more traffic must not be taken when its stalls make
    it slower than dense."""
    for bw in (0.5, 2.0, 32.0):
        res = _run("resnet18", (3, 64, 64), 0.5, dram_bytes_per_cycle=bw)
        for row in res.rows:
            assert row["gated_cycles"] <= row["dense_cycles"], (bw, row["name"])


def test_no_stall_at_unbounded_bandwidth():
    fast = AccelConfig(dram_bytes_per_cycle=1e6)
    assert float(stall_cycles(fast, 1000, 5000, 10)) == 0
    assert float(stall_cycles(fast.replace(double_buffer=False), 1000, 5000, 10)) == 0
    res = _run("resnet18", (3, 64, 64), 0.35, dram_bytes_per_cycle=1e6)
    assert all(r["dense_stall_cycles"] == 0 and r["gated_stall_cycles"] == 0 for r in res.rows)
    assert res.totals["dense_cycles"] == res.totals["dense_compute_cycles"]
    # without double buffering every transfer is exposed: under a cycle's worth of bytes it is free
    res = _run("resnet18", (3, 64, 64), 0.35, dram_bytes_per_cycle=1e6, double_buffer=False)
    for r in res.rows:
        assert r["dense_stall_cycles"] == (0 if r["dense_dram_bytes"] < 1e6 else np.ceil(r["dense_dram_bytes"] / 1e6))
    # a stall of a cycle or more is still charged in whole cycles
    assert float(stall_cycles(AccelConfig(dram_bytes_per_cycle=10, double_buffer=False), 1000, 15, 1)) == 2


def test_psum_traffic_charged_by_its_width():
    assert TABLE["psum_bits"].value == 32 and TABLE["psum_bits"].source
    cfg = AccelConfig()
    rates = EnergyRates.for_config(cfg)
    assert rates.ofmap == pytest.approx(sram_word_pj(cfg.ofmap_sram_kb, cfg.cols, 32))
    assert rates.ofmap_write == pytest.approx(sram_word_pj(cfg.ofmap_sram_kb, cfg.cols, 32, "write"))
    assert rates.ifmap == pytest.approx(sram_word_pj(cfg.ifmap_sram_kb, cfg.rows, 8))
    # a spilled psum costs 4 int8 words of DRAM traffic per trip (OS: out once, active ones back)
    small = AccelConfig(dataflow="os", ofmap_sram_kb=1)
    assert psum_spill_words(small, 100, 64, 72, 4, 0.5) == pytest.approx(100 * 64 * 1.5 * 4)
    assert psum_spill_words(AccelConfig(dataflow="os"), 100, 64, 72, 4, 0.5) == 0.0   # fits: stays on chip


def test_gather_window():
    mask = np.zeros((10, 2), dtype=bool)
    mask[[1, 3, 5], 0] = True
    mask[[1, 3, 5], 1] = True
    # one array row (no skew), same lists: a one-pixel window serves every gather
    assert gather_window(mask, 4, 1, 2, buffer_words=1) == (6 * 4, 5 * 4)
    # 4 skewed rows: the window must reach back to the head of 3 cycles ago
    assert gather_window(mask, 4, 4, 2, buffer_words=4 * 1)[0] == 2 * 4
    assert gather_window(mask, 4, 4, 2, buffer_words=4 * 5)[0] == 6 * 4
    mask[:, 1] = False
    mask[[7, 8, 9], 1] = True                                              # column 1 runs 6 pixels ahead
    hits, fills = gather_window(mask, 4, 1, 2, buffer_words=2)
    assert hits == 3 * 4 and fills == 9 * 4                                # only the slow column hits
    assert gather_window(mask, 4, 1, 2, buffer_words=7)[0] == 6 * 4
    assert gather_window(mask, 4, 1, 2, buffer_words=0) == (0, 0)


def test_gather_window_os():
    """OS fold = R list entries per column; the window holds the fold's distinct pixels over
    the R + C - 1 reduction indices in flight."""
    mask = np.zeros((8, 2), dtype=bool)
    mask[[0, 2, 4, 6], 0] = True
    mask[[0, 2, 5, 7], 1] = True
    # R=2: fold 0 = pixels {0, 2} (2 distinct, 4 entries), fold 1 = {4, 6, 5, 7} (4 distinct)
    depth = 2 + 2 - 1
    assert gather_window_os(mask, 6, 2, 2, buffer_words=4 * depth) == (8 * 6, 6 * 6)
    assert gather_window_os(mask, 6, 2, 2, buffer_words=2 * depth) == (4 * 6, 2 * 6)   # fold 1 misses
    assert gather_window_os(mask, 6, 2, 2, buffer_words=1) == (0, 0)


@pytest.mark.parametrize("args,field", [(["--optimize", "speed"], "optimize: got 'speed'; allowed: cycles, energy, edp"),
                                        (["--gather-buffer-kb", "-1"], "gather_buffer_kb: expected a number"),
                                        (["--gather-buffer-kb", "big"], "--gather-buffer-kb: expected KiB")])
def test_cli_bad_values_exit_2_with_one_line(args, field, capsys):
    assert main(["run", "resnet20", "--input", "1x28x28", "--density", "0.3", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0]


def test_cli_breakdown_and_help(capsys):
    assert main(["run", "resnet20", "--input", "1x28x28", "--density", "0.3", "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "energy breakdown, gated/dense uJ" in out and "why each gated layer" in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "cycles | energy | edp" in text and "default cycles" in text
