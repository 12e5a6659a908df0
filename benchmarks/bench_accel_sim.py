"""Speed of accel_sim against SCALE-Sim v2 on the same topology and config, in one run.

    python benchmarks/bench_accel_sim.py [--network resnet18] [--array 32x32] [--dataflow ws]
        [--scalesim-python /path/to/venv/bin/python] [--skip-scalesim]

SCALE-Sim is never a dependency: install it into a separate environment
(``python -m venv --system-site-packages /tmp/ssv2 && /tmp/ssv2/bin/pip install scalesim==2.0.2``)
and pass that interpreter.  Both tools get the network written as a SCALE-Sim CSV (padded
input dims, so SCALE-Sim's output-size rule gives PyTorch's sizes); SCALE-Sim runs in CALC
bandwidth mode with traces off.  The script prints both wall times, the ratio, and checks
that accel_sim's ``--scalesim-compat`` compute cycles equal SCALE-Sim's per layer.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without reinstalling

from accel_sim import AccelConfig, build_network, read_scalesim_csv, simulate, uniform_gates
from accel_sim.config import parse_array
from accel_sim.topology import write_scalesim_csv

CFG = """[general]
run_name = bench

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: {ikb}
FilterSramSzkB: {fkb}
OfmapSramSzkB: {okb}
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Dataflow: {df}
Bandwidth: 10
MemoryBanks: 1

[run_presets]
InterfaceBandwidth: CALC
"""

RUNNER = textwrap.dedent("""
    import sys, time
    from scalesim.scale_sim import scalesim
    t = time.perf_counter()
    s = scalesim(save_disk_space=True, verbose=False, config=sys.argv[1], topology=sys.argv[2])
    s.run_scale(top_path=sys.argv[3])
    print("SCALESIM_SECONDS", time.perf_counter() - t)
""")


def time_accel_sim(layers, cfg: AccelConfig, repeats: int) -> float:
    """Best-of-``repeats`` wall time of one dense + gated (density 0.35) simulation."""
    gates = uniform_gates(layers, 0.35)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        simulate(layers, cfg, gates)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--network", default="resnet18")
    ap.add_argument("--array", default="32x32")
    ap.add_argument("--dataflow", default="ws")
    ap.add_argument("--scalesim-python", default=sys.executable)
    ap.add_argument("--skip-scalesim", action="store_true")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    rows, cols = parse_array(args.array)
    cfg = AccelConfig(rows=rows, cols=cols, dataflow=args.dataflow)
    with tempfile.TemporaryDirectory() as tmp:
        topo = Path(tmp) / f"{args.network}.csv"
        write_scalesim_csv(build_network(args.network), topo)
        layers = read_scalesim_csv(topo)
        ours = time_accel_sim(build_network(args.network), cfg, args.repeats)
        compat = simulate(layers, cfg, compat=True)
        print(f"accel_sim: {args.network} {args.array} {args.dataflow}, dense + gated: {ours * 1e3:.1f} ms "
              f"(best of {args.repeats})")
        if args.skip_scalesim:
            return 0
        (Path(tmp) / "bench.cfg").write_text(CFG.format(rows=rows, cols=cols, df=args.dataflow,
                                                        ikb=int(cfg.ifmap_sram_kb), fkb=int(cfg.filter_sram_kb),
                                                        okb=int(cfg.ofmap_sram_kb)))
        (Path(tmp) / "runner.py").write_text(RUNNER)
        t = time.perf_counter()
        proc = subprocess.run([args.scalesim_python, str(Path(tmp) / "runner.py"), str(Path(tmp) / "bench.cfg"),
                               str(topo), str(Path(tmp) / "out")], capture_output=True, text=True, cwd=tmp)
        theirs_wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(f"SCALE-Sim failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
            return 1
        theirs = float(next(l.split()[1] for l in proc.stdout.splitlines() if l.startswith("SCALESIM_SECONDS")))
        with (Path(tmp) / "out" / "bench" / "COMPUTE_REPORT.csv").open() as fh:
            report = [r for r in csv.reader(fh)][1:]
        ss_cycles = [int(float(r[1])) for r in report if r]
    ours_cycles = [r["dense_compute_cycles"] for r in compat.rows]
    mism = [(l.name, a, b) for l, a, b in zip(layers, ours_cycles, ss_cycles) if a != b]
    print(f"SCALE-Sim v2: {theirs:.1f} s simulation ({theirs_wall:.1f} s with interpreter start)")
    print(f"speed ratio: {theirs / ours:,.0f}x")
    print(f"compat compute cycles: {len(ss_cycles) - len(mism)}/{len(ss_cycles)} layers equal; total "
          f"accel_sim {sum(ours_cycles):,} vs SCALE-Sim {sum(ss_cycles):,}")
    for name, a, b in mism:
        print(f"  mismatch {name}: accel_sim {a} SCALE-Sim {b}")
    return 0 if not mism and len(ss_cycles) == len(ours_cycles) else 1


if __name__ == "__main__":
    sys.exit(main())
