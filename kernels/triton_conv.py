"""Triton kernels of the conditional partial-sum convolution (GPU; CPU via TRITON_INTERPRET=1).

Two launches and a compaction, NHWC inside, fp32 accumulation:

1. ``_base_gate_kernel``: implicit-GEMM conv over the base channels (for a block-diagonal base
   only the input chunk of the output tile's chunk is read). Its epilogue adds the bias,
   applies the folded gate compare (``Yp > tau``, or the mean score over G channels), writes
   Yp (fp32), the gate (int8) and one "any gate on" flag per (spatial tile, output-channel
   tile).
2. compaction without a host sync: a stable argsort of the flags puts the active tiles first
   and their count stays on the device; the conditional launch has one program per tile and
   programs past the count exit at once.
3. ``_cond_kernel``: for each active tile, an implicit GEMM over the remaining input channels
   only (K-blocks inside the tile's own base chunk are skipped), added into Yp where the
   gate is on.

Kernel-shape rules that the interpreter would not enforce: every ``tl.dot`` operand is at
least 16 in each dimension (BLOCK_M, BLOCK_N, BLOCK_K >= 16); one fixed configuration per
shape (no multi-config autotune); fp32 operands use ``input_precision="ieee"`` so the GPU
matches the fp32 reference instead of rounding to TF32. bf16 is computed in fp32 (the
interpreter mis-evaluates bf16 arithmetic).
"""
from __future__ import annotations

import threading

import torch
import triton
import triton.language as tl

from kernels.errors import KernelArgError
from kernels.geometry import ConvGeometry
from kernels.reference import base_mask
from kernels.triton_env import interpreter_enabled

MIN_TILE = 16
_LAST = threading.local()


def last_active_programs() -> int:
    """Work counter: conditional-pass programs the last call of this thread ran (host sync)."""
    count = getattr(_LAST, "count", None)
    return 0 if count is None else int(count.item())


