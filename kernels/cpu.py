"""CPU fast path of the conditional partial-sum convolution.

The ``fused`` strategy is the default wherever it applies: float32, float16 or bfloat16 inputs
(computed in float32), a C compiler that builds the kernel, and output chunks of a multiple of
4 channels. It does all three steps below in one compiled loop, see :mod:`kernels.cpu_fused`. The torch-op pipeline
is the fallback (with a warning saying why) and the comparison point of the benchmarks.

Pipeline (all activations channels-last, fp32 arithmetic; float64 inputs stay float64):

1. base pass: torch conv over the base channels only (a grouped conv with ``p`` groups for
   block-diagonal base paths, a conv over the first ``C_in/p`` inputs otherwise);
2. gate: the folded per-channel compare on the partial sum, as 0/1 floats;
3. conditional pass, one of three strategies picked per call by a small cost model:

   * ``groups``: for each of the ``p`` output-channel chunks, the output positions where any
     gate of the chunk is on are gathered as rows of the remaining-channel im2col (index
     arithmetic into a padded NHWC copy of the input, never a full unfold), multiplied by
     that chunk's remaining weights in one dense GEMM, and added back under the
     per-element gate;
   * ``union``: one gather of the positions where any gate at all is on and one GEMM over
     all output channels (fewer, larger copies; better when the chunks' active positions
     coincide, as with spatially clustered gates);
   * ``dense``: when so many positions are active that gathering cannot pay off, the
     remaining partial sum is a dense torch conv (a grouped conv over per-chunk rotated
     inputs for wide chunks, else the full conv) and the gate selects per element.

The result equals :func:`kernels.reference.conditional_conv2d_reference` up to fp32 rounding
(different summation order): relative error ~1e-6, tested at rtol 1e-5 / atol 1e-5*scale.
Gate decisions can only differ where the score is within rounding of the threshold.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import cpu_fused
from kernels.geometry import ConvGeometry
from kernels.workspace import derived, scratch

CL = torch.channels_last
STRATEGIES = ("auto", "fused", "pipeline", "groups", "union", "dense")

# Cost model, nanoseconds on the reference 2-core AVX-512 box (see results/gated_conv_cpu.md):
# gathering one float of im2col, one multiply-add of the gathered GEMM, one multiply-add of
# torch's dense conv, the per-element scatter, the per-element dense select, fixed per-GEMM.
GATHER_NS = 0.25
GEMM_MAC_NS = 0.0135
DENSE_MAC_NS = 0.0110
SCATTER_NS = 1.0
SELECT_NS = 0.4
PER_GEMM_NS = 40_000.0
# Dense fallback, grouped base: with output chunks of >= 64 channels, oneDNN runs the remaining
# partial sums as one grouped conv over rotated inputs at ~the dense rate per MAC (3/4 of the
# dense MACs at p=4); with narrower chunks grouped convs are slow and the full conv wins.
ROTATED_MIN_CHUNK = 64


@dataclass
class _Prepared:
    """Weight layouts derived once per (weight, version, partition)."""

    base: torch.Tensor        # (C_out, C_in/p, kh, kw): grouped conv weight or first-chunk slice
    rest: torch.Tensor        # (K, C_out), K = kh*kw*Cx ordered (kh, kw, c); base blocks zero
    dense_rest: torch.Tensor  # conv weight of the dense fallback (all inputs, or the rest slice)
    rest_first: int           # first input channel held in the gather buffer
    rotated: torch.Tensor | None  # grouped only: (C_out, C_in-C_in/p, kh, kw), chunk i's rest
                                  # inputs in the order (i+1)*ci.., 0..i*ci (see _rotated_input)


def _prepare(weight: torch.Tensor, partitions: int, grouped: bool) -> _Prepared:
    """Weight layouts for ``weight``, cached while it is alive and unmodified."""
    return derived(weight, "cpu.prepare", (partitions, grouped, weight.dtype),
                   lambda: _build_prepared(weight, partitions, grouped))


def _build_prepared(weight: torch.Tensor, partitions: int, grouped: bool) -> _Prepared:
    w = weight.detach()
    c_out, c_in = w.shape[:2]
    ci, co = c_in // partitions, c_out // max(partitions, 1)
    if grouped:
        base = torch.cat([w[i * co:(i + 1) * co, i * ci:(i + 1) * ci] for i in range(partitions)])
        rest_w = w.clone()
        for i in range(partitions):
            rest_w[i * co:(i + 1) * co, i * ci:(i + 1) * ci] = 0
        dense_rest, first = w, 0
        rotated = torch.cat([torch.cat([w[i * co:(i + 1) * co, (i + 1) * ci:],
                                        w[i * co:(i + 1) * co, :i * ci]], dim=1)
                             for i in range(partitions)]).contiguous()
    else:
        base = w[:, :ci].contiguous()
        rest_w = dense_rest = w[:, ci:].contiguous()
        first, rotated = ci, None
    rest = rest_w.permute(2, 3, 1, 0).reshape(-1, c_out).contiguous()
    return _Prepared(base.contiguous(), rest, dense_rest, first, rotated)


def _chunk_indicator(partitions: int, co: int, dtype: torch.dtype) -> torch.Tensor:
    """(p, p*co) 0/1 matrix whose row i selects output chunk i."""
    return torch.eye(partitions, dtype=dtype).repeat_interleave(co, dim=1)


def _gate(ypf: torch.Tensor, tau: torch.Tensor, inv_sigma: torch.Tensor, granularity: int) -> torch.Tensor:
    """0/1 float gate (M, C) from the channels-last partial sum (float ops are ~4x faster than bool)."""
    m, c = ypf.shape
    g = scratch("gate", (m, c), ypf.dtype)
    if granularity == 1:
        return torch.gt(ypf, tau, out=g)
    score = (ypf - tau).mul_(inv_sigma).view(m, c // granularity, granularity).mean(dim=2, keepdim=True)
    torch.gt(score.expand(m, c // granularity, granularity), 0, out=g.view(m, c // granularity, granularity))
    return g


def _padded_input(xc: torch.Tensor, geo: ConvGeometry, first: int) -> torch.Tensor:
    """(N*Hp*Wp, Cx) NHWC rows of input channels ``first:`` with zero padding (scratch)."""
    src = xc[:, first:].permute(0, 2, 3, 1)
    cx = src.shape[3]
    ph, pw = geo.padding
    if ph == 0 and pw == 0 and first == 0 and xc.is_contiguous(memory_format=CL):
        return src.reshape(-1, cx)
    xp = scratch("xpad", (geo.n, geo.hp, geo.wp, cx), xc.dtype)
    if ph:
        xp[:, :ph].zero_()
        xp[:, geo.hp - ph:].zero_()
    if pw:
        xp[:, :, :pw].zero_()
        xp[:, :, geo.wp - pw:].zero_()
    xp[:, ph:ph + geo.h, pw:pw + geo.w].copy_(src)
    return xp.view(-1, cx)


def _rotated_input(xc: torch.Tensor, partitions: int) -> torch.Tensor:
    """Channels-last (N, p*(C_in-ci), H, W): for each chunk i its remaining inputs, so that one
    conv with ``groups=p`` computes every chunk's remaining partial sum without zero blocks."""
    ci = xc.shape[1] // partitions
    parts = []
    for i in range(partitions):
        parts += [xc[:, (i + 1) * ci:], xc[:, :i * ci]]
    return torch.cat([t for t in parts if t.shape[1]], dim=1).contiguous(memory_format=CL)


