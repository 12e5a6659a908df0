"""accel_sim next to SCALE-Sim v3 and ZigZag on the same ResNet-18 layers: cycles, energy by memory
and access counts side by side (issue #16 item 3).

    python benchmarks/bench_accel_sim_peers.py [--layers conv1,layer1.0.conv1,...|all]
        [--config accel.yaml] [--env-dir DIR] [--cache-dir DIR] [--refresh]
        [--skip-scalesim] [--skip-zigzag] [--out results/accel_sim_peers.md]

The peers are never dependencies of this project: each lives in its own virtual environment under
``--env-dir``, created on first use from PyPI (``scalesim==3.0.0`` with ``numpy<2.3``;
``zigzag-dse==3.9.1`` plus ``six``, which 3.9.1 imports without declaring).  Their raw outputs
are cached as JSON under ``--cache-dir``, keyed by tool version, layer and the exact input files,
so a rerun only recomputes our side (which is always computed live).

Translation of the config (default ``AccelConfig()``: 32x32 int8 WS, 128/128/256 KiB SRAM):

* SCALE-Sim v3: the .cfg of ``bench_accel_sim.CFG`` plus v3's required [layout]/[sparsity]
  sections, USER bandwidth mode at our DRAM bandwidth in words/cycle (v3 reads the ifmap and
  filter DRAM bandwidth from ``[layout] *SRAMBankBandwidth`` and only the ofmap one from
  ``Bandwidth``, so all three are set), one layer per run (padded dims, ``write_scalesim_csv``),
  traces off.  v3 has no energy model of its own; its energy is the Accelergy flow
  (``rundir-accelergy`` of the repository), which needs ``accelergy``: the script records why
  that cannot run here, and shows SCALE-Sim's access counts x our per-access energies instead,
  labelled as such.
* ZigZag: the layer as a ZigZag conv (padding, stride), an accelerator with our SRAM sizes, ports
  as wide as the array edge each buffer feeds (``accel_sim.cost.port_lanes``), read/write energy
  per access = our per-word energies (``EnergyRates``) x lanes, DRAM = our pJ/bit x port bits,
  MAC = our MAC energy, a free per-PE weight register (our MAC energy already pays the PE
  registers); the mapping fixes our WS loop nest (reduction on the rows, filters on the
  columns, output pixels streamed innermost, then row folds, then column folds), so energy
  gaps come from what each tool counts, not from constants or a different schedule.
"""
from __future__ import annotations

import argparse
import configparser
import csv
import hashlib
import importlib.util
import io
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without reinstalling

from accel_sim import AccelConfig, Layer, build_network, load_config, read_scalesim_csv, simulate  # noqa: E402
from accel_sim.atomic import write_text_atomic  # noqa: E402
from accel_sim.cost import ACC_BITS, ENERGY_PARTS, WORD_BITS, EnergyRates, port_lanes  # noqa: E402
from accel_sim.memory import dram_words, usable_words  # noqa: E402
from accel_sim.topology import write_scalesim_csv  # noqa: E402


def _load_sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench_v2 = _load_sibling("bench_accel_sim")  # SCALE-Sim v2 .cfg template
cpu_model = _load_sibling("cpu_info").cpu_model

DEFAULT_LAYERS = ("conv1", "layer1.0.conv1", "layer2.0.conv1", "layer2.0.downsample.0", "layer3.0.conv1",
                  "layer4.0.conv1")
SCALESIM_REQS = ("scalesim==3.0.0", "numpy<2.3")
ZIGZAG_REQS = ("zigzag-dse==3.9.1", "six")
DEFAULT_ENV_DIR = Path.home() / ".cache" / "dyngate" / "peer-envs"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "dyngate" / "peer-results"
UJ = 1e-6  # pJ -> uJ

# ----------------------------------------------------------------------------- environments


def _pip_error(text: str) -> str:
    """pip's output without its per-index 'Location ... is ignored' warnings."""
    lines = [l for l in text.splitlines() if l.strip() and "is ignored: it is neither" not in l]
    return "\n".join(lines[-6:])


def ensure_env(env_dir: Path, name: str, reqs: tuple[str, ...], log=print) -> Path:
    """Python of a venv ``env_dir/name`` holding ``reqs`` (created and installed once)."""
    env = env_dir / name
    py = env / "bin" / "python"
    marker = env / ".peer-reqs"
    if py.exists() and marker.exists() and marker.read_text() == "\n".join(reqs):
        return py
    log(f"creating {env} with {' '.join(reqs)} ...")
    env_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", *reqs], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install {' '.join(reqs)} into {env} failed:\n{_pip_error(proc.stderr + proc.stdout)}")
    marker.write_text("\n".join(reqs))
    return py


def tool_version(py: Path, dist: str) -> str:
    out = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def accelergy_check(py: Path, env: Path) -> dict[str, str]:
    """Why SCALE-Sim v3's energy flow (rundir-accelergy + Accelergy) cannot run from this env.

    Tried once per environment (the answer is cached beside it): the scalesim wheel's files
    (does it ship rundir-accelergy?) and ``pip install accelergy`` from the package index."""
    cache = env / ".accelergy-check.json"
    if cache.exists():
        return json.loads(cache.read_text())
    files = subprocess.run([str(py), "-c", "import importlib.metadata as m; "
                            "print('\\n'.join(str(f) for f in m.files('scalesim')))"],
                           capture_output=True, text=True).stdout.split()
    shipped = [f for f in files if "accelergy" in f.lower() or f.endswith("run_all.sh")]
    proc = subprocess.run([str(py), "-m", "pip", "install", "-q", "accelergy"], capture_output=True, text=True)
    result = {"wheel_accelergy_files": ", ".join(shipped) or "none",
              "pip_install_accelergy_rc": str(proc.returncode),
              "pip_install_accelergy": _pip_error(proc.stderr + proc.stdout) or "ok"}
    cache.write_text(json.dumps(result, indent=1))
    return result


def _cache_path(cache_dir: Path, tool: str, version: str, layer: str, inputs: dict[str, str]) -> Path:
    key = json.dumps({"tool": tool, "version": version, "layer": layer, "inputs": inputs}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir / f"{tool}-{version}-{layer}-{digest}.json"


def _cached_run(cache_dir: Path, tool: str, version: str, layer: str, inputs: dict[str, str], refresh: bool,
                run) -> dict[str, Any]:
    path = _cache_path(cache_dir, tool, version, layer, inputs)
    if path.exists() and not refresh:
        out = json.loads(path.read_text())
        out["cached"] = True
        return out
    out = run()
    if out.get("status") == "ok":
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(out, indent=1))
    out["cached"] = False
    return out


# ----------------------------------------------------------------------------- SCALE-Sim v3

SCALESIM_V3_RUNNER = textwrap.dedent("""
    import sys, time
    from scalesim.scale_sim import scalesim
    t = time.perf_counter()
    # the CLI ignores -s (v3 bug): only the constructor turns traces off
    s = scalesim(save_disk_space=True, verbose=False, config=sys.argv[1], topology=sys.argv[2], layout=sys.argv[4])
    s.run_scale(top_path=sys.argv[3])
    print("SCALESIM_SECONDS", time.perf_counter() - t)
""")


