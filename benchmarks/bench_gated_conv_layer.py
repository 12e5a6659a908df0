"""One gated conv layer with every gate forced off and forced on, against oneDNN's dense conv:
the floor (base pass, decisions, stores) and the ceiling (base + whole remaining sum) of a
compiled CPU path, per layer shape. Kernel changes are measured here before whole networks.

    python benchmarks/bench_gated_conv_layer.py --threads 1 --repeats 15

Prints the CPU header, then one row per layer: dense ms, path ms with gates off and on (minimum
over ``--repeats`` calls after two warm-up calls, the three timed interleaved), and the ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages
from bench_gated_conv import cpu_header  # noqa: E402
from kernels.cpu import conditional_conv2d_cpu  # noqa: E402
from kernels.geometry import ConvGeometry  # noqa: E402

# (label, batch, C_in, H=W, C_out, stride, gate tile, granularity, grouped base)
LAYERS = [
    ("16->16 @28, 7x7 x 16 blocks", 128, 16, 28, 16, 1, (7, 7), 16, False),
    ("32->32 @14, 7x7 x 16 blocks", 128, 32, 14, 32, 1, (7, 7), 16, False),
    ("64->64 @7, 7x7 x 16 blocks", 128, 64, 7, 64, 1, (7, 7), 16, False),
    ("16->16 @32, per element, grouped", 32, 16, 32, 16, 1, (1, 1), 1, True),
    ("128->128 @28, per element, grouped", 8, 128, 28, 128, 1, (1, 1), 1, True),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="torch and kernel threads (>= 1)")
    ap.add_argument("--repeats", type=int, default=15, help="timed calls per case (>= 1); the minimum is kept")
    ap.add_argument("--partitions", type=int, default=4, help="CGNet p (base path = 1/p of the inputs, >= 2)")
    args = ap.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.partitions < 2:
        ap.error("--threads and --repeats must be >= 1, --partitions >= 2")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(" | ".join(f"{k}: {v}" for k, v in cpu_header().items()))
    print(f"threads {args.threads}, p = {args.partitions}, minimum of {args.repeats} interleaved calls\n")
    print("| layer | batch | path | dense ms | all off ms | all on ms | off / dense | on / dense |")
    print("|---|---|---|---|---|---|---|---|")
    for label, n, c, h, co, s, tile, g, grouped in LAYERS:
        x = torch.randn(n, c, h, h).contiguous(memory_format=torch.channels_last)
        w = torch.randn(co, c, 3, 3) * 0.1
        geo = ConvGeometry(n, c, h, h, co, 3, 3, (s, s), (1, 1), (1, 1))
        path = "fused_blocks" if tile != (1, 1) else "fused"
        inv = torch.ones(co)

        def gated(tv: float):
            tau = torch.full((co,), tv)
            return lambda: conditional_conv2d_cpu(x, w, None, tau, inv, geo, partitions=args.partitions,
                                                  grouped=grouped, granularity=g, strategy=path, gate_tile=tile)
        calls = {"dense": lambda: F.conv2d(x, w, None, s, 1), "off": gated(float("inf")),
                 "on": gated(float("-inf"))}
        best = {k: float("inf") for k in calls}
        for f in calls.values():
            f()
            f()
        for _ in range(args.repeats):
            for k, f in calls.items():
                t0 = time.perf_counter()
                f()
                best[k] = min(best[k], 1e3 * (time.perf_counter() - t0))
        d = best["dense"]
        print(f"| {label} | {n} | {path} | {d:.2f} | {best['off']:.2f} | {best['on']:.2f} | "
              f"{best['off'] / d:.2f} | {best['on'] / d:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
