"""Tile-gather conditional pass (SBNet / SIGE style): oneDNN does the FLOPs of active tiles.

After the base pass and the gate (see :mod:`kernels.cpu`), the output is cut into tiles of
``th x tw`` positions. Every tile holding at least one on gate is gathered, with the input
halo its outputs read, into a batch of small images; one dense torch conv (oneDNN) with no
padding computes the remaining partial sum of the whole batch, and the per-element gate adds
it back. Work therefore follows the number of active tiles, not of active elements: gates
that switch whole tiles off (the structured gates) skip exactly those tiles, per-element
random gates leave nearly every tile active (then ``auto`` measures another path faster).

The remaining sum of a tile, by base-path layout:

* first ``C_in/p`` inputs (not grouped): a conv over the other inputs, exact MACs;
* block-diagonal base, output chunks >= ``ROTATED_MIN_CHUNK``: one conv with ``groups=p`` over
  the tile's inputs rotated per chunk (exact MACs, see ``kernels.cpu._rotated_input``);
* narrower chunks: the full conv (with bias) selected per element, ``out = lerp(Yp, Y, d)``:
  1/(1-1/p) more MACs than exact, but one well-shaped conv instead of a slow grouped one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.errors import KernelArgError
from kernels.geometry import ConvGeometry
from kernels.workspace import scratch

CL = torch.channels_last


def default_tile(geo: ConvGeometry) -> tuple[int, int]:
    """Tile for gates without a trained tile shape: the divisor of each output side in 4..8
    nearest 8 (so no tile is ragged), else 8; sides of 8 or less are one tile."""
    def side(n: int) -> int:
        if n <= 8:
            return n
        return next((d for d in range(8, 3, -1) if n % d == 0), 8)
    return side(geo.ho), side(geo.wo)


def active_tiles(g4: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """(B, 3) int64 (image, tile row, tile column) of tiles with any gate on; ``g4`` is the
    (N, Ho, Wo, C) 0/1 gate (any strides)."""
    th, tw = tile
    n, ho, wo, _ = g4.shape
    nty, ntx = -(-ho // th), -(-wo // tw)
    on = g4.amax(dim=3)
    if nty * th != ho or ntx * tw != wo:
        on = F.pad(on, (0, ntx * tw - wo, 0, nty * th - ho))
    return on.view(n, nty, th, ntx, tw).amax(dim=(2, 4)).nonzero()


def _halo(geo: ConvGeometry, tile: tuple[int, int]) -> tuple[int, int]:
    """Input rows and columns read by one output tile."""
    (th, tw), (sh, sw), (dh, dw) = tile, geo.stride, geo.dilation
    return (th - 1) * sh + dh * (geo.kh - 1) + 1, (tw - 1) * sw + dw * (geo.kw - 1) + 1


def _tile_view(t: torch.Tensor, tiles: tuple[int, int], step: tuple[int, int],
               size: tuple[int, int]) -> torch.Tensor:
    """(N, nty, ntx, size_h, size_w, C) strided view of an NHWC-indexed tensor ``t``."""
    sn, sh, sw, sc = t.stride()
    return t.as_strided((t.shape[0], tiles[0], tiles[1], size[0], size[1], t.shape[3]),
                        (sn, step[0] * sh, step[1] * sw, sh, sw, sc), t.storage_offset())


def padded_input(xc: torch.Tensor, geo: ConvGeometry, tile: tuple[int, int], first: int) -> torch.Tensor:
    """Zero-padded NHWC copy of input channels ``first:``, large enough for the halos of the
    ragged last tiles; one per layer call, shared by every chunk's gather (scratch)."""
    th, tw = min(tile[0], geo.ho), min(tile[1], geo.wo)
    nty, ntx = -(-geo.ho // th), -(-geo.wo // tw)
    hh, ww = _halo(geo, (th, tw))
    (sh, sw), (ph, pw) = geo.stride, geo.padding
    hp = max(geo.hp, (nty - 1) * th * sh + hh)
    wp = max(geo.wp, (ntx - 1) * tw * sw + ww)
    src = xc[:, first:].permute(0, 2, 3, 1)
    xp = scratch("tiles.xpad", (geo.n, hp, wp, src.shape[3]), xc.dtype)
    xp.zero_()
    xp[:, ph:ph + geo.h, pw:pw + geo.w].copy_(src)
    return xp


def tile_gather_pass(xc: torch.Tensor, ypf: torch.Tensor, gate: torch.Tensor, geo: ConvGeometry, *,
                     partitions: int, rest_weight: torch.Tensor, first: int, mode: str,
                     bias: torch.Tensor | None, tile: tuple[int, int],
                     chunk: int | tuple[int, int] | None = None, xp: torch.Tensor | None = None) -> int:
    """Add the gated remaining partial sum of every active tile into ``ypf`` in place.

    ``xc``: channels-last input; ``ypf``: (M, C_out) NHWC view of the base partial sum (with
    bias); ``gate``: (M, C_out) 0/1 floats; ``rest_weight``/``first``/``mode``: the remaining-sum
    conv weight, its first input channel and how it combines ("add", "rotated" or "select",
    see the module docstring). ``chunk`` = i restricts everything to output chunk i (its own
    active tiles, its rows of the weight), ``chunk`` = (start, stop) to those output channels
    (one gate group of a block gate; in "rotated" mode inside one partition chunk); None
    computes all output channels of a tile. ``xp``: :func:`padded_input` of this call, when
    several chunks share it. Returns the number of tiles computed.
    """
    th, tw = min(tile[0], geo.ho), min(tile[1], geo.wo)
    nty, ntx = -(-geo.ho // th), -(-geo.wo // tw)
    y4 = ypf.view(geo.n, geo.ho, geo.wo, geo.c_out)
    g4 = gate.view(geo.n, geo.ho, geo.wo, geo.c_out)
    w, b = rest_weight, bias
    co = geo.c_out // partitions
    part = None
    if chunk is not None:
        start, stop = (chunk * co, (chunk + 1) * co) if isinstance(chunk, int) else chunk
        part = start // co
        if mode == "rotated" and (stop - 1) // co != part:
            raise KernelArgError(f"channels {start}:{stop} span two partition chunks of {co}")
        cols = slice(start, stop)
        y4, g4, w = y4[..., cols], g4[..., cols], rest_weight[cols]
        b = None if bias is None else bias[cols]
    idx = active_tiles(g4, (th, tw))
    if idx.shape[0] == 0:
        return 0
    n_i, ty, tx = idx.unbind(1)
    hh, ww = _halo(geo, (th, tw))
    sh, sw = geo.stride
    if xp is None:
        xp = padded_input(xc, geo, (th, tw), first)
    xt = _tile_view(xp, (nty, ntx), (th * sh, tw * sw), (hh, ww))[n_i, ty, tx]
    xt = xt.permute(0, 3, 1, 2)                                # (B, Cx, hh, ww), channels-last memory
    # output and gate padded to whole tiles (a copy only when the last tiles are ragged)
    ragged = nty * th != geo.ho or ntx * tw != geo.wo
    yw, gw = y4, g4
    if ragged:
        pad = (0, 0, 0, ntx * tw - geo.wo, 0, nty * th - geo.ho)
        yw, gw = F.pad(y4, pad).contiguous(), F.pad(g4, pad).contiguous()
    yv = _tile_view(yw, (nty, ntx), (th, tw), (th, tw))
    gt = _tile_view(gw, (nty, ntx), (th, tw), (th, tw))[n_i, ty, tx]
    yt = yv[n_i, ty, tx]                                       # (B, th, tw, C) copies
    if mode == "rotated":
        ci = geo.c_in // partitions
        chunks = range(partitions) if part is None else [part]
        parts = []
        for i in chunks:
            parts += [xt[:, (i + 1) * ci:], xt[:, :i * ci]]
        xr = torch.cat([t for t in parts if t.shape[1]], dim=1).contiguous(memory_format=CL)
        r = F.conv2d(xr, w, None, geo.stride, 0, geo.dilation, groups=len(chunks))
    else:
        r = F.conv2d(xt.contiguous(memory_format=CL), w, b if mode == "select" else None,
                     geo.stride, 0, geo.dilation)
    r = r.permute(0, 2, 3, 1)                                  # (B, th, tw, C)
    if mode == "select":
        yt.lerp_(r, gt)
    else:
        yt.addcmul_(r, gt)
    yv.index_put_((n_i, ty, tx), yt)
    if ragged:
        y4.copy_(yw[:, :geo.ho, :geo.wo])
    return int(idx.shape[0])
