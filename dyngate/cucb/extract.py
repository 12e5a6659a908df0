"""The compact model: a physically smaller copy that keeps the chosen rows of every group.

This is the minimal surgery CUCB needs (see :func:`extract` for why it is not
``dyngate.surgery``): it reuses the :class:`~dyngate.cucb.plan.SlicePlan` the
training steps use, so the compact model computes exactly what the sliced executor computed
for the same selection. The compact checkpoint stores the architecture recipe, the selection and
the weights; :func:`load_compact` rebuilds it the same way.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

import models
from dyngate.checkpoint import _load_strict
from dyngate.cucb.plan import SlicePlan, make_plan
from dyngate.errors import CheckpointError
from dyngate.graph import GraphView, capture
from dyngate.surgery import slice_batchnorm
from models.resnet import PadShortcut

FORMAT = "dyngate.cucb.compact"


class KeptShortcut(nn.Module):
    """Option-A shortcut of a compact model: subsample and place the kept input channels at
    their positions among the kept channels of the residual stream (the rest are zero)."""

    def __init__(self, stride: int, positions: Sequence[int], width: int) -> None:
        super().__init__()
        self.stride, self.width = stride, width
        self.register_buffer("positions", torch.as_tensor(np.asarray(positions), dtype=torch.long),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        out = x.new_zeros((x.shape[0], self.width, *x.shape[2:]))
        return out.index_copy(1, self.positions, x)


def extract(model: nn.Module, example_input: torch.Tensor,
            selection: Mapping[int, Sequence[int]]) -> nn.Module:
    """A smaller copy of ``model`` keeping ``selection[gid]`` rows of each group (by the group
    ids of ``dyngate.capture(model, example_input)``); ``model`` is not modified.

    Dropped channels are *absent*, as in the sliced training steps: consumers lose their
    contribution entirely. (``dyngate.surgery.prune_groups(..., fold_shift=False)`` has the same
    semantics, but it refuses option-A shortcuts whose kept pad-zone channels are unequal below
    and above the copied block, and the bandit's free top-k produces such keep sets; so the
    compact model of a CUCB run is built here, from the same plan the training steps used.)
    """
    return _extract_local(model, example_input, selection)


def _extract_local(model: nn.Module, example_input: torch.Tensor,
                   selection: Mapping[int, Sequence[int]]) -> nn.Module:
    view = capture(model, example_input)
    plan = make_plan(view, selection)
    new = copy.deepcopy(model)
    for node in view.graph.graph.nodes:
        if node.op != "call_module":
            continue
        name = str(node.target)
        m = new.get_submodule(name)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            small = _slice_layer(m, plan, name)
        elif isinstance(m, nn.BatchNorm2d):
            small = slice_batchnorm(m, [int(i) for i in plan.node_kept[node.args[0].name]], name)
        elif isinstance(m, PadShortcut):
            small = _shortcut(view, plan, node, m)
        else:
            continue
        _replace(new, name, small)
    if hasattr(model, "dyngate_arch"):
        new.dyngate_arch = copy.deepcopy(model.dyngate_arch)
    return new


def _slice_layer(m: nn.Module, plan: SlicePlan, name: str) -> nn.Module:
    out = torch.as_tensor(plan.layer_out[name])
    with torch.no_grad():
        if isinstance(m, nn.Linear):
            feats = torch.as_tensor(plan.in_features(name))
            small = nn.Linear(len(feats), len(out), bias=m.bias is not None)
            small.weight.copy_(m.weight[out][:, feats])
        else:
            depthwise = m.groups > 1
            cin = torch.as_tensor(plan.layer_in[name])
            small = nn.Conv2d(len(out) if depthwise else len(cin), len(out), m.kernel_size,
                              m.stride, m.padding, m.dilation, len(out) if depthwise else 1,
                              bias=m.bias is not None)
            small.weight.copy_(m.weight[out] if depthwise else m.weight[out][:, cin])
        if m.bias is not None:
            small.bias.copy_(m.bias[out])
    return small


def _shortcut(view: GraphView, plan: SlicePlan, node, m: PadShortcut) -> nn.Module:
    users = list(node.users)
    if len(users) != 1:
        raise CheckpointError(f"shortcut '{node.target}': expected one consumer, found {len(users)}")
    stream = plan.node_kept[users[0].name]
    positions = np.searchsorted(stream, plan.node_kept[node.name])
    return KeptShortcut(m.stride, positions, len(stream))


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_compact(model: nn.Module, path: str, arch: dict[str, Any], example_shape: Sequence[int],
                 selection: Mapping[int, Sequence[int]], extra: dict[str, Any] | None = None) -> None:
    """Write the compact model: recipe of the dense model, the kept rows, the weights."""
    payload = {"format": FORMAT, "version": 1, "arch": arch, "example_shape": list(example_shape),
               "selection": {str(g): [int(r) for r in rows] for g, rows in selection.items()},
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "extra": extra or {}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(payload, path)


def load_compact(path: str) -> nn.Module:
    """Rebuild a compact model written by :func:`save_compact` (strict weight load)."""
    if not os.path.exists(path):
        raise CheckpointError(f"compact checkpoint {path} does not exist")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a CUCB compact checkpoint (no '{FORMAT}' tag)")
    arch = payload["arch"]
    dense = models.build(arch["name"], **arch.get("kwargs", {}))
    sel = {int(g): rows for g, rows in payload["selection"].items()}
    model = extract(dense, torch.zeros(payload["example_shape"]), sel)
    _load_strict(model, payload["state_dict"], path)
    return model.eval()