def _gather_patches(xrows: torch.Tensor, rows: torch.Tensor, geo: ConvGeometry, slot: str) -> torch.Tensor:
    """Rows of the im2col matrix (R, kh*kw*Cx) at flat output positions ``rows``.

    With unit column dilation the kw taps of one kernel row are adjacent in NHWC memory, so
    one index selects kw*Cx contiguous floats (3x fewer, 3x longer copies for 3x3).
    """
    cx = xrows.shape[1]
    hw = geo.ho * geo.wo
    n = torch.div(rows, hw, rounding_mode="floor")
    r = rows - n * hw
    oh = torch.div(r, geo.wo, rounding_mode="floor")
    ow = r - oh * geo.wo
    base = (n * geo.hp + oh * geo.stride[0]) * geo.wp + ow * geo.stride[1]
    dh, dw = geo.dilation
    kh_off = torch.arange(geo.kh, dtype=rows.dtype) * (dh * geo.wp)
    if dw == 1:
        src = xrows.as_strided((xrows.shape[0] - (geo.kw - 1), geo.kw * cx), (cx, 1))
        offs = kh_off
    else:
        src = xrows
        offs = (kh_off[:, None] + torch.arange(geo.kw, dtype=rows.dtype) * dw).reshape(-1)
    idx = (base[:, None] + offs[None, :]).reshape(-1)
    out = scratch(slot, (idx.numel(), src.shape[1]), xrows.dtype)
    torch.index_select(src, 0, idx, out=out)
    return out.view(rows.numel(), -1)


