"""Crash-safe file output shared by dyngate, kernels and accel_sim (no torch import)."""
from fsio.atomic import (LockError, atomic_write, check_writable_dir, check_writable_file,
                         exclusive_lock, fsync_dir, save_figure_atomic, write_bytes_atomic,
                         write_text_atomic)

__all__ = ["LockError", "atomic_write", "check_writable_dir", "check_writable_file",
           "exclusive_lock", "fsync_dir", "save_figure_atomic", "write_bytes_atomic",
           "write_text_atomic"]
