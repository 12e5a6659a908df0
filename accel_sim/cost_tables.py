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
    "leakage_w_per_mm2": Const(0.02, "W/mm^2", "assumed static power density of the PE array logic at 45 nm "
                               "(SRAM leakage comes from SRAM_CACTI), "
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
    "fpga_lut_per_pe": Const(32.0, "LUT", "WS/IS int8 PE (operand registers, 32 b accumulate in LUT carry "
                             "chains): Yosys 0.23 synth_xilinx -family xcup of accel_sim.rtl, "
                             "results/accel_sim_rtl.md [measured]"),
    "fpga_lut_per_pe_os": Const(98.0, "LUT", "OS int8 PE incl. its 32 b output shift-chain muxes: Yosys 0.23 "
                                "synth_xilinx -family xcup of accel_sim.rtl, results/accel_sim_rtl.md [measured]"),
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


# SRAM energy, area and leakage by capacity and port width (accel_sim.cost.sram_access_pj
# interpolates log-log between the points; CACTI finds no organisation for the missing ones).
# BEGIN CACTI SRAM TABLE
SRAM_CACTI_SOURCE = ("CACTI 7.0, 45 nm, itrs-hp cells and periphery, scratchpad (ram), 1 RW port, 1 bank; "
                     "generated by benchmarks/cacti_sram_table.py [measured]")
#: (capacity KiB, port width bits) -> (read pJ, write pJ, area mm^2, leakage mW) per access
SRAM_CACTI: dict[tuple[int, int], tuple[float, float, float, float]] = {
    (1, 32): (1.2977, 1.9528, 0.0038201, 1.3831),
    (1, 64): (1.6099, 3.2665, 0.0040352, 1.3897),
    (1, 128): (3.1791, 4.7462, 0.0060944, 1.6229),
    (1, 256): (8.31, 9.698, 0.012588, 1.6337),
    (2, 32): (2.2085, 2.5172, 0.0080214, 3.095),
    (2, 64): (2.6714, 3.9816, 0.00844, 3.0992),
    (2, 128): (3.593, 6.9062, 0.0093926, 3.1178),
    (2, 256): (8.6507, 11.785, 0.015831, 3.0461),
    (2, 512): (26.445, 29.221, 0.039599, 3.2894),
    (4, 32): (2.8552, 3.5381, 0.014613, 6.1007),
    (4, 64): (3.3181, 6.0418, 0.015032, 6.1049),
    (4, 128): (4.2397, 11.045, 0.015985, 6.1235),
    (4, 256): (9.3972, 16.024, 0.02225, 5.8332),
    (4, 512): (27.118, 33.387, 0.045828, 5.9246),
    (4, 1024): (95.002, 96.788, 0.13685, 7.1669),
    (8, 32): (5.2726, 4.5975, 0.028604, 11.339),
    (8, 64): (6.0479, 7.4136, 0.029403, 11.312),
    (8, 128): (7.5989, 13.046, 0.031212, 11.339),
    (8, 256): (10.709, 24.32, 0.035072, 11.423),
    (8, 512): (28.53, 41.783, 0.058195, 11.157),
    (8, 1024): (96.341, 105.11, 0.14883, 11.963),
    (8, 2048): (350.84, 354.41, 0.50053, 17.494),
    (16, 32): (10.071, 6.6796, 0.055989, 21.247),
    (16, 64): (8.9089, 11.771, 0.054929, 22.379),
    (16, 128): (10.46, 21.562, 0.056738, 22.406),
    (16, 256): (13.57, 41.15, 0.060598, 22.49),
    (16, 512): (31.172, 58.394, 0.082886, 21.638),
    (16, 1024): (99.083, 121.82, 0.17266, 21.517),
    (16, 2048): (353.51, 371.05, 0.52402, 26.611),
    (32, 32): (15.593, 8.9586, 0.10523, 42.096),
    (32, 64): (16.998, 14.484, 0.10624, 42.024),
    (32, 128): (19.81, 25.535, 0.10965, 42.051),
    (32, 256): (25.436, 47.639, 0.117, 42.186),
    (32, 512): (36.694, 91.854, 0.13213, 42.487),
    (32, 1024): (102.23, 156.68, 0.21879, 40.474),
    (32, 2048): (358.91, 404.39, 0.57077, 44.807),
    (64, 32): (18.046, 11.412, 0.22262, 84.192),
    (64, 64): (21.203, 18.688, 0.23401, 84.048),
    (64, 128): (38.422, 33.393, 0.21212, 76.788),
    (64, 256): (36.279, 81.099, 0.21538, 83.872),
    (64, 512): (47.538, 158.57, 0.2305, 84.172),
    (64, 1024): (113.08, 223.4, 0.31372, 78.608),
    (64, 2048): (369.54, 470.89, 0.66406, 81.216),
    (128, 32): (22.448, 15.814, 0.44206, 168.38),
    (128, 64): (37.493, 24.225, 0.43551, 153.53),
    (128, 128): (46.621, 41.592, 0.46671, 153.58),
    (128, 256): (65.644, 77.093, 0.53859, 154.02),
    (128, 512): (91.901, 181.54, 0.4447, 153.79),
    (128, 1024): (134.57, 356.64, 0.50342, 154.86),
    (128, 2048): (391.03, 604.13, 0.85037, 153.92),
    (256, 32): (29.54, 20.636, 0.92251, 308.67),
    (256, 64): (45.962, 32.694, 0.89478, 307.05),
    (256, 128): (62.332, 57.304, 0.97711, 307.15),
    (256, 256): (99.75, 123.17, 0.98987, 306.53),
    (256, 512): (152.65, 242.29, 1.2222, 307.58),
    (256, 1024): (177.52, 623.1, 0.8826, 307.26),
    (256, 2048): (429.5, 873.64, 1.2199, 298.98),
    (512, 32): (36.152, 29.518, 1.7784, 673.53),
    (512, 64): (59.903, 46.635, 1.7751, 614.11),
    (512, 128): (88.725, 83.696, 1.9334, 614.31),
    (512, 256): (145.16, 135.1, 2.0465, 586.63),
    (512, 512): (241.55, 288.4, 2.0824, 586.01),
    (512, 1024): (399.04, 578.32, 2.7263, 589.98),
    (512, 2048): (515.03, 1406.2, 1.9643, 589.66),
    (1024, 32): (46.605, 39.971, 3.568, 1347.1),
    (1024, 64): (77.187, 63.919, 3.5654, 1228.2),
    (1024, 128): (120.66, 115.63, 3.8896, 1228.6),
    (1024, 256): (207.75, 197.69, 4.1842, 1173.3),
    (1024, 512): (360.91, 407.76, 4.5024, 1172),
    (1024, 1024): (582.5, 942.71, 4.7775, 1171.3),
    (1024, 2048): (1039.4, 1930.5, 6.8873, 1179.3),
    (2048, 32): (64.051, 57.417, 7.0721, 2694.1),
    (2048, 64): (104.47, 91.206, 7.0296, 2456.4),
    (2048, 128): (179.09, 169.41, 7.022, 2448.7),
    (2048, 256): (322.78, 303.41, 7.4389, 2336.4),
    (2048, 512): (569.75, 616.6, 8.8809, 2344.1),
    (2048, 1024): (1001, 1361.2, 9.339, 2342.7),
    (2048, 2048): (1544.1, 2264.5, 10.749, 2300.2),
    (4096, 32): (95.03, 77.399, 13.405, 4904.6),
    (4096, 64): (139.48, 126.05, 13.947, 4907.5),
    (4096, 128): (240.3, 230.61, 14.11, 4897.4),
    (4096, 256): (440.05, 420.69, 14.954, 4672.9),
    (4096, 512): (816.6, 863.44, 17.909, 4688.1),
    (4096, 1024): (1539.6, 1899.9, 20.382, 4685.4),
    (4096, 2048): (2583.3, 3303.8, 24.468, 4600.4),
}
# END CACTI SRAM TABLE


def value(key: str) -> float:
    """A constant by name (KeyError names the missing key)."""
    return TABLE[key].value
