"""Cycle-stepped systolic PE array: moves operand slots through registers, one cycle at a time.

It exists to check :mod:`accel_sim.dataflow` and :mod:`accel_sim.gating` (their closed forms
must agree with it cycle for cycle) and that each schedule computes the right result.  It is
slow (a numpy step per cycle) and meant for arrays and layers of a few dozen PEs and operands.

A run is a list of *folds*.  A fold says, for every PE, which operand values it multiplies in
each slot of the stream and whether that slot is real work (``live``); zero blocks of a
block-diagonal weight set, empty list entries and clock-gated outputs are not live.  Slot ids
move through the array on the usual skew (edge feeders inject on a fixed schedule) and each PE
takes the value its feed delivers for the slot id it holds: with a shared stream that is the
value its neighbour held a cycle earlier; with a per-column gather (compacted active lists) it
is the column's own operand.  A fold streams as many slots as its builder gives it (the longest
list, or the shared union), and folds with no live work are not run.  Every fold
streams its slots through the whole physical array, so unused rows and columns carry bubbles;
a fold is finished when its last slot has left the array and the next fold then starts.

* OS: slot t enters row r at fold cycle r + t and column c at c + t, moving right / down;
  PE(r, c) accumulates.  At fold end the accumulators are copied into an output shift chain
  that moves down one row per cycle and leaves through the bottom edge, into the output
  buffer, while the next fold computes.
* WS / IS: the stationary tile is shifted in from the top for R cycles; then slot t enters row
  r at cycle R + r + t and moves right, partial sums move down and leave the bottom edge of
  column c at R + (R-1) + c + t, where the output unit adds them to the output buffer.

:func:`simulate_gemm` runs a dense GEMM; :func:`simulate_gated` runs a CGNet layer: the base
pass, ``gate_latency`` idle cycles once the last base output has left the array, then the
conditional pass over the compacted active lists, accumulating onto the base partial sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accel_sim.gating import MODES, gate_classes

EMPTY = -1  # slot id of an empty register


@dataclass
class ArrayRun:
    cycles: int          # cycles from the first operand injected to the last output written
    output: np.ndarray   # the GEMM result A @ B (gated: base + active x conditional)
    macs: int            # multiply-accumulates on live slots


@dataclass
class GatedRun(ArrayRun):
    base_cycles: int = 0  # base pass including its drain
    cond_cycles: int = 0  # conditional pass including its drain (0 when nothing is active)


@dataclass
class OSFold:
    """Output-stationary fold: PE(r, c) accumulates sum_t lhs*rhs over live slots into ``dest``."""

    lhs: np.ndarray   # [R, C, T] operand arriving from the left (ifmap)
    rhs: np.ndarray   # [R, C, T] operand arriving from the top (filter)
    live: np.ndarray  # [R, C, T]
    dest: np.ndarray  # [R, C] flat output index, EMPTY for none


@dataclass
class StationaryFold:
    """Weight/input-stationary fold: column c's partial sum for slot t goes to ``dest[c, t]``."""

    weight: np.ndarray  # [R, C] stationary operand
    stream: np.ndarray  # [R, C, T] streamed operand as delivered to PE(r, c)
    live: np.ndarray    # [R, C, T]
    dest: np.ndarray    # [C, T] flat output index, EMPTY for none


def _tiles(size: int, step: int):
    return [(s, min(s + step, size)) for s in range(0, size, step)]


