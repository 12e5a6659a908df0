"""RTL cross-check: the generated Verilog, run under Verilator, against the cycle-stepped array
and the closed forms (cycles, outputs and gate decisions must be equal, not close)."""
import numpy as np
import pytest

from accel_sim.dataflow import dense_cycles, layer_epilogue
from accel_sim.gating import gate_classes, gate_drain, pass_counts
from accel_sim.pe_array import simulate_gated, simulate_gemm
from accel_sim.rtl import verilator, yosys
from accel_sim.rtl.verilog import Design, emit

ARRAYS = [(2, 3), (4, 4)]


@pytest.fixture(scope="session")
def rtl_cache(tmp_path_factory):
    reason = verilator.available()
    if reason:
        print(f"RTL cross-check skipped: {reason}")
        pytest.skip(reason)
    return tmp_path_factory.mktemp("rtl_models")


def _base_psum(a, b, partitions, grouped):
    cls, base, _ = gate_classes(b.shape[1], a.shape[1], partitions, grouped)
    return np.stack([a[:, base[cls[n]]] @ b[base[cls[n]], n] for n in range(b.shape[1])], axis=1)


def _reference(a, b, mask, partitions, grouped):
    """base + mask x conditional, from the partition definition."""
    cls, base, cond = gate_classes(b.shape[1], a.shape[1], partitions, grouped)
    out = np.empty(mask.shape, dtype=np.int64)
    for n in range(b.shape[1]):
        bs, cs = base[cls[n]], cond[cls[n]]
        out[:, n] = a[:, bs] @ b[bs, n] + mask[:, n] * (a[:, cs] @ b[cs, n])
    return out


def _thresholds(base, rng, kind):
    """Per-filter thresholds: all outputs off, all on, or a random mix around the base psums."""
    n = base.shape[1]
    if kind == "off":
        return np.full(n, int(base.max()) + 1)
    if kind == "on":
        return np.full(n, int(base.min()) - 1)
    return np.array([int(rng.choice(base[:, j])) - int(rng.integers(0, 2)) for j in range(n)])


def check_dense(model, dataflow, rows, cols, a, b):
    rtl = model.run_dense(a, b)
    ref = simulate_gemm(dataflow, a, b, rows, cols)
    m, k = a.shape
    closed = int(dense_cycles(dataflow, rows, cols, m, b.shape[1], k))
    case = (dataflow, rows, cols, a.shape, b.shape)
    assert rtl.cycles == ref.cycles == closed, (case, rtl.cycles, ref.cycles, closed)
    assert np.array_equal(rtl.output, a @ b), case
    assert np.array_equal(ref.output, a @ b), case


def check_gated(model, dataflow, rows, cols, a, b, thr, p, grouped, cond_mode, latency):
    m, k = a.shape
    n = b.shape[1]
    mask = _base_psum(a, b, p, grouped) > thr[None, :]
    rtl = model.run_gated(a, b, thr, p, grouped, cond_mode, latency)
    ref = simulate_gated(dataflow, a, b, rows, cols, mask, p, grouped, "packed", cond_mode, latency)
    cls, base_set, cond_set = gate_classes(n, k, p, grouped)
    base = pass_counts(dataflow, rows, cols, np.ones((m, n), bool), cls, base_set, "packed", False)
    cond = pass_counts(dataflow, rows, cols, mask, cls, cond_set, cond_mode, True)
    closed = base.cycles + gate_drain(dataflow, rows, cond, latency) + cond.cycles + layer_epilogue(dataflow, rows, False)
    case = (dataflow, rows, cols, m, n, k, p, grouped, cond_mode, latency, int(mask.sum()))
    assert np.array_equal(rtl.gates, mask), case
    assert rtl.cycles == ref.cycles == closed, (case, rtl.cycles, ref.cycles, closed)
    expect = _reference(a, b, mask, p, grouped)
    assert np.array_equal(rtl.output, expect), case
    assert np.array_equal(ref.output, expect), case
    return mask


