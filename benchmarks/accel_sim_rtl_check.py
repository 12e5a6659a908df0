"""accel_sim: RTL cross-check of the cycle-stepped PE array and the closed forms, and the FPGA
resource model against Yosys.

    python benchmarks/accel_sim_rtl_check.py [--out results/accel_sim_rtl.md] [--no-synth]

1. A fixed set of random int8 layers (seeded), dense on every dataflow and gated (base pass
   packed, conditional pass column or packed) on OS and WS, on 4x4 and 8x8 arrays, runs on the
   generated Verilog under Verilator, on :mod:`accel_sim.pe_array` and through the closed forms;
   the table gives the three cycle counts and whether outputs (and gate decisions) are equal.
2. Yosys ``synth_xilinx -family xcup`` on the dense 4x4 and 8x8 designs (and the gated 4x4 ones)
   against :func:`accel_sim.cost.fpga_resources` for the same array: the model's LUT/FF/DSP
   describe the array, so they are compared with the PE array alone and with PE array + control;
   the register-file buffers of the RTL are listed apart (the model's BRAM is for the configured
   128/128/256 KB SRAMs, a different thing).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without reinstalling
from accel_sim import AccelConfig  # noqa: E402
from accel_sim.cost import fpga_resources  # noqa: E402
from accel_sim.cost_tables import value  # noqa: E402
from accel_sim.dataflow import dense_cycles, layer_epilogue  # noqa: E402
from accel_sim.gating import gate_classes, gate_drain, pass_counts  # noqa: E402
from accel_sim.pe_array import simulate_gated, simulate_gemm  # noqa: E402
from accel_sim.rtl import verilator, yosys  # noqa: E402
from accel_sim.rtl.verilog import Design  # noqa: E402
from cpu_info import cpu_model  # noqa: E402
from fsio import write_text_atomic  # noqa: E402

ARRAYS = ((4, 4), (8, 8))
GATE_LATENCY = 2
SYNTH_BOUND = 8
# (M, N, K) of the dense layers and (M, N, K, partitions, grouped, density) of the gated ones
DENSE = {4: [(12, 10, 9), (7, 5, 13)], 8: [(16, 12, 16), (11, 16, 6)]}
GATED = {4: [(12, 8, 8, 2, True, 0.5), (10, 12, 12, 4, False, 0.3)],
         8: [(16, 16, 16, 2, True, 0.5), (16, 12, 12, 4, False, 0.3)]}


def _base(a, b, p, grouped):
    cls, base, _ = gate_classes(b.shape[1], a.shape[1], p, grouped)
    return np.stack([a[:, base[cls[n]]] @ b[base[cls[n]], n] for n in range(b.shape[1])], axis=1)


def _reference(a, b, mask, p, grouped):
    cls, base, cond = gate_classes(b.shape[1], a.shape[1], p, grouped)
    return np.stack([a[:, base[cls[n]]] @ b[base[cls[n]], n] + mask[:, n] * (a[:, cond[cls[n]]] @ b[cond[cls[n]], n])
                     for n in range(b.shape[1])], axis=1)


def cycle_rows(cache: str) -> list[dict]:
    rng = np.random.default_rng(2024)
    out = []
    for rows, cols in ARRAYS:
        models = {df: verilator.build(Design(rows, cols, df, gated=df != "is"), cache) for df in ("os", "ws", "is")}
        for i, (m, n, k) in enumerate(DENSE[rows]):
            a, b = rng.integers(-8, 9, (m, k)), rng.integers(-8, 9, (k, n))
            for df, model in models.items():
                rtl, ref = model.run_dense(a, b), simulate_gemm(df, a, b, rows, cols)
                out.append(dict(layer=f"d{i} M={m} N={n} K={k}", array=f"{rows}x{cols}", dataflow=df, mode="dense",
                                rtl=rtl.cycles, pe=ref.cycles, closed=int(dense_cycles(df, rows, cols, m, n, k)),
                                equal=bool(np.array_equal(rtl.output, a @ b) and np.array_equal(ref.output, a @ b))))
        for i, (m, n, k, p, grouped, density) in enumerate(GATED[rows]):
            a, b = rng.integers(-8, 9, (m, k)), rng.integers(-8, 9, (k, n))
            base = _base(a, b, p, grouped)
            thr = np.floor(np.quantile(base, 1 - density, axis=0)).astype(np.int64)
            mask = base > thr[None, :]
            cls, bset, cset = gate_classes(n, k, p, grouped)
            for df in ("os", "ws"):
                bc = pass_counts(df, rows, cols, np.ones((m, n), bool), cls, bset, "packed", False)
                for cond_mode in ("column", "packed"):
                    rtl = models[df].run_gated(a, b, thr, p, grouped, cond_mode, GATE_LATENCY)
                    ref = simulate_gated(df, a, b, rows, cols, mask, p, grouped, "packed", cond_mode, GATE_LATENCY)
                    cc = pass_counts(df, rows, cols, mask, cls, cset, cond_mode, True)
                    closed = bc.cycles + gate_drain(df, rows, cc, GATE_LATENCY) + cc.cycles + layer_epilogue(df, rows, False)
                    expect = _reference(a, b, mask, p, grouped)
                    out.append(dict(
                        layer=f"g{i} M={m} N={n} K={k} p={p} {'grouped' if grouped else 'ungrouped'}, "
                              f"{100 * mask.mean():.0f}% on", array=f"{rows}x{cols}", dataflow=df,
                        mode=f"gated packed+{cond_mode}", rtl=rtl.cycles, pe=ref.cycles, closed=closed,
                        equal=bool(np.array_equal(rtl.output, expect) and np.array_equal(ref.output, expect)
                                   and np.array_equal(rtl.gates, mask))))
    return out


def synth_rows(workroot: str) -> list[dict]:
    # buffer bounds 8: the psum register file (C + 1 write ports) dominates synthesis time, and
    # the buffers are reported apart from the array and control anyway
    designs = [Design(r, c, df, gated=False, m_max=SYNTH_BOUND, n_max=SYNTH_BOUND, k_max=SYNTH_BOUND)
               for r, c in ARRAYS for df in ("os", "ws", "is")]
    designs += [Design(4, 4, df, gated=True, m_max=SYNTH_BOUND, n_max=SYNTH_BOUND, k_max=SYNTH_BOUND)
                for df in ("os", "ws")]
    out = []
    for d in designs:
        t0 = time.time()
        rep = yosys.synth(d, os.path.join(workroot, d.name))
        model = fpga_resources(AccelConfig(rows=d.rows, cols=d.cols, dataflow=d.dataflow, word="int8"))
        out.append(dict(design=d, rep=rep, model=model, seconds=time.time() - t0))
        print(f"synth {d.name}: {time.time() - t0:.0f} s", flush=True)
    return out


def _gap(model: float, measured: float) -> str:
    return "n/a" if not measured else f"{100 * (model / measured - 1):+.0f}%"


def render(cyc: list[dict], syn: list[dict], command: str, seconds: float) -> str:
    ok = all(r["rtl"] == r["pe"] == r["closed"] and r["equal"] for r in cyc)
    lines = ["# accel_sim RTL cross-check", "",
             f"{len(cyc)} layer runs; RTL cycles == pe_array cycles == closed form and outputs "
             f"{'(and gate decisions) ' if cyc else ''}equal in **{'all' if ok else 'NOT all'}** of them.", "",
             "Generated Verilog (`accel_sim.rtl.verilog`) simulated by Verilator; gate decisions "
             "(`base psum > thr[n]`) made by the hardware and compared with the Python mask; gate latency "
             f"{GATE_LATENCY} cycles; int8 operands in [-8, 8], 32-bit accumulators.", "",
             "| layer | array | dataflow | mode | RTL cycles | pe_array cycles | closed-form cycles | outputs equal |",
             "|---|---|---|---|---|---|---|---|"]
    for r in cyc:
        lines.append(f"| {r['layer']} | {r['array']} | {r['dataflow']} | {r['mode']} | {r['rtl']} | {r['pe']} | "
                     f"{r['closed']} | {'yes' if r['equal'] else 'NO'} |")
    if syn:
        lines += ["", "## Yosys `synth_xilinx -family xcup` against `accel_sim.cost.fpga_resources`", "",
                  "Hierarchy kept, so the PE module (times R*C), the control (`cg_top`'s own cells: fold sequencer, "
                  "skew feeders, slot tags, output adders, and in gated designs the gate compare and compaction) and "
                  "the buffers are counted apart; IO buffers excluded. LUT = LUT1..LUT6 (CARRY/MUXF not counted). "
                  "Gap = model / Yosys - 1 (negative: the model under-counts). The model is "
                  "`fpga_resources(AccelConfig(rows=R, cols=C, dataflow=DF, word=\"int8\"))`: DSP = "
                  f"ceil(PEs / {value('fpga_macs_per_dsp_int8'):g}) (Xilinx int8 packing, which Yosys does not "
                  f"infer), LUT per PE {value('fpga_lut_per_pe'):g} (OS {value('fpga_lut_per_pe_os'):g}), "
                  "FF per PE 2 x 8 + 32 (OS + 32 for the output chain); the per-PE LUTs were calibrated on "
                  "an earlier run of this check (before: 30 for every dataflow).", "",
                  "| array | dataflow | design | per PE LUT / FF / DSP | PE array LUT / FF / DSP | "
                  "+ control LUT / FF / DSP | model LUT / FF / DSP | gap vs array: LUT / FF / DSP | "
                  "gap vs array+control: LUT / FF / DSP |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in syn:
            d, rep, mod = s["design"], s["rep"], s["model"]
            pe, arr, core = rep.pe, rep.array, rep.core
            lines.append(
                f"| {d.rows}x{d.cols} | {d.dataflow} | {'gated' if d.gated else 'dense'} | "
                f"{pe.lut_total} / {pe.ff} / {pe.dsp} | {arr.lut_total} / {arr.ff} / {arr.dsp} | "
                f"{core.lut_total} / {core.ff} / {core.dsp} | {mod['lut']} / {mod['ff']} / {mod['dsp']} | "
                f"{_gap(mod['lut'], arr.lut_total)} / {_gap(mod['ff'], arr.ff)} / {_gap(mod['dsp'], arr.dsp)} | "
                f"{_gap(mod['lut'], core.lut_total)} / {_gap(mod['ff'], core.ff)} / {_gap(mod['dsp'], core.dsp)} |")
        lines += ["", "Buffers of the RTL (register files sized for the test layers, bounds M/N/K given; not the "
                  "model's SRAMs, whose BRAM18 count is shown for reference):", "",
                  "| array | dataflow | design | buffer bounds M/N/K | buffers LUT (of which LUTRAM) / FF / BRAM18 | "
                  "model BRAM18 (128/128/256 KB) | synth seconds |", "|---|---|---|---|---|---|---|"]
        for s in syn:
            d, b = s["design"], s["rep"].buffers
            lines.append(f"| {d.rows}x{d.cols} | {d.dataflow} | {'gated' if d.gated else 'dense'} | "
                         f"{d.m_max}/{d.n_max}/{d.k_max} | {b.lut_total} ({b.lutram}) / {b.ff} / {b.bram18} | "
                         f"{s['model']['bram18']} | {s['seconds']:.0f} |")
        dense = [s for s in syn if not s["design"].gated]
        per_pe = lambda key: [getattr(s["rep"].core, key) / (s["design"].rows * s["design"].cols) for s in dense]  # noqa: E731
        lut = [s["rep"].core.lut_total / (s["design"].rows * s["design"].cols) for s in dense]
        lines += ["", f"Measured per PE on the dense designs (PE array + control, / R*C): LUT {min(lut):.0f}-"
                      f"{max(lut):.0f}, FF {min(per_pe('ff')):.0f}-{max(per_pe('ff')):.0f}, "
                      f"DSP48E2 {min(per_pe('dsp')):.2f}-{max(per_pe('dsp')):.2f}."]
    cpu = cpu_model()
    lines += ["", "## Run", "", f"- command: `{command}`", f"- {verilator.version()}",
              f"- {yosys.version() if syn else 'yosys: not run'}", f"- CPU (lscpu model name): {cpu}",
              f"- wall time: {seconds:.0f} s", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "results", "accel_sim_rtl.md"))
    ap.add_argument("--no-synth", action="store_true", help="skip the Yosys part")
    ap.add_argument("--workdir", default=None, help="keep Verilator builds and Yosys runs here")
    args = ap.parse_args(argv)
    for reason in (verilator.available(), None if args.no_synth else yosys.available()):
        if reason:
            print(f"accel_sim_rtl_check: {reason}", file=sys.stderr)
            return 2
    import tempfile
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="accel_sim_rtl_") as tmp:
        work = args.workdir or tmp
        cyc = cycle_rows(os.path.join(work, "verilator"))
        syn = [] if args.no_synth else synth_rows(os.path.join(work, "yosys"))
    command = "python benchmarks/accel_sim_rtl_check.py" + ("".join(f" {a}" for a in (argv or sys.argv[1:])))
    text = render(cyc, syn, command, time.time() - t0)
    write_text_atomic(args.out, text)
    print(text)
    return 0 if all(r["rtl"] == r["pe"] == r["closed"] and r["equal"] for r in cyc) else 1


if __name__ == "__main__":
    sys.exit(main())
