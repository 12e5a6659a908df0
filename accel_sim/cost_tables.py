"""Every cost constant of the simulator, with its source.  Nothing else in accel_sim holds one.

Energies and areas are at 45 nm (the node of the Horowitz table) and are scaled to the
configured node by :func:`accel_sim.cost.node_scale`.  "[recalled]" marks a number taken from
memory of the cited paper or datasheet rather than from a stored copy; check before quoting.
"""
from __future__ import annotations

from typing import NamedTuple


class Const(NamedTuple):
    value: float
    unit: str
    source: str


HOROWITZ = "Horowitz, 'Computing's energy problem', ISSCC 2014, 45 nm 0.9 V"
ACCELERGY_CACTI = "Accelergy-Project/accelergy-cacti-plug-in: cacti_wrapper.py (CactiDRAM pJ/bit)"
STILLMAKER = ("Stillmaker & Baas, 'Scaling equations...', Integration 2017, as implemented in "
              "Accelergy-Project/hwcomponents: scaling/techscaling.py")

TABLE: dict[str, Const] = {
    # ---- compute, 45 nm (pJ per operation) ----
    "mult_int8_pj": Const(0.2, "pJ", HOROWITZ),
    "mult_int16_pj": Const(0.8, "pJ", "8 b mult x4: multipliers scale quadratically with width "
                                      "(Accelergy Aladdin plug-in rule) applied to " + HOROWITZ),
    "mult_fp16_pj": Const(1.1, "pJ", HOROWITZ),
    "add_int32_pj": Const(0.1, "pJ", HOROWITZ + " (32 b accumulator for int8/int16)"),
    "add_fp32_pj": Const(0.9, "pJ", HOROWITZ + " (fp32 accumulator for fp16)"),
    "gated_mac_fraction": Const(0.032, "x MAC", "Sparseloop ERT mac_gated 0.018 / mac_random 0.561 pJ: "
                                "Accelergy-Project/micro22-sparseloop-artifact ERT_summary.yaml"),
    "psum_bits": Const(32.0, "bits", "partial-sum width: int32 accumulator for int8/int16 operands, "
                       "fp32 for fp16; ofmap-SRAM and psum-spill traffic is charged at this width"),
    "compare_pj": Const(0.1, "pJ", "one 32 b compare ~ a 32 b add, " + HOROWITZ),
    "reg_bit_pj": Const(0.009, "pJ/bit", "Aladdin register 0.009 pJ per bit-access (40 nm), "
                        "Accelergy-Project/accelergy-aladdin-plug-in: aladdin_table.py"),
    # ---- SRAM, 45 nm (pJ per 64-bit read; writes charged the same) ----
    "sram_8kb_64b_pj": Const(10.0, "pJ", HOROWITZ),
    "sram_32kb_64b_pj": Const(20.0, "pJ", HOROWITZ + " [recalled]"),
    "sram_1mb_64b_pj": Const(100.0, "pJ", HOROWITZ + " [recalled]"),
    # ---- DRAM (pJ per bit; interface energy, node independent) ----
    "dram_lpddr4_pj_bit": Const(8.0, "pJ/bit", ACCELERGY_CACTI),
    "dram_ddr3_pj_bit": Const(70.0, "pJ/bit", ACCELERGY_CACTI),
    "dram_gddr5_pj_bit": Const(14.0, "pJ/bit", ACCELERGY_CACTI),
    "dram_hbm2_pj_bit": Const(3.9, "pJ/bit", ACCELERGY_CACTI),
    # ---- area, 45 nm ----
    "area_mult_int8_um2": Const(282.0, "um^2", HOROWITZ + " [recalled]"),
    "area_mult_int16_um2": Const(1128.0, "um^2", "8 b mult area x4 (quadratic in width), " + HOROWITZ),
    "area_mult_fp16_um2": Const(1640.0, "um^2", HOROWITZ + " [recalled]"),
    "area_add_int32_um2": Const(137.0, "um^2", HOROWITZ + " [recalled]"),
    "area_add_fp32_um2": Const(4184.0, "um^2", HOROWITZ + " [recalled]"),
    "area_dff_um2": Const(4.52, "um^2/bit", "NanGate FreePDK45 Open Cell Library DFF_X1 [recalled]"),
    "area_sram_bit_um2": Const(0.346, "um^2/bit", "Intel 45 nm 6T bitcell, Mistry et al. IEDM 2007 [recalled]"),
    "sram_array_efficiency": Const(0.6, "fraction", "assumed cell-area / macro-area (periphery overhead); "
                                   "typical CACTI macros at 45 nm are 50-70 % [assumption]"),
    "leakage_w_per_mm2": Const(0.02, "W/mm^2", "assumed static power density at 45 nm, "
                               "order of magnitude only [assumption]"),
    # ---- technology scaling relative to 45 nm ----
    "energy_scale_45_to_28": Const(0.51, "x", STILLMAKER),
    "energy_scale_45_to_16": Const(0.17, "x", STILLMAKER),
    "area_scale_45_to_32": Const(0.46, "x", STILLMAKER),
    "area_scale_45_to_20": Const(0.21, "x", STILLMAKER),
    # ---- FPGA (Xilinx UltraScale+ DSP48E2) ----
    "fpga_macs_per_dsp_int8": Const(2.0, "MAC/DSP", "Xilinx WP486 INT8 packing on DSP48E2 (shared operand)"),
    "fpga_macs_per_dsp_int16": Const(1.0, "MAC/DSP", "DSP48E2 27x18 multiplier, one int16 MAC"),
    "fpga_macs_per_dsp_fp16": Const(0.5, "MAC/DSP", "typical HLS fp16 mul+add ~2 DSP [unverified]"),
    "fpga_lut_per_pe": Const(30.0, "LUT", "operand muxing and control per PE [assumption; calibrate]"),
    "fpga_bram18_width_bits": Const(36.0, "bits", "BRAM18K as 512 x 36; UCLA-VAST/AutoSA odyssey resource model"),
    "fpga_bram18_depth": Const(512.0, "words", "BRAM18K as 512 x 36; UCLA-VAST/AutoSA odyssey resource model"),
    "fpga_max_util": Const(0.7, "fraction", "AutoSA caps resource use at 70 % (autosa_scripts/odyssey/cst/vu9p.json)"),
}

# Named FPGA parts: DSP slices, BRAM18K blocks, LUTs, flip-flops.
XILINX_PG = "Xilinx product tables [recalled]"
FPGA_PARTS: dict[str, dict[str, float | str]] = {
    "xc7z020 (PYNQ-Z2)": {"dsp": 220, "bram18": 280, "lut": 53_200, "ff": 106_400, "source": XILINX_PG},
    "xczu7ev (ZCU104)": {"dsp": 1_728, "bram18": 624, "lut": 230_400, "ff": 460_800, "source": XILINX_PG},
    "xcvu9p (VCU118)": {"dsp": 6_840, "bram18": 4_318, "lut": 1_182_240, "ff": 2_364_480,
                        "source": "DSP/BRAM: AutoSA vu9p.json; LUT/FF: " + XILINX_PG},
    "xcu250 (Alveo U250)": {"dsp": 12_288, "bram18": 5_376, "lut": 1_728_000, "ff": 3_456_000,
                            "source": XILINX_PG},
}


def value(key: str) -> float:
    """A constant by name (KeyError names the missing key)."""
    return TABLE[key].value
