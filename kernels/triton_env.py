"""Whether Triton is installed and how it runs: what the dispatcher (``kernels.api``) and the
Triton kernels (``kernels.triton_conv``) both ask, kept below both so neither imports the other."""
from __future__ import annotations

import importlib.util
import os

INSTALL_GPU = 'pip install -e ".[gpu]"'


def interpreter_enabled() -> bool:
    """True when Triton kernels run in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    """Triton is an optional extra (``.[gpu]``): a CPU install does without its 300 MB."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):   # a broken install counts as absent
        return False
