"""Static pruning benchmark: a dense ResNet-20 or ResNet-56 (``--checkpoint``) on Fashion-MNIST
pruned to about a target share of the dense MACs with each criterion, a fixed small fine-tuning
budget, then accuracy, MACs, params and CPU latency (batch 64) against dense; Torch-Pruning side by
side where it can run.

Three comparisons:
  * "full": dyngate.prune over every prunable group (residual streams through the option-A
    shortcuts included), global ranking, the ratio bisected per criterion to hit the MAC target.
  * "latency": the same groups, but widths chosen for a latency budget from a measured per-layer
    latency table (dyngate.latency, HALP-style); the budget is bisected to hit the MAC target, so
    the rows compare with "full" at equal MACs.
  * "inner": only the block-internal groups (conv1 outputs of each block), local ranking, the same
    ratio for dyngate and Torch-Pruning. Torch-Pruning cannot prune the option-A residual streams
    (it treats F.pad as element-wise, so the stage boundaries come out with mismatched widths),
    hence this restricted setting for the side-by-side.

    python benchmarks/bench_pruning.py --checkpoint runs/fmnist/dense/final.pt
Rows are appended to --json as they finish (a rerun skips rows already there); the markdown
table is regenerated from it each time. The latency taken during training is a rough estimate;
``--latency-only`` re-times every saved model on a quiet machine, in four forms (eager, BN-folded
NCHW, ``dyngate.compile`` "torch" and "inductor"), in several passes (see ``timed_forms``).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dyngate  # noqa: E402
from dyngate.pruning.criteria import CRITERIA  # noqa: E402
from dyngate.pruning.latency import FORMS as TABLE_FORMS, LatencyTable, measure  # noqa: E402
from dyngate.train.prune_schedule import ScheduledTrainer  # noqa: E402
from dyngate.train import TrainConfig  # noqa: E402
from models.data import load_dataset  # noqa: E402
from fsio import atomic_write, save_figure_atomic  # noqa: E402

X1 = torch.zeros(1, 1, 28, 28)


def macs_params(model: nn.Module) -> tuple[int, int]:
    return (int(dyngate.profile(model, X1).totals["dense_macs"]),
            sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def accuracy(model: nn.Module, data, limit: int | None = None) -> float:
    model.eval()
    x, y = data.tensors
    if limit:
        x, y = x[:limit], y[:limit]
    correct = sum(int((model(x[i:i + 500]).argmax(1) == y[i:i + 500]).sum()) for i in range(0, len(x), 500))
    return correct / len(x)


def nchw_folded(model: nn.Module) -> nn.Module:
    """BatchNorm folded but NCHW: dyngate.compile(target="torch") without its channels_last,
    timed to show what the layout alone is worth."""
    return dyngate.compile(model, "torch", example_input=X1).module.to(memory_format=torch.contiguous_format)


# latency forms timed by --latency-only: name -> (header, model -> callable)
FORMS = {
    "eager": ("eager", lambda m, x: m.eval()),
    "fused": ("BN-folded NCHW", lambda m, x: nchw_folded(m)),
    "torch": ("compile 'torch' (BN-folded, channels_last)", lambda m, x: dyngate.compile(m, "torch", example_input=x)),
    "inductor": ("compile 'inductor'", lambda m, x: dyngate.compile(m, "inductor", example_input=x)),
}


def in_forms(model: nn.Module, x: torch.Tensor) -> dict:
    """``model`` in every form of ``FORMS``: form name -> callable."""
    return {tag: make(model, x) for tag, (_, make) in FORMS.items()}


@torch.inference_mode()
def _interleaved_ms(dense: nn.Module, pruned: nn.Module, rounds: int, warmup: int, block: int = 1) -> tuple[list, list]:
    """Per-call ms of dense and pruned at batch 64: ``rounds`` calls each, in alternating runs of
    ``block`` calls, so slow drift of the machine hits both alike. ``block=1`` switches model on
    every call, and every call then starts with the other model's data in the caches: on this box
    that adds a near-constant cost per call, which inflates the smaller model's ratio (dense vs
    global FPGM at 0.50 MACs: 0.69 with single calls, 0.62-0.64 in runs of 20). A deployed model
    runs back to back, so :func:`latency_median` uses runs of 10; a median is barely moved by each run's cold first call."""
    x = torch.randn(64, 1, 28, 28)
    for m in (dense, pruned):
        if isinstance(m, nn.Module):
            m.eval()
    for _ in range(warmup):
        dense(x), pruned(x)
    td, tp_ = [], []
    for _ in range(max(1, rounds // block)):
        for m, acc in ((dense, td), (pruned, tp_)):
            for _ in range(block):
                t0 = time.perf_counter()
                m(x)
                acc.append((time.perf_counter() - t0) * 1e3)
    return td, tp_


def latency_median(dense: nn.Module, pruned: nn.Module, rounds: int = 100) -> tuple[float, float, float]:
    """Median ms of dense and pruned over ``rounds`` calls each, alternated in runs of 10 (for a
    quiet machine; :func:`latency_ratio` is the shared-machine variant). Returns (dense, pruned, ratio)."""
    import statistics  # noqa: PLC0415
    td, tp_ = _interleaved_ms(dense, pruned, rounds, warmup=5, block=10)
    d, p = statistics.median(td), statistics.median(tp_)
    return d, p, p / d


def timed_forms(dense_forms: dict, candidates: dict, mac_ratio: dict, threads: int, repeats: int,
                rounds: int) -> dict:
    """Quiet-machine timing of every candidate against dense in every form: ``candidates`` maps a
    name to {form: callable}. The box is noisy (a dense model's median moves by about 5% between
    passes), so ``repeats`` passes go over all (candidate, form) pairs, each timing the pair once
    with :func:`latency_median`; an entry keeps the median ratio over passes and its range."""
    import statistics  # noqa: PLC0415
    from tqdm import tqdm  # noqa: PLC0415
    got: dict = {(n, t): [] for n, fs in candidates.items() for t in fs}
    for _ in tqdm(range(repeats), desc="timing passes"):
        for (n, t), acc in got.items():
            acc.append(latency_median(dense_forms[t], candidates[n][t], rounds))
    out: dict = {n: {} for n in candidates}
    for (n, t), acc in got.items():
        ratios = [r for _, _, r in acc]
        lat = statistics.median(ratios)
        out[n][t] = dict(threads=threads, repeats=repeats, calls=rounds,
                         dense_ms=statistics.median(d for d, _, _ in acc),
                         pruned_ms=statistics.median(p for _, p, _ in acc),
                         ratio=lat, ratio_min=min(ratios), ratio_max=max(ratios),
                         gain_vs_mac=(1 - lat) / max(1e-9, 1 - mac_ratio[n]))
    return out


def latency_ratio(dense: nn.Module, pruned: nn.Module, rounds: int = 20) -> tuple[float, float, float]:
    """Fastest-of-``rounds`` ms of dense and pruned. The box is shared with a training run, so
    medians swing by 30%+ between calls; the minimum is the least disturbed estimate.
    Returns (dense, pruned, ratio)."""
    td, tp_ = _interleaved_ms(dense, pruned, rounds, warmup=3)
    d, p = min(td), min(tp_)
    return d, p, p / d


def inner_ignore(model: nn.Module) -> list[str]:
    """Every layer except the block-internal conv1s: their output groups stay whole."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
            and not (n.startswith("layer") and n.endswith("conv1"))]


def bisect_ratio(fn, dense_macs: int, target: float, lo: float = 0.0, hi: float = 0.95,
                 iters: int = 9) -> tuple[float, nn.Module]:
    """The ratio whose pruned model's MACs come closest to ``target`` of the dense MACs (MACs fall
    with the ratio). Channel ranking moves the MACs almost continuously; a latency budget moves
    them in jumps (one knapsack step can drop a whole plateau), so the two sides of the last
    bisection interval are compared instead of always taking the side above the target."""
    above, below = (lo, None, 0), (hi, None, 0)   # (ratio, model, MACs) on each side of the target
    for _ in range(iters):
        mid = (lo + hi) / 2
        try:
            m = fn(mid)
            macs = macs_params(m)[0]
        except dyngate.ConversionError:
            m, macs = None, 0
        if m is not None and macs >= target * dense_macs:
            lo, above = mid, (mid, m, macs)
        else:
            hi = mid
            if m is not None:
                below = (mid, m, macs)
    if above[1] is None:
        m = fn(lo)
        above = (lo, m, macs_params(m)[0])
    if below[1] is None:
        return above[:2]
    return min((above, below), key=lambda rmm: abs(rmm[2] / dense_macs - target))[:2]


def tp_prune(model: nn.Module, criterion: str, ratio: float, data) -> nn.Module:
    import torch_pruning as tp
    m = copy.deepcopy(model).eval()
    imp = {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1, group_reduction="first", normalizer=None),
           "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
           "fpgm": lambda: tp.importance.FPGMImportance(),
           "bn_scale": lambda: tp.importance.BNScaleImportance(),
           "taylor": lambda: tp.importance.GroupTaylorImportance(),
           "random": lambda: tp.importance.RandomImportance()}[criterion]()
    ignored = [m.get_submodule(n) for n in inner_ignore(m)]
    pr = tp.pruner.BasePruner(m, X1, importance=imp, pruning_ratio=ratio, global_pruning=False,
                              ignored_layers=ignored)
    if criterion == "taylor":
        m.zero_grad()
        for x, y in data:
            F.cross_entropy(m(x), y).backward()
    pr.step()
    m.zero_grad(set_to_none=True)
    return m


def latency_table(dense: nn.Module, xb: torch.Tensor, args) -> LatencyTable:
    """The table the latency-budget rows prune against: loaded, or measured now (batch 64,
    ``--latency-threads``) and saved."""
    path = args.latency_table or os.path.join(args.work, "latency_table.yaml")
    if os.path.exists(path):
        return LatencyTable.load(path)
    t0 = time.perf_counter()
    table = measure(dense, xb[:1], batch=64, threads=args.latency_threads, points=16, repeats=15,
                    form=args.latency_form)
    table.meta["seconds"] = round(time.perf_counter() - t0, 1)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    table.save(path)
    print(f"latency table: {path} ({table.meta['seconds']} s)", flush=True)
    return table


def finetune(model: nn.Module, args) -> tuple[nn.Module, float, float]:
    cfg = TrainConfig(model=args.arch, dataset="fashion-mnist", epochs=args.ft_epochs, batch_size=128,
                      lr=args.ft_lr, train_limit=args.ft_images or None, threads=args.threads, seed=0,
                      out=os.path.join(args.work, "ft"), teacher=args.checkpoint if args.ft_kd else None)
    t = ScheduledTrainer(cfg, model=copy.deepcopy(model), progress=False)
    t0 = time.perf_counter()
    hist = t.fit()
    return t.model.to(memory_format=torch.contiguous_format), hist[-1]["test_acc"], time.perf_counter() - t0


def run_row(name: str, tool: str, criterion: str, scope: str, ratio: float, pruned: nn.Module,
            dense: nn.Module, base: dict, test, args) -> dict:
    macs, params = macs_params(pruned)
    acc0 = accuracy(pruned, test, args.quick_eval)
    tuned, ft_acc, ft_s = finetune(pruned, args)
    os.makedirs(args.work, exist_ok=True)
    torch.save(tuned, _model_path(args, name))  # whole module: --latency-only re-times it
    d_ms, p_ms, lat = latency_ratio(dense, pruned)
    row = dict(name=name, tool=tool, criterion=criterion, scope=scope, ratio=round(ratio, 4),
               macs=macs, params=params, mac_ratio=macs / base["macs"], param_ratio=params / base["params"],
               acc_pruned=acc0, acc_ft=ft_acc, dense_ms=d_ms, pruned_ms=p_ms, latency_ratio=lat,
               speedup_vs_mac=(1 - lat) / max(1e-9, 1 - macs / base["macs"]), ft_seconds=ft_s)
    print(json.dumps(row), flush=True)
    return row


def _model_path(args, name: str) -> str:
    return os.path.join(args.work, name.replace("/", "_") + ".pt")


def latency_only(rows: list[dict], dense: nn.Module, args) -> None:
    """Re-time every saved model of ``rows`` against dense at ``--latency-threads`` threads in
    every form of ``FORMS`` (each against dense in the same form), ``--latency-repeats`` passes of
    ``--latency-calls`` calls (see :func:`timed_forms`)."""
    torch.set_num_threads(args.latency_threads)
    x64 = torch.randn(64, 1, 28, 28)
    dense_forms = in_forms(dense, x64)
    todo = {r["name"]: r for r in rows if "error" not in r and os.path.exists(_model_path(args, r["name"]))}
    candidates = {}
    for name in todo:
        m = torch.load(_model_path(args, name), weights_only=False).eval()
        candidates[name] = in_forms(m, x64)
    timed = timed_forms(dense_forms, candidates, {n: r["mac_ratio"] for n, r in todo.items()},
                        args.latency_threads, args.latency_repeats, args.latency_calls)
    for name, r in todo.items():
        for tag, entry in timed[name].items():
            r[f"lat_{tag}"] = entry
        print(name, *(f"{tag} {r[f'lat_{tag}']['ratio']:.3f}" for tag in FORMS), flush=True)


def write_markdown(rows: list[dict], base: dict, args, path: str) -> None:
    """Table of every row; the quiet-machine latency columns appear once --latency-only ran."""
    forms = [t for t in FORMS if any(f"lat_{t}" in r for r in rows)]
    head = ("| setting | tool | criterion | ratio | MACs (M) | MACs / dense | params / dense | acc after prune* | "
            "acc after FT | latency / dense (estimate) |")
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    legend = ""
    if forms:
        e = next(r[f"lat_{forms[0]}"] for r in rows if f"lat_{forms[0]}" in r)
        head += "".join(f" {FORMS[t][0]} |" for t in forms)
        sep += "---|" * len(forms)
        legend = (f"Latency cells: latency / dense, the median over {e.get('repeats', 1)} timing passes "
                  f"[lowest-highest pass] (latency gain / MAC gain); batch 64, {e['threads']} threads, "
                  f"{e.get('calls', 100)} calls per model per pass. The estimate column was taken during training.\n\n")
    lines = [legend, head + "\n", sep + "\n"]

    def gain(g: float, r: dict) -> str:
        return "-" if r["mac_ratio"] > 0.999 else f"{g:.2f}"

    for r in rows:
        if "error" in r:
            lines.append(f"| {r['scope']} | {r['tool']} | {r['criterion']} | failed: {r['error'][:120]} |\n")
            continue
        line = (f"| {r['scope']} | {r['tool']} | {r['criterion']} | {r['ratio']:.3f} | {r['macs'] / 1e6:.2f} | "
                f"{r['mac_ratio']:.3f} | {r['param_ratio']:.3f} | {100 * r['acc_pruned']:.2f} | "
                f"{100 * r['acc_ft']:.2f} | {r['latency_ratio']:.3f} ({gain(r['speedup_vs_mac'], r)}) |")
        for tag in forms:
            t = r.get(f"lat_{tag}")
            if not t:
                line += " - |"
                continue
            spread = f" [{t['ratio_min']:.2f}-{t['ratio_max']:.2f}]" if "ratio_min" in t else ""
            line += f" {t['ratio']:.3f}{spread} ({gain(t['gain_vs_mac'], r)}) |"
        lines.append(line + "\n")
    with atomic_write(path) as f:
        f.write(f"Dense: {base['macs'] / 1e6:.2f} M MACs, {base['params']} params, test accuracy "
                f"{100 * base['acc']:.2f}%.\n\n" + "".join(lines))


def write_plot(rows: list[dict], base: dict, path: str) -> None:
    """Two panels: accuracy after fine-tuning vs MACs, and quiet-machine latency vs MACs with the
    goal line (latency gain = 0.8 x MAC gain). Rows without the quiet timing use the estimate."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    style = {"torch-pruning": "s", "none": "*"}
    for r in rows:
        if "error" in r:
            continue
        lat = r.get("lat_torch", r.get("lat_eager", {})).get("ratio", r["latency_ratio"])
        mk = style.get(r["tool"], "^" if r["name"].startswith("latency/") else "o")
        label = f"{r['scope']} / {r['criterion']}" if r["tool"] != "torch-pruning" else f"Torch-Pruning / {r['criterion']}"
        pts = a.scatter(r["mac_ratio"], 100 * r["acc_ft"], marker=mk, label=label)
        b.scatter(r["mac_ratio"], lat, marker=mk, color=pts.get_facecolor())
        if "lat_inductor" in r:
            b.scatter(r["mac_ratio"], r["lat_inductor"]["ratio"], marker=mk, facecolors="none",
                      edgecolors=pts.get_facecolor())
    a.axhline(100 * base["acc"], color="k", lw=0.8, ls=":", label="dense checkpoint")
    a.axhline(100 * base["acc"] - 0.5, color="r", lw=0.8, ls="--", label="dense - 0.5 pt")
    xs = [0.3, 1.0]
    b.plot(xs, xs, color="k", lw=0.8, ls=":", label="latency = MACs")
    b.plot(xs, [1 - 0.8 * (1 - x) for x in xs], color="r", lw=0.8, ls="--", label="goal: gain = 0.8 x MAC gain")
    a.set(xlabel="MACs / dense", ylabel="test accuracy after fine-tuning (%)")
    b.set(xlabel="MACs / dense", ylabel="latency / dense (below the red line meets the goal)",
          title="filled: compile 'torch' (eager if not timed); hollow: Inductor")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)


