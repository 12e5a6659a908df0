"""Energy from action counts, ASIC area/power and FPGA resource fit.

Energy = sum over actions of (count x energy per action), Accelergy style: MACs by word width,
clock-gated PE slots, gate compares, SRAM accesses by buffer size, DRAM bits.  All constants
come from :mod:`accel_sim.cost_tables`; on-chip numbers scale with the node, DRAM does not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from accel_sim.config import AccelConfig
from accel_sim.cost_tables import FPGA_PARTS, value

WORD_BITS = {"int8": 8, "int16": 16, "fp16": 16}
ACC_BITS = int(value("psum_bits"))
#: energy parts of :func:`energy_pj`, in the order reports print them
ENERGY_PARTS = ("mac", "idle", "gate", "ifmap_sram", "filter_sram", "ofmap_sram", "gather_buffer", "dram")


def _loglog(x: float, points: list[tuple[float, float]]) -> float:
    """Piecewise log-log interpolation, extrapolating with the nearest segment's slope."""
    lx = [math.log(p[0]) for p in points]
    ly = [math.log(p[1]) for p in points]
    t = math.log(x)
    i = 0 if t <= lx[1] else min(len(points) - 2, max(j for j in range(len(points) - 1) if lx[j] <= t))
    slope = (ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i])
    return math.exp(ly[i] + slope * (t - lx[i]))


def node_scale(nm: int) -> tuple[float, float]:
    """(energy factor, area factor) from 45 nm to ``nm`` (Stillmaker & Baas anchors)."""
    energy = _loglog(nm, [(16, value("energy_scale_45_to_16")), (28, value("energy_scale_45_to_28")),
                          (45, 1.0)])
    area = _loglog(nm, [(20, value("area_scale_45_to_20")), (32, value("area_scale_45_to_32")), (45, 1.0)])
    return energy, area


def mac_energy_pj(word: str) -> float:
    """One MAC at 45 nm: multiply + accumulate + the three PE registers it touches."""
    mult = value(f"mult_{word}_pj")
    add = value("add_fp32_pj") if word == "fp16" else value("add_int32_pj")
    regs = (2 * WORD_BITS[word] + ACC_BITS) * value("reg_bit_pj")
    return mult + add + regs


def sram_bits_pj(kb: float, bits: float) -> float:
    """Energy of one ``bits``-wide access of an SRAM of ``kb`` KiB at 45 nm (64-bit energy pro rata)."""
    e64 = _loglog(kb, [(8, value("sram_8kb_64b_pj")), (32, value("sram_32kb_64b_pj")),
                       (1024, value("sram_1mb_64b_pj"))])
    return e64 * bits / 64


def sram_word_pj(kb: float, word: str) -> float:
    """Energy of one operand-word access of an SRAM of ``kb`` KiB at 45 nm."""
    return sram_bits_pj(kb, WORD_BITS[word])


@dataclass(frozen=True)
class EnergyRates:
    """Per-action energies (pJ) for one config, node-scaled."""

    mac: float
    gated_slot: float
    compare: float
    ifmap: float
    filter: float
    ofmap: float          # one partial-sum access (ACC_BITS wide): the ofmap SRAM holds psums
    gather: float         # one operand word of the gather window (accel_sim.gating.gather_window)
    dram_bit: float

    @classmethod
    def for_config(cls, cfg: AccelConfig) -> "EnergyRates":
        e, _ = node_scale(cfg.tech_nm)
        mac = mac_energy_pj(cfg.word) * e
        return cls(mac=mac, gated_slot=mac * value("gated_mac_fraction"),
                   compare=value("compare_pj") * e,
                   ifmap=sram_word_pj(cfg.ifmap_sram_kb, cfg.word) * e,
                   filter=sram_word_pj(cfg.filter_sram_kb, cfg.word) * e,
                   ofmap=sram_bits_pj(cfg.ofmap_sram_kb, ACC_BITS) * e,
                   gather=sram_word_pj(max(cfg.gather_buffer_kb, 1e-3), cfg.word) * e,
                   dram_bit=value(f"dram_{cfg.dram_type}_pj_bit"))


