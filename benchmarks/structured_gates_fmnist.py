"""Report: accuracy, MAC reduction and real whole-network CPU speedup of gated ResNet-20s on
Fashion-MNIST against the same dense model, for per-element (CGNet) and block gates.

Every checkpoint is evaluated by ``python -m dyngate eval CKPT --json --time`` in a fresh
process (full test set; timing: interleaved dense/gated batches, medians), once on the CPU's
own ISA and once capped to AVX2 (``--isa avx2`` caps the gated kernels, oneDNN and ATen, so the
dense baseline is capped too). The tuning cache is fresh per run (a private
``DYNGATE_KERNEL_CACHE``), so path choices are measured on the machine as it is now.

    python benchmarks/structured_gates_fmnist.py \\
        --control "dense, fine-tuned 3 ep=runs/fmnist13/dense_ft3/final.pt" \\
        --control "dense, fine-tuned 15 ep=runs/fmnist13/dense_ft15/final.pt" \\
        --run "per-element, rule all, T=0.8=runs/fmnist13/elem_T0.8/final.pt" \\
        --run "tile 7x7 x 16 ch, 15 ep=runs/fmnist13/tile7_e15/final.pt@2" \\
        --run "tile 7x7 x 16 ch, rule all, T=0.2=runs/fmnist13/tile7_G16_T0.2/final.pt" \\
        --json results/fashion_mnist_structured.json --plot results/fashion_mnist_structured.png
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without reinstalling
from fsio import save_figure_atomic, write_text_atomic  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sibling benchmark modules
from cpu_info import cpu_model  # noqa: E402

ISA_ENV = {"avx2": {"DYNGATE_ISA": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
           "native": {}}


def cpu_header() -> str:
    """lscpu's model (the shared :func:`cpu_info.cpu_model`) and the SIMD flags, without torch."""
    with open("/proc/cpuinfo") as f:
        line = next((ln for ln in f if ln.startswith("flags")), "flags:")
        flags = " ".join(sorted(x for x in line.split(":", 1)[1].split() if x.startswith(("avx", "fma", "amx"))))
    return f"CPU: {cpu_model() or '?'}; ISA flags: {flags}; cores visible: {os.cpu_count()}"


