"""Atomic file writes for every file accel_sim produces: a reader never sees a half-written
CSV. One implementation for the whole project lives in :mod:`fsio` (torch-free)."""
from fsio.atomic import atomic_write, write_bytes_atomic, write_text_atomic

__all__ = ["atomic_write", "write_bytes_atomic", "write_text_atomic"]
