"""One graph view of a model: ``torch.fx`` capture plus channel-dependency groups.

Gating, static pruning and the simulator's topology extraction all read this view.

Channel analysis works at single-channel granularity: every channel that a layer creates (a
conv/linear output, the graph input) gets a global id; shape-preserving ops pass ids through;
elementwise binary ops (residual add, SE-style mul) union the ids they combine; ``cat``
concatenates id lists; a depthwise conv unions its input and output channels; a registered
channel op (the option-A shortcut, see :func:`register_channel_op`) copies ids and adds
"zero" channels. The connected components are the channels that must be removed (or gated)
together; components touching the same layers form a ``ChannelGroup``.
"""
from __future__ import annotations

import dataclasses
import functools
import operator
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from dyngate.errors import ConfigError, GraphError
from netspec.layer import LayerShape, is_depthwise

_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Hardswish,
                nn.Hardsigmoid, nn.Tanh, nn.ELU, nn.Mish)
_ACT_FUNCS = {F.relu, F.relu6, F.leaky_relu, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.elu,
              torch.relu, torch.sigmoid, torch.tanh, F.mish, F.sigmoid}
_ACT_METHODS = {"relu", "relu_", "sigmoid", "tanh"}
_PASS_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.Dropout, nn.Dropout2d, nn.Identity, nn.Upsample)
_PASS_FUNCS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d,
               F.dropout, F.interpolate, torch.nn.functional.dropout2d}
_PASS_METHODS = {"contiguous", "clone", "detach", "float", "to"}
_BINARY = {operator.add, operator.iadd, operator.mul, operator.imul, torch.add, torch.mul}
_BINARY_METHODS = {"add", "add_", "mul", "mul_"}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_WALK_THROUGH = (nn.BatchNorm2d, nn.ReLU, nn.Identity, nn.Dropout, nn.Dropout2d)


@dataclass(frozen=True)
class LayerInfo(LayerShape):
    """A conv or linear layer as the rest of dyngate sees it: the shared shape record (MACs and
    parameters counted by :mod:`netspec`) plus what the graph says around it."""

    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None
    bn: str | None = None            # the BatchNorm right after it, if any
    activation: str | None = None    # the activation after conv(->bn), if the chain is unbroken
    reads_graph_input: bool = False
    is_output: bool = False          # its result is (part of) the model output

    @property
    def followed_by_activation(self) -> bool:
        return self.activation is not None

    @property
    def layer_shape(self) -> LayerShape:
        """The plain shape record (no graph fields) MACs are counted on; a conv's spatial size
        comes from the example input of :func:`capture`."""
        if self.output_hw is None:
            raise GraphError(f"layer '{self.name}': no output shape; capture with an example input")
        return LayerShape(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LayerShape)})


@dataclass
class ChannelGroup:
    """Channels coupled across layers. ``members`` maps (layer, role) -> index array, where role
    is "out" (conv/linear output channel, also its BN) or "in" (input channel of a consumer);
    row k of every array is one removable unit. ``in_factor`` gives, for a linear after
    flatten, how many features each channel spans."""

    id: int
    members: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    bns: dict[str, np.ndarray] = field(default_factory=dict)
    in_factor: dict[str, int] = field(default_factory=dict)
    prunable: bool = True
    reason: str = ""

    @property
    def size(self) -> int:
        return len(next(iter(self.members.values()))) if self.members else 0

    @property
    def layers(self) -> list[str]:
        return sorted({name for name, _ in self.members})


# --- channel-coupling ops: one registration point ---------------------------------------------

@dataclass(frozen=True)
class ChannelOp:
    """How a module type that the tracer keeps whole moves channels, for every reader of the view.

    ``conv=True``: the module is a conv layer for the analysis (it carries ``nn.Conv2d``'s
    ``in_channels``/``out_channels``/``kernel_size``/``stride``/``padding``/``dilation``/``groups``).
    Otherwise ``source(module, n_in)`` maps each output channel to the input channel it copies,
    or -1 for a constant-zero channel. The sliced executor runs ``sliced_forward(module, x)`` on
    a tensor carrying only the kept input channels; it returns the kept copied channels in
    output order, zero channels omitted (default: the module itself, right for ops that do not
    depend on the width). An op that surgery resizes (one with zero channels) keeps the output
    positions that the layer whose output it is added to keeps: ``resize(module, kept, source)``
    turns them into plain data for the pruning history, ``rebuild(module, record)`` into the
    smaller module surgery puts in its place."""

    conv: bool = False
    source: Callable[[nn.Module, int], np.ndarray] | None = None
    sliced_forward: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None
    resize: Callable[[nn.Module, np.ndarray, np.ndarray], list[int]] | None = None
    rebuild: Callable[[nn.Module, Sequence[int]], nn.Module] | None = None


