"""Cycle-stepped systolic PE array: moves real operands through registers, one cycle at a time.

It exists to check :mod:`accel_sim.dataflow` (the closed forms must agree with it cycle for
cycle) and that each dataflow computes the right GEMM.  It is slow (a numpy step per cycle)
and meant for arrays and layers of a few dozen PEs and operands.

Every fold streams *slots* through the whole physical array: rows or columns a tile does not
use carry zero-valued bubbles, exactly as a real array whose edge feeders inject on a fixed
skew.  A fold is finished when its last slot has left the array; the next fold then starts.

* OS: A[m, k] enters row m at fold cycle m + k, B[k, n] enters column n at n + k, both move
  one PE per cycle (right / down); PE(m, n) accumulates.  At fold end the accumulators are
  copied into an output shift chain that moves down one row per cycle and leaves through the
  bottom edge while the next fold computes.
* WS / IS: the stationary tile is shifted in from the top for R cycles; then the streamed
  operand enters row r at cycle R + r + t and moves right, partial sums move down and leave
  the bottom edge of column c at R + (R-1) + c + t.  Row folds of the reduction are summed
  in the output buffer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EMPTY = -1  # slot id of an empty register


@dataclass
class ArrayRun:
    cycles: int          # cycles from the first operand injected to the last output written
    output: np.ndarray   # the GEMM result A @ B
    macs: int            # multiply-accumulates with both operands valid


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


def _os_gemm(a: np.ndarray, b: np.ndarray, rows: int, cols: int) -> ArrayRun:
    m, k = a.shape
    n = b.shape[1]
    out = np.zeros((m, n))
    cycle, macs = 0, 0
    lane_r, lane_c = np.arange(rows), np.arange(cols)
    # output chain: a register per PE, shifting down one row per cycle out of the bottom edge
    chain_val = np.zeros((rows, cols))
    chain_dst = np.full((rows, cols, 2), EMPTY)

    def chain_step() -> None:
        for c in np.nonzero(chain_dst[-1, :, 0] != EMPTY)[0]:
            out[chain_dst[-1, c, 0], chain_dst[-1, c, 1]] = chain_val[-1, c]
        chain_val[1:], chain_dst[1:] = chain_val[:-1].copy(), chain_dst[:-1].copy()
        chain_dst[0] = EMPTY

    for n0, n1 in _tiles(n, cols):
        for m0, m1 in _tiles(m, rows):
            a_t = np.zeros((rows, k))
            a_t[: m1 - m0] = a[m0:m1]
            b_t = np.zeros((k, cols))
            b_t[:, : n1 - n0] = b[:, n0:n1]
            used = np.zeros((rows, cols), dtype=bool)
            used[: m1 - m0, : n1 - n0] = True
            a_val, a_slot = np.zeros((rows, cols)), np.full((rows, cols), EMPTY)
            b_val, b_slot = np.zeros((rows, cols)), np.full((rows, cols), EMPTY)
            acc = np.zeros((rows, cols))
            t = 0
            while True:
                # operands move one PE right (A) and down (B); the edges inject on the skew
                a_val[:, 1:], a_slot[:, 1:] = a_val[:, :-1].copy(), a_slot[:, :-1].copy()
                b_val[1:], b_slot[1:] = b_val[:-1].copy(), b_slot[:-1].copy()
                a_slot[:, 0], ok = _inject(t, rows, k)
                a_val[:, 0] = np.where(ok, a_t[lane_r, np.clip(a_slot[:, 0], 0, k - 1)], 0.0)
                b_slot[0], ok = _inject(t, cols, k)
                b_val[0] = np.where(ok, b_t[np.clip(b_slot[0], 0, k - 1), lane_c], 0.0)
                both = (a_slot != EMPTY) & (b_slot != EMPTY)
                if (both & (a_slot != b_slot)).any():
                    raise RuntimeError("OS operands out of step")
                acc += np.where(both, a_val * b_val, 0.0)
                macs += int((both & used).sum())
                chain_step()
                cycle += 1
                busy = (a_slot[:, :-1] != EMPTY).any() or (b_slot[:-1] != EMPTY).any()
                if not busy and not _pending(t, rows, k) and not _pending(t, cols, k):
                    break
                t += 1
            # fold done: the accumulators move into the output chain as a whole
            if (chain_dst[..., 0] != EMPTY).any():
                raise RuntimeError("output chain still busy at fold end")
            chain_val[:] = acc
            mi, ni = np.meshgrid(lane_r + m0, lane_c + n0, indexing="ij")
            chain_dst[..., 0] = np.where(used, mi, EMPTY)
            chain_dst[..., 1] = np.where(used, ni, EMPTY)
    while (chain_dst[..., 0] != EMPTY).any():
        chain_step()
        cycle += 1
    return ArrayRun(cycles=cycle, output=out, macs=macs)


def _stationary_gemm(stat: np.ndarray, stream: np.ndarray, rows: int, cols: int) -> ArrayRun:
    """Weight/input-stationary engine: out[T, S_C] = stream[T, S_R] @ stat[S_R, S_C]."""
    s_r, s_c = stat.shape
    t_len = stream.shape[0]
    out = np.zeros((t_len, s_c))
    cycle, macs = 0, 0
    lane_r = np.arange(rows)
    for c0, c1 in _tiles(s_c, cols):
        for r0, r1 in _tiles(s_r, rows):
            tile = np.zeros((rows, cols))
            tile[: r1 - r0, : c1 - c0] = stat[r0:r1, c0:c1]
            used = np.zeros((rows, cols), dtype=bool)
            used[: r1 - r0, : c1 - c0] = True
            # 1) the stationary tile shifts in from the top edge, one row per cycle
            w = np.zeros((rows, cols))
            for step in range(rows):
                w[1:] = w[:-1].copy()
                w[0] = tile[rows - 1 - step]
                cycle += 1
            s_t = np.zeros((t_len, rows))
            s_t[:, : r1 - r0] = stream[:, r0:r1]
            a_val, a_slot = np.zeros((rows, cols)), np.full((rows, cols), EMPTY)
            p_val, p_slot = np.zeros((rows, cols)), np.full((rows, cols), EMPTY)
            t = 0
            while True:
                # 2) the streamed operand moves right; partial sums move down
                a_val[:, 1:], a_slot[:, 1:] = a_val[:, :-1].copy(), a_slot[:, :-1].copy()
                a_slot[:, 0], ok = _inject(t, rows, t_len)
                a_val[:, 0] = np.where(ok, s_t[np.clip(a_slot[:, 0], 0, t_len - 1), lane_r], 0.0)
                p_in_val = np.vstack([np.zeros((1, cols)), p_val[:-1]])
                p_in_slot = np.vstack([np.full((1, cols), EMPTY), p_slot[:-1]])
                p_in_slot[0] = a_slot[0]  # the top row starts a new partial sum
                if ((p_in_slot != a_slot) & (a_slot != EMPTY)).any() or \
                        ((p_in_slot != EMPTY) & (a_slot == EMPTY)).any():
                    raise RuntimeError("partial sum and operand out of step")
                p_slot = a_slot.copy()
                p_val = np.where(a_slot != EMPTY, p_in_val + a_val * w, 0.0)
                macs += int(((a_slot != EMPTY) & used).sum())
                # 3) what reaches the bottom row leaves the array into the output buffer
                for c in np.nonzero(p_slot[-1] != EMPTY)[0]:
                    if c < c1 - c0:
                        out[p_slot[-1, c], c0 + c] += p_val[-1, c]
                cycle += 1
                busy = (a_slot[:, :-1] != EMPTY).any() or (p_slot[:-1] != EMPTY).any()
                if not busy and not _pending(t, rows, t_len):
                    break
                t += 1
    return ArrayRun(cycles=cycle, output=out, macs=macs)


def simulate_gemm(dataflow: str, a: np.ndarray, b: np.ndarray, rows: int, cols: int) -> ArrayRun:
    """Run ofmap = a @ b (a: M x K ifmap, b: K x N filters) on an R x C array, cycle by cycle."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"GEMM shapes do not chain: {a.shape} @ {b.shape}")
    if dataflow == "os":
        return _os_gemm(a, b, rows, cols)
    if dataflow == "ws":
        return _stationary_gemm(b, a, rows, cols)
    if dataflow == "is":
        run = _stationary_gemm(a.T, b.T, rows, cols)
        return ArrayRun(run.cycles, run.output.T, run.macs)
    raise ValueError(f"dataflow: got {dataflow!r}; allowed: os, ws, is")
