"""Design-space sweep: array shapes x dataflows x SRAM sizes x densities (at one batch size), in
worker processes, to a CSV (each column described in CSV.md beside it) and labelled Pareto
fronts of cycles against energy and area, one per density."""
from __future__ import annotations

import csv
import io
import itertools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from accel_sim.atomic import write_text_atomic
from accel_sim.config import AccelConfig, parse_array
from accel_sim.networks import build
from accel_sim.profile import uniform_gates
from accel_sim.simulate import simulate
from accel_sim.topology import with_batch

#: every sweep CSV column and what it holds (written beside the CSV as CSV.md)
SWEEP_COLUMNS: dict[str, str] = {
    "network": "built-in network name",
    "batch": "images per run (the GEMM's M is batch x output pixels; filters fetched once per batch)",
    "array": "systolic array, ROWSxCOLS",
    "rows": "array rows (PEs)",
    "cols": "array columns (PEs)",
    "dataflow": "os | ws | is (output-, weight-, input-stationary)",
    "sram_kb": "KiB of each of the three buffers (ifmap, filter, ofmap; each double-buffered)",
    "density": "uniform gate density on the layers CGNet gates (1.0: no gating, the dense network)",
    "optimize": "what each gated layer's schedule choice minimised: cycles | energy | edp",
    "dense_cycles": "whole network run dense: compute cycles + DRAM stall cycles",
    "gated_cycles": "whole network with gating, same config: compute + stall cycles",
    "speedup": "dense_cycles / gated_cycles",
    "theoretical_speedup": "all MACs / (base + active x conditional MACs): what the gates offered",
    "energy_pj": "whole network with gating: energy in pJ (MAC, idle PEs, gate, SRAMs, gather window, DRAM, leakage)",
    "dense_energy_pj": "whole network run dense: energy in pJ",
    "energy_ratio": "energy_pj / dense_energy_pj (below 1: gating saves energy)",
    "area_mm2": "ASIC area in mm^2 at the config's node: PE array + SRAM macros (CACTI) + gather window",
    "utilization": "dense MACs / (dense_cycles x rows x cols)",
    "gated_dram_bytes": "DRAM bytes moved by the gated run",
    "dense_fallback_layers": "gated layers whose schedule choice ran them dense (the gate did not pay)",
}


def _point(args: tuple[str, tuple[int, int, int] | None, dict[str, Any], float, int]) -> dict[str, Any]:
    network, chw, cfg_fields, density, batch = args
    cfg = AccelConfig(**cfg_fields)
    layers = with_batch(build(network, chw), batch)
    gates = uniform_gates(layers, density) if density < 1.0 else {}
    t = simulate(layers, cfg, gates)
    tot = t.totals
    return {"network": network, "batch": batch, "array": f"{cfg.rows}x{cfg.cols}", "rows": cfg.rows,
            "cols": cfg.cols, "dataflow": cfg.dataflow, "sram_kb": cfg.ifmap_sram_kb, "density": density,
            "optimize": cfg.optimize, "dense_cycles": tot["dense_cycles"], "gated_cycles": tot["gated_cycles"],
            "speedup": round(tot["speedup"], 4), "theoretical_speedup": round(tot["theoretical_speedup"], 4),
            "energy_pj": round(tot["energy_pj"], 1), "dense_energy_pj": round(tot["dense_energy_pj"], 1),
            "energy_ratio": round(tot["energy_pj"] / tot["dense_energy_pj"], 4),
            "area_mm2": round(t.hardware["asic_area_mm2"]["total_mm2"], 4),
            "utilization": round(tot["utilization"], 4), "gated_dram_bytes": tot["gated_dram_bytes"],
            "dense_fallback_layers": len(tot["dense_fallback_layers"])}


def run_sweep(network: str, arrays: Sequence[str], dataflows: Sequence[str], sram_kb: Sequence[float],
              densities: Sequence[float], base: AccelConfig | None = None, workers: int = 2,
              chw: tuple[int, int, int] | None = None, progress: bool = True,
              ray_address: str | None = None, batch: int = 1) -> list[dict[str, Any]]:
    """Evaluate every grid point; each SRAM size applies to all three buffers.

    Points run in ``workers`` local processes, or on Ray when ``ray_address`` is given
    (``"local"`` starts a local cluster, anything else is passed to ``ray.init``); rows come
    back in grid order either way, so the CSV is the same.
    """
    base = base or AccelConfig()
    jobs = []
    for arr, df, kb, d in itertools.product(arrays, dataflows, sram_kb, densities):
        r, c = parse_array(arr)
        fields = {**base.to_dict(), "rows": r, "cols": c, "dataflow": df,
                  "ifmap_sram_kb": kb, "filter_sram_kb": kb, "ofmap_sram_kb": kb}
        AccelConfig(**fields)  # validate in the parent, so a bad grid fails before any work
        jobs.append((network, chw, fields, float(d), batch))
    if ray_address is not None:
        return _run_on_ray(jobs, ray_address)
    from tqdm import tqdm  # noqa: PLC0415

    if workers <= 1:
        return [_point(j) for j in tqdm(jobs, disable=not progress, desc="sweep")]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(_point, jobs, chunksize=max(1, len(jobs) // (8 * workers))),
                         total=len(jobs), disable=not progress, desc="sweep"))


