"""CPU fast path of the conditional partial-sum convolution.

Several execution paths compute the same result; which is fastest depends on the layer, the
batch, the threads, the gate pattern and the CPU, so ``auto`` measures them at first use
(:mod:`kernels.autotune`) and keeps the fastest:

* ``fused``: one compiled loop does base sum, gate and conditional pass per output tile
  (:mod:`kernels.cpu_fused`, float32, per-ISA vector layouts);
* ``select``: oneDNN computes the whole conv, the compiled loop only Yp and the gate, and
  selects between them (dense MACs plus the base pass: the floor where nothing can be skipped,
  well below ``dense`` on narrow layers, whose oneDNN grouped base conv is slow);
* ``prefix`` (grouped layers whose output chunks are narrower than ``fused``'s tiles could be,
  :func:`kernels.cpu_fused.prefix_unsupported_reason`): the compiled loop computes the whole
  conv at dense MACs with vectors across chunks, summing the input chunks in order and taking
  each output chunk's Yp as the difference of the partial sums around its own input chunk, then
  selects. Skips nothing; ``fused`` pays masked base and remaining sums on 4-channel chunks
  (1.25-2x the dense FMAs) and narrower tiles on 8-16-channel chunks to be able to skip
  all-off tiles (2 threads, random gates at 0.5, AVX-512, the autotuner's interleaved medians:
  ResNet-20 16->16 @32 b64 ``fused`` 2.58 ms, ``prefix`` 1.65, dense 1.23; ResNet-18 64->64
  @56 b8 7.14, 6.75, dense 5.79);
* ``fused_swap`` / ``prefix_swap``: the same two kernels in the other loop order
  (position-tile-major or channel-tile-major) than the weight-size rule of
  :data:`kernels.cpu_fused.POS_MAJOR_MAX_BYTES` picks: which is faster depends on the layer,
  the ISA and the CPU's caches, so it is measured (ResNet-18 at batch 8, all gates on, 2
  threads: 0.88-1.02x of oneDNN either way round);
* ``fused_blocks`` / ``onednn_blocks`` (block gates): ``fused_blocks`` runs one compiled pass
  per block (Yp, the block means, the remaining sum of exactly the blocks that are on);
  ``onednn_blocks`` takes Yp from oneDNN, then a compiled decision pass and remaining sums;
* ``tiles`` / ``chunk_tiles`` / ``block_tiles``: oneDNN base pass, then the active output
  tiles (of all channels, per output chunk, or per gate group of a block gate) are gathered
  with their halo and the remaining sum runs as one oneDNN conv on them
  (:mod:`kernels.cpu_tiles`, SBNet/SIGE style). With block gates (``gate_tile`` other than
  1x1) the kernel tile is the gate tile, so ``block_tiles`` computes exactly the blocks on;
* ``dense``: oneDNN base pass and the remaining sum as dense convs (dense MACs in total), the
  gate selecting per element: what ``auto`` falls back to when nothing can be skipped;
* ``stacked``: one oneDNN conv computes the whole output and the base partial sum together
  (the weight stacked on its base blocks: 2 C_out output channels), then the gate selects.
  Twice the MACs in one call and one pass over the input, where ``dense``/``select`` pay a
  separate base pass (oneDNN's grouped conv is slow on narrow layers): measured fastest on
  16-channel layers (16->16 @28, batch 256, AVX-512: 8.5 ms against 10.7 for ``dense``; the
  dense conv alone 3.7 ms), slower than those paths from 32 channels up;
* ``union`` / ``groups``: gathered im2col rows of active positions times the remaining
  weights (the pipeline below).

With ``DYNGATE_TUNE=0`` (and for float64) the "pipeline" cost model picks among the torch-op
paths per call, after seeing the gate.

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

import threading
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import autotune, cpu_fused, cpu_tiles
from kernels.cpu_fused import _per_target
from kernels.errors import KernelArgError
from kernels.geometry import ConvGeometry
from kernels.reference import block_scores, expand_blocks
from kernels.workspace import derived, scratch

CL = torch.channels_last
STRATEGIES = ("auto", "fused", "fused_swap", "select", "prefix", "prefix_swap", "fused_blocks",
              "onednn_blocks", "pipeline", "tiles",
              "chunk_tiles", "block_tiles", "groups", "union", "dense", "stacked")
_LAST = threading.local()
# The compiled paths (:mod:`kernels.cpu_fused`). The per-element ones by their build (the
# ``prefix`` and ``swap`` flags of cpu_fused.run; "select" is the fused build over oneDNN's sum):
# "_swap" is the same kernel in the other loop order.
ELEMENT_BUILDS = {"fused": dict(prefix=False, swap=False), "fused_swap": dict(prefix=False, swap=True),
                  "select": dict(prefix=False, swap=False), "prefix": dict(prefix=True, swap=False),
                  "prefix_swap": dict(prefix=True, swap=True)}
COMPILED = (*ELEMENT_BUILDS, "fused_blocks", "onednn_blocks")

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


def _gate(ypf: torch.Tensor, tau: torch.Tensor, inv_sigma: torch.Tensor, granularity: int,
          gate_tile: tuple[int, int] = (1, 1), geo: ConvGeometry | None = None) -> torch.Tensor:
    """0/1 float gate (M, C) from the channels-last partial sum (float ops are ~4x faster than bool)."""
    m, c = ypf.shape
    g = scratch("gate", (m, c), ypf.dtype)
    if gate_tile != (1, 1):     # block gate: mean over tile x G, then broadcast (reference.py)
        score = (ypf - tau).mul_(inv_sigma).view(geo.n, geo.ho, geo.wo, c).permute(0, 3, 1, 2)
        d = block_scores(score, granularity, gate_tile) > 0
        d = expand_blocks(d, granularity, gate_tile, geo.ho, geo.wo)
        g.view(geo.n, geo.ho, geo.wo, c).copy_(d.permute(0, 2, 3, 1))
        return g
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
           r_groups: list[int], tiles: tuple[int, tuple[int, int]] = (0, (1, 1))) -> dict[str, float]:
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

    n_tiles, (th, tw) = tiles
    hh, ww = (th - 1) * geo.stride[0] + geo.kh, (tw - 1) * geo.stride[1] + geo.kw
    return {
        "tiles": (n_tiles * (hh * ww * geo.c_in * GATHER_NS + th * tw * k_dense * c_out * DENSE_MAC_NS
                             + 2 * th * tw * c_out * SELECT_NS) + PER_GEMM_NS),
        "union": rows_cost(r_union, c_out),
        "groups": sum(rows_cost(r, co) for r in r_groups),
        "dense": m * k_dense * c_out * DENSE_MAC_NS + m * c_out * SELECT_NS,
    }


_WARNED: set[str] = set()


def _warn_fallback(reason: str) -> None:
    """Say once per reason that the fused kernel is not among the paths auto chooses from."""
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(f"gated conv: fused CPU kernel not used ({reason}); auto chooses among the "
                      "torch-op paths", RuntimeWarning, stacklevel=4)


def last_tiles() -> int:
    """Work counter: (tile x channel range) blocks the last tile path of this thread computed."""
    return getattr(_LAST, "tiles", 0)


def last_path() -> str | None:
    """The CPU path the last gated conv of this thread ran ("fused", "tiles", "chunk_tiles",
    "dense", "union", "groups"), None before the first call."""
    return getattr(_LAST, "path", None)


def conditional_conv2d_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           tau: torch.Tensor, inv_sigma: torch.Tensor, geo: ConvGeometry, *,
                           partitions: int, grouped: bool, granularity: int = 1,
                           return_gate: bool = False, strategy: str = "auto",
                           tile: tuple[int, int] | None = None, gate_tile: tuple[int, int] = (1, 1)):
    """Gated conv on CPU tensors; arguments already validated by :func:`kernels.conditional_conv2d`.

    ``strategy`` forces one path (tests, benchmarks). "auto" uses the path measured fastest for
    this layer on this CPU (:mod:`kernels.autotune`; float32 only), or with ``DYNGATE_TUNE=0``
    and for float64 "pipeline": the cost model picks tiles/union/groups/dense per call after
    seeing the gate. ``tile`` is the output tile of the tile-gather path (default
    :func:`kernels.cpu_tiles.default_tile`; with a block gate, ``gate_tile``, which a different
    ``tile`` may not contradict). Returns ``out`` or ``(out, gate)``; out has x's dtype and
    memory format.
    """
    if strategy not in STRATEGIES:
        raise KernelArgError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    tile, gate_tile = _tiles(geo, tile, gate_tile)
    cdt = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xc = x.to(cdt).contiguous(memory_format=CL)
    if strategy == "auto":
        tuned = cdt == torch.float32 and autotune.enabled()
        strategy = _tuned_path(xc, weight, bias, tau, inv_sigma, geo, partitions, grouped,
                               granularity, tile, gate_tile) if tuned else "pipeline"
    if strategy in COMPILED:
        out, gate = _native(strategy, xc, weight, bias, tau, inv_sigma, geo, partitions, grouped,
                            granularity, gate_tile, return_gate)
    elif strategy == "stacked":
        out, gate = _stacked(xc, weight, bias, tau, inv_sigma, geo, partitions, grouped, granularity,
                             gate_tile, return_gate)
    else:
        out, gate, strategy = _pipeline(xc, weight, bias, tau, inv_sigma, geo, partitions, grouped,
                                        granularity, strategy, tile, gate_tile, return_gate)
    _LAST.path = strategy
    out = (out if x.is_contiguous(memory_format=CL) else out.contiguous()).to(x.dtype)
    return (out, gate) if return_gate else out


def bind_auto(xc: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tau: torch.Tensor,
              inv_sigma: torch.Tensor, geo: ConvGeometry, *, partitions: int, grouped: bool,
              granularity: int = 1, gate_tile: tuple[int, int] = (1, 1)):
    """The path ``auto`` chooses for this layer (measuring it now if it has not), bound to its
    tensors: ``run(x)`` returns ``out`` for an input of ``xc``'s shape, channels-last fp32, with
    no per-call dispatch. Only the compiled paths bind (:func:`kernels.cpu_fused.bind`,
    ``bind_blocks``); None where auto's choice is another, tuning is off or ``xc`` is not
    channels-last fp32. Valid while the tensors given here are unchanged (the caller checks)."""
    if xc.dtype != torch.float32 or not xc.is_contiguous(memory_format=CL) or not autotune.enabled():
        return None
    tile, gate_tile = _tiles(geo, None, gate_tile)
    path = _tuned_path(xc, weight, bias, tau, inv_sigma, geo, partitions, grouped, granularity, tile,
                       gate_tile)
    kw = dict(partitions=partitions, grouped=grouped, granularity=granularity)
    if path in ELEMENT_BUILDS and path != "select":
        call = cpu_fused.bind(weight, bias, tau, inv_sigma, geo, **ELEMENT_BUILDS[path], **kw)
    elif path == "fused_blocks":
        call = cpu_fused.bind_blocks(weight, bias, tau, inv_sigma, geo, gate_tile=gate_tile, **kw)
    else:
        return None
    shape, blocks = xc.shape, path == "fused_blocks"

    def run(x: torch.Tensor) -> torch.Tensor:
        if x.shape != shape or x.dtype != torch.float32 or not x.is_contiguous(memory_format=CL):
            raise KernelArgError(f"bound gated conv: expected a channels-last float32 input of shape "
                                 f"{tuple(shape)}, got {x.dtype} {tuple(x.shape)}")
        out, _, ran = call(x)
        _LAST.path = path
        if blocks:
            _LAST.tiles = ran
        return out
    run.path = path
    return run


def _clamped(t: tuple[int, int], geo: ConvGeometry) -> tuple[int, int]:
    return min(t[0], geo.ho), min(t[1], geo.wo)


def _tiles(geo: ConvGeometry, tile: tuple[int, int] | None,
           gate_tile: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(tile-gather tile, gate tile), clamped to the output: a block gate fixes the tile to its
    block; otherwise ``tile`` or :func:`kernels.cpu_tiles.default_tile`."""
    gate_tile = _clamped(gate_tile, geo)
    if gate_tile != (1, 1):
        if tile is not None and _clamped(tile, geo) != gate_tile:
            raise KernelArgError(f"tile={tile} must equal the gate tile {gate_tile} of a block gate")
        return gate_tile, gate_tile
    return (cpu_tiles.default_tile(geo) if tile is None else _clamped(tile, geo)), gate_tile