def scalesim_v3_cfg(cfg: AccelConfig, run_name: str = "peers") -> str:
    """SCALE-Sim v3 .cfg for ``cfg``: v2's template plus v3's required keys, USER bandwidth mode."""
    base = bench_v2.CFG.format(rows=cfg.rows, cols=cfg.cols, df=cfg.dataflow, ikb=int(cfg.ifmap_sram_kb),
                               fkb=int(cfg.filter_sram_kb), okb=int(cfg.ofmap_sram_kb))
    cp = configparser.ConfigParser()
    cp.optionxform = str
    cp.read_string(base)
    words_per_cycle = int(cfg.dram_bytes_per_cycle // cfg.word_bytes)
    cp["general"]["run_name"] = run_name
    arch = cp["architecture_presets"]
    arch["Bandwidth"] = str(words_per_cycle)     # v3 USER mode: the ofmap drain bandwidth only
    arch["ReadRequestBuffer"] = "512"            # v3 defaults (configs/scale.cfg)
    arch["WriteRequestBuffer"] = "512"
    cp["layout"] = {"IfmapCustomLayout": "False", "FilterCustomLayout": "False",
                    # v3 USER mode reads the ifmap/filter DRAM bandwidth from here
                    "IfmapSRAMBankBandwidth": str(words_per_cycle), "IfmapSRAMBankNum": "1",
                    "IfmapSRAMBankPort": "2",
                    "FilterSRAMBankBandwidth": str(words_per_cycle), "FilterSRAMBankNum": "1",
                    "FilterSRAMBankPort": "2"}
    cp["sparsity"] = {"SparsitySupport": "false", "SparseRep": "ellpack_block", "OptimizedMapping": "false",
                      "BlockSize": "8", "RandomNumberGeneratorSeed": "40"}
    cp["run_presets"] = {"InterfaceBandwidth": "USER", "UseRamulatorTrace": "False"}
    buf = io.StringIO()
    cp.write(buf)
    return buf.getvalue()


def scalesim_topology(layer: Layer, path: Path) -> str:
    write_scalesim_csv([layer], path)
    return path.read_text()


def _report(path: Path) -> dict[str, float]:
    """First data row of a SCALE-Sim report CSV as {header: value} (rows end with a comma)."""
    with path.open() as fh:
        rows = [[c.strip() for c in r] for r in csv.reader(fh)]
    head, row = [h for h in rows[0] if h], rows[1]
    return {h: float(v) for h, v in zip(head, row)}


def run_scalesim(py: Path, version: str, layer: Layer, cfg: AccelConfig, cache_dir: Path, refresh: bool,
                 timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg_text = scalesim_v3_cfg(cfg)
        topo_text = scalesim_topology(layer, tmp / "topo.csv")

        def run() -> dict[str, Any]:
            (tmp / "run.cfg").write_text(cfg_text)
            (tmp / "layout.csv").write_text("Layer name,\n")  # v3 requires a layout file; unused without custom layout
            (tmp / "runner.py").write_text(SCALESIM_V3_RUNNER)
            t = time.perf_counter()
            try:
                proc = subprocess.run([str(py), "runner.py", "run.cfg", "topo.csv", "out", "layout.csv"],
                                      capture_output=True, text=True, cwd=tmp, timeout=timeout)
            except subprocess.TimeoutExpired:
                return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                return {"status": "error", "error": f"rc {proc.returncode}: {proc.stderr.strip()[-800:]}"}
            rep = tmp / "out" / "peers"
            return {"status": "ok", "wall_seconds": wall, "compute": _report(rep / "COMPUTE_REPORT.csv"),
                    "access": _report(rep / "DETAILED_ACCESS_REPORT.csv"),
                    "bandwidth": _report(rep / "BANDWIDTH_REPORT.csv")}

        return _cached_run(cache_dir, "scalesim", version, layer.name,
                           {"cfg": cfg_text, "topology": topo_text, "runner": SCALESIM_V3_RUNNER}, refresh, run)


def scalesim_summary(raw: dict[str, Any], rates: EnergyRates, cfg: AccelConfig) -> dict[str, Any]:
    """Cycles and counts from SCALE-Sim's reports; energy = its counts x our per-access energies."""
    if raw.get("status") != "ok":
        return {"status": raw.get("status", "skipped"), "error": raw.get("error", "")}
    c, a = raw["compute"], raw["access"]
    total, stall = c["Total Cycles"], c["Stall Cycles"]
    counts = {"ifmap_sram_reads": a["SRAM IFMAP Reads"], "filter_sram_reads": a["SRAM Filter Reads"],
              "ofmap_sram_writes": a["SRAM OFMAP Writes"],
              "dram_ifmap_bytes": a["DRAM IFMAP Reads"] * cfg.word_bytes,
              "dram_filter_bytes": a["DRAM Filter Reads"] * cfg.word_bytes,
              "dram_ofmap_bytes": a["DRAM OFMAP Writes"] * cfg.word_bytes}
    dram_bits = 8 * (counts["dram_ifmap_bytes"] + counts["dram_filter_bytes"] + counts["dram_ofmap_bytes"])
    # SCALE-Sim's ofmap SRAM holds final words (1-byte words everywhere): one write per psum it
    # counts, charged here at our psum-write rate
    energy = {"ifmap_sram": counts["ifmap_sram_reads"] * rates.ifmap,
              "filter_sram": counts["filter_sram_reads"] * rates.filter,
              "ofmap_sram": counts["ofmap_sram_writes"] * rates.ofmap_write,
              "dram": dram_bits * rates.dram_bit}
    return {"status": "ok", "cached": raw.get("cached", False), "wall_seconds": raw.get("wall_seconds"),
            "compute_cycles": total - stall, "stall_cycles": stall, "total_cycles": total,
            "total_cycles_incl_prefetch": c["Total Cycles (incl. prefetch)"],
            "mapping_efficiency_pct": c["Mapping Efficiency %"], "counts": counts,
            "energy_pj_our_rates": energy}


# ----------------------------------------------------------------------------- ZigZag

ZIGZAG_RUNNER = textwrap.dedent("""
    import json, logging, sys, time
    from zigzag.api import get_hardware_performance_zigzag
    from zigzag.hardware.architecture.memory_port import DataDirection
    from zigzag.mapping.data_movement import DataMoveAttr
    t = time.perf_counter()
    energy, latency, cmes = get_hardware_performance_zigzag(sys.argv[1], sys.argv[2], sys.argv[3], opt="latency",
                                                            dump_folder=sys.argv[4], loma_show_progress_bar=False)
    seconds = time.perf_counter() - t
    logging.disable(logging.CRITICAL)
    cme = cmes[0][1][0][0]
    levels = []
    for layer_op, accesses in cme.memory_word_access.items():
        mem_op = cme.layer.memory_operand_links.layer_to_mem_op(layer_op)
        for lvl, acc in enumerate(accesses):
            mem = cme.accelerator.get_memory_level(mem_op, lvl)
            prec = cme.mapping.unit_mem_data_movement[layer_op][lvl].get_attribute(DataMoveAttr.DATA_PRECISION)
            en = cme.mem_energy_breakdown_further[layer_op][lvl]
            umdm = cme.mapping.unit_mem_data_movement[layer_op][lvl]
            elems = umdm.get_attribute(DataMoveAttr.DATA_ELEM_MOVE_COUNT)
            levels.append({"operand": str(layer_op), "level": lvl, "memory": mem.name,
                           "word_accesses": {str(d): float(acc.get(d)) for d in DataDirection},
                           "max_bw_bits": {str(d): mem.get_max_bandwidth(mem_op, d) or 0 for d in DataDirection},
                           "precision_bits": {str(d): prec.get(d) for d in DataDirection},
                           # ZigZag's own element counts; energy uses word_accesses (per-period amounts x periods)
                           "elem_counts": {str(d): float(elems.get(d)) for d in DataDirection},
                           "energy_pj": {str(d): float(en.get(d)) for d in DataDirection}})
    out = {"status": "ok", "seconds": seconds, "energy_total_pj": float(cme.energy_total),
           "mac_energy_pj": float(cme.mac_energy), "latency_total": float(cme.latency_total2),
           "ideal_cycle": float(cme.ideal_cycle), "ideal_temporal_cycle": float(cme.ideal_temporal_cycle),
           "stall_slack": float(cme.stall_slack_comb), "onloading": float(cme.data_onloading_cycle),
           "offloading": float(cme.data_offloading_cycle), "systolic_drain": float(cme.systolic_drain_cycle),
           "levels": levels, "loop_ordering": open(sys.argv[4] + "/loop_ordering.txt").read()}
    print("ZIGZAG_JSON " + json.dumps(out))
""")

ZZ_OPS = {"I": "I1", "W": "I2", "O": "O"}


def zigzag_workload(layer: Layer, cfg: AccelConfig) -> list[dict[str, Any]]:
    """The layer as one ZigZag conv (batch 1) with PyTorch padding and stride."""
    if layer.groups != 1 or layer.dilation != (1, 1):
        raise ValueError(f"{layer.name}: ZigZag translation supports groups=1, dilation=1 only")
    (sh, sw), (ph, pw), (kh, kw) = layer.stride, layer.padding, layer.kernel_size
    (oh, ow), (ih, iw) = layer.output_hw, layer.input_hw
    wb = WORD_BITS[cfg.word]
    return [{
        "id": 0, "name": layer.name, "operator_type": "Conv",
        "equation": "O[b][k][oy][ox]+=W[k][c][fy][fx]*I[b][c][iy][ix]",
        "dimension_relations": [f"ix={sw}*ox+1*fx", f"iy={sh}*oy+1*fy"],
        "loop_dims": ["B", "K", "C", "OY", "OX", "FY", "FX"],
        "loop_sizes": [1, layer.out_channels, layer.in_channels, oh, ow, kh, kw],
        # partial sums at the accumulator width, final outputs at the operand width
        "operand_precision": {"W": wb, "I": wb, "O": ACC_BITS, "O_final": wb},
        "operand_source": {"I": 0, "W": 0},   # both from the top of the hierarchy (DRAM)
        "pr_loop_dims": ["IX", "IY"], "pr_loop_sizes": [iw, ih],   # unpadded input extent
        "padding": [[pw, pw], [ph, ph]],
    }]


def zigzag_spatial(layer: Layer, cfg: AccelConfig) -> dict[str, list[tuple[str, int]]]:
    """Reduction on the rows (D1): C, and when C < rows also FX then FY while they fit (the
    nearest a conv description gets to our im2col rows); filters on the columns (D2)."""
    rows: list[tuple[str, int]] = [("C", min(layer.in_channels, cfg.rows))]
    used = rows[0][1]
    if layer.in_channels < cfg.rows:
        for dim, size in (("FX", layer.kernel_size[1]), ("FY", layer.kernel_size[0])):
            if size > 1 and used * size <= cfg.rows:
                rows.append((dim, size))
                used *= size
            else:
                break
    return {"D1": rows, "D2": [("K", min(layer.out_channels, cfg.cols))]}


def zigzag_mapping(layer: Layer, cfg: AccelConfig) -> list[dict[str, Any]]:
    """Our WS loop nest, innermost first: output pixels (the streamed T), then the reduction
    (row folds: FX, FY, C), then the filters (column folds)."""
    spatial = zigzag_spatial(layer, cfg)
    unrolled = {d: s for entries in spatial.values() for d, s in entries}
    sizes = {"OX": layer.output_hw[1], "OY": layer.output_hw[0], "FX": layer.kernel_size[1], "FY": layer.kernel_size[0],
             "C": layer.in_channels, "K": layer.out_channels}
    temporal = []
    for dim in ("OX", "OY", "FX", "FY", "C", "K"):
        rest = -(-sizes[dim] // unrolled.get(dim, 1))
        if rest > 1:
            temporal.append([dim, int(rest)])
    return [{"name": "default",
             "spatial_mapping": {d: [f"{dim}, {size}" for dim, size in e] for d, e in spatial.items()},
             "temporal_ordering": temporal,
             "memory_operand_links": {"O": "O", "W": "I2", "I": "I1"}}]


def _port(name: str, kind: str, word_bits: int, max_bits: int, alloc: list[str]) -> dict[str, Any]:
    return {"name": name, "type": kind, "bandwidth_min": word_bits, "bandwidth_max": max_bits, "allocation": alloc}


def zigzag_accelerator(cfg: AccelConfig, rates: EnergyRates) -> dict[str, Any]:
    """Our array and buffers as a ZigZag accelerator.  Each SRAM port is as wide as the array
    edge it feeds (``port_lanes``); an access of that width costs our per-word energy x lanes,
    and ``bandwidth_min`` = one word, so ZigZag charges a partial access pro rata per word."""
    wb = WORD_BITS[cfg.word]
    lanes = port_lanes(cfg)
    dram_bits = int(cfg.dram_bytes_per_cycle * 8)

    def sram(op: str, kb: float, lane: str, bits: int, r: float, w: float) -> dict[str, Any]:
        width = lanes[lane] * bits
        return {"size": int(kb * 1024 * 8), "r_cost": float(r * lanes[lane]), "w_cost": float(w * lanes[lane]),
                "area": 0.0, "latency": 1, "operands": [op],
                "ports": [_port("r_port_1", "read", wb, width, [f"{op}, tl"] + ([f"{op}, th"] if op == "O" else [])),
                          _port("w_port_1", "write", wb, width, [f"{op}, fh"] + ([f"{op}, fl"] if op == "O" else []))],
                "served_dimensions": ["D1", "D2"]}

    return {
        "name": f"accel_sim_{cfg.dataflow}_{cfg.rows}x{cfg.cols}",
        "operational_array": {"unit_energy": float(rates.mac), "unit_area": 1.0, "dimensions": ["D1", "D2"],
                              "sizes": [cfg.rows, cfg.cols], "systolic_dimensions": ["D1", "D2"]},
        "memories": {
            # the stationary weight of each PE; free because our MAC energy includes the PE registers
            "w_reg": {"size": wb, "r_cost": 0.0, "w_cost": 0.0, "area": 0.0, "latency": 1, "operands": ["I2"],
                      "ports": [_port("r_port_1", "read", wb, wb, ["I2, tl"]),
                                _port("w_port_1", "write", wb, wb, ["I2, fh"])],
                      "served_dimensions": []},
            "ifmap_sram": sram("I1", cfg.ifmap_sram_kb, "ifmap", wb, rates.ifmap, rates.ifmap_write),
            "filter_sram": sram("I2", cfg.filter_sram_kb, "filter", wb, rates.filter, rates.filter_write),
            "ofmap_sram": sram("O", cfg.ofmap_sram_kb, "ofmap", ACC_BITS, rates.ofmap, rates.ofmap_write),
            "dram": {"size": 10**10, "r_cost": float(rates.dram_bit * dram_bits),
                     "w_cost": float(rates.dram_bit * dram_bits), "area": 0.0, "latency": 1,
                     "operands": ["I1", "I2", "O"],
                     "ports": [_port("rw_port_1", "read_write", wb, dram_bits,
                                     ["I1, fh", "I1, tl", "I2, fh", "I2, tl", "O, fh", "O, tl", "O, fl", "O, th"])],
                     "served_dimensions": ["D1", "D2"]},
        },
    }


def zigzag_inputs(layer: Layer, cfg: AccelConfig, rates: EnergyRates) -> dict[str, str]:
    dump = lambda x: yaml.safe_dump(x, sort_keys=False)  # noqa: E731
    return {"workload": dump(zigzag_workload(layer, cfg)), "accelerator": dump(zigzag_accelerator(cfg, rates)),
            "mapping": dump(zigzag_mapping(layer, cfg))}


def run_zigzag(py: Path, version: str, layer: Layer, cfg: AccelConfig, rates: EnergyRates, cache_dir: Path,
               refresh: bool, timeout: float) -> dict[str, Any]:
    inputs = zigzag_inputs(layer, cfg, rates)

    def run() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for key, text in inputs.items():
                (tmp / f"{key}.yaml").write_text(text)
            (tmp / "runner.py").write_text(ZIGZAG_RUNNER)
            t = time.perf_counter()
            try:
                proc = subprocess.run([str(py), "runner.py", "workload.yaml", "accelerator.yaml", "mapping.yaml",
                                       str(tmp / "out")], capture_output=True, text=True, cwd=tmp, timeout=timeout)
            except subprocess.TimeoutExpired:
                return {"status": "error", "error": f"timed out after {timeout:.0f} s"}
            line = next((l for l in proc.stdout.splitlines() if l.startswith("ZIGZAG_JSON ")), None)
            if proc.returncode != 0 or line is None:
                return {"status": "error", "error": f"rc {proc.returncode}: {proc.stderr.strip()[-800:]}"}
            out = json.loads(line[len("ZIGZAG_JSON "):])
            out["wall_seconds"] = time.perf_counter() - t
            return out

    return _cached_run(cache_dir, "zigzag", version, layer.name, {**inputs, "runner": ZIGZAG_RUNNER}, refresh, run)


def zigzag_summary(raw: dict[str, Any]) -> dict[str, Any]:
    """Energy by memory and access counts (values moved, at the precision ZigZag moved them)."""
    if raw.get("status") != "ok":
        return {"status": raw.get("status", "skipped"), "error": raw.get("error", "")}
    energy = {"mac": raw["mac_energy_pj"]}
    by_dir: dict[str, dict[str, float]] = {}   # memory -> direction -> pJ
    counts: dict[str, float] = {}
    for lv in raw["levels"]:
        mem = lv["memory"]
        energy[mem] = energy.get(mem, 0.0) + sum(lv["energy_pj"].values())
        dirs = by_dir.setdefault(mem, {})
        for d, pj in lv["energy_pj"].items():
            key = f"{lv['operand']}.{d}"
            dirs[key] = dirs.get(key, 0.0) + pj
            bits = lv["word_accesses"][d] * lv["max_bw_bits"][d]
            if bits:
                counts[f"{mem}.{key}.values"] = counts.get(f"{mem}.{key}.values", 0.0) + bits / lv["precision_bits"][d]
                counts[f"{mem}.{key}.bits"] = counts.get(f"{mem}.{key}.bits", 0.0) + bits
            elem = lv.get("elem_counts", {}).get(d, 0.0)
            if elem:
                counts[f"elem:{mem}.{key}"] = counts.get(f"elem:{mem}.{key}", 0.0) + elem
    energy["total"] = raw["energy_total_pj"]
    return {"status": "ok", "cached": raw.get("cached", False), "wall_seconds": raw.get("wall_seconds"),
            "latency": raw["latency_total"], "ideal_cycle": raw["ideal_cycle"],
            "ideal_temporal_cycle": raw["ideal_temporal_cycle"], "stall_slack": raw["stall_slack"],
            "onloading": raw["onloading"], "offloading": raw["offloading"],
            "systolic_drain": raw["systolic_drain"], "energy_pj": energy, "energy_by_direction_pj": by_dir,
            "counts": counts, "loop_ordering": raw.get("loop_ordering", "")}


# ----------------------------------------------------------------------------- ours


def ours_rows(layers: list[Layer], cfg: AccelConfig, compat_layers: list[Layer]) -> list[dict[str, Any]]:
    """Per layer: native cycles, SCALE-Sim-compat compute cycles, energy by part, access counts."""
    res = simulate(layers, cfg)
    compat = simulate(compat_layers, cfg, compat=True)
    arr = lambda attr: np.array([getattr(l, attr) for l in layers], dtype=np.int64)  # noqa: E731
    d_if, d_fi, d_of = dram_words(cfg, arr("gemm_m"), arr("gemm_n"), arr("gemm_k"), arr("groups"),
                                  arr("ifmap_words"), arr("filter_words"), arr("ofmap_words"))
    out = []
    for i, (row, crow) in enumerate(zip(res.rows, compat.rows)):
        wb = cfg.word_bytes
        out.append({
            "compute_cycles": row["dense_compute_cycles"], "stall_cycles": row["dense_stall_cycles"],
            "cycles": row["dense_cycles"], "compat_compute_cycles": crow["dense_compute_cycles"],
            "macs": row["macs"],
            "energy_pj": {k: row[f"dense_energy_{k}_pj"] for k in ENERGY_PARTS} | {"total": row["dense_energy_pj"]},
            "counts": {"ifmap_sram_reads": row["ifmap_sram_reads"], "filter_sram_reads": row["filter_sram_reads"],
                       "ofmap_sram_writes": row["ofmap_sram_writes"], "ofmap_sram_reads": row["ofmap_sram_reads"],
                       # DRAM traffic also fills the ifmap/filter SRAMs and is read out of the ofmap SRAM
                       "ifmap_sram_fills": float(d_if[i]), "filter_sram_fills": float(d_fi[i]),
                       "ofmap_sram_drains": float(d_of[i]),
                       "dram_ifmap_bytes": float(d_if[i] * wb), "dram_filter_bytes": float(d_fi[i] * wb),
                       "dram_ofmap_bytes": float(d_of[i] * wb), "dram_bytes": row["dense_dram_bytes"]},
        })
    return out


# ----------------------------------------------------------------------------- tables

MEMS = ("ifmap_sram", "filter_sram", "ofmap_sram", "dram")
# (label, ours count key, SCALE-Sim count key, ZigZag count key)
COUNT_ROWS = (
    ("ifmap SRAM reads to the array (words)", "ifmap_sram_reads", "ifmap_sram_reads",
     "ifmap_sram.I.rd_out_to_low.values"),
    ("ifmap SRAM fills from DRAM (words)", "ifmap_sram_fills", None, "ifmap_sram.I.wr_in_by_high.values"),
    ("filter SRAM reads to the array (words)", "filter_sram_reads", "filter_sram_reads",
     "filter_sram.W.rd_out_to_low.values"),
    ("filter SRAM fills from DRAM (words)", "filter_sram_fills", None, "filter_sram.W.wr_in_by_high.values"),
    ("ofmap SRAM writes from the array (values)", "ofmap_sram_writes", "ofmap_sram_writes",
     "ofmap_sram.O.wr_in_by_low.values"),
    ("ofmap SRAM psum reads back to the array", "ofmap_sram_reads", None, "ofmap_sram.O.rd_out_to_low.values"),
    ("  same, ZigZag's own element count (not charged)", "ofmap_sram_reads", None, "elem:ofmap_sram.O.rd_out_to_low"),
    ("ofmap SRAM reads out to DRAM (values)", "ofmap_sram_drains", None, "ofmap_sram.O.rd_out_to_high.values"),
    ("ofmap SRAM writes back from DRAM (psums)", None, None, "ofmap_sram.O.wr_in_by_high.values"),
    ("DRAM ifmap bytes", "dram_ifmap_bytes", "dram_ifmap_bytes", "dram.I.*.bytes"),
    ("DRAM filter bytes", "dram_filter_bytes", "dram_filter_bytes", "dram.W.*.bytes"),
    ("DRAM ofmap bytes (both directions)", "dram_ofmap_bytes", "dram_ofmap_bytes", "dram.O.*.bytes"),
)


def zz_count(counts: dict[str, float], key: str) -> float | None:
    """A ZigZag count; ``mem.OP.*.bytes`` sums every direction's bits of an operand / 8."""
    if key.endswith(".*.bytes"):
        prefix = key[: -len("*.bytes")]
        bits = [v for k, v in counts.items() if k.startswith(prefix) and k.endswith(".bits")]
        return sum(bits) / 8 if bits else 0.0
    return counts.get(key, 0.0)


def _fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if digits:
        return f"{x:,.{digits}f}"
    return f"{x:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b:
        return "–"
    return f"{a / b:.2f}"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _ok(rec: dict[str, Any], tool: str) -> bool:
    return rec.get(tool, {}).get("status") == "ok"


def total_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum of per-layer records (a tool's totals only when it ran on every layer)."""
    def add(dicts: list[dict]) -> dict:
        out: dict[str, Any] = {}
        for d in dicts:
            for k, v in d.items():
                if isinstance(v, dict):
                    out[k] = add([out.get(k, {}), v])
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[k] = out.get(k, 0) + v
        return out
    tot: dict[str, Any] = {"layer": "total", "ours": add([r["ours"] for r in records])}
    for tool in ("scalesim", "zigzag"):
        if records and all(_ok(r, tool) for r in records):
            tot[tool] = {"status": "ok", **add([r[tool] for r in records])}
        else:
            bad = [r["layer"] for r in records if not _ok(r, tool)]
            tot[tool] = {"status": "partial", "error": f"missing for {', '.join(bad)}"}
    return tot


def cycles_table(records: list[dict[str, Any]]) -> str:
    header = ["layer", "MACs", "ours compute", "ours DRAM stall", "ours total", "ours SCALE-Sim-compat compute",
              "SCALE-Sim v3 compute", "SCALE-Sim v3 stall", "SCALE-Sim v3 total", "ZigZag ideal temporal",
              "ZigZag latency"]
    rows = []
    for r in records:
        o, s, z = r["ours"], r.get("scalesim", {}), r.get("zigzag", {})
        sok, zok = s.get("status") == "ok", z.get("status") == "ok"
        rows.append([r["layer"] if r["layer"] != "total" else "**total**", _fmt(o["macs"]), _fmt(o["compute_cycles"]),
                     _fmt(o["stall_cycles"]), _fmt(o["cycles"]), _fmt(o["compat_compute_cycles"]),
                     _fmt(s["compute_cycles"]) if sok else s.get("status", "–"),
                     _fmt(s["stall_cycles"]) if sok else "–", _fmt(s["total_cycles"]) if sok else "–",
                     _fmt(z["ideal_temporal_cycle"]) if zok else z.get("status", "–"),
                     _fmt(z["latency"]) if zok else "–"])
    return md_table(header, rows)


def energy_table(rec: dict[str, Any], scalesim_energy_note: str) -> str:
    """Energy (uJ) by memory: ours, ZigZag (same per-access energies), their ratio, and
    SCALE-Sim v3's counts x our rates."""
    o, s, z = rec["ours"]["energy_pj"], rec.get("scalesim", {}), rec.get("zigzag", {})
    zok, sok = z.get("status") == "ok", s.get("status") == "ok"
    ze = z.get("energy_pj", {}) if zok else {}
    se = s.get("energy_pj_our_rates", {}) if sok else {}
    rows = []
    labels = {"mac": "MAC", "idle": "idle PE slots", "gate": "gate compares", "ifmap_sram": "ifmap SRAM",
              "filter_sram": "filter SRAM", "ofmap_sram": "ofmap SRAM", "gather_buffer": "gather buffer",
              "dram": "DRAM", "static": "static (leakage)", "w_reg": "PE weight register"}
    shown = [p for p in ENERGY_PARTS if p in ("mac", *MEMS) or o.get(p)] + ["w_reg"]
    for part in shown:
        ours, zz, ss = o.get(part), (ze.get(part) if zok else None), (se.get(part) if sok else None)
        rows.append([labels.get(part, part), _fmt(ours * UJ if ours is not None else None, 2),
                     _fmt(zz * UJ if zz is not None else None, 2), _ratio(zz, ours),
                     _fmt(ss * UJ if ss is not None else None, 2)])
    common = ("mac", *MEMS)
    o_common = sum(o.get(p, 0.0) for p in common)
    z_common = sum(ze.get(p, 0.0) for p in common) if zok else None
    rows.append(["**MAC + SRAMs + DRAM** (what both model)", _fmt(o_common * UJ, 2),
                 _fmt(z_common * UJ if z_common is not None else None, 2), _ratio(z_common, o_common), "–"])
    rows.append(["**total**", _fmt(o["total"] * UJ, 2), _fmt(ze["total"] * UJ, 2) if zok else "–",
                 _ratio(ze.get("total") if zok else None, o["total"]), "–"])
    return md_table(["energy (µJ)", "ours", "ZigZag", "ZigZag/ours",
                     f"SCALE-Sim v3 counts × our rates ({scalesim_energy_note})"], rows)


def counts_table(rec: dict[str, Any]) -> str:
    o, s, z = rec["ours"]["counts"], rec.get("scalesim", {}), rec.get("zigzag", {})
    sok, zok = s.get("status") == "ok", z.get("status") == "ok"
    rows = []
    for label, ok_, sk, zk in COUNT_ROWS:
        ours = o.get(ok_) if ok_ else None
        ss = s["counts"].get(sk) if (sok and sk) else None
        zz = zz_count(z["counts"], zk) if zok else None
        rows.append([label, _fmt(ours), _fmt(ss), _fmt(zz), _ratio(zz, ours)])
    return md_table(["access count", "ours", "SCALE-Sim v3", "ZigZag", "ZigZag/ours"], rows)


def direction_table(rec: dict[str, Any]) -> str:
    """ZigZag energy of each SRAM split by direction, next to ours split the same way."""
    z = rec.get("zigzag", {})
    if z.get("status") != "ok":
        return ""
    o = rec["ours"]
    rows = []
    dirs = z["energy_by_direction_pj"]
    for mem, op in (("ifmap_sram", "I"), ("filter_sram", "W"), ("ofmap_sram", "O")):
        for d, label in (("rd_out_to_low", "read to the array"), ("wr_in_by_low", "written by the array"),
                         ("wr_in_by_high", "written from DRAM"), ("rd_out_to_high", "read out to DRAM")):
            pj = dirs.get(mem, {}).get(f"{op}.{d}", 0.0)
            if pj:
                rows.append([mem, label, _fmt(pj * UJ, 2)])
    rows.append(["ofmap_sram", "**ours, all directions**", _fmt(o["energy_pj"]["ofmap_sram"] * UJ, 2)])
    return md_table(["memory", "ZigZag direction", "ZigZag µJ"], rows)


# ----------------------------------------------------------------------------- gap explanations


def psum_table(records: list[dict[str, Any]], cfg: AccelConfig) -> str:
    """Per layer: the WS psum working set (T pixels x one column tile) at the psum width against
    the ofmap SRAM, and whether each tool sent psums to DRAM."""
    rows = []
    cap_o = usable_words(cfg.ofmap_sram_kb, cfg)
    for r in records:
        g = r["gemm"]
        tile = g["m"] * min(g["n"], cfg.cols)
        o = r["ours"]
        z = r.get("zigzag", {})
        ours_spill = o["counts"]["dram_ofmap_bytes"] > g["ofmap_words"] * cfg.word_bytes
        zz_back = zz_count(z["counts"], "ofmap_sram.O.wr_in_by_high.values") if z.get("status") == "ok" else None
        rows.append([r["layer"], _fmt(tile), _fmt(tile * ACC_BITS / 8 / 1024, 1),
                     "yes" if tile <= cap_o else "no",
                     "yes" if ours_spill else "no",
                     "–" if zz_back is None else ("yes" if zz_back else "no"),
                     _fmt(o["counts"]["dram_ofmap_bytes"]),
                     _fmt(zz_count(z["counts"], "dram.O.*.bytes")) if z.get("status") == "ok" else "–"])
    return md_table(["layer", "psum tile (T x min(N, C))", f"tile at {ACC_BITS} b (KiB)",
                     f"ours: tile <= usable words ({cap_o:,.0f})", "ours spills psums",
                     "ZigZag spills psums", "ours ofmap DRAM B", "ZigZag ofmap DRAM B"], rows)


def zigzag_mapping_for(rec: dict[str, Any], cfg: AccelConfig) -> list[tuple[str, int]]:
    """The temporal loops of the ZigZag mapping written for a record's layer."""
    return [tuple(t) for t in rec.get("zigzag_temporal", [])]


def explain_gaps(records: list[dict[str, Any]], tot: dict[str, Any], rates: EnergyRates,
                 cfg: AccelConfig) -> list[str]:
    """One paragraph per large gap, with the counts behind it (every number from this run)."""
    out: list[str] = []
    o = tot["ours"]
    z = tot.get("zigzag", {})
    s = tot.get("scalesim", {})
    zok = [r for r in records if r.get("zigzag", {}).get("status") == "ok"]
    if z.get("status") == "ok":
        zc, oc = z["counts"], o["counts"]
        ze, oe = z["energy_pj"], o["energy_pj"]
        gaps = sorted(((abs(ze.get(p, 0.0) - oe.get(p, 0.0)), p) for p in ("mac", *MEMS)), reverse=True)
        out.append("**Ranking.** ZigZag minus ours, same per-access energies (so every gap is a count): "
                   + ", ".join(f"{p} {(ze.get(p, 0.0) - oe.get(p, 0.0)) * UJ:+,.1f} µJ" for _, p in gaps) + ".")
        # 1. psum spills: DRAM and ofmap SRAM
        zz_only = [r for r in zok if zz_count(r["zigzag"]["counts"], "ofmap_sram.O.wr_in_by_high.values")
                   and not r["ours"]["counts"]["dram_ofmap_bytes"] > r["gemm"]["ofmap_words"] * cfg.word_bytes]
        both = [r for r in zok if zz_count(r["zigzag"]["counts"], "ofmap_sram.O.wr_in_by_high.values")
                and r not in zz_only]
        spill_b = lambda rs: sum(zz_count(r["zigzag"]["counts"], "dram.O.*.bytes") for r in rs)  # noqa: E731
        ours_b = lambda rs: sum(r["ours"]["counts"]["dram_ofmap_bytes"] for r in rs)  # noqa: E731
        dram_o_z = zz_count(zc, "dram.O.*.bytes")
        out.append(
            f"**1. Partial sums that do not fit the ofmap SRAM (DRAM {(ze.get('dram', 0) - oe['dram']) * UJ:+,.1f} µJ, "
            f"most of the ofmap-SRAM gap).** ZigZag's ofmap DRAM traffic is {dram_o_z:,.0f} B against our "
            f"{oc['dram_ofmap_bytes']:,.0f} B. ZigZag keeps an output loop in the ofmap SRAM only if its psums fit at "
            f"the psum width ({ACC_BITS} b, our workload's O precision) in the whole {cfg.ofmap_sram_kb:g} KiB; "
            "otherwise the tile lives in DRAM for the loops above it (loop allocation per layer below) and every "
            "reduction step writes the psums out and reads them back, at 32 b, each trip also an ofmap-SRAM read "
            f"and write. Ours (`accel_sim.memory.dram_words`) compares the WS tile `T x min(N, C)` with the usable "
            "half of the SRAM in *operand words* (1 B each), though the buffer holds 32-b psums "
            "(`EnergyRates.ofmap` is per psum). So "
            + (", ".join(r["layer"] for r in zz_only) if zz_only else "no layer")
            + f" spill in ZigZag and not in ours ({spill_b(zz_only):,.0f} B vs {ours_b(zz_only):,.0f} B of ofmap "
            "DRAM traffic); "
            + (", ".join(r["layer"] for r in both) if both else "no layer")
            + f" spill in both ({spill_b(both):,.0f} B vs {ours_b(both):,.0f} B), where ours counts "
            "`(2 x row folds - 1) x outputs` at the 1-B operand width and ZigZag `row folds x outputs` out plus "
            "`(row folds - 1) x outputs` back at 32 b (ours charges every ofmap DRAM word, either direction, as one "
            "operand-width read of the ofmap SRAM: `cost.energy_pj`, `d_of * out_read`, so the counts row 'reads "
            "out to DRAM' holds all of them and ours has no 'writes back from DRAM'). The table below shows the "
            "tile sizes. This is a gap in "
            "our model, not a ZigZag convention: at 32 b the tiles of the listed layers exceed the SRAM.")
        # 2. psum read-back convention
        rd_charged = zz_count(zc, "ofmap_sram.O.rd_out_to_low.values")
        rd_elem = zz_count(zc, "elem:ofmap_sram.O.rd_out_to_low")
        dirs = z["energy_by_direction_pj"].get("ofmap_sram", {})
        out.append(
            f"**2. Psum read-back convention (ofmap SRAM).** ZigZag's own element count of psums read back to the "
            f"array is {rd_elem:,.0f} (ours {oc['ofmap_sram_reads']:,.0f}: outputs x (row folds - 1); the first "
            f"partial sum is not read), but the count it charges is {rd_charged:,.0f}: `CostModelEvaluation."
            "_calc_memory_access` multiplies the per-period transfer by the number of periods, one more read per "
            f"output. Worth {(rd_charged - rd_elem) * rates.ofmap * UJ:,.1f} µJ at our "
            f"{rates.ofmap:.3f} pJ psum read. All ZigZag ofmap-SRAM directions: written by the array "
            f"{dirs.get('O.wr_in_by_low', 0) * UJ:,.1f}, read to the array {dirs.get('O.rd_out_to_low', 0) * UJ:,.1f}, "
            f"written from DRAM {dirs.get('O.wr_in_by_high', 0) * UJ:,.1f}, read out to DRAM "
            f"{dirs.get('O.rd_out_to_high', 0) * UJ:,.1f} µJ; ours {oe['ofmap_sram'] * UJ:,.1f} µJ in all.")
        # 3. fold counts when C < rows; charged vs counted psum writes
        fold_rows, frac_rows = [], []
        for r in zok:
            zz_rf = math.prod(n for d, n in zigzag_mapping_for(r, cfg) if d in ("FX", "FY", "C"))
            our_rf = -(-r["gemm"]["k"] // cfg.rows)
            if zz_rf != our_rf:
                fold_rows.append(f"{r['layer']} ({zz_rf} row folds in ZigZag vs {our_rf} in ours)")
            zcn = r["zigzag"]["counts"]
            charged, own = zz_count(zcn, "ofmap_sram.O.wr_in_by_low.values"), zz_count(zcn, "elem:ofmap_sram.O.wr_in_by_low")
            if own and abs(charged - own) > 0.001 * own:
                frac_rows.append(f"{r['layer']} ({charged:,.0f} charged vs {own:,.0f} counted)")
        out.append(
            "**3. Row folds of a conv description.** Ours flattens the reduction (im2col, K = C x kh x kw) "
            f"onto the {cfg.rows} rows; a ZigZag conv can only unroll whole loop factors, so with C < {cfg.rows} "
            "the rows take C x FX (x FY when it fits) and the rest of the kernel becomes temporal folds. Layers "
            "where that changes the number of row folds: " + ("; ".join(fold_rows) if fold_rows else "none") + ". "
            "Same MACs, more folds, so more psum writes and reads and, with spills, more DRAM. A filter count the "
            f"{cfg.cols} columns do not divide is unrolled fractionally by ZigZag, and its charged accesses then use "
            "the whole-column part only (psum writes: " + ("; ".join(frac_rows) if frac_rows else "no layer") + ").")
        # 4. ifmap fills
        fill_rows = []
        for r in zok:
            f_z = zz_count(r["zigzag"]["counts"], "ifmap_sram.I.wr_in_by_high.values")
            f_o = r["ours"]["counts"]["ifmap_sram_fills"]
            if f_o and abs(f_z - f_o) > 0.001 * f_o:
                uniq = r["gemm"]["ifmap_words"]
                fill_rows.append(f"{r['layer']} (ZigZag {f_z / uniq:.2f}x the unique ifmap of {uniq:,} words, "
                                 f"ours {f_o / uniq:.2f}x)")
        usable_i = usable_words(cfg.ifmap_sram_kb, cfg)
        out.append(
            f"**4. ifmap refetch (ifmap SRAM {(ze.get('ifmap_sram', 0) - oe['ifmap_sram']) * UJ:+,.1f} µJ, part of "
            f"DRAM).** Reads to the array agree ({zz_count(zc, 'ifmap_sram.I.rd_out_to_low.values'):,.0f} vs "
            f"{oc['ifmap_sram_reads']:,.0f}): both count one word per row per streamed pixel per fold. Fills "
            f"from DRAM: {zz_count(zc, 'ifmap_sram.I.wr_in_by_high.values'):,.0f} vs {oc['ifmap_sram_fills']:,.0f}. "
            "ZigZag refetches, for every iteration of the loops above the ifmap SRAM's allocation, the input "
            "window those inner loops touch: it sizes the allocation against the whole "
            f"{cfg.ifmap_sram_kb:g} KiB (double buffering only shortens its latency), and a strided window touches "
            "only the input pixels it uses (a 1x1 stride-2 conv reads a quarter of the ifmap). Ours fetches the "
            f"whole unpadded ifmap once if it fits the usable half ({usable_i:,.0f} words), else once per column "
            "fold. Layers that differ: " + ("; ".join(fill_rows) if fill_rows else "none") + ".")
        out.append(
            f"**5. MAC and idle.** MAC energy is equal ({ze.get('mac', 0) * UJ:,.1f} vs {oe['mac'] * UJ:,.1f} µJ, "
            f"same MACs x {rates.mac:.3f} pJ). Ours adds {oe['idle'] * UJ:,.1f} µJ for idle PE slots (fill, drain, "
            f"unmapped) at the clock-gated rate and {oe.get('static', 0.0) * UJ:,.1f} µJ of leakage over the run's "
            "cycles; ZigZag charges neither (given area 0 and no leakage). The filter SRAM agrees "
            f"exactly ({zz_count(zc, 'filter_sram.W.rd_out_to_low.values'):,.0f} reads, each weight loaded once "
            "into its PE).")
        per_layer = "; ".join(
            f"{r['layer']} {r['zigzag']['ideal_temporal_cycle']:,.0f} vs {r['ours']['compute_cycles']:,.0f} compute, "
            f"{r['zigzag']['stall_slack']:,.0f} vs {r['ours']['stall_cycles']:,.0f} stall" for r in zok)
        out.append(
            f"**6. Cycles.** ZigZag's latency {z['latency']:,.0f} = ideal temporal {z['ideal_temporal_cycle']:,.0f} "
            f"+ stall {z['stall_slack']:,.0f} + on-loading {z['onloading']:,.0f} + off-loading "
            f"{z['offloading']:,.0f} + systolic drain {z['systolic_drain']:,.0f}; ours {o['cycles']:,.0f} = compute "
            f"{o['compute_cycles']:,.0f} + DRAM stall {o['stall_cycles']:,.0f}. ZigZag's temporal cycles are the "
            "loop trip count with no per-fold fill and drain (ours pays `2R + C - 2` per fold, which dominates "
            "when a fold streams few pixels); its stalls come from its one "
            f"{int(cfg.dram_bytes_per_cycle * 8)}-b/cycle DRAM port carrying the psum round trips of item 1. "
            "Per layer (ZigZag vs ours): " + per_layer + ".")
    if s.get("status") == "ok":
        sc, oc = s["counts"], o["counts"]
        sok = [r for r in records if r.get("scalesim", {}).get("status") == "ok"]
        refetch = [(r["layer"], r["scalesim"]["counts"]["dram_filter_bytes"] / (r["gemm"]["filter_words"] * cfg.word_bytes))
                   for r in sok]
        refetch_txt = "; ".join(f"{name} {x:.1f}x" for name, x in refetch if x > 1.01) or "no layer"
        stalls_txt = "; ".join(f"{r['layer']} {r['scalesim']['stall_cycles']:,.0f}" for r in sok)
        out.append(
            f"**7. SCALE-Sim v3 cycles.** Compute {s['compute_cycles']:,.0f} vs our SCALE-Sim-compat "
            f"{o['compat_compute_cycles']:,.0f} (native {o['compute_cycles']:,.0f}); stalls {s['stall_cycles']:,.0f} "
            f"vs ours {o['stall_cycles']:,.0f}. v3 gives the ifmap, filter and ofmap each their own "
            f"{cfg.dram_bytes_per_cycle / cfg.word_bytes:g}-words/cycle DRAM port (ours: one {cfg.dram_bytes_per_cycle:g} "
            "B/cycle link carrying unique words x a refetch factor), and it streams the im2col-expanded operand "
            "matrix through prefetch buffers: "
            f"{sc['dram_ifmap_bytes']:,.0f} B of ifmap DRAM reads against our {oc['dram_ifmap_bytes']:,.0f} B and "
            f"its own {sc['ifmap_sram_reads']:,.0f} ifmap SRAM reads (`memory/read_buffer.py` adds "
            "`num_lines * req_gen_bandwidth` per prefetch, unused slots included). Filter DRAM reads "
            f"{sc['dram_filter_bytes']:,.0f} B vs our {oc['dram_filter_bytes']:,.0f} B: a demanded word missing from "
            "the active half of a read buffer triggers prefetches until it is there "
            "(`while not self.active_buffer_hit(addr): self.new_prefetch()`), wrapping round the fetch matrix, so "
            "an operand larger than the buffer streams through it more than once (" + refetch_txt
            + " the unique weights). Its ofmap DRAM writes "
            f"({sc['dram_ofmap_bytes']:,.0f} B) equal its ofmap SRAM writes: every psum of every row fold is written "
            f"through (ours {oc['dram_ofmap_bytes']:,.0f} B). That traffic over its ports is where its stall cycles "
            "come from (per layer: " + stalls_txt + ").")
        out.append(
            f"**8. SCALE-Sim v3 SRAM counts.** ifmap reads {sc['ifmap_sram_reads']:,.0f} vs ours "
            f"{oc['ifmap_sram_reads']:,.0f}, filter {sc['filter_sram_reads']:,.0f} vs {oc['filter_sram_reads']:,.0f}, "
            f"ofmap writes {sc['ofmap_sram_writes']:,.0f} vs {oc['ofmap_sram_writes']:,.0f}. SCALE-Sim counts SRAM "
            "demand requests only (the non-idle entries of its per-cycle demand matrices, "
            "`single_layer_sim.py`): no psum reads (ours "
            f"{oc['ofmap_sram_reads']:,.0f}), no fills from DRAM, and 1-byte words everywhere (no psum width).")
    return out


# ----------------------------------------------------------------------------- main


def machine() -> dict[str, str]:
    return {"cpu": cpu_model() or "unknown", "cores": str(os.cpu_count()),
            "python": platform.python_version(), "platform": platform.platform()}


def select_layers(spec: str) -> list[Layer]:
    net = build_network("resnet18")
    if spec == "all":
        return net
    names = [n.strip() for n in spec.split(",") if n.strip()]
    by_name = {l.name: l for l in net}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"--layers: unknown layer(s) {', '.join(unknown)}; ResNet-18 has: {', '.join(by_name)}")
    return [by_name[n] for n in names]


def build_report(records: list[dict[str, Any]], meta: dict[str, Any], rates: EnergyRates, cfg: AccelConfig) -> str:
    tot = total_record(records)
    note = meta["scalesim_energy_note"]
    parts = [f"# accel_sim vs SCALE-Sim v3 vs ZigZag: {len(records)} ResNet-18 layers, dense",
             "",
             f"Generated by `{meta['command']}` in {meta['wall_seconds']:.1f} s (peer results from cache: "
             f"{meta['cached_runs']} of {meta['peer_runs']}; their own run times under Run) on {meta['machine']['cpu']} "
             f"({meta['machine']['cores']} cores, Python {meta['machine']['python']}). "
             f"Tools: accel_sim (this checkout), SCALE-Sim {meta['versions'].get('scalesim', '–')}, "
             f"ZigZag (zigzag-dse) {meta['versions'].get('zigzag', '–')}. Config: {meta['config_text']}. "
             "Layers: " + ", ".join(r["layer"] for r in records) + ".",
             "",
             "## Headline: totals over the layers",
             "",
             "### Cycles",
             "",
             cycles_table(records + [tot]),
             "",
             "### Energy by memory (totals)",
             "",
             "ZigZag is given our per-access energies (table at the end), so the ZigZag/ours column is a ratio of "
             "access counts, not of constants.",
             "",
             energy_table(tot, note),
             "",
             "### Access counts (totals)",
             "",
             counts_table(tot),
             "",
             "### ZigZag SRAM energy by direction (totals)",
             "",
             direction_table(tot),
             "",
             "## Why the numbers differ",
             "",
             *[p + "\n" for p in explain_gaps(records, tot, rates, cfg)],
             "Partial-sum working set per layer (WS: T output pixels x one column tile of filters):",
             "",
             psum_table(records, cfg),
             "",
             f"**SCALE-Sim v3 energy**: {note}. Details: {meta['scalesim_energy_detail']}",
             "",
             "## Per layer",
             ""]
    for r in records:
        parts += [f"### {r['layer']}", "", f"Shape: {r['shape']}", "", energy_table(r, note), "",
                  counts_table(r), ""]
        z = r.get("zigzag", {})
        if z.get("status") == "ok" and z.get("loop_ordering"):
            parts += ["ZigZag loop allocation (which memory holds each operand at each loop):", "",
                      "```", z["loop_ordering"].strip(), "```", ""]
        for tool in ("scalesim", "zigzag"):
            if r.get(tool, {}).get("status") not in ("ok", None):
                parts += [f"{tool}: {r[tool]['status']}: `{r[tool].get('error', '')}`", ""]
    parts += ["## Our per-action energies (`EnergyRates.for_config`; ZigZag gets mac, the SRAM read/write and "
              "dram_bit rates)", "",
              md_table(["action", "pJ"], [[k, f"{v:.4g}"] for k, v in meta["rates"].items()]), "",
              "## Run", "",
              f"- command: `{meta['command']}`",
              f"- wall time: {meta['wall_seconds']:.1f} s (peer runs from cache: {meta['cached_runs']} of "
              f"{meta['peer_runs']}); peer wall times as measured when each result was computed: SCALE-Sim v3 "
              f"{meta['scalesim_seconds']:.1f} s, ZigZag {meta['zigzag_seconds']:.1f} s (one layer per run, "
              "one run at a time)",
              f"- machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['machine']['platform']}",
              f"- environments: {meta['envs']}", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default=",".join(DEFAULT_LAYERS),
                    help="comma-separated ResNet-18 layer names, or 'all' (default: %(default)s)")
    ap.add_argument("--config", default=None,
                    help="accel_sim YAML or SCALE-Sim .cfg (default: AccelConfig(), 32x32 int8 WS, 128/128/256 KiB)")
    ap.add_argument("--env-dir", type=Path, default=DEFAULT_ENV_DIR,
                    help="where the peers' virtual environments live (default: %(default)s)")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                    help="cache of the peers' raw outputs (default: %(default)s)")
    ap.add_argument("--refresh", action="store_true", help="rerun the peers even when cached")
    ap.add_argument("--skip-scalesim", action="store_true", help="do not run SCALE-Sim v3")
    ap.add_argument("--skip-zigzag", action="store_true", help="do not run ZigZag")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds allowed for one peer run of one layer (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "accel_sim_peers.md",
                    help="markdown report; the JSON goes beside it with suffix .json (default: %(default)s)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    cfg = load_config(args.config) if args.config else AccelConfig()
    rates = EnergyRates.for_config(cfg)
    layers = select_layers(args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        topo = Path(tmp) / "all.csv"
        write_scalesim_csv(layers, topo)
        compat_layers = read_scalesim_csv(topo)
    ours = ours_rows(layers, cfg, compat_layers)

    versions: dict[str, str] = {}
    envs: list[str] = []
    ss_py = zz_py = None
    energy_note, energy_detail = "not run", "SCALE-Sim skipped"
    if not args.skip_scalesim:
        ss_py = ensure_env(args.env_dir, "scalesim-3.0.0", SCALESIM_REQS, log)
        versions["scalesim"] = tool_version(ss_py, "scalesim")
        envs.append(f"{ss_py.parents[1]}: {' '.join(SCALESIM_REQS)} (numpy {tool_version(ss_py, 'numpy')})")
        chk = accelergy_check(ss_py, ss_py.parents[1])
        if chk["pip_install_accelergy_rc"] != "0" or chk["wheel_accelergy_files"] == "none":
            energy_note = "no Accelergy energy: accelergy is not installable here and the wheel lacks rundir-accelergy"
            energy_detail = (f"the scalesim {versions['scalesim']} wheel ships no Accelergy flow (files matching "
                             f"'accelergy' or run_all.sh: {chk['wheel_accelergy_files']}; the flow is "
                             "`rundir-accelergy/run_all.sh` in the GitHub repository and needs the `accelergy` "
                             "package plus its CACTI/Aladdin plug-ins); `pip install accelergy` gave "
                             f"rc {chk['pip_install_accelergy_rc']}: "
                             f"`{'; '.join(chk['pip_install_accelergy'].splitlines())}`. "
                             "Only the package index is reachable here. The column shows SCALE-Sim's own access "
                             "counts x our per-access energies instead; that is not its Accelergy flow, which "
                             "derives its own action counts using SRAM/DRAM row and bank sizes (README_accelergy.md).")
        else:
            energy_note = "Accelergy is installable but this benchmark does not drive rundir-accelergy"
            energy_detail = json.dumps(chk)
    if not args.skip_zigzag:
        zz_py = ensure_env(args.env_dir, "zigzag", ZIGZAG_REQS, log)
        versions["zigzag"] = tool_version(zz_py, "zigzag-dse")
        envs.append(f"{zz_py.parents[1]}: {' '.join(ZIGZAG_REQS)} (numpy {tool_version(zz_py, 'numpy')})")

    records = []
    peer_runs = cached_runs = 0
    ss_sec = zz_sec = 0.0
    for layer, o in zip(layers, ours):
        rec: dict[str, Any] = {"layer": layer.name, "ours": o,
                               "gemm": {"m": layer.gemm_m, "n": layer.gemm_n, "k": layer.gemm_k,
                                        "ifmap_words": layer.ifmap_words, "filter_words": layer.filter_words,
                                        "ofmap_words": layer.ofmap_words},
                               "shape": f"{layer.in_channels}->{layer.out_channels}, {layer.kernel_size[0]}x{layer.kernel_size[1]} "
                                        f"s{layer.stride[0]} p{layer.padding[0]}, in {layer.input_hw[0]}x{layer.input_hw[1]}"
                                        f" out {layer.output_hw[0]}x{layer.output_hw[1]}"}
        rec["zigzag_temporal"] = zigzag_mapping(layer, cfg)[0]["temporal_ordering"] if cfg.dataflow == "ws" else []
        if zz_py is not None and cfg.dataflow != "ws":
            rec["zigzag"] = {"status": "skipped", "error": "the ZigZag mapping here is our WS loop nest only"}
        elif zz_py is not None:
            log(f"ZigZag {layer.name} ...")
            raw = run_zigzag(zz_py, versions["zigzag"], layer, cfg, rates, args.cache_dir, args.refresh, args.timeout)
            rec["zigzag"] = zigzag_summary(raw)
            peer_runs += 1
            cached_runs += bool(raw.get("cached"))
            zz_sec += float(raw.get("wall_seconds") or 0.0)
        else:
            rec["zigzag"] = {"status": "skipped"}
        if ss_py is not None:
            log(f"SCALE-Sim v3 {layer.name} ...")
            raw = run_scalesim(ss_py, versions["scalesim"], layer, cfg, args.cache_dir, args.refresh, args.timeout)
            rec["scalesim"] = scalesim_summary(raw, rates, cfg)
            peer_runs += 1
            cached_runs += bool(raw.get("cached"))
            ss_sec += float(raw.get("wall_seconds") or 0.0)
            if raw.get("status") != "ok":
                log(f"  SCALE-Sim failed: {raw.get('error')}")
        else:
            rec["scalesim"] = {"status": "skipped"}
        records.append(rec)

    given = sys.argv[1:] if argv is None else argv
    cmd = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *given])
    meta = {"command": cmd, "wall_seconds": time.perf_counter() - t0, "machine": machine(), "versions": versions,
            "config": cfg.to_dict(),
            "config_text": (f"{cfg.rows}x{cfg.cols} {cfg.word} {cfg.dataflow.upper()}, SRAM "
                            f"{cfg.ifmap_sram_kb:g}/{cfg.filter_sram_kb:g}/{cfg.ofmap_sram_kb:g} KiB "
                            f"(ifmap/filter/ofmap), DRAM {cfg.dram_bytes_per_cycle:g} B/cycle {cfg.dram_type}, "
                            f"{cfg.tech_nm} nm"),
            "rates": {k: v for k, v in rates.__dict__.items()}, "envs": "; ".join(envs) or "none",
            "scalesim_energy_note": energy_note, "scalesim_energy_detail": energy_detail,
            "peer_runs": peer_runs, "cached_runs": cached_runs, "scalesim_seconds": ss_sec, "zigzag_seconds": zz_sec}
    report = build_report(records, meta, rates, cfg)
    meta["wall_seconds"] = time.perf_counter() - t0
    report = build_report(records, meta, rates, cfg)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, report + "\n")
    payload = {"meta": meta, "layers": records, "total": total_record(records)}
    write_text_atomic(args.out.with_suffix(".json"), json.dumps(payload, indent=1, default=float) + "\n")
    log(f"wrote {args.out} and {args.out.with_suffix('.json')} in {meta['wall_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
