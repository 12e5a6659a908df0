"""Measured choice of the CPU execution path per layer, cached on disk per CPU.

Which path is fastest (the fused C kernel, tile-gather, the oneDNN "compute everything"
split, the gathered GEMMs) depends on the layer's shape, the batch, the thread count, the
gate density and above all the CPU: a choice fitted on one machine was 7x slower than dense
on another. So ``auto`` times every path that can run the layer once, at its first call (on
that call's real input and gates), and keeps the fastest; ``dense`` (dense MACs through
oneDNN) is always among them, which bounds what ``auto`` can lose to a dense conv.

Choices are cached in memory and in ``tune-<cpu>.json`` beside the kernel cache
(``$DYNGATE_KERNEL_CACHE``), keyed by geometry, batch bucket (next power of two), partition,
gate granularity and tile, thread count and ISA target; the file is for one CPU (model name,
ISA flags, torch version): another CPU's file is never read. A damaged file is ignored
(with one warning) and rewritten; concurrent writers merge under a lock, each write is
atomic. ``DYNGATE_TUNE=0`` turns measuring off: the torch pipeline's cost model then
chooses per call (see :mod:`kernels.cpu`).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import statistics
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from fsio import atomic_write
from kernels import cpu_fused
from kernels.geometry import ConvGeometry

# File format and measurement generation: bumped when a path is added or a kernel's speed
# changes (2: flat-tile fused kernel and the compiled block paths; 3: the stacked path; 4: the
# fused kernel's loads, addresses, block windows and tile shapes, 1.2-3.7x faster per layer,
# and interleaved measuring; 5: the prefix path; 6: both loop orders of fused and prefix; 7: the
# AVX2 two-vector tiles' unrolled channel loop), so older files, whose choices were measured
# without them, are re-measured instead of trusted.
VERSION = 7
PATHS = ("fused", "fused_swap", "select", "prefix", "prefix_swap", "fused_blocks", "onednn_blocks", "tiles",
         "chunk_tiles", "block_tiles", "dense", "stacked", "union", "groups")
REPEATS = 3  # timed calls of time_call after one warm-up call; the median is kept
ROUNDS = 5   # interleaved timed rounds over the paths still in contention (see measure)
CLOSE = 1.5  # after the first round, a path slower than CLOSE x the fastest is out of contention

_MEMO: dict[str, dict] = {}
_LOCK = threading.Lock()
_WARNED: set[str] = set()
_GENERATION = [0]  # bumped whenever a choice is made or forgotten: memos of lookups expire with it


def enabled() -> bool:
    """False when ``$DYNGATE_TUNE`` is 0/off/false/no."""
    return os.environ.get("DYNGATE_TUNE", "1").strip().lower() not in ("0", "off", "false", "no")


def cpu_id() -> str:
    """What a tuning result is valid for: CPU model, its ISA flags and the torch build."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = sorted(f for f in cpu_fused._cpu_flags().split()
                   if f.startswith(("avx", "fma", "amx", "sse4")))
    return f"{model} | {' '.join(flags)} | torch {torch.__version__}"


def cache_file() -> Path:
    digest = hashlib.sha256(cpu_id().encode()).hexdigest()[:16]
    return cpu_fused._cache_dir() / f"tune-{digest}.json"


def key(geo: ConvGeometry, partitions: int, grouped: bool, granularity: int,
        tile: tuple[int, int], threads: int, gate_tile: tuple[int, int] = (1, 1)) -> str:
    bucket = 1 << max(geo.n - 1, 0).bit_length()
    gate = "" if gate_tile == (1, 1) else f" gate{gate_tile[0]}x{gate_tile[1]}"
    return (f"{geo.c_in}x{geo.h}x{geo.w}->{geo.c_out} k{geo.kh}x{geo.kw} s{geo.stride} "
            f"p{geo.padding} d{geo.dilation} n{bucket} parts{partitions} grouped{int(grouped)} "
            f"G{granularity} tile{tile[0]}x{tile[1]}{gate} threads{threads} isa-{cpu_fused.isa()}")


def _valid(entry: object) -> bool:
    if not isinstance(entry, dict) or entry.get("path") not in PATHS:
        return False
    ms = entry.get("ms")
    return (isinstance(ms, dict) and entry["path"] in ms and
            all(k in PATHS and isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                for k, v in ms.items()))


