"""Energy from action counts, ASIC area/power and FPGA resource fit.

Energy = sum over actions of (count x energy per action), Accelergy style: MACs by word width,
clock-gated PE slots, gate compares, SRAM reads and writes by buffer capacity and port width
(CACTI 7, :data:`accel_sim.cost_tables.SRAM_CACTI`), DRAM bits.  All constants
come from :mod:`accel_sim.cost_tables`; on-chip numbers scale with the node, DRAM does not.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from accel_sim.config import AccelConfig
from accel_sim.cost_tables import FPGA_PARTS, SRAM_CACTI, value

WORD_BITS = {"int8": 8, "int16": 16, "fp16": 16}
ACC_BITS = int(value("psum_bits"))
#: energy parts of :func:`energy_pj`, in the order reports print them
ENERGY_PARTS = ("mac", "idle", "gate", "ifmap_sram", "filter_sram", "ofmap_sram", "gather_buffer", "dram", "static")


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


def _cacti_column(bits: int, kb: float, field: int) -> float:
    """One port width's CACTI values interpolated over capacity (log-log)."""
    pts = sorted((c, v[field]) for (c, w), v in SRAM_CACTI.items() if w == bits)
    return _loglog(kb, pts)


def _cacti(kb: float, bits: float, field: int) -> float:
    """CACTI value (``field`` of :data:`SRAM_CACTI`) at any capacity and port width: log-log
    interpolation over capacity within each tabulated width, then over width; outside the grid
    the nearest segment's slope extrapolates."""
    widths = sorted({w for _, w in SRAM_CACTI})
    return _loglog(bits, [(w, _cacti_column(w, kb, field)) for w in widths])


def sram_access_pj(kb: float, bits: float, op: str = "read") -> float:
    """Energy (pJ, 45 nm) of one access of a ``bits``-wide port of an SRAM of ``kb`` KiB (CACTI)."""
    return _cacti(kb, bits, {"read": 0, "write": 1}[op])


def sram_area_mm2(kb: float, bits: float) -> float:
    """Macro area (mm^2, 45 nm) of an SRAM of ``kb`` KiB with a ``bits``-wide port (CACTI)."""
    return _cacti(kb, bits, 2)


def port_lanes(cfg: AccelConfig) -> dict[str, int]:
    """Operand words per access of each buffer: the array edge it feeds or drains in one cycle.

    OS/WS stream the ifmap into the R rows and load or stream filters along the C columns; IS
    loads the ifmap along the columns and streams filters into the rows; partial sums leave
    (and, for accumulation, re-enter) at the bottom edge, C wide.  The WS/OS gather window
    hands each column a pixel vector of R words.
    """
    rows_side = cfg.dataflow in ("os", "ws")
    return {"ifmap": cfg.rows if rows_side else cfg.cols, "filter": cfg.cols if rows_side else cfg.rows,
            "ofmap": cfg.cols, "gather": cfg.rows}


def sram_word_pj(kb: float, lanes: int, word_bits: int, op: str = "read") -> float:
    """Energy per operand word of an SRAM whose port moves ``lanes`` words of ``word_bits`` per
    access (an access energy shared by its lanes; an edge fold that uses fewer lanes is still
    charged per word, so this is a lower bound there)."""
    return sram_access_pj(kb, lanes * word_bits, op) / lanes


@dataclass(frozen=True)
class EnergyRates:
    """Per-action energies (pJ) for one config, node-scaled; SRAM rates per operand word (per
    partial sum for the ofmap SRAM) at the buffer's port width (:func:`port_lanes`)."""

    mac: float
    gated_slot: float
    compare: float
    ifmap: float          # one ifmap word read
    filter: float         # one filter word read
    ofmap: float          # one partial-sum read (ACC_BITS wide): the ofmap SRAM holds psums
    gather: float         # one operand word read from the gather window (accel_sim.gating.gather_window)
    dram_bit: float
    ifmap_write: float    # one word filled from DRAM
    filter_write: float
    ofmap_write: float    # one partial-sum write
    gather_write: float   # one word copied into the gather window
    static: float         # leakage of the whole chip per clock cycle (compute or stall)

    @classmethod
    def for_config(cls, cfg: AccelConfig) -> "EnergyRates":
        e, _ = node_scale(cfg.tech_nm)
        mac = mac_energy_pj(cfg.word) * e
        lanes, wb = port_lanes(cfg), WORD_BITS[cfg.word]
        gather_kb = max(cfg.gather_buffer_kb, 1e-3)

        def word(kb: float, lane: str, bits: int, op: str) -> float:
            return sram_word_pj(kb, lanes[lane], bits, op) * e

        return cls(mac=mac, gated_slot=mac * value("gated_mac_fraction"),
                   compare=value("compare_pj") * e,
                   ifmap=word(cfg.ifmap_sram_kb, "ifmap", wb, "read"),
                   filter=word(cfg.filter_sram_kb, "filter", wb, "read"),
                   ofmap=word(cfg.ofmap_sram_kb, "ofmap", ACC_BITS, "read"),
                   gather=word(gather_kb, "gather", wb, "read"),
                   dram_bit=value(f"dram_{cfg.dram_type}_pj_bit"),
                   ifmap_write=word(cfg.ifmap_sram_kb, "ifmap", wb, "write"),
                   filter_write=word(cfg.filter_sram_kb, "filter", wb, "write"),
                   ofmap_write=word(cfg.ofmap_sram_kb, "ofmap", ACC_BITS, "write"),
                   gather_write=word(gather_kb, "gather", wb, "write"),
                   static=leakage_w(cfg) * 1e12 / (cfg.clock_mhz * 1e6))


