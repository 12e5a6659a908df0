"""The fused kernel's channel-loop unroll (CU in csrc/gated_conv.c), measured per layer.

For every CGNet-gated conv1 shape of ResNet-18 (224x224, batch 8) and ResNet-20 (32x32,
batch 64), p = 4, grouped base, all gates on (so every tile runs its base and remaining sums:
dense MACs, where the FMA loop's own speed shows): oneDNN's dense conv and the compiled
per-element kernel at each ``--unroll`` value, in both loop orders (position- and
channel-tile-major; ``auto`` measures both), interleaved medians. The build is the one
``kernels.cpu_fused`` makes for the layer (``--prefix``: the prefix build), with only CU and the
loop order overridden; the CU the runtime picks is marked. Columns are dense time / kernel
time: what the unroll rule in ``cpu_fused._channel_unroll`` rests on.

    python benchmarks/bench_kernel_unroll.py --isa avx2 --unroll 1,4,8
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# first: importing bench_gated_conv applies --isa's caps before torch loads
from bench_gated_conv import cpu_header_line  # noqa: E402
from bench_gated_conv_shapes import NETWORKS, interleaved_medians  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's packages
from kernels import cpu_fused  # noqa: E402
from kernels.geometry import ConvGeometry  # noqa: E402


def _kernel(geo: ConvGeometry, defines: dict[str, int], x, w, b):
    """A call of the kernel built with ``defines`` on ``x`` with every gate on."""
    fn = cpu_fused._load(tuple(sorted(defines.items())), cpu_fused.isa())[0]
    wp, wr = cpu_fused._kernel_weights(w, defines, 4, True)
    tau = torch.full((geo.c_out,), float("-inf"))     # Yp > -inf: every gate on
    isg = torch.ones(geo.c_out)
    out = torch.empty(geo.n, geo.c_out, geo.ho, geo.wo).contiguous(memory_format=torch.channels_last)
    keep = (wp, wr, b, tau, isg, out)
    ptrs = [cpu_fused._ptr(t) for t in keep]
    threads = torch.get_num_threads()

    def call():
        return fn(cpu_fused._ptr(x), *ptrs, None, None, geo.n, threads)
    call.keep = keep
    return call


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--isa", choices=("avx2", "avx512", "native"), default="native",
                    help="cap the kernel, oneDNN and ATen at this ISA (read before torch loads)")
    ap.add_argument("--threads", type=int, default=2, help="torch and kernel threads (>= 1)")
    ap.add_argument("--repeats", type=int, default=15, help="interleaved timed rounds (>= 1); medians")
    ap.add_argument("--unroll", default="1,4", help="comma list of CU values to build (each >= 1)")
    ap.add_argument("--networks", default="resnet18,resnet20", help="comma list of resnet18, resnet20")
    ap.add_argument("--prefix", action="store_true", help="time the prefix build instead of the fused one")
    args = ap.parse_args(argv)
    try:
        unrolls = [int(u) for u in args.unroll.split(",")]
    except ValueError:
        ap.error(f"--unroll {args.unroll!r}: a comma list of integers")
    nets = args.networks.split(",")
    if args.threads < 1 or args.repeats < 1 or min(unrolls) < 1 or not set(nets) <= set(NETWORKS):
        ap.error("--threads, --repeats and --unroll values must be >= 1; --networks from resnet18, resnet20")
    if not cpu_fused.available():
        ap.error("no C compiler: the kernel cannot be built here")
    torch.set_num_threads(args.threads)
    print(cpu_header_line(args.threads))
    print(f"{'prefix' if args.prefix else 'fused'} build, all gates on, p = 4, grouped base; dense/kernel "
          f"per CU and loop order (pos = position-tile-major, chan = channel-tile-major); medians of "
          f"{args.repeats} interleaved rounds; * = the CU the runtime builds\n")
    cols = [f"CU={u} {o}" for u in unrolls for o in ("pos", "chan")]
    print("| network | layer | batch | dense ms | " + " | ".join(cols) + " | best per CU |")
    print("|---|---|---|---|" + "---|" * len(cols) + "---|")
    gen = torch.Generator().manual_seed(0)
    for net in nets:
        layers, batch = NETWORKS[net]
        for layer in (lay for lay in layers() if lay.role == "conv1"):
            geo = ConvGeometry(batch, layer.c_in, layer.hw, layer.hw, layer.c_out, layer.k, layer.k,
                               (layer.stride,) * 2, (layer.padding,) * 2, (1, 1))
            if args.prefix and cpu_fused.prefix_unsupported_reason(geo, 4, True, 1) is not None:
                continue
            if cpu_fused.unsupported_reason(geo, 4, True, 1) is not None:
                continue
            base = cpu_fused._defines(geo, 4, True, 1, prefix=args.prefix)
            x = torch.randn(batch, layer.c_in, layer.hw, layer.hw, generator=gen).contiguous(
                memory_format=torch.channels_last)
            w = torch.randn(layer.c_out, layer.c_in, layer.k, layer.k, generator=gen) * 0.05
            b = torch.randn(layer.c_out, generator=gen)
            wd = w.contiguous(memory_format=torch.channels_last)
            calls = {"dense": lambda: F.conv2d(x, wd, b, layer.stride, layer.padding)}
            for u in unrolls:
                for order, pos_major in (("pos", 1), ("chan", 0)):
                    d = {**base, "CU": u, "POS_MAJOR": pos_major}
                    calls[f"CU={u} {order}"] = _kernel(geo, d, x, w, b)
            t = interleaved_medians(calls, args.repeats)
            ratio = {k: t["dense"] / v for k, v in t.items() if k != "dense"}
            best = " / ".join(f"{max(ratio[f'CU={u} pos'], ratio[f'CU={u} chan']):.2f}"
                              f"{'*' if u == base['CU'] else ''}" for u in unrolls)
            print(f"| {net} | {layer.c_in}->{layer.c_out} s{layer.stride} @{layer.hw} | {batch} | "
                  f"{1e3 * t['dense']:.2f} | " + " | ".join(f"{ratio[c]:.2f}" for c in cols) + f" | {best} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
