"""Fused CPU kernel of the conditional conv: base sum, gate and conditional pass in one loop.

The torch-op pipeline in :mod:`kernels.cpu` pays for a separate base conv, elementwise gate
passes and gathered GEMMs; on this CPU that left the gated model slower than dense even at
density 0.3. ``csrc/gated_conv.c`` instead walks output tiles (RH x RW output positions, see
:func:`tile_shape`, x VW output channels) once, each reading a contiguous copy of its input
window: base sum, compare, and the remaining-channel sum only when a gate of the tile is on,
all in registers. Work is skipped per tile, so the saving follows the spatial structure of the
gates: clustered gates (what trained CGNet gates look like) skip tiles, per-element random
gates at density >= 0.1 leave nearly every tile active. Block gates (:func:`run_blocks`) run
one pass per gate block: Yp of its tiles, the block's decision, the remaining sums of the
blocks that are on.

The C source is compiled per layer geometry with every size a compile-time constant (gcc,
``-O3 -march=native -fopenmp``), cached on disk under ``$DYNGATE_KERNEL_CACHE`` (default
``~/.cache/dyngate/kernels``) and loaded with ctypes; it links the libgomp torch already
loaded. Without a C compiler :func:`available` is False and callers use the torch pipeline.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from kernels.errors import KernelArgError
from kernels.geometry import ConvGeometry
from kernels.reference import base_mask, expand_blocks
from kernels.workspace import derived

SOURCE = Path(__file__).with_name("csrc") / "gated_conv.c"


class NativeBuildError(RuntimeError):
    """The C compiler failed on the fused kernel (message carries the compiler output)."""


def _cache_dir() -> Path:
    return Path(os.environ.get("DYNGATE_KERNEL_CACHE", Path.home() / ".cache" / "dyngate" / "kernels"))


@functools.lru_cache(maxsize=1)
def compiler() -> str | None:
    """Path of the C compiler used (``$CC`` or gcc), None when there is none."""
    return shutil.which(os.environ.get("CC", "gcc"))


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> str:
    """The CPU's feature flags (first 'flags' line of /proc/cpuinfo; empty if unreadable)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("flags")), "")


ISAS = ("avx512", "avx2", "generic")
# Compiler flags per target. "avx2" on an AVX-512 machine is -march=native minus AVX-512, so
# every developer machine can build and test the AVX2 code; "generic" is baseline x86-64 (SSE2).
_ISA_FLAGS = {"avx512": ["-march=native"], "avx2": ["-march=native", "-mno-avx512f"],
              "generic": ["-march=x86-64", "-mtune=generic"]}
# SIMD layouts (VW lanes, SPAN) in order of preference, and positions per tile for one and two
# vectors per tile: accumulators + one weight vector + a broadcast must fit the register file
# (32 zmm on AVX-512; 16 ymm/xmm on AVX2 and SSE).
_ISA_LAYOUTS = {"avx512": [(16, False), (8, False), (16, True), (8, True), (4, False)],
                "avx2": [(8, False), (8, True), (4, False), (16, False)],
                "generic": [(4, False), (8, False), (16, False)]}  # wide last: gate groups of 8/16
MIN_CHUNK = 4   # narrowest exact vector every ISA's layout list has: chunks of 4k channels always fit
# Most positions per tile (RH x RW, see tile_shape) for one and two vectors per tile: R*NBT
# accumulators + NBT weight vectors + one broadcast fit the register file (AVX-512 two
# vectors: 28 + 2 + 1 of 32 zmm; one vector: 16 + 1 + 1, 16 being the position loops' full
# unroll. One-vector tiles were capped at 14 until 2026-12-05: 4x4 instead of 7x2 on a 32x32
# map ran 16->16 (prefix) at 0.95 instead of 0.89 of oneDNN, 64->64 @8 (fused) at 0.96
# instead of 0.88 (batch 64, 2 threads, interleaved). Two-vector tiles of 16 spill: 0.75-0.85.)
_ISA_TILE = {"avx512": (16, 14), "avx2": (12, 6), "generic": (12, 6)}


