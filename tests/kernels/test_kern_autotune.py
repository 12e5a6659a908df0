"""The measured path choice (kernels.autotune) and the tile-gather path, against the reference.

Outputs are checked with kern_helpers.check_against_reference (float64 reference, rtol 1e-5 of
the output scale: fp32 convs in another summation order differ by ~1e-6 relative).
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import warnings

import pytest
import torch

from kern_helpers import check_against_reference, make_case
from kernels import autotune, conditional_conv2d, cpu_fused, cpu_tiles
from kernels.api import validate
from kernels.cpu import conditional_conv2d_cpu, last_path


def _auto(case, **kw):
    x, w, b, tau, isg = case
    out, gate = conditional_conv2d(x, w, b, tau, isg, padding=1, backend="cpu", return_gate=True, **kw)
    check_against_reference(out, gate, x, w, b, tau, isg, padding=1)
    return out


@pytest.mark.parametrize("strategy", ["tiles", "chunk_tiles"])
@pytest.mark.parametrize("tile", [(1, 1), (2, 3), (4, 4), (3, 5), (7, 9), (16, 16)])
@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("c_out", [16, 256])        # chunks of 4 (select) and 64 (rotated) at p=4
def test_tiles_path_any_tile_shape(tile, grouped, c_out, strategy):
    x, w, b, tau, isg = make_case(2, 16, c_out, 7, 9, 3, density=0.3, grouped=grouped, seed=sum(tile))
    geo = validate(x, w, b, tau, isg, 1, 1, 1, 4, grouped, 1)
    out, gate = conditional_conv2d_cpu(x, w, b, tau, isg, geo, partitions=4, grouped=grouped,
                                       return_gate=True, strategy=strategy, tile=tile)
    check_against_reference(out, gate, x, w, b, tau, isg, padding=1, grouped=grouped)


def test_tiles_path_computes_only_active_tiles(monkeypatch):
    """Gates that switch whole 4x4 tiles off: the remaining-sum conv sees only the on tiles."""
    x, w, b, _, isg = make_case(1, 16, 32, 8, 8, 3, density=1.0)
    x = x.abs() + 0.1
    w = w.abs()
    x[:, :, 4:, :] = 0                      # output rows 5.. see only zeros (row 4 sees row 3)
    x[:, :, :, 4:] = 0
    tau = b + 1e-3                          # Yp = bias there: gate off
    seen = []
    real_pass = cpu_tiles.tile_gather_pass

    def spy(*a, **k):                       # the pass returns the number of tiles it computed
        seen.append(real_pass(*a, **k))
        return seen[-1]
    geo = validate(x, w, b, tau, isg, 1, 1, 1, 4, True, 1)
    monkeypatch.setattr(cpu_tiles, "tile_gather_pass", spy)
    out, gate = conditional_conv2d_cpu(x, w, b, tau, isg, geo, partitions=4, grouped=True,
                                       return_gate=True, strategy="tiles", tile=(4, 4))
    check_against_reference(out, gate, x, w, b, tau, isg, padding=1)
    # outputs (0..4, 0..4) are on: tiles (0,0), (0,1), (1,0), (1,1) hold on gates -> all 4;
    # with the top-left 3x3 region only, one tile would be active
    assert seen == [4]
    x[:, :, 3:, :] = 0
    x[:, :, :, 3:] = 0
    seen.clear()
    out, gate = conditional_conv2d_cpu(x, w, b, tau, isg, geo, partitions=4, grouped=True,
                                       return_gate=True, strategy="tiles", tile=(4, 4))
    check_against_reference(out, gate, x, w, b, tau, isg, padding=1)
    assert seen == [1]


def test_auto_tunes_once_and_persists(monkeypatch):
    case = make_case(2, 16, 32, 7, 7, 3, density=0.4)
    _auto(case)
    chosen = last_path()
    doc = json.loads(autotune.cache_file().read_text())
    (k, entry), = doc["entries"].items()
    assert entry["path"] == chosen and doc["cpu"] == autotune.cpu_id()
    assert set(entry["ms"]) >= {"dense", "tiles", "union", "groups"}
    assert entry["ms"][chosen] == min(entry["ms"].values())   # never a path measured slower
    assert 0 < entry["density"] < 1 and entry["dense_conv_ms"] > 0
    # a new process (empty memory) reads the choice from disk and measures nothing
    autotune.forget()
    monkeypatch.setattr(autotune, "_once", lambda *a, **k: pytest.fail("re-measured"))
    _auto(case)
    assert last_path() == chosen


def test_choice_is_the_fastest_measured(monkeypatch):
    assert autotune.choose({"dense": 2.0, "tiles": 1.0, "union": 3.0}) == "tiles"
    assert autotune.choose({"dense": 1.0, "tiles": 1.0}) == "tiles"      # tie: PATHS order
    # first round dense 5, tiles 1, union 1.4: dense is out of contention (> CLOSE x 1), tiles
    # and union run ROUNDS - 1 more interleaved rounds; one slow outlier of tiles (a stall)
    # does not move its median
    first = {"dense": 5.0, "tiles": 1.0, "union": 1.4}
    later = {"tiles": iter([9.0, 1.0, 1.1, 1.0]), "union": iter([1.2, 1.3, 1.2, 1.3])}
    calls = []

    def fake_once(fn):
        name = fn()
        calls.append(name)
        return first.pop(name) if name in first else next(later[name])
    monkeypatch.setattr(autotune, "_once", fake_once)
    monkeypatch.setattr(autotune, "ROUNDS", 5)

    def broken():
        raise ValueError("cannot run")
    entry = autotune.tune("k", {"dense": lambda: "dense", "tiles": lambda: "tiles",
                                "union": lambda: "union", "fused": broken})
    assert entry["path"] == "tiles" and set(entry["ms"]) == {"dense", "tiles", "union"}
    assert entry["ms"] == {"dense": 5.0, "tiles": 1.0, "union": 1.3}
    assert calls.count("dense") == 1 and calls.count("tiles") == calls.count("union") == 5
    # the later rounds alternate their order, so drift does not favour one path
    rounds = calls[3:]
    assert rounds[:2] == ["union", "tiles"] and rounds[2:4] == ["tiles", "union"]


def test_measure_drops_only_failing_candidates():
    def broken():
        raise cpu_fused.NativeBuildError("no compiler")
    with pytest.raises(cpu_fused.NativeBuildError):
        autotune.measure({"fused": broken})
    assert set(autotune.measure({"fused": broken, "dense": lambda: None})) == {"dense"}


@pytest.mark.parametrize("damage", [b"{not json", b"\xff\xfe\x00binary", b'{"version": 1, "cpu": 3}',
                                    b"[]", b""])
def test_damaged_cache_is_ignored_and_rewritten(damage):
    path = autotune.cache_file()
    path.write_bytes(damage)
    case = make_case(1, 8, 16, 6, 6, 3, density=0.5, seed=4)
    with _quiet():
        _auto(case)
    doc = json.loads(path.read_text())
    assert len(doc["entries"]) == 1


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def test_bad_entries_and_other_cpu_are_not_used(monkeypatch):
    case = make_case(1, 8, 16, 6, 6, 3, density=0.5, seed=5)
    x, w, b, tau, isg = case
    geo = validate(x, w, b, tau, isg, 1, 1, 1, 4, True, 1)
    k = autotune.key(geo, 4, True, 1, cpu_tiles.default_tile(geo), torch.get_num_threads())
    bad = {k: dict(path="union", ms={"union": float("nan")})}
    autotune.cache_file().write_text(json.dumps(dict(version=autotune.VERSION, cpu=autotune.cpu_id(), entries=bad)))
    assert autotune.lookup(k, autotune.PATHS) is None
    good = {k: dict(path="union", ms={"union": 1.0})}
    old = dict(version=autotune.VERSION - 1, cpu=autotune.cpu_id(), entries=good)
    autotune.cache_file().write_text(json.dumps(old))
    assert autotune.lookup(k, autotune.PATHS) is None              # measured by older kernels
    autotune.cache_file().write_text(json.dumps(dict(version=autotune.VERSION, cpu="another CPU", entries=good)))
    assert autotune.lookup(k, autotune.PATHS) is None
    autotune.cache_file().write_text(json.dumps(dict(version=autotune.VERSION, cpu=autotune.cpu_id(), entries=good)))
    assert autotune.lookup(k, ("dense", "tiles")) is None          # not runnable here: re-tune
    assert autotune.lookup(k, autotune.PATHS)["path"] == "union"
    _auto(case)
    assert last_path() == "union"


def _writer(args):
    path, start = args
    autotune.cache_file = lambda: path
    for i in range(start, start + 10):
        autotune._write(path, f"key{i}", dict(path="dense", ms={"dense": 1.0 + i}))


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "tune-shared.json"
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(path, s) for s in (0, 10, 20, 30)])
    doc = json.loads(path.read_text())
    assert sorted(doc["entries"]) == sorted(f"key{i}" for i in range(40))


def test_tune_off_uses_the_cost_model(monkeypatch):
    monkeypatch.setenv("DYNGATE_TUNE", "0")
    _auto(make_case(2, 16, 32, 7, 7, 3, density=0.4))
    assert not autotune.cache_file().exists()
    assert last_path() in ("tiles", "dense", "union", "groups")


def test_unwritable_cache_still_gives_right_results(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")                  # a file where the cache folder should be (root-proof)
    monkeypatch.setattr(autotune, "cache_file", lambda: blocker / "tune.json")
    with pytest.warns(RuntimeWarning, match="not written"):
        _auto(make_case(2, 16, 32, 7, 7, 3, density=0.4))


def test_a_changed_choice_is_used_at_the_next_call():
    """auto keeps the path it looked up per call signature only while the choices stay the same:
    a new measurement (tune) or forget() plus another cached entry take effect at once."""
    case = make_case(1, 8, 16, 6, 6, 3, density=0.5, seed=6)
    x, w, b, tau, isg = case
    with _quiet():
        _auto(case)
    first = last_path()
    geo = validate(x, w, b, tau, isg, 1, 1, 1, 4, True, 1)
    k = autotune.key(geo, 4, True, 1, cpu_tiles.default_tile(geo), torch.get_num_threads())
    assert autotune.choices()[k]["path"] == first
    other = "union" if first != "union" else "dense"
    autotune.tune(k, {other: lambda: None})
    _auto(case)
    assert last_path() == other
    autotune.forget()
    doc = dict(version=autotune.VERSION, cpu=autotune.cpu_id(),
               entries={k: dict(path="groups", ms={"groups": 1.0})})
    autotune.cache_file().write_text(json.dumps(doc))
    _auto(case)
    assert last_path() == "groups"