def _native(strategy: str, xc: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            tau: torch.Tensor, inv_sigma: torch.Tensor, geo: ConvGeometry, partitions: int,
            grouped: bool, granularity: int, gate_tile: tuple[int, int], return_gate: bool):
    """The C kernels' paths (:mod:`kernels.cpu_fused`): float32 only, on the layers they take.
    "select" also hands them the dense conv, "onednn_blocks" the base pass from oneDNN."""
    if xc.dtype != torch.float32:
        raise KernelArgError(f"strategy {strategy!r} computes in float32, got {xc.dtype}")
    blocks = strategy in ("fused_blocks", "onednn_blocks")
    unsupported = (_blocks_reason if blocks else _prefix_reason if ELEMENT_BUILDS[strategy]["prefix"]
                   else _fused_reason)
    reason = unsupported(geo, partitions, grouped, granularity, gate_tile)
    if reason is not None:
        raise KernelArgError(f"strategy {strategy!r} cannot run this layer: {reason}")
    if blocks:
        yp = _base_pass(xc, weight, bias, geo, partitions, grouped) if strategy == "onednn_blocks" else None
        out, gate, _LAST.tiles = cpu_fused.run_blocks(
            xc, weight, bias, tau, inv_sigma, geo, partitions=partitions, grouped=grouped,
            granularity=granularity, gate_tile=gate_tile, return_gate=return_gate, yp=yp)
        return out, gate
    full = None
    if strategy == "select":
        full = F.conv2d(xc, weight.detach().to(xc.dtype), None if bias is None else bias.detach().to(xc.dtype),
                        geo.stride, geo.padding, geo.dilation)
    out, gate, _ = cpu_fused.run(xc, weight, bias, tau, inv_sigma, geo, partitions=partitions,
                                 grouped=grouped, granularity=granularity, return_gate=return_gate,
                                 full=full, **ELEMENT_BUILDS[strategy])
    return out, gate


