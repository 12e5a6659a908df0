"""Memory traffic bounds and stalls; cost tables and their use."""
import numpy as np
import pytest

from accel_sim.config import AccelConfig
from accel_sim.cost import (asic_area_mm2, fpga_resources, mac_energy_pj, node_scale, sram_access_pj, sram_area_mm2,
                            sram_word_pj)
from accel_sim.cost_tables import FPGA_PARTS, SRAM_CACTI, SRAM_CACTI_SOURCE, TABLE
from accel_sim.memory import dram_words, stall_cycles
from accel_sim.topology import conv


def _traffic(cfg, layer):
    return [float(x) for x in dram_words(cfg, layer.gemm_m, layer.gemm_n, layer.gemm_k, layer.groups,
                                         layer.ifmap_words, layer.filter_words, layer.ofmap_words)]


def test_big_srams_fetch_each_operand_once():
    l = conv("c", 64, 128, 3, (28, 28))
    for df in ("os", "ws", "is"):
        cfg = AccelConfig(dataflow=df, ifmap_sram_kb=4096, filter_sram_kb=4096, ofmap_sram_kb=4096)
        assert _traffic(cfg, l) == [l.ifmap_words, l.filter_words, l.ofmap_words]
    # unique words, not im2col-expanded: the 3x3 window does not multiply ifmap traffic
    assert l.ifmap_words == 64 * 28 * 28


def test_small_srams_refetch_by_fold_count():
    l = conv("c", 64, 128, 3, (28, 28))     # WS: S_R=576 (18 row folds), S_C=128 (4 col folds)
    cfg = AccelConfig(dataflow="ws", ifmap_sram_kb=8, filter_sram_kb=8, ofmap_sram_kb=8)
    i, f, o = _traffic(cfg, l)
    assert i == l.ifmap_words * 4
    assert f == l.filter_words
    assert o == l.ofmap_words * (2 * 18 - 1)
    bigger = _traffic(cfg.replace(ofmap_sram_kb=1024), l)
    assert bigger[2] == l.ofmap_words


def test_stalls_double_buffering():
    cfg = AccelConfig(dram_bytes_per_cycle=10)
    # 1000 compute cycles over 10 folds; 5000 bytes -> 500 transfer cycles: only the first fold shows
    assert float(stall_cycles(cfg, 1000, 5000, 10)) == 50
    # transfer-bound: 30000 bytes -> 3000 cycles: time = 300 + 2700, stall = 2000
    assert float(stall_cycles(cfg, 1000, 30000, 10)) == 2000
    assert float(stall_cycles(cfg.replace(double_buffer=False), 1000, 5000, 10)) == 500


def test_every_constant_has_a_source_and_unit():
    for key, c in TABLE.items():
        assert c.value > 0 and c.unit and len(c.source) > 10, key
    for part, res in FPGA_PARTS.items():
        assert {"dsp", "bram18", "lut", "ff", "source"} <= set(res), part


def test_energy_and_scaling_follow_the_table():
    assert node_scale(45) == pytest.approx((1.0, 1.0))
    assert node_scale(28)[0] == pytest.approx(0.51)
    assert node_scale(16)[0] == pytest.approx(0.17)
    assert node_scale(32)[1] == pytest.approx(0.46)
    assert node_scale(65)[0] > 1.0
    regs = (8 + 8 + 32) * TABLE["reg_bit_pj"].value
    assert mac_energy_pj("int8") == pytest.approx(0.2 + 0.1 + regs)
    assert mac_energy_pj("int16") > mac_energy_pj("int8")


def test_sram_energy_by_capacity_and_port_width():
    """CACTI grid points are returned exactly; between them the log-log interpolation stays
    between its neighbours; a wider port shares its access energy over more words."""
    assert "CACTI 7" in SRAM_CACTI_SOURCE and len(SRAM_CACTI) >= 60
    for (kb, bits), (rd, wr, area, _) in SRAM_CACTI.items():
        assert sram_access_pj(kb, bits) == pytest.approx(rd, rel=1e-9)
        assert sram_access_pj(kb, bits, "write") == pytest.approx(wr, rel=1e-9)
        assert sram_area_mm2(kb, bits) == pytest.approx(area, rel=1e-9)
    lo, hi = SRAM_CACTI[(64, 256)][0], SRAM_CACTI[(128, 256)][0]
    assert min(lo, hi) < sram_access_pj(96, 256) < max(lo, hi)
    # 128 KiB: per-bit read energy falls from a 32-bit to a 256-bit port (decoder, word lines shared)
    assert SRAM_CACTI[(128, 256)][0] / 256 < SRAM_CACTI[(128, 32)][0] / 32
    assert sram_word_pj(128, 32, 8) == pytest.approx(SRAM_CACTI[(128, 256)][0] / 32)
    # capacity still costs: 1 MiB per word above 8 KiB at the same port
    assert sram_word_pj(8, 8, 8) < sram_word_pj(1024, 8, 8)
    with pytest.raises(KeyError):
        sram_access_pj(8, 64, "erase")


def test_area_and_fpga_fit():
    cfg = AccelConfig()
    a = asic_area_mm2(cfg)
    pe = 282 + 137 + 48 * 4.52
    assert a["array_mm2"] == pytest.approx(1024 * pe / 1e6)
    assert asic_area_mm2(cfg.replace(tech_nm=28))["total_mm2"] < a["total_mm2"]
    f = fpga_resources(cfg)
    assert f["dsp"] == 512 and f["ff"] == 1024 * 48
    assert not f["parts"]["xc7z020 (PYNQ-Z2)"]["fits"]        # 512 DSP > 220
    assert f["parts"]["xcvu9p (VCU118)"]["fits"]
    assert not fpga_resources(cfg.replace(rows=128, cols=128))["parts"]["xczu7ev (ZCU104)"]["fits"]
