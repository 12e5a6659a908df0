"""MAC accounting and the SparsityProfile: the one contract between runtime and simulator.

All counts are MACs per image (FLOPs = 2 * MACs). A gated layer's executed MACs are the base
pass over 1/p of the input channels for every output element, plus the remaining
(1 - 1/p) of the inputs for every output element whose gate was on, as measured. The gate
compare (one per output element) is reported separately, not as a MAC.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import yaml
from tqdm import tqdm

from dyngate.errors import ProfileError
from dyngate.gating.gated_conv import GatedConv2d
from fsio import atomic_write
from netspec.layer import LayerShape
from netspec.profile_schema import READABLE, SCHEMA, VERSION  # noqa: F401 - READABLE re-exported
from netspec.profile_schema import gate_block_problem, header_problem


_SHAPE_LISTS = ("kernel_size", "stride", "padding", "dilation", "input_hw", "output_hw")


@dataclass(frozen=True, kw_only=True)
class LayerProfile(LayerShape):
    """A layer's shape record (:class:`netspec.LayerShape`, which counts its MACs) with what
    profiling measured on it. The file keeps the shape fields as lists, in the order below."""

    gated: bool
    dense_macs: int
    executed_macs: float
    density: float = 1.0
    partitions: int | None = None
    grouped: bool | None = None
    granularity: int | None = None
    base_fraction: float | None = None
    base_macs: int | None = None
    gate_compares: int | None = None
    channel_density: list[float] | None = None
    # the gate's decision block: ``tile`` output positions (th, tw) x ``granularity`` channels;
    # [1, 1] with granularity 1 is CGNet's per-element gate. ``block_density`` is the fraction
    # of blocks switched on (edge blocks of a ragged map count as blocks), which is what a
    # tile-skipping kernel or accelerator schedules; ``density`` stays the fraction of elements.
    tile: list[int] | None = None
    block_density: float | None = None

    @classmethod
    def from_file(cls, raw: dict[str, Any]) -> "LayerProfile":
        """From a profile file's entry (shape fields as lists)."""
        return cls(**{k: tuple(v) if k in _SHAPE_LISTS else v for k, v in raw.items()})

    def to_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "kind": self.kind, "gated": self.gated}
        for f in fields(self):
            if f.name not in d:
                v = getattr(self, f.name)
                d[f.name] = list(v) if f.name in _SHAPE_LISTS else v
        if not self.gated:
            for k in ("partitions", "grouped", "granularity", "base_fraction", "base_macs",
                      "gate_compares", "channel_density", "tile", "block_density"):
                d.pop(k)
        return d


