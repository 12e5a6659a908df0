"""CPU benchmark of the gated conv: real vs theoretical speedup per layer and per network.

    python benchmarks/bench_gated_conv.py [--json] [--threads 2] [--repeats 5] [--rule cgnet]

For every gated layer of ResNet-18 (224x224, batch 8) and ResNet-20 (32x32, batch 64) at gate
densities 1.0, 0.5, 0.3, 0.1 with random per-element and spatially clustered gates: dense torch
conv time, gated time (``kernels.conditional_conv2d(backend="cpu")``), real speedup,
theoretical speedup (MAC ratio incl. the base pass, at the measured gate density) and
efficiency = real / theoretical. Whole-network numbers sum all convs; ungated convs count at
their dense time in both columns. Both sides get channels-last input (torch's faster layout
for dense conv on this CPU). Medians over ``--repeats`` calls; identical layers timed once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

from bench_gated_conv_shapes import NETWORKS, ConvLayer, layer_inputs, median_time, theoretical_speedup
from kernels import conditional_conv2d
from kernels.api import validate
from kernels.cpu import conditional_conv2d_cpu
from kernels.workspace import release

DENSITIES = (1.0, 0.5, 0.3, 0.1)
KINDS = ("random", "clustered")


def bench_layer(layer: ConvLayer, batch: int, density: float, kind: str, args) -> dict:
    x, w, b, tau, isg = layer_inputs(layer, batch, clustered=kind == "clustered", density=density,
                                     partitions=args.partitions, grouped=not args.ungrouped)
    kw = dict(stride=layer.stride, padding=layer.padding, partitions=args.partitions,
              grouped=not args.ungrouped, granularity=args.granularity, backend="cpu")
    with torch.no_grad():
        _, gate = conditional_conv2d(x, w, b, tau, isg, return_gate=True, **kw)
        measured = float(gate.float().mean())
        t_dense = median_time(lambda: F.conv2d(x, w, b, layer.stride, layer.padding), args.repeats)
        t_gated = median_time(lambda: conditional_conv2d(x, w, b, tau, isg, **kw), args.repeats)
        t_pipe = median_time(lambda: _pipeline(x, w, b, tau, isg, kw), args.repeats) if args.pipeline else None
    theo = theoretical_speedup(measured, args.partitions)
    real = t_dense / t_gated
    return dict(layer=layer.name, shape=f"{layer.c_in}->{layer.c_out} {layer.k}x{layer.k} s{layer.stride} "
                f"@{layer.hw}", count=layer.count, density_target=density, kind=kind,
                density=measured, dense_ms=t_dense * 1e3, gated_ms=t_gated * 1e3,
                pipeline_ms=None if t_pipe is None else t_pipe * 1e3, real_speedup=real,
                theoretical_speedup=theo, efficiency=real / theo, macs=layer.macs(batch))


def _pipeline(x, w, b, tau, isg, kw):
    """The torch-op pipeline of kernels/cpu.py (base conv + gathered GEMMs), for comparison."""
    geo = validate(x, w, b, tau, isg, kw["stride"], kw["padding"], 1, kw["partitions"], kw["grouped"],
                   kw["granularity"])
    return conditional_conv2d_cpu(x, w, b, tau, isg, geo, partitions=kw["partitions"], grouped=kw["grouped"],
                                  granularity=kw["granularity"], strategy="pipeline")


def bench_network(net: str, args) -> dict:
    build, batch = NETWORKS[net]
    layers = build()
    rows, dense_ms = [], {}
    for layer in layers:
        if not layer.gated(args.rule):
            x = torch.randn(batch, layer.c_in, layer.hw, layer.hw).contiguous(memory_format=torch.channels_last)
            w = torch.randn(layer.c_out, layer.c_in, layer.k, layer.k)
            with torch.no_grad():
                dense_ms[layer.name] = 1e3 * median_time(
                    lambda: F.conv2d(x, w, None, layer.stride, layer.padding), args.repeats)
            continue
        for kind in KINDS:
            for d in DENSITIES:
                if kind == "clustered" and d == 1.0:
                    continue  # identical to random at density 1
                rows.append(bench_layer(layer, batch, d, kind, args))
                _progress(rows[-1])
        release()
    whole = {}
    ungated = [l for l in layers if not l.gated(args.rule)]
    t_ungated = sum(dense_ms[l.name] * l.count for l in ungated)
    mac_ungated = sum(l.macs(batch) * l.count for l in ungated)
    for kind in KINDS:
        for d in DENSITIES:
            sel = [r for r in rows if r["density_target"] == d and (r["kind"] == kind or d == 1.0)]
            if not sel or (d == 1.0 and kind != KINDS[0]):
                continue
            t_dense = t_ungated + sum(r["dense_ms"] * r["count"] for r in sel)
            t_gated = t_ungated + sum(r["gated_ms"] * r["count"] for r in sel)
            mac_dense = mac_ungated + sum(r["macs"] * r["count"] for r in sel)
            mac_gated = mac_ungated + sum(r["macs"] * r["count"] / r["theoretical_speedup"] for r in sel)
            real, theo = t_dense / t_gated, mac_dense / mac_gated
            t_pipe = (t_ungated + sum(r["pipeline_ms"] * r["count"] for r in sel)) if args.pipeline else None
            whole[f"{kind}@{d}"] = dict(kind=kind, density=d, dense_ms=t_dense, gated_ms=t_gated,
                                        pipeline_ms=t_pipe,
                                        real_speedup=real, theoretical_speedup=theo,
                                        efficiency=real / theo)
    return dict(network=net, batch=batch, layers=rows, ungated_dense_ms=dense_ms, whole=whole)


def bench_checkpoint(path: str, args) -> dict:
    """Time every conv of a trained gated checkpoint on real test images with its own gates.

    Each layer's real input is captured with a forward hook on one batch of the checkpoint's
    test set; dense = torch conv on that input, gated = the CPU fast path with the layer's
    folded thresholds, so the masks (and their spatial structure) are the trained ones.
    """
    import dyngate  # noqa: PLC0415 (only this mode needs the runtime)
    from dyngate.checkpoint import read  # noqa: PLC0415
    from dyngate.gating import GatedConv2d  # noqa: PLC0415
    from models.data import load_dataset  # noqa: PLC0415

    model = dyngate.load(path)
    cfg = read(path)["extra"].get("trainer", {}).get("config", {})
    x = load_dataset(cfg.get("dataset", "fashion-mnist"), "test", cfg.get("data_dir"),
                     limit=args.checkpoint_batch).tensors[0].contiguous(memory_format=torch.channels_last)
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name):
        def hook(mod, inp, out):  # returns None: the forward is left unchanged
            inputs.setdefault(name, inp[0])
        return hook

    hooks = [m.register_forward_hook(keep_input(n))
             for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, GatedConv2d))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    rows, t_dense_all, t_gated_all, mac_dense_all, mac_gated_all = [], 0.0, 0.0, 0, 0.0
    for name, xin in inputs.items():
        m = model.get_submodule(name)
        xin = xin.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            t_dense = median_time(lambda: F.conv2d(xin, m.weight, m.bias, m.stride, m.padding), args.repeats)
            out_hw = F.conv2d(xin[:1], m.weight, m.bias, m.stride, m.padding).shape[2:]
            macs = xin.shape[0] * out_hw[0] * out_hw[1] * m.weight[0].numel() * m.out_channels
            if not isinstance(m, GatedConv2d):
                t_dense_all += t_dense
                t_gated_all += t_dense
                mac_dense_all += macs
                mac_gated_all += macs
                continue
            tau, isg = m.folded_threshold()
            kw = dict(stride=m.stride, padding=m.padding, partitions=m.partitions, grouped=m.grouped,
                      granularity=m.granularity, backend="cpu")
            _, gate = conditional_conv2d(xin, m.weight, m.bias, tau, isg, return_gate=True, **kw)
            density = float(gate.float().mean())
            t_gated = median_time(lambda: conditional_conv2d(xin, m.weight, m.bias, tau, isg, **kw),
                                  args.repeats)
        theo = theoretical_speedup(density, m.partitions)
        rows.append(dict(layer=name, shape=f"{m.in_channels}->{m.out_channels} s{m.stride[0]} @{out_hw[0]}",
                         density=density, dense_ms=t_dense * 1e3, gated_ms=t_gated * 1e3,
                         real_speedup=t_dense / t_gated, theoretical_speedup=theo,
                         efficiency=t_dense / t_gated / theo))
        t_dense_all += t_dense
        t_gated_all += t_gated
        mac_dense_all += macs
        mac_gated_all += macs / theo
        release()
    real, theo = t_dense_all / t_gated_all, mac_dense_all / mac_gated_all
    return dict(checkpoint=path, batch=x.shape[0], layers=rows,
                whole=dict(dense_ms=t_dense_all * 1e3, gated_ms=t_gated_all * 1e3, real_speedup=real,
                           theoretical_speedup=theo, efficiency=real / theo))


def print_checkpoint_table(res: dict) -> None:
    print(f"\n## {res['checkpoint']} (batch {res['batch']} real test images, trained gates)\n")
    print("| layer | shape | density | dense ms | gated ms | real | theoretical | efficiency |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["layers"]:
        print(f"| {r['layer']} | {r['shape']} | {r['density']:.3f} | {r['dense_ms']:.2f} | {r['gated_ms']:.2f} | "
              f"{r['real_speedup']:.2f} | {r['theoretical_speedup']:.2f} | {r['efficiency']:.2f} |")
    w = res["whole"]
    print(f"\nWhole network (all convs, ungated at dense time): dense {w['dense_ms']:.1f} ms, gated "
          f"{w['gated_ms']:.1f} ms, real {w['real_speedup']:.2f}x, theoretical {w['theoretical_speedup']:.2f}x, "
          f"efficiency {w['efficiency']:.2f}")


def _progress(row: dict) -> None:
    print(f"  {row['layer']:<22} {row['kind']:<9} d={row['density']:.2f} dense {row['dense_ms']:7.2f} ms "
          f"gated {row['gated_ms']:7.2f} ms", file=sys.stderr, flush=True)


def print_tables(result: dict) -> None:
    print(f"\n## {result['network']} (batch {result['batch']})\n")
    print("| layer | shape | x | gates | density | dense ms | gated ms | real | theoretical | efficiency "
          "| pipeline ms | pipeline real |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["layers"]:
        print(f"| {r['layer']} | {r['shape']} | {r['count']} | {r['kind']} | {r['density']:.2f} | "
              f"{r['dense_ms']:.2f} | {r['gated_ms']:.2f} | {r['real_speedup']:.2f} | "
              f"{r['theoretical_speedup']:.2f} | {r['efficiency']:.2f} | {_pipe(r)} |")
    print(f"\nWhole network (all convs; ungated at dense time):\n")
    print("| gates | target density | dense ms | gated ms | real | theoretical | efficiency "
          "| pipeline ms | pipeline real |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in result["whole"].values():
        print(f"| {w['kind'] if w['density'] < 1 else 'any'} | {w['density']} | {w['dense_ms']:.1f} | "
              f"{w['gated_ms']:.1f} | {w['real_speedup']:.2f} | {w['theoretical_speedup']:.2f} | "
              f"{w['efficiency']:.2f} | {_pipe(w)} |")


def _pipe(r: dict) -> str:
    """'ms | speedup' of the torch-op pipeline, or dashes when it was not timed."""
    if r.get("pipeline_ms") is None:
        return "- | -"
    return f"{r['pipeline_ms']:.2f} | {r['dense_ms'] / r['pipeline_ms']:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rule", choices=("cgnet", "all3x3"), default="cgnet")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--granularity", type=int, default=1)
    ap.add_argument("--ungrouped", action="store_true", help="base path = first C_in/p inputs")
    ap.add_argument("--networks", default="resnet18,resnet20")
    ap.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                    help="skip timing the torch-op pipeline (the pre-fused CPU path) beside the fused kernel")
    ap.add_argument("--out-json", help="also write the JSON document to this file")
    ap.add_argument("--checkpoint", help="also time a trained gated dyngate checkpoint on real test "
                                         "images with its own gates")
    ap.add_argument("--checkpoint-batch", type=int, default=64)
    ap.add_argument("--checkpoint-only", action="store_true", help="skip the synthetic-mask tables")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.checkpoint_only and not args.checkpoint:
        ap.error("--checkpoint-only needs --checkpoint")
    load_before = os.getloadavg()
    results = [] if args.checkpoint_only else [bench_network(n, args) for n in args.networks.split(",")]
    ckpt = bench_checkpoint(args.checkpoint, args) if args.checkpoint else None
    meta = dict(threads=torch.get_num_threads(), repeats=args.repeats, rule=args.rule,
                partitions=args.partitions, grouped=not args.ungrouped, granularity=args.granularity,
                torch=torch.__version__, loadavg_before=load_before, loadavg_after=os.getloadavg(),
                command=" ".join(["python", "benchmarks/bench_gated_conv.py", *(argv or sys.argv[1:])]))
    summary = {}
    for res in results:
        for key, w in res["whole"].items():
            if w["density"] == 0.3:
                summary[f"{res['network']}_{w['kind']}_0.3"] = {
                    k: w[k] for k in ("real_speedup", "theoretical_speedup", "efficiency")}
    r18 = next((r for r in results if r["network"] == "resnet18"), None)
    top = {}
    if r18 is not None:  # headline: ResNet-18 at density 0.3, random per-element gates
        top = {k: r18["whole"]["random@0.3"][k] for k in ("real_speedup", "theoretical_speedup")}
    doc = json.dumps(dict(meta=meta, **top, summary=summary, results=results, checkpoint=ckpt), indent=1)
    if args.out_json:
        with open(args.out_json, "w") as f:
            f.write(doc + "\n")
    if args.json:
        print(doc)
        return 0
    print(f"threads={meta['threads']} repeats={args.repeats} rule={args.rule} p={args.partitions} "
          f"grouped={meta['grouped']} G={args.granularity} load(1,5,15min) before={load_before} "
          f"after={meta['loadavg_after']}")
    for res in results:
        print_tables(res)
    if ckpt is not None:
        print_checkpoint_table(ckpt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
