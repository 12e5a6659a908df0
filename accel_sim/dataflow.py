"""Per-fold cycle formulas for output-, weight- and input-stationary systolic arrays.

This is the one place the timing of a fold is written down; the dense model, the gating
scheduler and the compat mode all call it, and ``pe_array`` checks it cycle by cycle.

A conv layer (one group) is the GEMM  ofmap[M x N] = ifmap[M x K] @ filter[K x N]  with
M = output pixels, N = filters, K = kh*kw*C_in/groups.  Each dataflow puts two of the three
dimensions on the array (S_R rows, S_C columns) and streams the third in time (T):

====  =====  =====  =====  ===========================
 df    S_R    S_C     T    cycles per fold (R x C array)
====  =====  =====  =====  ===========================
 os     M      N      K    R + C + T - 2
 ws     K      N      M    2R + C + T - 2   (R cycles to load the stationary operand)
 is     K      M      N    2R + C + T - 2
====  =====  =====  =====  ===========================

Folds = ceil(S_R/R) * ceil(S_C/C) and run back to back (a fold drains before the next one
fills), as in SCALE-Sim v2.  Edge folds pay the full-array fill/drain: operands are skewed
across all R rows and C columns whatever part of the tile is used.

Two layer totals:

* native: ``folds * per_fold`` plus, for OS, ``R`` cycles to shift the last fold's
  accumulators out of the bottom edge (earlier folds drain under the next fold's compute).
* SCALE-Sim compat: ``folds * per_fold - 1`` (SCALE-Sim reports the index of the last cycle).

Everything takes numpy arrays so a whole network is one vectorised call.
"""
from __future__ import annotations

import numpy as np

def gemm_dims(dataflow: str, m, n, k):
    """(S_R, S_C, T) for a dataflow from the GEMM sizes (M pixels, N filters, K reduction)."""
    if dataflow == "os":
        return m, n, k
    if dataflow == "ws":
        return k, n, m
    if dataflow == "is":
        return k, m, n
    raise ValueError(f"dataflow: got {dataflow!r}; allowed: os, ws, is")


def ceil_div(a, b):
    return -(-np.asarray(a, dtype=np.int64) // b)


def fold_counts(s_r, s_c, rows: int, cols: int):
    """(row folds, column folds)."""
    return ceil_div(s_r, rows), ceil_div(s_c, cols)


def fold_cycles(dataflow: str, rows: int, cols: int, t):
    """Cycles of one fold that streams ``t`` operand vectors (fill + stream + drain)."""
    t = np.asarray(t, dtype=np.int64)
    if dataflow == "os":
        return rows + cols + t - 2
    if dataflow in ("ws", "is"):
        return 2 * rows + cols + t - 2
    raise ValueError(f"dataflow: got {dataflow!r}; allowed: os, ws, is")


def layer_epilogue(dataflow: str, rows: int, compat: bool) -> int:
    """Cycles added once per layer after the last fold (see module docstring)."""
    if compat:
        return -1
    return rows if dataflow == "os" else 0


def dense_cycles(dataflow: str, rows: int, cols: int, m, n, k, groups=1, compat: bool = False):
    """Compute cycles of dense layers (vectorised over layers).

    Groups run one after another as separate GEMMs; in compat mode each is its own SCALE-Sim
    layer (SCALE-Sim splits depthwise layers per channel), so the -1 applies per group.
    """
    groups = np.asarray(groups, dtype=np.int64)
    folded = folded_cycles(dataflow, rows, cols, m, n, k, groups)
    epi = layer_epilogue(dataflow, rows, compat)
    return folded + groups * epi if compat else folded + epi


def folded_cycles(dataflow: str, rows: int, cols: int, m, n, k, groups=1):
    """Cycles of all folds of all groups, without the per-layer epilogue."""
    s_r, s_c, t = gemm_dims(dataflow, m, n, k)
    rf, cf = fold_counts(s_r, s_c, rows, cols)
    return np.asarray(groups, dtype=np.int64) * rf * cf * fold_cycles(dataflow, rows, cols, t)


def total_folds(dataflow: str, rows: int, cols: int, m, n, k, groups=1):
    s_r, s_c, _ = gemm_dims(dataflow, m, n, k)
    rf, cf = fold_counts(s_r, s_c, rows, cols)
    return np.asarray(groups, dtype=np.int64) * rf * cf


def sram_accesses(dataflow: str, rows: int, cols: int, m, n, k, groups=1) -> dict[str, np.ndarray]:
    """SRAM word accesses of dense layers, from the operand movement of each fold.

    The streamed operands are read once per fold they enter; the stationary operand is read
    once when it is loaded; WS/IS keep partial sums in the ofmap SRAM, so every row fold after
    the first reads them back.
    """
    s_r, s_c, t = (np.asarray(x, dtype=np.int64) for x in gemm_dims(dataflow, m, n, k))
    rf, cf = fold_counts(s_r, s_c, rows, cols)
    g = np.asarray(groups, dtype=np.int64)
    if dataflow == "os":
        ifmap, filt = t * s_r * cf, t * s_c * rf
        ofmap_w, ofmap_r = s_r * s_c, np.zeros_like(s_r)
    elif dataflow == "ws":
        ifmap, filt = t * s_r * cf, s_r * s_c
        ofmap_w, ofmap_r = t * s_c * rf, t * s_c * (rf - 1)
    else:  # is
        ifmap, filt = s_r * s_c, t * s_r * cf
        ofmap_w, ofmap_r = t * s_c * rf, t * s_c * (rf - 1)
    return {"ifmap_reads": g * ifmap, "filter_reads": g * filt,
            "ofmap_writes": g * ofmap_w, "ofmap_reads": g * ofmap_r}


def mapping_efficiency(dataflow: str, rows: int, cols: int, m, n, k):
    """Mean over folds of used PEs / (R*C)  (SCALE-Sim's definition)."""
    s_r, s_c, _ = (np.asarray(x, dtype=np.int64) for x in gemm_dims(dataflow, m, n, k))
    rf, cf = fold_counts(s_r, s_c, rows, cols)
    return (s_r * s_c) / (rf * cf * rows * cols)