def uniform_latency(dense: nn.Module, args, ratios=(0.15, 0.3, 0.5)) -> None:
    """The platform's ceiling for the latency goal: every group (residual streams included) cut
    by the same local ratio, so no width is odd by choice, timed like the benchmark rows (every
    form of ``FORMS``, :func:`timed_forms`). No fine-tuning: latency only."""
    torch.set_num_threads(args.latency_threads)
    x64 = torch.randn(64, 1, 28, 28)
    dense_forms = in_forms(dense, x64)
    base = macs_params(dense)[0]
    rows, candidates = {}, {}
    for r in ratios:
        m = dyngate.prune(dense, "random", r, scope="local", example_input=X1).eval()
        rows[r] = dict(ratio=r, mac_ratio=macs_params(m)[0] / base,
                       widths=sorted({c.out_channels for c in m.modules() if isinstance(c, nn.Conv2d)}))
        candidates[r] = in_forms(m, x64)
    timed = timed_forms(dense_forms, candidates, {r: row["mac_ratio"] for r, row in rows.items()},
                        args.latency_threads, args.latency_repeats, args.latency_calls)
    for r, row in rows.items():
        row.update(timed[r])
        print(json.dumps(row), flush=True)
    with atomic_write(args.uniform_only) as f:
        json.dump(list(rows.values()), f, indent=1)


