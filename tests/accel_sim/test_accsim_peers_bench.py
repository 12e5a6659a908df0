"""Pure parts of benchmarks/bench_accel_sim_peers.py: the SCALE-Sim v3 and ZigZag inputs written
for a layer, the summaries of their outputs and the tables.  No peer needs to be installed."""
from __future__ import annotations

import configparser
import importlib.util
import math
from pathlib import Path

import pytest
import yaml

from accel_sim import AccelConfig, build_network, read_scalesim_csv, simulate
from accel_sim.config import load_scalesim_cfg
from accel_sim.cost import ACC_BITS, WORD_BITS, EnergyRates, port_lanes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_accel_sim_peers",
                                                  ROOT / "benchmarks" / "bench_accel_sim_peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def net():
    return {l.name: l for l in build_network("resnet18")}


CFG = AccelConfig()
RATES = EnergyRates.for_config(CFG)


def test_default_layers_exist(bench, net):
    assert set(bench.DEFAULT_LAYERS) <= set(net)
    assert [l.name for l in bench.select_layers("conv1,fc")] == ["conv1", "fc"]
    with pytest.raises(SystemExit, match="unknown layer"):
        bench.select_layers("conv1,nope")


@pytest.mark.parametrize("name", ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer2.0.downsample.0", "fc"])
def test_zigzag_workload_matches_layer(bench, net, name):
    layer = net[name]
    (wl,) = bench.zigzag_workload(layer, CFG)
    sizes = dict(zip(wl["loop_dims"], wl["loop_sizes"]))
    assert sizes == {"B": 1, "K": layer.out_channels, "C": layer.in_channels, "OY": layer.output_hw[0],
                     "OX": layer.output_hw[1], "FY": layer.kernel_size[0], "FX": layer.kernel_size[1]}
    assert math.prod(wl["loop_sizes"]) == layer.macs
    assert wl["dimension_relations"] == [f"ix={layer.stride[1]}*ox+1*fx", f"iy={layer.stride[0]}*oy+1*fy"]
    assert wl["operand_precision"] == {"W": 8, "I": 8, "O": ACC_BITS, "O_final": 8}
    assert wl["pr_loop_sizes"] == [layer.input_hw[1], layer.input_hw[0]]
    assert wl["padding"] == [[layer.padding[1]] * 2, [layer.padding[0]] * 2]
    # the written YAML is what ZigZag reads
    assert yaml.safe_load(bench.zigzag_inputs(layer, CFG, RATES)["workload"]) == [wl]


@pytest.mark.parametrize("name", ["conv1", "layer1.0.conv1", "layer2.0.downsample.0", "layer4.0.conv1", "fc"])
def test_zigzag_mapping_is_our_ws_loop_nest(bench, net, name):
    layer = net[name]
    (mp,) = bench.zigzag_mapping(layer, CFG)
    spatial = {d: [(e.split(",")[0], int(e.split(",")[1])) for e in v] for d, v in mp["spatial_mapping"].items()}
    assert math.prod(s for _, s in spatial["D1"]) <= CFG.rows and math.prod(s for _, s in spatial["D2"]) <= CFG.cols
    assert [d for d, _ in spatial["D2"]] == ["K"]                       # filters on the columns
    assert {d for d, _ in spatial["D1"]} <= {"C", "FX", "FY"}           # reduction on the rows
    total = {"OX": layer.output_hw[1], "OY": layer.output_hw[0], "FX": layer.kernel_size[1], "FY": layer.kernel_size[0],
             "C": layer.in_channels, "K": layer.out_channels}
    unrolled = {d: 1 for d in total}
    for d, s in spatial["D1"] + spatial["D2"]:
        unrolled[d] *= s
    got = dict(unrolled)
    for d, s in mp["temporal_ordering"]:
        got[d] *= s
    # every loop covered; a size the unrolling does not divide (fc's 1000 filters) rounds up to whole folds
    assert got == {d: -(-total[d] // unrolled[d]) * unrolled[d] for d in total}
    order = [d for d, _ in mp["temporal_ordering"]]
    # pixels innermost, filters (column folds) outermost
    assert order == sorted(order, key=["OX", "OY", "FX", "FY", "C", "K"].index)
    if "K" in order:
        assert order[-1] == "K"


def test_zigzag_conv1_rows_take_c_and_fx(bench, net):
    sp = bench.zigzag_spatial(net["conv1"], CFG)
    assert sp["D1"] == [("C", 3), ("FX", 7)] and sp["D2"] == [("K", 32)]


def test_zigzag_accelerator_carries_our_sizes_and_energies(bench):
    acc = bench.zigzag_accelerator(CFG, RATES)
    mems = acc["memories"]
    lanes = port_lanes(CFG)
    wb = WORD_BITS[CFG.word]
    assert acc["operational_array"]["sizes"] == [CFG.rows, CFG.cols]
    assert acc["operational_array"]["unit_energy"] == pytest.approx(RATES.mac)
    for mem, kb, lane, bits, r, w in (("ifmap_sram", CFG.ifmap_sram_kb, "ifmap", wb, RATES.ifmap, RATES.ifmap_write),
                                      ("filter_sram", CFG.filter_sram_kb, "filter", wb, RATES.filter,
                                       RATES.filter_write),
                                      ("ofmap_sram", CFG.ofmap_sram_kb, "ofmap", ACC_BITS, RATES.ofmap,
                                       RATES.ofmap_write)):
        m = mems[mem]
        assert m["size"] == int(kb * 8192)
        width = {p["bandwidth_max"] for p in m["ports"]}
        assert width == {lanes[lane] * bits}
        assert {p["bandwidth_min"] for p in m["ports"]} == {wb}
        # one access of the port costs lanes x our per-word (per-psum) energy
        assert m["r_cost"] / lanes[lane] == pytest.approx(r)
        assert m["w_cost"] / lanes[lane] == pytest.approx(w)
    assert mems["w_reg"]["r_cost"] == 0 and mems["w_reg"]["served_dimensions"] == []
    dram = mems["dram"]
    bits = int(CFG.dram_bytes_per_cycle * 8)
    assert dram["r_cost"] == pytest.approx(RATES.dram_bit * bits) and dram["ports"][0]["bandwidth_max"] == bits
    assert set(dram["operands"]) == {"I1", "I2", "O"}
    assert yaml.safe_load(yaml.safe_dump(acc)) == acc


def test_scalesim_cfg_round_trips(bench, tmp_path):
    text = bench.scalesim_v3_cfg(CFG)
    cp = configparser.ConfigParser()
    cp.read_string(text)
    assert cp["run_presets"]["InterfaceBandwidth"] == "USER"
    words = int(CFG.dram_bytes_per_cycle / CFG.word_bytes)
    assert int(cp["layout"]["IfmapSRAMBankBandwidth"]) == words == int(cp["layout"]["FilterSRAMBankBandwidth"])
    for sec in ("general", "architecture_presets", "layout", "sparsity", "run_presets"):
        assert cp.has_section(sec)
    path = tmp_path / "v3.cfg"
    path.write_text(text)
    back = load_scalesim_cfg(path)   # our reader ignores the v3-only sections
    for f in ("rows", "cols", "dataflow", "ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb",
              "dram_bytes_per_cycle"):
        assert getattr(back, f) == getattr(CFG, f), f


@pytest.mark.parametrize("name", ["conv1", "layer2.0.conv1", "layer2.0.downsample.0", "fc"])
def test_scalesim_topology_round_trips(bench, net, tmp_path, name):
    layer = net[name]
    text = bench.scalesim_topology(layer, tmp_path / "t.csv")
    assert text.splitlines()[1].endswith(",")
    (back,) = read_scalesim_csv(tmp_path / "t.csv")
    assert (back.gemm_m, back.gemm_n, back.gemm_k) == (layer.gemm_m, layer.gemm_n, layer.gemm_k)


def test_ours_rows_match_simulate(bench, net, tmp_path):
    layers = [net["conv1"], net["layer1.0.conv1"]]
    bench.write_scalesim_csv(layers, tmp_path / "t.csv")
    rows = bench.ours_rows(layers, CFG, read_scalesim_csv(tmp_path / "t.csv"))
    ref = simulate(layers, CFG)
    for row, r in zip(rows, ref.rows):
        assert row["cycles"] == r["dense_cycles"]
        assert row["energy_pj"]["total"] == pytest.approx(r["dense_energy_pj"])
        assert row["compat_compute_cycles"] == row["compute_cycles"] - 1   # WS: SCALE-Sim's last-cycle index
        c = row["counts"]
        assert c["dram_bytes"] == pytest.approx(c["dram_ifmap_bytes"] + c["dram_filter_bytes"] + c["dram_ofmap_bytes"])


def _zz_raw(mem_energy=10.0):
    dirs = ("rd_out_to_low", "wr_in_by_low", "rd_out_to_high", "wr_in_by_high")

    def level(op, lvl, mem, acc, bw, prec, pj):
        return {"operand": op, "level": lvl, "memory": mem,
                "word_accesses": {d: acc.get(d, 0) for d in dirs}, "max_bw_bits": {d: bw for d in dirs},
                "precision_bits": {d: prec.get(d, 0) for d in dirs}, "energy_pj": {d: pj.get(d, 0.0) for d in dirs},
                "elem_counts": {d: acc.get(d, 0) * bw / max(prec.get(d, 1), 1) for d in dirs}}
    return {"status": "ok", "energy_total_pj": 100.0 + 3 * mem_energy, "mac_energy_pj": 100.0,
            "latency_total": 50.0, "ideal_cycle": 20.0, "ideal_temporal_cycle": 30.0, "stall_slack": 10.0,
            "onloading": 5.0, "offloading": 4.0, "systolic_drain": 1.0, "loop_ordering": "loops",
            "levels": [
                level("I", 0, "ifmap_sram", {"rd_out_to_low": 4, "wr_in_by_high": 1}, 256, {"rd_out_to_low": 8,
                      "wr_in_by_high": 8}, {"rd_out_to_low": mem_energy}),
                level("I", 1, "dram", {"rd_out_to_low": 1}, 256, {"rd_out_to_low": 8}, {"rd_out_to_low": mem_energy}),
                level("O", 0, "ofmap_sram", {"wr_in_by_low": 2, "rd_out_to_low": 1}, 1024,
                      {"wr_in_by_low": 32, "rd_out_to_low": 32}, {"wr_in_by_low": mem_energy}),
            ]}


def test_zigzag_summary_counts_and_energy(bench):
    s = bench.zigzag_summary(_zz_raw())
    assert s["energy_pj"]["ifmap_sram"] == 10.0 and s["energy_pj"]["dram"] == 10.0 and s["energy_pj"]["mac"] == 100.0
    c = s["counts"]
    assert c["ifmap_sram.I.rd_out_to_low.values"] == 4 * 256 / 8
    assert c["ofmap_sram.O.wr_in_by_low.values"] == 2 * 1024 / 32
    assert bench.zz_count(c, "dram.I.*.bytes") == 256 / 8
    assert bench.zz_count(c, "dram.O.*.bytes") == 0.0
    assert bench.zigzag_summary({"status": "error", "error": "boom"}) == {"status": "error", "error": "boom"}


def _record(bench, name, scale):
    ours = {"compute_cycles": 100 * scale, "stall_cycles": 10, "cycles": 100 * scale + 10,
            "compat_compute_cycles": 100 * scale - 1, "macs": 1000 * scale,
            "energy_pj": {"mac": 1e6 * scale, "idle": 1e3, "gate": 0.0, "ifmap_sram": 2e6, "filter_sram": 1e5,
                          "ofmap_sram": 3e6, "gather_buffer": 0.0, "dram": 4e6, "total": 1e7},
            "counts": {k: 100.0 * scale for k in ("ifmap_sram_reads", "filter_sram_reads", "ofmap_sram_writes",
                                                  "ofmap_sram_reads", "ifmap_sram_fills", "filter_sram_fills",
                                                  "ofmap_sram_drains", "dram_ifmap_bytes", "dram_filter_bytes",
                                                  "dram_ofmap_bytes", "dram_bytes")}}
    ss = {"status": "ok", "compute_cycles": 99 * scale, "stall_cycles": 5, "total_cycles": 99 * scale + 5,
          "total_cycles_incl_prefetch": 99 * scale + 9,
          "counts": {"ifmap_sram_reads": 100.0, "filter_sram_reads": 10.0, "ofmap_sram_writes": 100.0,
                     "dram_ifmap_bytes": 300.0, "dram_filter_bytes": 10.0, "dram_ofmap_bytes": 100.0},
          "energy_pj_our_rates": {"ifmap_sram": 2e6, "filter_sram": 1e5, "ofmap_sram": 1e6, "dram": 5e6}}
    return {"layer": name, "ours": ours, "scalesim": ss, "zigzag": bench.zigzag_summary(_zz_raw(1e6)),
            "gemm": {"m": 49, "n": 64, "k": 576, "ifmap_words": 1000, "filter_words": 5, "ofmap_words": 100},
            "shape": "test", "zigzag_temporal": [["OX", 7], ["OY", 7], ["FX", 3], ["FY", 3], ["C", 2]]}


def test_tables_and_totals(bench):
    recs = [_record(bench, "a", 1), _record(bench, "b", 2)]
    tot = bench.total_record(recs)
    assert tot["ours"]["cycles"] == 110 + 210 and tot["scalesim"]["status"] == "ok"
    assert tot["zigzag"]["energy_pj"]["mac"] == 200.0
    cyc = bench.cycles_table(recs + [tot])
    assert cyc.count("\n") == 1 + 3 and "**total**" in cyc and "320" in cyc
    en = bench.energy_table(tot, "note")
    assert "| ifmap SRAM | 4.00 | 2.00 | 0.50 | 4.00 |" in en     # ours 2x2e6 pJ, ZigZag 2x1e6 pJ
    assert "| MAC | 3.00 | 0.00 | 0.00 | – |" in en
    assert "what both model" in en and "| idle PE slots |" in en
    cnt = bench.counts_table(tot)
    assert "ifmap SRAM reads to the array (words)" in cnt
    # a tool missing on one layer gives no totals for it
    recs[1]["zigzag"] = {"status": "error", "error": "x"}
    tot2 = bench.total_record(recs)
    assert tot2["zigzag"]["status"] == "partial" and "b" in tot2["zigzag"]["error"]
    assert "partial" in bench.cycles_table([tot2])


def test_explanations_use_run_numbers(bench):
    recs = [_record(bench, "a", 1), _record(bench, "b", 2)]
    tot = bench.total_record(recs)
    text = "\n".join(bench.explain_gaps(recs, tot, RATES, CFG))
    for key in ("Ranking", "Partial sums", "read-back", "Row folds", "ifmap refetch", "Cycles", "SCALE-Sim v3"):
        assert key in text
    assert "| layer |" in bench.psum_table(recs, CFG)