_CHANNEL_OPS: dict[type, ChannelOp] = {}


def register_channel_op(module_type: type[nn.Module], spec: ChannelOp) -> None:
    """Make ``module_type`` an fx leaf whose channels capture, the sliced plan/executor and
    surgery all move through ``spec`` (Torch-Pruning's ``customized_pruners``, timm's
    ``register_notrace_module``, in one place)."""
    if spec.conv == (spec.source is not None):
        raise ConfigError(f"register_channel_op({module_type.__name__}): give exactly one of "
                          "conv=True or source=")
    if (spec.resize is None) != (spec.rebuild is None):
        raise ConfigError(f"register_channel_op({module_type.__name__}): resize= and rebuild= "
                          "go together")
    _CHANNEL_OPS[module_type] = spec


def channel_op(m: nn.Module) -> ChannelOp | None:
    """The registered spec of ``m``'s type (or of a base class), None for ordinary modules."""
    return next((_CHANNEL_OPS[t] for t in type(m).__mro__ if t in _CHANNEL_OPS), None)


def features_of(channels: np.ndarray, factor: int) -> np.ndarray:
    """Input features of kept input channels, for a linear whose channels span ``factor``
    features each after a flatten."""
    return (channels[:, None] * factor + np.arange(factor)[None, :]).reshape(-1) if factor > 1 else channels


@dataclass
class KeepPlan:
    """What a selection of group rows keeps; index arrays are sorted original numbers."""

    layer_out: dict[str, np.ndarray]        # every layer -> kept output channels
    layer_in: dict[str, np.ndarray]         # every layer -> kept input channels (not features)
    in_factor: dict[str, int]               # every layer -> features per input channel
    full_in: dict[str, int]                 # every layer -> input channels before the selection
    full_out: dict[str, int]                # every layer -> output channels before the selection
    bns: dict[str, np.ndarray]              # BN of a selected group -> kept channels
    resized: dict[str, list[int]] = field(default_factory=dict)  # channel op (option-A
    # shortcut) -> its new widths, plain data for the pruning history

    def in_features(self, layer: str) -> np.ndarray:
        return features_of(self.layer_in[layer], self.in_factor[layer])

    def changed(self, layer: str) -> bool:
        return len(self.layer_out[layer]) < self.full_out[layer] or len(self.layer_in[layer]) < self.full_in[layer]


