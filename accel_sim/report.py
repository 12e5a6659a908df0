"""Human and machine outputs of a simulation: text table, JSON, CSV and a per-layer plot."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from accel_sim.atomic import write_text_atomic
from accel_sim.cost import ENERGY_PARTS
from accel_sim.simulate import ROW_KEYS, SimResult

_TABLE_COLS = [("name", "layer", "{}"), ("schedule", "schedule", "{}"), ("density", "dens", "{:.2f}"), ("macs", "MACs", "{:,}"),
               ("dense_cycles", "dense cyc", "{:,}"), ("gated_cycles", "gated cyc", "{:,}"),
               ("speedup", "speedup", "{:.2f}x"), ("theoretical_speedup", "MAC ratio", "{:.2f}x"),
               ("utilization", "util", "{:.0%}"), ("dense_stall_cycles", "stall", "{:,}"),
               ("gated_dram_bytes", "DRAM B", "{:,}"), ("energy_pj", "energy uJ", "{:.1f}")]


def _fmt(key: str, fmt: str, value: Any) -> str:
    if key == "energy_pj":
        value = value / 1e6
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return fmt.format(value)


def format_table(result: SimResult) -> str:
    """Per-layer table plus totals and hardware cost, for the terminal."""
    head = [h for _, h, _ in _TABLE_COLS]
    body = [[_fmt(k, f, r[k]) + ("*" if k == "name" and r["gated"] else "") for k, _, f in _TABLE_COLS]
            for r in result.rows]
    t = result.totals
    total = ["TOTAL", "", "", f"{t['macs']:,}", f"{t['dense_cycles']:,}", f"{t['gated_cycles']:,}",
             f"{t['speedup']:.2f}x", f"{t['theoretical_speedup']:.2f}x", f"{t['utilization']:.0%}", "",
             f"{t['gated_dram_bytes']:,}", f"{t['energy_pj'] / 1e6:.1f}"]
    widths = [max(len(row[i]) for row in [head, *body, total]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    cfg = result.config
    hw = result.hardware
    out = [f"array {cfg.rows}x{cfg.cols} {cfg.dataflow}  {cfg.word}  SRAM {cfg.ifmap_sram_kb:g}/"
           f"{cfg.filter_sram_kb:g}/{cfg.ofmap_sram_kb:g} KB  DRAM {cfg.dram_bytes_per_cycle:g} B/cyc  "
           f"{cfg.clock_mhz:g} MHz  {cfg.tech_nm} nm  gate schedule {cfg.gate_schedule}"
           + ("  [SCALE-Sim compat]" if result.compat else ""),
           line(head), line(["-" * w for w in widths]), *map(line, body), line(["-" * w for w in widths]),
           line(total), "(* gated layer; schedule = base+conditional mapping, dense-fallback where the gate "
           "would not pay; cycles include DRAM stalls; energy is the gated run)",
           f"gated layers only: speedup {t['gated_layers_speedup']:.2f}x vs MAC ratio "
           f"{t['gated_layers_theoretical_speedup']:.2f}x;  off-chip traffic reduction "
           f"{t['traffic_reduction']:.2f}x;  energy {t['dense_energy_pj'] / 1e6:.1f} -> "
           f"{t['energy_pj'] / 1e6:.1f} uJ;  latency {t['dense_latency_ms']:.3f} -> {t['latency_ms']:.3f} ms",
           f"ASIC {hw['asic_area_mm2']['total_mm2']:.2f} mm^2 (array {hw['asic_area_mm2']['array_mm2']:.2f}), "
           f"{hw['asic_power_w']['total_w']:.3f} W;  FPGA {hw['fpga']['dsp']} DSP, {hw['fpga']['lut']:,} LUT, "
           f"{hw['fpga']['ff']:,} FF, {hw['fpga']['bram18']} BRAM18K @ {hw['fpga']['clock_mhz']:g} MHz; fits: "
           + (", ".join(p for p, v in hw["fpga"]["parts"].items() if v["fits"]) or "none")]
    return "\n".join(out)


def format_breakdown(result: SimResult) -> str:
    """Per gated layer: where the gated run spends energy against dense (uJ, gated/dense per
    part), the schedule chosen and why."""
    short = {"mac": "MAC", "idle": "idle PE", "gate": "gate", "ifmap_sram": "ifmap SRAM",
             "filter_sram": "filter SRAM", "ofmap_sram": "psum SRAM", "gather_buffer": "gather buf",
             "dram": "DRAM", "static": "leakage"}
    head = ["layer", "schedule", *(short[k] for k in ENERGY_PARTS), "total"]
    body = []
    for r in (r for r in result.rows if r["gated"]):
        cells = [f"{r[f'energy_{k}_pj'] / 1e6:.1f}/{r[f'dense_energy_{k}_pj'] / 1e6:.1f}" for k in ENERGY_PARTS]
        body.append([r["name"], r["schedule"], *cells, f"{r['energy_pj'] / 1e6:.1f}/{r['dense_energy_pj'] / 1e6:.1f}"])
    t = result.totals
    g, d = t["energy_breakdown_pj"], t["dense_energy_breakdown_pj"]
    total = ["TOTAL (all layers)", "", *(f"{g[k] / 1e6:.1f}/{d[k] / 1e6:.1f}" for k in ENERGY_PARTS),
             f"{t['energy_pj'] / 1e6:.1f}/{t['dense_energy_pj'] / 1e6:.1f}"]
    widths = [max(len(row[i]) for row in [head, *body, total]) for i in range(len(head))]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [f"energy breakdown, gated/dense uJ per part (choice optimises {t['optimize']})", line(head),
           line(["-" * w for w in widths]), *map(line, body), line(["-" * w for w in widths]), line(total),
           "why each gated layer runs what it runs:"]
    out += [f"  {r['name']}: {r['choice_reason']}" for r in result.rows if r["gated"]]
    return "\n".join(out)


def to_json(result: SimResult) -> str:
    return json.dumps(result.to_dict(), indent=1, default=float)


def write_csv(result: SimResult, path: str | Path) -> None:
    """Per-layer rows, written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(ROW_KEYS))
    w.writeheader()
    for r in result.rows:
        w.writerow({k: r[k] for k in ROW_KEYS})
    write_text_atomic(path, buf.getvalue())


def plot_layers(result: SimResult, path: str | Path, title: str = "") -> None:
    """Dense vs gated cycles per layer, with the achieved and theoretical speedup."""
    import matplotlib  # noqa: PLC0415 - plotting is optional and slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = result.rows
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(rows)), 4.5))
    ax.bar([i - 0.2 for i in x], [r["dense_cycles"] for r in rows], 0.4, label="dense")
    ax.bar([i + 0.2 for i in x], [r["gated_cycles"] for r in rows], 0.4, label="gated")
    ax.set_ylabel("cycles (incl. stalls)")
    ax.set_xticks(list(x), [r["name"] + ("*" if r["gated"] else "") for r in rows], rotation=75, fontsize=7)
    ax2 = ax.twinx()
    ax2.plot(list(x), [r["speedup"] for r in rows], "k.-", label="achieved speedup")
    ax2.plot(list(x), [r["theoretical_speedup"] for r in rows], "r_", ms=10, label="MAC ratio")
    ax2.set_ylabel("speedup (x)")
    t = result.totals
    ax.set_title(title or f"{result.config.rows}x{result.config.cols} {result.config.dataflow}: "
                 f"{t['speedup']:.2f}x achieved vs {t['theoretical_speedup']:.2f}x MAC ratio")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
