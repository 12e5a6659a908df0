"""Measured layer latency, for pruning to a latency budget instead of a channel count.

On a CPU the time of a conv is a step function of its channel counts, not a line: oneDNN blocks
channels by the SIMD width, so on this 2-core AVX-512 box a 3x3 conv at 28x28, batch 64, takes
about 2 ms at 16 channels and 8 ms at 18-30, and pruning 32 channels to 24 at 14x14 saves nothing.
MACs are therefore a poor guide to which widths pay. Following HALP (Shen et al., "Structural
Pruning via Latency-Saliency Knapsack", NeurIPS 2022, arXiv:2210.06659), a :class:`LatencyTable`
holds each layer's measured time over a grid of (input width, output width) on the machine and
thread count it will run on, and :func:`dyngate.pruning.prune` with ``latency=`` chooses the widths that
keep the most importance for a latency budget (see ``prune.select_keep_latency``).

One table entry times the layer as one unit: the conv (or linear) with its BatchNorm when it has
one, at the layer's input resolution and the table's batch, in the form the model will run in:
``form="eager"`` as ``model(x)`` runs (NCHW, BatchNorm separate), ``form="torch"`` as
``dyngate.compile(model, "torch")`` runs it (BatchNorm folded into the conv, channels_last), which
has no NCHW reorder cliff past a multiple of 16 channels (see :mod:`dyngate.compile`). A table is
only as good as the machine is quiet: two passes of the committed eager table agreed to a median
6-8% per entry, with one entry 1.7x apart. Layers with the same geometry share
their measurements. Elementwise work between units (activations, residual adds, option-A pads) is
not in the table. A width between two grid points costs what the next grid point up costs.
"""
from __future__ import annotations

import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import yaml

from dyngate.errors import ConversionError, LatencyTableError
from dyngate.graph import GraphView, LayerInfo, capture, is_depthwise
from fsio import atomic_write

_FORMAT = 1


@dataclass
class LayerCurve:
    """Measured ms of one layer over ``in_grid`` x ``out_grid`` (ascending widths, the last one
    the layer's full width). A depthwise layer has one grid (``in_grid``) and a 1-D ``ms``."""

    in_grid: list[int]
    out_grid: list[int]
    ms: list[Any]
    depthwise: bool = False

    def at(self, cin: int, cout: int) -> float:
        i = _ceil_index(self.in_grid, cin)
        if self.depthwise:
            return float(self.ms[i])
        return float(self.ms[i][_ceil_index(self.out_grid, cout)])


def _ceil_index(grid: list[int], w: int) -> int:
    for i, g in enumerate(grid):
        if w <= g:
            return i
    raise LatencyTableError(f"width {w} is above the table's grid (max {grid[-1]})")


