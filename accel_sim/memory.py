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
from accel_sim.dataflow import fold_counts, gemm_dims


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
        return np.ceil(transfer)
    first = transfer / np.maximum(np.asarray(folds, dtype=np.float64), 1.0)
    total = first + np.maximum(compute, transfer - first)
    return np.ceil(total - compute)