@_per_target
def _fused_reason(geo, partitions, grouped, granularity, gate_tile) -> str | None:
    if gate_tile != (1, 1):   # its decision is per row segment; a block spans rows
        return f"gate tile {gate_tile[0]}x{gate_tile[1]}: the fused kernel decides per element"
    return cpu_fused.unsupported_reason(geo, partitions, grouped, granularity)


@_per_target
def _prefix_reason(geo, partitions, grouped, granularity, gate_tile) -> str | None:
    return (_fused_reason(geo, partitions, grouped, granularity, gate_tile)
            or cpu_fused.prefix_unsupported_reason(geo, partitions, grouped, granularity))


@_per_target
def _blocks_reason(geo, partitions, grouped, granularity, gate_tile) -> str | None:
    return cpu_fused.blocks_unsupported_reason(geo, partitions, grouped, granularity, gate_tile)


def _block_chunks(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int):
    """Channel ranges of ``block_tiles`` (one per gate group), None when it cannot run: a
    group of a rotated (wide grouped) remaining sum must lie inside one partition chunk."""
    co = geo.c_out // partitions
    if grouped and co >= ROTATED_MIN_CHUNK and co % granularity:
        return None
    return [(j, j + granularity) for j in range(0, geo.c_out, granularity)]


def _runnable(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int,
              gate_tile: tuple[int, int] = (1, 1)) -> tuple[str, ...]:
    """Paths auto may choose for this layer (with p=1 there is no conditional pass to skip);
    ``block_tiles`` only for block gates, whose tiles it skips exactly."""
    if partitions == 1:
        return ("dense",)
    reason = _fused_reason(geo, partitions, grouped, granularity, gate_tile)
    if reason is not None and gate_tile == (1, 1):
        _warn_fallback(reason)
    return _runnable_paths(geo, partitions, grouped, granularity, gate_tile)