def _gated_gemm(xrows, rows, geo, w_rest, gate_cols, out_cols) -> None:
    """out_cols[rows] += gate_cols[rows] * (im2col[rows] @ w_rest): one gather, GEMM, scatter."""
    if rows.numel() == 0:
        return
    a = _gather_patches(xrows, rows, geo, "im2col")
    p = torch.mm(a, w_rest, out=scratch("gemm", (rows.numel(), w_rest.shape[1]), a.dtype))
    p.mul_(gate_cols.index_select(0, rows))
    out_cols.index_add_(0, rows, p)


def _costs(geo: ConvGeometry, k: int, partitions: int, grouped: bool, r_union: int,
           r_groups: list[int]) -> dict[str, float]:
    """Estimated nanoseconds of each conditional-pass strategy (cost model, see constants)."""
    c_out = geo.c_out
    co = c_out // partitions
    m = geo.positions
    full_conv = grouped and co < ROTATED_MIN_CHUNK
    k_dense = geo.kh * geo.kw * (geo.c_in if full_conv else geo.c_in - geo.c_in // partitions)

    def rows_cost(r: int, n: int) -> float:
        # GEMMs narrower than 64 output columns run at roughly n/64 of MKL's peak here.
        mac_ns = GEMM_MAC_NS * max(1.0, 64.0 / n)
        return r * k * (GATHER_NS + mac_ns * n) + r * n * SCATTER_NS + PER_GEMM_NS

    return {
        "union": rows_cost(r_union, c_out),
        "groups": sum(rows_cost(r, co) for r in r_groups),
        "dense": m * k_dense * c_out * DENSE_MAC_NS + m * c_out * SELECT_NS,
    }


_WARNED: set[str] = set()


def _warn_fallback(reason: str) -> None:
    """Say once per reason that the slower torch pipeline runs instead of the fused kernel."""
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(f"gated conv: fused CPU kernel not used ({reason}); running the torch-op "
                      "pipeline instead", RuntimeWarning, stacklevel=3)


def conditional_conv2d_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           tau: torch.Tensor, inv_sigma: torch.Tensor, geo: ConvGeometry, *,
                           partitions: int, grouped: bool, granularity: int = 1,
                           return_gate: bool = False, strategy: str = "auto"):
    """Gated conv on CPU tensors; arguments already validated by :func:`kernels.conditional_conv2d`.

    ``strategy`` forces one strategy (tests, benchmarks); "auto" takes the fused kernel where
    it applies and otherwise asks the cost model of the torch pipeline; "pipeline" always
    asks that cost model (the comparison point of the benchmarks). Returns ``out`` or
    ``(out, gate)``; out has x's dtype and memory format.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    cdt = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xc = x.to(cdt).contiguous(memory_format=CL)
    if strategy in ("auto", "fused") and cdt == torch.float32:
        reason = cpu_fused.unsupported_reason(geo, partitions, grouped, granularity)
        if reason is None:
            try:
                out, gate, _ = cpu_fused.run(_padded_input(xc, geo, 0), weight, bias, tau, inv_sigma,
                                             geo, partitions=partitions, grouped=grouped,
                                             granularity=granularity, return_gate=return_gate)
            except cpu_fused.NativeBuildError as e:
                if strategy == "fused":
                    raise
                reason = f"the kernel did not build: {str(e).splitlines()[0]}"
            else:
                out = (out if x.is_contiguous(memory_format=CL) else out.contiguous()).to(x.dtype)
                return (out, gate) if return_gate else out
        if strategy == "fused":
            raise ValueError(f"strategy 'fused' cannot run this layer: {reason}")
        _warn_fallback(reason)
    elif strategy == "fused":
        raise ValueError(f"strategy 'fused' computes in float32, got {cdt}")
    w = weight.to(cdt) if weight.dtype != cdt else weight
    b = None if bias is None else bias.detach().to(cdt)
    prep = _prepare(w, partitions, grouped)
    p = partitions
    ci, co = geo.c_in // p, geo.c_out // p

    if grouped:
        yp = F.conv2d(xc, prep.base, b, geo.stride, geo.padding, geo.dilation, groups=p)
    else:
        yp = F.conv2d(xc[:, :ci], prep.base, b, geo.stride, geo.padding, geo.dilation)
    yp = yp.contiguous(memory_format=CL)
    m = geo.positions
    ypf = yp.permute(0, 2, 3, 1).reshape(m, geo.c_out)
    g = _gate(ypf, tau.to(cdt), inv_sigma.to(cdt), granularity)

    # (p, M) count of on gates per chunk and position: a GEMM against the chunk indicator is
    # one streaming pass, where amax over the small chunk dimension is ~20x slower.
    need = torch.mm(_chunk_indicator(p, co, g.dtype), g.t()) > 0
    need_u = need.any(dim=0)
    if strategy in ("auto", "pipeline"):
        cost = _costs(geo, prep.rest.shape[0], p, grouped, int(need_u.sum()),
                      need.sum(dim=1).tolist())
        strategy = min(cost, key=cost.get)

    if p == 1:
        pass                                      # base path is the whole conv: nothing remains
    elif strategy == "dense" and bool(need_u.any()):
        if grouped and co < ROTATED_MIN_CHUNK:
            full = F.conv2d(xc, prep.dense_rest, b, geo.stride, geo.padding, geo.dilation)
            ypf.lerp_(full.contiguous(memory_format=CL).permute(0, 2, 3, 1).reshape(m, -1), g)
        else:
            if grouped:
                rest = F.conv2d(_rotated_input(xc, p), prep.rotated, None, geo.stride, geo.padding,
                                geo.dilation, groups=p)
            else:
                rest = F.conv2d(xc[:, ci:], prep.dense_rest, None, geo.stride, geo.padding, geo.dilation)
            ypf.addcmul_(rest.contiguous(memory_format=CL).permute(0, 2, 3, 1).reshape(m, -1), g)
    elif strategy != "dense":
        xrows = _padded_input(xc, geo, prep.rest_first)
        if strategy == "union":
            _gated_gemm(xrows, torch.nonzero(need_u).squeeze(1), geo, prep.rest, g, ypf)
        else:
            for i in range(p):
                cols = slice(i * co, (i + 1) * co)
                _gated_gemm(xrows, torch.nonzero(need[i]).squeeze(1), geo, prep.rest[:, cols],
                            g[:, cols], ypf[:, cols])

    out = yp if x.is_contiguous(memory_format=CL) else yp.contiguous()
    out = out.to(x.dtype)
    if not return_gate:
        return out
    return out, g.view(geo.n, geo.ho, geo.wo, geo.c_out).permute(0, 3, 1, 2).to(torch.bool)