def evaluate(ckpt: str, isa: str, threads: int, batch: int, batches: int, limit: int | None) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, DYNGATE_KERNEL_CACHE=cache, OMP_NUM_THREADS=str(threads), **ISA_ENV[isa])
        cmd = [sys.executable, "-m", "dyngate", "eval", ckpt, "--json", "--time",
               "--time-batch-size", str(batch), "--time-batches", str(batches)]
        if limit:
            cmd += ["--limit", str(limit)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, env=env).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--control", required=True, action="append", metavar="LABEL=CKPT",
                    help="an equally fine-tuned dense model, the accuracy reference (repeatable: one "
                         "per training length; a run names its own with @K)")
    ap.add_argument("--run", action="append", default=[], metavar="LABEL=CKPT[@K]",
                    help="a gated checkpoint, its accuracy compared against the K-th --control "
                         "(default 1) (repeatable)")
    ap.add_argument("--isa", nargs="+", default=["native", "avx2"], choices=sorted(ISA_ENV),
                    help="ISA builds to time (default: native avx2)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    ap.add_argument("--batch", type=int, default=256, help="images per timed batch (default: 256)")
    ap.add_argument("--batches", type=int, default=8, help="timed batches, median (default: 8)")
    ap.add_argument("--limit", type=int, default=None, help="test images for accuracy (default: all)")
    ap.add_argument("--json", default=None, help="write every measurement here (default: none)")
    ap.add_argument("--plot", default=None, help="write the accuracy/speedup plot here (default: none)")
    args = ap.parse_args()
    print(cpu_header())
    print(f"threads {args.threads}, batch {args.batch}, {args.batches} timed batches (median)\n")
    runs = []
    for spec in args.run:
        name, path = spec.rsplit("=", 1)
        path, _, k = path.partition("@")
        if not (k or "1").isdigit() or not 1 <= int(k or 1) <= len(args.control):
            ap.error(f"--run {spec!r}: @K must name one of the {len(args.control)} --control models (1-based)")
        runs.append((name, path, int(k or 1) - 1))
    controls = []
    for spec in args.control:
        label, ckpt = spec.rsplit("=", 1)
        controls.append({"label": label, "checkpoint": ckpt,
                         "accuracy": evaluate(ckpt, "native", args.threads, args.batch, 1, args.limit)["accuracy"]})
    rows = []
    for name, path, k in runs:
        control = controls[k]
        res = {isa: evaluate(path, isa, args.threads, args.batch, args.batches, args.limit) for isa in args.isa}
        first = res[args.isa[0]]
        gated = [l for l in first["layers"] if l["gated"]]
        rows.append({"label": name, "checkpoint": path, "accuracy": first["accuracy"],
                     "control": control["label"], "delta_pt": 100 * (first["accuracy"] - control["accuracy"]),
                     "mac_reduction": first["mac_reduction"], "gated_mac_reduction": first["gated_mac_reduction"],
                     "block_density": (sum(l["block_density"] for l in gated) / len(gated)) if gated else 1.0,
                     "gated_layers": len(gated), "dense_accuracy_at_training": first.get("dense_accuracy"),
                     **{f"{isa}_{k}": res[isa][k] for isa in args.isa
                        for k in ("dense_ms", "gated_ms", "real_speedup")}})
    head = ("| model | test acc. (%) | Δ vs dense control (pt) | MAC red. whole net | MAC red. gated layers "
            "| mean block density | " + " | ".join(f"real speedup {i}" for i in args.isa) + " |")
    print(head)
    print("|" + "---|" * (6 + len(args.isa)))
    many = len(controls) > 1      # then each control is numbered and each Δ names its control
    for i, c in enumerate(controls):
        print(f"| {f'#{i + 1} ' if many else ''}{c['label']} | {100 * c['accuracy']:.2f} | +0.00 | 1.00x "
              "| 1.00x | 1.00 | " + " | ".join("1.00x" for _ in args.isa) + " |")
    for (_, _, k), r in zip(runs, rows):
        print(f"| {r['label']} | {100 * r['accuracy']:.2f} | {r['delta_pt']:+.2f}{f' (vs #{k + 1})' if many else ''} "
              f"| {r['mac_reduction']:.2f}x "
              f"| {r['gated_mac_reduction']:.2f}x | {r['block_density']:.2f} | "
              + " | ".join(f"{r[f'{i}_real_speedup']:.2f}x ({r[f'{i}_dense_ms']:.0f}/{r[f'{i}_gated_ms']:.0f} ms)"
                           for i in args.isa) + " |")
    if args.json:
        write_text_atomic(args.json, json.dumps({"cpu": cpu_header(), "threads": args.threads, "batch": args.batch,
                                             "control": controls[0], "controls": controls,
                                             "runs": rows}, indent=1))
    if args.plot:
        _plot(args.plot, controls, rows, args.isa)


def _plot(path: str, controls: list[dict], rows: list[dict], isas: list[str]) -> None:
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6))
    for ax, key, xlabel in ((axes[0], "mac_reduction", "MAC reduction, whole network (x)"),
                            (axes[1], f"{isas[0]}_real_speedup", f"real CPU speedup, whole network ({isas[0]}, x)")):
        for c, shade in zip(controls, ("k", "0.45", "0.7")):
            ax.scatter([1.0], [100 * c["accuracy"]], marker="s", color=shade, label=c["label"])
        for r in rows:
            ax.scatter([r[key]], [100 * r["accuracy"]], label=r["label"])
        ax.axvline(1.0, color="grey", lw=0.6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()   # below the panels, clear of the points
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, frameon=False)
    fig.suptitle("Gated ResNet-20 on Fashion-MNIST: accuracy against MACs and wall clock")
    fig.tight_layout(rect=(0, 0.05 + 0.03 * ((len(controls) + len(rows) + 1) // 2), 1, 1))
    save_figure_atomic(fig, path, dpi=120)


if __name__ == "__main__":
    main()