@_per_target
def _runnable_paths(geo, partitions, grouped, granularity, gate_tile) -> tuple[str, ...]:
    fused = _fused_reason(geo, partitions, grouped, granularity, gate_tile) is None
    block = gate_tile != (1, 1) and _block_chunks(geo, partitions, grouped, granularity) is not None
    compiled_blocks = _blocks_reason(geo, partitions, grouped, granularity, gate_tile) is None
    prefix = _prefix_reason(geo, partitions, grouped, granularity, gate_tile) is None
    return tuple(p for p in autotune.PATHS
                 if (p not in ELEMENT_BUILDS or (prefix if ELEMENT_BUILDS[p]["prefix"] else fused))
                 and (p != "block_tiles" or block)
                 and (p not in ("fused_blocks", "onednn_blocks") or compiled_blocks))


# The path _tuned_path chose per call signature, with the autotune generation it was read at:
# the key, runnable and lookup steps cost ~25 us of Python per call (2-3x that right after a
# large layer's kernel has evicted the interpreter's caches), ~2 % of a 16-channel layer.
_CHOSEN: dict[tuple, tuple[int, str]] = {}


def _tuned_path(xc, weight, bias, tau, inv_sigma, geo, partitions, grouped, granularity, tile,
                gate_tile) -> str:
    """The measured-fastest path for this layer (timing every runnable path on first use)."""
    state = cpu_fused.dispatch_state()
    sig = (geo, partitions, grouped, granularity, tile, gate_tile, *state)
    memo = _CHOSEN.get(sig)
    if memo is not None and memo[0] == autotune.generation():
        return memo[1]
    path = _measured_path(xc, weight, bias, tau, inv_sigma, geo, partitions, grouped, granularity,
                          tile, gate_tile, state[0])
    if len(_CHOSEN) > 4096:
        _CHOSEN.clear()
    _CHOSEN[sig] = (autotune.generation(), path)
    return path


