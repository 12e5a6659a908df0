"""Why pruned models are deployed channels_last on x86: one 3x3 conv (stride 1, same padding),
batch 64, in equal input and output widths swept across the SIMD block, timed in three forms:

  * NCHW + BN: ``nn.Sequential(conv, BatchNorm2d)`` in eval mode, as ``model(x)`` runs it;
  * NCHW folded: the BN folded into the conv bias, still NCHW;
  * channels_last folded: what ``dyngate.compile(model, "torch")`` runs.

An NCHW oneDNN conv reorders its input into a channel-blocked layout and its output back on every
call (``ONEDNN_VERBOSE=1`` lists the ``reorder`` primitives); at widths off a multiple of the block
(16 fp32 lanes with AVX-512) those reorders take the slow generic path. The table shows the step.

    python benchmarks/bench_conv_layout.py --threads 2 --sizes 28 14 7
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dyngate.pruning.latency import _time_ms  # noqa: E402  one warm-up, then the median of the repeats


def forms(w: int) -> dict[str, tuple[nn.Module, bool]]:
    """name -> (module, channels_last input)."""
    bn = nn.Sequential(nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w)).eval()
    folded = nn.Conv2d(w, w, 3, 1, 1).eval()
    cl = nn.Conv2d(w, w, 3, 1, 1).eval().to(memory_format=torch.channels_last)
    return {"NCHW + BN": (bn, False), "NCHW folded": (folded, False), "channels_last folded": (cl, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[28, 14, 7], help="input H = W")
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 12, 16, 17, 20, 24, 28, 31, 32, 40, 48, 64])
    ap.add_argument("--repeats", type=int, default=21)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"3x3 conv, batch {args.batch}, {args.threads} threads, median of {args.repeats} calls (ms); "
          f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}")
    print("| H=W | width | NCHW + BN | NCHW folded | channels_last folded | NCHW + BN / channels_last |")
    print("|---|---|---|---|---|---|")
    for hw in args.sizes:
        for w in args.widths:
            x = torch.randn(args.batch, w, hw, hw)
            ms = {}
            for name, (m, cl) in forms(w).items():
                xin = x.contiguous(memory_format=torch.channels_last) if cl else x
                ms[name] = _time_ms(m, xin, args.repeats)
            print(f"| {hw} | {w} | {ms['NCHW + BN']:.2f} | {ms['NCHW folded']:.2f} | "
                  f"{ms['channels_last folded']:.2f} | {ms['NCHW + BN'] / ms['channels_last folded']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
