"""CUCB vs dense training on Fashion-MNIST: training MACs and wall time per epoch, parameters
and accuracy of the compact model against the dense baseline.

Runs, per model, a dense ``Trainer`` for ``E + F`` epochs and a ``CUCBTrainer`` for ``E`` bandit
epochs plus ``F`` fine-tune epochs of the compact model (the same number of passes over the
data), one after the other in this process (one heavy process; ``--threads`` 1 by default on
the shared machine). Each run writes its ``metrics.json`` under ``--runs``; ``--report-only``
re-renders the report from them. The report (markdown table + kept-width plot) is generated
from the measured numbers only.

    python benchmarks/cucb_fashion_mnist.py --models resnet20 vgg16 --epochs 4 --finetune 1 \
        --train-limit 20000 6000 --test-limit 5000 --keep 0.5
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages
from dyngate.train.cucb import CUCBTrainer  # noqa: E402
from dyngate.train import TrainConfig, Trainer  # noqa: E402
from models.data import dataset_geometry  # noqa: E402
from fsio import atomic_write, save_figure_atomic, write_text_atomic  # noqa: E402


def _run(cfg: TrainConfig, cucb: bool, skip_existing: bool) -> dict:
    path = os.path.join(cfg.out, "metrics.json")
    if skip_existing and os.path.exists(os.path.join(cfg.out, "final.pt")):
        print(f"reusing {path}", flush=True)
        return json.load(open(path))
    t0 = time.perf_counter()
    trainer = (CUCBTrainer if cucb else Trainer)(cfg, progress=False)
    trainer.fit()
    trainer.save(os.path.join(cfg.out, "final.pt"))
    print(f"{cfg.out}: {time.perf_counter() - t0:.0f} s", flush=True)
    return json.load(open(path))


def _dense_train_macs(model: str) -> float:
    """3x the forward MACs per image of the dense model (the CUCB trainer's convention)."""
    import dyngate  # noqa: PLC0415
    import models  # noqa: PLC0415
    from dyngate.train.cucb import full_selection, make_plan  # noqa: PLC0415
    cin, size, classes = dataset_geometry("fashion-mnist")
    m = models.build(model, in_channels=cin, num_classes=classes)
    view = dyngate.capture(m, torch.zeros(1, cin, size, size))
    return 3.0 * make_plan(view, full_selection(view)).total_macs


def _widths(model_name: str, compact_path: str) -> tuple[list[str], list[int], list[int]]:
    import dyngate  # noqa: PLC0415
    import models  # noqa: PLC0415
    cin, _, classes = dataset_geometry("fashion-mnist")
    dense = models.build(model_name, in_channels=cin, num_classes=classes)
    compact = dyngate.load(compact_path)
    names, full, kept = [], [], []
    for name, m in dense.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            names.append(name)
            full.append(m.out_channels)
            kept.append(compact.get_submodule(name).out_channels)
    return names, full, kept


def _cucb_dir(runs: str, model: str, keep: float, c: float) -> str:
    """Run folder of a CUCB configuration (the default one keeps the short name)."""
    tag = "" if (keep, c) == (0.5, 1.5) else f"_k{keep}_c{c}"
    return os.path.join(runs, f"{model}_cucb{tag}")


def _arm_means(compact_path: str) -> list[tuple[list[float], int]] | None:
    """Per group, the bandit's empirical means (as stored in the compact checkpoint) and how
    many arms the compact model kept."""
    from dyngate.checkpoint import read  # noqa: PLC0415
    trainer = read(compact_path)["extra"].get("trainer", {})
    sel, st = trainer.get("cucb_selection"), trainer.get("cucb")
    if not st or not sel:
        return None
    return [(st[g]["means"], len(sel[g])) for g in sorted(st, key=int)]


def summarise(model: str, dense: dict, cucb: dict, cucb_dir: str) -> dict:
    d_rows, c_rows = dense["epochs"], cucb["epochs"]
    bandit = [r for r in c_rows if r["phase"] == "cucb"]
    tune = [r for r in c_rows if r["phase"] == "finetune"]
    final = c_rows[-1]
    images = dense["config"]["train_limit"] or 60000
    per_image = _dense_train_macs(model)
    dense_macs = per_image * images * len(d_rows)
    # fine-tune steps are dense steps of the compact model: 3x its forward MACs per image
    cucb_macs = sum(r["train_macs"] for r in bandit) + 3.0 * final["inference_macs"] * images * len(tune)
    dense_params = sum(p.numel() for p in _build(model).parameters())
    return {
        "model": model, "train_images": images, "dense_epochs": len(d_rows),
        "bandit_epochs": len(bandit), "finetune_epochs": len(tune),
        "keep": cucb["config"]["keep"], "ucb_c": cucb["config"]["ucb_c"],
        "dense_acc": d_rows[-1]["test_acc"], "compact_acc": final["test_acc"],
        "subnet_acc_before_finetune": bandit[-1]["test_acc"],
        "dense_params": dense_params, "compact_params": final["params"],
        "dense_train_macs": dense_macs, "cucb_train_macs": cucb_macs,
        "dense_s_per_epoch": sum(r["train_seconds"] for r in d_rows) / len(d_rows),
        "cucb_s_per_epoch": [r["train_seconds"] for r in bandit + tune],
        "dense_s_total": sum(r["train_seconds"] for r in d_rows),
        "cucb_s_total": sum(r["train_seconds"] for r in bandit + tune),
        "bandit_mac_reduction_per_epoch": [r["train_mac_reduction"] for r in bandit],
        "dense_inference_macs": per_image / 3.0, "compact_inference_macs": final["inference_macs"],
        "widths": _widths(model, os.path.join(cucb_dir, "final.pt")),
        "arm_means": _arm_means(os.path.join(cucb_dir, "final.pt")),
    }


def _timing_lines(rows: list[dict]) -> list[str]:
    timed = [r for r in rows if r.get("step_s")]
    if not timed:
        return []
    out = ["", "Per-step wall time at the target keep, dense and CUCB steps alternated on the same "
           "batch of 128 (median; robust to the other processes' load, unlike the per-epoch times):",
           "", "| model | dense step (s) | CUCB step (s) | speed-up | MAC reduction (last bandit epoch) |",
           "|---|---|---|---|---|"]
    for r in timed:
        st = r["step_s"]
        out.append(f"| {r['model']} | {st['dense']:.3f} | {st['cucb']:.3f} | "
                   f"{st['dense'] / st['cucb']:.2f}x | {r['bandit_mac_reduction_per_epoch'][-1]:.2f}x |")
    return out


def step_timing(model: str, keep: float, reps: int, batch: int = 128) -> dict:
    """Median wall time of one dense SGD step and one CUCB step at the target keep, measured
    alternately on the same batch so that load from other processes hits both alike."""
    import numpy as np  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    import dyngate  # noqa: PLC0415
    from dyngate.train.cucb import (ChannelBandits, SlicedExecutor, make_plan, row_scores,  # noqa: PLC0415
                                    sliced_sgd_step, taylor_scores)
    from dyngate.train import param_groups  # noqa: PLC0415
    cin, size, _ = dataset_geometry("fashion-mnist")
    m = _build(model).to(memory_format=torch.channels_last).train()
    view = dyngate.capture(m, torch.zeros(1, cin, size, size))
    ex = SlicedExecutor(view)
    opt = torch.optim.SGD(param_groups(m, 5e-4), lr=0.01, momentum=0.9, nesterov=True)
    bandits = ChannelBandits({g.id: g.size for g in view.groups if g.prunable})
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cin, size, size, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g)

    def dense():
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def cucb():
        sel = bandits.select(keep)
        plan = make_plan(view, sel)
        run = ex.run(x, plan, train=True, record=True)
        F.cross_entropy(run.output, y).backward()
        sliced_sgd_step(opt, run.slices)
        bandits.update(sel, row_scores(view, plan, taylor_scores(run.measured)))

    times: dict[str, list[float]] = {"dense": [], "cucb": []}
    for i in range(reps + 1):
        for name, fn in (("dense", dense), ("cucb", cucb)):
            t0 = time.perf_counter()
            fn()
            if i:  # the first round warms up allocator and bandit (all arms unplayed)
                times[name].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def _build(model: str):
    import models  # noqa: PLC0415
    cin, _, classes = dataset_geometry("fashion-mnist")
    return models.build(model, in_channels=cin, num_classes=classes)


