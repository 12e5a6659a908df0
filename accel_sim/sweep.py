"""Design-space sweep: array shapes x dataflows x SRAM sizes x densities, in worker processes,
to a CSV and a Pareto plot of cycles against energy and area."""
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

SWEEP_KEYS = ("network", "array", "rows", "cols", "dataflow", "sram_kb", "density", "dense_cycles",
              "gated_cycles", "speedup", "theoretical_speedup", "energy_pj", "dense_energy_pj", "area_mm2", "utilization",
              "gated_dram_bytes")


def _point(args: tuple[str, tuple[int, int, int] | None, dict[str, Any], float]) -> dict[str, Any]:
    network, chw, cfg_fields, density = args
    cfg = AccelConfig(**cfg_fields)
    layers = build(network, chw)
    gates = uniform_gates(layers, density) if density < 1.0 else {}
    t = simulate(layers, cfg, gates)
    tot = t.totals
    return {"network": network, "array": f"{cfg.rows}x{cfg.cols}", "rows": cfg.rows, "cols": cfg.cols,
            "dataflow": cfg.dataflow, "sram_kb": cfg.ifmap_sram_kb, "density": density,
            "dense_cycles": tot["dense_cycles"], "gated_cycles": tot["gated_cycles"],
            "speedup": round(tot["speedup"], 4), "theoretical_speedup": round(tot["theoretical_speedup"], 4),
            "energy_pj": round(tot["energy_pj"], 1), "dense_energy_pj": round(tot["dense_energy_pj"], 1),
            "area_mm2": round(t.hardware["asic_area_mm2"]["total_mm2"], 4),
            "utilization": round(tot["utilization"], 4), "gated_dram_bytes": tot["gated_dram_bytes"]}


def run_sweep(network: str, arrays: Sequence[str], dataflows: Sequence[str], sram_kb: Sequence[float],
              densities: Sequence[float], base: AccelConfig | None = None, workers: int = 2,
              chw: tuple[int, int, int] | None = None, progress: bool = True,
              ray_address: str | None = None) -> list[dict[str, Any]]:
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
        jobs.append((network, chw, fields, float(d)))
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


def write_sweep_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Sweep rows, written atomically."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SWEEP_KEYS))
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (lower is better)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Gated cycles against energy and against area; Pareto fronts drawn as lines."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    marks = {"os": "o", "ws": "s", "is": "^"}
    for ax, key, label in ((axes[0], "energy_pj", "energy (uJ)"), (axes[1], "area_mm2", "area (mm^2)")):
        scale = 1e-6 if key == "energy_pj" else 1.0
        for df, mk in marks.items():
            pts = [r for r in rows if r["dataflow"] == df]
            if pts:
                sc = ax.scatter([r["gated_cycles"] for r in pts], [r[key] * scale for r in pts], marker=mk,
                                c=[r["density"] for r in pts], cmap="viridis", vmin=0, vmax=1, s=22, label=df)
        pts = [(r["gated_cycles"], r[key] * scale) for r in rows]
        front = sorted((pts[i] for i in pareto(pts)))
        ax.plot([p[0] for p in front], [p[1] for p in front], "r-", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("cycles (gated, incl. stalls)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.colorbar(sc, ax=axes, label="gate density")
    fig.suptitle(f"{rows[0]['network']}: design sweep ({len(rows)} points)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