def _measured_path(xc, weight, bias, tau, inv_sigma, geo, partitions, grouped, granularity, tile,
                   gate_tile, threads) -> str:
    k = autotune.key(geo, partitions, grouped, granularity, tile, threads, gate_tile)
    runnable = _runnable(geo, partitions, grouped, granularity, gate_tile)
    hit = autotune.lookup(k, runnable)
    if hit is not None:
        return hit["path"]
    kw = dict(partitions=partitions, grouped=grouped, granularity=granularity, tile=tile,
              gate_tile=gate_tile)

    def candidate(name):
        def call():
            try:
                return conditional_conv2d_cpu(xc, weight, bias, tau, inv_sigma, geo, strategy=name, **kw)
            except cpu_fused.NativeBuildError as e:
                _warn_fallback(f"the kernel did not build: {str(e).splitlines()[0]}")
                raise
        return call

    _, gate = conditional_conv2d_cpu(xc, weight, bias, tau, inv_sigma, geo, strategy="dense",
                                     return_gate=True, **kw)
    wd = weight.detach().to(xc.dtype)
    bd = None if bias is None else bias.detach().to(xc.dtype)
    dense_ms = autotune.time_call(lambda: F.conv2d(xc, wd, bd, geo.stride, geo.padding, geo.dilation))
    entry = autotune.tune(k, {name: candidate(name) for name in runnable}, dense_ms=dense_ms,
                          density=float(gate.float().mean()))
    return entry["path"]


