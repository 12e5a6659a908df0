"""Whole-network simulation: dense and gated execution of every layer, side by side.

Dense numbers for all layers are one vectorised numpy evaluation of the closed forms; each
gated layer costs every option of :func:`accel_sim.gating.gated_options` (cycles with DRAM
stalls, traffic, energy by part) and runs the one :func:`accel_sim.choice.choose` picks for
``cfg.optimize`` (``schedule`` and ``choice_reason`` in the rows; ``dense-fallback`` when the
gate would not pay and the layer runs dense).  Rows carry the energy by part of the gated and
the dense run (``energy_<part>_pj``, ``dense_energy_<part>_pj``), which sum to the totals.  Layers without a gate spec run dense in the gated network too.
``theoretical_speedup`` is the gate's MAC ratio (all MACs over base + active x conditional),
also for a layer that fell back, so the rows show what the gate offered and what was taken.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from accel_sim.config import AccelConfig
from accel_sim.choice import Costed, schedule_layer
from accel_sim.cost import ENERGY_PARTS, EnergyRates, asic_area_mm2, asic_power_w, energy_pj, fpga_resources
from accel_sim.dataflow import dense_cycles, fold_cycles, layer_epilogue, mapping_efficiency, sram_accesses, total_folds
from accel_sim.memory import dram_words, stall_cycles
from accel_sim.profile import GateSpec
from accel_sim.topology import Layer

ROW_KEYS = ("name", "kind", "gated", "schedule", "density", "macs", "executed_macs", "skipped_macs",
            "dense_compute_cycles", "dense_stall_cycles", "dense_cycles",
            "gated_compute_cycles", "gated_stall_cycles", "gated_cycles", "cycles",
            "speedup", "theoretical_speedup", "utilization", "mapping_efficiency",
            "ifmap_sram_reads", "filter_sram_reads", "ofmap_sram_writes", "ofmap_sram_reads",
            "dense_dram_bytes", "gated_dram_bytes", "traffic_reduction",
            "dense_energy_pj", "energy_pj", "ideal_gated_cycles", "fill_drain_cycles",
            "imbalance_cycles", "best_gated_compute_cycles", "choice_reason",
            *(f"energy_{k}_pj" for k in ENERGY_PARTS), *(f"dense_energy_{k}_pj" for k in ENERGY_PARTS))


@dataclass
class SimResult:
    """Per-layer rows (dicts with :data:`ROW_KEYS`), network totals and hardware cost."""

    config: AccelConfig
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    hardware: dict[str, Any] = field(default_factory=dict)
    compat: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**self.totals, "compat": self.compat, "config": self.config.to_dict(),
                "hardware": self.hardware, "layers": self.rows}


def _ratio(a: float, b: float) -> float:
    """a/b; 1.0 when both are zero (nothing gated, nothing changed)."""
    if not b:
        return 1.0 if not a else float("inf")
    return float(a) / float(b)


def simulate(layers: list[Layer], cfg: AccelConfig, gates: dict[str, GateSpec] | None = None,
             compat: bool = False) -> SimResult:
    """Dense and (if ``gates``) gated cycles, traffic and energy of ``layers`` on ``cfg``.

    ``compat`` switches the cycle totals to SCALE-Sim v2's convention (see
    :mod:`accel_sim.dataflow`); topology conventions come from how ``layers`` were read.
    """
    gates = gates or {}
    unknown = sorted(set(gates) - {l.name for l in layers})
    if unknown:
        raise ValueError(f"gate spec for unknown layer(s): {', '.join(unknown)}")
    df, R, C, wb = cfg.dataflow, cfg.rows, cfg.cols, cfg.word_bytes
    arr = lambda attr: np.array([getattr(l, attr) for l in layers], dtype=np.int64)  # noqa: E731
    m, n, k, g = arr("gemm_m"), arr("gemm_n"), arr("gemm_k"), arr("groups")
    i_w, f_w, o_w = arr("ifmap_words"), arr("filter_words"), arr("ofmap_words")
    macs = g * m * n * k

    # ---- dense: closed forms, vectorised over layers
    d_comp = dense_cycles(df, R, C, m, n, k, g, compat=compat)
    folds = total_folds(df, R, C, m, n, k, g)
    sram = sram_accesses(df, R, C, m, n, k, g)
    d_if, d_fi, d_of = dram_words(cfg, m, n, k, g, i_w, f_w, o_w)
    d_bytes = (d_if + d_fi + d_of) * wb
    d_stall = stall_cycles(cfg, d_comp, d_bytes, folds)
    rates = EnergyRates.for_config(cfg)
    d_energy = energy_pj(rates, cfg, macs=macs, cycles=d_comp, compares=0,
                         ifmap_sram=sram["ifmap_reads"], filter_sram=sram["filter_reads"],
                         ofmap_reads=sram["ofmap_reads"], ofmap_writes=sram["ofmap_writes"],
                         dram_words=(d_if, d_fi, d_of), stall=d_stall)

    # ---- gated: start from dense, replace the gated layers by their chosen schedule
    d_parts = {key: np.broadcast_to(np.asarray(v, dtype=np.float64), (len(layers),)).copy()
               for key, v in d_energy.items()}
    g_parts = {key: v.copy() for key, v in d_parts.items()}
    g_comp = d_comp.astype(np.float64).copy()
    g_stall = d_stall.astype(np.float64).copy()
    g_bytes = d_bytes.astype(np.float64).copy()
    exe = macs.astype(np.float64).copy()
    gated_macs = macs.astype(np.float64).copy()
    schedule = ["dense"] * len(layers)
    reason = ["not gated"] * len(layers)
    best_gated = d_comp.astype(np.float64).copy()
    skipped = np.zeros(len(layers))
    density = np.ones(len(layers))
    # where gated cycles go: ideal = executed MACs / PEs; fill/drain; column load imbalance
    ideal = macs / (R * C)
    fill = (folds * np.asarray(fold_cycles(df, R, C, 0), dtype=np.float64)).astype(np.float64)
    imbalance = np.zeros(len(layers))
    for idx, layer in enumerate(layers):
        spec = gates.get(layer.name)
        if spec is None:
            continue
        rng = np.random.default_rng([cfg.seed, idx])
        epi = layer_epilogue(df, R, compat)  # gated layers have groups 1
        dense = Costed("dense", None, float(d_comp[idx]), float(d_stall[idx]),
                       (float(d_if[idx]), float(d_fi[idx]), float(d_of[idx])), float(d_bytes[idx]),
                       {key: float(v[idx]) for key, v in d_parts.items()})
        win, reason[idx] = schedule_layer(layer, spec, cfg, rates, rng, epi, dense)
        gc = win.counts
        g_comp[idx], g_stall[idx], g_bytes[idx] = win.compute, win.stall, win.dram_bytes
        for key in g_parts:
            g_parts[key][idx] = win.energy[key]
        best_gated[idx] = gc.gated_compute_cycles + epi
        gated_macs[idx] = gc.gated_macs
        schedule[idx] = "dense-fallback" if gc.schedule == "dense" else gc.schedule
        ideal[idx] = gc.executed_macs / (R * C)
        fill[idx] = gc.fill_drain_cycles
        imbalance[idx] = gc.cond_cycles - gc.cond_balanced_cycles
        exe[idx], skipped[idx] = gc.executed_macs, gc.skipped_macs
        density[idx] = gc.active_outputs / (m[idx] * n[idx])

    d_total = d_comp + d_stall
    g_total = g_comp + g_stall
    map_eff = mapping_efficiency(df, R, C, m, n, k)
    rows = []
    for i, l in enumerate(layers):
        rows.append({
            "name": l.name, "kind": l.kind, "gated": l.name in gates, "schedule": schedule[i],
            "density": float(density[i]),
            "macs": int(macs[i]), "executed_macs": int(exe[i]), "skipped_macs": int(skipped[i]),
            "dense_compute_cycles": int(d_comp[i]), "dense_stall_cycles": int(d_stall[i]),
            "dense_cycles": int(d_total[i]),
            "gated_compute_cycles": int(g_comp[i]), "gated_stall_cycles": int(g_stall[i]),
            "gated_cycles": int(g_total[i]), "cycles": int(g_total[i]),
            "speedup": _ratio(d_total[i], g_total[i]), "theoretical_speedup": _ratio(macs[i], gated_macs[i]),
            "utilization": _ratio(macs[i], d_total[i] * R * C),
            "mapping_efficiency": float(map_eff[i]),
            "ifmap_sram_reads": int(sram["ifmap_reads"][i]), "filter_sram_reads": int(sram["filter_reads"][i]),
            "ofmap_sram_writes": int(sram["ofmap_writes"][i]), "ofmap_sram_reads": int(sram["ofmap_reads"][i]),
            "dense_dram_bytes": int(d_bytes[i]), "gated_dram_bytes": int(g_bytes[i]),
            "traffic_reduction": _ratio(d_bytes[i], g_bytes[i]),
            "dense_energy_pj": float(d_parts["total"][i]), "energy_pj": float(g_parts["total"][i]),
            "ideal_gated_cycles": float(ideal[i]), "fill_drain_cycles": int(fill[i]),
            "imbalance_cycles": int(imbalance[i]), "best_gated_compute_cycles": int(best_gated[i]),
            "choice_reason": reason[i],
            **{f"energy_{key}_pj": float(g_parts[key][i]) for key in ENERGY_PARTS},
            **{f"dense_energy_{key}_pj": float(d_parts[key][i]) for key in ENERGY_PARTS},
        })
    dense_c, gated_c = float(d_total.sum()), float(g_total.sum())
    totals = {
        "layers_count": len(layers), "gated_layers": len(gates),
        "macs": int(macs.sum()), "executed_macs": int(exe.sum()), "skipped_macs": int(skipped.sum()),
        "dense_compute_cycles": int(d_comp.sum()), "gated_compute_cycles": int(g_comp.sum()),
        "dense_cycles": int(dense_c), "gated_cycles": int(gated_c),
        "speedup": _ratio(dense_c, gated_c), "theoretical_speedup": _ratio(macs.sum(), gated_macs.sum()),
        "gated_layers_speedup": _ratio(d_total[[r["gated"] for r in rows]].sum(),
                                       g_total[[r["gated"] for r in rows]].sum()),
        "gated_layers_theoretical_speedup": _ratio(macs[[r["gated"] for r in rows]].sum(),
                                                   gated_macs[[r["gated"] for r in rows]].sum()),
        "dense_fallback_layers": [r["name"] for r in rows if r["schedule"] == "dense-fallback"],
        "utilization": _ratio(macs.sum(), dense_c * R * C),
        "dense_dram_bytes": int(d_bytes.sum()), "gated_dram_bytes": int(g_bytes.sum()),
        "traffic_reduction": _ratio(d_bytes.sum(), g_bytes.sum()),
        "dense_energy_pj": float(d_parts["total"].sum()), "energy_pj": float(g_parts["total"].sum()),
        "energy_breakdown_pj": {key: float(g_parts[key].sum()) for key in ENERGY_PARTS},
        "dense_energy_breakdown_pj": {key: float(d_parts[key].sum()) for key in ENERGY_PARTS},
        "optimize": cfg.optimize,
        "latency_ms": gated_c / (cfg.clock_mhz * 1e3), "dense_latency_ms": dense_c / (cfg.clock_mhz * 1e3),
    }
    area = asic_area_mm2(cfg)
    dynamic = totals["energy_pj"] - totals["energy_breakdown_pj"]["static"]
    hardware = {"asic_area_mm2": area, "asic_power_w": asic_power_w(cfg, dynamic, gated_c),
                "fpga": fpga_resources(cfg)}
    return SimResult(cfg, rows, totals, hardware, compat)