@dataclass
class SparsityProfile:
    """Per-layer shapes, MACs and measured gate densities, with whole-network totals."""

    layers: list[LayerProfile]
    model: str = ""
    input_shape: list[int] = field(default_factory=list)
    samples: int = 0
    # gated layer -> execution path it ran on this machine (not saved: a property of the
    # machine, not of the model; see kernels.autotune)
    execution: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def totals(self) -> dict[str, float]:
        dense = sum(l.dense_macs for l in self.layers)
        executed = sum(l.executed_macs for l in self.layers)
        g_dense = sum(l.dense_macs for l in self.layers if l.gated)
        g_exec = sum(l.executed_macs for l in self.layers if l.gated)
        return {"dense_macs": int(dense), "executed_macs": float(executed),
                "mac_reduction": dense / executed if executed else 1.0,
                "gated_dense_macs": int(g_dense), "gated_executed_macs": float(g_exec),
                "gated_mac_reduction": g_dense / g_exec if g_exec else 1.0}

    @property
    def mac_reduction(self) -> float:
        return self.totals["mac_reduction"]

    def layer(self, name: str) -> LayerProfile:
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "model": self.model,
                "input_shape": list(self.input_shape), "samples": self.samples,
                "layers": [l.to_dict() for l in self.layers], "totals": self.totals}

    def to_yaml(self, path: str | os.PathLike) -> None:
        """Write the profile atomically: an interrupted write keeps the previous file."""
        with atomic_write(path) as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False, default_flow_style=None, width=120)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "SparsityProfile":
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except FileNotFoundError:
            raise ProfileError(f"{path}: profile file not found") from None
        except yaml.YAMLError as e:
            raise ProfileError(f"{path}: not valid YAML: {e}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<profile>") -> "SparsityProfile":
        return _validate(data, source)

    def table(self) -> str:
        """Human-readable per-layer table with totals."""
        rows = [f"{'layer':<24} {'shape':<22} {'gated':>5} {'density':>8} {'dense MMAC':>11} "
                f"{'exec MMAC':>10} {'reduction':>9}  path"]
        for l in self.layers:
            shape = (f"{l.in_channels}->{l.out_channels} k{l.kernel_size[0]}s{l.stride[0]} "
                     f"{l.output_hw[0]}x{l.output_hw[1]}")
            red = l.dense_macs / l.executed_macs if l.executed_macs else float("inf")
            rows.append(f"{l.name:<24} {shape:<22} {'yes' if l.gated else 'no':>5} {l.density:>8.3f} "
                        f"{l.dense_macs / 1e6:>11.3f} {l.executed_macs / 1e6:>10.3f} {red:>8.2f}x"
                        f"  {self.execution.get(l.name, 'dense conv' if l.kind == 'conv2d' else '-')}")
        t = self.totals
        rows.append(f"total: {t['dense_macs'] / 1e6:.3f} MMAC dense, {t['executed_macs'] / 1e6:.3f} "
                    f"MMAC executed per image -> {t['mac_reduction']:.2f}x whole network, "
                    f"{t['gated_mac_reduction']:.2f}x over gated layers ({self.samples} images)")
        return "\n".join(rows)

    def check_matches(self, model: nn.Module) -> None:
        """Raise ProfileError unless every conv/linear of ``model`` is in the profile with the
        same shape and gated status, and vice versa."""
        mods = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, GatedConv2d))}
        names = {l.name for l in self.layers}
        for n in mods:
            if n not in names:
                raise ProfileError(f"model layer '{n}' is missing from the profile")
        for l in self.layers:
            m = mods.get(l.name)
            if m is None:
                raise ProfileError(f"profile layer '{l.name}' does not exist in the model")
            if isinstance(m, nn.Linear):
                want = {"kind": "linear", "in_channels": m.in_features, "out_channels": m.out_features}
            else:
                want = {"kind": "conv2d", "in_channels": m.in_channels, "out_channels": m.out_channels,
                        "kernel_size": tuple(m.kernel_size), "stride": tuple(m.stride),
                        "gated": isinstance(m, GatedConv2d)}
            for k, v in want.items():
                if getattr(l, k) != v:
                    raise ProfileError(f"profile layer '{l.name}': {k}={getattr(l, k)!r} but the "
                                       f"model has {v!r}")


def _batches(inputs_or_loader) -> Iterable[tuple[torch.Tensor, Any]]:
    if isinstance(inputs_or_loader, torch.Tensor):
        yield inputs_or_loader, inputs_or_loader
        return
    for batch in inputs_or_loader:
        yield (batch[0] if isinstance(batch, (list, tuple)) else batch), batch