def _base_pass(xc, weight, bias, geo, partitions, grouped) -> torch.Tensor:
    """Yp by oneDNN, channels-last: a grouped conv over the diagonal blocks (grouped) or a conv
    over the first C_in/p inputs."""
    w = weight.to(xc.dtype) if weight.dtype != xc.dtype else weight
    b = None if bias is None else bias.detach().to(xc.dtype)
    prep = _prepare(w, partitions, grouped)
    if grouped:
        yp = F.conv2d(xc, prep.base, b, geo.stride, geo.padding, geo.dilation, groups=partitions)
    else:
        # a contiguous copy of the base channels first: oneDNN on the strided channel slice
        # was 1.5x slower (16 -> 16 ch @28, batch 256: 3.6 vs 2.4 ms, copy included)
        xs = xc[:, :geo.c_in // partitions].contiguous(memory_format=CL)
        yp = F.conv2d(xs, prep.base, b, geo.stride, geo.padding, geo.dilation)
    return yp.contiguous(memory_format=CL)


def _stacked_weight(w: torch.Tensor, partitions: int, grouped: bool) -> torch.Tensor:
    """(2 C_out, C_in, kh, kw): the weight, then its base blocks as a dense weight (zeros off
    the diagonal blocks for a grouped base, outside the first C_in/p inputs otherwise)."""
    def build():
        wd = w.detach()
        c_out, c_in = wd.shape[:2]
        ci, co = c_in // partitions, c_out // partitions
        base = torch.zeros_like(wd)
        for i in range(partitions if grouped else 1):
            rows = slice(i * co, (i + 1) * co) if grouped else slice(None)
            base[rows, i * ci:(i + 1) * ci] = wd[rows, i * ci:(i + 1) * ci]
        return torch.cat([wd, base]).contiguous()
    return derived(w, "cpu.stacked", (partitions, grouped, w.dtype), build)


def _stacked(xc, weight, bias, tau, inv_sigma, geo, partitions, grouped, granularity, gate_tile,
             return_gate):
    """``stacked`` path: one oneDNN conv gives [Y, Yp]; the gate on Yp selects Y or Yp."""
    cdt = xc.dtype
    w = weight.to(cdt) if weight.dtype != cdt else weight
    b = None if bias is None else bias.detach().to(cdt).repeat(2)
    both = F.conv2d(xc, _stacked_weight(w, partitions, grouped), b, geo.stride, geo.padding, geo.dilation)
    c, m = geo.c_out, geo.positions
    flat = both.contiguous(memory_format=CL).permute(0, 2, 3, 1).reshape(m, 2 * c)
    full, ypf = flat[:, :c], flat[:, c:]
    g = _gate(ypf, tau.to(cdt), inv_sigma.to(cdt), granularity, gate_tile, geo)
    out = torch.lerp(ypf, full, g)        # Yp where the gate is off, Y where it is on
    out = out.view(geo.n, geo.ho, geo.wo, c).permute(0, 3, 1, 2)
    gate = g.view(geo.n, geo.ho, geo.wo, c).permute(0, 3, 1, 2).to(torch.bool) if return_gate else None
    return out, gate


def _pipeline(xc, weight, bias, tau, inv_sigma, geo, partitions, grouped, granularity, strategy,
              tile, gate_tile, return_gate):
    """Torch-op paths: oneDNN base pass, gate, then the conditional pass by ``strategy``
    ("pipeline" asks the cost model). Returns (out, gate or None, strategy run)."""
    cdt = xc.dtype
    w = weight.to(cdt) if weight.dtype != cdt else weight
    b = None if bias is None else bias.detach().to(cdt)
    prep = _prepare(w, partitions, grouped)
    p = partitions
    ci, co = geo.c_in // p, geo.c_out // p
    yp = _base_pass(xc, weight, bias, geo, p, grouped)
    m = geo.positions
    ypf = yp.permute(0, 2, 3, 1).reshape(m, geo.c_out)
    g = _gate(ypf, tau.to(cdt), inv_sigma.to(cdt), granularity, gate_tile, geo)

    # (p, M) count of on gates per chunk and position: a GEMM against the chunk indicator is
    # one streaming pass, where amax over the small chunk dimension is ~20x slower.
    need = torch.mm(_chunk_indicator(p, co, g.dtype), g.t()) > 0
    need_u = need.any(dim=0)
    if strategy == "pipeline":
        g4 = g.view(geo.n, geo.ho, geo.wo, geo.c_out)
        n_tiles = int(cpu_tiles.active_tiles(g4, tile).shape[0]) if p > 1 else 0
        cost = _costs(geo, prep.rest.shape[0], p, grouped, int(need_u.sum()),
                      need.sum(dim=1).tolist(), (n_tiles, tile))
        strategy = min(cost, key=cost.get)

    if p == 1:
        pass                                      # base path is the whole conv: nothing remains
    elif strategy in ("tiles", "chunk_tiles", "block_tiles"):
        if not grouped:
            mode, rest_w, first = "add", prep.dense_rest, ci
        elif co >= ROTATED_MIN_CHUNK:
            mode, rest_w, first = "rotated", prep.rotated, 0
        else:
            mode, rest_w, first = "select", prep.dense_rest, 0
        kw = dict(partitions=p, rest_weight=rest_w, first=first, mode=mode, bias=b, tile=tile)
        if strategy == "block_tiles":
            chunks = _block_chunks(geo, p, grouped, granularity)
            if chunks is None:
                raise KernelArgError(f"strategy 'block_tiles': gate groups of {granularity} channels "
                                     f"straddle partition chunks of {co}")
        else:
            chunks = range(p) if strategy == "chunk_tiles" else [None]
        xp = cpu_tiles.padded_input(xc, geo, tile, first)
        _LAST.tiles = sum(cpu_tiles.tile_gather_pass(xc, ypf, g, geo, chunk=c, xp=xp, **kw)
                          for c in chunks)
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
    elif strategy in ("union", "groups"):
        xrows = _padded_input(xc, geo, prep.rest_first)
        if strategy == "union":
            _gated_gemm(xrows, torch.nonzero(need_u).squeeze(1), geo, prep.rest, g, ypf)
        else:
            for i in range(p):
                cols = slice(i * co, (i + 1) * co)
                _gated_gemm(xrows, torch.nonzero(need[i]).squeeze(1), geo, prep.rest[:, cols],
                            g[:, cols], ypf[:, cols])
    gate = g.view(geo.n, geo.ho, geo.wo, geo.c_out).permute(0, 3, 1, 2).to(torch.bool) if return_gate else None
    return yp, gate, strategy
