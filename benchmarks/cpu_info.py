"""The CPU model every benchmark header prints (torch-free, so accel_sim's benchmarks can use it)."""
from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """lscpu's "Model name", else what the platform reports ("" if neither knows)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()