@torch.no_grad()
def profile(model: nn.Module, inputs_or_loader, *, max_batches: int | None = None,
            progress: bool = False, on_batch=None) -> SparsityProfile:
    """Run ``model`` in eval mode on a tensor or a loader of batches and measure every conv and
    linear layer: shape, dense MACs and, for gated layers, the executed MACs from the measured
    gate density (overall and per output channel). ``on_batch(outputs, batch)``, if given,
    sees every batch's outputs (used to measure accuracy in the same pass)."""
    mods = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear, GatedConv2d))}
    gated = [(n, m) for n, m in mods.items() if isinstance(m, GatedConv2d)]
    seen: dict[str, dict[str, Any]] = {}
    hooks = [m.register_forward_hook(_record_call(seen, name)) for name, m in mods.items()]
    for _, m in gated:
        m._stats = {"on": torch.zeros(m.out_channels, dtype=torch.float64), "elements": 0,
                    "images": 0, "output_hw": None, "blocks_on": 0.0, "blocks": 0}
    try:
        images, forwards, input_shape = _run(model, inputs_or_loader, max_batches, progress, on_batch)
    finally:
        for h in hooks:
            h.remove()
    if images == 0:
        raise ProfileError("profile: no input batches were given")
    layers = [_layer_profile(name, mods[name], s, forwards) for name, s in seen.items()]
    for _, m in gated:
        m._stats = None
    arch = getattr(model, "dyngate_arch", None)
    return SparsityProfile(layers, model=arch["name"] if arch else type(model).__name__,
                           input_shape=input_shape, samples=images,
                           execution={n: m.last_path or m.mode for n, m in gated})


def _record_call(seen: dict[str, dict[str, Any]], name: str) -> Callable[..., None]:
    """Forward hook: the first call's input/output shapes (dict order is execution order) and
    the number of calls."""
    def hook(mod, inp, out):
        if name not in seen:
            seen[name] = {"in": tuple(inp[0].shape), "out": tuple(out.shape), "calls": 0}
        seen[name]["calls"] += 1
    return hook


def _run(model: nn.Module, inputs_or_loader, max_batches: int | None, progress: bool,
         on_batch) -> tuple[int, int, list[int] | None]:
    """Forward every batch in eval mode; (images, forwards, one image's input shape)."""
    was_training = model.training
    model.eval()
    images, forwards, input_shape = 0, 0, None
    try:
        it = _batches(inputs_or_loader)
        for i, (x, batch) in enumerate(tqdm(it, desc="profile", disable=not progress,
                                   total=max_batches or _len(inputs_or_loader))):
            if max_batches is not None and i >= max_batches:
                break
            input_shape = input_shape or [1, *x.shape[1:]]
            out = model(x)
            if on_batch is not None:
                on_batch(out, batch)
            images += x.shape[0]
            forwards += 1
    finally:
        model.train(was_training)
    return images, forwards, input_shape


def _layer_shape(name: str, m: nn.Module, seen: dict[str, Any]) -> LayerShape:
    """The layer's shape record, spatial sizes as its first call saw them."""
    if isinstance(m, nn.Linear):
        return LayerShape(name, "linear", m.in_features, m.out_features)
    return LayerShape(name, "conv2d", m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride),
                      m.padding, tuple(m.dilation), m.groups, tuple(seen["in"][2:]), tuple(seen["out"][2:]))


def _layer_profile(name: str, m: nn.Module, seen: dict[str, Any], forwards: int) -> LayerProfile:
    """The profile of one layer; it must have run once per forward."""
    calls_per_forward = seen["calls"] / forwards
    if calls_per_forward != 1:
        raise ProfileError(f"layer '{name}' ran {calls_per_forward:g} times per forward; "
                           "shared layers are not supported by the profile")
    shape = _layer_shape(name, m, seen)
    common = dict(asdict(shape), dense_macs=shape.macs)
    if isinstance(m, GatedConv2d):
        return LayerProfile(**common, gated=True, **_gated_fields(m, shape))
    return LayerProfile(**common, gated=False, executed_macs=float(shape.macs))


def _gated_fields(m: GatedConv2d, shape: LayerShape) -> dict[str, Any]:
    """Executed MACs and gate statistics of a gated conv: the base pass over 1/p of the inputs
    for every output, the rest for the outputs whose gate was on, as measured."""
    st = m._stats
    hw = shape.output_hw[0] * shape.output_hw[1]
    base_in = m.in_channels // m.partitions
    base = shape.with_channels(base_in, m.out_channels).macs
    on_per_image = float(st["on"].sum()) / st["images"]
    kk = shape.kernel_size[0] * shape.kernel_size[1]
    executed = base + on_per_image * (m.in_channels - base_in) * kk
    ch_density = (st["on"] / (st["images"] * hw)).tolist()
    return dict(executed_macs=executed, density=float(st["on"].sum()) / (st["elements"] * m.out_channels),
                partitions=m.partitions, grouped=m.grouped, granularity=m.granularity,
                base_fraction=base_in / m.in_channels, base_macs=base, gate_compares=hw * m.out_channels,
                channel_density=[round(v, 6) for v in ch_density], tile=list(getattr(m, "tile", (1, 1))),
                block_density=st["blocks_on"] / st["blocks"] if st["blocks"] else 0.0)


