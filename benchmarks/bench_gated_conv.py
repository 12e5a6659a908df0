"""CPU benchmark of the gated conv: real vs theoretical speedup per layer and per network.

    python benchmarks/bench_gated_conv.py [--json] [--threads 2] [--repeats 5] [--isa avx2]

For every gated layer of ResNet-18 (224x224, batch 8) and ResNet-20 (32x32, batch 64) at gate
densities 1.0, 0.5, 0.3, 0.1 with random per-element, spatially clustered and tile-structured
gates (block gates: one decision per output tile x channel chunk, at the tile-gather path's
tile, the inputs switching whole blocks on or off): dense torch
conv time, gated time of the ``auto`` CPU path (``kernels.conditional_conv2d(backend="cpu")``,
tuned afresh for every pattern and density, tuning not timed; where its choice is a compiled
path, timed as the call ``kernels.bind`` returns, which is what an eval ``GatedConv2d`` runs
under no_grad), the path it chose, real speedup,
theoretical speedup (MAC ratio incl. the base pass, at the measured gate density) and
efficiency = real / theoretical. Whole-network numbers sum all convs; ungated convs count at
their dense time in both columns. Both sides get channels-last input (torch's faster layout
for dense conv on this CPU). Medians over ``--repeats`` calls, dense and gated calls interleaved;
identical layers timed once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

# --isa must act before torch loads oneDNN: it caps the fused kernel (DYNGATE_ISA), oneDNN
# (ONEDNN_MAX_CPU_ISA) and ATen's own kernels (ATEN_CPU_CAPABILITY), so an AVX-512 machine
# measures what an AVX2-only CPU would run, dense baseline included.
_ISA_ENV = {"avx2": dict(DYNGATE_ISA="avx2", ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2"),
            "avx512": dict(DYNGATE_ISA="avx512", ONEDNN_MAX_CPU_ISA="AVX512_CORE_AMX"),
            "native": {}}
for _i, _a in enumerate(sys.argv):
    _v = sys.argv[_i + 1] if _a == "--isa" and _i + 1 < len(sys.argv) else (
        _a.split("=", 1)[1] if _a.startswith("--isa=") else None)
    if _v in _ISA_ENV:
        os.environ.update(_ISA_ENV[_v])

import torch  # noqa: E402
import torch.nn.functional as F

from bench_gated_conv_shapes import (NETWORKS, PATTERNS, ConvLayer, interleaved_medians, layer_inputs, median_time,  # noqa: E402
                                     theoretical_speedup)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages
from kernels import autotune, bind, conditional_conv2d, cpu_fused, last_path  # noqa: E402
from kernels.api import validate  # noqa: E402
from kernels.cpu import conditional_conv2d_cpu  # noqa: E402
from kernels.cpu_tiles import default_tile  # noqa: E402
from kernels.workspace import release  # noqa: E402
from cpu_info import cpu_model  # noqa: E402
from fsio import write_text_atomic  # noqa: E402

DENSITIES = (1.0, 0.5, 0.3, 0.1)
KINDS = PATTERNS


def cpu_header() -> dict:
    """CPU model, its SIMD flags and the targets this run uses (printed with every table)."""
    model = cpu_model() or autotune.cpu_id().split(" | ")[0]
    flags = sorted(f for f in cpu_fused._cpu_flags().split() if f.startswith(("avx", "fma", "amx")))
    return dict(cpu=model, cpu_flags=" ".join(flags), isa=cpu_fused.isa(), cpu_isa=cpu_fused.cpu_isa(),
                onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", "native"),
                aten_capability=torch.backends.cpu.get_cpu_capability())


def cpu_header_line(threads: int) -> str:
    """:func:`cpu_header` as the one line a per-layer benchmark prints above its table."""
    head = cpu_header()
    return (f"CPU: {head['cpu']} | flags: {head['cpu_flags']} | kernel ISA: {head['isa']} | oneDNN max ISA: "
            f"{head['onednn_max_isa']} | threads {threads} | torch {torch.__version__}")


def bench_layer(layer: ConvLayer, batch: int, density: float, kind: str, args) -> dict:
    geo_tile = default_tile(validate(*_dummy(layer, batch), layer.stride, layer.padding, 1,
                                     args.partitions, not args.ungrouped, args.granularity))
    x, w, b, tau, isg = layer_inputs(layer, batch, pattern=kind, density=density, tile=geo_tile,
                                     partitions=args.partitions, grouped=not args.ungrouped)
    kw = dict(stride=layer.stride, padding=layer.padding, partitions=args.partitions,
              grouped=not args.ungrouped, granularity=args.granularity, backend="cpu")
    if kind == "tile":  # block gates, as the structured-gating models are trained: one decision
        # per (tile x channel chunk) block, the same blocks tile_inputs switches on
        kw.update(granularity=layer.c_out // (1 if args.ungrouped else args.partitions), tile=geo_tile)
    autotune.forget()  # tune afresh for this pattern and density (the first call below)
    autotune.cache_file().unlink(missing_ok=True)
    with torch.no_grad():
        _, gate = conditional_conv2d(x, w, b, tau, isg, return_gate=True, **kw)
        measured = float(gate.float().mean())
        choice = next(iter(autotune.choices().values()), {}) if autotune.enabled() else {}
        bound = bind(x, w, b, tau, isg, **kw)   # None where auto chose a torch-op path
        gated = (lambda: bound(x)) if bound else (lambda: conditional_conv2d(x, w, b, tau, isg, **kw))
        t = interleaved_medians({"dense": lambda: F.conv2d(x, w, b, layer.stride, layer.padding),
                                 "gated": gated}, args.repeats)
        t_dense, t_gated = t["dense"], t["gated"]
        path = last_path()
        t_pipe = median_time(lambda: _pipeline(x, w, b, tau, isg, kw), args.repeats) if args.pipeline else None
    theo = theoretical_speedup(measured, args.partitions)
    real = t_dense / t_gated
    return dict(layer=layer.name, shape=f"{layer.c_in}->{layer.c_out} {layer.k}x{layer.k} s{layer.stride} "
                f"@{layer.hw}", count=layer.count, density_target=density, kind=kind,
                density=measured, dense_ms=t_dense * 1e3, gated_ms=t_gated * 1e3, path=path,
                tuned_ms=choice.get("ms"), tile=list(geo_tile),
                pipeline_ms=None if t_pipe is None else t_pipe * 1e3, real_speedup=real,
                theoretical_speedup=theo, efficiency=real / theo, macs=layer.macs(batch))


def _dummy(layer: ConvLayer, batch: int):
    """Meta tensors with the layer's shapes (for its geometry, no memory)."""
    t = lambda *shape: torch.empty(shape, device="meta")  # noqa: E731
    return (t(batch, layer.c_in, layer.hw, layer.hw), t(layer.c_out, layer.c_in, layer.k, layer.k),
            None, t(layer.c_out), t(layer.c_out))


