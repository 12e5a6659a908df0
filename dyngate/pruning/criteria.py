"""Channel importance criteria for static pruning.

Every criterion maps the model's channel groups to one score per group row (a row is one
removable unit: the coupled channels of a residual stream, a conv's output and its readers' input
channels, ...). Higher means more important; selection removes the lowest. Per-layer scores are
combined over a group's producing ("out") layers after dividing each layer's scores by their mean
over all its channels, so groups of different layers are comparable for global ranking (Torch-
Pruning's "mean" normalizer). ``bn_scale``, ``taylor``, ``cpmc`` and ``random`` are already
comparable and are not renormalized.

Criteria and sources (formulas in each function's docstring):
``l1`` Li et al. 2017 (arXiv:1608.08710); ``l2`` the same with the L2 norm; ``bn_scale`` Network
Slimming (arXiv:1708.06519); ``fpgm`` He et al. 2019 (arXiv:1811.00250); ``hrank`` Lin et al.
2020 (arXiv:2002.10179); ``ezcrop`` Lin et al. WACV'22 (arXiv:2105.03679); ``similarity``
hierarchical clustering of channels (Zhang et al., arXiv:1908.02620, with our fused conv+BN
distance); ``cpmc`` (arXiv:2011.03240) with the COP-style cost template; ``taylor`` Molchanov
et al. 2019 (arXiv:1906.10771); ``random``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dyngate.errors import ConversionError
from dyngate.graph import ChannelGroup, GraphView, is_depthwise
from netspec.layer import mac_count, param_count

Scores = dict[int, np.ndarray]


@dataclass
class Context:
    """What a criterion may read: the model, its graph view, optional data and a seed."""

    model: nn.Module
    view: GraphView
    groups: list[ChannelGroup]       # the prunable groups to score
    data: Any = None
    max_batches: int = 4
    seed: int = 0

    def batches(self, method: str) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
        if self.data is None:
            raise ConversionError(f"criterion '{method}' is data-driven: pass data= (a DataLoader or "
                                  "an iterable of (x, y) batches, or a tensor of inputs)")
        it = [self.data] if isinstance(self.data, torch.Tensor) else self.data
        for batch in itertools.islice(it, self.max_batches):
            if isinstance(batch, torch.Tensor):
                yield batch, None
            else:
                yield batch[0], (batch[1] if len(batch) > 1 else None)


# --- helpers -------------------------------------------------------------------------------------

def _weight(ctx: Context, layer: str) -> torch.Tensor:
    return ctx.model.get_submodule(layer).weight.detach().float()


def _combine(ctx: Context, per_layer: dict[str, np.ndarray], normalize: bool = True) -> Scores:
    """Per group row: mean over the group's out-layers of the (mean-normalized) layer scores."""
    out: Scores = {}
    for g in ctx.groups:
        cols = []
        for (layer, role), idx in g.members.items():
            if role != "out" or layer not in per_layer:
                continue
            s = per_layer[layer]
            if normalize:
                s = s / max(float(np.mean(s)), 1e-12)
            cols.append(s[idx].mean(1))
        if not cols:
            raise ConversionError(f"group {g.id} (layers {', '.join(g.layers)}) has no scored "
                                  "producing layer")
        out[g.id] = np.mean(cols, axis=0)
    return out


def _out_layers(ctx: Context) -> list[str]:
    return sorted({layer for g in ctx.groups for layer, role in g.members if role == "out"})


def _norm_scores(ctx: Context, p: int) -> Scores:
    per = {l: _weight(ctx, l).flatten(1).norm(p=p, dim=1).numpy() for l in _out_layers(ctx)}
    return _combine(ctx, per)


# --- weight-only criteria ------------------------------------------------------------------------

def l1(ctx: Context) -> Scores:
    """s_j = sum_{c,h,w} |W_{j,c,h,w}| (Li et al. 2017): small filters contribute little."""
    return _norm_scores(ctx, 1)


def l2(ctx: Context) -> Scores:
    """s_j = ||W_j||_2 (the L2 variant of Li et al.; Torch-Pruning's default magnitude)."""
    return _norm_scores(ctx, 2)


