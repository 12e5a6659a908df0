"""Data-parallel training under torchrun: two loopback ranks on gloo, checked reproducible."""
import os
import socket
import subprocess
import sys

import pytest
import torch

import dyngate
from dyngate.train.distributed import World, init
from dyngate.errors import DyngateError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_train(out: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "dyngate", "train", "--dataset", "synthetic", "--epochs", "2",
           "--train-limit", "144", "--test-limit", "64", "--batch-size", "32",
           "--gated", "--threads", "1", "--out", out]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_two_ranks_train_reproducibly_and_rank0_alone_reports(tmp_path):
    runs = []
    for name in ("a", "b"):
        r = _torchrun_train(str(tmp_path / name))
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.count("saved ") == 1        # one rank reports, not two
        runs.append(dyngate.load(str(tmp_path / name / "final.pt")).state_dict())
    a, b = runs
    # gloo sums in a fixed order and every rank draws the same seeded data order: bit-identical
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    written = sorted(f for f in os.listdir(tmp_path / "a") if not f.startswith("."))  # (lock file)
    assert written == ["final.pt", "last.pt", "metrics.csv", "metrics.json"]


def test_batch_slices_cover_equal_shares():
    shares = [World(r, 3).slice(32) for r in range(3)]
    assert [(s.start, s.stop) for s in shares] == [(0, 10), (10, 20), (20, 30)]
    assert World().slice(7) == slice(0, 7)


def test_batch_size_must_divide_among_ranks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(DyngateError, match="--batch-size 32 must be a multiple of the world size 3"):
        init(32)