def _arms_plot(rows: list[dict], png: str) -> bool:
    """Sorted empirical means of every group's arms, kept ones highlighted: how clearly the
    bandit separates the channels it keeps from the ones it drops."""
    runs = [r for r in rows if r.get("arm_means")]
    if not runs:
        return False
    fig, axes = plt.subplots(len(runs), 1, figsize=(10, 2.8 * len(runs)), squeeze=False)
    for ax, r in zip(axes[:, 0], runs):
        x0 = 0
        for means, kept in r["arm_means"]:
            m = sorted(means, reverse=True)
            ax.bar(range(x0, x0 + kept), m[:kept], width=1.0, color="#1f77b4")
            ax.bar(range(x0 + kept, x0 + len(m)), m[kept:], width=1.0, color="#ccc")
            x0 += len(m) + 4
        ax.set_ylabel("mean reward")
        ax.set_xticks([])
        ax.set_title(f"{r['model']} keep {r['keep']} c {r['ucb_c']}: arms per group (sorted; "
                     "blue = kept in the compact model)", fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, png, dpi=110)
    return True


def report(rows: list[dict], argv: list[str], md: str, png: str, note: str) -> None:
    lines = ["# CUCB dynamic channel execution on Fashion-MNIST", "",
             "| model | keep | c | dense acc | compact acc | delta (pt) | dense params | compact params | "
             "params ratio | training MACs dense / CUCB | ratio | s/epoch dense | s/epoch CUCB "
             "(mean) | wall ratio | inference MACs ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cucb_mean = sum(r["cucb_s_per_epoch"]) / len(r["cucb_s_per_epoch"])
        lines.append(
            f"| {r['model']} | {r['keep']} | {r['ucb_c']} | {100 * r['dense_acc']:.2f} | {100 * r['compact_acc']:.2f} | "
            f"{100 * (r['compact_acc'] - r['dense_acc']):+.2f} | {r['dense_params']:,} | "
            f"{r['compact_params']:,} | {r['dense_params'] / r['compact_params']:.2f}x | "
            f"{r['dense_train_macs'] / 1e12:.2f}T / {r['cucb_train_macs'] / 1e12:.2f}T | "
            f"{r['dense_train_macs'] / r['cucb_train_macs']:.2f}x | {r['dense_s_per_epoch']:.0f} | "
            f"{cucb_mean:.0f} | {r['dense_s_total'] / r['cucb_s_total']:.2f}x | "
            f"{r['dense_inference_macs'] / r['compact_inference_macs']:.2f}x |")
    lines += ["", "Generated by `benchmarks/cucb_fashion_mnist.py` from the runs' `metrics.json`.", "",
              note]   # the headline table first, its budget and setup right below
    lines += ["", "Per-epoch detail (CUCB: bandit epochs then fine-tune epochs of the compact model):",
              "", "| model | keep, c | dense s/epoch | CUCB s/epoch | bandit-epoch training-MAC reduction | "
              "sub-network acc before fine-tune |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['keep']}, {r['ucb_c']} | {r['dense_s_per_epoch']:.0f} | "
                     + ", ".join(f"{s:.0f}" for s in r["cucb_s_per_epoch"]) + " | "
                     + ", ".join(f"{x:.2f}x" for x in r["bandit_mac_reduction_per_epoch"])
                     + f" | {100 * r['subnet_acc_before_finetune']:.2f} |")
    lines += _timing_lines(rows)
    arms_png = png.replace(".png", "_arms.png")
    lines += ["", f"![kept widths]({os.path.basename(png)})", ""]
    if _arms_plot(rows, arms_png):
        lines += [f"![arm statistics]({os.path.basename(arms_png)})", ""]
    commands = list(dict.fromkeys(r.get("command", shlex.join(argv)) for r in rows))
    lines += ["Commands:", "", "```"] + [f"python benchmarks/cucb_fashion_mnist.py {c}"
                                         for c in commands] + ["```", ""]
    write_text_atomic(md, "\n".join(lines))
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 3.2 * len(rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        names, full, kept = r["widths"]
        pos = range(len(names))
        ax.bar(pos, full, color="#ccc", label="dense")
        ax.bar(pos, kept, color="#1f77b4", label=f"compact (keep {r['keep']})")
        ax.set_xticks(list(pos), names, rotation=70, fontsize=7)
        ax.set_ylabel("output channels")
        ax.set_title(f"{r['model']}: kept output channels per conv")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, png, dpi=110)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "vgg16"])
    p.add_argument("--epochs", type=int, nargs="+", default=[4], help="bandit epochs E, per model")
    p.add_argument("--finetune", type=int, default=1, help="fine-tune epochs F")
    p.add_argument("--warmup", type=int, default=1, help="keep annealing epochs")
    p.add_argument("--train-limit", type=int, nargs="+", default=[None], help="per model")
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--ucb-c", type=float, default=1.5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/cucb_bench")
    p.add_argument("--md", default="results/cucb_fashion_mnist.md")
    p.add_argument("--png", default="results/cucb_fashion_mnist_widths.png")
    p.add_argument("--json", default="results/cucb_fashion_mnist.json")
    p.add_argument("--note", default="", help="a line about the budget/machine for the report")
    p.add_argument("--skip-existing", action="store_true", help="reuse finished runs")
    p.add_argument("--append", action="store_true",
                   help="add to the rows already in --json (same model/keep/c replaced)")
    p.add_argument("--step-reps", type=int, default=0,
                   help="also time N alternated dense/CUCB steps per model (0: skip)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    per = lambda v, i: v[i] if i < len(v) else v[-1]  # noqa: E731
    rows = json.load(open(args.json)) if args.append and os.path.exists(args.json) else []
    for i, model in enumerate(args.models):
        common = dict(model=model, dataset="fashion-mnist", lr=args.lr, threads=args.threads,
                      train_limit=per(args.train_limit, i), test_limit=args.test_limit)
        e = per(args.epochs, i)
        dense = _run(TrainConfig(**common, epochs=e + args.finetune,
                                 out=os.path.join(args.runs, f"{model}_dense")), False, args.skip_existing)
        cucb = _run(TrainConfig(**common, epochs=e, cucb=True, keep=args.keep, ucb_c=args.ucb_c,
                                cucb_warmup=args.warmup, cucb_finetune=args.finetune,
                                out=_cucb_dir(args.runs, model, args.keep, args.ucb_c)), True,
                    args.skip_existing)
        row = summarise(model, dense, cucb, _cucb_dir(args.runs, model, args.keep, args.ucb_c))
        row["command"] = shlex.join(argv)
        key = (model, args.keep, args.ucb_c)
        old = [r for r in rows if (r["model"], r["keep"], r["ucb_c"]) == key]
        rows = [r for r in rows if (r["model"], r["keep"], r["ucb_c"]) != key] + [row]
        if args.step_reps:
            row["step_s"] = step_timing(model, args.keep, args.step_reps)
        elif old and old[0].get("step_s"):  # re-rendering: keep the earlier measurement
            row["step_s"], row["command"] = old[0]["step_s"], old[0].get("command", row["command"])
        with atomic_write(args.json) as f:
            json.dump(rows, f, indent=1)
        report(rows, argv, args.md, args.png, args.note)
        print(open(args.md).read(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