def bn_scale(ctx: Context) -> Scores:
    """s_c = |gamma_c| of the BN after the conv (Network Slimming, Liu et al. 2017), averaged over
    the BNs of a coupled group; ranked globally on raw |gamma| as in the paper. Works best after
    training with an L1 penalty on gamma (see ``prune_schedule.slimming_penalty``)."""
    out: Scores = {}
    for g in ctx.groups:
        if not g.bns:
            raise ConversionError(f"criterion 'bn_scale': group {g.id} (layers {', '.join(g.layers)}) "
                                  "has no BatchNorm; ignore those layers or use another criterion")
        cols = [ctx.model.get_submodule(bn).weight.detach().abs().numpy()[idx].mean(1)
                for bn, idx in g.bns.items()]
        out[g.id] = np.mean(cols, axis=0)
    return out


def fpgm(ctx: Context) -> Scores:
    """g(F_i) = sum_j ||F_i - F_j||_2 over the layer's raw flattened filters (He et al. 2019):
    filters near the geometric median are replaceable by the others, so the smallest g goes.
    Raw weights as in the paper and NNI; Torch-Pruning applies cdist to |W|^p instead."""
    per = {}
    for layer in _out_layers(ctx):
        w = _weight(ctx, layer).flatten(1)
        per[layer] = torch.cdist(w, w).sum(1).numpy()
    return _combine(ctx, per)


def random(ctx: Context) -> Scores:
    """Uniform random scores (seeded): the baseline every criterion must beat."""
    rng = np.random.default_rng(ctx.seed)
    return {g.id: rng.random(g.size) for g in ctx.groups}


def _fused(ctx: Context, layer: str) -> tuple[np.ndarray, np.ndarray]:
    """Conv+BN as an affine map per output channel: a_i = gamma_i W_i / sigma_i,
    b_i = beta_i + gamma_i (bias_i - mu_i) / sigma_i."""
    m = ctx.model.get_submodule(layer)
    w = m.weight.detach().float().flatten(1)
    b = m.bias.detach().float() if m.bias is not None else torch.zeros(w.shape[0])
    bn_name = ctx.view.layers[layer].bn
    if bn_name is not None:
        bn = ctx.model.get_submodule(bn_name)
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        w, b = w * scale[:, None], bn.bias.detach() + scale * (b - bn.running_mean)
    return w.numpy(), b.numpy()


def similarity(ctx: Context) -> Scores:
    """Agglomerative clustering of a group's channels (after Zhang et al., arXiv:1908.02620).

    Distance (our derivable stand-in for the paper's probabilistic metric): with conv+BN fused to
    y_i = a_i * x + b_i, d(i, j) = sum over the group's producing layers of ||a_i - a_j||^2 +
    (b_i - b_j)^2. Clusters are merged closest-first, each keeping the member with the larger
    ||a||; a channel absorbed at merge distance d scores d (scaled by the group's median pairwise
    distance), the last survivor scores +inf. Removing the k lowest is therefore exactly
    "cluster to size - k clusters and keep one per cluster"."""
    out: Scores = {}
    for g in ctx.groups:
        d = np.zeros((g.size, g.size))
        norm = np.zeros(g.size)
        for (layer, role), idx in g.members.items():
            if role != "out":
                continue
            a, b = _fused(ctx, layer)
            a, b = a[idx[:, 0]], b[idx[:, 0]]
            d += ((a[:, None] - a[None]) ** 2).sum(-1) + (b[:, None] - b[None]) ** 2
            norm += (a ** 2).sum(1)
        scale = np.median(d[np.triu_indices(g.size, 1)]) if g.size > 1 else 1.0
        out[g.id] = _merge_order(d / max(scale, 1e-12), norm)
    return out


def _merge_order(d: np.ndarray, norm: np.ndarray) -> np.ndarray:
    n = len(d)
    score = np.full(n, np.inf)
    alive = np.ones(n, bool)
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    for _ in range(n - 1):
        sub = np.where(alive[:, None] & alive[None], d, np.inf)
        i, j = np.unravel_index(np.argmin(sub), sub.shape)
        loser = i if norm[i] < norm[j] else j
        score[loser] = sub[i, j]
        alive[loser] = False
    return score


