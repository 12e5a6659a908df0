"""RTL cross-check of the cycle-stepped PE array (issue #16, item 4).

:mod:`accel_sim.rtl.verilog` emits synthesizable Verilog for an R x C int8 systolic array
(PE grid, fold sequencer with skewed operand feeders, output unit, and for gated layers the
gate compare / compaction unit); :mod:`accel_sim.rtl.verilator` builds and runs it from Python;
:mod:`accel_sim.rtl.yosys` synthesizes it for Xilinx UltraScale+ and counts resources.
"""
import shutil
import subprocess

from accel_sim.rtl.verilog import Design, emit

__all__ = ["Design", "emit", "missing", "tool_version"]


def missing(tool: str, package: str) -> str | None:
    """None when ``tool`` is on PATH, else the one-line reason to skip (how to install it)."""
    return None if shutil.which(tool) else f"{tool} not found on PATH (apt-get install {package})"


def tool_version(*cmd: str) -> str:
    """First line of a tool's version output (for result headers)."""
    out = subprocess.run(list(cmd), capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[0]
