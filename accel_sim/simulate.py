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


@dataclass
class _Dense:
    """The dense run of every layer, as arrays over the layers (closed forms, vectorised)."""

    m: np.ndarray
    n: np.ndarray
    k: np.ndarray
    groups: np.ndarray
    macs: np.ndarray
    compute: np.ndarray
    folds: np.ndarray
    sram: dict[str, np.ndarray]
    dram: tuple[np.ndarray, np.ndarray, np.ndarray]   # ifmap, filter, ofmap words
    dram_bytes: np.ndarray
    stall: np.ndarray
    parts: dict[str, np.ndarray]                      # energy by part, plus "total"

    @property
    def total(self) -> np.ndarray:
        return self.compute + self.stall


@dataclass
class _Gated:
    """The gated network, per layer: the dense run where a layer has no gate or falls back."""

    compute: np.ndarray
    stall: np.ndarray
    dram_bytes: np.ndarray
    parts: dict[str, np.ndarray]
    executed: np.ndarray
    gated_macs: np.ndarray
    schedule: list[str]
    reason: list[str]
    best_compute: np.ndarray
    skipped: np.ndarray
    density: np.ndarray
    ideal: np.ndarray       # executed MACs / PEs
    fill: np.ndarray        # fill/drain cycles
    imbalance: np.ndarray   # column load imbalance cycles

    @property
    def total(self) -> np.ndarray:
        return self.compute + self.stall


def _check_gates(layers: list[Layer], gates: dict[str, GateSpec]) -> None:
    unknown = sorted(set(gates) - {l.name for l in layers})
    if unknown:
        raise ValueError(f"gate spec for unknown layer(s): {', '.join(unknown)}")


def _dense_run(layers: list[Layer], cfg: AccelConfig, rates: EnergyRates, compat: bool) -> _Dense:
    """Cycles, traffic and energy of every layer run dense."""
    df, R, C = cfg.dataflow, cfg.rows, cfg.cols
    arr = lambda attr: np.array([getattr(l, attr) for l in layers], dtype=np.int64)  # noqa: E731
    m, n, k, g = arr("gemm_m"), arr("gemm_n"), arr("gemm_k"), arr("groups")
    macs = arr("macs")
    comp = dense_cycles(df, R, C, m, n, k, g, compat=compat)
    folds = total_folds(df, R, C, m, n, k, g)
    sram = sram_accesses(df, R, C, m, n, k, g)
    dram = dram_words(cfg, m, n, k, g, arr("ifmap_words"), arr("filter_words"), arr("ofmap_words"))
    dram_bytes = (dram[0] + dram[1] + dram[2]) * cfg.word_bytes
    stall = stall_cycles(cfg, comp, dram_bytes, folds)
    energy = energy_pj(rates, cfg, macs=macs, cycles=comp, compares=0,
                       ifmap_sram=sram["ifmap_reads"], filter_sram=sram["filter_reads"],
                       ofmap_reads=sram["ofmap_reads"], ofmap_writes=sram["ofmap_writes"],
                       dram_words=dram, stall=stall)
    parts = {key: np.broadcast_to(np.asarray(v, dtype=np.float64), (len(layers),)).copy()
             for key, v in energy.items()}
    return _Dense(m, n, k, g, macs, comp, folds, sram, dram, dram_bytes, stall, parts)


def _dense_as_gated(cfg: AccelConfig, dense: _Dense) -> _Gated:
    """The gated network before any gate is applied: every layer as it runs dense."""
    count = len(dense.macs)
    fill = (dense.folds * np.asarray(fold_cycles(cfg.dataflow, cfg.rows, cfg.cols, 0), dtype=np.float64))
    return _Gated(compute=dense.compute.astype(np.float64).copy(), stall=dense.stall.astype(np.float64).copy(),
                  dram_bytes=dense.dram_bytes.astype(np.float64).copy(),
                  parts={key: v.copy() for key, v in dense.parts.items()},
                  executed=dense.macs.astype(np.float64).copy(), gated_macs=dense.macs.astype(np.float64).copy(),
                  schedule=["dense"] * count, reason=["not gated"] * count,
                  best_compute=dense.compute.astype(np.float64).copy(), skipped=np.zeros(count),
                  density=np.ones(count), ideal=dense.macs / (cfg.rows * cfg.cols),
                  fill=fill.astype(np.float64), imbalance=np.zeros(count))


