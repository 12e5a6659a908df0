"""Issue 16 items 3 and 5: batch size, leakage energy, the sweep's documented CSV and labelled plot."""
import csv

import numpy as np
import pytest

from accel_sim import AccelConfig, GateSpec, build_network, simulate
from accel_sim.__main__ import main
from accel_sim.cost import EnergyRates, asic_area_mm2, leakage_w
from accel_sim.cost_tables import value
from accel_sim.gating import draw_mask
from accel_sim.sweep import SWEEP_COLUMNS, run_sweep, write_sweep_csv
from accel_sim.topology import conv, linear, with_batch


def test_batch_scales_the_gemm_not_the_filters():
    """Batch B: M, ifmap and ofmap grow B times, filters do not; a linear layer becomes a real
    GEMM (M = B); the dense cycles of B images on OS equal one image of a B-times-taller map
    where the folds line up."""
    c = conv("c", 16, 32, 3, (8, 8))
    b = with_batch([c, linear("fc", 64, 10)], 4)
    assert (b[0].gemm_m, b[0].ifmap_words, b[0].ofmap_words, b[0].filter_words) == \
           (4 * 64, 4 * c.ifmap_words, 4 * c.ofmap_words, c.filter_words)
    assert b[1].gemm_m == 4 and b[0].macs == 4 * c.macs
    tall = conv("t", 16, 32, 3, (32, 8))                 # 32x8 output = 256 pixels, like 4 x 8x8
    cfg = AccelConfig(dataflow="os", rows=16, cols=16)
    assert simulate(b[:1], cfg).rows[0]["dense_compute_cycles"] == simulate([tall], cfg).rows[0]["dense_compute_cycles"]
    with pytest.raises(ValueError, match="layer c: batch must be an integer >= 1, got 0"):
        with_batch([c], 0)


def test_batch_tile_masks_are_per_image():
    layer = with_batch([conv("c", 16, 16, 3, (7, 7))], 3)[0]
    m = draw_mask(layer, GateSpec(4, np.full(16, 0.5), False, 16, (4, 4)), np.random.default_rng(2))
    m = m.reshape(3, 7, 7, 16)
    for img in range(3):   # every image has its own 4x4 blocks (ragged at the 7x7 edge)
        assert all((m[img, r:r + 4, c:c + 4] == m[img, r, c]).all() for r in (0, 4) for c in (0, 4))
    assert not all((m[i] == m[0]).all() for i in (1, 2))   # independent draws per image


def test_filters_amortised_over_the_batch_save_energy_per_image():
    net = build_network("resnet20", (1, 28, 28))
    one = simulate(net, AccelConfig()).totals
    eight = simulate(with_batch(net, 8), AccelConfig()).totals
    assert eight["dense_dram_bytes"] < 8 * one["dense_dram_bytes"]
    assert eight["dense_energy_pj"] < 8 * one["dense_energy_pj"]
    assert eight["macs"] == 8 * one["macs"]


def test_leakage_is_charged_per_cycle_of_the_run():
    """Static energy = chip leakage x (compute + stall cycles) / clock; a gated run that ends
    sooner leaks less; power reports dynamic energy only as dynamic."""
    cfg = AccelConfig(dram_bytes_per_cycle=4.0)
    rates = EnergyRates.for_config(cfg)
    assert leakage_w(cfg) == pytest.approx(value("leakage_w_per_mm2") * asic_area_mm2(cfg)["total_mm2"])
    assert rates.static == pytest.approx(leakage_w(cfg) / (cfg.clock_mhz * 1e6) * 1e12)
    res = simulate(build_network("resnet18", (3, 64, 64)), cfg)
    for r in res.rows:
        assert r["dense_energy_static_pj"] == pytest.approx(r["dense_cycles"] * rates.static, rel=1e-12)
    assert any(r["dense_stall_cycles"] > 0 for r in res.rows)
    t = res.totals
    dyn = t["energy_pj"] - t["energy_breakdown_pj"]["static"]
    seconds = t["gated_cycles"] / (cfg.clock_mhz * 1e6)
    assert res.hardware["asic_power_w"]["dynamic_w"] == pytest.approx(dyn * 1e-12 / seconds)


def test_sweep_csv_documents_every_column_and_batch(tmp_path):
    rows = run_sweep("resnet20", ["8x8"], ["os"], [64.0], [1.0, 0.5], chw=(1, 28, 28), progress=False,
                     workers=1, batch=2)
    path = tmp_path / "s.csv"
    doc = write_sweep_csv(rows, path)
    with path.open() as fh:
        got = list(csv.DictReader(fh))
    assert list(got[0]) == list(SWEEP_COLUMNS) and {r["batch"] for r in got} == {"2"}
    text = doc.read_text()
    for col, meaning in SWEEP_COLUMNS.items():
        assert f"| `{col}` | {meaning} |" in text and meaning
    one = run_sweep("resnet20", ["8x8"], ["os"], [64.0], [1.0], chw=(1, 28, 28), progress=False, workers=1)
    assert got[0]["dense_cycles"] != str(one[0]["dense_cycles"])
    assert float(got[1]["energy_ratio"]) == pytest.approx(float(got[1]["energy_pj"]) / float(got[1]["dense_energy_pj"]),
                                                          abs=1e-4)


def test_sweep_cli_batch_plot_and_bad_batch(tmp_path, capsys):
    csv_path, png = tmp_path / "s.csv", tmp_path / "p.png"
    assert main(["sweep", "resnet20", "--input", "1x28x28", "--arrays", "8x8,16x16", "--dataflows", "os,ws",
                 "--sram-kb", "64", "--densities", "1.0,0.35", "--workers", "1", "--batch", "2",
                 "--csv", str(csv_path), "--plot", str(png)]) == 0
    assert png.stat().st_size > 10_000 and (tmp_path / "s.csv.md").exists()
    assert "columns described in" in capsys.readouterr().out
    assert main(["run", "resnet20", "--input", "1x28x28", "--batch", "0"]) == 2
    assert "--batch: expected an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["run", "resnet20", "--input", "1x28x28", "--batch", "4", "--density", "0.5", "--json"]) == 0
    assert main(["tables"]) == 0
    assert "SRAM per access by capacity and port width: CACTI 7" in capsys.readouterr().out
