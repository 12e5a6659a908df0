"""ResNet-18 density sweep on the default array: achieved speedup against the MAC ratio.

    python benchmarks/accel_sim_density_sweep.py [--plot results/accel_sim_resnet18_density.png]

Prints one markdown table per scenario; ``all-3x3`` gates every 3x3 conv after the stem
(including the ones feeding residual adds), the setting in which CGNet reports 2.8x fewer MACs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accel_sim import AccelConfig, GateSpec, build_network, simulate, uniform_gates  # noqa: E402
from fsio import save_figure_atomic  # noqa: E402

DENSITIES = (1.0, 0.7, 0.5, 0.35, 0.25, 0.15, 0.05, 0.0)


def all_3x3(layers, density, grouped=True):
    return {l.name: GateSpec(4, np.full(l.out_channels, density), grouped) for l in layers[1:]
            if l.kernel_size == (3, 3) and l.groups == 1}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plot")
    args = ap.parse_args()
    layers = build_network("resnet18")
    base = AccelConfig()
    scenarios = {
        "cgnet-rule ws auto": (base, lambda d: uniform_gates(layers, d)),
        "cgnet-rule ws union-only": (base.replace(gate_schedule="union"), lambda d: uniform_gates(layers, d)),
        "cgnet-rule os auto": (base.replace(dataflow="os"), lambda d: uniform_gates(layers, d)),
        "all-3x3 ws auto": (base, lambda d: all_3x3(layers, d)),
        "all-3x3 ws auto, ungrouped base": (base, lambda d: all_3x3(layers, d, grouped=False)),
        "all-3x3 os auto, ungrouped base": (base.replace(dataflow="os"), lambda d: all_3x3(layers, d, False)),
    }
    curves = {}
    for label, (cfg, gates) in scenarios.items():
        print(f"\n{label} ({cfg.rows}x{cfg.cols} {cfg.dataflow})\n")
        print("| density | dense cycles | gated cycles | speedup | MAC ratio | gated-layer speedup | "
              "gated-layer MAC ratio | energy uJ dense -> gated |")
        print("|---|---|---|---|---|---|---|---|")
        pts = []
        for d in DENSITIES:
            t = simulate(layers, cfg, gates(d)).totals
            pts.append((d, t["speedup"], t["theoretical_speedup"]))
            print(f"| {d:.2f} | {t['dense_cycles']:,} | {t['gated_cycles']:,} | {t['speedup']:.2f}x | "
                  f"{t['theoretical_speedup']:.2f}x | {t['gated_layers_speedup']:.2f}x | "
                  f"{t['gated_layers_theoretical_speedup']:.2f}x | {t['dense_energy_pj'] / 1e6:.0f} -> "
                  f"{t['energy_pj'] / 1e6:.0f} |")
        curves[label] = pts
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (label, pts) in enumerate(curves.items()):
            color = f"C{i}"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"{label}: achieved")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], ":", color=color)
        ax.set_xlabel("gate density (fraction of outputs computed in full)")
        ax.set_ylabel("ResNet-18 speedup over dense (x); dotted: MAC ratio")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure_atomic(fig, args.plot, dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
