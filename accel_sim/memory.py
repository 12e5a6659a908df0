"""Off-chip traffic with reuse bounded by SRAM capacity, and stalls under finite bandwidth.

SCALE-Sim counts DRAM reads as the im2col-expanded SRAM reads, so its traffic ignores the
buffer size (its issue #27).  Here each operand is fetched from DRAM as *unique* words
(unpadded ifmap, filters, ofmap) times a refetch factor set by the fold loop order and by
whether the operand's working set fits in the usable half of its double-buffered SRAM:

====  ==========================  ===========================  ==============================
 df    ifmap                       filter                       ofmap
====  ==========================  ===========================  ==============================
 os    1 if ifmap fits else CF     1 if K x C tile fits else RF  written once
 ws    1 if ifmap fits else CF     once (stationary)             1 if M x C psums fit else 2RF-1
 is    once (stationary)           1 if filters fit else CF      1 if N x C psums fit else 2RF-1
====  ==========================  ===========================  ==============================

(RF/CF = row/column folds; column folds are the outer loop, so WS/IS partial sums of one
column fold live in the ofmap SRAM across its row folds, or spill and come back.)

Stalls: with double buffering the first fold's operands load before compute starts and the
rest stream under compute, so ``time = first + max(compute, rest)``; without it every
transfer is exposed: ``time = compute + transfer``.
"""
from __future__ import annotations

import numpy as np

from accel_sim.config import AccelConfig
from accel_sim.cost import ACC_BITS
from accel_sim.dataflow import ceil_div, fold_counts, gemm_dims


def usable_words(kb: float, cfg: AccelConfig) -> float:
    """Words of one SRAM that hold a working set (half of it when double-buffered)."""
    words = kb * 1024 / cfg.word_bytes
    return words / 2 if cfg.double_buffer else words


def dram_words(cfg: AccelConfig, m, n, k, groups, ifmap_words, filter_words, ofmap_words):
    """(ifmap, filter, ofmap) DRAM words per layer, vectorised over layers."""
    df, rows, cols = cfg.dataflow, cfg.rows, cfg.cols
    s_r, s_c, t = (np.asarray(x, dtype=np.int64) for x in gemm_dims(df, m, n, k))
    rf, cf = fold_counts(s_r, s_c, rows, cols)
    g = np.asarray(groups, dtype=np.int64)
    i_w, f_w, o_w = (np.asarray(x, dtype=np.float64) for x in (ifmap_words, filter_words, ofmap_words))
    cap_i = usable_words(cfg.ifmap_sram_kb, cfg)
    cap_f = usable_words(cfg.filter_sram_kb, cfg)
    cap_o = usable_words(cfg.ofmap_sram_kb, cfg)
    # working sets are per group: the group's ifmap slice, filter tile, psum tile
    col_tile = np.minimum(s_c, cols)
    if df == "os":
        ifm = i_w * np.where(i_w / g <= cap_i, 1, cf)
        fil = f_w * np.where(k * col_tile <= cap_f, 1, rf)
        ofm = o_w
    elif df == "ws":
        ifm = i_w * np.where(i_w / g <= cap_i, 1, cf)
        fil = f_w
        ofm = o_w * np.where(t * col_tile <= cap_o, 1, 2 * rf - 1)
    else:
        ifm = i_w
        fil = f_w * np.where(f_w / g <= cap_f, 1, cf)
        ofm = o_w * np.where(t * col_tile <= cap_o, 1, 2 * rf - 1)
    return ifm, fil, ofm


def stall_cycles(cfg: AccelConfig, compute_cycles, dram_bytes, folds):
    """Cycles lost waiting for DRAM (vectorised over layers)."""
    compute = np.asarray(compute_cycles, dtype=np.float64)
    transfer = np.asarray(dram_bytes, dtype=np.float64) / cfg.dram_bytes_per_cycle
    if not cfg.double_buffer:
        return _whole_cycles(transfer)
    first = transfer / np.maximum(np.asarray(folds, dtype=np.float64), 1.0)
    total = first + np.maximum(compute, transfer - first)
    return _whole_cycles(total - compute)


def _whole_cycles(exposed):
    """Exposed transfer time in cycles: under one cycle it finishes within the cycle whose
    operands it carries (so unbounded bandwidth costs 0, not the 1 a bare ceil gave every
    layer); from one cycle up it is rounded up as before."""
    exposed = np.asarray(exposed, dtype=np.float64)
    return np.where(exposed < 1.0, 0.0, np.ceil(exposed))


def psum_spill_words(cfg: AccelConfig, m: int, n: int, k: int, partitions: int, density: float) -> float:
    """Extra DRAM traffic (in operand words) of a gated layer's partial sums that do not fit.

    The passes run column tile by column tile, so one tile's psums (the dense model's working
    set) wait for the gate; when even those do not fit, OS writes every base psum out once and
    reads the active ones back, WS/IS spill per row fold of each pass like the dense mapping
    (write every fold, read back every later one; the conditional pass only for active outputs).
    Psums are ACC_BITS wide, so they are charged at that width.
    """
    s_r, s_c, t = gemm_dims(cfg.dataflow, m, n, k)
    tile = (m if cfg.dataflow == "os" else t) * min(s_c, cfg.cols)
    if tile <= usable_words(cfg.ofmap_sram_kb, cfg):
        return 0.0
    kb = k // partitions
    if cfg.dataflow == "os":
        trips = 1.0 + density
    else:
        trips = 2.0 * int(ceil_div(kb, cfg.rows)) - 1 + density * 2.0 * int(ceil_div(k - kb, cfg.rows))
    return m * n * trips * (ACC_BITS / 8) / cfg.word_bytes


def gated_dram_words(cfg: AccelConfig, layer, gc, partitions: int, dense: tuple[float, float, float]):
    """(ifmap, filter, ofmap) DRAM words of one gated layer under schedule ``gc``.

    The ifmap is fetched as the dense mapping does when it fits (once, kept for both passes),
    else per column tile at ``gc.ifmap_fetch`` of the dense refetch; the base pass fetches each
    filter's base weights, the conditional pass only the remaining weights of filters with an
    active output; outputs are written once, plus :func:`psum_spill_words`.
    """
    d_if, d_fi, d_of = dense
    if gc.schedule == "dense":
        return d_if, d_fi, d_of
    p = partitions
    ifm = d_if if layer.ifmap_words <= usable_words(cfg.ifmap_sram_kb, cfg) else d_if * gc.ifmap_fetch
    fil = d_fi * (1.0 / p + (p - 1) / p * gc.active_channels / layer.gemm_n)
    dens = gc.active_outputs / (layer.gemm_m * layer.gemm_n)
    ofm = d_of + psum_spill_words(cfg, layer.gemm_m, layer.gemm_n, layer.gemm_k, p, dens)
    return ifm, fil, ofm
