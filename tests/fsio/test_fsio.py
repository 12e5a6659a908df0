"""fsio: atomic writes leave the old file or the new one, never a mix; locks refuse a second
writer at once."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fsio import (LockError, atomic_write, check_writable_dir, check_writable_file,
                  exclusive_lock, write_bytes_atomic, write_text_atomic)

ROOT = Path(__file__).resolve().parents[2]


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    p = tmp_path / "a.txt"
    write_text_atomic(p, "one")
    write_bytes_atomic(p, b"two")
    assert p.read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_atomic_write_error_keeps_old_content_and_removes_temp(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_write(p) as fh:
            fh.write("half")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "good"
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]
    with pytest.raises(RuntimeError):   # and a file that did not exist stays absent
        with atomic_write(tmp_path / "new.txt", "wb") as fh:
            fh.write(b"x")
            raise RuntimeError
    assert sorted(os.listdir(tmp_path)) == ["a.txt"]


def test_second_locker_is_refused_naming_the_path(tmp_path):
    with exclusive_lock(tmp_path):
        with pytest.raises(LockError, match=str(tmp_path)) as e:
            with exclusive_lock(tmp_path):
                pass
        assert "\n" not in str(e.value) and str(os.getpid()) in str(e.value)
    with exclusive_lock(tmp_path):   # released with the block
        pass


def test_lock_is_refused_across_processes_and_dies_with_the_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fsio import exclusive_lock\n"
         f"with exclusive_lock({str(tmp_path)!r}):\n print('locked', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockError, match="in use by another writer"):
            with exclusive_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive_lock(tmp_path):   # a killed holder leaves no stale lock
        pass


def test_writable_checks(tmp_path):
    check_writable_dir(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir()
    (tmp_path / "f").write_text("")
    with pytest.raises(OSError, match="not writable"):
        check_writable_dir(tmp_path / "f" / "run")
    check_writable_file(tmp_path / "p.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_writable_file(tmp_path / "missing" / "p.yaml")
    with pytest.raises(IsADirectoryError):
        check_writable_file(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["f", "new"]


def test_accel_sim_uses_the_one_implementation_without_torch():
    import accel_sim.atomic
    import fsio.atomic
    assert accel_sim.atomic.write_text_atomic is fsio.atomic.write_text_atomic
    out = subprocess.run([sys.executable, "-c", "import sys, fsio, accel_sim.atomic; "
                          "assert 'torch' not in sys.modules"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_figure_written_atomically_in_the_suffix_format(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from fsio import save_figure_atomic
    fig, _ = plt.subplots()
    save_figure_atomic(fig, tmp_path / "a.png", dpi=30)
    save_figure_atomic(fig, tmp_path / "a.svg")
    plt.close(fig)
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (tmp_path / "a.svg").read_bytes()[:400]
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a.svg"]