def tvm_latency(dense: nn.Module, out: str, rounds: int = 5) -> None:
    """torch eager vs dyngate.compile (TVM Relax, untuned) at batch 64 for dense and an l1-pruned
    model at the MAC target; needs apache-tvm (run with an interpreter that has it)."""
    x = torch.randn(64, 1, 28, 28)
    pruned = dyngate.prune(dense, "l1", 0.32, example_input=X1, round_to=4)
    rows = []
    for name, m in (("dense", dense), ("l1-pruned", pruned)):
        t0 = time.perf_counter()
        c = dyngate.compile(m, "llvm", example_input=x)
        build = time.perf_counter() - t0
        with torch.inference_mode():
            m.eval()
            tt = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                m(x)
                tt.append((time.perf_counter() - t0) * 1e3)
        tv = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            c(x)
            tv.append((time.perf_counter() - t0) * 1e3)
        rows.append(dict(model=name, macs=macs_params(m)[0], torch_ms=min(tt), tvm_ms=min(tv),
                         tvm_over_torch=min(tv) / min(tt), build_s=build, max_abs_error=c.max_abs_error))
        print(json.dumps(rows[-1]), flush=True)
    with atomic_write(out) as f:
        json.dump(rows, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--target", type=float, default=0.5, help="share of dense MACs to keep")
    ap.add_argument("--criteria", nargs="+", default=sorted(CRITERIA))
    ap.add_argument("--tp-criteria", nargs="+", default=["l1", "fpgm", "taylor", "random"])
    ap.add_argument("--round8", nargs="*", default=["l1"], help="criteria also run with round_to=8")
    ap.add_argument("--latency-aware", nargs="*", default=["fpgm", "l1"],
                    help="criteria also run with a latency budget (HALP knapsack over --latency-table)")
    ap.add_argument("--latency-table", default=None,
                    help="dyngate.latency table (YAML); measured at --latency-threads, batch 64, and saved "
                         "here when missing (default: WORK/latency_table.yaml). Measure on a quiet machine.")
    ap.add_argument("--latency-form", default="torch", choices=TABLE_FORMS,
                    help="deployment form the latency table is measured in (dyngate.latency.measure form=)")
    ap.add_argument("--ft-images", type=int, default=12000)
    ap.add_argument("--ft-epochs", type=int, default=1)
    ap.add_argument("--ft-lr", type=float, default=0.01)
    ap.add_argument("--ft-kd", action="store_true",
                    help="fine-tune with knowledge distillation from the dense checkpoint (T=4, weight 0.9), "
                         "the dense control row included")
    ap.add_argument("--quick-eval", type=int, default=2000, help="test images for the no-FT accuracy")
    ap.add_argument("--max-group-ratio", type=float, default=0.75)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="results/pruning_fashion_mnist.json")
    ap.add_argument("--work", default="/tmp/bench_pruning")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-inner", action="store_true")
    ap.add_argument("--only", nargs="*", default=None, help="run only these row names (e.g. full/l2 dense-ft)")
    ap.add_argument("--dense-ft", action="store_true", help="also fine-tune the dense model with the same budget")
    ap.add_argument("--latency-only", action="store_true",
                    help="re-time the models saved by an earlier run (quiet machine; --latency-threads)")
    ap.add_argument("--latency-threads", type=int, default=2)
    ap.add_argument("--latency-repeats", type=int, default=5,
                    help="timing passes over all rows; each row keeps the median ratio and its range")
    ap.add_argument("--latency-calls", type=int, default=60, help="calls per model in one timing pass")
    ap.add_argument("--uniform-only", default=None, metavar="JSON",
                    help="only time uniformly pruned models (every group the same ratio, no fine-tuning) "
                         "against dense: the ceiling of latency gain per MAC gain here; write JSON")
    ap.add_argument("--tvm-only", default=None, metavar="JSON",
                    help="only compare torch and dyngate.compile (TVM) latency, write JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = args.checkpoint or next((p for p in ("checkpoints/resnet20_fmnist_dense.pt", "runs/fmnist/dense/final.pt")
                                    if os.path.exists(p)), None)
    if ckpt is None:
        sys.exit("no dense checkpoint yet (checkpoints/resnet20_fmnist_dense.pt or runs/fmnist/dense/final.pt)")
    dense = dyngate.load(ckpt).eval()
    args.checkpoint = ckpt
    args.arch = torch.load(ckpt, map_location="cpu", weights_only=False)["arch"]["name"]
    if args.tvm_only:
        return tvm_latency(dense, args.tvm_only)
    if args.uniform_only:
        return uniform_latency(dense, args)
    test = load_dataset("fashion-mnist", "test")
    train = load_dataset("fashion-mnist", "train", limit=256)
    data = [(train.tensors[0][i:i + 64], train.tensors[1][i:i + 64]) for i in range(0, 256, 64)]
    xb = train.tensors[0][:128]  # example input: shapes, and the removed channels' mean activations
    macs, params = macs_params(dense)
    base = dict(macs=macs, params=params, acc=accuracy(dense, test), checkpoint=ckpt)
    rows = json.load(open(args.json))["rows"] if os.path.exists(args.json) else []
    done = {r["name"] for r in rows}
    if args.latency_only:
        latency_only(rows, dense, args)

    run_args = vars(args)
    if args.latency_only and os.path.exists(args.json):  # keep the args the rows were made with
        run_args = {**json.load(open(args.json)).get("args", {}), "latency_threads": args.latency_threads}

    def save():
        with atomic_write(args.json) as f:
            json.dump({"base": base, "args": run_args, "rows": rows}, f, indent=1)
        write_markdown(rows, base, args, args.json.replace(".json", "_table.md"))
        if any("error" not in r for r in rows):
            write_plot(rows, base, args.json.replace(".json", ".png"))

    jobs = []
    if not args.skip_full:
        for c in args.criteria:
            jobs.append((f"full/{c}", "dyngate", c, "global", lambda r, c=c: dyngate.prune(
                dense, c, r, scope="global", example_input=xb, data=data, max_group_ratio=args.max_group_ratio)))
        for c in args.round8:
            jobs.append((f"full-r8/{c}", "dyngate", c, "global, round_to=8", lambda r, c=c: dyngate.prune(
                dense, c, r, scope="global", example_input=xb, data=data, round_to=8,
                max_group_ratio=args.max_group_ratio)))
    lat_jobs = [c for c in args.latency_aware if f"latency/{c}" not in done
                and (args.only is None or f"latency/{c}" in args.only)]
    if lat_jobs and not args.latency_only:
        table = latency_table(dense, xb, args)
        for c in lat_jobs:
            jobs.append((f"latency/{c}", "dyngate", c, "global, latency budget", lambda r, c=c: dyngate.prune(
                dense, c, r, scope="global", example_input=xb, data=data, latency=table,
                max_group_ratio=args.max_group_ratio)))
    if not args.skip_inner:
        ign = inner_ignore(dense)
        for c in args.tp_criteria:
            jobs.append((f"inner/{c}", "dyngate", c, "local-inner", lambda r, c=c: dyngate.prune(
                dense, c, r, scope="local", example_input=xb, data=data, ignore=ign)))
            jobs.append((f"inner-tp/{c}", "torch-pruning", c, "local-inner", lambda r, c=c: tp_prune(dense, c, r, data)))
    if args.dense_ft and "dense-ft" not in done and not args.latency_only and (args.only is None or "dense-ft" in args.only):
        # control: the dense model given the same extra training as every pruned row
        rows.append(run_row("dense-ft", "none", "-", "dense + same fine-tuning", 0.0, dense, dense,
                            base, test, args))
        save()
    if args.only is not None:
        jobs = [j for j in jobs if j[0] in args.only]
    if args.latency_only:
        jobs = []
    inner_ratio = {}
    for name, tool, c, scope, fn in jobs:
        if name in done:
            continue
        if tool == "torch-pruning":
            ratio = inner_ratio.get(c) or next(r["ratio"] for r in rows if r["name"] == f"inner/{c}")
            try:
                pruned = fn(ratio)
                pruned(X1)
            except Exception as e:  # report, never hide: TP fails on some graphs
                rows.append(dict(name=name, tool=tool, criterion=c, scope=scope, error=f"{type(e).__name__}: {e}"))
                save()
                continue
        else:
            ratio, pruned = bisect_ratio(fn, macs, args.target)
            inner_ratio[c] = ratio
        rows.append(run_row(name, tool, c, scope, ratio, pruned, dense, base, test, args))
        save()
    save()


if __name__ == "__main__":
    main()