def _read(path: Path) -> dict[str, dict]:
    """Valid entries of the cache file; {} when missing, damaged or for another CPU."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as e:
        if str(path) not in _WARNED:
            _WARNED.add(str(path))
            warnings.warn(f"{path}: unreadable autotune cache ({type(e).__name__}); re-measuring",
                          RuntimeWarning, stacklevel=4)
        return {}
    if not isinstance(doc, dict) or doc.get("version") != VERSION or doc.get("cpu") != cpu_id():
        return {}
    entries = doc.get("entries")
    return {k: v for k, v in entries.items() if _valid(v)} if isinstance(entries, dict) else {}


def _write(path: Path, k: str, entry: dict) -> None:
    """Merge one entry into the file under an exclusive lock; atomic replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = _read(path)
        entries[k] = entry
        doc = dict(version=VERSION, cpu=cpu_id(), entries=entries)
        with atomic_write(path) as f:
            json.dump(doc, f, indent=1, sort_keys=True)


def lookup(k: str, runnable: tuple[str, ...]) -> dict | None:
    """The cached entry for ``k`` (memory, then disk) if its path can run here."""
    with _LOCK:
        hit = _MEMO.get(k)
    if hit is None:
        hit = _read(cache_file()).get(k)
        if hit is not None:
            with _LOCK:
                _MEMO[k] = hit
    return hit if hit is not None and hit["path"] in runnable else None


def time_call(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def choose(ms: dict[str, float]) -> str:
    """The fastest path; ties go to the earlier path in :data:`PATHS`."""
    return min(ms, key=lambda p: (ms[p], PATHS.index(p)))


def _once(fn: Callable[[], object]) -> float:
    """Milliseconds of one call of ``fn``."""
    t0 = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - t0)


def measure(candidates: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Milliseconds per candidate: every candidate is called once to warm up (a candidate that
    raises, e.g. a kernel that does not build, is left out; if all raise, the last error
    propagates), then timed once; those within ``CLOSE`` of the fastest are timed in
    ``ROUNDS - 1`` more interleaved rounds (alternating order) and keep their median, the
    others their one time.

    Interleaving matters: timing one path after another, each after its own warm-up, let the
    machine's drift decide. At the first forward of a model (cold allocator, threads waking)
    the earlier paths ran ~2x slow and a path 1.6x slower in isolation was chosen (16->16 @28,
    block gates, batch 256: onednn_blocks 3.99 ms "beat" fused_blocks 4.12 ms, which runs
    1.79 ms against 2.81 when each is timed warm)."""
    live: dict[str, Callable[[], object]] = {}
    error: Exception | None = None
    for name, fn in candidates.items():
        try:
            fn()
        except (cpu_fused.NativeBuildError, ValueError) as e:
            error = e
            continue
        live[name] = fn
    if not live:
        assert error is not None
        raise error
    times = {name: [_once(fn)] for name, fn in live.items()}
    best = min(t[0] for t in times.values())
    close = [name for name in live if times[name][0] <= CLOSE * best]
    for r in range(ROUNDS - 1):
        for name in (close[::-1] if r % 2 == 0 else close):
            times[name].append(_once(live[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def tune(k: str, candidates: dict[str, Callable[[], object]], *, dense_ms: float | None = None,
         density: float | None = None) -> dict:
    """Time every candidate (:func:`measure`), keep and persist the fastest."""
    ms = measure(candidates)
    entry = dict(path=choose(ms), ms=ms, dense_conv_ms=dense_ms, density=density,
                 measured=time.strftime("%Y-%m-%dT%H:%M:%S"))
    with _LOCK:
        _MEMO[k] = entry
        _GENERATION[0] += 1
    try:
        _write(cache_file(), k, entry)
    except OSError as e:  # a read-only cache folder costs re-measuring, never a wrong result
        if "write" not in _WARNED:
            _WARNED.add("write")
            warnings.warn(f"{cache_file()}: autotune cache not written ({e})", RuntimeWarning, stacklevel=3)
    return entry


def forget() -> None:
    """Drop the in-memory choices (the disk cache stays); benchmarks re-tune per pattern."""
    with _LOCK:
        _MEMO.clear()
        _GENERATION[0] += 1


def generation() -> int:
    """Changes whenever a choice is made or forgotten (:func:`tune`, :func:`forget`), so a caller
    may keep the answer of :func:`lookup` while it stays the same."""
    return _GENERATION[0]


def choices() -> dict[str, dict]:
    """Copy of the choices made or loaded in this process, by key."""
    with _LOCK:
        return dict(_MEMO)
