"""torch (channels-last, oneDNN) vs ONNX Runtime on the same models, threads and batches.

For a dense and an FPGM-pruned ResNet-20 (1x28x28, Fashion-MNIST shape; with ``--resnet18`` and
``--resnet50`` also ResNet-18 / ResNet-50 at 3x224x224, batch 8) it exports each model with ``dyngate.export`` (which checks
ORT's outputs against torch), then times both runtimes alternately on the same batch, so machine
noise falls on both alike (ORT's thread spinning off, see ``ort_session``), and prints median
milliseconds per batch with the ratios side by side. torch runs channels-last on oneDNN twice,
eager and in ``dyngate.compile(net, "torch")``'s deployment form (BatchNorm folded); the better
of the two is the torch baseline of ``best torch/ORT`` (> 1: ORT is faster) and
``dense/pruned`` per runtime (the speedup pruning buys there). Weights are random: latency
depends on the shapes only, and FPGM on random filters still gives this ratio's pruned widths.

    python benchmarks/bench_onnxruntime.py [--threads 4] [--batch 64] [--repeats 30] [--json out.json]

Defaults finish in under two minutes (each variant stops timing after ``--budget`` seconds);
time it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dyngate  # noqa: E402
import models  # noqa: E402
from dyngate.errors import DeployError  # noqa: E402
from bench_gated_conv import cpu_header  # noqa: E402 (one lscpu/ISA header for every benchmark)
from fsio import write_text_atomic  # noqa: E402

CL = torch.channels_last


def ort_session(path: str, threads: int, spinning: bool = False):
    import onnxruntime as ort  # noqa: PLC0415 (after dyngate.export has checked it is installed)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # ORT's pool threads spin after each run by default; with the runtimes alternating, that
    # spinning would steal the cores torch's next call needs. Off unless --ort-spinning.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def time_round_robin(calls: dict, repeats: int, warmup: int, budget_s: float = 25.0) -> tuple[dict, int]:
    """Median ms of each callable, one call of each per round in turn, and the rounds timed:
    ``repeats``, or fewer (at least 5) once ``budget_s`` is spent, so defaults stay under a few
    minutes even on a slow machine. Alternating puts machine noise on every runtime alike."""
    ms: dict = {k: [] for k in calls}
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if i >= warmup + 5 and time.perf_counter() - start > budget_s:
                break
            for k, f in calls.items():
                t0 = time.perf_counter()
                f()
                if i >= warmup:
                    ms[k].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in ms.items()}, len(next(iter(ms.values())))


def bench_net(name: str, kw: dict, chw: tuple[int, int, int], batch: int, args, folder: str) -> list[dict]:
    torch.manual_seed(0)
    dense = models.build(name, **kw).eval()
    x = torch.randn(batch, *chw)
    pruned = dyngate.prune(dense, "fpgm", args.ratio, example_input=x[:8])
    rows = []
    for variant, net in (("dense", dense), (f"fpgm {args.ratio:g}", pruned)):
        path = os.path.join(folder, f"{name}_{variant.split()[0]}.onnx")
        res = dyngate.export(net, path, x)
        sess = ort_session(path, args.threads, args.ort_spinning)
        eager = net.eval().to(memory_format=CL)
        folded = dyngate.compile(net, "torch", example_input=x[:8])   # BN folded, channels_last
        xt = x.contiguous(memory_format=CL)
        feed = {sess.get_inputs()[0].name: x.contiguous().numpy()}
        med, n = time_round_robin({"eager": lambda: eager(xt), "folded": lambda: folded(xt),
                                   "ort": lambda: sess.run(None, feed)},
                                  args.repeats, args.warmup, args.budget)
        best = min(med["eager"], med["folded"])
        macs = dyngate.profile(net, x[:1]).totals["dense_macs"]
        rows.append({"model": name, "variant": variant, "input": "x".join(map(str, (batch, *chw))),
                     "mmacs_per_image": macs / 1e6, "torch_eager_ms": med["eager"],
                     "torch_folded_ms": med["folded"], "torch_ms": best, "ort_ms": med["ort"],
                     "torch_over_ort": best / med["ort"], "rounds": n, "ort_max_abs_err": res.max_abs_err})
        print(f"  {name} {variant}: torch eager {med['eager']:.2f} ms, BN-folded {med['folded']:.2f} ms, "
              f"ORT {med['ort']:.2f} ms ({n} rounds)", file=sys.stderr)
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Speedups of the pruned rows over their model's dense row (the first): per runtime, and
    the project's definition, best dense form of either runtime over best pruned form."""
    dense = rows[0]
    for r in rows[1:]:
        r["dense_over_pruned_torch"] = dense["torch_ms"] / r["torch_ms"]
        r["dense_over_pruned_ort"] = dense["ort_ms"] / r["ort_ms"]
        r["best_dense_over_best_pruned"] = min(dense["torch_ms"], dense["ort_ms"]) / min(r["torch_ms"], r["ort_ms"])
        r["mac_cut"] = dense["mmacs_per_image"] / r["mmacs_per_image"]


