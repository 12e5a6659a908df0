"""Synthesize the generated Verilog with Yosys ``synth_xilinx -family xcup`` and count resources.

The hierarchy is kept (no ``-flatten``), so ``stat -json`` reports each module once and the
top lists its instances: that splits the result into the PE array (one PE module times R*C),
the control (``cg_top``'s own cells: fold sequencer, skew feeders, slot tags, output adders,
gate compare and compaction) and the buffers (``cg_buf_*`` register files), which is what
:func:`accel_sim.cost.fpga_resources` must be compared with part by part.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from accel_sim.rtl import missing, tool_version
from accel_sim.rtl.verilog import Design, emit

FAMILY = "xcup"  # UltraScale+ in Yosys 0.23
LUT_CELLS = {f"LUT{i}" for i in range(1, 7)}
LUTRAM_CELLS = {"RAM16X1D", "RAM32X1D", "RAM64X1D", "RAM128X1D", "RAM256X1D", "RAM32M", "RAM64M", "RAM32M16",
                "RAM64M8", "RAM32X1S", "RAM64X1S", "RAM128X1S", "RAM256X1S", "RAM512X1S", "SRL16E", "SRLC32E"}
# LUTs per LUT-RAM primitive (RAM64M8 uses the 8 LUTs of a SLICEM, RAM64M 4, ...)
LUTRAM_LUTS = {"RAM32M16": 8, "RAM64M8": 8, "RAM32M": 4, "RAM64M": 4, "RAM128X1D": 4, "RAM256X1D": 8,
               "RAM128X1S": 2, "RAM256X1S": 4, "RAM512X1S": 8, "RAM32X1D": 2, "RAM64X1D": 2, "RAM16X1D": 2}
FF_CELLS = {"FDRE", "FDSE", "FDCE", "FDPE", "LDCE", "LDPE"}
DSP_CELLS = {"DSP48E2", "DSP48E1"}
BRAM18_CELLS = {"RAMB18E2": 1, "RAMB18E1": 1, "RAMB36E2": 2, "RAMB36E1": 2}
IO_CELLS = {"IBUF", "OBUF", "BUFG", "IOBUF", "OBUFT"}


def available() -> str | None:
    """None when yosys is on PATH, else the reason to skip."""
    return missing("yosys", "yosys")


def version() -> str:
    return tool_version("yosys", "-V")


@dataclass
class Resources:
    lut: int = 0        # LUT1..LUT6 as logic
    lutram: int = 0     # LUTs used as distributed RAM / shift registers
    ff: int = 0
    dsp: int = 0        # DSP48E2
    bram18: int = 0     # RAMB18 equivalents (a RAMB36 counts 2)
    cells: dict[str, int] = field(default_factory=dict)

    @property
    def lut_total(self) -> int:
        return self.lut + self.lutram

    def scaled(self, k: int) -> "Resources":
        return Resources(self.lut * k, self.lutram * k, self.ff * k, self.dsp * k, self.bram18 * k,
                         {c: n * k for c, n in self.cells.items()})

    def __add__(self, other: "Resources") -> "Resources":
        cells = dict(self.cells)
        for c, n in other.cells.items():
            cells[c] = cells.get(c, 0) + n
        return Resources(self.lut + other.lut, self.lutram + other.lutram, self.ff + other.ff,
                         self.dsp + other.dsp, self.bram18 + other.bram18, cells)


def count(cells: dict[str, int]) -> Resources:
    """Resources of one module's primitive cells (submodule instances and IO buffers ignored)."""
    r = Resources(cells={c: n for c, n in cells.items() if not c.startswith(("cg_", "$paramod", "\\"))
                         and c not in IO_CELLS})
    for c, n in r.cells.items():
        if c in LUT_CELLS:
            r.lut += n
        elif c in LUTRAM_CELLS:
            r.lutram += n * LUTRAM_LUTS.get(c, 1)
        elif c in FF_CELLS:
            r.ff += n
        elif c in DSP_CELLS:
            r.dsp += n
        elif c in BRAM18_CELLS:
            r.bram18 += n * BRAM18_CELLS[c]
    return r


@dataclass
class SynthReport:
    design: Design
    pe: Resources        # one PE
    pe_count: int
    control: Resources   # cg_top's own cells
    buffers: Resources   # all cg_buf_* modules
    log_tail: str = ""

    @property
    def array(self) -> Resources:
        return self.pe.scaled(self.pe_count)

    @property
    def core(self) -> Resources:
        """PE array + control (no buffers): what the array model's LUT/FF/DSP describe."""
        return self.array + self.control

    @property
    def total(self) -> Resources:
        return self.core + self.buffers


def parse_stat(text: str, design: Design) -> SynthReport:
    """Split ``stat -json`` output into PE / control / buffer resources."""
    modules = {name.lstrip("\\"): v["num_cells_by_type"] for name, v in json.loads(text)["modules"].items()}
    pe_name = "cg_pe_os" if design.dataflow == "os" else "cg_pe_ws"
    if "cg_top" not in modules or pe_name not in modules:
        raise ValueError(f"yosys stat lacks cg_top or {pe_name}: modules {sorted(modules)}")
    top = modules["cg_top"]
    buffers = Resources()
    for name, cells in modules.items():
        if name.startswith("cg_buf_"):
            buffers = buffers + count(cells).scaled(int(top.get(name, 1)))
    return SynthReport(design, count(modules[pe_name]), int(top.get(pe_name, 0)), count(top), buffers)


def synth(design: Design, workdir: str | Path | None = None, timeout: float = 1800) -> SynthReport:
    """Run ``synth_xilinx -family xcup`` on ``design`` and parse the per-module cell counts."""
    reason = available()
    if reason:
        raise RuntimeError(f"cannot synthesize: {reason}")
    with tempfile.TemporaryDirectory(prefix="cg_synth_") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "cg_top.v").write_text(emit(design))
        script = f"read_verilog cg_top.v; synth_xilinx -top cg_top -family {FAMILY}; tee -q -o stat.json stat -json"
        proc = subprocess.run(["yosys", "-q", "-p", script], cwd=work, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode or not (work / "stat.json").exists():
            raise RuntimeError(f"yosys synth_xilinx of {design.name} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        report = parse_stat((work / "stat.json").read_text(), design)
        report.log_tail = (proc.stdout + proc.stderr)[-2000:]
        return report