def _pipeline(x, w, b, tau, isg, kw):
    """The torch-op pipeline of kernels/cpu.py (base conv + gathered GEMMs), for comparison."""
    tile = kw.get("tile", (1, 1))
    geo = validate(x, w, b, tau, isg, kw["stride"], kw["padding"], 1, kw["partitions"], kw["grouped"],
                   kw["granularity"], 1, tile)
    return conditional_conv2d_cpu(x, w, b, tau, isg, geo, partitions=kw["partitions"], grouped=kw["grouped"],
                                  granularity=kw["granularity"], strategy="pipeline", gate_tile=tile)


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
                if kind != KINDS[0] and d == 1.0:
                    continue  # every pattern is all-on at density 1
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
    from dyngate.gating.gated_conv import GatedConv2d  # noqa: PLC0415
    from models.data import load_dataset  # noqa: PLC0415

    model = dyngate.load(path).eval()
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
    with torch.no_grad():  # whole model: gated (auto paths, tuned by the call above) vs all gates open
        model_gated = median_time(lambda: model(x), args.repeats)
        with dyngate.gates_open(model):  # every gated conv runs as its plain dense conv (oneDNN)
            model_dense = median_time(lambda: model(x), args.repeats)
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
            path = last_path()
        theo = theoretical_speedup(density, m.partitions)
        rows.append(dict(layer=name, path=path, shape=f"{m.in_channels}->{m.out_channels} s{m.stride[0]} @{out_hw[0]}",
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
                model=dict(dense_ms=model_dense * 1e3, gated_ms=model_gated * 1e3,
                           real_speedup=model_dense / model_gated),
                whole=dict(dense_ms=t_dense_all * 1e3, gated_ms=t_gated_all * 1e3, real_speedup=real,
                           theoretical_speedup=theo, efficiency=real / theo))


def print_checkpoint_table(res: dict) -> None:
    print(f"\n## {res['checkpoint']} (batch {res['batch']} real test images, trained gates)\n")
    print("| layer | shape | density | dense ms | gated ms | real | theoretical | efficiency |")
    print("|---|---|---|---|---|---|---|---|")
    for r in res["layers"]:
        print(f"| {r['layer']} | {r['shape']} | {r['density']:.3f} | {r['dense_ms']:.2f} | {r['gated_ms']:.2f} "
              f"({r['path']}) | "
              f"{r['real_speedup']:.2f} | {r['theoretical_speedup']:.2f} | {r['efficiency']:.2f} |")
    mw = res["model"]
    print(f"\nWhole model forward (BN, ReLU, pooling included): all gates open (dense convs) "
          f"{mw['dense_ms']:.1f} ms, gated {mw['gated_ms']:.1f} ms, real {mw['real_speedup']:.2f}x")
    w = res["whole"]
    print(f"\nWhole network (all convs, ungated at dense time): dense {w['dense_ms']:.1f} ms, gated "
          f"{w['gated_ms']:.1f} ms, real {w['real_speedup']:.2f}x, theoretical {w['theoretical_speedup']:.2f}x, "
          f"efficiency {w['efficiency']:.2f}")


def _progress(row: dict) -> None:
    print(f"  {row['layer']:<22} {row['kind']:<9} d={row['density']:.2f} dense {row['dense_ms']:7.2f} ms "
          f"auto {row['gated_ms']:7.2f} ms ({row['path']})", file=sys.stderr, flush=True)


def print_tables(result: dict) -> None:
    print(f"\n## {result['network']} (batch {result['batch']})\n")
    print("| layer | shape | x | gates | density | dense ms | auto ms | auto path | real | theoretical "
          "| efficiency | pipeline ms | pipeline real |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in result["layers"]:
        print(f"| {r['layer']} | {r['shape']} | {r['count']} | {r['kind']} | {r['density']:.2f} | "
              f"{r['dense_ms']:.2f} | {r['gated_ms']:.2f} | {r['path']} | {r['real_speedup']:.2f} | "
              f"{r['theoretical_speedup']:.2f} | {r['efficiency']:.2f} | {_pipe(r)} |")
    print("\nWhole network (all convs; ungated at dense time):\n")
    print("| gates | target density | dense ms | auto ms | real | theoretical | efficiency "
          "| pipeline ms | pipeline real |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in result["whole"].values():
        print(f"| {w['kind'] if w['density'] < 1 else 'all on'} | {w['density']} | {w['dense_ms']:.1f} | "
              f"{w['gated_ms']:.1f} | {w['real_speedup']:.2f} | {w['theoretical_speedup']:.2f} | "
              f"{w['efficiency']:.2f} | {_pipe(w)} |")


def _pipe(r: dict) -> str:
    """'ms | speedup' of the torch-op pipeline, or dashes when it was not timed."""
    if r.get("pipeline_ms") is None:
        return "- | -"
    return f"{r['pipeline_ms']:.2f} | {r['dense_ms'] / r['pipeline_ms']:.2f}"


def main(argv: list[str] | None = None) -> int:
    global KINDS
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    ap.add_argument("--threads", type=int, default=2, help="torch and kernel threads")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (median)")
    ap.add_argument("--isa", choices=tuple(_ISA_ENV), default="native",
                    help="cap the fused kernel, oneDNN and ATen at this ISA (avx2 on an AVX-512 "
                         "machine measures an AVX2-only CPU)")
    ap.add_argument("--rule", choices=("cgnet", "all3x3"), default="cgnet",
                    help="which convs are gated: cgnet = block conv1s, all3x3 = every 3x3 but the stem")
    ap.add_argument("--partitions", type=int, default=4, help="CGNet p (base path = 1/p of the inputs)")
    ap.add_argument("--granularity", type=int, default=1, help="output channels per gate decision")
    ap.add_argument("--ungrouped", action="store_true", help="base path = first C_in/p inputs")
    ap.add_argument("--networks", default="resnet18,resnet20", help="comma list of resnet18, resnet20")
    ap.add_argument("--patterns", default=",".join(KINDS), help=f"comma list of {', '.join(KINDS)}")
    ap.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                    help="skip timing the torch-op pipeline with its cost model (DYNGATE_TUNE=0's path)")
    ap.add_argument("--out-json", help="also write the JSON document to this file")
    ap.add_argument("--checkpoint", help="also time a trained gated dyngate checkpoint on real test "
                                         "images with its own gates")
    ap.add_argument("--checkpoint-batch", type=int, default=64, help="test images per timed batch")
    ap.add_argument("--checkpoint-only", action="store_true", help="skip the synthetic-mask tables")
    args = ap.parse_args(argv)
    KINDS = tuple(k for k in args.patterns.split(",") if k)
    if not KINDS or any(k not in PATTERNS for k in KINDS):
        ap.error(f"--patterns: choose from {', '.join(PATTERNS)}")
    if args.isa == "avx512" and cpu_fused.cpu_isa() != "avx512":
        ap.error(f"--isa avx512: this CPU runs up to {cpu_fused.cpu_isa()}")
    # tuning goes to a private file: fresh per run, the user's cache untouched
    tune_dir = tempfile.mkdtemp(prefix="bench_tune_")
    autotune.cache_file = lambda: __import__("pathlib").Path(tune_dir) / "tune.json"
    torch.set_num_threads(args.threads)
    if args.checkpoint_only and not args.checkpoint:
        ap.error("--checkpoint-only needs --checkpoint")
    load_before = os.getloadavg()
    results = [] if args.checkpoint_only else [bench_network(n, args) for n in args.networks.split(",")]
    ckpt = bench_checkpoint(args.checkpoint, args) if args.checkpoint else None
    meta = dict(**cpu_header(), threads=torch.get_num_threads(), repeats=args.repeats, rule=args.rule,
                partitions=args.partitions, grouped=not args.ungrouped, granularity=args.granularity,
                torch=torch.__version__, loadavg_before=load_before, loadavg_after=os.getloadavg(),
                command=" ".join(["python", "benchmarks/bench_gated_conv.py", *(argv or sys.argv[1:])]))
    summary = {}
    for res in results:
        for kind in KINDS:
            for d in DENSITIES:
                w = res["whole"].get(f"{kind}@{d}" if d < 1 else f"{KINDS[0]}@{d}")
                if w is not None:
                    summary[f"{res['network']}_{kind}_{d}"] = {
                        k: w[k] for k in ("real_speedup", "theoretical_speedup", "efficiency")}
    r18 = next((r for r in results if r["network"] == "resnet18"), None)
    top = {}
    if r18 is not None:  # headline: ResNet-18 at density 0.3, random per-element gates
        top = {k: r18["whole"].get(f"{KINDS[0]}@0.3", {}).get(k) for k in ("real_speedup", "theoretical_speedup")}
    doc = json.dumps(dict(cpu=meta["cpu"], isa=meta["isa"], meta=meta, **top, summary=summary, results=results, checkpoint=ckpt), indent=1)
    if args.out_json:
        write_text_atomic(args.out_json, doc + "\n")
    if args.json:
        print(doc)
        return 0
    print(f"CPU: {meta['cpu']} | flags: {meta['cpu_flags']}\nfused kernel ISA {meta['isa']}, oneDNN max ISA "
          f"{meta['onednn_max_isa']}, ATen {meta['aten_capability']}")
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
