"""``python -m accel_sim run|sweep|tables``: see ``--help`` of each command."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from accel_sim.config import AccelConfig, ConfigError, config_from_mapping, load_config, parse_array
from accel_sim.cost_tables import FPGA_PARTS, TABLE
from accel_sim.networks import BUILTINS, build
from accel_sim.profile import ProfileError, load_profile, match_profile, uniform_gates
from accel_sim.report import format_table, plot_layers, to_json, write_csv
from accel_sim.simulate import simulate
from accel_sim.sweep import plot_pareto, run_sweep, write_sweep_csv
from accel_sim.topology import read_scalesim_csv


def _chw(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        c, h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input: expected CxHxW such as 1x28x28, got {text!r}") from None
    return c, h, w


def _config(args: argparse.Namespace) -> AccelConfig:
    cfg = load_config(args.config) if args.config else AccelConfig()
    over = {}
    if args.array:
        over["rows"], over["cols"] = parse_array(args.array)
    for key in ("dataflow", "word", "schedule"):
        if getattr(args, key, None):
            over["gate_schedule" if key == "schedule" else key] = getattr(args, key)
    if getattr(args, "no_dense_fallback", False):
        over["dense_fallback"] = False
    return config_from_mapping({**cfg.to_dict(), **over}, "command line") if over else cfg


def _add_hw_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="accelerator YAML config (fields of accel_sim.config.AccelConfig)")
    p.add_argument("--array", help="ROWSxCOLS, overrides the config (default 32x32)")
    p.add_argument("--dataflow", help="os | ws | is, overrides the config")
    p.add_argument("--word", help="int8 | int16 | fp16, overrides the config")
    p.add_argument("--input", help="input CxHxW, e.g. 1x28x28 (built-in networks)")


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.topology:
        layers = read_scalesim_csv(args.topology)
    elif args.network:
        layers = build(args.network, _chw(args.input), args.classes)
    else:
        raise ConfigError("run: give a built-in network or --topology FILE.csv")
    if args.profile and args.density is not None:
        raise ConfigError("run: --profile and --density are exclusive")
    gates = {}
    if args.profile:
        gates = match_profile(load_profile(args.profile), layers)
    elif args.density is not None:
        gates = uniform_gates(layers, args.density)
    result = simulate(layers, cfg, gates, compat=args.scalesim_compat)
    if args.csv:
        write_csv(result, args.csv)
    if args.plot:
        plot_layers(result, args.plot)
    print(to_json(result) if args.json else format_table(result))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    rows = run_sweep(args.network, split(args.arrays), split(args.dataflows),
                     [float(x) for x in split(args.sram_kb)], [float(x) for x in split(args.densities)],
                     base=load_config(args.config) if args.config else None, workers=args.workers,
                     chw=_chw(args.input))
    write_sweep_csv(rows, args.csv)
    if args.plot:
        plot_pareto(rows, args.plot)
    print(f"{len(rows)} points -> {args.csv}" + (f", {args.plot}" if args.plot else ""))
    return 0


def cmd_tables(_: argparse.Namespace) -> int:
    for key, c in TABLE.items():
        print(f"{key:28s} {c.value:>10g} {c.unit:9s} {c.source}")
    for part, res in FPGA_PARTS.items():
        print(f"{part:28s} DSP {res['dsp']}, BRAM18K {res['bram18']}, LUT {res['lut']}, FF {res['ff']}  "
              f"{res['source']}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m accel_sim", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="simulate one network, dense and gated")
    run.add_argument("network", nargs="?", help=f"built-in: {', '.join(sorted(BUILTINS))}")
    run.add_argument("--topology", help="SCALE-Sim v2 topology CSV instead of a built-in network")
    run.add_argument("--scalesim-compat", action="store_true",
                     help="SCALE-Sim v2 cycle convention (folds x per-fold - 1)")
    run.add_argument("--classes", type=int, help="classifier outputs (built-in networks)")
    _add_hw_args(run)
    run.add_argument("--schedule", help="conditional-pass hardware: auto (cheapest per layer) | column "
                     "(per-column compacted lists) | union (shared streams)")
    run.add_argument("--no-dense-fallback", action="store_true",
                     help="run every gated layer gated, even where its dense mapping is faster")
    g = run.add_mutually_exclusive_group()
    g.add_argument("--profile", help="dyngate SparsityProfile YAML")
    g.add_argument("--density", type=float, help="uniform gate density on the layers CGNet gates")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--csv", help="write per-layer rows to this CSV")
    run.add_argument("--plot", help="write a per-layer PNG")
    run.set_defaults(func=cmd_run)
    sw = sub.add_parser("sweep", help="array x dataflow x SRAM x density sweep, CSV + Pareto plot")
    sw.add_argument("network", nargs="?", default="resnet18")
    sw.add_argument("--config", help="base accelerator YAML config")
    sw.add_argument("--input", help="input CxHxW")
    sw.add_argument("--arrays", default="8x8,16x16,32x32,64x64,128x128")
    sw.add_argument("--dataflows", default="os,ws,is")
    sw.add_argument("--sram-kb", default="64,256")
    sw.add_argument("--densities", default="1.0,0.5,0.35,0.2")
    sw.add_argument("--workers", type=int, default=2)
    sw.add_argument("--csv", default="accel_sim_sweep.csv")
    sw.add_argument("--plot", default="accel_sim_pareto.png")
    sw.set_defaults(func=cmd_sweep)
    tb = sub.add_parser("tables", help="print every cost constant with its source")
    tb.set_defaults(func=cmd_tables)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ProfileError, ValueError, OSError) as exc:
        print(f"accel_sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