def _gated_run(layers: list[Layer], cfg: AccelConfig, rates: EnergyRates, gates: dict[str, GateSpec],
               dense: _Dense, compat: bool) -> _Gated:
    """Start from dense and replace every gated layer by the schedule :func:`schedule_layer` picks."""
    gated = _dense_as_gated(cfg, dense)
    for idx, layer in enumerate(layers):
        spec = gates.get(layer.name)
        if spec is not None:
            _run_gated_layer(idx, layer, spec, cfg, rates, dense, gated, compat)
    return gated


def _run_gated_layer(idx: int, layer: Layer, spec: GateSpec, cfg: AccelConfig, rates: EnergyRates,
                     dense: _Dense, gated: _Gated, compat: bool) -> None:
    """Cost layer ``idx``'s schedule options and write the chosen one into ``gated``."""
    rng = np.random.default_rng([cfg.seed, idx])
    epi = layer_epilogue(cfg.dataflow, cfg.rows, compat)  # gated layers have groups 1
    as_dense = Costed("dense", None, float(dense.compute[idx]), float(dense.stall[idx]),
                      tuple(float(words[idx]) for words in dense.dram), float(dense.dram_bytes[idx]),
                      {key: float(v[idx]) for key, v in dense.parts.items()})
    win, gated.reason[idx] = schedule_layer(layer, spec, cfg, rates, rng, epi, as_dense)
    gc = win.counts
    gated.compute[idx], gated.stall[idx], gated.dram_bytes[idx] = win.compute, win.stall, win.dram_bytes
    for key in gated.parts:
        gated.parts[key][idx] = win.energy[key]
    gated.best_compute[idx] = gc.gated_compute_cycles + epi
    gated.gated_macs[idx] = gc.gated_macs
    gated.schedule[idx] = "dense-fallback" if gc.schedule == "dense" else gc.schedule
    gated.ideal[idx] = gc.executed_macs / (cfg.rows * cfg.cols)
    gated.fill[idx] = gc.fill_drain_cycles
    gated.imbalance[idx] = gc.cond_cycles - gc.cond_balanced_cycles
    gated.executed[idx], gated.skipped[idx] = gc.executed_macs, gc.skipped_macs
    gated.density[idx] = gc.active_outputs / (dense.m[idx] * dense.n[idx])


def _rows(layers: list[Layer], gates: dict[str, GateSpec], cfg: AccelConfig, dense: _Dense,
          gated: _Gated) -> list[dict[str, Any]]:
    """One row per layer, keys :data:`ROW_KEYS`."""
    R, C = cfg.rows, cfg.cols
    d_total, g_total, macs, sram = dense.total, gated.total, dense.macs, dense.sram
    map_eff = mapping_efficiency(cfg.dataflow, R, C, dense.m, dense.n, dense.k)
    rows = []
    for i, l in enumerate(layers):
        rows.append({
            "name": l.name, "kind": l.kind, "gated": l.name in gates, "schedule": gated.schedule[i],
            "density": float(gated.density[i]),
            "macs": int(macs[i]), "executed_macs": int(gated.executed[i]), "skipped_macs": int(gated.skipped[i]),
            "dense_compute_cycles": int(dense.compute[i]), "dense_stall_cycles": int(dense.stall[i]),
            "dense_cycles": int(d_total[i]),
            "gated_compute_cycles": int(gated.compute[i]), "gated_stall_cycles": int(gated.stall[i]),
            "gated_cycles": int(g_total[i]), "cycles": int(g_total[i]),
            "speedup": _ratio(d_total[i], g_total[i]), "theoretical_speedup": _ratio(macs[i], gated.gated_macs[i]),
            "utilization": _ratio(macs[i], d_total[i] * R * C),
            "mapping_efficiency": float(map_eff[i]),
            "ifmap_sram_reads": int(sram["ifmap_reads"][i]), "filter_sram_reads": int(sram["filter_reads"][i]),
            "ofmap_sram_writes": int(sram["ofmap_writes"][i]), "ofmap_sram_reads": int(sram["ofmap_reads"][i]),
            "dense_dram_bytes": int(dense.dram_bytes[i]), "gated_dram_bytes": int(gated.dram_bytes[i]),
            "traffic_reduction": _ratio(dense.dram_bytes[i], gated.dram_bytes[i]),
            "dense_energy_pj": float(dense.parts["total"][i]), "energy_pj": float(gated.parts["total"][i]),
            "ideal_gated_cycles": float(gated.ideal[i]), "fill_drain_cycles": int(gated.fill[i]),
            "imbalance_cycles": int(gated.imbalance[i]), "best_gated_compute_cycles": int(gated.best_compute[i]),
            "choice_reason": gated.reason[i],
            **{f"energy_{key}_pj": float(gated.parts[key][i]) for key in ENERGY_PARTS},
            **{f"dense_energy_{key}_pj": float(dense.parts[key][i]) for key in ENERGY_PARTS},
        })
    return rows


