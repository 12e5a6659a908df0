"""CGNet channel gating (Hua et al., NeurIPS 2019): the gated convolution and its gate.

A gated conv computes a base partial sum ``Yp`` from 1/p of its input channels, normalises it
with a non-affine BN (used only for the decision), and compares it with a learnable
per-output-channel threshold ``delta``. Where the gate is on, the rest of the sum is added:
``out = Yp + d * conv(x, W * (1 - M))`` which equals CGNet's ``Y*d + Yp*(1-d)``.

Training uses the straight-through gate of the released code: the forward value is the hard
step ``score > 0`` and the backward pass is ``alpha * sigmoid'(alpha * score)``, zeroed where the
gate is off ("sparse bp", on in both released scripts). In eval mode the decision BN folds into
one compare per channel, ``Yp > mu + delta * sigma``, and the layer runs through a kernel
backend (see ``kernels``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from dyngate.errors import ConfigError
import kernels
from kernels.reference import base_mask, block_scores, expand_blocks


class _StraightThroughGate(torch.autograd.Function):
    """Hard step forward; sigmoid-shaped straight-through gradient backward."""

    @staticmethod
    def forward(ctx, score: torch.Tensor, alpha: float, sparse_bp: bool) -> torch.Tensor:
        d = (score > 0).to(score.dtype)
        ctx.save_for_backward(score, d)
        ctx.alpha, ctx.sparse_bp = alpha, sparse_bp
        return d

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        score, d = ctx.saved_tensors
        s = torch.sigmoid(ctx.alpha * score)
        g = grad * ctx.alpha * s * (1 - s)
        if ctx.sparse_bp:
            g = g * d
        return g, None, None


class GatedConv2d(nn.Module):
    """A Conv2d with a CGNet gate. Holds data (weights, partition, thresholds); the execution
    backend ("reference", "cpu", "triton", or "auto") is chosen at run time in eval mode.

    ``weight``/``bias`` keep the wrapped conv's names so state-dict keys stay unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, bias: bool = False, *, partitions: int = 4, grouped: bool = True,
                 granularity: int = 1, tile=(1, 1), alpha: float = 2.0,
                 threshold_init: float = 0.0, sparse_bp: bool = True, name: str = "") -> None:
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        self.groups = 1
        self.partitions, self.grouped, self.granularity = partitions, grouped, granularity
        self.alpha, self.sparse_bp, self.name = alpha, sparse_bp, name
        if granularity < 1 or out_channels % granularity:
            raise ConfigError(f"{name or 'GatedConv2d'}: out_channels={out_channels} is not divisible "
                              f"by gate granularity={granularity}")
        self.tile = pair(tile)
        if min(self.tile) < 1:
            raise ConfigError(f"{name or 'GatedConv2d'}: gate tile must be positive, got {tile!r}")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.register_buffer("mask", base_mask(out_channels, in_channels, partitions, grouped))
        self.bn0 = nn.BatchNorm2d(out_channels, affine=False)
        self.threshold = nn.Parameter(torch.full((out_channels,), float(threshold_init)))
        self.mode = "gate"
        self.backend = "auto"
        self.last_path: str | None = None  # execution path of the last eval call (kernels.last_path)
        self._stats: dict | None = None  # per-channel on-counts while profiling
        self._folded: tuple | None = None  # memo of folded_threshold, see _eval_threshold
        self._binding: tuple | None = None  # the bound kernel call of the last input signature

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, name: str = "", **gate_kwargs) -> "GatedConv2d":
        """Wrap an existing conv, sharing nothing (weights are copied)."""
        if conv.groups != 1:
            raise ConfigError(f"{name}: grouped/depthwise convs (groups={conv.groups}) cannot be gated")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(f"{name}: only numeric zero padding is supported, got "
                              f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
        g = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                conv.dilation, conv.bias is not None, name=name, **gate_kwargs)
        g = g.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            g.weight.copy_(conv.weight)
            if conv.bias is not None:
                g.bias.copy_(conv.bias)
        return g

    # --- the decision ------------------------------------------------------------------------
    def folded_threshold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tau, inv_sigma): eval-mode decision ``Yp > tau`` with tau = mu + delta * sigma."""
        sigma = torch.sqrt(self.bn0.running_var + self.bn0.eps)
        tau = self.bn0.running_mean + self.threshold * sigma
        return tau, 1.0 / sigma

    def _eval_threshold(self) -> tuple[torch.Tensor, torch.Tensor]:
        """folded_threshold, reused while the threshold and bn0's statistics are the same
        tensors at the same versions (its four small ops cost ~14 us per call, a tenth of a
        small layer's kernel). Only under no_grad: with grad on, tau carries the threshold's
        graph, which routes the call to the differentiable reference. (The storage, dtype and
        device are compared too: ``module.double()`` swaps a parameter's data in place.)"""
        if torch.is_grad_enabled():
            return self.folded_threshold()
        src = (self.threshold, self.bn0.running_mean, self.bn0.running_var)
        state = (tuple((t._version, t.data_ptr(), t.dtype, t.device) for t in src), self.bn0.eps)
        memo = getattr(self, "_folded", None)
        if memo is None or memo[1] != state or any(a is not b for a, b in zip(memo[0], src)):
            memo = self._folded = (src, state, self.folded_threshold())
        return memo[2]

    def _bound_call(self, x: torch.Tensor, tau: torch.Tensor, inv_sigma: torch.Tensor):
        """``kernels.bind``'s call for this input signature (None: nothing to bind), kept while
        the input's shape and layout, the layer's settings and tensors (same objects, same
        versions), tau (``_eval_threshold``'s, the same object while unchanged) and
        ``kernels.bind_state()`` stay the same: it skips ~0.1 ms of per-call dispatch."""
        w, b = self.weight, self.bias
        state = (x.shape, x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last),
                 self.backend, self.stride, self.padding, self.dilation, self.partitions, self.grouped,
                 self.granularity, self.tile, w._version, None if b is None else b._version,
                 kernels.bind_state())
        memo = getattr(self, "_binding", None)
        if memo is not None and memo[0] == state and memo[1] is tau and memo[2] is w and memo[3] is b:
            return memo[4]
        call = kernels.bind(x, w, b, tau, inv_sigma, stride=self.stride, padding=self.padding,
                            dilation=self.dilation, partitions=self.partitions, grouped=self.grouped,
                            granularity=self.granularity, tile=self.tile, backend=self.backend)
        self._binding = (state, tau, w, b, call)
        return call

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_binding"] = None   # holds raw pointers into this module's tensors: rebound on use
        return state

    def _score(self, yp: torch.Tensor) -> torch.Tensor:
        """Unfolded decision score ``BN0(Yp) - delta`` (averaged over granularity groups;
        per block for block gates, see :meth:`_gate`)."""
        score = self.bn0(yp) - self.threshold.view(1, -1, 1, 1)
        if self.tile != (1, 1):
            return score
        if self.granularity > 1:
            n, c, h, w = score.shape
            score = score.view(n, c // self.granularity, self.granularity, h, w).mean(2, keepdim=True)
            score = score.expand(n, c // self.granularity, self.granularity, h, w).reshape(n, c, h, w)
        return score

    def _conv(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ConfigError(f"{self.name or 'GatedConv2d'}: expected input (N, {self.in_channels}, H, W), "
                              f"got {tuple(x.shape)}")
        if self.mode in ("open", "closed"):
            w = self.weight if self.mode == "open" else self.weight * self.mask
            out = self._conv(x, w, self.bias)
            self.last_path = f"gates {self.mode}"
            if self._stats is not None:  # every gate on / off: record that as the density
                self._record(torch.full_like(out, self.mode == "open", dtype=torch.bool))
            return out
        if self.training:
            return self._forward_train(x)
        tau, inv_sigma = self._eval_threshold()
        if self._stats is None and not torch.is_grad_enabled():
            call = self._bound_call(x, tau, inv_sigma)
            if call is not None:
                out = call(x)
                if self.last_path != call.path:
                    self.last_path = call.path
                return out
        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                  partitions=self.partitions, grouped=self.grouped, granularity=self.granularity,
                  tile=self.tile, return_gate=self._stats is not None)  # the gate map costs a pass: only when profiling
        res = kernels.conditional_conv2d(x, self.weight, self.bias, tau, inv_sigma,
                                         backend=self.backend, **kw)
        self.last_path = kernels.last_path()
        if self._stats is None:
            return res
        out, d = res
        self._record(d)
        return out

    def _forward_train(self, x: torch.Tensor) -> torch.Tensor:
        """Reference formulation with batch-statistics BN0 and the straight-through gate."""
        yp = self._base_conv(x)
        rest = self._conv(x, self.weight * (1 - self.mask), None)
        d = self._gate(self._score(yp))
        self._record(d)
        return yp + d * rest

    def _gate(self, score: torch.Tensor) -> torch.Tensor:
        """Training gate. Per element (tile 1x1): the straight-through step on each score. Block
        gate: one step per block on the block's mean score, broadcast to its elements, so the
        straight-through gradient of the block reaches every element's score as 1/|block|."""
        if self.tile == (1, 1):
            return _StraightThroughGate.apply(score, self.alpha, self.sparse_bp)
        blocks = block_scores(score, self.granularity, self.tile)
        d = _StraightThroughGate.apply(blocks, self.alpha, self.sparse_bp)
        return expand_blocks(d, self.granularity, self.tile, score.shape[2], score.shape[3])

    def _base_conv(self, x: torch.Tensor) -> torch.Tensor:
        """Base partial sum at 1/p of the dense cost: a p-group conv over the diagonal blocks
        (grouped) or a conv over the first C_in/p channels."""
        p, ci = self.partitions, self.in_channels // self.partitions
        if self.grouped:
            co = self.out_channels // p
            w = self.weight.view(p, co, p, ci, *self.kernel_size)
            w = torch.stack([w[i, :, i] for i in range(p)]).reshape(self.out_channels, ci, *self.kernel_size)
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, groups=p)
        return F.conv2d(x[:, :ci], self.weight[:, :ci], self.bias, self.stride, self.padding, self.dilation)

    def _record(self, d: torch.Tensor) -> None:
        if self._stats is not None:
            on = d.detach().to(torch.float64).sum(dim=(0, 2, 3)).cpu()
            self._stats["on"] += on
            self._stats["elements"] += d.shape[0] * d.shape[2] * d.shape[3]
            self._stats["images"] += d.shape[0]
            self._stats["output_hw"] = (d.shape[2], d.shape[3])
            # decision blocks: d is constant over each (tile x granularity) block, so a
            # ceil-mode max-pool gives one value per block, ragged edge blocks included
            th, tw = self.tile
            g = self.granularity
            blk = d.detach().to(torch.float32)
            if g > 1:
                n, c, h, w = blk.shape
                blk = blk.view(n, c // g, g, h, w).amax(2)
            if (th, tw) != (1, 1):
                blk = F.max_pool2d(blk, (th, tw), ceil_mode=True)
            self._stats["blocks_on"] += float(blk.sum())
            self._stats["blocks"] += blk.numel()

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, partitions={self.partitions}, "
                f"grouped={self.grouped}, granularity={self.granularity}, "
                + (f"tile={self.tile}, " if self.tile != (1, 1) else "") + f"mode={self.mode}, "
                f"backend={self.backend}")


def gated_layers(model: nn.Module) -> list[tuple[str, GatedConv2d]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, GatedConv2d)]


@contextlib.contextmanager
def _gate_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    layers = gated_layers(model)
    old = [m.mode for _, m in layers]
    for _, m in layers:
        m.mode = mode
    try:
        yield model
    finally:
        for (_, m), o in zip(layers, old):
            m.mode = o


def gates_open(model: nn.Module):
    """Context: every gate on, so the gated model computes the original convolutions."""
    return _gate_mode(model, "open")


def gates_closed(model: nn.Module):
    """Context: every gate off, so only the base paths run."""
    return _gate_mode(model, "closed")


def gate_loss(model: nn.Module, target: float) -> torch.Tensor:
    """CGNet's threshold loss ``sum over gated layers and channels of (delta - T)^2``."""
    terms = [((m.threshold - target) ** 2).sum() for _, m in gated_layers(model)]
    if not terms:
        raise ConfigError("gate_loss: the model has no gated layers (run dyngate.convert first)")
    return torch.stack(terms).sum()


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Choose the eval-mode kernel backend of every gated layer."""
    if backend not in ("auto", "reference", "cpu", "triton"):
        raise ConfigError(f"unknown backend {backend!r}; choose auto, reference, cpu or triton")
    for _, m in gated_layers(model):
        m.backend = backend
    return model