@dataclass
class LatencyTable:
    """Per-layer latency curves of one model on one machine (see the module docstring)."""

    batch: int
    threads: int
    layers: dict[str, LayerCurve]
    shapes: dict[str, list[int]]          # layer -> [in_channels, out_channels, *input HxW]
    machine: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def layer_ms(self, name: str, cin: int, cout: int) -> float:
        return self.layers[name].at(cin, cout)

    def model_ms(self, widths: Mapping[str, tuple[int, int]] | None = None) -> float:
        """Sum over layers of their time at ``widths`` (layer -> (cin, cout)); full widths for
        layers not named."""
        widths = widths or {}
        return sum(c.at(*widths.get(n, self.shapes[n][:2])) for n, c in self.layers.items())

    def check(self, view: GraphView) -> None:
        """Raise, naming the layer, unless the table was measured for this model's layers."""
        for name, info in view.layers.items():
            if name not in self.shapes:
                raise LatencyTableError(f"latency table has no entry for layer '{name}': it was "
                                        "measured for a different model")
            if self.shapes[name] != _shape_key(info):
                raise LatencyTableError(f"latency table entry for layer '{name}' is "
                                        f"{self.shapes[name]} (in, out, HxW) but the model has "
                                        f"{_shape_key(info)}: measure it again for this model")
        extra = sorted(set(self.shapes) - set(view.layers))
        if extra:
            raise LatencyTableError(f"latency table names layers the model lacks: {', '.join(extra[:5])}")

    def save(self, path: str) -> None:
        doc = {"format": _FORMAT, "batch": self.batch, "threads": self.threads, "machine": self.machine,
               "meta": self.meta, "shapes": self.shapes,
               "layers": {n: {"in_grid": c.in_grid, "out_grid": c.out_grid, "depthwise": c.depthwise,
                              "ms": c.ms} for n, c in self.layers.items()}}
        with atomic_write(path) as f:  # an interrupted save keeps the previous table
            yaml.safe_dump(doc, f, sort_keys=False, default_flow_style=None, width=120)

    @classmethod
    def load(cls, path: str) -> "LatencyTable":
        try:
            with open(path) as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as e:
            raise LatencyTableError(f"latency table '{path}': cannot read it ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise LatencyTableError(f"latency table '{path}': not a format-{_FORMAT} latency table")
        for key in ("batch", "threads", "layers", "shapes"):
            if key not in doc:
                raise LatencyTableError(f"latency table '{path}': missing field '{key}'")
        layers = {}
        for n, c in doc["layers"].items():
            try:
                curve = LayerCurve(list(c["in_grid"]), list(c["out_grid"]), c["ms"], bool(c.get("depthwise")))
                rows = [curve.ms] if curve.depthwise else curve.ms
                ok = len(rows) == (1 if curve.depthwise else len(curve.in_grid)) and all(
                    len(r) == (len(curve.in_grid) if curve.depthwise else len(curve.out_grid)) for r in rows)
            except (KeyError, TypeError) as e:
                raise LatencyTableError(f"latency table '{path}': layer '{n}' is malformed ({e})") from e
            if not ok:
                raise LatencyTableError(f"latency table '{path}': layer '{n}': ms does not match its grids")
            layers[n] = curve
        return cls(int(doc["batch"]), int(doc["threads"]), layers,
                   {n: list(s) for n, s in doc["shapes"].items()}, doc.get("machine", ""), doc.get("meta") or {})


def _shape_key(info: LayerInfo) -> list[int]:
    hw = list(info.input_shape[2:]) if info.kind == "conv2d" and info.input_shape else []
    return [info.in_channels, info.out_channels, *hw]


def _grid(full: int, points: int) -> list[int]:
    """Widths step, 2*step, ... below ``full``, then ``full`` itself: at most ``points`` entries,
    step = ceil(full / points)."""
    step = max(1, math.ceil(full / points))
    return sorted({*range(step, full, step), full})


FORMS = ("eager", "torch")


def _unit(model: nn.Module, info: LayerInfo, cin: int, cout: int, form: str) -> nn.Module:
    """The layer rebuilt at widths (cin, cout) in eval mode: with its BatchNorm (``eager``), or
    with the BatchNorm folded into a conv bias and channels_last weights (``torch``)."""
    layer = model.get_submodule(info.name)
    bias = getattr(layer, "bias", None) is not None
    if info.kind == "linear":
        return nn.Linear(cin, cout, bias=bias).eval()
    groups = cin if is_depthwise(info) else 1
    folded = form == "torch" and info.bn is not None
    conv = nn.Conv2d(cin, cout, info.kernel_size, info.stride, info.padding, info.dilation,
                     groups=groups, bias=bias or folded)
    if form == "torch":
        return conv.eval().to(memory_format=torch.channels_last)
    return (nn.Sequential(conv, nn.BatchNorm2d(cout)) if info.bn else conv).eval()


def _time_ms(unit: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        unit(x)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            unit(x)
            ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def measure(model: nn.Module, example_input: torch.Tensor, *, batch: int = 64, threads: int | None = None,
            points: int = 16, repeats: int = 7, seed: int = 0, progress: bool = True, form: str = "eager",
            timer: Callable[[nn.Module, torch.Tensor], float] | None = None) -> LatencyTable:
    """Time every conv/linear layer of ``model`` over a width grid of at most ``points`` widths
    per prunable dimension, ``batch`` inputs at the layer's own resolution, ``threads`` torch
    threads (default: the current setting), median of ``repeats`` calls after one warm-up, each
    unit in the deployment ``form`` ("eager" or "torch", see the module docstring).

    Grid points are timed in a shuffled order, so slow drift of a shared machine spreads over the
    table instead of tilting one layer's curve. A dimension that carries the model input or
    output is not varied. Layers of the same geometry are timed once. ``timer(unit, x)`` replaces
    the wall clock with any cost model in ms (a simulator's cycle count, a fixed formula)."""
    from tqdm import tqdm  # noqa: PLC0415

    if batch < 1 or points < 1 or repeats < 1:
        raise ConversionError(f"batch, points and repeats must be >= 1, got {batch}, {points}, {repeats}")
    if form not in FORMS:
        raise ConversionError(f"latency form must be one of {', '.join(FORMS)}, got {form!r}")
    view = capture(model, example_input)
    jobs: dict[tuple, set[tuple[int, int]]] = {}
    plan: dict[str, tuple[tuple, list[int], list[int]]] = {}
    first: dict[tuple, str] = {}                # geometry -> a layer that has it
    for name, info in view.layers.items():
        ins = [info.in_channels] if info.reads_graph_input else _grid(info.in_channels, points)
        outs = [info.out_channels] if info.is_output else _grid(info.out_channels, points)
        if is_depthwise(info):
            outs = ins
        geom = (info.kind, info.kernel_size, info.stride, info.padding, info.dilation, is_depthwise(info),
                info.bn is not None, tuple(_shape_key(info)), getattr(model.get_submodule(name), "bias", None) is not None)
        plan[name] = (geom, ins, outs)
        pairs = [(i, i) for i in ins] if is_depthwise(info) else [(i, o) for i in ins for o in outs]
        jobs.setdefault(geom, set()).update(pairs)  # same geometry, other grids (model input/output)
        first.setdefault(geom, name)
    todo = [(geom, pair) for geom, pairs in jobs.items() for pair in sorted(pairs)]
    random.Random(seed).shuffle(todo)
    old = torch.get_num_threads()
    threads = threads or old
    torch.set_num_threads(threads)
    timed: dict[tuple, float] = {}
    try:
        for geom, (cin, cout) in tqdm(todo, desc="latency table", disable=not progress):
            info = view.layers[first[geom]]
            hw = tuple(info.input_shape[2:]) if info.kind == "conv2d" else ()
            x = torch.randn(batch, cin, *hw)
            if form == "torch" and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            unit = _unit(model, info, cin, cout, form)
            timed[(geom, cin, cout)] = timer(unit, x) if timer else _time_ms(unit, x, repeats)
    finally:
        torch.set_num_threads(old)
    curves = {}
    for name, (geom, ins, outs) in plan.items():
        if geom[5]:
            ms = [round(timed[(geom, i, i)], 5) for i in ins]
        else:
            ms = [[round(timed[(geom, i, o)], 5) for o in outs] for i in ins]
        curves[name] = LayerCurve(ins, outs, ms, depthwise=geom[5])
    shapes = {n: _shape_key(i) for n, i in view.layers.items()}
    return LatencyTable(batch, threads, curves, shapes, machine=_machine(),
                        meta={"points": points, "repeats": repeats, "form": form, "torch": str(torch.__version__)})


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            name = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
    except OSError:
        name = ""
    return f"{name} ({os.cpu_count()} cpus)".strip()
