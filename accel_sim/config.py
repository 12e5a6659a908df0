"""Accelerator configuration: one validated record, read from YAML or built in code.

Every field is checked on construction; an error names the field, the value and what is
allowed, because a silently clamped array size or a misspelt dataflow gives plausible but
wrong cycle counts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

DATAFLOWS = ("os", "ws", "is")
WORDS = {"int8": 1, "int16": 2, "fp16": 2}  # bytes per operand word
TECH_NODES = (16, 22, 28, 32, 40, 45, 65, 90)
DRAM_TYPES = ("lpddr4", "ddr3", "gddr5", "hbm2")
GATE_SCHEDULES = ("auto", "column", "union")
OBJECTIVES = ("cycles", "energy", "edp")  # what the per-layer schedule choice minimises


class ConfigError(ValueError):
    """A config field is missing, unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class AccelConfig:
    """Systolic-array accelerator.  Defaults: a 32x32 int8 weight-stationary array at 45 nm."""

    rows: int = 32
    cols: int = 32
    dataflow: str = "ws"
    ifmap_sram_kb: float = 128.0
    filter_sram_kb: float = 128.0
    ofmap_sram_kb: float = 256.0
    word: str = "int8"
    dram_bytes_per_cycle: float = 32.0
    clock_mhz: float = 500.0
    tech_nm: int = 45
    dram_type: str = "lpddr4"
    double_buffer: bool = True
    # conditional-pass hardware (accel_sim.gating): auto = per layer the cheapest of per-column
    # compacted lists and shared streams; column = lists only; union = shared streams only
    gate_schedule: str = "auto"
    dense_fallback: bool = True     # run a gated layer dense when its gated schedule is not faster
    gate_latency: int = 4           # cycles between the last base output and the first conditional fold
    # per-layer schedule choice (dense or a gated mapping) minimises total cycles incl. DRAM
    # stalls, energy, or energy x cycles; ties go to the other measure
    optimize: str = "cycles"
    # WS conditional-pass gather window (KiB; 0 = none): the pixel vectors between the
    # slowest and the fastest column's list head, read once from the ifmap SRAM (accel_sim.gating)
    gather_buffer_kb: float = 8.0
    seed: int = 0                   # gate-pattern draws when only densities are known
    fpga_clock_mhz: float = 250.0

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            _check_int(name, getattr(self, name), 1, 4096)
        _check_choice("dataflow", self.dataflow, DATAFLOWS)
        for name in ("ifmap_sram_kb", "filter_sram_kb", "ofmap_sram_kb"):
            _check_num(name, getattr(self, name), lo_exclusive=0.0, hi=1 << 20)
        _check_choice("word", self.word, tuple(WORDS))
        _check_num("dram_bytes_per_cycle", self.dram_bytes_per_cycle, lo_exclusive=0.0, hi=1e6)
        _check_num("clock_mhz", self.clock_mhz, lo_exclusive=0.0, hi=1e5)
        _check_num("fpga_clock_mhz", self.fpga_clock_mhz, lo_exclusive=0.0, hi=1e4)
        _check_choice("tech_nm", self.tech_nm, TECH_NODES)
        _check_choice("dram_type", self.dram_type, DRAM_TYPES)
        _check_choice("gate_schedule", self.gate_schedule, GATE_SCHEDULES)
        _check_choice("optimize", self.optimize, OBJECTIVES)
        if isinstance(self.gather_buffer_kb, bool) or not isinstance(self.gather_buffer_kb, (int, float)) \
                or not 0 <= self.gather_buffer_kb <= 1 << 20:
            raise ConfigError(f"gather_buffer_kb: expected a number in [0, {1 << 20}], got {self.gather_buffer_kb!r}")
        for name in ("double_buffer", "dense_fallback"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        _check_int("gate_latency", self.gate_latency, 0, 1 << 20)
        _check_int("seed", self.seed, 0, 2**63 - 1)

    @property
    def word_bytes(self) -> int:
        return WORDS[self.word]

    def replace(self, **changes: Any) -> "AccelConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = tuple(f.name for f in dataclasses.fields(AccelConfig))


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise ConfigError(f"{name}: got {value!r}; allowed: {', '.join(map(str, allowed))}")


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}: expected an integer in [{lo}, {hi}], got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name}: {value} out of range; allowed: {lo}..{hi}")