@dataclass
class GraphView:
    module: nn.Module
    graph: fx.GraphModule
    layers: dict[str, LayerInfo]
    groups: list[ChannelGroup]
    channel_maps: dict[str, np.ndarray] = field(default_factory=dict)  # registered channel op
    # module -> per output channel the input channel it copies (-1: a constant zero channel)

    def convs(self) -> list[LayerInfo]:
        return [l for l in self.layers.values() if l.kind == "conv2d"]

    def group_of(self, layer: str, role: str = "out") -> list[ChannelGroup]:
        return [g for g in self.groups if (layer, role) in g.members]

    def in_factor(self, layer: str) -> int:
        """Features per input channel of ``layer`` (>1 only for a linear reading a flattened map)."""
        for g in self.groups:
            if layer in g.in_factor:
                return g.in_factor[layer]
        return 1

    @functools.cached_property
    def padding_partners(self) -> dict[str, str]:
        """For each channel op that surgery resizes (one that pads zero channels): the layer
        whose output is added to the op's output; that layer's kept output positions say which
        of the op's channels survive."""
        partners = {}
        for node in self.graph.graph.nodes:
            name = str(node.target)
            if (node.op != "call_module" or name not in self.channel_maps
                    or channel_op(self.graph.get_submodule(name)).resize is None):
                continue
            partner = None
            for user in node.users:
                others = [a for a in user.args if isinstance(a, fx.Node) and a is not node]
                if len(others) == 1:
                    partner = self._producer_layer(others[0])
            if partner is None:
                raise GraphError(f"shortcut '{name}' ({type(self.graph.get_submodule(name)).__name__}): "
                                 "cannot find the layer whose output it is added to, so its "
                                 "zero-padded channels cannot be mapped")
            partners[name] = partner
        return partners

    def _producer_layer(self, node: fx.Node) -> str | None:
        while node.op == "call_module":
            if str(node.target) in self.layers:
                return str(node.target)
            if not isinstance(self.graph.get_submodule(node.target), _WALK_THROUGH):
                return None
            node = node.args[0]
        return None

    def checked_selection(self, selection: Mapping[int, Sequence[int]], *,
                          error: type[Exception] = GraphError, dedupe: bool = False) -> dict[int, np.ndarray]:
        """Sorted rows per named group, checked: the group exists and is prunable, and its rows
        are a non-empty subset of ``[0, size)``. Repeated rows are merged with ``dedupe`` (a
        bandit's draw), refused without (a user's keep set). Errors are ``error`` and name the
        group and its layers; surgery and the CUCB plan both validate here."""
        by_id = {g.id: g for g in self.groups}
        checked: dict[int, np.ndarray] = {}
        for gid, rows in selection.items():
            if gid not in by_id:
                raise error(f"no channel group {gid!r} (groups are 0..{len(self.groups) - 1})")
            g = by_id[gid]
            arr = np.sort(np.asarray([int(i) for i in rows], dtype=np.int64))
            label = f"group {gid} (layers {', '.join(g.layers[:4])}{' ...' if len(g.layers) > 4 else ''})"
            if len(np.unique(arr)) != len(arr):
                if not dedupe:
                    raise error(f"{label}: duplicate rows")
                arr = np.unique(arr)
            if len(arr) == 0 or arr[0] < 0 or arr[-1] >= g.size:
                raise error(f"{label}: rows must be a non-empty subset of [0, {g.size}), got {arr.tolist()}")
            if not g.prunable:
                raise error(f"{label}: group is not prunable ({g.reason})")
            checked[gid] = arr
        return checked

    def keep_plan(self, selection: Mapping[int, np.ndarray]) -> KeepPlan:
        """Per layer, BN and resizable channel op, what keeping ``selection[gid]`` rows of each
        group keeps (groups not named keep every row); ``selection`` as
        :meth:`checked_selection` returns it."""
        factor = {n: self.in_factor(n) for n in self.layers}
        full_in = {n: info.in_channels // factor[n] for n, info in self.layers.items()}
        full_out = {n: info.out_channels for n, info in self.layers.items()}
        keep = {(n, "in"): np.ones(c, dtype=bool) for n, c in full_in.items()}
        keep.update({(n, "out"): np.ones(c, dtype=bool) for n, c in full_out.items()})
        bn_keep: dict[str, np.ndarray] = {}
        for g in self.groups:
            if g.id not in selection:
                continue
            dropped = np.setdiff1d(np.arange(g.size), selection[g.id])
            for key, arr in g.members.items():
                keep[key][arr[dropped].reshape(-1)] = False
            for bn, arr in g.bns.items():
                mask = bn_keep.setdefault(bn, np.ones(self.module.get_submodule(bn).num_features, dtype=bool))
                mask[arr[dropped].reshape(-1)] = False
        plan = KeepPlan({n: np.flatnonzero(keep[(n, "out")]) for n in self.layers},
                        {n: np.flatnonzero(keep[(n, "in")]) for n in self.layers},
                        factor, full_in, full_out, {bn: np.flatnonzero(m) for bn, m in bn_keep.items()})
        for op, partner in self.padding_partners.items():
            if plan.changed(partner):
                m = self.module.get_submodule(op)
                plan.resized[op] = channel_op(m).resize(m, plan.layer_out[partner], self.channel_maps[op])
        return plan


class _PathTracer(fx.Tracer):
    """Tracer that keeps registered channel ops whole and remembers which module it is inside,
    so a trace failure can name the module path."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return channel_op(m) is not None or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        path = self.path_of_module(m)
        self.stack.append(path)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:
            if not hasattr(e, "_dyngate_path"):  # innermost module wins
                e._dyngate_path = path
            raise
        finally:
            self.stack.pop()


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``; failures name the module path and the op."""
    tracer = _PathTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError... all user-facing
        where = getattr(e, "_dyngate_path", None) or "<root>"
        raise GraphError(f"cannot trace {type(model).__name__}: in module '{where}': "
                         f"{type(e).__name__}: {e}") from e
    return fx.GraphModule(model, graph)


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack)) if stack else "<root>"


def _op_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", None) or repr(t)