def _run_on_ray(jobs: list[tuple], address: str) -> list[dict[str, Any]]:
    """One Ray task per point; a cluster this call started is shut down again."""
    try:
        import ray  # noqa: PLC0415 - optional extra: pip install .[ray]
    except ImportError:
        raise RuntimeError("sweep --ray needs Ray: pip install 'dyngate[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address == "local" else address, include_dashboard=False,
                 log_to_driver=False)
    try:
        task = ray.remote(_point)
        return ray.get([task.remote(j) for j in jobs])
    finally:
        if started:
            ray.shutdown()


def write_sweep_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Sweep rows, and ``PATH.md`` describing every column, both written atomically; returns
    the description's path."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SWEEP_COLUMNS))
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())
    doc = Path(f"{path}.md")
    lines = [f"# Columns of {Path(path).name} (`python -m accel_sim sweep`)", "", "| column | meaning |",
             "|---|---|", *(f"| `{k}` | {v} |" for k, v in SWEEP_COLUMNS.items())]
    write_text_atomic(doc, "\n".join(lines) + "\n")
    return doc


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (lower is better)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _label(r: dict[str, Any]) -> str:
    return f"{r['array']} {r['dataflow']} {r['sram_kb']:g}K"


def plot_pareto(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Gated cycles against energy and against area, one Pareto front per gate density (its
    colour), front points labelled with array, dataflow and SRAM; marker = dataflow.

    One front per density, not one overall: the overall front is usually a single point (the
    biggest array at the lowest density), which hides what each density can reach.
    """
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415

    cmap = plt.get_cmap("viridis")
    dens = sorted({r["density"] for r in rows})
    colour = {d: cmap(0.1 + 0.8 * i / max(1, len(dens) - 1)) for i, d in enumerate(dens)}
    marks = {"os": "o", "ws": "s", "is": "^"}
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    for ax, key, label in ((axes[0], "energy_pj", "energy (uJ)"), (axes[1], "area_mm2", "area (mm^2)")):
        scale = 1e-6 if key == "energy_pj" else 1.0
        for df, mk in marks.items():
            pts = [r for r in rows if r["dataflow"] == df]
            if pts:
                ax.scatter([r["gated_cycles"] for r in pts], [r[key] * scale for r in pts], marker=mk, s=18,
                           c=[colour[r["density"]] for r in pts], alpha=0.45, linewidths=0)
        named = set()   # a design on several fronts is labelled once, where it first appears
        for d in dens:
            sub = [r for r in rows if r["density"] == d]
            front = sorted((sub[i] for i in pareto([(r["gated_cycles"], r[key]) for r in sub])),
                           key=lambda r: r["gated_cycles"])
            ax.plot([r["gated_cycles"] for r in front], [r[key] * scale for r in front], "-", color=colour[d],
                    lw=1.6, marker="o", ms=4)
            for r in (r for r in front if _label(r) not in named):
                named.add(_label(r))
                ax.annotate(_label(r), (r["gated_cycles"], r[key] * scale), fontsize=7, color="0.2",
                            xytext=(4, -9 if len(named) % 2 else 4), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("cycles (gated run, incl. DRAM stalls; log)")
        ax.set_ylabel(f"{label}, log")
        ax.grid(True, which="both", alpha=0.2)
        handles = [Line2D([], [], color=colour[d], lw=1.6, label=f"Pareto front, density {d:g}") for d in dens]
        handles += [Line2D([], [], color="grey", marker=mk, ls="", label=f"dataflow {df}") for df, mk in marks.items()]
        ax.legend(handles=handles, fontsize=7, loc="upper right")
    first = rows[0]
    fig.suptitle(f"{first['network']} (batch {first.get('batch', 1)}): design sweep, {len(rows)} points; "
                 f"labels: array, dataflow, SRAM KiB per buffer; density 1.0 = dense")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
