"""Atomic writes and output locks: a reader (or a crash) never sees a half-written file, and
two runs never interleave their writes into one output folder.

Pure Python and torch-free on purpose: ``accel_sim`` and ``dyngate`` share this one
implementation.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

LOCK_NAME = ".dyngate.lock"


class LockError(OSError):
    """Another process holds the exclusive lock of an output folder or file."""


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable: the directory entry itself must reach the disk."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a folder that cannot be opened (some platforms/filesystems): best effort
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kw) -> Iterator[IO]:
    """Yield a file opened on a temp file next to ``path``; on a clean exit it is flushed,
    fsynced and renamed over ``path`` (then the folder is fsynced). On any error the temp file
    is removed and ``path`` keeps its previous content (or stays absent)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", newline="") as fh:
        fh.write(text)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def _lock_file(path: Path) -> Path:
    return path / LOCK_NAME if path.is_dir() else path.with_name(path.name + ".lock")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive, non-blocking ``flock`` on output folder (or file) ``path`` for the
    block; a second holder gets :class:`LockError` at once instead of waiting or interleaving
    its writes. The lock goes away with the process, so a killed run leaves no stale lock."""
    path = Path(path)
    lock = _lock_file(path)
    fh = open(lock, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            fh.seek(0)
            holder = fh.read().strip()
            raise LockError(f"{path} is in use by another writer"
                            f"{f' (pid {holder})' if holder else ''}; lock file {lock}") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield lock
    finally:
        fh.close()


def check_writable_dir(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed and prove a file can be created in it, so that a long run
    fails in its first second rather than at its first save."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OSError(e.errno, f"output folder {folder} is not writable: {e.strerror or e}") from None


def check_writable_file(path: str | os.PathLike) -> None:
    """Prove ``path`` can be written atomically: its folder exists and accepts new files, and
    ``path`` itself is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"output file {path} is a folder")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"output file {path}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OSError(e.errno, f"output file {path}: folder {folder} is not writable: "
                               f"{e.strerror or e}") from None


def save_figure_atomic(fig, path: str | os.PathLike, **savefig_kw) -> None:
    """``fig.savefig`` (matplotlib, duck-typed: no import here) written atomically; the
    format comes from the suffix, as savefig would infer it from a file name."""
    fmt = savefig_kw.pop("format", None) or Path(path).suffix.lstrip(".") or "png"
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format=fmt, **savefig_kw)