def _inject(t: int, lanes: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Slot ids entering each lane at fold cycle ``t`` on the skew (lane i starts at cycle i)."""
    idx = t - np.arange(lanes)
    ok = (idx >= 0) & (idx < length)
    return np.where(ok, idx, EMPTY), ok


def _pending(t: int, lanes: int, length: int) -> bool:
    """Does any lane still inject a slot after cycle ``t``?"""
    return t + 1 <= length - 1 + lanes - 1


def _length(live: np.ndarray) -> int:
    """Stream length of a fold: its slot count, or 0 when no slot has live work (not run)."""
    return live.shape[-1] if live.any() else 0


def _run_os(folds: list[OSFold], rows: int, cols: int, out: np.ndarray) -> tuple[int, int]:
    """Run OS folds back to back; returns (cycles including the final drain, live MACs)."""
    cycle, macs = 0, 0
    ri, ci = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    chain_val = np.zeros((rows, cols))
    chain_dst = np.full((rows, cols), EMPTY)

    def chain_step() -> None:
        for c in np.nonzero(chain_dst[-1] != EMPTY)[0]:
            out.flat[chain_dst[-1, c]] += chain_val[-1, c]
        chain_val[1:], chain_dst[1:] = chain_val[:-1].copy(), chain_dst[:-1].copy()
        chain_dst[0] = EMPTY

    for fold in folds:
        length = _length(fold.live)
        if not length:
            continue
        a_slot = np.full((rows, cols), EMPTY)
        b_slot = np.full((rows, cols), EMPTY)
        acc = np.zeros((rows, cols))
        t = 0
        while True:
            # slot ids move one PE right (row operand) and down (column operand)
            a_slot[:, 1:] = a_slot[:, :-1].copy()
            b_slot[1:] = b_slot[:-1].copy()
            a_slot[:, 0], _ = _inject(t, rows, length)
            b_slot[0], _ = _inject(t, cols, length)
            both = (a_slot != EMPTY) & (b_slot != EMPTY)
            if (both & (a_slot != b_slot)).any():
                raise RuntimeError("OS operands out of step")
            s = np.clip(a_slot, 0, length - 1)
            work = both & fold.live[ri, ci, s]
            acc += np.where(work, fold.lhs[ri, ci, s] * fold.rhs[ri, ci, s], 0.0)
            macs += int(work.sum())
            chain_step()
            cycle += 1
            busy = (a_slot[:, :-1] != EMPTY).any() or (b_slot[:-1] != EMPTY).any()
            if not busy and not _pending(t, rows, length) and not _pending(t, cols, length):
                break
            t += 1
        # fold done: the accumulators move into the output chain as a whole
        if (chain_dst != EMPTY).any():
            raise RuntimeError("output chain still busy at fold end")
        chain_val[:] = acc
        chain_dst[:] = fold.dest
    while (chain_dst != EMPTY).any():
        chain_step()
        cycle += 1
    return cycle, macs


def _run_stationary(folds: list[StationaryFold], rows: int, cols: int, out: np.ndarray) -> tuple[int, int]:
    """Run WS/IS folds back to back; returns (cycles, live MACs)."""
    cycle, macs = 0, 0
    ri, ci = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lane_c = np.arange(cols)
    for fold in folds:
        length = _length(fold.live)
        if not length:
            continue
        # 1) the stationary tile shifts in from the top edge, one row per cycle
        w = np.zeros((rows, cols))
        for step in range(rows):
            w[1:] = w[:-1].copy()
            w[0] = fold.weight[rows - 1 - step]
            cycle += 1
        a_slot = np.full((rows, cols), EMPTY)
        p_val, p_slot = np.zeros((rows, cols)), np.full((rows, cols), EMPTY)
        t = 0
        while True:
            # 2) slot ids move right; partial sums move down
            a_slot[:, 1:] = a_slot[:, :-1].copy()
            a_slot[:, 0], _ = _inject(t, rows, length)
            p_in_val = np.vstack([np.zeros((1, cols)), p_val[:-1]])
            p_in_slot = np.vstack([np.full((1, cols), EMPTY), p_slot[:-1]])
            p_in_slot[0] = a_slot[0]  # the top row starts a new partial sum
            if ((p_in_slot != a_slot) & (a_slot != EMPTY)).any() or \
                    ((p_in_slot != EMPTY) & (a_slot == EMPTY)).any():
                raise RuntimeError("partial sum and operand out of step")
            s = np.clip(a_slot, 0, length - 1)
            work = (a_slot != EMPTY) & fold.live[ri, ci, s]
            p_slot = a_slot.copy()
            p_val = p_in_val + np.where(work, fold.stream[ri, ci, s] * w, 0.0)
            macs += int(work.sum())
            # 3) what reaches the bottom row leaves the array into the output unit
            leaving = p_slot[-1] != EMPTY
            dst = np.where(leaving, fold.dest[lane_c, np.clip(p_slot[-1], 0, length - 1)], EMPTY)
            for c in np.nonzero(dst != EMPTY)[0]:
                out.flat[dst[c]] += p_val[-1, c]
            cycle += 1
            busy = (a_slot[:, :-1] != EMPTY).any() or (p_slot[:-1] != EMPTY).any()
            if not busy and not _pending(t, rows, length):
                break
            t += 1
    return cycle, macs


def run_folds(dataflow: str, folds: list, rows: int, cols: int, out: np.ndarray) -> tuple[int, int]:
    """Execute folds on the array, adding results into ``out``; (cycles, live MACs)."""
    if dataflow == "os":
        return _run_os(folds, rows, cols, out)
    return _run_stationary(folds, rows, cols, out)


# ----------------------------------------------------------------------------- fold builders
def dense_folds(dataflow: str, a: np.ndarray, b: np.ndarray, rows: int, cols: int) -> list:
    """The dense mapping: column tiles outer, row tiles inner, every PE of a tile live."""
    m, k = a.shape
    n = b.shape[1]
    folds = []
    if dataflow == "os":
        for n0, n1 in _tiles(n, cols):
            for m0, m1 in _tiles(m, rows):
                f = OSFold(np.zeros((rows, cols, k)), np.zeros((rows, cols, k)),
                           np.zeros((rows, cols, k), dtype=bool), np.full((rows, cols), EMPTY))
                f.lhs[: m1 - m0] = a[m0:m1, None, :]
                f.rhs[:, : n1 - n0] = b[:, n0:n1].T[None]
                f.live[: m1 - m0, : n1 - n0] = True
                f.dest[: m1 - m0, : n1 - n0] = np.arange(m0, m1)[:, None] * n + np.arange(n0, n1)[None, :]
                folds.append(f)
        return folds
    if dataflow == "ws":
        stat, strm, t_len = b, a, m          # weights [K, N] stationary, ifmap rows streamed
        dest = lambda c, t: t * n + c        # noqa: E731  column = filter, slot = pixel
    elif dataflow == "is":
        stat, strm, t_len = a.T, b.T, n      # ifmap [K, M] stationary, filters streamed
        dest = lambda c, t: c * n + t        # noqa: E731  column = pixel, slot = filter
    else:
        raise ValueError(f"dataflow: got {dataflow!r}; allowed: os, ws, is")
    s_r, s_c = stat.shape
    for c0, c1 in _tiles(s_c, cols):
        for r0, r1 in _tiles(s_r, rows):
            f = StationaryFold(np.zeros((rows, cols)), np.zeros((rows, cols, t_len)),
                               np.zeros((rows, cols, t_len), dtype=bool), np.full((cols, t_len), EMPTY))
            f.weight[: r1 - r0, : c1 - c0] = stat[r0:r1, c0:c1]
            f.stream[: r1 - r0] = strm[:, r0:r1].T[:, None, :]
            f.live[: r1 - r0, : c1 - c0] = True
            f.dest[: c1 - c0] = dest(np.arange(c0, c1)[:, None], np.arange(t_len)[None, :])
            folds.append(f)
    return folds


def simulate_gemm(dataflow: str, a: np.ndarray, b: np.ndarray, rows: int, cols: int) -> ArrayRun:
    """Run ofmap = a @ b (a: M x K ifmap, b: K x N filters) on an R x C array, cycle by cycle."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"GEMM shapes do not chain: {a.shape} @ {b.shape}")
    out = np.zeros((a.shape[0], b.shape[1]))
    cycles, macs = run_folds(dataflow, dense_folds(dataflow, a, b, rows, cols), rows, cols, out)
    return ArrayRun(cycles, out, macs)


def _filter_column_folds(dataflow, a, b, rows, cols, needed, cls, member, mode, filters):
    """OS/WS folds of one pass over ``filters`` (filters on the columns)."""
    n_all = b.shape[1]
    folds = []
    for c0, c1 in _tiles(len(filters), cols):
        fs = filters[c0:c1]
        sets = [np.nonzero(member[cls[f]])[0] for f in fs]
        if mode == "column":
            lists = [np.nonzero(needed[:, f])[0] for f in fs]   # each column's own compacted list
            ks = sets                                           # and its own reduction rows
        else:  # shared stream: union of the tile's active pixels over the union of its sets
            live_cols = [i for i, f in enumerate(fs) if needed[:, f].any()]
            if not live_cols:
                continue
            union = np.nonzero(needed[:, fs].any(axis=1))[0]
            rows_set = np.unique(np.concatenate([sets[i] for i in live_cols]))
            lists = [union] * len(fs)
            ks = [rows_set] * len(fs)
        if dataflow == "os":
            depth = max(len(x) for x in lists)
            t_len = max(len(x) for x in ks)
            for i0 in range(0, depth, rows):
                f = OSFold(np.zeros((rows, cols, t_len)), np.zeros((rows, cols, t_len)),
                           np.zeros((rows, cols, t_len), dtype=bool), np.full((rows, cols), EMPTY))
                for c, flt in enumerate(fs):
                    kk = ks[c]
                    for r, px in enumerate(lists[c][i0:i0 + rows]):
                        if not needed[px, flt]:
                            continue                            # clock-gated in the shared stream
                        own = member[cls[flt], kk]
                        f.lhs[r, c, : len(kk)] = a[px, kk]
                        f.rhs[r, c, : len(kk)] = b[kk, flt]
                        f.live[r, c, : len(kk)] = own
                        f.dest[r, c] = px * n_all + flt
                folds.append(f)
        else:
            t_len = max(len(x) for x in lists)
            height = max(len(x) for x in ks)
            for i0 in range(0, height, rows):
                f = StationaryFold(np.zeros((rows, cols)), np.zeros((rows, cols, t_len)),
                                   np.zeros((rows, cols, t_len), dtype=bool), np.full((cols, t_len), EMPTY))
                for c, flt in enumerate(fs):
                    kk = ks[c][i0:i0 + rows]
                    own = member[cls[flt], kk]
                    if not own.any():
                        continue                                # a zero block: nothing loaded
                    px = lists[c]
                    on = needed[px, flt]
                    f.weight[: len(kk), c] = np.where(own, b[kk, flt], 0.0)
                    f.stream[: len(kk), c, : len(px)] = a[np.ix_(px, kk)].T
                    f.live[: len(kk), c, : len(px)] = own[:, None] & on[None, :]
                    f.dest[c, : len(px)] = np.where(on, px * n_all + flt, EMPTY)
                folds.append(f)
    return folds


def _pixel_column_folds(a, b, rows, cols, needed, cls, member, mode, filters):
    """IS folds of one pass over ``filters`` (pixels on the columns, filters streamed)."""
    m, n_all = needed.shape
    classes = np.unique(cls[filters][needed[:, filters].any(axis=0)])
    if classes.size == 0:
        return []
    rows_k = np.nonzero(member[classes].any(axis=0))[0]
    folds = []
    for p0, p1 in _tiles(m, cols):
        for k0, k1 in _tiles(len(rows_k), rows):
            kk = rows_k[k0:k1]
            eligible = [f for f in filters if member[cls[f], kk].any()]
            lists = [[f for f in eligible if needed[px, f]] for px in range(p0, p1)]
            if mode != "column":                                # shared stream: the union
                union = sorted(set().union(*lists))
                lists = [union] * (p1 - p0)
            t_len = max((len(x) for x in lists), default=0)
            if not t_len:
                continue
            f = StationaryFold(np.zeros((rows, cols)), np.zeros((rows, cols, t_len)),
                               np.zeros((rows, cols, t_len), dtype=bool), np.full((cols, t_len), EMPTY))
            for c, px in enumerate(range(p0, p1)):
                f.weight[: len(kk), c] = a[px, kk]
                for t, flt in enumerate(lists[c]):
                    if not needed[px, flt]:
                        continue                                # clock-gated in the shared stream
                    own = member[cls[flt], kk]
                    f.stream[: len(kk), c, t] = b[kk, flt]
                    f.live[: len(kk), c, t] = own
                    f.dest[c, t] = px * n_all + flt if own.any() else EMPTY
            folds.append(f)
    return folds


def pass_folds(dataflow: str, a: np.ndarray, b: np.ndarray, rows: int, cols: int, needed: np.ndarray,
               cls: np.ndarray, member: np.ndarray, mode: str) -> list:
    """Folds of one pass (see :mod:`accel_sim.gating` for the three mappings)."""
    if mode not in MODES:
        raise ValueError(f"mode: got {mode!r}; allowed: {', '.join(MODES)}")
    groups = [np.nonzero(cls == g)[0] for g in range(member.shape[0])] if mode == "group" \
        else [np.arange(b.shape[1])]
    folds = []
    for filters in groups:
        if dataflow == "is":
            folds += _pixel_column_folds(a, b, rows, cols, needed, cls, member, mode, filters)
        else:
            folds += _filter_column_folds(dataflow, a, b, rows, cols, needed, cls, member, mode, filters)
    return folds


def simulate_gated(dataflow: str, a: np.ndarray, b: np.ndarray, rows: int, cols: int, mask: np.ndarray,
                   partitions: int, grouped: bool = True, base_mode: str = "packed",
                   cond_mode: str = "column", gate_latency: int = 0) -> GatedRun:
    """Run a CGNet layer: base pass, gate, conditional pass for the outputs ``mask`` [M, N] turns on.

    The output is base + mask x conditional, the gated layer's pre-activation.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m, k = a.shape
    n = b.shape[1]
    cls, base_set, cond_set = gate_classes(n, k, partitions, grouped)
    out = np.zeros((m, n))
    every = np.ones((m, n), dtype=bool)
    base_cycles, base_macs = run_folds(dataflow, pass_folds(dataflow, a, b, rows, cols, every, cls, base_set,
                                                            base_mode), rows, cols, out)
    cond = pass_folds(dataflow, a, b, rows, cols, np.asarray(mask, dtype=bool), cls, cond_set, cond_mode)
    cond_cycles, cond_macs = run_folds(dataflow, cond, rows, cols, out)
    gate = gate_latency if cond_cycles else 0
    return GatedRun(base_cycles + gate + cond_cycles, out, base_macs + cond_macs,
                    base_cycles=base_cycles, cond_cycles=cond_cycles)
