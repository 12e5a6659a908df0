"""GPU benchmark: cuDNN dense conv (TF32 off) vs the Triton gated conv, and break-even density.

    python benchmarks/bench_gated_conv_gpu.py [--json] [--batches 1,8,32,128] [--dtype float16]

For the CGNet-gated ResNet-18 layers at batch sizes 1..128 and random per-element gate
densities, times cuDNN (``cudnn.benchmark`` on, channels-last, ``allow_tf32`` off) and
``kernels.conditional_conv2d(backend="triton")`` with CUDA events (median of ``--repeats``),
and reports per layer and batch the largest density at which the gated kernel is still
faster (linear interpolation of the speedup between measured densities). Without a CUDA
device it prints that it was skipped and exits 0.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from bench_gated_conv_shapes import NETWORKS, layer_inputs, median_time, theoretical_speedup
from kernels import conditional_conv2d

DENSITIES = (1.0, 0.75, 0.5, 0.25, 0.1)


def break_even(points: list[tuple[float, float]]) -> float | None:
    """Largest density with speedup >= 1, interpolated between (density, speedup) points."""
    pts = sorted(points)
    if all(s < 1 for _, s in pts):
        return None
    best = max(d for d, s in pts if s >= 1)
    for (d0, s0), (d1, s1) in zip(pts, pts[1:]):
        if s0 >= 1 > s1:
            best = max(best, d0 + (1 - s0) * (d1 - d0) / (s1 - s0))
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float16")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("SKIPPED: no CUDA device available; the GPU benchmark needs one (exit 0).")
        return 0
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dtype = getattr(torch, args.dtype)
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    rows = []
    layers = [l for l in NETWORKS["resnet18"][0]() if l.gated("cgnet")]
    for batch in (int(b) for b in args.batches.split(",")):
        for layer in layers:
            points = []
            for d in DENSITIES:
                x, w, b, tau, isg = layer_inputs(layer, batch, clustered=False, density=d,
                                                 partitions=args.partitions, grouped=True,
                                                 device=dev, dtype=dtype)
                with torch.no_grad():
                    t_dense = median_time(lambda: F.conv2d(x, w, b, layer.stride, layer.padding),
                                          args.repeats, warmup=5, sync=sync)
                    run = (lambda: conditional_conv2d(x, w, b, tau, isg, stride=layer.stride,
                                                      padding=layer.padding, partitions=args.partitions,
                                                      backend="triton"))
                    t_gated = median_time(run, args.repeats, warmup=5, sync=sync)
                    measured = float(conditional_conv2d(
                        x, w, b, tau, isg, stride=layer.stride, padding=layer.padding,
                        partitions=args.partitions, backend="triton", return_gate=True)[1].float().mean())
                real = t_dense / t_gated
                points.append((measured, real))
                rows.append(dict(batch=batch, layer=layer.name, density=measured, dense_us=t_dense * 1e6,
                                 gated_us=t_gated * 1e6, real_speedup=real,
                                 theoretical_speedup=theoretical_speedup(measured, args.partitions)))
            rows.append(dict(batch=batch, layer=layer.name, break_even_density=break_even(points)))
    meta = dict(device=torch.cuda.get_device_name(), dtype=args.dtype, tf32=False, repeats=args.repeats)
    if args.json:
        print(json.dumps(dict(meta=meta, rows=rows), indent=1))
        return 0
    print(meta)
    print("| batch | layer | density | cuDNN us | triton us | real | theoretical |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "break_even_density" in r:
            be = r["break_even_density"]
            print(f"| {r['batch']} | {r['layer']} | break-even density: "
                  f"{'never faster' if be is None else f'{be:.2f}'} | | | | |")
        else:
            print(f"| {r['batch']} | {r['layer']} | {r['density']:.2f} | {r['dense_us']:.1f} | "
                  f"{r['gated_us']:.1f} | {r['real_speedup']:.2f} | {r['theoretical_speedup']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