def _layer(rng, p=1, hi=12):
    m = int(rng.integers(1, hi + 1))
    n = p * int(rng.integers(1, hi // p + 1))
    k = p * int(rng.integers(1, hi // p + 1))
    return rng.integers(-8, 9, (m, k)), rng.integers(-8, 9, (k, n))


@pytest.mark.parametrize("rows,cols", ARRAYS)
@pytest.mark.parametrize("dataflow", ["os", "ws", "is"])
def test_dense_rtl_equals_array_and_closed_form(rtl_cache, dataflow, rows, cols):
    model = verilator.build(Design(rows, cols, dataflow, gated=dataflow != "is"), rtl_cache)
    rng = np.random.default_rng(100 + rows * 10 + cols + {"os": 0, "ws": 1, "is": 2}[dataflow])
    for _ in range(8):
        check_dense(model, dataflow, rows, cols, *_layer(rng))


@pytest.mark.parametrize("rows,cols", ARRAYS)
@pytest.mark.parametrize("dataflow", ["os", "ws"])
def test_gated_rtl_equals_array_and_closed_form(rtl_cache, dataflow, rows, cols):
    """Base pass packed, conditional pass column and packed, gate decided by the hardware;
    all-off and all-on masks first, then random mixes, grouped and ungrouped."""
    model = verilator.build(Design(rows, cols, dataflow), rtl_cache)
    rng = np.random.default_rng(200 + rows * 10 + cols + (dataflow == "ws"))
    seen = set()
    for trial in range(10):
        p = int(rng.choice([2, 3, 4]))
        grouped = bool(trial % 2)
        a, b = _layer(rng, p)
        kind = {0: "off", 1: "on"}.get(trial, "mix")
        thr = _thresholds(_base_psum(a, b, p, grouped), rng, kind)
        for cond_mode in ("column", "packed"):
            mask = check_gated(model, dataflow, rows, cols, a, b, thr, p, grouped, cond_mode, int(rng.integers(0, 4)))
            seen.add("off" if not mask.any() else "on" if mask.all() else "mix")
    assert seen == {"off", "on", "mix"}


def test_8x8_array_once(rtl_cache):
    """One 8 x 8 build (OS, the dataflow with the output chain), larger layers, dense and gated."""
    model = verilator.build(Design(8, 8, "os"), rtl_cache)
    rng = np.random.default_rng(300)
    for _ in range(3):
        check_dense(model, "os", 8, 8, *_layer(rng, hi=16))
    for trial in range(3):
        a, b = _layer(rng, 2, hi=16)
        thr = _thresholds(_base_psum(a, b, 2, True), rng, "mix")
        for cond_mode in ("column", "packed"):
            check_gated(model, "os", 8, 8, a, b, thr, 2, bool(trial % 2), cond_mode, 2)


def test_emitted_verilog_has_no_simulation_only_constructs():
    for d in (Design(4, 4, "os"), Design(4, 4, "ws"), Design(3, 2, "is", gated=False)):
        text = emit(d)
        assert "module cg_top" in text and "endmodule" in text
        for banned in ("initial", "$readmem", "$display", "#"):
            assert banned not in text, (d.name, banned)
    with pytest.raises(ValueError, match="dense only"):
        Design(4, 4, "is")
    with pytest.raises(ValueError, match="power of two"):
        Design(4, 4, "ws", m_max=12)


def test_missing_tools_give_a_one_line_reason(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda tool: None)
    assert "verilator not found" in verilator.available()
    assert "yosys not found" in yosys.available()
    with pytest.raises(RuntimeError, match="verilator not found"):
        verilator.build(Design(2, 2, "ws"))
    with pytest.raises(RuntimeError, match="yosys not found"):
        yosys.synth(Design(2, 2, "ws"))


def test_yosys_synth_xilinx_counts_are_sane(tmp_path):
    reason = yosys.available()
    if reason:
        print(f"Yosys check skipped: {reason}")
        pytest.skip(reason)
    d = Design(4, 4, "ws", gated=False, m_max=4, n_max=4, k_max=4)
    rep = yosys.synth(d, tmp_path)
    assert rep.pe_count == 16
    assert rep.pe.dsp >= 1 or rep.pe.lut > 0          # the multiplier went somewhere
    assert rep.array.ff >= 16 * (32 + 8 + 8)           # psum + stationary + streamed operand per PE
    assert rep.control.ff > 0 and rep.control.lut > 0  # sequencer and feeders
    assert rep.buffers.ff + rep.buffers.lutram + rep.buffers.bram18 > 0
    assert rep.total.lut_total > rep.core.lut_total
