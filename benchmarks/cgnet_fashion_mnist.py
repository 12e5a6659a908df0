"""Experiment: dense ResNet-20 vs CGNet-gated ResNet-20s (KD from the dense model) on
Fashion-MNIST at several gate targets T. Writes results/fashion_mnist_cgnet.md, a CSV and a
plot of test accuracy against MAC reduction, and copies the best gated checkpoint (and its
teacher) to checkpoints/.

    python benchmarks/cgnet_fashion_mnist.py --dense-epochs 6 --gated-epochs 2 --targets 0.5 1.0 1.5
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages
from dyngate.train import TrainConfig  # noqa: E402
from fsio import atomic_write, save_figure_atomic  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd: list[str], log: str) -> float:
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return time.perf_counter() - t0


def evaluate(ckpt: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "dyngate", "eval", ckpt, "--json"], check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/fmnist")
    ap.add_argument("--dense-epochs", type=int, default=6)
    ap.add_argument("--gated-epochs", type=int, default=2)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 1.0, 1.5])
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--gate-lambda", type=float, default=1e-2)
    ap.add_argument("--gated-lr", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-dense", action="store_true", help="reuse OUT/dense/final.pt")
    ap.add_argument("--tag", default="", help="suffix of the gated run folders (gated_T<T><tag>)")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: evaluate the finished runs under OUT and write the results")
    args = ap.parse_args()
    py = sys.executable
    out = os.path.join(ROOT, args.out)
    os.makedirs(out, exist_ok=True)
    commands, rows = [], []
    common = ["--model", "resnet20", "--dataset", "fashion-mnist", "--threads", str(args.threads),
              "--seed", "0", "--batch-size", "128"]
    dense_dir = os.path.join(args.out, "dense")
    dense_cmd = [py, "-m", "dyngate", "train", *common, "--epochs", str(args.dense_epochs),
                 "--lr", "0.1", "--out", dense_dir]
    commands.append(dense_cmd)
    if not (args.skip_dense or args.report_only):
        run(dense_cmd, os.path.join(out, "dense.log"))
    dense_ckpt = os.path.join(dense_dir, "final.pt")
    dense_meta = json.load(open(os.path.join(ROOT, dense_dir, "metrics.json")))
    hist = dense_meta["epochs"]
    commands[0] = _command_of(dense_meta["config"], py)
    res = evaluate(dense_ckpt)
    rows.append({"name": "dense", "target": None, "accuracy": res["accuracy"],
                 "mac_reduction": res["mac_reduction"], "gated_mac_reduction": 1.0,
                 "train_minutes": sum(h["train_seconds"] for h in hist) / 60, "ckpt": dense_ckpt})
    runs = [(t, os.path.join(args.out, f"gated_T{t:g}{args.tag}")) for t in args.targets]
    if args.report_only:  # every finished gated run under OUT, whatever made it
        runs = []
        for name in sorted(os.listdir(out)):
            cfg_path = os.path.join(out, name, "metrics.json")
            if name.startswith("gated_") and os.path.exists(os.path.join(out, name, "final.pt")):
                runs.append((json.load(open(cfg_path))["config"]["target"], os.path.join(args.out, name)))
    for t, d in runs:
        if not args.report_only:
            cmd = [py, "-m", "dyngate", "train", *common, "--epochs", str(args.gated_epochs),
                   "--gated", "--partitions", str(args.partitions), "--target", str(t),
                   "--threshold-init", str(t), "--gate-lambda", str(args.gate_lambda),
                   "--lr", str(args.gated_lr), "--teacher", dense_ckpt, "--init", dense_ckpt, "--out", d]
            run(cmd, os.path.join(out, os.path.basename(d) + ".log"))
        meta = json.load(open(os.path.join(ROOT, d, "metrics.json")))
        commands.append(_command_of(meta["config"], py))
        hist = meta["epochs"]
        res = evaluate(os.path.join(d, "final.pt"))
        rows.append({"name": f"gated T={t:g}, {len(hist)} ep", "target": t, "epochs": len(hist),
                     "accuracy": res["accuracy"], "mac_reduction": res["mac_reduction"],
                     "gated_mac_reduction": res["gated_mac_reduction"],
                     "train_minutes": sum(h["train_seconds"] for h in hist) / 60,
                     "ckpt": os.path.join(d, "final.pt")})
        print(rows[-1], flush=True)
    write_results(rows, commands, args)


def _command_of(cfg: dict, py: str) -> list[str]:
    """The ``dyngate train`` command line that reproduces a run from its logged config."""
    defaults = TrainConfig()
    cmd = [py, "-m", "dyngate", "train"]
    for key, value in cfg.items():
        if value == getattr(defaults, key) and key not in ("model", "dataset", "seed"):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            cmd.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            cmd += [flag, str(value)]
    return cmd


def _ship(src: str, dst: str) -> None:
    """Copy a checkpoint for the repository without its optimizer/RNG state (half the size);
    the training config and the per-epoch history stay."""
    payload = torch.load(os.path.join(ROOT, src), map_location="cpu", weights_only=True)
    trainer = payload["extra"].get("trainer", {})
    payload["extra"]["trainer"] = {k: trainer[k] for k in ("config", "history", "epoch", "dense_accuracy")
                                   if k in trainer}
    torch.save(payload, os.path.join(ROOT, dst))


def write_results(rows: list[dict], commands: list[list[str]], args) -> None:
    res_dir = os.path.join(ROOT, "results")
    os.makedirs(res_dir, exist_ok=True)
    dense = rows[0]
    with atomic_write(os.path.join(res_dir, "fashion_mnist_cgnet.json")) as f:
        json.dump(rows, f, indent=1)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    g = rows[1:]
    ax.plot([r["gated_mac_reduction"] for r in g], [100 * r["accuracy"] for r in g], "o-",
            label="CGNet ResNet-20 (gated layers)")
    ax.plot([r["mac_reduction"] for r in g], [100 * r["accuracy"] for r in g], "s--",
            label="CGNet ResNet-20 (whole network)")
    for r in g:
        ax.annotate(r["name"].replace("gated ", ""), (r["gated_mac_reduction"], 100 * r["accuracy"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(100 * dense["accuracy"], color="k", lw=1, label="dense ResNet-20")
    ax.axhline(100 * dense["accuracy"] - 0.5, color="k", lw=0.8, ls=":", label="dense - 0.5 pt")
    ax.set_xlabel("MAC reduction (x)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, os.path.join(res_dir, "fashion_mnist_cgnet.png"), dpi=120)
    # best gated: the largest gated-layer reduction within 0.5 pt of dense, else the most accurate
    ok = [r for r in g if dense["accuracy"] - r["accuracy"] <= 0.005]
    best = max(ok, key=lambda r: r["gated_mac_reduction"]) if ok else max(g, key=lambda r: r["accuracy"])
    os.makedirs(os.path.join(ROOT, "checkpoints"), exist_ok=True)
    _ship(best["ckpt"], "checkpoints/resnet20_fmnist_cgnet.pt")
    _ship(dense["ckpt"], "checkpoints/resnet20_fmnist_dense.pt")
    lines = ["| model | test acc. (%) | Δ vs dense (pt) | MAC reduction, whole net | MAC reduction, gated layers | train time (min) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {100 * r['accuracy']:.2f} | {100 * (r['accuracy'] - dense['accuracy']):+.2f} | "
                     f"{r['mac_reduction']:.2f}x | {r['gated_mac_reduction']:.2f}x | {r['train_minutes']:.1f} |")
    with atomic_write(os.path.join(res_dir, "fashion_mnist_cgnet_table.md")) as f:
        f.write("\n".join(lines) + "\n\nShipped: checkpoints/resnet20_fmnist_cgnet.pt = " + best["name"] + "\n\n")
        f.write("Commands:\n\n```\n" + "\n".join(" ".join(c).replace(sys.executable, "python") for c in commands) + "\n```\n")
    print("\n".join(lines))
    print("best:", best["name"])


if __name__ == "__main__":
    main()