def energy_pj(rates: EnergyRates, cfg: AccelConfig, *, macs, cycles, compares, ifmap_sram, filter_sram,
              ofmap_sram, dram_bytes, gather=0) -> dict[str, np.ndarray]:
    """Energy breakdown (pJ) per layer, keys :data:`ENERGY_PARTS` plus ``total`` (their sum).

    Idle PE-cycles (fill, drain, unmapped, gated) are charged at the clock-gated MAC rate;
    ``ofmap_sram`` counts partial-sum accesses, charged at ACC_BITS; ``gather`` counts
    gather-window accesses.
    """
    f = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    macs = f(macs)
    idle = np.maximum(f(cycles) * cfg.rows * cfg.cols - macs, 0.0)
    parts = {
        "mac": macs * rates.mac,
        "idle": idle * rates.gated_slot,
        "gate": f(compares) * rates.compare,
        "ifmap_sram": f(ifmap_sram) * rates.ifmap,
        "filter_sram": f(filter_sram) * rates.filter,
        "ofmap_sram": f(ofmap_sram) * rates.ofmap,
        "gather_buffer": f(gather) * rates.gather,
        "dram": f(dram_bytes) * 8 * rates.dram_bit,
    }
    parts["total"] = sum(parts[k] for k in ENERGY_PARTS)
    return parts


def asic_area_mm2(cfg: AccelConfig) -> dict[str, float]:
    """PE array (multiplier, adder, pipeline registers) plus the three SRAMs and the WS gather
    window (part of the gated hardware), node-scaled."""
    _, a = node_scale(cfg.tech_nm)
    wb = WORD_BITS[cfg.word]
    add = value("area_add_fp32_um2") if cfg.word == "fp16" else value("area_add_int32_um2")
    pe = value(f"area_mult_{cfg.word}_um2") + add + (2 * wb + ACC_BITS) * value("area_dff_um2")
    sram_kb = cfg.ifmap_sram_kb + cfg.filter_sram_kb + cfg.ofmap_sram_kb + cfg.gather_buffer_kb
    sram = sram_kb * 8192 * value("area_sram_bit_um2") / value("sram_array_efficiency")
    array = cfg.rows * cfg.cols * pe
    return {"array_mm2": array * a / 1e6, "sram_mm2": sram * a / 1e6, "total_mm2": (array + sram) * a / 1e6}


def asic_power_w(cfg: AccelConfig, energy_pj_total: float, cycles: float, area_mm2: float) -> dict[str, float]:
    """Average dynamic power over the run plus an area-proportional leakage estimate."""
    seconds = cycles / (cfg.clock_mhz * 1e6)
    dynamic = energy_pj_total * 1e-12 / seconds if seconds > 0 else 0.0
    leak = value("leakage_w_per_mm2") * area_mm2
    return {"dynamic_w": dynamic, "leakage_w": leak, "total_w": dynamic + leak}


def fpga_resources(cfg: AccelConfig) -> dict[str, object]:
    """DSP, LUT, FF and BRAM18K use of the array and buffers, and fit on the named parts."""
    pes = cfg.rows * cfg.cols
    wb = WORD_BITS[cfg.word]
    dsp = math.ceil(pes / value(f"fpga_macs_per_dsp_{cfg.word}"))
    lut = int(pes * value("fpga_lut_per_pe"))
    ff = pes * (2 * wb + ACC_BITS)
    bram = 0
    # each buffer is as wide as the array edge it feeds, so one word per lane per cycle
    for kb, lanes, bits in ((cfg.ifmap_sram_kb, cfg.rows, wb), (cfg.filter_sram_kb, cfg.cols, wb),
                            (cfg.ofmap_sram_kb, cfg.cols, ACC_BITS)):
        width = lanes * bits
        depth = math.ceil(kb * 8192 / width)
        bram += math.ceil(width / value("fpga_bram18_width_bits")) * math.ceil(depth / value("fpga_bram18_depth"))
    cap = value("fpga_max_util")
    fits = {}
    for part, res in FPGA_PARTS.items():
        util = {"dsp": dsp / res["dsp"], "bram18": bram / res["bram18"], "lut": lut / res["lut"],
                "ff": ff / res["ff"]}
        fits[part] = {"fits": all(u <= cap for u in util.values()),
                      **{f"{k}_util": round(v, 4) for k, v in util.items()}}
    return {"dsp": dsp, "lut": lut, "ff": ff, "bram18": bram, "clock_mhz": cfg.fpga_clock_mhz,
            "peak_gops": 2 * pes * cfg.fpga_clock_mhz / 1e3, "parts": fits}
