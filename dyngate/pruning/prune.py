"""``dyngate.prune``: static channel pruning = criterion -> selection -> surgery.

The three stages are separate on purpose (Torch-Pruning mixes them in one pruner object):
``criteria`` scores every row of every prunable channel group, ``select_keep`` turns scores and
a ratio into a keep set per group (local or global ranking, rounding, balanced option-A pad
zones), and ``surgery.prune_groups`` builds the smaller model and records the history.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn

from dyngate.pruning import criteria
from dyngate.gating.convert import gatable_width_multiple
from dyngate.errors import PruningError
from dyngate.graph import ChannelGroup, GraphView, capture
from dyngate.pruning.latency import LatencyTable
from dyngate.pruning.surgery import prune_groups, refuse_gated, shortcut_zones, zone_of_rows


DEFAULT_MAX_GROUP_RATIO = 0.9
"""Global ranking takes at most this share of any one channel group unless told otherwise, so
a criterion that scores a whole group lowest (HRank on a rank-deficient block) leaves a tenth of
it instead of refusing; ``max_group_ratio=1.0`` lifts the cap (emptying a group is then an error)."""


def _group_cap(max_group_ratio: float | None) -> float:
    return DEFAULT_MAX_GROUP_RATIO if max_group_ratio is None else max_group_ratio


def _check_cap(r: Any) -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0 < r <= 1) or math.isnan(r):
        raise PruningError(f"max_group_ratio must be a number in (0, 1], got {r!r}")
    return float(r)


def _check_ratio(r: Any, what: str) -> float:
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0 <= r < 1) or math.isnan(r):
        raise PruningError(f"{what} must be a number in [0, 1), got {r!r}")
    return float(r)


def _label(g: ChannelGroup) -> str:
    outs = [l for l, role in g.members if role == "out"]
    return f"group {g.id} (layers {', '.join(outs[:4])}{' ...' if len(outs) > 4 else ''})"


def _round_keep(n_keep: int, size: int, round_to: int | None) -> int:
    if round_to:
        if size <= round_to:
            return size
        n_keep = max(round_to, (n_keep // round_to) * round_to)
    return n_keep


def _choose(scores: np.ndarray, n_keep: int, zones: np.ndarray | None) -> list[int]:
    """Rows with the highest scores; in an option-A pad-zone group, equally many from the low
    and the high zone (PadShortcut pads symmetrically), the copied block ranked freely."""
    if zones is None:
        return sorted(np.argsort(-scores, kind="stable")[:n_keep].tolist())
    lo, hi, mid = (np.flatnonzero(zones == v) for v in (-1, 1, 0))
    n_mid = min(len(mid), n_keep)
    n_pad = (n_keep - n_mid) // 2
    pick = lambda rows, k: rows[np.argsort(-scores[rows], kind="stable")[:k]].tolist()  # noqa: E731
    return sorted(pick(mid, n_mid) + pick(lo, n_pad) + pick(hi, n_pad))


def select_keep(view: GraphView, scores: Mapping[int, np.ndarray], ratio: float, *,
                scope: str = "global", round_to: int | None = None,
                per_group_ratio: Mapping[int, float] | None = None,
                max_group_ratio: float | None = None) -> dict[int, list[int]]:
    """Keep sets from scores. ``local``: each group drops floor(ratio * size) of its own lowest
    rows. ``global``: one ranking over all groups' scores drops ratio * (all rows) in total.
    ``max_group_ratio`` caps what global ranking may take from one group (Torch-Pruning's
    ``max_pruning_ratio``; None: :data:`DEFAULT_MAX_GROUP_RATIO`), the next-lowest rows of other
    groups go instead. Groups in ``per_group_ratio`` always use their own local ratio. A group
    is never emptied: that is an error naming it."""
    per_group_ratio = per_group_ratio or {}
    by_id = {g.id: g for g in view.groups}
    zones = _pad_zones(view)
    counts: dict[int, int] = {}
    free = [gid for gid in scores if gid not in per_group_ratio]
    if scope == "global" and free:
        # one ranking; ties (e.g. equal |gamma| in an untrained net) are broken by each row's
        # relative position in its own group, so they spread over groups instead of emptying one
        vals = np.concatenate([scores[g] for g in free])
        frac = np.concatenate([np.argsort(np.argsort(scores[g], kind="stable")) / len(scores[g]) for g in free])
        owner = np.concatenate([np.full(len(scores[g]), g) for g in free])
        order = owner[np.lexsort((frac, vals))]
        n_drop = int(ratio * len(vals))
        # skip rows of groups that reached their cap; the next-lowest rows go instead
        cap = {g: int(_group_cap(max_group_ratio) * by_id[g].size) for g in free}
        dropped = []
        for g in order.tolist():
            if len(dropped) == n_drop:
                break
            if cap[g] > 0:
                cap[g] -= 1
                dropped.append(g)
        dropped = np.asarray(dropped, dtype=np.int64)
        counts = {g: by_id[g].size - int((dropped == g).sum()) for g in free}
    else:
        for g in free:
            counts[g] = by_id[g].size - int(ratio * by_id[g].size)
    for g, r in per_group_ratio.items():
        counts[g] = by_id[g].size - int(r * by_id[g].size)
    return _keep_sets(view, scores, counts, zones, round_to, f"ratio {ratio} ({scope})")


def _keep_sets(view: GraphView, scores: Mapping[int, np.ndarray], counts: Mapping[int, int],
               zones: Mapping[int, np.ndarray], round_to: int | None, what: str) -> dict[int, list[int]]:
    """Rounded, pad-zone-balanced row counts -> the highest-scoring rows of each group."""
    by_id = {g.id: g for g in view.groups}
    keep = {}
    for gid, n_keep in counts.items():
        g = by_id[gid]
        n_keep = _round_keep(n_keep, g.size, round_to)
        if gid in zones:
            n_mid = int((zones[gid] == 0).sum())
            if n_keep > n_mid and (n_keep - n_mid) % 2:
                n_keep += 1 if n_keep < g.size else -1
        if n_keep <= 0:
            raise PruningError(f"{what} would remove every channel of {_label(g)}; "
                                  "use a smaller ratio, scope='local', max_group_ratio=, or ignore/per_layer for it")
        if n_keep < g.size:
            keep[gid] = _choose(scores[gid], n_keep, zones.get(gid))
    return keep


def _row_widths(view: GraphView) -> dict[int, list[tuple[str, int, int]]]:
    """Per group: (layer, dim, channels per row) for each layer dimension it feeds; dim 0 is the
    input width, 1 the output width (a linear after flatten counts ``in_factor`` per channel)."""
    out: dict[int, list[tuple[str, int, int]]] = {}
    for g in view.groups:
        for (layer, role), arr in g.members.items():
            per = arr.shape[1] * (g.in_factor.get(layer, 1) if role == "in" else 1)
            out.setdefault(g.id, []).append((layer, 0 if role == "in" else 1, per))
    return out


def select_keep_latency(view: GraphView, scores: Mapping[int, np.ndarray], ratio: float, table: LatencyTable, *,
                        round_to: int | None = None, per_group_ratio: Mapping[int, float] | None = None,
                        max_group_ratio: float | None = None) -> dict[int, list[int]]:
    """Keep sets that remove ``ratio`` of the model time in ``table`` while keeping the most score.

    HALP's latency-saliency knapsack (arXiv:2210.06659) solved greedily: a group's options are its
    widths; an option's cost is the score of the rows it drops (lowest first), its gain the table
    time it saves in every layer the group feeds, with the other groups at their current widths.
    Each step takes the option with the least score lost per ms saved, looking past plateaus (a
    step from 32 to 24 channels that saves nothing competes as part of the step to 16), until the
    budget is met. Scores must be comparable across groups, as for global ranking.

    A row's score is a mean over the layers that produce it (see :mod:`dyngate.pruning.criteria`), but the
    time it saves is a sum over every layer it feeds; a residual-stream row, produced by each block
    of its stage, would look cheap per ms. Its cost is therefore the score times the number of
    producing layers, summed like the time (HALP sums importance over a group's layers too)."""
    per_group_ratio = per_group_ratio or {}
    by_id = {g.id: g for g in view.groups}
    zones = _pad_zones(view)
    feeds = _row_widths(view)
    counts = {g: by_id[g].size for g in scores}
    for g, r in per_group_ratio.items():
        counts[g] = _round_keep(by_id[g].size - int(r * by_id[g].size), by_id[g].size, round_to)
    times = _LayerTimes(table, feeds, by_id)
    free = [g for g in scores if g not in per_group_ratio]
    producers = {g: sum(1 for _, role in by_id[g].members if role == "out") for g in free}
    lost = {g: np.concatenate([[0.0], np.cumsum(np.sort(scores[g]) * producers[g])]) for g in free}
    options = _width_options(view, free, zones, round_to, max_group_ratio)
    touched = {g: sorted({f[0] for f in feeds[g]}) for g in free}
    dense_ms = table.model_ms()
    now = times.ms(table.layers, counts)
    budget = (1 - ratio) * dense_ms
    while now > budget + 1e-9:
        best = _cheapest_step(by_id, options, counts, lost, touched, times)
        if best is None:
            raise PruningError(f"latency budget: removing {ratio} of the table time is out of reach; "
                                  f"the allowed widths get down to {now / dense_ms:.3f} of it "
                                  "(raise max_group_ratio, or drop round_to / ignore)")
        _, g, n, saved = best
        counts[g] = n
        now -= saved
    return _keep_sets(view, scores, counts, zones, round_to, f"latency budget {ratio}")


def _pad_zones(view: GraphView) -> dict[int, np.ndarray]:
    """Per group that touches an option-A pad zone: its rows' zones (-1 low, +1 high, 0 copied)."""
    return {gid: next(iter(z.values())) for gid, z in zone_of_rows(view, shortcut_zones(view)).items()}


class _LayerTimes:
    """Table time of layers at the widths the groups' row counts give them."""

    def __init__(self, table: LatencyTable, feeds: Mapping[int, list[tuple[str, int, int]]],
                 by_id: Mapping[int, ChannelGroup]) -> None:
        self.table, self.by_id = table, by_id
        self.full = {n: tuple(table.shapes[n][:2]) for n in table.layers}
        self.into: dict[str, list[tuple[int, int, int]]] = {}
        for gid, fs in feeds.items():
            for layer, dim, per in fs:
                self.into.setdefault(layer, []).append((gid, dim, per))

    def widths(self, layers: Iterable[str], counts: Mapping[int, int],
               override: tuple[int, int] | None = None) -> dict[str, list[int]]:
        """(in, out) width per layer; ``override`` = (group, rows) replaces one group's count."""
        out = {}
        for l in layers:
            w = list(self.full[l])
            for gid, dim, per in self.into.get(l, ()):
                n = override[1] if override and override[0] == gid else counts.get(gid, self.by_id[gid].size)
                w[dim] -= (self.by_id[gid].size - n) * per
            out[l] = w
        return out

    def ms(self, layers: Iterable[str], counts: Mapping[int, int], override: tuple[int, int] | None = None) -> float:
        return sum(self.table.layer_ms(l, *w) for l, w in self.widths(layers, counts, override).items())


def _width_options(view: GraphView, free: list[int], zones: Mapping[int, np.ndarray], round_to: int | None,
                   max_group_ratio: float | None) -> dict[int, list[int]]:
    """Per group, the row counts it may shrink to: within the group cap, multiples of
    ``round_to``, and an even number of pad-zone rows (both option-A bands alike)."""
    by_id = {g.id: g for g in view.groups}
    options = {}
    for g in free:
        size = by_id[g].size
        low = max(1, size - int(_group_cap(max_group_ratio) * size))
        ns = [n for n in range(low, size) if _round_keep(n, size, round_to) == n]
        if g in zones:
            n_mid = int((zones[g] == 0).sum())
            ns = [n for n in ns if n <= n_mid or (n - n_mid) % 2 == 0]
        options[g] = ns
    return options


def _cheapest_step(by_id: Mapping[int, ChannelGroup], options: Mapping[int, list[int]], counts: Mapping[int, int],
                   lost: Mapping[int, np.ndarray], touched: Mapping[int, list[str]],
                   times: _LayerTimes) -> tuple[float, int, int, float] | None:
    """The narrower width with the least score lost per ms saved, as (cost, group, rows, ms
    saved); looking past plateaus, since every smaller width of a group competes. None: no
    allowed width saves time."""
    best = None
    for g in options:
        base = times.ms(touched[g], counts)
        for n in options[g]:
            if n >= counts[g]:
                break
            saved = base - times.ms(touched[g], counts, (g, n))
            if saved <= 1e-9:
                continue
            size = by_id[g].size
            cost = (lost[g][size - n] - lost[g][size - counts[g]]) / saved
            if best is None or cost < best[0]:
                best = (cost, g, n, saved)
    return best


def _gating_round_to(round_to: int | None, partitions: Any, granularity: Any) -> int | None:
    if partitions is None:
        return round_to
    for name, v in (("partitions", partitions), ("granularity", granularity)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise PruningError(f"{name} must be a positive integer, got {v!r}")
    step = gatable_width_multiple(partitions, True, granularity)
    if round_to is None:
        return step
    if round_to % step:
        raise PruningError(f"round_to={round_to} is not a multiple of {step}, the width step gating "
                              f"with partitions={partitions}, granularity={granularity} needs")
    return round_to


def prune(model: nn.Module, method: str, ratio: float, *, scope: str = "global",
          example_input: torch.Tensor, data: Any = None, round_to: int | None = None,
          ignore: Iterable[str] = (), per_layer: Mapping[str, float] | None = None,
          max_group_ratio: float | None = None, max_batches: int = 4, seed: int = 0,
          fold_shift: bool = True, latency: LatencyTable | None = None,
          partitions: int | None = None, granularity: int = 1) -> nn.Module:
    """Return a physically smaller copy of ``model`` with ``ratio`` of its prunable channels
    removed by criterion ``method`` (see :mod:`dyngate.pruning.criteria`).

    Coupled channels (residual adds, concats, depthwise pairs, the linear after flatten) are
    scored and removed together as one group row. ``scope`` is "global" (one ranking over all
    groups; per-layer scores are normalized first) or "local" (the same ratio in every group).
    ``round_to`` keeps each group's width a multiple of it. ``ignore`` names layers whose output
    channels must stay; ``per_layer`` maps a layer name to its own (local) ratio for the groups it
    produces. ``max_group_ratio`` caps the share global ranking may take from any one group
    (default :data:`DEFAULT_MAX_GROUP_RATIO`; 1.0 lifts it, and a ranking that would then empty
    a group is an error). ``partitions`` (and ``granularity``) prune for gating: ``round_to``
    defaults to :func:`dyngate.gating.convert.gatable_width_multiple`, the widths ``convert`` with the
    same settings gates and the fused CPU kernel runs; a given ``round_to`` must be a multiple
    of it. Data-driven criteria (hrank, ezcrop, taylor) read up to ``max_batches`` batches of
    ``data``. ``example_input`` gives the shapes and, with ``fold_shift``, the batch over which
    each removed channel's mean activation is measured and folded into its consumers (see
    :mod:`dyngate.pruning.surgery`): pass a real batch, not zeros. The input model is never modified.

    With ``latency`` (a :class:`dyngate.pruning.latency.LatencyTable` measured for this model, on the
    machine and thread count it will run on), ``ratio`` is the share of the table's model time to
    remove instead of the share of channels, and the widths are chosen for it (HALP, see
    :func:`select_keep_latency`); ``scope`` must be "global".
    """
    ratio = _check_ratio(ratio, "ratio")
    if method not in criteria.CRITERIA:
        raise PruningError(f"unknown pruning method {method!r}; known: {', '.join(sorted(criteria.CRITERIA))}")
    if scope not in ("global", "local"):
        raise PruningError(f"scope must be 'global' or 'local', got {scope!r}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise PruningError(f"round_to must be a positive integer or None, got {round_to!r}")
    round_to = _gating_round_to(round_to, partitions, granularity)
    if method in criteria.DATA_DRIVEN and data is None:
        raise PruningError(f"criterion '{method}' is data-driven: pass data= (a DataLoader or an "
                              "iterable of (x, y) batches)")
    if latency is not None and not isinstance(latency, LatencyTable):
        raise PruningError(f"latency= must be a dyngate.latency.LatencyTable, got {type(latency).__name__}")
    if latency is not None and scope != "global":
        raise PruningError("latency= ranks all groups against one time budget: use scope='global'")
    refuse_gated(model, "prune")
    view = capture(model, example_input)
    if latency is not None:
        latency.check(view)
    ignore = list(ignore)
    per_layer = dict(per_layer or {})
    for label, names in (("ignore", ignore), ("per_layer", list(per_layer))):
        for n in names:
            if n not in view.layers:
                raise PruningError(f"{label}: no conv/linear layer named '{n}'; layers are: "
                                      f"{', '.join(view.layers)}")
    for n, r in per_layer.items():
        _check_ratio(r, f"per_layer['{n}']")
    if max_group_ratio is not None:
        _check_cap(max_group_ratio)
    groups = [g for g in view.groups if g.prunable
              and not any(role == "out" and l in ignore for l, role in g.members)]
    per_group: dict[int, float] = {}
    for g in groups:
        rs = [per_layer[l] for l, role in g.members if role == "out" and l in per_layer]
        if rs:
            per_group[g.id] = min(rs)
    if not groups:
        raise PruningError("no prunable channel group left (every group carries the model "
                              "input/output or is ignored)")
    ctx = criteria.Context(model, view, groups, data, max_batches, seed)
    scores = criteria.score(method, ctx)
    meta = {"method": method, "ratio": ratio, "scope": scope, "round_to": round_to or 0}
    if latency is None:
        keep = select_keep(view, scores, ratio, scope=scope, round_to=round_to, per_group_ratio=per_group,
                           max_group_ratio=max_group_ratio)
    else:
        keep = select_keep_latency(view, scores, ratio, latency, round_to=round_to, per_group_ratio=per_group,
                                   max_group_ratio=max_group_ratio)
        meta["latency_table"] = {"batch": latency.batch, "threads": latency.threads, "machine": latency.machine}
    return prune_groups(model, example_input, keep, fold_shift=fold_shift, meta=meta)