def _channel_macs_params(ctx: Context, g: ChannelGroup) -> tuple[float, float]:
    """MACs and parameters one row of ``g`` costs (its filters plus its readers' input slices)."""
    macs = params = 0.0
    for (layer, role), idx in g.members.items():
        shape = ctx.view.layers[layer].layer_shape
        if role == "in" and is_depthwise(shape):
            continue  # a depthwise conv's input row is its output row, counted there
        # one input channel (of a linear: in_factor features) against every filter, or one filter
        cin, cout = ((g.in_factor.get(layer, 1), shape.out_channels) if role == "in"
                     else (shape.in_channels // shape.groups, 1))
        params += idx.shape[1] * param_count(shape.kind, cin, cout, shape.kernel_size)
        macs += idx.shape[1] * mac_count(shape.kind, cin, cout, shape.kernel_size, 1, shape.output_hw)
    return max(macs, 1.0), max(params, 1.0)


CPMC_WEIGHTS = (1.0, 0.25, 0.25)  # alpha (weights), beta (MACs), gamma (params): our choice


def cpmc(ctx: Context) -> Scores:
    """Own filters plus the weights that disappear in the next layer, plus cost (arXiv:2011.03240).

    I_w(k) = mean over producing layers of ||W^l[k]||_2 / mean_l + mean over reading layers of
    ||W^{l+1}[:, k]||_2 / mean_{l+1}; then, with the COP template (ZJULearning/COP),
    Imp = alpha * I_w / mean(I_w) + beta * (1 - log2 MACs_g / max log2 MACs) +
    gamma * (1 - log2 Params_g / max log2 Params), MACs_g/Params_g being what one row costs.
    Costly channels score lower, so global ranking spends the budget where it saves most. The
    paper's exact norm and coefficients were not verified; ``CPMC_WEIGHTS`` are ours."""
    own = _norm_scores(ctx, 2)
    nxt: dict[int, list[np.ndarray]] = {}
    for g in ctx.groups:
        for (layer, role), idx in g.members.items():
            info = ctx.view.layers[layer]
            if role != "in" or is_depthwise(info):
                continue
            w = _weight(ctx, layer)
            if info.kind == "linear":
                f = g.in_factor.get(layer, 1)
                cn = w.view(w.shape[0], -1, f).norm(dim=(0, 2)).numpy()
            else:
                cn = w.transpose(0, 1).flatten(1).norm(dim=1).numpy()
            nxt.setdefault(g.id, []).append(cn[idx].mean(1) / max(float(cn.mean()), 1e-12))
    iw = {gid: own[gid] + (np.mean(nxt[gid], 0) if gid in nxt else 0.0) for gid in own}
    mean_iw = float(np.mean(np.concatenate(list(iw.values()))))
    costs = {g.id: _channel_macs_params(ctx, g) for g in ctx.groups}
    max_m = max(np.log2(m) for m, _ in costs.values())
    max_p = max(np.log2(p) for _, p in costs.values())
    a, b, c = CPMC_WEIGHTS
    return {gid: a * iw[gid] / max(mean_iw, 1e-12) + b * (1 - np.log2(costs[gid][0]) / max(max_m, 1e-12))
            + c * (1 - np.log2(costs[gid][1]) / max(max_p, 1e-12)) for gid in iw}


# --- data-driven criteria -------------------------------------------------------------------------

def _feature_maps(ctx: Context, method: str, reduce: Callable[[torch.Tensor], torch.Tensor]) -> Scores:
    """Average ``reduce`` (N, C, H, W) -> (N, C) over the data for every producing layer's
    output map: after its BN, and after ReLU when the chain has one (HRank hooks the ReLU)."""
    model = ctx.model
    layers = _out_layers(ctx)
    sums: dict[str, torch.Tensor] = {}
    count = [0]

    def hook(name: str, relu: bool):
        def fn(mod, args, out):
            y = F.relu(out) if relu else out
            if y.dim() == 4:
                sums[name] = sums.get(name, 0) + reduce(y.detach().float()).sum(0)
        return fn

    handles = []
    for name in layers:
        info = ctx.view.layers[name]
        target = model.get_submodule(info.bn) if info.bn else model.get_submodule(name)
        relu = info.activation is not None and "relu" in info.activation.lower()
        handles.append(target.register_forward_hook(hook(name, relu)))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in ctx.batches(method):
                model(x)
                count[0] += len(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    per = {n: (s / count[0]).numpy() for n, s in sums.items()}
    linear_out = [n for n in layers if n not in per]  # linear producers: no map; use their L1 norm
    for n in linear_out:
        per[n] = _weight(ctx, n).abs().sum(1).numpy()
    return _combine(ctx, per)


def hrank(ctx: Context) -> Scores:
    """R_j = (1/N) sum_t rank(O_j(I_t)): average matrix rank of channel j's H x W output map over
    the data (Lin et al. 2020); low-rank maps carry less information. Keep the highest."""
    return _feature_maps(ctx, "hrank", lambda y: torch.linalg.matrix_rank(y).float())


def _ezcrop_ratio(y: torch.Tensor, alpha: float = 0.25) -> torch.Tensor:
    h, w = y.shape[-2:]
    m = torch.log1p(torch.fft.fftshift(torch.fft.fft2(y), dim=(-2, -1)).abs())
    ch, cw = (h / 2, w / 2) if h % 2 == 0 else ((h - 1) / 2, (w - 1) / 2)
    ch, cw = int(ch), int(cw)
    s = 0 if ch - 1 <= 0 else min(int(np.ceil(alpha * (h - ch - 1))), int(np.ceil(alpha * (w - cw - 1))))
    low = m[..., ch - s:ch + s + 1, cw - s:cw + s + 1].sum((-2, -1))
    total = m.sum((-2, -1)).clamp_min(1e-12)
    return 1 - low / total


def ezcrop(ctx: Context) -> Scores:
    """EZCrop (arXiv:2105.03679): M = log(1 + |fftshift(FFT2(X))|); the share of M outside the
    low-frequency square of half-width s = min(ceil(a(h-c_h-1)), ceil(a(w-c_w-1))), a = 1/4,
    around the centre c, averaged over images. An FFT proxy for HRank's rank; keep the highest."""
    return _feature_maps(ctx, "ezcrop", _ezcrop_ratio)


def taylor(ctx: Context) -> Scores:
    """First-order Taylor (Molchanov et al. 2019): per row and minibatch, the loss change of
    removing it, (sum over its filters and BN gamma/beta of w * dL/dw)^2, summed over the
    group's producing layers and averaged over minibatches. Needs labelled batches."""
    model = ctx.model
    params: dict[int, list[tuple[torch.Tensor, np.ndarray]]] = {}
    for g in ctx.groups:
        for (layer, role), idx in g.members.items():
            if role == "out":
                m = model.get_submodule(layer)
                params.setdefault(g.id, []).append((m.weight, idx[:, 0]))
        for bn, idx in g.bns.items():
            m = model.get_submodule(bn)
            params[g.id] += [(m.weight, idx[:, 0]), (m.bias, idx[:, 0])]
    acc = {g.id: np.zeros(g.size) for g in ctx.groups}
    was = model.training
    model.eval()  # running statistics: scores the deployed network, not batch-norm noise
    n = 0
    try:
        for x, y in ctx.batches("taylor"):
            if y is None:
                raise ConversionError("criterion 'taylor' needs labelled batches (x, y) in data=")
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            for gid, plist in params.items():
                t = np.zeros(len(acc[gid]))
                for p, idx in plist:
                    if p.grad is not None:
                        wg = (p.detach() * p.grad).flatten(1).sum(1) if p.dim() > 1 else p.detach() * p.grad
                        t += wg.numpy()[idx]
                acc[gid] += t ** 2
            n += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was)
    return {gid: a / max(n, 1) for gid, a in acc.items()}


CRITERIA: dict[str, Callable[[Context], Scores]] = {
    "l1": l1, "l2": l2, "bn_scale": bn_scale, "fpgm": fpgm, "hrank": hrank, "ezcrop": ezcrop,
    "similarity": similarity, "cpmc": cpmc, "taylor": taylor, "random": random,
}
DATA_DRIVEN = frozenset({"hrank", "ezcrop", "taylor"})


def score(method: str, ctx: Context) -> Scores:
    """Scores for ``ctx.groups`` by criterion ``method``."""
    if method not in CRITERIA:
        raise ConversionError(f"unknown pruning method {method!r}; known: {', '.join(sorted(CRITERIA))}")
    if method in DATA_DRIVEN and ctx.data is None:
        raise ConversionError(f"criterion '{method}' is data-driven: pass data= (a DataLoader or an "
                              "iterable of (x, y) batches)")
    return CRITERIA[method](ctx)
