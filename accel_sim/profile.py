"""Gate specs for the simulator: read and validate a dyngate ``SparsityProfile`` YAML, or build
a uniform-density spec.  No torch: the profile is the one contract with the runtime.

Schema ``dyngate.sparsity_profile`` version 2 (written by ``dyngate.profile``; version 1 still
read, as per-element gates): ``layers`` lists
every Conv2d and Linear in execution order with its shape, ``gated``, and for gated layers the
gate geometry (``partitions``, ``grouped``, ``granularity``, ``base_fraction``) and the measured
``density`` and per-output-channel ``channel_density``; version 2 adds the decision block
``tile`` ([th, tw] output positions x ``granularity`` channels) and its ``block_density``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from accel_sim.networks import cgnet_gated
from accel_sim.topology import Layer
from netspec.profile_schema import READABLE, SCHEMA, VERSION  # noqa: F401 - re-exported
from netspec.profile_schema import gate_block_problem, header_problem


class ProfileError(ValueError):
    """The profile is malformed or does not match the topology."""


@dataclass(frozen=True)
class GateSpec:
    """How one gated layer runs: base pass over 1/partitions of the input channels, then the
    conditional pass for outputs whose gate is on (``channel_density`` per output channel)."""

    partitions: int
    channel_density: np.ndarray
    grouped: bool = True
    granularity: int = 1
    tile: tuple[int, int] = (1, 1)      # decision block: tile positions x granularity channels
    block_density: float | None = None  # fraction of blocks on; None: equal to density

    @property
    def density(self) -> float:
        return float(np.mean(self.channel_density))

    @property
    def base_fraction(self) -> float:
        return 1.0 / self.partitions


@dataclass(frozen=True)
class Profile:
    model: str
    input_shape: tuple[int, ...]
    samples: int
    layers: list[dict[str, Any]]
    source: str


_SHAPE_FIELDS = ("kind", "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                 "groups", "input_hw", "output_hw")
_INT_PAIRS = ("kernel_size", "stride", "padding", "dilation", "input_hw", "output_hw")


def _need(d: dict, key: str, types: tuple, where: str) -> Any:
    if key not in d:
        raise ProfileError(f"{where}: missing field '{key}'")
    v = d[key]
    if isinstance(v, bool) and bool not in types:
        raise ProfileError(f"{where}: field '{key}' must be {'/'.join(t.__name__ for t in types)}, got {v!r}")
    if not isinstance(v, types):
        raise ProfileError(f"{where}: field '{key}' must be {'/'.join(t.__name__ for t in types)}, got {v!r}")
    return v


def _check_layer(entry: Any, i: int, src: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ProfileError(f"{src}: layers[{i}] must be a mapping")
    name = _need(entry, "name", (str,), f"{src}: layers[{i}]")
    where = f"{src}: layer {name}"
    kind = _need(entry, "kind", (str,), where)
    if kind not in ("conv2d", "linear"):
        raise ProfileError(f"{where}: field 'kind' must be conv2d or linear, got {kind!r}")
    for key in ("in_channels", "out_channels", "groups"):
        if _need(entry, key, (int,), where) < 1:
            raise ProfileError(f"{where}: field '{key}' must be >= 1")
    for key in _INT_PAIRS:
        v = _need(entry, key, (list,), where)
        if len(v) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            raise ProfileError(f"{where}: field '{key}' must be a list of two integers, got {v!r}")
    gated = _need(entry, "gated", (bool,), where)
    density = _need(entry, "density", (int, float), where)
    if not 0.0 <= density <= 1.0:
        raise ProfileError(f"{where}: field 'density' must be in [0, 1], got {density}")
    if gated:
        p = _need(entry, "partitions", (int,), where)
        if p < 2:
            raise ProfileError(f"{where}: field 'partitions' must be >= 2, got {p}")
        _need(entry, "grouped", (bool,), where)
        g = _need(entry, "granularity", (int,), where)
        if g < 1 or entry["out_channels"] % g:
            raise ProfileError(f"{where}: field 'granularity' must divide out_channels, got {g}")
        bf = _need(entry, "base_fraction", (int, float), where)
        if abs(bf - 1.0 / p) > 1e-6:
            raise ProfileError(f"{where}: field 'base_fraction' {bf} != 1/partitions (1/{p})")
        cd = _need(entry, "channel_density", (list,), where)
        if len(cd) != entry["out_channels"]:
            raise ProfileError(f"{where}: field 'channel_density' has {len(cd)} entries, "
                               f"out_channels is {entry['out_channels']}")
        arr = np.asarray(cd, dtype=np.float64)
        if ((arr < 0) | (arr > 1)).any() or np.isnan(arr).any():
            raise ProfileError(f"{where}: field 'channel_density' values must lie in [0, 1]")
        if kind != "conv2d" or entry["groups"] != 1:
            raise ProfileError(f"{where}: gated layers must be conv2d with groups 1")
        problem = gate_block_problem(entry)
        if problem:
            raise ProfileError(f"{where}: {problem}")
        if entry["in_channels"] % p:
            raise ProfileError(f"{where}: field 'partitions' {p} must divide in_channels {entry['in_channels']}")
    return entry


def load_profile(path: str | Path) -> Profile:
    """Read and validate a sparsity profile; errors name the file, layer and field."""
    path = Path(path)
    src = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"{src}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"{src}: not valid YAML: {exc}") from None
    problem = header_problem(data)
    if problem:
        raise ProfileError(f"{src}: {problem}")
    shape = _need(data, "input_shape", (list,), src)
    samples = _need(data, "samples", (int,), src)
    layers = _need(data, "layers", (list,), src)
    if not layers:
        raise ProfileError(f"{src}: field 'layers' is empty")
    checked = [_check_layer(e, i, src) for i, e in enumerate(layers)]
    names = [e["name"] for e in checked]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ProfileError(f"{src}: duplicate layer name(s) {', '.join(dup)}")
    return Profile(str(data.get("model", "")), tuple(shape), samples, checked, src)


def match_profile(profile: Profile, layers: list[Layer]) -> dict[str, GateSpec]:
    """Gate specs keyed by layer name; any missing, extra or differently shaped layer is an error."""
    by_name = {e["name"]: e for e in profile.layers}
    topo_names = [l.name for l in layers]
    missing = [n for n in topo_names if n not in by_name]
    who = f"{profile.source} (profile of model {profile.model!r})" if profile.model else profile.source
    if missing:
        raise ProfileError(f"{who}: does not match the topology: layer {missing[0]} of the topology is missing "
                           f"from the profile"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = [n for n in by_name if n not in set(topo_names)]
    if extra:
        raise ProfileError(f"{who}: does not match the topology: layer {extra[0]} in the profile is not in "
                           f"the topology"
                           + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    specs: dict[str, GateSpec] = {}
    for l in layers:
        e = by_name[l.name]
        want = l.shape_fields()
        for key in _SHAPE_FIELDS:
            if e[key] != want[key]:
                raise ProfileError(f"{profile.source}: layer {l.name}: field '{key}' is {e[key]} in the "
                                   f"profile but {want[key]} in the topology")
        if e["gated"]:
            tile = tuple(e.get("tile", (1, 1)))   # block gates: masks drawn per block (gating.draw_mask)
            specs[l.name] = GateSpec(e["partitions"], np.asarray(e["channel_density"], dtype=np.float64),
                                     e["grouped"], e["granularity"], tile, e.get("block_density"))
    return specs


def layers_from_profile(profile: Profile) -> list[Layer]:
    """The topology a profile describes: every layer's shape is in the file, so a custom model
    is simulated from its profile alone (no torch, no built-in network)."""
    layers = []
    for e in profile.layers:
        try:
            layers.append(Layer(e["name"], e["kind"], e["in_channels"], e["out_channels"],
                                tuple(e["kernel_size"]), tuple(e["stride"]), tuple(e["padding"]),
                                tuple(e["dilation"]), e["groups"], tuple(e["input_hw"]), tuple(e["output_hw"])))
        except ValueError as exc:
            raise ProfileError(f"{profile.source}: layer {e['name']}: {exc}") from None
    return layers


def uniform_gates(layers: list[Layer], density: float, partitions: int = 4) -> dict[str, GateSpec]:
    """Density ``density`` on every output channel of the layers CGNet would gate
    (:func:`accel_sim.networks.cgnet_gated`) whose input channels ``partitions`` divides;
    grouped base path, granularity 1."""
    if not 0.0 <= density <= 1.0:
        raise ProfileError(f"density: must be in [0, 1], got {density}")
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 2:
        raise ProfileError(f"partitions: must be an integer >= 2, got {partitions!r}")
    names = cgnet_gated(layers)
    return {l.name: GateSpec(partitions, np.full(l.out_channels, float(density)))
            for l in layers if l.name in names and l.in_channels % partitions == 0}