@functools.lru_cache(maxsize=1)
def cpu_isa() -> str:
    """The widest target this CPU runs: "avx512" (AVX-512F), "avx2" (AVX2+FMA) or "generic"."""
    flags = set(_cpu_flags().split())
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "generic"


def isa() -> str:
    """Target of the fused kernel: ``$DYNGATE_ISA`` (avx512, avx2, generic or native, the
    default), never wider than the CPU (asking for more is an error, not a crash)."""
    want = os.environ.get("DYNGATE_ISA", "native").strip().lower() or "native"
    have = cpu_isa()
    if want == "native":
        return have
    if want not in ISAS:
        raise KernelArgError(f"DYNGATE_ISA={want!r}: choose one of native, {', '.join(ISAS)}")
    if ISAS.index(want) < ISAS.index(have):
        raise KernelArgError(f"DYNGATE_ISA={want}: this CPU only runs up to {have}")
    return want


def _per_target(fn):
    """``fn`` memoised per layer, ISA target and whether a C compiler exists (the current
    :func:`isa` and :func:`available` are part of the key; dict results are copied, so callers
    may extend them). Layout, tile-shape and path checks ran on every call of a gated conv:
    ~50 us of Python, as much as a small layer's base pass."""
    cached = functools.lru_cache(maxsize=4096)(lambda target, have_cc, *args, **kw: fn(*args, **kw))

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        out = cached(isa(), available(), *args, **kw)
        return dict(out) if isinstance(out, dict) else out
    return wrapper


def _max_tile(nbt: int = 1) -> int:
    """Most positions per tile for ``nbt`` vectors per tile on the current target."""
    one, two = _ISA_TILE[isa()]
    return one if nbt == 1 else two