def _shape(node) -> tuple[int, ...] | None:
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _unsupported(node: fx.Node, why: str = "") -> GraphError:
    return GraphError(f"unsupported op '{_op_name(node)}' ({node.op}) in module "
                      f"'{_module_path(node)}' at node '{node.name}'" + (f": {why}" if why else ""))


class _ChannelIds:
    """Union-find over global channel ids."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x >= 0 and y >= 0:
                rx, ry = self.find(x), self.find(y)
                if rx != ry:
                    self.parent[max(rx, ry)] = min(rx, ry)


_MODULE_HANDLERS = ((nn.Conv2d, "_conv"), (nn.Linear, "_linear"), (nn.BatchNorm2d, "_batch_norm"),
                    (nn.Flatten, "_flatten"), (_ACT_MODULES + _PASS_MODULES, "_pass"))
_FUNCTION_HANDLERS = {getattr: "_no_channels", operator.floordiv: "_no_channels", len: "_no_channels",
                      **dict.fromkeys(_BINARY, "_binary"), torch.cat: "_cat", torch.concat: "_cat",
                      torch.flatten: "_flatten", **dict.fromkeys(_ACT_FUNCS | _PASS_FUNCS, "_pass"),
                      torch.mean: "_mean"}
_METHOD_HANDLERS = {"size": "_no_channels", **dict.fromkeys(_BINARY_METHODS, "_binary"),
                    **dict.fromkeys(_FLATTEN_METHODS, "_flatten"),
                    **dict.fromkeys(_ACT_METHODS | _PASS_METHODS, "_pass"), "mean": "_mean"}


class _Capture:
    """One channel-analysis pass: every node goes to the handler of its module type, function
    or method, which sets the channel ids its tensor carries (-1 = constant zero, None = not a
    channel-carrying tensor) and records layers, their uses and BNs."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.ids = _ChannelIds()
        self.chan: dict[fx.Node, np.ndarray | None] = {}
        self.layers: dict[str, LayerInfo] = {}
        self.uses: dict[str, list[tuple[str, np.ndarray]]] = {}  # layer -> [(role, ids)]
        self.bn_of: dict[str, tuple[str, np.ndarray]] = {}
        self.in_factor: dict[str, int] = {}
        self.input_ids: list[np.ndarray] = []
        self.flattened: dict[fx.Node, int] = {}  # node -> spatial factor after flatten
        self.channel_maps: dict[str, np.ndarray] = {}

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self._handler(node)(node)

    def _handler(self, node: fx.Node) -> Callable[[fx.Node], None]:
        if node.op == "call_module":
            m = self.gm.get_submodule(node.target)
            spec = channel_op(m)
            name = ("_conv" if spec.conv else "_mapped") if spec is not None else next(
                (h for types, h in _MODULE_HANDLERS if isinstance(m, types)), None)
            if name is None:
                raise _unsupported(node, f"module type {type(m).__name__} is not handled by the "
                                         "channel analysis")
            return functools.partial(getattr(self, name), m=m)
        if node.op in ("call_function", "call_method"):
            table = _FUNCTION_HANDLERS if node.op == "call_function" else _METHOD_HANDLERS
            name = table.get(node.target)
            if name is None:
                raise _unsupported(node)
            return getattr(self, name)
        return {"placeholder": self._placeholder, "get_attr": self._no_channels,
                "output": lambda node: None}[node.op]

    def arg_ids(self, node: fx.Node, i: int = 0) -> np.ndarray:
        a = node.args[i]
        if not isinstance(a, fx.Node) or self.chan.get(a) is None:
            raise _unsupported(node, f"argument {i} is not a channel-carrying tensor")
        return self.chan[a]

    def _placeholder(self, node: fx.Node) -> None:
        s = _shape(node)
        if s is not None and len(s) < 2:
            raise _unsupported(node, "model input must have a channel dimension")
        self.chan[node] = None if s is None else self.ids.new(s[1])
        if self.chan[node] is not None:
            self.input_ids.append(self.chan[node])

    def _no_channels(self, node: fx.Node) -> None:
        self.chan[node] = None

    def _conv(self, node: fx.Node, m: nn.Module) -> None:
        name, x = str(node.target), node.args[0]
        cin = self.chan.get(x)
        if cin is None:  # graph input without a traced shape
            cin = self.ids.new(m.in_channels)
            self.input_ids.append(cin)
            self.chan[x] = cin
        if len(cin) != m.in_channels:
            raise GraphError(f"layer '{name}': expects {m.in_channels} input channels, "
                             f"its input carries {len(cin)}")
        if m.groups > 1 and not is_depthwise(m):
            raise _unsupported(node, f"grouped conv with groups={m.groups} (only depthwise "
                                     "groups == in_channels == out_channels is analysed)")
        out = cin.copy() if is_depthwise(m) else self.ids.new(m.out_channels)
        ins, outs = _shape(x), _shape(node)
        known = ins is not None and outs is not None
        self.layers[name] = LayerInfo(
            name, "conv2d", m.in_channels, m.out_channels, tuple(m.kernel_size),
            tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.groups,
            tuple(ins[-2:]) if known else None, tuple(outs[-2:]) if known else None,
            input_shape=ins, output_shape=outs, reads_graph_input=x.op == "placeholder")
        self.uses[name] = [("in", cin), ("out", out)]
        self.chan[node] = out

    def _linear(self, node: fx.Node, m: nn.Linear) -> None:
        name, x = str(node.target), node.args[0]
        cin = self.chan.get(x)
        if cin is None:
            raise _unsupported(node, "linear input carries no channel information")
        factor = self.flattened.get(x, 1)
        if len(cin) * factor != m.in_features:
            if m.in_features % len(cin):
                raise GraphError(f"layer '{name}': in_features={m.in_features} does not "
                                 f"map onto the {len(cin)} channels that reach it")
            factor = m.in_features // len(cin)
        out = self.ids.new(m.out_features)
        self.layers[name] = LayerInfo(name, "linear", m.in_features, m.out_features,
                                      input_shape=_shape(x), output_shape=_shape(node),
                                      reads_graph_input=x.op == "placeholder")
        self.uses[name] = [("in", cin), ("out", out)]
        self.in_factor[name] = factor
        self.chan[node] = out

    def _batch_norm(self, node: fx.Node, m: nn.BatchNorm2d) -> None:
        name, c = str(node.target), self.arg_ids(node)
        if len(c) != m.num_features:
            raise GraphError(f"layer '{name}': BatchNorm2d({m.num_features}) receives "
                             f"{len(c)} channels")
        self.bn_of[name] = (name, c)
        self.chan[node] = c

    def _mapped(self, node: fx.Node, m: nn.Module) -> None:
        """A registered channel op: output channel j copies input channel source[j] or is zero."""
        c = self.arg_ids(node)
        src = np.asarray(channel_op(m).source(m, len(c)), dtype=np.int64)
        if len(src) and src.max() >= len(c):
            raise GraphError(f"module '{node.target}' ({type(m).__name__}): copies input channel "
                             f"{int(src.max())}, its input carries {len(c)}")
        self.channel_maps[str(node.target)] = src
        self.chan[node] = np.where(src >= 0, c[np.maximum(src, 0)], -1)

    def _flatten(self, node: fx.Node, m: nn.Module | None = None) -> None:
        self.chan[node] = self.arg_ids(node)
        s = _shape(node.args[0])
        self.flattened[node] = int(np.prod(s[2:])) if s is not None and len(s) > 2 else 1

    def _pass(self, node: fx.Node, m: nn.Module | None = None) -> None:
        self.chan[node] = self.arg_ids(node)
        if node.args[0] in self.flattened:
            self.flattened[node] = self.flattened[node.args[0]]

    def _binary(self, node: fx.Node) -> None:
        tensors = [a for a in node.args if isinstance(a, fx.Node) and self.chan.get(a) is not None]
        if not tensors:
            self.chan[node] = None
            return
        result = self.chan[tensors[0]].copy()
        for other in tensors[1:]:
            o = self.chan[other]
            if len(o) != len(result):
                raise _unsupported(node, f"combines {len(result)} and {len(o)} channels")
            self.ids.union(result, o)
            result = np.where(result >= 0, result, o)
        self.chan[node] = result

    def _cat(self, node: fx.Node) -> None:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim != 1:
            raise _unsupported(node, f"concatenation along dim {dim} (only dim 1 is analysed)")
        self.chan[node] = np.concatenate([self.chan[a] for a in node.args[0]])

    def _mean(self, node: fx.Node) -> None:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        if 1 in dims or not dims:
            raise _unsupported(node, "mean over the channel dimension")
        self.chan[node] = self.arg_ids(node)


