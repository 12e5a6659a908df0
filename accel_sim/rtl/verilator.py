"""Build the generated Verilog with Verilator and run layers on it from Python.

A fixed C++ harness drives ``cg_top``: it reads ``in.txt`` (run-time configuration, buffer
loads as ``sel addr value`` triples, the psum addresses to read back), loads the buffers
through the host port, pulses ``start``, clocks until ``done`` and writes ``out.txt``
(hardware cycle counter, then psum and gate bit per address).  Python lays out the addresses,
so the harness knows nothing about a design's sizes and one build runs any layer that fits.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accel_sim.rtl import missing, tool_version
from accel_sim.rtl.verilog import Design, emit

HARNESS = r"""
#include "Vcg_top.h"
#include "verilated.h"
#include <cstdio>
#include <cstdlib>

static void tick(Vcg_top* t) { t->clk = 0; t->eval(); t->clk = 1; t->eval(); }

int main(int argc, char** argv) {
  if (argc < 3) { std::fprintf(stderr, "usage: %s in.txt out.txt\n", argv[0]); return 2; }
  FILE* f = std::fopen(argv[1], "r");
  if (!f) { std::perror(argv[1]); return 2; }
  long cfg[11];
  for (int i = 0; i < 11; i++) if (std::fscanf(f, "%ld", &cfg[i]) != 1) return 3;
  Vcg_top* t = new Vcg_top;
  t->clk = 0; t->start = 0; t->ld_we = 0; t->rst = 1;
  tick(t); tick(t); t->rst = 0;
  t->cfg_m = cfg[0]; t->cfg_n = cfg[1]; t->cfg_k = cfg[2]; t->cfg_p = cfg[3]; t->cfg_kb = cfg[4];
  t->cfg_npg = cfg[5]; t->cfg_grouped = cfg[6]; t->cfg_gated = cfg[7]; t->cfg_colmode = cfg[8];
  t->cfg_glat = cfg[9];
  long n = 0;
  if (std::fscanf(f, "%ld", &n) != 1) return 3;
  for (long i = 0; i < n; i++) {
    long sel, addr, val;
    if (std::fscanf(f, "%ld %ld %ld", &sel, &addr, &val) != 3) return 3;
    t->ld_we = 1; t->ld_sel = sel; t->ld_addr = addr; t->ld_data = (unsigned)(int)val;
    tick(t);
  }
  t->ld_we = 0;
  t->start = 1; tick(t); t->start = 0;
  long clocks = 0;
  while (!t->done && clocks < cfg[10]) { tick(t); clocks++; }
  FILE* o = std::fopen(argv[2], "w");
  std::fprintf(o, "%u %d\n", (unsigned)t->cycles, (int)t->done);
  if (std::fscanf(f, "%ld", &n) != 1) return 3;
  for (long i = 0; i < n; i++) {
    long addr;
    if (std::fscanf(f, "%ld", &addr) != 1) return 3;
    t->dump_addr = addr; t->eval();
    std::fprintf(o, "%d %d\n", (int)t->dump_p, (int)t->dump_g);
  }
  std::fclose(o); std::fclose(f);
  t->final(); delete t;
  return 0;
}
"""

VERILATOR_FLAGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-Wno-UNOPTFLAT", "--x-assign", "fast",
                   "--x-initial", "fast", "-O3"]
_SESSION_DIR: Path | None = None


def available() -> str | None:
    """None when Verilator and a C++ toolchain are on PATH, else the reason to skip."""
    reason = missing("verilator", "verilator") or missing("make", "make")
    if reason is None and shutil.which("g++") is None and shutil.which("c++") is None:
        return "no C++ compiler (g++) on PATH, which Verilator needs"
    return reason


def version() -> str:
    return tool_version("verilator", "--version")


@dataclass
class RtlRun:
    cycles: int                  # hardware cycle counter: first operand injected to last output written
    output: np.ndarray           # [M, N] int64 psum buffer after the run
    gates: np.ndarray | None     # [M, N] bool gate decisions of the hardware (gated runs)


class Model:
    """A built Verilator model of one :class:`Design`."""

    def __init__(self, design: Design, binary: Path):
        self.design, self.binary = design, binary

    def _check(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.design
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"GEMM shapes do not chain: {a.shape} @ {b.shape}")
        (m, k), n = a.shape, b.shape[1]
        if not (1 <= m <= d.m_max and 1 <= n <= d.n_max and 1 <= k <= d.k_max):
            raise ValueError(f"layer M={m} N={n} K={k} exceeds the build's buffers "
                             f"({d.m_max}, {d.n_max}, {d.k_max})")
        for x in (a, b):
            if not np.array_equal(x, np.round(x)) or x.min() < -128 or x.max() > 127:
                raise ValueError("operands must be int8 integers")
        return a.astype(np.int64), b.astype(np.int64)

    def run_dense(self, a: np.ndarray, b: np.ndarray) -> RtlRun:
        """out = a @ b on the array (the base pass with one partition, no gate)."""
        a, b = self._check(a, b)
        k, n = a.shape[1], b.shape[1]
        return self._run(a, b, None, dict(p=1, kb=k, npg=n, grouped=0, gated=0, colmode=0, glat=0))

    def run_gated(self, a: np.ndarray, b: np.ndarray, thresholds: np.ndarray, partitions: int,
                  grouped: bool = True, cond_mode: str = "column", gate_latency: int = 0) -> RtlRun:
        """A CGNet layer: base pass (packed), gate ``base psum > thresholds[n]`` decided by the
        hardware, ``gate_latency`` idle cycles, conditional pass (``column`` or ``packed``)."""
        d = self.design
        if not d.gated:
            raise ValueError(f"design {d.name} has no gate unit")
        a, b = self._check(a, b)
        k, n = a.shape[1], b.shape[1]
        p = int(partitions)
        if not 2 <= p <= d.p_max or k % p or n % p:
            raise ValueError(f"partitions={p}: need 2 <= p <= {d.p_max} dividing K={k} and N={n}")
        if cond_mode not in ("column", "packed"):
            raise ValueError(f"cond_mode: got {cond_mode!r}; the RTL has column and packed")
        if not 0 <= gate_latency <= 255:
            raise ValueError("gate_latency must fit 8 bits")
        thr = np.asarray(thresholds, dtype=np.int64).reshape(n)
        cfg = dict(p=p, kb=k // p, npg=n // p, grouped=int(bool(grouped)), gated=1,
                   colmode=int(cond_mode == "column"), glat=int(gate_latency))
        return self._run(a, b, thr, cfg)

    def _run(self, a, b, thr, cfg) -> RtlRun:
        d = self.design
        (m, k), n = a.shape, b.shape[1]
        loads = [(0, d.a_addr(i, j), a[i, j]) for i in range(m) for j in range(k)]
        loads += [(1, d.b_addr(i, j), b[i, j]) for i in range(k) for j in range(n)]
        loads += [(2, d.p_addr(i, j), 0) for i in range(m) for j in range(n)]  # zeroed psums
        if thr is not None:
            loads += [(3, j, thr[j]) for j in range(n)]
        dumps = [d.p_addr(i, j) for i in range(m) for j in range(n)]
        limit = 100_000
        lines = [" ".join(str(x) for x in (m, n, k, cfg["p"], cfg["kb"], cfg["npg"], cfg["grouped"],
                                           cfg["gated"], cfg["colmode"], cfg["glat"], limit)),
                 str(len(loads))] + [f"{s} {ad} {int(val)}" for s, ad, val in loads]
        lines += [str(len(dumps))] + [str(x) for x in dumps]
        with tempfile.TemporaryDirectory(prefix="cg_run_") as tmp:
            src, dst = Path(tmp, "in.txt"), Path(tmp, "out.txt")
            src.write_text("\n".join(lines) + "\n")
            proc = subprocess.run([str(self.binary), str(src), str(dst)], capture_output=True, text=True,
                                  timeout=120)
            if proc.returncode:
                raise RuntimeError(f"RTL model {d.name} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
            rows = [list(map(int, line.split())) for line in dst.read_text().split("\n") if line.strip()]
        cycles, done = rows[0]
        if not done:
            raise RuntimeError(f"RTL model {d.name} did not finish within {limit} cycles")
        vals = np.array(rows[1:], dtype=np.int64).reshape(m, n, 2)
        return RtlRun(cycles, vals[..., 0], vals[..., 1].astype(bool) if thr is not None else None)


def _session_dir() -> Path:
    global _SESSION_DIR
    if _SESSION_DIR is None:
        _SESSION_DIR = Path(tempfile.mkdtemp(prefix="accel_sim_rtl_"))
    return _SESSION_DIR


def build(design: Design, cache_dir: str | os.PathLike | None = None, jobs: int = 2) -> Model:
    """Verilate and compile ``design`` (cached by source hash under ``cache_dir``, by default one
    temp folder per process)."""
    reason = available()
    if reason:
        raise RuntimeError(f"cannot build the RTL model: {reason}")
    text = emit(design)
    key = hashlib.sha256((text + HARNESS + " ".join(VERILATOR_FLAGS)).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else _session_dir()
    work = root / f"{design.name}_{key}"
    binary = work / "obj" / "Vcg_top"
    if binary.exists():
        return Model(design, binary)
    work.mkdir(parents=True, exist_ok=True)
    (work / "cg_top.v").write_text(text)
    (work / "harness.cpp").write_text(HARNESS)
    # the runs are a few hundred cycles: compile fast, not fast code
    cmd = ["verilator", "--cc", "--exe", "--build", "-j", str(jobs), "--top-module", "cg_top", "--Mdir", "obj",
           "-MAKEFLAGS", "OPT_FAST=-O0 OPT_SLOW=-O0 OPT_GLOBAL=-O0", *VERILATOR_FLAGS, "cg_top.v", "harness.cpp"]
    env = dict(os.environ, MAKEFLAGS=f"-j{jobs}")
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode or not binary.exists():
        raise RuntimeError(f"verilator build of {design.name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return Model(design, binary)
