"""Where a gated layer's time goes between the compiled kernel and the public call.

Per ResNet-20 gated conv1 shape (per-element gates, p = 4, grouped base, random gates at
``--density``), interleaved medians of: oneDNN's dense conv; the compiled path ``auto`` chose,
called through ``kernels.cpu.bind_auto`` (its cached build and packed weights, one shape check,
one output allocation: the kernel alone); ``kernels.conditional_conv2d`` (``auto``); and the
eval-mode ``GatedConv2d`` module.
The gap between the kernel and the public call is Python dispatch, which costs 2-3x more
right after a large kernel than in a loop of tiny calls (the kernel evicts the interpreter's
caches), so it is measured here at the real batch rather than guessed from a profiler.

    python benchmarks/bench_call_levels.py --threads 2 --batch 64 --repeats 40
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages
from bench_gated_conv import cpu_header_line  # noqa: E402
from bench_gated_conv_shapes import interleaved_medians  # noqa: E402
from dyngate.gating.gated_conv import GatedConv2d  # noqa: E402
from kernels import conditional_conv2d, last_path  # noqa: E402
from kernels.api import validate  # noqa: E402
from kernels.cpu import bind_auto  # noqa: E402

# ResNet-20's gated conv1 shapes: (label, C_in, H=W, C_out, stride)
LAYERS = [("layer1 16->16 @32", 16, 32, 16, 1), ("layer2.0 16->32 s2 @32", 16, 32, 32, 2),
          ("layer2 32->32 @16", 32, 16, 32, 1), ("layer3.0 32->64 s2 @16", 32, 16, 64, 2),
          ("layer3 64->64 @8", 64, 8, 64, 1)]


def _layer(c_in: int, c_out: int, stride: int, density: float, x: torch.Tensor) -> GatedConv2d:
    """An eval-mode gated conv whose decision statistics put ``density`` of the gates on."""
    g = GatedConv2d.from_conv(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=True), "bench").eval()
    with torch.no_grad():
        yp = g._base_conv(x)
        g.bn0.running_mean.copy_(yp.mean(dim=(0, 2, 3)))
        g.bn0.running_var.copy_(yp.var(dim=(0, 2, 3)))
        g.threshold.copy_(torch.special.ndtri(torch.tensor(1.0 - density)).expand(c_out))
    return g


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch and kernel threads (>= 1)")
    ap.add_argument("--batch", type=int, default=64, help="images per call (>= 1)")
    ap.add_argument("--repeats", type=int, default=40, help="interleaved timed rounds (>= 1); medians")
    ap.add_argument("--density", type=float, default=0.5, help="fraction of gates on, in (0, 1)")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.batch < 1 or args.repeats < 1 or not 0 < args.density < 1:
        ap.error("--threads, --batch, --repeats must be >= 1 and --density in (0, 1)")
    torch.set_num_threads(args.threads)
    print(cpu_header_line(args.threads))
    print(f"batch {args.batch}, random gates at {args.density}, p = 4, grouped base; medians of "
          f"{args.repeats} interleaved rounds, ms\n")
    print("| layer | path | dense | kernel | `conditional_conv2d` | module | dense/kernel | dense/call | dense/module |")
    print("|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for label, c_in, hw, c_out, stride in LAYERS:
        x = torch.randn(args.batch, c_in, hw, hw, generator=gen).contiguous(memory_format=torch.channels_last)
        g = _layer(c_in, c_out, stride, args.density, x)
        with torch.no_grad():
            tau, isg = g.folded_threshold()
            w, b = g.weight.detach(), g.bias.detach()
            kw = dict(stride=stride, padding=1, partitions=4, grouped=True, backend="cpu")
            conditional_conv2d(x, w, b, tau, isg, **kw)      # tunes auto for this layer
            path = last_path()
            calls = {"dense": lambda: F.conv2d(x, w, b, stride, 1),
                     "call": lambda: conditional_conv2d(x, w, b, tau, isg, **kw),
                     "module": lambda: g(x)}
            geo = validate(x, w, b, tau, isg, stride, 1, 1, 4, True, 1)
            kernel = bind_auto(x, w, b, tau, isg, geo, partitions=4, grouped=True)
            if kernel is not None:               # a compiled path: time it alone too
                calls["kernel"] = lambda: kernel(x)
            ms = {k: 1e3 * t for k, t in interleaved_medians(calls, args.repeats, warmup=1).items()}
        kern = f"{ms['kernel']:.3f}" if "kernel" in ms else "-"
        ratio = f"{ms['dense'] / ms['kernel']:.2f}" if "kernel" in ms else "-"
        print(f"| {label} | {path} | {ms['dense']:.3f} | {kern} | {ms['call']:.3f} | {ms['module']:.3f} | "
              f"{ratio} | {ms['dense'] / ms['call']:.2f} | {ms['dense'] / ms['module']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
