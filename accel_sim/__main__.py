"""``python -m accel_sim run|sweep|tables``: see ``--help`` of each command."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from accel_sim.config import (DATAFLOWS, GATE_SCHEDULES, OBJECTIVES, WORDS, AccelConfig, ConfigError, config_from_mapping,
                              load_config, parse_array)
from accel_sim.cost_tables import FPGA_PARTS, SRAM_CACTI, SRAM_CACTI_SOURCE, TABLE
from accel_sim.networks import BUILTINS, build
from accel_sim.profile import ProfileError, layers_from_profile, load_profile, match_profile, uniform_gates
from accel_sim.report import format_breakdown, format_table, plot_layers, to_json, write_csv
from accel_sim.simulate import simulate
from accel_sim.sweep import SWEEP_COLUMNS, plot_pareto, run_sweep, write_sweep_csv
from accel_sim.topology import read_scalesim_csv, with_batch


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where an option has one; options without one say so in their help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def _chw(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        c, h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--input: expected CxHxW such as 1x28x28, got {text!r}") from None
    return c, h, w


def _kb(text: str) -> float:
    """--gather-buffer-kb as a number (its range is AccelConfig's to check)."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--gather-buffer-kb: expected KiB as a number, got {text!r}") from None


def _config(args: argparse.Namespace) -> AccelConfig:
    cfg = load_config(args.config) if args.config else AccelConfig()
    over = {}
    if args.array:
        over["rows"], over["cols"] = parse_array(args.array)
    for key in ("dataflow", "word", "schedule", "optimize"):
        if getattr(args, key, None):
            over["gate_schedule" if key == "schedule" else key] = getattr(args, key)
    if getattr(args, "gather_buffer_kb", None) is not None:
        over["gather_buffer_kb"] = _kb(args.gather_buffer_kb)
    if getattr(args, "no_dense_fallback", False):
        over["dense_fallback"] = False
    return config_from_mapping({**cfg.to_dict(), **over}, "command line") if over else cfg


def _add_hw_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="accelerator config: YAML with fields of accel_sim.config.AccelConfig, "
                   "or a SCALE-Sim v2 .cfg ([architecture_presets]); default: AccelConfig defaults")
    p.add_argument("--array", help="ROWSxCOLS, overrides the config (config default 32x32)")
    p.add_argument("--dataflow", choices=DATAFLOWS, help="overrides the config (config default ws)")
    p.add_argument("--word", choices=tuple(WORDS), help="operand word, overrides the config (config default int8)")
    p.add_argument("--input", help="input CxHxW, e.g. 1x28x28 (built-in networks; default: the network's "
                   "own, or the profile's input_shape)")