def energy_pj(rates: EnergyRates, cfg: AccelConfig, *, macs, cycles, compares, ifmap_sram, filter_sram,
              ofmap_reads, ofmap_writes, dram_words, gather=0, gather_fills=0, stall=0) -> dict[str, np.ndarray]:
    """Energy breakdown (pJ) per layer, keys :data:`ENERGY_PARTS` plus ``total`` (their sum).

    ``cycles`` are compute cycles and ``stall`` the DRAM stall cycles: the chip leaks through
    both (``static``), so a schedule that finishes sooner also saves leakage.
    Idle PE-cycles (fill, drain, unmapped, gated) are charged at the clock-gated MAC rate;
    ``ofmap_reads``/``ofmap_writes`` count partial-sum accesses; ``gather`` counts reads served
    by the gather window and ``gather_fills`` the words copied into it.  ``dram_words`` (ifmap,
    filter, ofmap, in operand words) moves through the SRAMs too: every ifmap and filter word
    fetched is written into its buffer once, and every ofmap word sent out is read from the
    ofmap SRAM (at operand width, one word per ACC_BITS/word-bits of a psum access).
    """
    f = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    macs = f(macs)
    d_if, d_fi, d_of = (f(w) for w in dram_words)
    out_read = rates.ofmap * WORD_BITS[cfg.word] / ACC_BITS
    idle = np.maximum(f(cycles) * cfg.rows * cfg.cols - macs, 0.0)
    parts = {
        "mac": macs * rates.mac,
        "idle": idle * rates.gated_slot,
        "gate": f(compares) * rates.compare,
        "ifmap_sram": f(ifmap_sram) * rates.ifmap + d_if * rates.ifmap_write,
        "filter_sram": f(filter_sram) * rates.filter + d_fi * rates.filter_write,
        "ofmap_sram": f(ofmap_reads) * rates.ofmap + f(ofmap_writes) * rates.ofmap_write + d_of * out_read,
        "gather_buffer": f(gather) * rates.gather + f(gather_fills) * rates.gather_write,
        "dram": (d_if + d_fi + d_of) * cfg.word_bytes * 8 * rates.dram_bit,
        "static": (f(cycles) + f(stall)) * rates.static,
    }
    parts["total"] = sum(parts[k] for k in ENERGY_PARTS)
    return parts


def asic_area_mm2(cfg: AccelConfig) -> dict[str, float]:
    """PE array (multiplier, adder, pipeline registers) plus the three SRAMs and the WS gather
    window (part of the gated hardware), node-scaled; SRAM macros from CACTI at their port width."""
    _, a = node_scale(cfg.tech_nm)
    wb = WORD_BITS[cfg.word]
    add = value("area_add_fp32_um2") if cfg.word == "fp16" else value("area_add_int32_um2")
    pe = value(f"area_mult_{cfg.word}_um2") + add + (2 * wb + ACC_BITS) * value("area_dff_um2")
    lanes = port_lanes(cfg)
    sram = sum(sram_area_mm2(kb, lanes[lane] * bits) for kb, lane, bits in (
        (cfg.ifmap_sram_kb, "ifmap", wb), (cfg.filter_sram_kb, "filter", wb),
        (cfg.ofmap_sram_kb, "ofmap", ACC_BITS)))
    if cfg.gather_buffer_kb > 0:
        sram += sram_area_mm2(cfg.gather_buffer_kb, lanes["gather"] * wb)
    array = cfg.rows * cfg.cols * pe / 1e6
    return {"array_mm2": array * a, "sram_mm2": sram * a, "total_mm2": (array + sram) * a}


def leakage_w(cfg: AccelConfig) -> float:
    """Static power of the chip: an area-proportional estimate (``leakage_w_per_mm2``)."""
    return value("leakage_w_per_mm2") * asic_area_mm2(cfg)["total_mm2"]


def asic_power_w(cfg: AccelConfig, dynamic_pj: float, cycles: float) -> dict[str, float]:
    """Average dynamic power over the run (``dynamic_pj``: energy without the static part)
    plus the leakage estimate."""
    seconds = cycles / (cfg.clock_mhz * 1e6)
    dynamic = dynamic_pj * 1e-12 / seconds if seconds > 0 else 0.0
    leak = leakage_w(cfg)
    return {"dynamic_w": dynamic, "leakage_w": leak, "total_w": dynamic + leak}


def fpga_resources(cfg: AccelConfig) -> dict[str, object]:
    """DSP, LUT, FF and BRAM18K use of the array and buffers, and fit on the named parts."""
    pes = cfg.rows * cfg.cols
    wb = WORD_BITS[cfg.word]
    dsp = math.ceil(pes / value(f"fpga_macs_per_dsp_{cfg.word}"))
    # per PE: measured on accel_sim.rtl (Yosys); an OS PE also holds its output shift-chain stage
    lut = int(pes * value("fpga_lut_per_pe_os" if cfg.dataflow == "os" else "fpga_lut_per_pe"))
    ff = pes * (2 * wb + ACC_BITS + (ACC_BITS if cfg.dataflow == "os" else 0))
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
