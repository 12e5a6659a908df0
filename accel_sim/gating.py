"""CGNet channel-gating schedules on a systolic array, and the per-layer choice between them.

A gated layer is the GEMM ``out[M, N] = A[M, K] @ B[K, N]`` (M output pixels, N filters,
K = kh*kw*C_in).  The input channels are split into ``p`` partitions, contiguous blocks of
K/p reduction rows (channel-major im2col order).  Filter n's *base set* is one partition:
partition ``n // (N/p)`` with a grouped (block-diagonal) base path, partition 0 otherwise;
its *conditional set* is the other K - K/p rows.  The layer runs as

1. **base pass**: every output over its base set;
2. **gate**: the output unit compares each base partial sum with its channel threshold as it
   leaves the array and compacts the active lists (``gate_latency`` cycles after the last base
   output has left the array, which on OS is R cycles after the last fold);
3. **conditional pass**: only the active outputs, over their conditional sets, accumulated onto
   the stored base partial sums.

Both passes are run by :func:`pass_counts`, which maps "these outputs, each over its own
reduction set" onto the array in one of three ways.  Filters that share a reduction set form a
*class* (a filter group for a grouped base pass; one class for an ungrouped one).

* ``packed``: one shared operand stream per fold (full input reuse), classes side by side in
  the column tile.  The reduction rows of a fold are the union of the sets of the classes it
  holds, as a block-diagonal (base) or block-complement (conditional) weight set whose zero
  blocks are not loaded and do no work; folds with no work are skipped; IS streams, per row
  tile, only the filters whose set meets the tile's rows.  The stream carries the *union* of
  the active positions of the fold's columns; inactive outputs in it are clock-gated.
* ``group``: the same shared stream, one class at a time (p narrower GEMMs).  This is what the
  first version ran for every base pass: each group streams all M pixels again.
* ``column``: per-column compacted lists.  Every column has its own operand feed (a gather
  port per column: no input reuse across columns, counted in the SRAM reads) and its own
  row-to-reduction mapping, so a fold lasts as long as its *longest* list (load imbalance).
  IS keeps shared stationary rows (the stream mixes classes), so only its stream is gathered.
  Block gates (one decision per tile x G channels) give G adjacent columns one list: on OS/WS
  each aligned run of ``gcd(G, C)`` columns shares one gather feed (:func:`feed_share`), so
  the kernel's column runs line up with the gate's channel blocks and the input is read once
  per run, not once per column.

The base pass may use ``packed`` or ``group``; the conditional pass ``column`` (needs the
gather hardware), ``packed`` or ``group``; ``AccelConfig.gate_schedule`` says which the
hardware has (``auto``: all; ``column``: lists only; ``union``: shared streams only).  Every
legal base x conditional pair and the dense mapping are costed in full by
:mod:`accel_sim.choice` (cycles with DRAM stalls, energy), and the layer runs the one that
minimises ``AccelConfig.optimize``; dense is a candidate only with ``dense_fallback``: the gate
is then ignored and every output computed in full, as an accelerator whose compiler sees that
the gate does not pay would do.  :func:`gated_layer` keeps the compute-cycle-only choice that
the cycle-stepped array is checked against.
That happens where the base pass alone already costs the dense time: on WS/OS with N <= C all
p groups share one column tile, so a block-diagonal base needs all K rows (WS) or a K-long
stream (OS), exactly the dense fold, and a group-by-group base streams the pixels p times.

What the gated schedule reuses on chip (the energy and traffic model of
:mod:`accel_sim.choice` and :func:`accel_sim.memory.gated_dram_words`), and where it cannot:

* partial sums: the base psum never goes to DRAM when the psum working set of a column tile
  fits in the ofmap SRAM (the dense model's rule, in words).  WS/IS accumulate in the ofmap SRAM
  anyway; OS shifts the base psum out of the PE accumulators into the ofmap SRAM, where the
  conditional pass picks the active ones up.  The ofmap SRAM holds psums ACC_BITS wide, and
  every access is charged at that width.  When a layer's psums (or its ifmap) do not all fit,
  base and conditional pass run column tile by column tile, one gate drain per tile; when even
  a tile's psums do not fit, the spill is charged at psum width
  (:func:`accel_sim.memory.psum_spill_words`).
* inputs: an ifmap that fits is fetched once for both passes.  One that does not is fetched per
  column tile: the base pass brings the channels of the tile's base partitions, which stay in
  the ifmap SRAM if they fit, and the conditional pass fetches only the other channels for the
  pixels active in the tile (:func:`ifmap_fetch_fraction`).
* weights: the conditional pass fetches only the remaining-channel weights of filters with at
  least one active output.
* per-column lists lose the array's input sharing; a small gather window
  (``AccelConfig.gather_buffer_kb``) serves most of those gathers, each word copied into it
  once: on WS it follows the slowest list head (:func:`gather_window`), on OS it holds a fold's
  distinct pixels over the reduction indices in flight (:func:`gather_window_os`).  IS column
  passes gather the filter stream and have no window: each gathered operand is an SRAM read,
  which is why ``--optimize energy`` often picks a shared-stream pass (or dense) there.

Fold cycles come from :func:`accel_sim.dataflow.fold_cycles`; :mod:`accel_sim.pe_array`
executes the same schedules operand by operand and must agree cycle for cycle.

When only densities are known, the gate pattern is drawn (:func:`draw_mask`) with a numpy
PCG64 generator seeded from ``(config.seed, layer index)``: per-element gates from independent
Bernoulli(channel density) variables per output element (no spatial correlation), block gates
as density x blocks on-blocks per channel group (rounded down or up) at random places; channels
that share one decision (``granularity`` > 1) share one draw at the group's mean density.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from accel_sim.config import AccelConfig
from accel_sim.dataflow import ceil_div, fold_cycles, folded_cycles, gemm_dims, sram_accesses, total_folds
from accel_sim.memory import usable_words
from accel_sim.profile import GateSpec
from accel_sim.topology import Layer

MODES = ("packed", "group", "column")
#: conditional-pass mappings each ``gate_schedule`` allows (the base pass is packed or group)
COND_MODES = {"auto": ("column", "packed", "group"), "column": ("column",), "union": ("packed", "group")}


def draw_mask(layer: Layer, spec: GateSpec, rng: np.random.Generator) -> np.ndarray:
    """Boolean gate decisions [output pixels M (image-major, row-major over each output map),
    output channels N] at each channel group's measured density (``granularity`` channels share
    one decision).

    Per-element gates draw one Bernoulli per output element: a layer has thousands of decisions
    (3136 in ResNet-20's last stage at 28x28), so its drawn density is within about a percentage
    point of the profile's.  Block gates (``tile`` > 1x1) are drawn per block, constant on each
    block as the trained gates are (ragged edge blocks clipped), and stratified: each group
    switches on ``d * n`` of its ``n`` blocks over the batch, rounded down or up so that it is
    right in expectation and the layer's total is right to one block, at random places.  A 28x28 map in 7x7 blocks has only 16 blocks per image and
    group, and independent draws there simulated a layer profiled at 0.445 at 11/16 = 0.69."""
    g = spec.granularity
    dens = spec.channel_density.reshape(-1, g).mean(axis=1).astype(np.float32)
    th, tw = spec.tile
    if (th, tw) == (1, 1):
        mask = rng.random((layer.gemm_m, dens.size), dtype=np.float32) < dens
    else:   # per image of the batch, blocks over its output map
        ho, wo = layer.output_hw
        shape = (layer.batch, -(-ho // th), -(-wo // tw))
        n = math.prod(shape)
        # systematic rounding with one offset: each group gets floor or ceil of d n blocks (in
        # expectation d n) and the layer's total is within one block of the profile's
        cum = np.floor(np.concatenate(([0.0], np.cumsum(dens.astype(np.float64) * n))) + rng.random())
        on = np.diff(cum).astype(np.int64)
        ranks = rng.random((n, dens.size)).argsort(axis=0).argsort(axis=0)   # a random order per group
        blocks = (ranks < np.minimum(on, n)).reshape(*shape, dens.size)
        mask = blocks.repeat(th, axis=1)[:, :ho].repeat(tw, axis=2)[:, :, :wo].reshape(layer.gemm_m, dens.size)
    return np.repeat(mask, g, axis=1) if g > 1 else mask


def gate_classes(n: int, k: int, partitions: int, grouped: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class of each filter [N], base-set membership [classes, K], conditional membership).

    Partition q is reduction rows ``[q*K/p, (q+1)*K/p)``; a grouped base gives filter group g
    partition g, an ungrouped one gives every filter partition 0.
    """
    kb = k // partitions
    part = np.arange(k) // kb
    if grouped:
        cls = np.arange(n) // (n // partitions)
        base = part[None, :] == np.arange(partitions)[:, None]
    else:
        cls = np.zeros(n, dtype=np.int64)
        base = (part == 0)[None, :]
    return cls, base, ~base


@dataclass(frozen=True)
class PassCounts:
    """Cycles and action counts of one pass (base or conditional) under one mapping."""

    cycles: int
    folds: int
    balanced_cycles: int   # the same folds if every stream were the mean per-column list
    macs: int
    ifmap_reads: int
    filter_reads: int
    ofmap_writes: int
    ofmap_reads: int

    @property
    def sram_reads(self) -> int:
        return self.ifmap_reads + self.filter_reads + self.ofmap_reads


EMPTY_PASS = PassCounts(0, 0, 0, 0, 0, 0, 0, 0)


def _tiles(x: np.ndarray, width: int) -> np.ndarray:
    """Split the last axis into tiles of ``width`` (zero padded): [..., tiles, width]."""
    size = x.shape[-1]
    nt = -(-size // width)
    pad = np.zeros(x.shape[:-1] + (nt * width,), dtype=x.dtype)
    pad[..., :size] = x
    return pad.reshape(x.shape[:-1] + (nt, width))


def _chunks_touched(rows: np.ndarray, member: np.ndarray, height: int) -> np.ndarray:
    """For reduction rows ``rows`` laid out in order down the array in chunks of ``height``:
    how many chunks hold at least one row of each class set (``member`` [classes, K])."""
    pos = np.arange(rows.size) // height
    hit = member[:, rows]                                   # [classes, len(rows)]
    touched = np.zeros((member.shape[0], max(1, -(-rows.size // height))), dtype=bool)
    for g in range(member.shape[0]):
        touched[g, np.unique(pos[hit[g]])] = True
    return touched.sum(axis=1)


def _filters_on_columns(dataflow: str, rows: int, cols: int, needed: np.ndarray, cls: np.ndarray,
                        member: np.ndarray, mode: str, accumulate: bool, share: int = 1) -> PassCounts:
    """OS / WS: filters on the columns, pixels streamed (WS) or on the rows (OS).  ``share``
    (column mode): aligned runs of that many columns carry one list and one gather feed."""
    size = member.sum(axis=1)                               # reduction rows per class
    ncls = member.shape[0]
    per_col = needed.sum(axis=0)                            # active list length per filter
    col_set = size[cls]                                     # its reduction rows
    macs = int((per_col * col_set).sum())
    first = 0 if accumulate else int(per_col.sum())         # outputs whose first psum is a write
    tn = _tiles(needed, cols)                               # [M, tiles, C]
    lists = _tiles(per_col, cols)                           # [tiles, C]
    width = _tiles(np.ones_like(per_col), cols).sum(axis=1)
    mean = ceil_div(lists.sum(axis=1), width)
    if mode == "column":
        length = lists.max(axis=1)
        work = length > 0
        s = int(size[0])                                    # all classes have the same set size
        if dataflow == "os":
            rf = ceil_div(length, rows)
            per = fold_cycles("os", rows, cols, s)
            cycles, bal = int((rf * per).sum()), int((ceil_div(mean, rows) * per).sum())
            filt = int((ceil_div(per_col, rows) * s).sum())
            writes = int(per_col.sum())
        else:
            rf = int(ceil_div(s, rows))
            cycles = int((rf * fold_cycles("ws", rows, cols, length[work])).sum())
            bal = int((rf * fold_cycles("ws", rows, cols, mean[work])).sum())
            rf = np.where(work, rf, 0)
            filt = int(((per_col > 0) * col_set).sum())
            writes = int(per_col.sum()) * int(ceil_div(s, rows))
        gathered = int((per_col[::share] * col_set[::share]).sum())   # one feed per shared run
        return PassCounts(cycles, int(rf.sum()), bal, macs, gathered, filt, writes, writes - first)
    # packed: one shared stream per column tile; rows = union of the sets of the classes held
    union = tn.any(axis=2).sum(axis=0)                      # union of the tile's active pixels
    tcls = _tiles(cls, cols)
    live_col = lists > 0
    present = np.zeros((tcls.shape[0], ncls), dtype=bool)
    for g in range(ncls):
        present[:, g] = ((tcls == g) & live_col).any(axis=1)
    extent = (present.astype(np.int64) @ member.astype(np.int64) > 0).sum(axis=1)
    work = union > 0
    if dataflow == "os":
        rf = ceil_div(union, rows)
        cycles = int((rf * fold_cycles("os", rows, cols, extent)).sum())
        bal = int((ceil_div(mean, rows) * fold_cycles("os", rows, cols, extent)).sum())
        ifm = int((union * extent).sum())
        filt = int((rf * _tiles(col_set * (per_col > 0), cols).sum(axis=1)).sum())
        writes = int(per_col.sum())
        folds = int(rf.sum())
    else:
        rf = np.where(work, ceil_div(extent, rows), 0)
        cycles = int((rf * fold_cycles("ws", rows, cols, union))[work].sum())
        bal = int((rf * fold_cycles("ws", rows, cols, mean))[work].sum())
        ifm = int((union * extent).sum())
        filt = int(((per_col > 0) * col_set).sum())
        writes = 0
        for j in np.nonzero(work)[0]:
            rows_j = np.nonzero(member[present[j]].any(axis=0))[0]
            touch = _chunks_touched(rows_j, member, rows)    # row folds each class's psum visits
            writes += int((lists[j] * touch[tcls[j]]).sum())
        folds = int(rf.sum())
    return PassCounts(cycles, folds, bal, macs, ifm, filt, writes, writes - first)


def _pixels_on_columns(rows: int, cols: int, needed: np.ndarray, cls: np.ndarray, member: np.ndarray,
                       mode: str, accumulate: bool) -> PassCounts:
    """IS: pixels stationary on the columns, filters streamed, reduction rows shared per fold."""
    ncls = member.shape[0]
    size = member.sum(axis=1)
    onehot = cls[:, None] == np.arange(ncls)[None, :]       # [N, classes]
    cnt = needed.astype(np.int64) @ onehot                  # [M, classes] active filters per class
    macs = int((cnt * size).sum())
    first = 0 if accumulate else int(needed.sum())
    rows_k = np.nonzero(member[cnt.sum(axis=0) > 0].any(axis=0))[0]
    if rows_k.size == 0:
        return EMPTY_PASS
    tile_of = np.arange(rows_k.size) // rows
    nrt = int(tile_of[-1]) + 1
    overlap = np.zeros((nrt, ncls), dtype=np.int64)         # rows of each class set in each row tile
    for i in range(nrt):
        overlap[i] = member[:, rows_k[tile_of == i]].sum(axis=1)
    elig = overlap > 0                                      # [row tiles, classes]
    rows_used = np.bincount(tile_of)
    tc = _tiles(cnt.T, cols)                                # [classes, pixel tiles, C]
    width = _tiles(np.ones(needed.shape[0], dtype=np.int64), cols).sum(axis=1)
    per_col = np.einsum("ig,gjc->ijc", elig.astype(np.int64), tc)     # [row tiles, pixel tiles, C]
    mean = ceil_div(per_col.sum(axis=2), width[None, :])
    if mode == "column":
        length = per_col.max(axis=2)
        filt = int(np.einsum("ig,gjc->", overlap, tc))
    else:
        tn = _tiles(needed.T, cols)                         # [N, pixel tiles, C]
        ucnt = (tn.any(axis=2).astype(np.int64).T @ onehot)  # [pixel tiles, classes] union filters
        length = elig.astype(np.int64) @ ucnt.T              # [row tiles, pixel tiles]
        filt = int((overlap @ ucnt.T).sum())
    work = length > 0
    cycles = int(fold_cycles("is", rows, cols, length)[work].sum())
    bal = int(fold_cycles("is", rows, cols, mean)[work].sum())
    ifm = int((work * rows_used[:, None] * width[None, :]).sum())
    writes = int(per_col[work].sum())
    return PassCounts(cycles, int(work.sum()), bal, macs, ifm, filt, writes, writes - first)


def pass_counts(dataflow: str, rows: int, cols: int, needed: np.ndarray, cls: np.ndarray,
                member: np.ndarray, mode: str, accumulate: bool, share: int = 1) -> PassCounts:
    """One pass: output (m, n) is computed over reduction rows ``member[cls[n]]`` iff ``needed[m, n]``.

    ``accumulate``: every output adds onto a stored partial sum (the conditional pass), so each
    psum write is a read-modify-write.  ``share`` (OS/WS column mode; see :func:`feed_share`):
    aligned runs of ``share`` columns have identical lists and one gather feed each.
    """
    if mode not in MODES:
        raise ValueError(f"mode: got {mode!r}; allowed: {', '.join(MODES)}")
    if not needed.any():
        return EMPTY_PASS
    if mode == "group":
        parts = [pass_counts(dataflow, rows, cols, needed[:, cls == g], np.zeros(int((cls == g).sum()), np.int64),
                             member[g:g + 1], "packed", accumulate) for g in range(member.shape[0])]
        return PassCounts(*(sum(getattr(p, f) for p in parts) for f in PassCounts.__dataclass_fields__))
    if dataflow == "is":
        return _pixels_on_columns(rows, cols, needed, cls, member, mode, accumulate)
    if dataflow in ("os", "ws"):
        return _filters_on_columns(dataflow, rows, cols, needed, cls, member, mode, accumulate, share)
    raise ValueError(f"dataflow: got {dataflow!r}; allowed: os, ws, is")


def gate_drain(dataflow: str, rows: int, cond: PassCounts, gate_latency: int) -> int:
    """Cycles between the last base fold and the first conditional fold: OS must first shift
    the last base fold's accumulators out (R cycles), then the gate compacts the lists.  None
    when nothing is active (the base drain is then the layer's ordinary epilogue)."""
    if not cond.folds:
        return 0
    return (rows if dataflow == "os" else 0) + gate_latency


@dataclass(frozen=True)
class GatedCounts:
    """Cycle and action counts of one gated layer under the chosen schedule (compute only;
    stalls come from memory)."""

    schedule: str          # "<base mapping>+<conditional mapping>", or "dense" (gate not worth it)
    base_cycles: int
    cond_cycles: int
    gate_cycles: int
    folds: int
    base_macs: int
    gated_macs: int        # MACs the gated schedule needs (base + active x conditional)
    executed_macs: int     # MACs the chosen schedule runs (= all MACs when it fell back to dense)
    skipped_macs: int
    active_outputs: int
    compares: int
    ifmap_reads: int
    filter_reads: int
    ofmap_writes: int
    ofmap_reads: int
    active_channels: int   # output channels with at least one active output
    active_pixels: int     # output pixels with at least one active output
    cond_balanced_cycles: int  # conditional pass if every stream were its fold's mean list
    fill_drain_cycles: int     # fold fill/drain of all folds (fold cycles with T = 0)
    gated_compute_cycles: int = 0  # best gated schedule, also when the dense mapping was cheaper
    candidates: dict = dataclasses.field(default_factory=dict)  # "<base>+<cond>" -> compute cycles
    gather_hits: int = 0       # of ifmap_reads, those served by the gather window (not the SRAM)
    gather_fills: int = 0      # words copied ifmap SRAM -> gather window
    ifmap_fetch: float = 1.0   # DRAM ifmap words / the dense mapping's, when the ifmap does not fit
    interleaved: bool = False  # passes run column tile by column tile (psums of the layer do not fit)

    @property
    def compute_cycles(self) -> int:
        return self.base_cycles + self.gate_cycles + self.cond_cycles


def gather_window(needed: np.ndarray, cond_rows: int, rows: int, cols: int, buffer_words: float) -> tuple[int, int]:
    """(operand reads served by the WS gather window, words filled into it) of a column pass.

    Why: per-column lists break the WS array's horizontal input sharing, and a gather straight
    from the ifmap SRAM costs one SRAM read per MAC.  The lists are ascending in pixel index and
    advance one entry per cycle, so the columns of a tile need pixel vectors close to each other.
    The window holds the ``buffer_words // R`` pixel vectors (R words each: one row fold's slice)
    from the slowest column's list head of R-1 cycles ago on (the rows are skewed); each pixel is copied into it once from the ifmap
    SRAM as the window slides, and a column whose head lies inside it reads there.  Heads
    further ahead gather from the SRAM as before, so cycles are unchanged.  Assumed: the window
    delivers one vector per column per cycle, as the per-column gather ports already do.
    """
    span = int(buffer_words // max(1, min(rows, cond_rows)))
    hits = fills = 0
    if span < 1:
        return 0, 0
    for j in range(0, needed.shape[1], cols):
        tile = needed[:, j:j + cols].T                       # [columns, M]
        col, pix, rank = _column_lists(tile)
        if pix.size == 0:
            continue
        pos = np.full((tile.shape[0], int(rank.max()) + 1), -1, dtype=np.int64)
        pos[col, rank] = pix
        live = pos >= 0
        lo = np.where(live, pos, np.iinfo(np.int64).max).min(axis=0)   # slowest head per cycle
        # row r of the fold works r cycles behind row 0 (systolic skew), so the window keeps
        # the slowest head of R-1 cycles ago
        lo = lo[np.maximum(np.arange(lo.size) - (min(rows, cond_rows) - 1), 0)]
        hits += int((live & (pos - lo[None, :] < span)).sum()) * cond_rows
        fills += int(pix.max() - pix.min() + 1) * cond_rows
    return hits, fills


def _column_lists(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(column, pixel, rank in its column's list) of every active entry of ``tile`` [columns, M]."""
    col, pix = np.nonzero(tile)
    lens = tile.sum(axis=1)
    return col, pix, np.arange(pix.size) - np.repeat(np.cumsum(lens) - lens, lens)


def gather_window_os(needed: np.ndarray, cond_rows: int, rows: int, cols: int,
                     buffer_words: float) -> tuple[int, int]:
    """(operand reads served by the OS gather window, words filled into it) of a column pass.

    Why: on OS a column pass gives PE (r, c) output ``list_c[f*R + r]``, so the array's rows no
    longer share one pixel and every operand would be its own SRAM read.  A fold needs, per
    reduction index, the values of its distinct pixels only, and the skew keeps R + C - 1
    reduction indices in flight: a window of ``distinct pixels x (R + C - 1)`` words, filled
    once per (pixel, index) from the SRAM, serves every PE of the fold (one read per word per
    cycle per PE, as the gather ports assume).  A fold whose window does not fit gathers from
    the SRAM as before.
    """
    depth = min(rows + cols - 1, cond_rows)
    hits = fills = 0
    for j in range(0, needed.shape[1], cols):
        col, pix, rank = _column_lists(needed[:, j:j + cols].T)
        if pix.size == 0:
            continue
        fold = rank // rows
        entries = np.bincount(fold)
        distinct = np.bincount(np.unique(fold * needed.shape[0] + pix) // needed.shape[0], minlength=entries.size)
        fits = distinct * depth <= buffer_words
        hits += int(entries[fits].sum()) * cond_rows
        fills += int(distinct[fits].sum()) * cond_rows
    return hits, fills


def ifmap_fetch_fraction(needed: np.ndarray, cls: np.ndarray, base_set: np.ndarray, cols: int,
                         ifmap_words: int, capacity: float) -> float:
    """DRAM ifmap words of the gated passes over the dense mapping's, when the ifmap does not fit
    on chip and is re-fetched per column tile (WS/OS).  Per tile the base pass fetches the
    channels of the tile's base partitions for all pixels; if that slice fits in the ifmap SRAM
    it stays for the conditional pass, which then fetches only the other channels, and only for
    pixels active in the tile; if not, the conditional pass re-fetches each filter's whole
    conditional set for those pixels."""
    fracs = []
    for j in range(0, needed.shape[1], cols):
        present = np.unique(cls[j:j + cols])
        base_share = float(base_set[present].any(axis=0).mean())
        stays = ifmap_words * base_share <= capacity
        rest = 1.0 - base_share if stays else 1.0 - float(base_set[present].mean(axis=1).min())
        pixels = float(needed[:, j:j + cols].any(axis=1).mean())
        fracs.append(base_share + rest * pixels)
    return float(np.mean(fracs))


def feed_share(dataflow: str, cols: int, mask: np.ndarray, granularity: int, cls: np.ndarray) -> int:
    """Columns that share one gather feed in a column pass: the widest aligned run, dividing
    ``gcd(G, C)``, on which both the mask and the filters' class (their reduction rows) are
    constant, for block gates of G channels on OS/WS (1: no sharing).

    Why: a block gate decides G adjacent output channels at once, so G adjacent columns have
    the same active list; where they also share a base partition (same conditional rows), the
    compiler, which knows G, gangs each aligned run (runs never straddle a column tile) onto one
    gather port whose operand then moves across the run as in the dense array: one SRAM (or
    window) read serves the whole run.  Cycles are those of per-column lists.  IS puts pixels on
    the columns and gathers the filter stream, so it gets no sharing here.
    """
    if dataflow == "is":
        return 1
    g = math.gcd(granularity, cols)
    for w in sorted((d for d in range(2, g + 1) if g % d == 0), reverse=True):
        if mask.shape[1] % w:
            continue
        runs, classes = mask.reshape(mask.shape[0], -1, w), cls.reshape(-1, w)
        if bool((runs == runs[:, :, :1]).all()) and bool((classes == classes[:, :1]).all()):
            return w
    return 1


#: gather windows of the column conditional pass, per dataflow (IS gathers filters: none)
WINDOWS = {"ws": gather_window, "os": gather_window_os}


def _psums_interleave(layer: Layer, cfg: AccelConfig) -> bool:
    """Run base and conditional pass column tile by column tile when the layer's base partial
    sums or its ifmap do not all fit on chip: then only one tile's psums wait for the gate and
    its base inputs are still in the ifmap SRAM for its conditional pass (a gate drain per tile
    is charged).  Counted in words like the dense model's working sets."""
    return (layer.ofmap_words > usable_words(cfg.ofmap_sram_kb, cfg)
            or layer.ifmap_words > usable_words(cfg.ifmap_sram_kb, cfg))


def _dense_counts(layer: Layer, cfg: AccelConfig, common: dict) -> GatedCounts:
    """The layer's dense mapping, as a schedule option (gate ignored, every output in full)."""
    df, r, c = cfg.dataflow, cfg.rows, cfg.cols
    m, n, k = layer.gemm_m, layer.gemm_n, layer.gemm_k
    sram = {key: int(v) for key, v in sram_accesses(df, r, c, m, n, k).items()}
    folds = int(total_folds(df, r, c, m, n, k))
    fill = int(fold_cycles(df, r, c, 0))
    return GatedCounts(schedule="dense", base_cycles=int(folded_cycles(df, r, c, m, n, k)), cond_cycles=0,
                       gate_cycles=0, folds=folds, base_macs=m * n * k, executed_macs=m * n * k,
                       skipped_macs=0, compares=0, cond_balanced_cycles=0, fill_drain_cycles=fill * folds,
                       **sram, **common)


def _combine(names: tuple[str, str], base: PassCounts, cond: PassCounts, layer: Layer, cfg: AccelConfig,
             extra: dict, common: dict) -> GatedCounts:
    """One gated schedule: base pass, gate, conditional pass (``extra``: memory-side fields)."""
    df, r, c = cfg.dataflow, cfg.rows, cfg.cols
    tiles = 1
    if extra["interleaved"]:
        tiles = int(ceil_div(gemm_dims(df, layer.gemm_m, layer.gemm_n, layer.gemm_k)[1], c))
    gate = gate_drain(df, r, cond, cfg.gate_latency) * tiles
    hits, fills = extra["window"] if names[1] == "column" else (0, 0)
    fill = int(fold_cycles(df, r, c, 0))
    return GatedCounts(
        schedule=f"{names[0]}+{names[1]}" if cond.folds else names[0],
        base_cycles=base.cycles, cond_cycles=cond.cycles, gate_cycles=gate,
        folds=base.folds + cond.folds, base_macs=base.macs, executed_macs=base.macs + cond.macs,
        skipped_macs=layer.macs - base.macs - cond.macs, compares=layer.gemm_m * layer.gemm_n,
        ifmap_reads=base.ifmap_reads + cond.ifmap_reads, filter_reads=base.filter_reads + cond.filter_reads,
        ofmap_writes=base.ofmap_writes + cond.ofmap_writes, ofmap_reads=base.ofmap_reads + cond.ofmap_reads,
        cond_balanced_cycles=cond.balanced_cycles, fill_drain_cycles=fill * (base.folds + cond.folds),
        gather_hits=hits, gather_fills=fills, ifmap_fetch=extra["ifmap_fetch"],
        interleaved=extra["interleaved"], **common)


def _check(layer: Layer, spec: GateSpec) -> None:
    if layer.groups != 1:
        raise ValueError(f"layer {layer.name}: gated layers must have groups 1, got {layer.groups}")
    if layer.in_channels % spec.partitions:
        raise ValueError(f"layer {layer.name}: partitions {spec.partitions} must divide in_channels "
                         f"{layer.in_channels}")
    if spec.channel_density.size != layer.out_channels:
        raise ValueError(f"layer {layer.name}: channel_density has {spec.channel_density.size} entries, "
                         f"out_channels is {layer.out_channels}")


def _passes(layer: Layer, spec: GateSpec, cfg: AccelConfig, rng: np.random.Generator,
            mask: np.ndarray | None):
    """Every legal base and conditional pass, the memory-side facts and the common counters."""
    _check(layer, spec)
    df, r, c = cfg.dataflow, cfg.rows, cfg.cols
    m, n, k = layer.gemm_m, layer.gemm_n, layer.gemm_k
    p = spec.partitions
    grouped = spec.grouped and n % p == 0
    cls, base_set, cond_set = gate_classes(n, k, p, grouped)
    if mask is None:
        mask = draw_mask(layer, spec, rng)
    everything = np.ones((m, n), dtype=bool)
    base_modes = ("packed", "group") if grouped else ("packed",)
    cond_modes = tuple(md for md in COND_MODES[cfg.gate_schedule] if grouped or md != "group")
    share = feed_share(df, c, mask, spec.granularity, cls)
    bases = {md: pass_counts(df, r, c, everything, cls, base_set, md, False) for md in base_modes}
    conds = {md: pass_counts(df, r, c, mask, cls, cond_set, md, True, share) for md in cond_modes}
    window = (0, 0)
    if df in WINDOWS and "column" in conds and cfg.gather_buffer_kb > 0:
        # one list per shared run of columns: the window serves the run's feed once
        window = WINDOWS[df](mask[:, ::share], k - k // p, r, c // share,
                             cfg.gather_buffer_kb * 1024 / cfg.word_bytes)
    extra = {"window": window, "interleaved": _psums_interleave(layer, cfg),
             "ifmap_fetch": 1.0}
    if df in ("ws", "os"):
        extra["ifmap_fetch"] = ifmap_fetch_fraction(mask, cls, base_set, c, layer.ifmap_words,
                                                    usable_words(cfg.ifmap_sram_kb, cfg))
    common = dict(active_outputs=int(mask.sum()), active_channels=int(mask.any(axis=0).sum()),
                  active_pixels=int(mask.any(axis=1).sum()))
    return bases, conds, extra, common


def _sram_reads(g: GatedCounts) -> int:
    """Operand and psum SRAM reads: the tie-break between equally fast schedules (more reuse)."""
    return g.ifmap_reads + g.filter_reads + g.ofmap_reads


def gated_options(layer: Layer, spec: GateSpec, cfg: AccelConfig, rng: np.random.Generator,
                  mask: np.ndarray | None = None) -> dict[str, GatedCounts]:
    """Every legal schedule of one gated layer: each base x conditional mapping, and ``dense``
    (always listed; whether it may be chosen is ``cfg.dense_fallback``'s business).  Each
    carries the fewest-compute-cycle gated schedule's cycles and MACs, and every candidate's."""
    bases, conds, extra, common = _passes(layer, spec, cfg, rng, mask)
    out = {f"{bn}+{cn}": _combine((bn, cn), bp, cp, layer, cfg, extra, common | {"gated_macs": bp.macs + cp.macs})
           for bn, bp in bases.items() for cn, cp in conds.items()}
    best = min(out.values(), key=lambda g: (g.compute_cycles, _sram_reads(g)))
    top = dict(gated_compute_cycles=best.compute_cycles, candidates={k: g.compute_cycles for k, g in out.items()})
    out = {name: dataclasses.replace(g, **top) for name, g in out.items()}
    out["dense"] = _dense_counts(layer, cfg, common | top | {"gated_macs": best.gated_macs})
    return out


def gated_layer(layer: Layer, spec: GateSpec, cfg: AccelConfig, rng: np.random.Generator,
                mask: np.ndarray | None = None) -> GatedCounts:
    """Schedule one gated layer on compute cycles alone: the cheapest legal base x conditional
    mapping (ties: fewer SRAM reads), or the dense mapping when that is not slower (and
    ``cfg.dense_fallback``).  ``mask`` [M, N] overrides the drawn gate pattern.
    :mod:`accel_sim.simulate` instead chooses among :func:`gated_options` on total cycles with
    stalls, or energy (``cfg.optimize``); this is the choice the cycle-stepped array replays."""
    opts = gated_options(layer, spec, cfg, rng, mask)
    dense = opts.pop("dense")
    gated = min(opts.values(), key=lambda g: (g.compute_cycles, _sram_reads(g)))
    if cfg.dense_fallback and dense.compute_cycles <= gated.compute_cycles:
        return dense
    return gated