def _totals(layers: list[Layer], gates: dict[str, GateSpec], cfg: AccelConfig, rows: list[dict[str, Any]],
            dense: _Dense, gated: _Gated) -> dict[str, Any]:
    """Whole-network sums and ratios, over all layers and over the gated ones."""
    d_total, g_total, macs = dense.total, gated.total, dense.macs
    dense_c, gated_c = float(d_total.sum()), float(g_total.sum())
    is_gated = [r["gated"] for r in rows]
    return {
        "layers_count": len(layers), "gated_layers": len(gates),
        "macs": int(macs.sum()), "executed_macs": int(gated.executed.sum()), "skipped_macs": int(gated.skipped.sum()),
        "dense_compute_cycles": int(dense.compute.sum()), "gated_compute_cycles": int(gated.compute.sum()),
        "dense_cycles": int(dense_c), "gated_cycles": int(gated_c),
        "speedup": _ratio(dense_c, gated_c), "theoretical_speedup": _ratio(macs.sum(), gated.gated_macs.sum()),
        "gated_layers_speedup": _ratio(d_total[is_gated].sum(), g_total[is_gated].sum()),
        "gated_layers_theoretical_speedup": _ratio(macs[is_gated].sum(), gated.gated_macs[is_gated].sum()),
        "dense_fallback_layers": [r["name"] for r in rows if r["schedule"] == "dense-fallback"],
        "utilization": _ratio(macs.sum(), dense_c * cfg.rows * cfg.cols),
        "dense_dram_bytes": int(dense.dram_bytes.sum()), "gated_dram_bytes": int(gated.dram_bytes.sum()),
        "traffic_reduction": _ratio(dense.dram_bytes.sum(), gated.dram_bytes.sum()),
        "dense_energy_pj": float(dense.parts["total"].sum()), "energy_pj": float(gated.parts["total"].sum()),
        "energy_breakdown_pj": {key: float(gated.parts[key].sum()) for key in ENERGY_PARTS},
        "dense_energy_breakdown_pj": {key: float(dense.parts[key].sum()) for key in ENERGY_PARTS},
        "optimize": cfg.optimize,
        "latency_ms": gated_c / (cfg.clock_mhz * 1e3), "dense_latency_ms": dense_c / (cfg.clock_mhz * 1e3),
    }


def _hardware(cfg: AccelConfig, totals: dict[str, Any], gated_cycles: float) -> dict[str, Any]:
    """ASIC area and power (dynamic energy over the gated run) and FPGA resources."""
    dynamic = totals["energy_pj"] - totals["energy_breakdown_pj"]["static"]
    return {"asic_area_mm2": asic_area_mm2(cfg), "asic_power_w": asic_power_w(cfg, dynamic, gated_cycles),
            "fpga": fpga_resources(cfg)}


def simulate(layers: list[Layer], cfg: AccelConfig, gates: dict[str, GateSpec] | None = None,
             compat: bool = False) -> SimResult:
    """Dense and (if ``gates``) gated cycles, traffic and energy of ``layers`` on ``cfg``.

    ``compat`` switches the cycle totals to SCALE-Sim v2's convention (see
    :mod:`accel_sim.dataflow`); topology conventions come from how ``layers`` were read.
    """
    gates = gates or {}
    _check_gates(layers, gates)
    rates = EnergyRates.for_config(cfg)
    dense = _dense_run(layers, cfg, rates, compat)
    gated = _gated_run(layers, cfg, rates, gates, dense, compat)
    rows = _rows(layers, gates, cfg, dense, gated)
    totals = _totals(layers, gates, cfg, rows, dense, gated)
    return SimResult(cfg, rows, totals, _hardware(cfg, totals, float(gated.total.sum())), compat)