def _check_num(name: str, value: Any, lo_exclusive: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: expected a number > {lo_exclusive}, got {value!r}")
    if not lo_exclusive < value <= hi:
        raise ConfigError(f"{name}: {value} out of range; allowed: > {lo_exclusive} and <= {hi:g}")


def parse_array(text: str) -> tuple[int, int]:
    """``"32x16"`` -> (32, 16) (rows x cols)."""
    parts = str(text).lower().split("x")
    try:
        rows, cols = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"array: expected ROWSxCOLS such as 32x32, got {text!r}") from None
    return rows, cols


def config_from_mapping(data: Mapping[str, Any], source: str = "config") -> AccelConfig:
    """Build a config from a mapping; ``array: 32x32`` is accepted as shorthand for rows/cols."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    data = dict(data)
    if "array" in data:
        data["rows"], data["cols"] = parse_array(data.pop("array"))
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown field(s) {', '.join(unknown)}; allowed: "
                          f"array, {', '.join(FIELDS)}")
    try:
        return AccelConfig(**data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# SCALE-Sim v2 .cfg [architecture_presets] keys -> AccelConfig fields; Bandwidth is in words
# per cycle there and becomes bytes per cycle here.  Address offsets and bank counts only place
# SCALE-Sim's traces and change no cycle count, so they are read and not used.
SCALESIM_KEYS = {"arrayheight": "rows", "arraywidth": "cols", "ifmapsramszkb": "ifmap_sram_kb",
                 "filtersramszkb": "filter_sram_kb", "ofmapsramszkb": "ofmap_sram_kb",
                 "dataflow": "dataflow", "bandwidth": "dram_bytes_per_cycle"}
SCALESIM_UNUSED = {"ifmapoffset", "filteroffset", "ofmapoffset", "memorybanks", "readrequestbuffer",
                   "writerequestbuffer"}


def load_scalesim_cfg(path: str | Path) -> AccelConfig:
    """Read a SCALE-Sim v2 ``.cfg`` (INI: ``[architecture_presets]``); other sections are ignored."""
    import configparser  # noqa: PLC0415

    path = Path(path)
    cp = configparser.ConfigParser()
    try:
        cp.read_string(path.read_text(), source=str(path))
    except configparser.Error as exc:
        raise ConfigError(f"{path}: not a valid SCALE-Sim .cfg: {str(exc).splitlines()[0]}") from None
    if not cp.has_section("architecture_presets"):
        raise ConfigError(f"{path}: missing section [architecture_presets]")
    data: dict[str, Any] = {}
    for key, raw in cp.items("architecture_presets"):
        if key in SCALESIM_UNUSED:
            continue
        if key not in SCALESIM_KEYS:
            raise ConfigError(f"{path}: [architecture_presets] unknown key {key!r}; allowed: "
                              f"{', '.join(sorted(SCALESIM_KEYS.keys() | SCALESIM_UNUSED))}")
        field_name = SCALESIM_KEYS[key]
        raw = raw.strip()
        if field_name == "dataflow":
            data[field_name] = raw.lower()
            continue
        try:
            data[field_name] = int(raw) if field_name in ("rows", "cols") else float(raw)
        except ValueError:
            raise ConfigError(f"{path}: [architecture_presets] {key}: expected a number, got {raw!r}") from None
    if "dram_bytes_per_cycle" in data:
        data["dram_bytes_per_cycle"] *= WORDS[AccelConfig.word]
    return config_from_mapping(data, str(path))


def load_config(path: str | Path) -> AccelConfig:
    """Read a YAML config, or a SCALE-Sim ``.cfg``; fields left out keep their defaults."""
    path = Path(path)
    if path.suffix.lower() == ".cfg":
        return load_scalesim_cfg(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return config_from_mapping(data, str(path))
