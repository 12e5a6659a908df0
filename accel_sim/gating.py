"""CGNet channel-gating schedule on a systolic array.

A gated layer runs in three steps:

1. **Base pass** (dense): every output over the base input channels, 1/p of the reduction.
   With a grouped base path (block-diagonal) it is p independent GEMMs of N/p filters each.
2. **Gate**: the output unit compares each base partial sum with its channel's threshold as it
   leaves the array (one compare per output element), builds the active lists and compacts
   them; ``gate_latency`` cycles separate the last base fold from the first conditional fold.
3. **Conditional pass**: the remaining (p-1)/p of the reduction, only for active outputs,
   accumulated onto the stored base partial sums.

The conditional pass keeps each dataflow's mapping but the array's *column* axis (filters for
OS/WS, output pixels for IS) owns a compacted active list along the other output axis:

* ``column`` schedule: every column streams its own list (one operand gather per column), so a
  column fold lasts as long as its *longest* list - load imbalance - and quantises into row
  folds (OS) or pays fill/drain (WS/IS) like any fold.
* ``union`` schedule: columns share one operand stream (no gather hardware), so a fold streams
  the *union* of its columns' lists and inactive outputs inside it are only clock-gated.

Fold cycles come from :func:`accel_sim.dataflow.fold_cycles`, so the gated schedule pays the
same fill and drain as dense folds.

When only densities are known, the per-element gate pattern is drawn from independent
Bernoulli(channel density) variables per output element (no spatial correlation), with a
numpy PCG64 generator seeded from ``(config.seed, layer index)``; channels that share one
decision (``granularity`` > 1) share one draw at the group's mean density.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accel_sim.config import AccelConfig
from accel_sim.dataflow import ceil_div, fold_cycles, folded_cycles, sram_accesses, total_folds
from accel_sim.profile import GateSpec
from accel_sim.topology import Layer


def draw_mask(layer: Layer, spec: GateSpec, rng: np.random.Generator) -> np.ndarray:
    """Boolean gate decisions [output pixels M, output channels N]."""
    g = spec.granularity
    dens = spec.channel_density.reshape(-1, g).mean(axis=1)
    mask = rng.random((layer.gemm_m, dens.size), dtype=np.float32) < dens.astype(np.float32)
    return np.repeat(mask, g, axis=1) if g > 1 else mask


@dataclass(frozen=True)
class GatedCounts:
    """Cycle and action counts of one gated layer (compute only; stalls come from memory)."""

    base_cycles: int
    cond_cycles: int
    gate_cycles: int
    folds: int
    base_macs: int
    executed_macs: int
    skipped_macs: int
    active_outputs: int
    compares: int
    ifmap_reads: int
    filter_reads: int
    ofmap_writes: int
    ofmap_reads: int
    active_channels: int   # output channels with at least one active output
    active_pixels: int     # output pixels with at least one active output
    cond_balanced_cycles: int  # conditional pass if every column of a fold had the mean list
    fill_drain_cycles: int     # fold fill/drain of both passes (fold cycles with T = 0)

    @property
    def compute_cycles(self) -> int:
        return self.base_cycles + self.gate_cycles + self.cond_cycles


def conditional_schedule(dataflow: str, rows: int, cols: int, mask: np.ndarray, k_c: int,
                         schedule: str) -> dict[str, int]:
    """Cycles and SRAM reads of the conditional pass for the active outputs in ``mask`` [M, N]."""
    x = mask.T if dataflow == "is" else mask        # x[list item, column]
    n_col = x.shape[1]
    cf = -(-n_col // cols)
    pad = np.zeros((x.shape[0], cf * cols), dtype=bool)
    pad[:, :n_col] = x
    per_fold = pad.reshape(x.shape[0], cf, cols)
    if schedule == "column":
        length = per_fold.sum(axis=0).max(axis=1)          # longest list in the fold
    else:
        length = per_fold.any(axis=2).sum(axis=0)          # union of the fold's lists
    cols_in_fold = np.minimum(cols, n_col - np.arange(cf) * cols)
    balanced = ceil_div(per_fold.sum(axis=(0, 2)), cols_in_fold)
    work = length > 0
    active = int(x.sum())
    stream = active * k_c if schedule == "column" else int(length.sum()) * k_c
    if dataflow == "os":
        row_folds = ceil_div(length, rows)
        cycles = int((row_folds * fold_cycles("os", rows, cols, k_c)).sum())
        bal = int((ceil_div(balanced, rows) * fold_cycles("os", rows, cols, k_c)).sum())
        other = int((row_folds * k_c * cols_in_fold).sum())          # filters, per row fold
        reads = {"ifmap_reads": stream, "filter_reads": other}
        psum_passes, folds = 1, int(row_folds.sum())
    else:
        rf = int(ceil_div(k_c, rows))
        cycles = int((rf * fold_cycles(dataflow, rows, cols, length[work])).sum())
        bal = int((rf * fold_cycles(dataflow, rows, cols, balanced[work])).sum())
        stationary = int(k_c * cols_in_fold[work].sum())
        reads = ({"ifmap_reads": stream, "filter_reads": stationary} if dataflow == "ws"
                 else {"ifmap_reads": stationary, "filter_reads": stream})
        psum_passes, folds = rf, int(rf * work.sum())
    return {"cycles": cycles, "balanced_cycles": bal, "folds": folds, **reads,
            "ofmap_writes": active * psum_passes, "ofmap_reads": active * psum_passes}


def gated_layer(layer: Layer, spec: GateSpec, cfg: AccelConfig, rng: np.random.Generator) -> GatedCounts:
    """Schedule one gated layer (base pass, gate, conditional pass) on the configured array."""
    if layer.groups != 1:
        raise ValueError(f"layer {layer.name}: gated layers must have groups 1, got {layer.groups}")
    p = spec.partitions
    if layer.in_channels % p:
        raise ValueError(f"layer {layer.name}: partitions {p} must divide in_channels {layer.in_channels}")
    if spec.channel_density.size != layer.out_channels:
        raise ValueError(f"layer {layer.name}: channel_density has {spec.channel_density.size} entries, "
                         f"out_channels is {layer.out_channels}")
    df, r, c = cfg.dataflow, cfg.rows, cfg.cols
    m, n, k = layer.gemm_m, layer.gemm_n, layer.gemm_k
    k_b = k // p
    k_c = k - k_b
    if spec.grouped and n % p == 0:
        base_dims = dict(m=m, n=n // p, k=k_b, groups=p)
    else:
        base_dims = dict(m=m, n=n, k=k_b, groups=1)
    base_cycles = int(folded_cycles(df, r, c, **base_dims))
    base_folds = int(total_folds(df, r, c, **base_dims))
    base_sram = {key: int(v) for key, v in sram_accesses(df, r, c, **base_dims).items()}
    mask = draw_mask(layer, spec, rng)
    cond = conditional_schedule(df, r, c, mask, k_c, cfg.gate_schedule)
    active = int(mask.sum())
    base_macs = m * n * k_b
    return GatedCounts(
        base_cycles=base_cycles, cond_cycles=cond["cycles"], gate_cycles=cfg.gate_latency,
        folds=base_folds + cond["folds"], base_macs=base_macs,
        executed_macs=base_macs + active * k_c, skipped_macs=(m * n - active) * k_c,
        active_outputs=active, compares=m * n,
        ifmap_reads=base_sram["ifmap_reads"] + cond["ifmap_reads"],
        filter_reads=base_sram["filter_reads"] + cond["filter_reads"],
        ofmap_writes=base_sram["ofmap_writes"] + cond["ofmap_writes"],
        ofmap_reads=base_sram["ofmap_reads"] + cond["ofmap_reads"],
        active_channels=int(mask.any(axis=0).sum()), active_pixels=int(mask.any(axis=1).sum()),
        cond_balanced_cycles=cond["balanced_cycles"],
        fill_drain_cycles=int(fold_cycles(df, r, c, 0)) * (base_folds + cond["folds"]),
    )
