"""accel_sim: achieved against theoretical speedup of per-element and tile (block) gates, side by side.

    python benchmarks/accel_sim_tile_gates.py [--densities 0.5 0.3 0.1] [--out results/accel_sim_tile_gates.md]

For ResNet-18 (224x224) and ResNet-20 (32x32), CGNet's gating rule, p = 4 with a non-grouped
base (as the block-gated Fashion-MNIST models are trained), on the default array and each
dataflow: the gated layers' cycle speedup over dense (DRAM stalls included, dense fallback
allowed), the MAC-count (theoretical) speedup at the drawn masks' density, their ratio
(efficiency) and the whole network's gated over dense energy. Per-element gates draw every
output independently; block gates draw one decision per tile x 16 channels (7x7 on ResNet-18,
8x8 on ResNet-20) at the same density, each group switching on its share of the blocks
(``gating.draw_mask``). Simulated, not measured: a statement about the schedules, not a chip.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without reinstalling
from accel_sim import AccelConfig, GateSpec, build_network, simulate  # noqa: E402
from accel_sim.networks import cgnet_gated  # noqa: E402
from fsio import write_text_atomic  # noqa: E402

NETS = {"resnet18": (None, (7, 7)), "resnet20": ((3, 32, 32), (8, 8))}
DATAFLOWS = ("os", "ws", "is")
G = 16


def rows(densities: list[float], seed: int) -> list[dict]:
    out = []
    for net, (shape, tile) in NETS.items():
        layers = build_network(net, shape) if shape else build_network(net)
        gated = cgnet_gated(layers)
        for df in DATAFLOWS:
            cfg = AccelConfig(dataflow=df, seed=seed)
            dense = simulate(layers, cfg).totals
            for dens in densities:
                for kind, g, t in (("per-element", 1, (1, 1)), (f"block {tile[0]}x{tile[1]}x{G}", G, tile)):
                    specs = {l.name: GateSpec(4, np.full(l.out_channels, dens), False, g, t)
                             for l in layers if l.name in gated}
                    tot = simulate(layers, cfg, specs).totals
                    out.append(dict(network=net, dataflow=df, density=dens, gates=kind,
                                    speedup=tot["gated_layers_speedup"],
                                    theoretical=tot["gated_layers_theoretical_speedup"],
                                    energy_ratio=tot["energy_pj"] / dense["energy_pj"]))
    return out


def table(rs: list[dict]) -> str:
    lines = ["| network | dataflow | density | gates | gated-layer cycle speedup | theoretical | efficiency "
             "| energy gated/dense, whole network |", "|---|---|---|---|---|---|---|---|"]
    for r in rs:
        lines.append(f"| {r['network']} | {r['dataflow']} | {r['density']} | {r['gates']} | "
                     f"{r['speedup']:.3f}x | {r['theoretical']:.3f}x | {r['speedup'] / r['theoretical']:.2f} | "
                     f"{r['energy_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.3, 0.1],
                    help="gate densities to simulate (default: 0.5 0.3 0.1; each in (0, 1])")
    ap.add_argument("--seed", type=int, default=0, help="mask seed (default: 0; >= 0)")
    ap.add_argument("--out", default=None, help="also write the table to this Markdown file (default: none)")
    args = ap.parse_args(argv)
    bad = [d for d in args.densities if not 0 < d <= 1]
    if bad or args.seed < 0:
        what = f"--densities: {bad[0]} is not in (0, 1]" if bad else f"--seed: {args.seed} is negative"
        print(f"accel_sim_tile_gates: {what}", file=sys.stderr)
        return 2
    text = table(rows(args.densities, args.seed))
    print(text, end="")
    if args.out:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
