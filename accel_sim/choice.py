"""Per-layer schedule choice for a gated layer: dense or one of its gated mappings.

Each option is costed in full, as the layer would run: compute cycles plus the DRAM stalls of
its own traffic (a gated schedule that saves compute but adds traffic can lose), and its
energy breakdown.  ``AccelConfig.optimize`` says what is minimised: ``cycles`` (ties go to
less energy), ``energy`` (ties go to fewer cycles) or ``edp`` (energy x cycles).  The reason
string says what won and, where gating lost, which part of it cost more than dense.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from accel_sim.config import AccelConfig
from accel_sim.cost import ENERGY_PARTS, EnergyRates, energy_pj
from accel_sim.gating import GatedCounts, gated_options
from accel_sim.memory import gated_dram_words, stall_cycles
from accel_sim.profile import GateSpec
from accel_sim.topology import Layer


@dataclass(frozen=True)
class Costed:
    """One schedule option of one layer, fully costed."""

    name: str
    counts: GatedCounts | None              # None only while a dense option awaits its counts
    compute: float                          # compute cycles incl. the layer epilogue
    stall: float
    dram_words: tuple[float, float, float]  # ifmap, filter, ofmap
    dram_bytes: float
    energy: dict[str, float]                # ENERGY_PARTS + total, pJ

    @property
    def cycles(self) -> float:
        return self.compute + self.stall

    def score(self, objective: str) -> tuple[float, float]:
        """Sort key: the objective, then the other measure as tie-break."""
        e = self.energy["total"]
        if objective == "energy":
            return e, self.cycles
        if objective == "edp":
            return e * self.cycles, self.cycles
        return self.cycles, e


def cost_option(gc: GatedCounts, layer: Layer, cfg: AccelConfig, rates: EnergyRates, partitions: int,
                dense_words: tuple[float, float, float], epilogue: int) -> Costed:
    """Cycles with stalls, DRAM traffic and energy of a gated schedule ``gc``."""
    words = gated_dram_words(cfg, layer, gc, partitions, dense_words)
    dram = float(sum(words)) * cfg.word_bytes
    compute = float(gc.compute_cycles + epilogue)
    stall = float(stall_cycles(cfg, compute, dram, gc.folds))
    parts = energy_pj(rates, cfg, macs=gc.executed_macs, cycles=compute, compares=gc.compares,
                      ifmap_sram=gc.ifmap_reads - gc.gather_hits + gc.gather_fills,
                      filter_sram=gc.filter_reads, ofmap_reads=gc.ofmap_reads, ofmap_writes=gc.ofmap_writes,
                      gather=gc.gather_hits, gather_fills=gc.gather_fills, dram_words=words, stall=stall)
    return Costed(gc.schedule, gc, compute, stall, tuple(float(w) for w in words), dram,
                  {key: float(v) for key, v in parts.items()})


def _why_gated_loses(best: Costed, dense: Costed) -> str:
    """Which part of the best gated schedule costs more than dense: cycles first, then energy."""
    out = []
    if best.cycles >= dense.cycles:
        gc = best.counts
        if gc.base_cycles >= dense.counts.base_cycles:
            out.append("its base pass alone takes the dense folds (all groups share one column tile)")
        elif best.stall > dense.stall:
            out.append(f"DRAM stalls {best.stall:,.0f} vs {dense.stall:,.0f} cycles")
        else:
            out.append(f"base {gc.base_cycles:,} + gate {gc.gate_cycles:,} + conditional {gc.cond_cycles:,} "
                       f"cycles vs dense {dense.counts.base_cycles:,}, {gc.fill_drain_cycles:,} of them fold "
                       f"fill/drain ({gc.folds} folds vs {dense.counts.folds} dense)")
    if best.energy["total"] >= dense.energy["total"]:
        part = max(ENERGY_PARTS, key=lambda k: best.energy[k] - dense.energy[k])
        out.append(f"{part} +{(best.energy[part] - dense.energy[part]) / 1e6:.2f} uJ over dense")
    return "; ".join(out)


def choose(options: dict[str, Costed], objective: str, allow_dense: bool) -> tuple[Costed, str]:
    """The option with the best ``objective`` score, and a one-line reason."""
    dense = options["dense"]
    gated = {k: v for k, v in options.items() if k != "dense"}
    pool = options if allow_dense else gated
    win = min(pool.values(), key=lambda o: o.score(objective))
    best = min(gated.values(), key=lambda o: o.score(objective))
    rel = (f"{best.cycles / max(dense.cycles, 1):.2f}x cycles, "
           f"{best.energy['total'] / max(dense.energy['total'], 1e-12):.2f}x energy of dense")
    if win.name == "dense":
        return win, f"{objective}: dense; best gated {best.name} {rel}: {_why_gated_loses(best, dense)}"
    why = _why_gated_loses(win, dense)
    forced = "" if allow_dense or win.score(objective) < dense.score(objective) else " (dense fallback off)"
    return win, f"{objective}: {win.name}{forced} {rel}" + (f"; costlier than dense in: {why}" if why else "")


def schedule_layer(layer: Layer, spec: GateSpec, cfg: AccelConfig, rates: EnergyRates, rng: np.random.Generator,
                   epilogue: int, dense: Costed) -> tuple[Costed, str]:
    """Cost every option of one gated layer and pick one.  ``dense`` carries the layer's dense
    cycles, traffic and energy from the vectorised dense model, so a layer that falls back
    reports exactly the dense numbers."""
    opts = gated_options(layer, spec, cfg, rng)
    costed = {name: cost_option(gc, layer, cfg, rates, spec.partitions, dense.dram_words, epilogue)
              for name, gc in opts.items() if name != "dense"}
    costed["dense"] = dataclasses.replace(dense, counts=opts["dense"])
    return choose(costed, cfg.optimize, cfg.dense_fallback)