def table(rows: list[dict]) -> str:
    head = ("| model | variant | input | MMACs/img | rounds | torch eager ms | torch BN-folded ms | ORT ms | "
            "best torch/ORT | dense/pruned torch | dense/pruned ORT | best dense/best pruned | MAC cut |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        ratios = " | ".join(f"{r[k]:.2f}x" if k in r else "-"   # dense rows have no ratio to themselves
                            for k in ("dense_over_pruned_torch", "dense_over_pruned_ort",
                                      "best_dense_over_best_pruned", "mac_cut"))
        lines.append(f"| {r['model']} | {r['variant']} | {r['input']} | {r['mmacs_per_image']:.1f} | {r['rounds']} | "
                     f"{r['torch_eager_ms']:.2f} | {r['torch_folded_ms']:.2f} | {r['ort_ms']:.2f} | {r['torch_over_ort']:.2f}x | {ratios} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="torch intra-op threads = ORT intra_op_num_threads (default: torch's current "
                        f"setting, here {torch.get_num_threads()})")
    p.add_argument("--batch", type=int, default=64, help="ResNet-20 batch size (default: 64)")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per runtime, median reported (default: 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per runtime first (default: 5)")
    p.add_argument("--budget", type=float, default=25.0,
                   help="seconds of timing per model variant before stopping early (>= 5 rounds kept; default: 25)")
    p.add_argument("--ratio", type=float, default=0.5, help="FPGM channel pruning ratio (default: 0.5)")
    p.add_argument("--resnet18", action="store_true", help="also ResNet-18 at 3x224x224, batch 8 (about a minute more)")
    p.add_argument("--resnet50", action="store_true",
                   help="also ResNet-50 (bottleneck) at 3x224x224, batch 8 (about two minutes more)")
    p.add_argument("--ort-spinning", action="store_true",
                   help="let ORT's idle threads spin between calls (default: off, so they do not "
                        "compete with the interleaved torch calls)")
    p.add_argument("--json", help="also write the header and rows as JSON here")
    args = p.parse_args(argv)
    for flag in ("threads", "batch", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1")
    if args.warmup < 0 or not 0 < args.ratio < 1:
        p.error("--warmup must be >= 0 and --ratio in (0, 1)")
    torch.set_num_threads(args.threads)
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        print('error: onnxruntime is not installed: pip install -e ".[onnx]"', file=sys.stderr)
        return 2
    cpu = cpu_header()
    header = {**cpu, "torch": torch.__version__, "onnxruntime": ort.__version__, "threads": args.threads,
              "mkldnn": torch.backends.mkldnn.is_available(), "repeats": args.repeats, "budget_s": args.budget}
    print(f"# {cpu['cpu']}; ISA flags: {cpu['cpu_flags']}; "
          f"torch {torch.__version__} (oneDNN {'on' if header['mkldnn'] else 'off'}, channels-last), "
          f"onnxruntime {ort.__version__}; {args.threads} threads each; median of up to {args.repeats} rounds")
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            rows += bench_net("resnet20", {"in_channels": 1}, (1, 28, 28), args.batch, args, folder)
            if args.resnet18:
                rows += bench_net("resnet18", {}, (3, 224, 224), 8, args, folder)
            if args.resnet50:
                rows += bench_net("resnet50", {}, (3, 224, 224), 8, args, folder)
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(rows))
    if args.json:
        write_text_atomic(args.json, json.dumps({"header": header, "rows": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