def _batch(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--batch: expected an integer >= 1, got {value!r}")
    return value


def _profile_input(profile) -> tuple[int, int, int] | None:
    shape = tuple(profile.input_shape)
    return tuple(int(x) for x in shape[-3:]) if len(shape) in (3, 4) else None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    profile = load_profile(args.profile) if args.profile else None
    if args.partitions is not None and args.density is None:
        raise ConfigError("run: --partitions applies to --density (a profile stores its own partitions)")
    if args.topology:
        layers = read_scalesim_csv(args.topology)
    elif args.network:
        chw = _chw(args.input) or (_profile_input(profile) if profile else None)
        layers = build(args.network, chw, args.classes)
    elif profile is not None:
        layers = layers_from_profile(profile)
    else:
        raise ConfigError("run: give a built-in network, --topology FILE.csv or --profile FILE.yaml")
    layers = with_batch(layers, _batch(args.batch))
    gates = {}
    if profile is not None:
        gates = match_profile(profile, layers)
    elif args.density is not None:
        gates = uniform_gates(layers, args.density, args.partitions or 4)
    else:
        print("accel_sim: note: no gates given, so gated = dense; add --density 0.5 (uniform gate density, "
              "--partitions P) or --profile p.yaml (measured by dyngate.profile) to simulate gating",
              file=sys.stderr)
    result = simulate(layers, cfg, gates, compat=args.scalesim_compat)
    if args.csv:
        write_csv(result, args.csv)
    if args.plot:
        plot_layers(result, args.plot)
    print(to_json(result) if args.json else format_table(result))
    if args.breakdown and not args.json:
        print(format_breakdown(result))
    return 0


def _sweep_base(args: argparse.Namespace) -> AccelConfig | None:
    """The sweep's base config: --config, with --optimize on top."""
    cfg = load_config(args.config) if args.config else None
    if args.optimize:
        cfg = config_from_mapping({**(cfg or AccelConfig()).to_dict(), "optimize": args.optimize}, "command line")
    return cfg


def cmd_sweep(args: argparse.Namespace) -> int:
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    rows = run_sweep(args.network, split(args.arrays), split(args.dataflows),
                     [float(x) for x in split(args.sram_kb)], [float(x) for x in split(args.densities)],
                     base=_sweep_base(args), workers=args.workers,
                     chw=_chw(args.input), ray_address=args.ray, batch=_batch(args.batch))
    doc = write_sweep_csv(rows, args.csv)
    if args.plot:
        plot_pareto(rows, args.plot)
    print(f"{len(rows)} points -> {args.csv} (columns described in {doc})" + (f", {args.plot}" if args.plot else ""))
    return 0


def cmd_tables(_: argparse.Namespace) -> int:
    for key, c in TABLE.items():
        print(f"{key:28s} {c.value:>10g} {c.unit:9s} {c.source}")
    for part, res in FPGA_PARTS.items():
        print(f"{part:28s} DSP {res['dsp']}, BRAM18K {res['bram18']}, LUT {res['lut']}, FF {res['ff']}  "
              f"{res['source']}")
    print(f"SRAM per access by capacity and port width: {SRAM_CACTI_SOURCE}")
    print(f"{'KiB':>6} {'bits':>5} {'read pJ':>9} {'write pJ':>9} {'area mm2':>9} {'leak mW':>9}")
    for (kb, bits), (rd, wr, area, leak) in sorted(SRAM_CACTI.items()):
        print(f"{kb:>6} {bits:>5} {rd:>9.3f} {wr:>9.3f} {area:>9.4f} {leak:>9.3g}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    fmt = _HelpFormatter
    ap = argparse.ArgumentParser(prog="python -m accel_sim", description=__doc__, formatter_class=fmt)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="simulate one network, dense and gated", formatter_class=fmt)
    run.add_argument("network", nargs="?", help=f"built-in network, one of: {', '.join(sorted(BUILTINS))}; "
                     "optional with --topology or --profile")
    run.add_argument("--topology", help="SCALE-Sim v2 topology CSV instead of a built-in network; default: none")
    run.add_argument("--scalesim-compat", action="store_true",
                     help="SCALE-Sim v2 cycle convention (folds x per-fold - 1)")
    run.add_argument("--classes", type=int, help="classifier outputs (built-in networks; default: the network's)")
    _add_hw_args(run)
    run.add_argument("--batch", type=int, default=1, help="images per run (>= 1): every layer's GEMM has "
                     "batch x output pixels rows; filters are fetched once for the batch")
    run.add_argument("--schedule", choices=GATE_SCHEDULES, help="conditional-pass hardware: auto (cheapest per "
                     "layer) | column (per-column compacted lists) | union (shared streams); config default auto")
    run.add_argument("--optimize", metavar="{" + ",".join(OBJECTIVES) + "}", help=f"what the per-layer choice between dense and the gated schedules "
                     f"minimises: {' | '.join(OBJECTIVES)} (cycles = total cycles incl. DRAM stalls, "
                     "edp = energy x cycles); default: the config's, AccelConfig default cycles")
    run.add_argument("--gather-buffer-kb", help="WS gather window for per-column conditional lists, "
                     "KiB >= 0 (0: none, gathers read the ifmap SRAM); default: the config's, AccelConfig "
                     "default 8")
    run.add_argument("--breakdown", action="store_true",
                     help="also print, per gated layer, the energy by part against dense and why its "
                     "schedule was chosen (the JSON/CSV rows always carry it)")
    run.add_argument("--no-dense-fallback", action="store_true",
                     help="run every gated layer gated, even where its dense mapping scores better on "
                     "--optimize")
    g = run.add_mutually_exclusive_group()
    g.add_argument("--profile", help="dyngate SparsityProfile YAML (schema dyngate.sparsity_profile v1/v2); "
                   "alone, it is the topology too; default: none")
    g.add_argument("--density", type=float, help="uniform gate density in [0, 1] on the layers CGNet gates; "
                   "default: no gating")
    run.add_argument("--partitions", type=int, help="gate partitions (>= 2, must divide a layer's input "
                     "channels for it to be gated) with --density; default 4")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--csv", help="write per-layer rows to this CSV (atomically); default: not written")
    run.add_argument("--plot", help="write a per-layer PNG; default: not written")
    run.set_defaults(func=cmd_run)
    sw = sub.add_parser("sweep", help="array x dataflow x SRAM x density sweep, CSV + Pareto plot",
                        formatter_class=fmt)
    sw.add_argument("network", nargs="?", default="resnet18", help=f"one of: {', '.join(sorted(BUILTINS))}")
    sw.add_argument("--config", help="base accelerator config (YAML or SCALE-Sim .cfg); default: AccelConfig "
                    "defaults")
    sw.add_argument("--input", help="input CxHxW; default: the network's own")
    sw.add_argument("--batch", type=int, default=1, help="images per run (>= 1), as run --batch")
    sw.add_argument("--arrays", default="8x8,16x16,32x32,64x64,128x128", help="comma list of ROWSxCOLS")
    sw.add_argument("--dataflows", default="os,ws,is", help=f"comma list from {', '.join(DATAFLOWS)}")
    sw.add_argument("--sram-kb", default="64,256", help="comma list of KiB, applied to all three buffers")
    sw.add_argument("--densities", default="1.0,0.5,0.35,0.2", help="comma list of gate densities in [0, 1]")
    sw.add_argument("--optimize", metavar="{" + ",".join(OBJECTIVES) + "}", help=f"per-layer schedule choice minimises {' | '.join(OBJECTIVES)}; "
                    "default: the config's, AccelConfig default cycles")
    sw.add_argument("--workers", type=int, default=2, help="local worker processes (1: in-process)")
    sw.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="run the points on Ray instead of local processes; no ADDRESS: start a local "
                    "cluster; ADDRESS: e.g. auto or ray://host:10001 (needs the [ray] extra); default: off, local processes")
    sw.add_argument("--csv", default="accel_sim_sweep.csv", help="output CSV (written atomically), with "
                    "CSV.md beside it describing every column: " + ", ".join(SWEEP_COLUMNS))
    sw.add_argument("--plot", default="accel_sim_pareto.png", help="output Pareto PNG; empty string: none")
    sw.set_defaults(func=cmd_sweep)
    tb = sub.add_parser("tables", help="print every cost constant with its source", formatter_class=fmt)
    tb.set_defaults(func=cmd_tables)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ProfileError, ValueError, OSError, RuntimeError) as exc:
        print(f"accel_sim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