def tile_shape(rows: int, cols: int, nbt: int = 1) -> tuple[int, int]:
    """(RH, RW): the output tile, at most :func:`_max_tile` positions, that covers a rows x
    cols area (the map, or one gate block) at the least cost: per tile its positions, but at
    least the ~10 FMA chains per vector that keep the FMA units busy, + 3 for its window copy
    and stores; the last tile row of an area whose rows RH does not divide runs with only the
    remaining rows (csrc/gated_conv.c: MLRH, LRH). Ties go to the tile with the smaller input
    window (3x3 taps), which copies less: 2 x 7 rather than 1 x 14 on 28- and 14-wide maps."""
    rmax = _max_tile(nbt)
    best = None
    for rw in range(1, min(cols, rmax) + 1):
        for rh in range(1, min(rows, rmax // rw) + 1):
            full, last = divmod(rows, rh)
            per_col = sum(max(r * rw, 10 / nbt) + 3 for r in [rh] * full + ([last] if last else []))
            cost = (-(-cols // rw) * per_col, (rh + 2) * (rw + 2), rh)
            if best is None or cost < best[0]:
                best = (cost, (rh, rw))
    return best[1]


# The input window lives on the thread's stack (csrc/gated_conv.c, fill_window): one tile's in
# per-element builds, one whole gate block's (rounded up to whole tiles) in block builds.
WINDOW_MAX_BYTES = 256 * 1024


@_per_target
def _window_reason(geo: ConvGeometry, area: tuple[int, int], block: bool = False) -> str | None:
    """Why the input window the kernel fills for ``area`` (per-element builds: one tile of the
    map; ``block``: the whole gate block ``area``) does not fit its stack buffer; None when it
    fits. A build may use the tile shape for one or two vectors per tile: the larger window
    counts."""
    size = 0
    for nbt in (1, 2):
        rh, rw = tile_shape(*area, nbt)
        if block:
            rh, rw = -(-area[0] // rh) * rh, -(-area[1] // rw) * rw
        br = (rh - 1) * geo.stride[0] + (geo.kh - 1) * geo.dilation[0] + 1
        bc = (rw - 1) * geo.stride[1] + (geo.kw - 1) * geo.dilation[1] + 1
        size = max(size, 4 * br * bc * geo.c_in)
    if size <= WINDOW_MAX_BYTES:
        return None
    what = "gate block" if block else "output tile"
    return (f"an input window of {size // 1024} KiB per {what} exceeds the kernel's "
            f"{WINDOW_MAX_BYTES // 1024} KiB stack buffer")


def _block_area(geo: ConvGeometry, gate_tile: tuple[int, int]) -> tuple[int, int]:
    """The output area one gate block covers (clipped to the map): block kernels tile it."""
    return min(gate_tile[0], geo.ho), min(gate_tile[1], geo.wo)


def available() -> bool:
    """True when the fused kernel can be built here (a C compiler exists)."""
    return compiler() is not None


def dispatch_state() -> tuple[int, str, bool]:
    """What the CPU paths' choice and builds depend on besides the layer: the thread count, the
    ISA target and whether a C compiler exists. Memos of a chosen path or a bound call key on it
    (``kernels.cpu._tuned_path``, ``kernels.api.bind_state``)."""
    return torch.get_num_threads(), isa(), available()


def layout(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int) -> tuple[int, bool] | None:
    """(VW, SPAN): output channels per SIMD vector, and whether a vector spans several output
    chunks of a grouped base path; None when the layer is outside the kernel's shapes.

    A vector never splits a gate group of G channels. It holds the channels of one chunk
    (exact channel ranges) when the chunk is a multiple of 16 or 8 channels. 4-channel chunks
    are spanned by 16-lane vectors with pre-masked weights (SPAN, see csrc/gated_conv.c):
    on ResNet-20's 16->16 layers (2 threads, trained gates) 3.7 ms against 6.2 ms with exact
    4-lane vectors. For 8-channel chunks exact 8-lane vectors were as fast as spanning
    (3.4 vs 3.7 ms on 32->32), so spanning is kept for the 4-lane case.
    """
    grouped = grouped and partitions > 1
    span = geo.c_out // partitions if grouped else geo.c_out
    for vw, spanning in _ISA_LAYOUTS[isa()]:
        if vw % granularity or geo.c_out % vw:
            continue
        if not spanning and span % vw == 0:
            return vw, False
        if spanning and grouped and vw % span == 0:
            return vw, True
    return None


def unsupported_reason(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int) -> str | None:
    """Why the fused kernel cannot run this layer (None when it can)."""
    if not available():
        return "no C compiler found (set $CC or install gcc)"
    reason = _window_reason(geo, (geo.ho, geo.wo))
    if reason is not None:
        return reason
    if layout(geo, partitions, grouped, granularity) is None:
        return (f"output chunk of {geo.c_out // partitions if grouped else geo.c_out} channels with "
                f"gate granularity {granularity}: needs a multiple of 4 channels per chunk (or "
                "chunks that tile a 16/8-channel vector) and G dividing the vector")
    return None


def _blocks_per_tile(geo: ConvGeometry, partitions: int, grouped: bool, vw: int, spanning: bool) -> int:
    """Vectors per tile: 2 halves the broadcast loads per FMA. On AVX-512 two vectors x 14
    positions (31 of the 32 zmm) beat one vector x 14 on every shape whose output chunks hold
    whole pairs of vectors (1 thread, batch 8, all gates on, 2026-12-05: 128->128 @28 14.7 ->
    12.1 ms, 256->256 @14 15.0 -> 12.0 ms, dense 10.8 / 10.9 ms); before the kernel's address
    fix only strided layers and 512+ inputs gained from it."""
    span = geo.c_out if spanning or not (grouped and partitions > 1) else geo.c_out // partitions
    # AVX2/SSE: 6 positions x 2 vectors is the classic 16-register micro-kernel shape
    target = isa()
    if target != "avx512":
        wants_two = vw <= {"avx2": 8, "generic": 4}[target]
    else:
        wants_two = True
    return 2 if wants_two and span % (2 * vw) == 0 else 1


# Loop order of the fused kernel: with at most this many bytes of packed weights (they stay in
# a core's L2 on every x86 CPU we target: 512 KiB on Zen 2-4, 1-2 MiB on recent Intel) every
# position tile runs all channel tiles, so the input is read once; larger weights run
# channel-tile-major so each thread's weights stay in L2 while the input streams past. A rule,
# not a law: with 2 threads on the 2 MiB-L2 Sapphire Rapids VM, ResNet-18's 64->128 s2 and
# 128->256 s2 layers ran 10-12 % faster position-major and 64->64 @56 10 % faster
# channel-major (all gates on, batch 8), so ``auto`` also measures the other order (``swap``).
POS_MAJOR_MAX_BYTES = 256 * 1024


def _weight_bytes(geo: ConvGeometry, spanning: bool) -> int:
    """Bytes of packed fp32 weights the kernel streams (two copies for SPAN's masked pair)."""
    return 4 * geo.c_out * geo.c_in * geo.kh * geo.kw * (2 if spanning else 1)


def _prefix_width(geo: ConvGeometry, granularity: int) -> int | None:
    """VW of the prefix build: the widest vector of this target that tiles C_out in whole gate
    groups. Its lanes may belong to different output chunks: each takes its own chunk's Yp."""
    return next((vw for vw, _ in _ISA_LAYOUTS[isa()] if vw % granularity == 0 and geo.c_out % vw == 0),
                None)


def _channel_unroll(nbt: int, prefix: bool, block: bool) -> int:
    """CU, the unroll of the kernel's channel loop (csrc/gated_conv.c): 4 for AVX2's 6 x 2-vector
    per-element tile, whose loop counter and pointer steps otherwise share the two ports of the
    256-bit FMAs on Intel cores. ``python benchmarks/bench_kernel_unroll.py --isa avx2`` (SPR, 2
    threads, all gates on, best loop order, against oneDNN capped to AVX2): ResNet-18's seven
    gated shapes 0.87-1.00 -> 0.95-1.07, ResNet-20's 64->64 @8 0.96 -> 1.00. 1 elsewhere, where
    unrolling measured as a loss: AVX-512's 28-accumulator tiles spill (128->128 @28: 1.04 ->
    0.65), AVX2's one-vector 12-position tile on 16->32 s2 (0.97 -> 0.79), AVX2 prefix builds
    (16->16: 1.01 -> 0.54), and block-gate builds (``block``): with them unrolled the shipped
    block-gated ResNet-20 ran 1.44-1.45x instead of 1.51-1.56x faster than dense under AVX2
    (eval --time, 3 runs each)."""
    return 4 if isa() == "avx2" and nbt == 2 and not prefix and not block else 1


@_per_target
def _defines(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int,
             area: tuple[int, int] | None = None, prefix: bool = False, swap: bool = False) -> dict[str, int]:
    """The kernel's -D constants (``area``: the output area tiles cover, a gate block's in block
    builds (:func:`_block_defines`), the whole map otherwise; ``prefix``: the PREFIX build, see
    csrc/gated_conv.c; ``swap``: the other loop order than the weight-size rule picks, see
    POS_MAJOR_MAX_BYTES). EXACT_BASE (shuffled-input base pass) only on AVX-512: 16 channels
    @32x32, batch 64, 2 threads, interleaved medians: 3.9 vs 5.5 ms at density 1 and 2.8 vs 4.1
    ms at density 0.2; under AVX2 it was slower (10.8 vs 8.2 ms)."""
    if prefix:   # plain weights, vectors across chunks
        vw, spanning = _prefix_width(geo, granularity), False
        nbt = _blocks_per_tile(geo, partitions, grouped, vw, True)
    else:
        vw, spanning = layout(geo, partitions, grouped, granularity)
        nbt = _blocks_per_tile(geo, partitions, grouped, vw, spanning)
    rh, rw = tile_shape(*(area or (geo.ho, geo.wo)), nbt)
    return dict(C_IN=geo.c_in, C_OUT=geo.c_out, KH=geo.kh, KW=geo.kw, SH=geo.stride[0],
                SW=geo.stride[1], PH=geo.padding[0], PW=geo.padding[1], DH=geo.dilation[0],
                DW=geo.dilation[1], H=geo.h, W=geo.w,
                HO=geo.ho, WO=geo.wo, P=partitions, GROUPED=int(grouped and partitions > 1), VW=vw,
                NBT=nbt, G=granularity, R=rh * rw, RH=rh, SPAN=int(spanning),
                CU=_channel_unroll(nbt, prefix, block=area is not None),
                POS_MAJOR=int((_weight_bytes(geo, spanning) <= POS_MAJOR_MAX_BYTES) != swap),
                EXACT_BASE=int(spanning and geo.c_in == geo.c_out and isa() == "avx512"),
                PREFIX=int(prefix))


def _build_plan(defines: tuple[tuple[str, int], ...], target: str):
    """(compiler, flags, cached .so path) for one geometry's kernel on ISA ``target``."""
    cc = compiler()
    if cc is None:
        raise NativeBuildError("no C compiler found (set $CC or install gcc)")
    flags = ["-O3", *_ISA_FLAGS[target], "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]
    flags += [f"-D{k}={v}" for k, v in defines]
    # -march=native code is only valid on this CPU: its flags are part of the cache key, so a
    # cache directory shared between machines never hands one an instruction it lacks
    key = hashlib.sha256((SOURCE.read_text() + " ".join([cc, *flags]) + _cpu_flags()).encode()).hexdigest()[:24]
    return cc, flags, _cache_dir() / f"gated_conv_{key}.so"


@functools.lru_cache(maxsize=256)
def _load(defines: tuple[tuple[str, int], ...], target: str, retry: bool = True):
    """Compile (or reuse from the disk cache) one geometry's kernel for ISA ``target``."""
    cc, flags, out = _build_plan(defines, target)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        proc = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if proc.returncode:
            os.unlink(tmp)
            raise NativeBuildError(f"{cc} failed on {SOURCE} with {' '.join(flags)}:\n{proc.stderr}")
        os.replace(tmp, out)
    try:
        lib = ctypes.CDLL(str(out))
    except OSError as e:  # a damaged cache entry (truncated copy, disk full): rebuild it once
        out.unlink(missing_ok=True)
        if not retry:
            raise NativeBuildError(f"{out}: built but cannot be loaded: {e}") from None
        return _load.__wrapped__(defines, target, False)
    if "BH" not in dict(defines):     # per-element build: gated_conv only
        fn = lib.gated_conv
        fn.restype = ctypes.c_longlong
        fn.argtypes = [ctypes.c_void_p] * 9 + [ctypes.c_int, ctypes.c_int]
        return fn, None, None, None
    blocks = lib.block_rest
    blocks.restype = None
    blocks.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_longlong, ctypes.c_int]
    decide = lib.block_decide
    decide.restype = ctypes.c_longlong
    decide.argtypes = [ctypes.c_void_p] * 6 + [ctypes.c_int, ctypes.c_int]
    block_conv = lib.block_conv
    block_conv.restype = ctypes.c_longlong
    block_conv.argtypes = [ctypes.c_void_p] * 8 + [ctypes.c_int, ctypes.c_int]
    return None, blocks, decide, block_conv


def _pack(w: torch.Tensor, tw: int) -> torch.Tensor:
    c_out, c_in, kh, kw = w.shape
    return w.reshape(c_out // tw, tw, c_in, kh, kw).permute(0, 3, 4, 2, 1).contiguous()


def _packed_weights(w: torch.Tensor, tw: int, span_mask: tuple[int, bool] | None, exact: bool = False):
    """(C_out/TW, kh, kw, C_in, TW) contiguous, one tile's weights in stream order: W itself,
    or with ``span_mask=(partitions, grouped)`` the pair (W*M, W*(1-M)) for SPAN tiles; with
    ``exact`` the first is the exact-base layout (C_out/TW, kh, kw, C_in/p, TW) holding
    W[o, chunk_start(o) + q] (see EXACT_BASE in csrc/gated_conv.c).
    Cached while ``w`` is alive and unmodified (:func:`kernels.workspace.derived`)."""
    def build():
        wf = w.detach().float()
        if span_mask is None:
            return _pack(wf, tw), None
        m = base_mask(wf.shape[0], wf.shape[1], *span_mask, dtype=wf.dtype)
        rest = _pack(wf * (1 - m), tw)
        if not exact:
            return _pack(wf * m, tw), rest
        p = span_mask[0]
        c_out, c_in = wf.shape[:2]
        co, ci = c_out // p, c_in // p
        o = torch.arange(c_out)
        cols = (o // co * ci)[:, None] + torch.arange(ci)[None, :]          # (C_out, CI)
        diag = wf[o[:, None], cols]                                        # (C_out, CI, kh, kw)
        return _pack(diag, tw), rest
    return derived(w, "cpu_fused.packed", (tw, span_mask, exact), build)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """An fp32 activation as the kernels read it: channels-last memory, so (N, H, W, C) rows."""
    return x.float().contiguous(memory_format=torch.channels_last)


def _per_channel(v: torch.Tensor | None) -> torch.Tensor | None:
    """A per-channel vector (bias, tau, inv_sigma) as the kernels read it: contiguous fp32."""
    return None if v is None else v.detach().float().contiguous()


def _ptr(v: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if v is None else ctypes.c_void_p(v.data_ptr())


def _kernel_weights(weight: torch.Tensor, d: dict[str, int], partitions: int, grouped: bool):
    """The packed weights a kernel built with defines ``d`` streams (see _packed_weights)."""
    return _packed_weights(weight, d["VW"] * d["NBT"], (partitions, grouped) if d["SPAN"] else None,
                           bool(d["EXACT_BASE"]))


@_per_target
def _build_key(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int,
               prefix: bool, swap: bool = False) -> tuple[tuple, dict[str, int]]:
    """(the :func:`_load` key, the packing defines) of a per-element build, kept per layer:
    re-deriving them cost ~5 us per call, ~15 us right after a large kernel."""
    d = _defines(geo, partitions, grouped, granularity, prefix=prefix, swap=swap)
    return tuple(sorted(d.items())), {k: d[k] for k in ("VW", "NBT", "SPAN", "EXACT_BASE")}


def prefix_unsupported_reason(geo: ConvGeometry, partitions: int, grouped: bool,
                              granularity: int) -> str | None:
    """Why the ``prefix`` build (PREFIX in csrc/gated_conv.c) cannot run this layer, or None:
    it is offered where the fused kernel's vectors span chunks with masked weights (SPAN:
    4-channel chunks, whose base and remaining sums cost more than the dense conv's FMAs) or
    its output tiles are narrower (grouped chunks of 8 channels on AVX-512: 8-lane vectors;
    16-channel chunks: one vector per tile, where the prefix tile can hold two)."""
    reason = unsupported_reason(geo, partitions, grouped, granularity)
    if reason is None:
        fused, prefix = (_defines(geo, partitions, grouped, granularity, prefix=p) for p in (False, True))
        if not fused["SPAN"] and fused["VW"] * fused["NBT"] >= prefix["VW"] * prefix["NBT"]:
            reason = "the fused kernel's exact sums already run tiles as wide"
    return reason


def run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, tau: torch.Tensor,
        inv_sigma: torch.Tensor, geo: ConvGeometry, *, partitions: int, grouped: bool,
        granularity: int, return_gate: bool, full: torch.Tensor | None = None,
        prefix: bool = False, swap: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Run the fused kernel on the input ``(N, C_in, H, W)`` (read in channels-last memory,
    padding applied in the kernel, so no padded copy is made). With ``full`` (the whole conv,
    channels-last fp32, e.g. from oneDNN) the kernel computes only Yp and the gate and selects
    ``full`` where the gate is on: the dense-MAC path for gates that leave nothing to skip.
    With ``prefix`` (grouped layers where it is offered, :func:`prefix_unsupported_reason`) it
    computes the whole conv itself at dense MACs, taking Yp from its partial sums on the way,
    and selects. ``swap`` runs the other loop order (position- or channel-tile-major) than the
    weight-size rule picks: which is faster depends on the layer, the ISA and the CPU's caches
    (measured: 0.88-1.02x of oneDNN either way round on ResNet-18's layers), so ``auto``
    measures both.

    Returns the channels-last fp32 output, the bool gate (or None) and the number of tiles
    whose conditional pass ran (a work counter for benchmarks and tests).
    """
    call = bind(weight, bias, tau, inv_sigma, geo, partitions=partitions, grouped=grouped,
                granularity=granularity, prefix=prefix, swap=swap)
    return call(_nhwc(x), return_gate, None if full is None else _nhwc(full))


def bind(weight: torch.Tensor, bias: torch.Tensor | None, tau: torch.Tensor, inv_sigma: torch.Tensor,
         geo: ConvGeometry, *, partitions: int, grouped: bool, granularity: int, prefix: bool = False,
         swap: bool = False):
    """:func:`run` with the layer's build, packed weights and per-channel vectors resolved once:
    ``call(x, return_gate, full)`` on a channels-last fp32 input of ``geo``'s shape (and ``full``
    likewise, or None) returns what :func:`run` does. Valid while the tensors given here are
    unchanged (the caller checks; the call keeps them alive)."""
    build, defines = _build_key(geo, partitions, grouped, granularity, prefix, swap)
    fn = _load(build, isa())[0]
    w, w_rest = _kernel_weights(weight, defines, partitions, grouped)   # prefix: the plain packing
    fixed = [w, w_rest, _per_channel(bias), _per_channel(tau), _per_channel(inv_sigma)]
    ptrs = [_ptr(t) for t in fixed]
    shape, n = (geo.n, geo.c_out, geo.ho, geo.wo), geo.n

    def call(x: torch.Tensor, return_gate: bool = False, full: torch.Tensor | None = None):
        out = torch.empty(shape, dtype=torch.float32, memory_format=torch.channels_last)
        gate = torch.empty(shape, dtype=torch.uint8, memory_format=torch.channels_last) if return_gate else None
        ran = fn(_ptr(x), *ptrs, _ptr(out), _ptr(gate), _ptr(full), n, torch.get_num_threads())
        return out, None if gate is None else gate.bool(), int(ran)
    call.keep = fixed   # the packed weights and vectors live as long as the call
    return call


# block_decide sums one row of blocks on each thread's stack (WB x C_out floats); wider rows
# (thousands of blocks of thousands of channels) are left to the torch-op paths.
BLOCK_ROW_MAX_BYTES = 256 * 1024


def _block_row_bytes(geo: ConvGeometry, gate_tile: tuple[int, int]) -> int:
    return 4 * -(-geo.wo // gate_tile[1]) * geo.c_out


@_per_target
def _block_defines(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int,
                   gate_tile: tuple[int, int]) -> dict[str, int] | None:
    """-D constants of the block-gate kernel: the per-element layout, with channel tiles that
    are whole gate groups (G a multiple of the tile) or hold whole groups (G dividing one
    vector; the tile's remaining sum then runs once for all its groups, added under a lane
    mask); None when G fits neither."""
    if partitions == 1 or layout(geo, partitions, grouped, 1) is None:
        return None
    if _block_row_bytes(geo, gate_tile) > BLOCK_ROW_MAX_BYTES:
        return None
    area = _block_area(geo, gate_tile)
    if _window_reason(geo, area, block=True) is not None:
        return None
    d = _defines(geo, partitions, grouped, 1, area)
    if granularity % (d["VW"] * d["NBT"]):
        if granularity % d["VW"] and d["VW"] % granularity:
            return None
        rh, rw = tile_shape(*area, 1)
        d.update(NBT=1, R=rh * rw, RH=rh)
    d.update(BH=gate_tile[0], BW=gate_tile[1], BG=granularity)
    return d


def blocks_unsupported_reason(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int,
                              gate_tile: tuple[int, int]) -> str | None:
    """Why :func:`run_blocks` cannot run this block-gated layer (None when it can)."""
    if gate_tile == (1, 1):
        return "per-element gate tile 1x1: the per-tile fused kernel decides those"
    if not available():
        return "no C compiler found (set $CC or install gcc)"
    if _block_defines(geo, partitions, grouped, granularity, gate_tile) is None:
        lay = layout(geo, partitions, grouped, 1)
        vw = None if lay is None else lay[0]   # output channels per SIMD vector
        reason = _window_reason(geo, _block_area(geo, gate_tile), block=True)
        if reason is not None:
            return reason
        if partitions > 1 and vw and _block_row_bytes(geo, gate_tile) > BLOCK_ROW_MAX_BYTES:
            return (f"a row of {-(-geo.wo // gate_tile[1])} blocks x {geo.c_out} channels exceeds "
                    f"the decision pass's {BLOCK_ROW_MAX_BYTES // 1024} KiB row buffer")
        return (f"p={partitions}: nothing to skip" if partitions == 1 else
                f"gate groups of {granularity} channels neither fill nor divide {vw}-channel vectors"
                if vw else "the layer is outside the fused kernel's shapes")
    return None


def run_blocks(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               tau: torch.Tensor, inv_sigma: torch.Tensor, geo: ConvGeometry, *, partitions: int,
               grouped: bool, granularity: int, gate_tile: tuple[int, int], return_gate: bool,
               yp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Block-gated conv: Yp for every position, the block means, then the compiled remaining
    sum of exactly the blocks whose mean score is > 0.

    Without ``yp`` all three run in one compiled pass per block (``block_conv``). With ``yp``
    (a channels-last fp32 base pass the caller computed, e.g. with oneDNN; it is updated in
    place) a decision pass over it lists the blocks that are on and a second pass adds their
    remaining sums.
    The block score is ``mean over the block of (Yp - tau) * inv_sigma`` (reference.py's
    ``block_scores``), taken as ``(block mean of Yp - tau) * inv_sigma`` averaged over the G
    channels: the same mean in another summation order, so decisions can differ from the
    reference only within fp32 rounding of the threshold. Returns (out, gate, blocks on).
    """
    call = bind_blocks(weight, bias, tau, inv_sigma, geo, partitions=partitions, grouped=grouped,
                       granularity=granularity, gate_tile=gate_tile)
    return call(_nhwc(x), return_gate, yp)


def bind_blocks(weight: torch.Tensor, bias: torch.Tensor | None, tau: torch.Tensor,
                inv_sigma: torch.Tensor, geo: ConvGeometry, *, partitions: int, grouped: bool,
                granularity: int, gate_tile: tuple[int, int]):
    """:func:`run_blocks` with the build, packed weights and vectors resolved once:
    ``call(x, return_gate, yp)`` on a channels-last fp32 input returns what it does (see
    :func:`bind`)."""
    d = _block_defines(geo, partitions, grouped, granularity, gate_tile)
    if d is None:
        raise KernelArgError(blocks_unsupported_reason(geo, partitions, grouped, granularity, gate_tile))
    _, rest, decide, fused = _load(tuple(sorted(d.items())), isa())
    w, w_rest = _kernel_weights(weight, d, partitions, grouped)
    fixed = [w, w_rest, _per_channel(bias), _per_channel(tau), _per_channel(inv_sigma)]
    pw, pwr, pb, pt, ps = (_ptr(v) for v in fixed)
    hb, wb = -(-geo.ho // gate_tile[0]), -(-geo.wo // gate_tile[1])
    slots = geo.n * hb * wb * (geo.c_out // (d["VW"] * d["NBT"]))

    def call(xr: torch.Tensor, return_gate: bool = False, yp: torch.Tensor | None = None):
        threads = torch.get_num_threads()
        on = torch.empty((geo.n, hb, wb, geo.c_out // granularity), dtype=torch.uint8)
        if yp is None:      # one pass per block: Yp, decisions and remaining sums (block_conv)
            out = torch.empty((geo.n, geo.c_out, geo.ho, geo.wo), dtype=torch.float32,
                              memory_format=torch.channels_last)
            n_on = fused(_ptr(xr), pw, pwr, pb, pt, ps, _ptr(out), _ptr(on), geo.n, threads)
        else:
            out = yp
            bits = torch.empty(slots, dtype=torch.int32)
            items = torch.empty((slots, 5), dtype=torch.int32)
            k = decide(_ptr(out), pt, ps, _ptr(on), _ptr(bits), _ptr(items), geo.n, threads)
            if k:
                rest(_ptr(xr), pw, pwr, _ptr(out), _ptr(items), k, threads)
            n_on = int(on.sum())
        gate = (expand_blocks(on.bool().permute(0, 3, 1, 2), granularity, gate_tile, geo.ho, geo.wo)
                if return_gate else None)
        return out, gate, n_on
    call.keep = fixed   # the packed weights and vectors live as long as the call
    return call


def tiles(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int) -> int:
    """Number of (position tile, channel tile) pairs of a layer: the denominator of ``ran``."""
    d = _defines(geo, partitions, grouped, granularity)
    rh, rw = d["RH"], d["R"] // d["RH"]
    return geo.n * -(-geo.ho // rh) * -(-geo.wo // rw) * (geo.c_out // (d["VW"] * d["NBT"]))