def capture(model: nn.Module, example_input: torch.Tensor | None = None) -> GraphView:
    """Capture ``model`` and compute layers and channel-dependency groups.

    With ``example_input`` the view also carries every layer's input/output shape.
    """
    gm = trace(model)
    if example_input is not None:
        was_training = model.training
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
        gm.train(was_training)
    cap = _Capture(gm)
    cap.run()
    output = next(n for n in gm.graph.nodes if n.op == "output")
    output_ids = [cap.chan[a] for a in _flatten_args(output.args)
                  if isinstance(a, fx.Node) and cap.chan.get(a) is not None]
    _annotate_chains(gm, cap.layers)
    for a in _flatten_args(output.args):
        if isinstance(a, fx.Node) and a.op == "call_module" and str(a.target) in cap.layers:
            name = str(a.target)
            cap.layers[name] = dataclasses.replace(cap.layers[name], is_output=True)
    groups = _build_groups(cap.ids, cap.uses, cap.bn_of, cap.in_factor, cap.input_ids, output_ids)
    return GraphView(model, gm, cap.layers, groups, cap.channel_maps)


def _flatten_args(args) -> list:
    out = []
    for a in args:
        if isinstance(a, (list, tuple)):
            out.extend(_flatten_args(a))
        elif isinstance(a, dict):
            out.extend(_flatten_args(list(a.values())))
        else:
            out.append(a)
    return out


