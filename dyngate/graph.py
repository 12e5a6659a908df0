"""One graph view of a model: ``torch.fx`` capture plus channel-dependency groups.

Gating, static pruning and the simulator's topology extraction all read this view.

Channel analysis works at single-channel granularity: every channel that a layer creates (a
conv/linear output, the graph input) gets a global id; shape-preserving ops pass ids through;
elementwise binary ops (residual add, SE-style mul) union the ids they combine; ``cat``
concatenates id lists; a depthwise conv unions its input and output channels; the option-A
shortcut pads with "zero" channels. The connected components are the channels that must be
removed (or gated) together; components touching the same layers form a ``ChannelGroup``.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from dyngate.errors import GraphError
from dyngate.gating import GatedConv2d
from models.resnet import PadShortcut
from netspec.layer import LayerShape

_LEAVES = (GatedConv2d, PadShortcut)
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
_CONV = (nn.Conv2d, GatedConv2d)


@dataclass
class LayerInfo:
    """A conv or linear layer as the rest of dyngate sees it."""

    name: str
    kind: str  # "conv2d" | "linear"
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
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
        """The shared shape record that MACs and parameters are counted on; a conv's spatial
        size comes from the example input of :func:`capture`."""
        if self.kind == "linear":
            return LayerShape(self.name, self.kind, self.in_channels, self.out_channels)
        if self.input_shape is None or self.output_shape is None:
            raise GraphError(f"layer '{self.name}': no output shape; capture with an example input")
        return LayerShape(self.name, self.kind, self.in_channels, self.out_channels, self.kernel_size,
                          self.stride, self.padding, self.dilation, self.groups,
                          tuple(self.input_shape[-2:]), tuple(self.output_shape[-2:]))


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


@dataclass
class GraphView:
    module: nn.Module
    graph: fx.GraphModule
    layers: dict[str, LayerInfo]
    groups: list[ChannelGroup]

    def convs(self) -> list[LayerInfo]:
        return [l for l in self.layers.values() if l.kind == "conv2d"]

    def group_of(self, layer: str, role: str = "out") -> list[ChannelGroup]:
        return [g for g in self.groups if (layer, role) in g.members]


class _PathTracer(fx.Tracer):
    """Tracer that keeps our leaf modules whole and remembers which module it is inside,
    so a trace failure can name the module path."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)

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
    ids = _ChannelIds()
    chan: dict[fx.Node, np.ndarray | None] = {}    # per node: channel ids (-1 = constant zero)
    layers: dict[str, LayerInfo] = {}
    uses: dict[str, list[tuple[str, np.ndarray]]] = {}  # layer -> [(role, ids)]
    bn_of: dict[str, tuple[str, np.ndarray]] = {}
    in_factor: dict[str, int] = {}
    input_ids: list[np.ndarray] = []
    flattened: dict[fx.Node, int] = {}  # node -> spatial factor after flatten

    def shape(node) -> tuple[int, ...] | None:
        tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None

    def unsupported(node: fx.Node, why: str = "") -> GraphError:
        return GraphError(f"unsupported op '{_op_name(node)}' ({node.op}) in module "
                          f"'{_module_path(node)}' at node '{node.name}'" + (f": {why}" if why else ""))

    def arg_ids(node: fx.Node, i: int = 0) -> np.ndarray:
        a = node.args[i]
        if not isinstance(a, fx.Node) or chan.get(a) is None:
            raise unsupported(node, f"argument {i} is not a channel-carrying tensor")
        return chan[a]

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            s = shape(node)
            if s is not None and len(s) < 2:
                raise unsupported(node, "model input must have a channel dimension")
            n = s[1] if s is not None else None
            chan[node] = None if n is None else ids.new(n)
            if chan[node] is not None:
                input_ids.append(chan[node])
            continue
        if node.op == "get_attr":
            chan[node] = None
            continue
        if node.op == "output":
            continue
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            name = str(node.target)
            if isinstance(m, _CONV):
                x = node.args[0]
                cin = chan.get(x)
                if cin is None:  # graph input without a traced shape
                    cin = ids.new(m.in_channels)
                    input_ids.append(cin)
                    chan[x] = cin
                if len(cin) != m.in_channels:
                    raise GraphError(f"layer '{name}': expects {m.in_channels} input channels, "
                                     f"its input carries {len(cin)}")
                depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
                if m.groups > 1 and not depthwise:
                    raise unsupported(node, f"grouped conv with groups={m.groups} (only depthwise "
                                            "groups == in_channels == out_channels is analysed)")
                out = cin.copy() if depthwise else ids.new(m.out_channels)
                layers[name] = LayerInfo(
                    name, "conv2d", m.in_channels, m.out_channels, tuple(m.kernel_size),
                    tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.groups, shape(x),
                    shape(node), reads_graph_input=x.op == "placeholder")
                uses[name] = [("in", cin), ("out", out)]
                chan[node] = out
            elif isinstance(m, nn.Linear):
                x = node.args[0]
                cin = chan.get(x)
                if cin is None:
                    raise unsupported(node, "linear input carries no channel information")
                factor = flattened.get(x, 1)
                if len(cin) * factor != m.in_features:
                    if m.in_features % len(cin):
                        raise GraphError(f"layer '{name}': in_features={m.in_features} does not "
                                         f"map onto the {len(cin)} channels that reach it")
                    factor = m.in_features // len(cin)
                out = ids.new(m.out_features)
                layers[name] = LayerInfo(name, "linear", m.in_features, m.out_features,
                                         input_shape=shape(x), output_shape=shape(node),
                                         reads_graph_input=x.op == "placeholder")
                uses[name] = [("in", cin), ("out", out)]
                in_factor[name] = factor
                chan[node] = out
            elif isinstance(m, nn.BatchNorm2d):
                c = arg_ids(node)
                if len(c) != m.num_features:
                    raise GraphError(f"layer '{name}': BatchNorm2d({m.num_features}) receives "
                                     f"{len(c)} channels")
                bn_of[name] = (name, c)
                chan[node] = c
            elif isinstance(m, PadShortcut):
                c = arg_ids(node)
                chan[node] = np.concatenate([np.full(m.pad, -1), c, np.full(m.pad_high, -1)])
            elif isinstance(m, nn.Flatten):
                c = arg_ids(node)
                chan[node] = c
                s = shape(node.args[0])
                flattened[node] = int(np.prod(s[2:])) if s is not None and len(s) > 2 else 1
            elif isinstance(m, _ACT_MODULES + _PASS_MODULES):
                chan[node] = arg_ids(node)
                if node.args[0] in flattened:
                    flattened[node] = flattened[node.args[0]]
            else:
                raise unsupported(node, f"module type {type(m).__name__} is not handled by the "
                                        "channel analysis")
            continue
        # call_function / call_method
        t = node.target
        if node.op == "call_method" and t == "size" or t in (getattr, operator.floordiv, len):
            chan[node] = None
            continue
        if t in _BINARY or (node.op == "call_method" and t in _BINARY_METHODS):
            tensors = [a for a in node.args if isinstance(a, fx.Node) and chan.get(a) is not None]
            if not tensors:
                chan[node] = None
                continue
            result = chan[tensors[0]].copy()
            for other in tensors[1:]:
                o = chan[other]
                if len(o) != len(result):
                    raise unsupported(node, f"combines {len(result)} and {len(o)} channels")
                ids.union(result, o)
                result = np.where(result >= 0, result, o)
            chan[node] = result
            continue
        if t in (torch.cat, torch.concat):
            seq = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if dim != 1:
                raise unsupported(node, f"concatenation along dim {dim} (only dim 1 is analysed)")
            chan[node] = np.concatenate([chan[a] for a in seq])
            continue
        if t is torch.flatten or (node.op == "call_method" and t in _FLATTEN_METHODS):
            c = arg_ids(node)
            chan[node] = c
            s = shape(node.args[0])
            flattened[node] = int(np.prod(s[2:])) if s is not None and len(s) > 2 else 1
            continue
        if t in _ACT_FUNCS or t in _PASS_FUNCS or (node.op == "call_method" and
                                                   t in _ACT_METHODS | _PASS_METHODS):
            chan[node] = arg_ids(node)
            if node.args[0] in flattened:
                flattened[node] = flattened[node.args[0]]
            continue
        if t is torch.mean or (node.op == "call_method" and t == "mean"):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
            if 1 in dims or not dims:
                raise unsupported(node, "mean over the channel dimension")
            chan[node] = arg_ids(node)
            continue
        raise unsupported(node)

    output_ids = [chan[a] for a in _flatten_args(next(n for n in gm.graph.nodes if n.op == "output").args)
                  if isinstance(a, fx.Node) and chan.get(a) is not None]
    _annotate_chains(gm, layers)
    for node in gm.graph.nodes:
        if node.op == "output":
            for a in _flatten_args(node.args):
                if isinstance(a, fx.Node) and a.op == "call_module" and str(a.target) in layers:
                    layers[str(a.target)].is_output = True
    groups = _build_groups(ids, uses, bn_of, in_factor, input_ids, output_ids)
    return GraphView(model, gm, layers, groups)


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
        info = layers[str(node.target)]
        cur = node
        users = list(cur.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(
                gm.get_submodule(users[0].target), nn.BatchNorm2d):
            cur = users[0]
            info.bn = str(cur.target)
            users = list(cur.users)
        if len(users) == 1 and _is_activation(gm, users[0]):
            info.activation = _op_name(users[0])


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