@triton.jit
def _tile_acc(acc, x_ptr, w_ptr, n_img, oh, ow, m_ok, offs_n, n_ok, c_lo, c_hi, skip_lo, skip_hi,
              H, W, C_in, C_out, SH, SW, PH, PW, DH, DW,
              KH: tl.constexpr, KW: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """acc += im2col(x)[rows, c_lo:c_hi] @ w[c_lo:c_hi], skipping K-blocks inside [skip_lo, skip_hi)."""
    offs_k = tl.arange(0, BK)
    for r in range(KH):
        for s in range(KW):
            ih = oh * SH - PH + r * DH
            iw = ow * SW - PW + s * DW
            pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x_row = ((n_img * H + ih) * W + iw) * C_in
            w_tap = (r * KW + s) * C_in
            for c0 in range(c_lo, c_hi, BK):
                if (c0 < skip_lo) | (c0 + BK > skip_hi):
                    cc = c0 + offs_k
                    c_ok = cc < c_hi
                    a = tl.load(x_ptr + x_row[:, None] + cc[None, :],
                                mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
                    b = tl.load(w_ptr + (w_tap + cc)[:, None] * C_out + offs_n[None, :],
                                mask=c_ok[:, None] & n_ok[None, :], other=0.0)
                    acc = tl.dot(a, b, acc, input_precision=PREC)
    return acc


@triton.jit
def _tile_coords(pid_m, pid_n, M, C_out, HO, WO, TH, TW, NTY, NTX, PER,
                 BM: tl.constexpr, BN: tl.constexpr, TILED: tl.constexpr):
    """Output rows (flat NHWC positions) and columns of one program, their bounds masks, and
    (image, oh, ow) per row. TILED: programs follow the gate's 2-D tiles (PER programs of BM
    slots per TH x TW tile, slots past the tile or the map masked), so a program never mixes
    two gate blocks and an off block is a skipped program; else BM consecutive positions."""
    offs_n = pid_n * BN + tl.arange(0, BN)
    if TILED:
        gt = pid_m // PER
        slot = (pid_m % PER) * BM + tl.arange(0, BM)
        n_img = gt // (NTY * NTX)
        r = gt % (NTY * NTX)
        oh = (r // NTX) * TH + slot // TW
        ow = (r % NTX) * TW + slot % TW
        m_ok = (slot < TH * TW) & (oh < HO) & (ow < WO)
        rows = (n_img * HO + oh) * WO + ow
        return rows, offs_n, m_ok, offs_n < C_out, n_img, oh, ow
    offs_m = pid_m * BM + tl.arange(0, BM)
    n_img = offs_m // (HO * WO)
    rem = offs_m % (HO * WO)
    return offs_m, offs_n, offs_m < M, offs_n < C_out, n_img, rem // WO, rem % WO


@triton.jit
def _base_gate_kernel(x_ptr, w_ptr, bias_ptr, tau_ptr, isg_ptr, yp_ptr, gate_ptr, flag_ptr,
                      M, H, W, C_in, C_out, HO, WO, SH, SW, PH, PW, DH, DW, CI_P, CO_P,
                      TH, TW, NTY, NTX, PER,
                      GROUPED: tl.constexpr, HAS_BIAS: tl.constexpr, FUSE_GATE: tl.constexpr,
                      G: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, BM: tl.constexpr,
                      BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, TILED: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m, offs_n, m_ok, n_ok, n_img, oh, ow = _tile_coords(pid_m, pid_n, M, C_out, HO, WO, TH, TW,
                                                             NTY, NTX, PER, BM, BN, TILED)
    n_first = pid_n * BN
    n_last = tl.minimum(n_first + BN, C_out) - 1
    if GROUPED:
        c_lo = (n_first // CO_P) * CI_P
        c_hi = (n_last // CO_P + 1) * CI_P
    else:
        c_lo = 0
        c_hi = CI_P
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc = _tile_acc(acc, x_ptr, w_ptr, n_img, oh, ow, m_ok, offs_n, n_ok, c_lo, c_hi, 0, 0,
                    H, W, C_in, C_out, SH, SW, PH, PW, DH, DW, KH, KW, BK, PREC)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    ok = m_ok[:, None] & n_ok[None, :]
    out_off = offs_m[:, None] * C_out + offs_n[None, :]
    tl.store(yp_ptr + out_off, acc, mask=ok)
    if FUSE_GATE:
        tau = tl.load(tau_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        if G == 1:
            on = acc > tau[None, :]
        else:
            isg = tl.load(isg_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            score = (acc - tau[None, :]) * isg[None, :]
            mean = tl.sum(tl.reshape(score, (BM, BN // G, G)), axis=2) / G
            on3 = tl.broadcast_to(tl.reshape(mean > 0, (BM, BN // G, 1)), (BM, BN // G, G))
            on = tl.reshape(on3, (BM, BN))
        on = on & ok
        tl.store(gate_ptr + out_off, on.to(tl.int8), mask=ok)
        any_on = tl.max(tl.max(on.to(tl.int32), axis=1), axis=0)
        tl.store(flag_ptr + pid_m * tl.num_programs(1) + pid_n, any_on)


@triton.jit
def _cond_kernel(x_ptr, w_ptr, out_ptr, gate_ptr, order_ptr, count_ptr,
                 M, H, W, C_in, C_out, HO, WO, SH, SW, PH, PW, DH, DW, CI_P, CO_P,
                 TH, TW, NTY, NTX, PER, TILES_N,
                 GROUPED: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, BM: tl.constexpr,
                 BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, TILED: tl.constexpr):
    pid = tl.program_id(0)
    if pid < tl.load(count_ptr):
        tile = tl.load(order_ptr + pid)
        pid_m = tile // TILES_N
        pid_n = tile % TILES_N
        offs_m, offs_n, m_ok, n_ok, n_img, oh, ow = _tile_coords(pid_m, pid_n, M, C_out, HO, WO, TH, TW,
                                                                 NTY, NTX, PER, BM, BN, TILED)
        if GROUPED:
            chunk_first = (pid_n * BN) // CO_P
            chunk_last = (tl.minimum(pid_n * BN + BN, C_out) - 1) // CO_P
            c_lo = 0
            skip_lo = chunk_first * CI_P
            skip_hi = tl.where(chunk_first == chunk_last, skip_lo + CI_P, skip_lo)
        else:
            c_lo = CI_P
            skip_lo = 0
            skip_hi = 0
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        acc = _tile_acc(acc, x_ptr, w_ptr, n_img, oh, ow, m_ok, offs_n, n_ok, c_lo, C_in,
                        skip_lo, skip_hi, H, W, C_in, C_out, SH, SW, PH, PW, DH, DW, KH, KW, BK, PREC)
        ok = m_ok[:, None] & n_ok[None, :]
        off = offs_m[:, None] * C_out + offs_n[None, :]
        on = tl.load(gate_ptr + off, mask=ok, other=0) != 0
        yp = tl.load(out_ptr + off, mask=ok & on, other=0.0)
        tl.store(out_ptr + off, yp + acc, mask=ok & on)


def _pow2_floor(v: int) -> int:
    return 1 << (max(int(v), 1).bit_length() - 1)


def tile_sizes(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): one heuristic configuration, every dim >= 16.

    BLOCK_N stays inside one output chunk when chunks are >= 16 wide, so the grouped base pass
    reads only its own input chunk; BLOCK_K follows the chunk width.
    """
    co = geo.c_out // partitions if grouped else geo.c_out
    bn = min(64, max(MIN_TILE, _pow2_floor(co)))
    if granularity > 1 and granularity & (granularity - 1) == 0 and granularity <= 64:
        bn = max(bn, granularity)
    bk = 32 if geo.c_in // partitions >= 32 else MIN_TILE
    bm = 32 if interpreter_enabled() else 64
    return bm, bn, bk


def compact_tiles(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(active tile ids first, in tile order; their count as a 1-element device tensor).

    A stable argsort instead of ``nonzero`` keeps the count on the device: no host sync
    between the two launches.
    """
    order = torch.argsort((flags == 0).to(torch.int8), stable=True).to(torch.int32)
    return order, (flags != 0).sum().to(torch.int32).reshape(1)


def _weight_matrices(weight: torch.Tensor, partitions: int, grouped: bool, dtype: torch.dtype):
    """Base and remaining weights as (kh*kw*C_in, C_out) matrices, zero outside their path."""
    m = base_mask(weight.shape[0], weight.shape[1], partitions, grouped, weight.device, weight.dtype)

    def as_matrix(w: torch.Tensor) -> torch.Tensor:
        return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).to(dtype).contiguous()

    return as_matrix(weight * m), as_matrix(weight * (1 - m))


def conditional_conv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                              tau: torch.Tensor, inv_sigma: torch.Tensor, geo: ConvGeometry, *,
                              partitions: int, grouped: bool, granularity: int = 1,
                              tile: tuple[int, int] = (1, 1), return_gate: bool = False):
    """Triton backend; arguments already validated by :func:`kernels.conditional_conv2d`.

    Block gates (``tile`` other than 1x1) are decided with torch on the device from the base
    partial sum, and both launches order their programs by gate tile (``TILED``): a program
    covers BLOCK_M slots of one th x tw tile (a power of two >= 16; slots past the tile are
    masked, e.g. 49 of 64 for 7x7) and, when G is a power of two in 16..64, exactly one gate
    group of channels, so the conditional launch skips exactly the blocks that are off."""
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise KernelArgError(f"triton backend supports float32/float16/bfloat16 inputs, got {x.dtype}")
    cdt = torch.float16 if x.dtype == torch.float16 else torch.float32
    prec = "ieee" if cdt == torch.float32 else "tf32"  # ignored for fp16 operands
    dev = x.device
    xh = x.to(cdt).permute(0, 2, 3, 1).contiguous()
    wb, wr = _weight_matrices(weight.detach(), partitions, grouped, cdt)
    m = geo.positions
    bm, bn, bk = tile_sizes(geo, partitions, grouped, granularity)
    th, tw = min(tile[0], geo.ho), min(tile[1], geo.wo)
    tiled = (th, tw) != (1, 1)
    nty, ntx, per = triton.cdiv(geo.ho, th), triton.cdiv(geo.wo, tw), 1
    if tiled:   # programs follow the gate tiles: BM slots (a power of two >= 16) per program
        slots = max(MIN_TILE, 1 << (th * tw - 1).bit_length())
        bm = min(slots, bm)
        per = slots // bm
        if granularity & (granularity - 1) == 0 and MIN_TILE <= granularity <= 64:
            bn = granularity            # one gate group per program: skipping is exact
    tiles_m = geo.n * nty * ntx * per if tiled else triton.cdiv(m, bm)
    tiles_n = triton.cdiv(geo.c_out, bn)
    yp = torch.empty(m, geo.c_out, device=dev, dtype=torch.float32)
    gate = torch.empty(m, geo.c_out, device=dev, dtype=torch.int8)
    flags = torch.zeros(tiles_m * tiles_n, device=dev, dtype=torch.int32)
    fuse = tuple(tile) == (1, 1) and (
        granularity == 1 or (bn % granularity == 0 and granularity & (granularity - 1) == 0))
    f32 = (lambda t: t.detach().to(torch.float32).contiguous())
    bias_t = f32(bias) if bias is not None else yp
    shape_args = (m, geo.h, geo.w, geo.c_in, geo.c_out, geo.ho, geo.wo, *geo.stride, *geo.padding,
                  *geo.dilation, geo.c_in // partitions, geo.c_out // partitions, th, tw, nty, ntx, per)
    _base_gate_kernel[(tiles_m, tiles_n)](
        xh, wb, bias_t, f32(tau), f32(inv_sigma), yp, gate, flags, *shape_args,
        GROUPED=grouped, HAS_BIAS=bias is not None, FUSE_GATE=fuse, G=granularity,
        KH=geo.kh, KW=geo.kw, BM=bm, BN=bn, BK=bk, PREC=prec, TILED=tiled)
    if not fuse:  # block gates, non-power-of-two gate groups: compare on the device with torch
        from kernels.reference import gate_from_partial
        if tuple(tile) == (1, 1):
            d = gate_from_partial(yp.t().reshape(1, geo.c_out, m, 1), tau.float(), inv_sigma.float(),
                                  granularity)
            gate.copy_(d.reshape(geo.c_out, m).t())
        else:
            y4 = yp.view(geo.n, geo.ho, geo.wo, geo.c_out).permute(0, 3, 1, 2)
            d = gate_from_partial(y4, tau.float(), inv_sigma.float(), granularity, tile)
            gate.view(geo.n, geo.ho, geo.wo, geo.c_out).copy_(d.permute(0, 2, 3, 1))
        if tiled:   # one flag per (gate tile, channel program), repeated for its PER programs
            g4 = torch.nn.functional.pad(gate.view(geo.n, geo.ho, geo.wo, geo.c_out),
                                         (0, tiles_n * bn - geo.c_out, 0, ntx * tw - geo.wo,
                                          0, nty * th - geo.ho))
            f = g4.view(geo.n, nty, th, ntx, tw, tiles_n, bn).amax(dim=(2, 4, 6))
            flags.copy_(f.reshape(-1, 1, tiles_n).expand(-1, per, tiles_n).reshape(-1))
        else:
            padded = torch.nn.functional.pad(gate, (0, tiles_n * bn - geo.c_out, 0, tiles_m * bm - m))
            flags.copy_(padded.view(tiles_m, bm, tiles_n, bn).amax(dim=(1, 3)).reshape(-1))
    if partitions > 1:
        order, count = compact_tiles(flags)
        _LAST.count = count
        _cond_kernel[(tiles_m * tiles_n,)](
            xh, wr, yp, gate, order, count, *shape_args, tiles_n,
            GROUPED=grouped, KH=geo.kh, KW=geo.kw, BM=bm, BN=bn, BK=bk, PREC=prec, TILED=tiled)
    out = yp.view(geo.n, geo.ho, geo.wo, geo.c_out).permute(0, 3, 1, 2).to(x.dtype)
    if not x.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous()
    if not return_gate:
        return out
    return out, gate.view(geo.n, geo.ho, geo.wo, geo.c_out).permute(0, 3, 1, 2).to(torch.bool)