def _len(x) -> int | None:
    try:
        return len(x)
    except TypeError:
        return None


_REQUIRED = {"name": str, "kind": str, "gated": bool, "in_channels": int, "out_channels": int,
             "groups": int, "dense_macs": int, "executed_macs": (int, float), "density": (int, float)}
_GATED = {"partitions": int, "grouped": bool, "granularity": int, "base_fraction": (int, float),
          "base_macs": int, "channel_density": list}


def _validate(data: Any, source: str) -> SparsityProfile:
    """Check schema, version, every field's type and the internal consistency of each layer."""
    def err(msg: str) -> ProfileError:
        return ProfileError(f"{source}: {msg}")

    problem = header_problem(data)
    if problem:
        raise err(problem)
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise err("field 'layers' must be a non-empty list")
    names: set[str] = set()
    layers = [_read_layer(raw, f"{source}: layers[{i}]", names) for i, raw in enumerate(raw_layers)]
    shape = data.get("input_shape", [])
    if not isinstance(shape, list) or not all(isinstance(v, int) for v in shape):
        raise err(f"field 'input_shape' must be a list of integers, got {shape!r}")
    try:
        samples = int(data.get("samples", 0))
    except (TypeError, ValueError):
        raise err(f"field 'samples' must be an integer, got {data.get('samples')!r}") from None
    return SparsityProfile(layers, model=str(data.get("model", "")), input_shape=shape, samples=samples)


def _read_layer(raw: Any, where: str, names: set[str]) -> LayerProfile:
    """One entry of ``layers``, every field checked; its name must not be in ``names`` (added)."""
    if not isinstance(raw, dict):
        raise ProfileError(f"{where} must be a mapping")
    where += f" ('{raw.get('name')}')"
    fields = dict(_REQUIRED, **(_GATED if raw.get("gated") else {}))
    for key, typ in fields.items():
        if key not in raw:
            raise ProfileError(f"{where}: missing field '{key}'")
        v = raw[key]
        if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
            raise ProfileError(f"{where}: field '{key}' must be {getattr(typ, '__name__', 'a number')}, got {v!r}")
    for key in _SHAPE_LISTS:
        v = raw.get(key)
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(a, int) for a in v)):
            raise ProfileError(f"{where}: field '{key}' must be a list of two integers, got {v!r}")
    if raw["kind"] not in ("conv2d", "linear"):
        raise ProfileError(f"{where}: field 'kind' must be 'conv2d' or 'linear', got {raw['kind']!r}")
    if not 0.0 <= raw["density"] <= 1.0:
        raise ProfileError(f"{where}: field 'density' must be in [0, 1], got {raw['density']}")
    if raw["name"] in names:
        raise ProfileError(f"{where}: duplicate layer name")
    names.add(raw["name"])
    if raw.get("gated"):
        cd = raw["channel_density"]
        if len(cd) != raw["out_channels"] or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in cd):
            raise ProfileError(f"{where}: field 'channel_density' must hold {raw['out_channels']} "
                               "numbers in [0, 1]")
        raw = dict(raw)
        problem = gate_block_problem(raw)
        if problem:
            raise ProfileError(f"{where}: {problem}")
    extra = set(raw) - set(LayerProfile.__dataclass_fields__)
    if extra:
        raise ProfileError(f"{where}: unknown field(s) {sorted(extra)}")
    try:
        return LayerProfile.from_file(raw)
    except ValueError as e:   # netspec.ShapeError: a shape that cannot exist
        raise ProfileError(f"{where}: {e}") from None