def _is_activation(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _ACT_MODULES)
    if node.op == "call_function":
        return node.target in _ACT_FUNCS
    return node.op == "call_method" and node.target in _ACT_METHODS


def _annotate_chains(gm: fx.GraphModule, layers: dict[str, LayerInfo]) -> None:
    """Record conv -> (BN) -> activation chains; a branch or a residual add breaks the chain."""
    for node in gm.graph.nodes:
        if node.op != "call_module" or str(node.target) not in layers:
            continue
        cur, bn, activation = node, None, None
        users = list(cur.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(
                gm.get_submodule(users[0].target), nn.BatchNorm2d):
            cur = users[0]
            bn = str(cur.target)
            users = list(cur.users)
        if len(users) == 1 and _is_activation(gm, users[0]):
            activation = _op_name(users[0])
        name = str(node.target)
        layers[name] = dataclasses.replace(layers[name], bn=bn, activation=activation)


def _build_groups(ids: _ChannelIds, uses, bn_of, in_factor, input_ids, output_ids) -> list[ChannelGroup]:
    """Group channel components by the set of (layer, role) they touch."""
    comp_members: dict[int, dict[tuple[str, str], list[int]]] = {}
    comp_bns: dict[int, dict[str, list[int]]] = {}
    for name, roles in uses.items():
        for role, arr in roles:
            for idx, cid in enumerate(arr.tolist()):
                if cid >= 0:
                    comp_members.setdefault(ids.find(cid), {}).setdefault((name, role), []).append(idx)
    for name, (_, arr) in bn_of.items():
        for idx, cid in enumerate(arr.tolist()):
            if cid >= 0:
                comp_bns.setdefault(ids.find(cid), {}).setdefault(name, []).append(idx)
    fixed_in = {ids.find(c) for arr in input_ids for c in arr.tolist() if c >= 0}
    fixed_out = {ids.find(c) for arr in output_ids for c in arr.tolist() if c >= 0}
    by_key: dict[tuple, list[int]] = {}
    for root, members in comp_members.items():
        key = tuple(sorted((k, len(v)) for k, v in members.items()))
        by_key.setdefault(key, []).append(root)
    groups = []
    for gid, (key, roots) in enumerate(sorted(by_key.items(), key=lambda kv: min(kv[1]))):
        g = ChannelGroup(gid)
        for layer_role, _n in key:
            g.members[layer_role] = np.array([comp_members[r][layer_role] for r in roots]).reshape(len(roots), -1)
        bn_names = set().union(*(comp_bns.get(r, {}).keys() for r in roots))
        for bn in bn_names:
            g.bns[bn] = np.array([comp_bns[r].get(bn, []) for r in roots]).reshape(len(roots), -1)
        g.in_factor = {name: in_factor[name] for name, role in g.members if role == "in" and name in in_factor}
        if any(r in fixed_in for r in roots):
            g.prunable, g.reason = False, "carries the model input"
        elif any(r in fixed_out for r in roots):
            g.prunable, g.reason = False, "carries the model output"
        elif not any(role == "out" for _, role in g.members):
            g.prunable, g.reason = False, "no layer produces these channels"
        groups.append(g)
    return groups
