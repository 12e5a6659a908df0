"""Physical channel removal ("surgery") driven by the graph view's channel groups.

``prune_groups(model, example_input, keep)`` keeps, for every channel group listed in ``keep``,
only the given rows, and returns a smaller deep copy with new ``nn.Conv2d``/``BatchNorm2d``/
``nn.Linear`` modules. Everything is expressed as a *plan*: per module the sorted old indices it
keeps (``out``/``in`` for conv and linear, one list per BN, new widths and low pad band for
option-A shortcuts).
The plan is plain data, so it doubles as the pruning history that ``dyngate.save`` writes and
``apply_pruning_history`` replays on a freshly built model before ``load_state_dict``.

Semantics: a removed channel is replaced by its mean activation (over ``example_input``, in
eval mode) and that constant's effect is folded into each consumer: ``sum_k m_k * sum(W[:, k])``
goes into the consumer's bias, or into the running mean of the BN that follows it (exact in
eval; in training, batch-statistics BN cancels a constant anyway), or into a new bias (recorded
in the history so replay adds it too). Why: a channel whose filter was zeroed (soft pruning)
still emits the constant ``act(BN shift)`` (``beta - gamma * mu / sigma``); dropping it would
silently lose that constant. For such channels the mean *is* the constant, so the pruned model
equals the soft-pruned one exactly for linear and 1x1 consumers and in the interior of k x k
convs (at zero-padded borders a k x k conv sees fewer taps of the constant). For live channels
the mean is the best constant stand-in ("mean replacement"); pass a real batch as
``example_input`` for it, or ``fold_shift=False`` to drop channels outright. When the removed
channels are exactly zero (soft pruning that also zeroed gamma and beta, as
``prune_schedule`` does) there is nothing to fold and the result is exact everywhere.

Option-A shortcuts (``models.resnet.PadShortcut``) map input channel c to c + pad and pad both
sides with zero channels. After surgery a shortcut pads as many zero channels below and above
its copied block as the keep set kept in each band (``pad_low`` may differ from the high
band), so any keep set works. ``dyngate.prune`` still picks equally many rows from both bands
(its ranking predates asymmetric pads and its committed results use it).

Gated models are refused: pruning happens before ``dyngate.convert`` (``dyngate.load`` replays
the pruning history first and gates afterwards), because a gate's base partition is defined
over the pruned channel layout.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn

from dyngate.errors import PruningError
from dyngate.gating.gated_conv import GatedConv2d
from dyngate.graph import GraphView, capture, channel_op, is_depthwise

HISTORY_VERSION = 1


class SurgeryError(PruningError):
    """A keep set or model that surgery cannot turn into a smaller exact model."""


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def refuse_gated(model: nn.Module, what: str) -> None:
    """Pruning happens before gating; say so instead of producing inconsistent gate masks."""
    gated = [n for n, m in model.named_modules() if isinstance(m, GatedConv2d)]
    if gated:
        raise SurgeryError(f"{what}: layer '{gated[0]}' is a GatedConv2d; prune the dense model "
                           "first and call dyngate.convert on the pruned model (gate partitions "
                           "are defined over the pruned channel layout)")


# --- option-A shortcuts ------------------------------------------------------------------------

def shortcut_zones(view: GraphView) -> dict[str, tuple[str, int, int]]:
    """For each channel op that surgery resizes (``PadShortcut``): (partner layer, pad, copied
    channels), where the partner is the layer whose output is added to the op's output. Partner
    output index p is a low pad-zone channel if p < pad, a high one if p >= pad + copied, else
    a copied channel."""
    zones = {}
    for op, partner in view.padding_partners.items():
        copied = np.flatnonzero(view.channel_maps[op] >= 0)
        zones[op] = (partner, int(copied[0]) if len(copied) else 0, len(copied))
    return zones


def zone_of_rows(view: GraphView, zones: dict[str, tuple[str, int, int]]) -> dict[int, dict[str, np.ndarray]]:
    """Per group id and shortcut: an array over the group's rows, -1 low pad zone, +1 high pad
    zone, 0 elsewhere. Only groups that touch a pad zone appear."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for sc, (partner, pad, cin) in zones.items():
        for g in view.group_of(partner, "out"):
            idx = g.members[(partner, "out")][:, 0]
            z = np.where(idx < pad, -1, np.where(idx >= pad + cin, 1, 0))
            if z.any():
                out.setdefault(g.id, {})[sc] = z
    return out


# --- planning ----------------------------------------------------------------------------------

def _build_plan(view: GraphView, rows: dict[int, np.ndarray]) -> dict[str, Any]:
    """The plan (and pruning-history step) of a keep set: only what it changes, as lists."""
    kp = view.keep_plan(rows)
    layers: dict[str, dict[str, list[int]]] = {}
    for name, info in view.layers.items():
        if not kp.changed(name):
            continue
        keep_out, keep_in = kp.layer_out[name].tolist(), kp.in_features(name).tolist()
        if is_depthwise(info) and keep_in != keep_out:
            raise SurgeryError(f"layer '{name}': depthwise conv would lose different input and "
                               "output channels")
        for role, kept in (("output", keep_out), ("input", keep_in)):
            if not kept:
                raise SurgeryError(f"layer '{name}': the keep set removes every {role} channel")
        layers[name] = {"out": keep_out, "in": keep_in}
    bns = {bn: kept.tolist() for bn, kept in kp.bns.items()
           if len(kept) < view.module.get_submodule(bn).num_features}
    return {"layers": layers, "bns": bns, "shortcuts": dict(kp.resized)}


# --- the BN-shift fold -------------------------------------------------------------------------

def _fold_deltas(model: nn.Module, view: GraphView, plan: dict[str, Any],
                 example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per consumer layer, the per-output-channel contribution of its removed inputs when each
    removed channel is replaced by its mean over ``example_input`` (batch and space), measured
    on the unpruned model in eval mode. A zeroed filter makes its channel the constant
    act(BN shift), so for soft-pruned channels this is exactly that constant."""
    ref = copy.deepcopy(model).eval()
    consumers = {n: p for n, p in plan["layers"].items()
                 if len(p["in"]) < view.layers[n].in_channels and not is_depthwise(view.layers[n])}
    seen: dict[str, torch.Tensor] = {}

    def mean_of(mod, args, n):
        x = args[0].detach()
        seen[n] = x.mean(dim=(0, 2, 3)) if x.dim() == 4 else x.reshape(-1, x.shape[-1]).mean(0)
    hooks = [ref.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, n=n: mean_of(mod, args, n)) for n in consumers]
    try:
        with torch.no_grad():
            ref(example_input)
    finally:
        for h in hooks:
            h.remove()
    deltas = {}
    for name, p in consumers.items():
        m, mean = ref.get_submodule(name), seen[name]
        gone = sorted(set(range(view.layers[name].in_channels)) - set(p["in"]))
        w = m.weight[:, gone]
        delta = (w.sum(dim=(2, 3)) if w.dim() == 4 else w) @ mean[gone]
        if delta.abs().max() > 0:
            deltas[name] = delta.detach()
    return deltas


def _apply_folds(new: nn.Module, view: GraphView, plan: dict[str, Any],
                 deltas: dict[str, torch.Tensor]) -> list[str]:
    bias_added = []
    with torch.no_grad():
        for name, delta in deltas.items():
            delta = delta[plan["layers"][name]["out"]]
            m = new.get_submodule(name)
            bn = view.layers[name].bn
            if m.bias is not None:
                m.bias += delta
            elif bn is not None:
                new.get_submodule(bn).running_mean -= delta.to(new.get_submodule(bn).running_mean)
            else:
                m.bias = nn.Parameter(delta.clone().to(m.weight))
                bias_added.append(name)
    return bias_added


# --- applying a plan ---------------------------------------------------------------------------

def _slice_conv(m: nn.Conv2d, keep_out: list[int], keep_in: list[int], name: str) -> nn.Conv2d:
    if type(m) is not nn.Conv2d:
        raise SurgeryError(f"layer '{name}': {type(m).__name__} is not a plain nn.Conv2d")
    depthwise = is_depthwise(m)
    if m.groups > 1 and not depthwise:
        raise SurgeryError(f"layer '{name}': grouped conv (groups={m.groups}) cannot be sliced")
    groups = len(keep_out) if depthwise else 1
    new = nn.Conv2d(len(keep_in), len(keep_out), m.kernel_size, m.stride, m.padding, m.dilation,
                    groups, m.bias is not None, m.padding_mode, m.weight.device, m.weight.dtype)
    with torch.no_grad():
        w = m.weight[keep_out]
        new.weight.copy_(w if depthwise else w[:, keep_in])
        if m.bias is not None:
            new.bias.copy_(m.bias[keep_out])
    return new


def _slice_linear(m: nn.Linear, keep_out: list[int], keep_in: list[int], name: str) -> nn.Linear:
    if type(m) is not nn.Linear:
        raise SurgeryError(f"layer '{name}': {type(m).__name__} is not a plain nn.Linear")
    new = nn.Linear(len(keep_in), len(keep_out), m.bias is not None, m.weight.device, m.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(m.weight[keep_out][:, keep_in])
        if m.bias is not None:
            new.bias.copy_(m.bias[keep_out])
    return new


def slice_batchnorm(m: nn.BatchNorm2d, keep: list[int], name: str) -> nn.BatchNorm2d:
    """A BatchNorm2d holding only channels ``keep`` (affine params and running stats)."""
    if type(m) is not nn.BatchNorm2d:
        raise SurgeryError(f"'{name}': {type(m).__name__} is not a plain nn.BatchNorm2d")
    new = nn.BatchNorm2d(len(keep), m.eps, m.momentum, m.affine, m.track_running_stats,
                         device=m.running_mean.device if m.running_mean is not None else None)
    with torch.no_grad():
        if m.affine:
            new.weight.copy_(m.weight[keep])
            new.bias.copy_(m.bias[keep])
        if m.track_running_stats:
            new.running_mean.copy_(m.running_mean[keep])
            new.running_var.copy_(m.running_var[keep])
            new.num_batches_tracked.copy_(m.num_batches_tracked)
    return new


def apply_plan(model: nn.Module, plan: Mapping[str, Any]) -> nn.Module:
    """Replace the modules named in ``plan`` by sliced copies, in place; returns ``model``."""
    for name, p in plan.get("layers", {}).items():
        m = _get(model, name)
        fn = _slice_linear if isinstance(m, nn.Linear) else _slice_conv
        new = fn(m, list(p["out"]), list(p["in"]), name)
        new.train(m.training)
        _set_submodule(model, name, new)
    for name, keep in plan.get("bns", {}).items():
        m = _get(model, name)
        new = slice_batchnorm(m, list(keep), name)
        new.train(m.training)
        _set_submodule(model, name, new)
    for name, record in plan.get("shortcuts", {}).items():
        m = _get(model, name)
        spec = channel_op(m)
        if spec is None or spec.rebuild is None:
            raise SurgeryError(f"'{name}' is {type(m).__name__}, not a PadShortcut or another "
                               "registered channel op that surgery resizes")
        _set_submodule(model, name, spec.rebuild(m, record))
    for name in plan.get("bias_added", []):
        m = _get(model, name)
        if m.bias is None:
            m.bias = nn.Parameter(torch.zeros(m.weight.shape[0], device=m.weight.device,
                                              dtype=m.weight.dtype))
    return model


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as e:
        raise SurgeryError(f"pruning history names module '{name}', which the model lacks") from e


# --- public API --------------------------------------------------------------------------------

def prune_groups(model: nn.Module, example_input: torch.Tensor, keep: Mapping[int, Sequence[int]],
                 *, fold_shift: bool = True, meta: Mapping[str, Any] | None = None) -> nn.Module:
    """Return a physically smaller deep copy of ``model`` keeping, for each channel-group id in
    ``keep`` (ids from ``dyngate.capture(model, example_input)``), only the listed rows.

    Groups not in ``keep`` are untouched. ``fold_shift`` folds each removed channel's mean
    activation over ``example_input`` into its consumers (see the module docstring). ``meta`` (plain data, e.g. the
    criterion) is stored with this step of ``model.dyngate_pruning``.
    """
    refuse_gated(model, "prune_groups")
    view = capture(model, example_input)
    rows = view.checked_selection(keep, error=SurgeryError)
    plan = _build_plan(view, rows)
    deltas = _fold_deltas(model, view, plan, example_input) if fold_shift and plan["layers"] else {}
    new = apply_plan(copy.deepcopy(model), plan)
    plan["bias_added"] = _apply_folds(new, view, plan, deltas)
    _check_runs(new, example_input)
    step = {"keep": {str(g): r.tolist() for g, r in rows.items()}, **plan,
            "meta": dict(meta or {})}
    history = copy.deepcopy(getattr(model, "dyngate_pruning", None)) or {"version": HISTORY_VERSION, "steps": []}
    history["steps"].append(step)
    new.dyngate_pruning = history
    return new


def _check_runs(model: nn.Module, example_input: torch.Tensor) -> None:
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input[:1])
    except RuntimeError as e:  # a slicing bug or a layer surgery does not know about
        raise SurgeryError(f"the pruned model does not run on the example input: {e}") from e
    finally:
        model.train(was)


def apply_pruning_history(model: nn.Module, history: Mapping[str, Any]) -> nn.Module:
    """Replay a recorded pruning history (``model.dyngate_pruning`` of a pruned model) on a
    freshly built model: returns a deep copy with the pruned shapes (weights are whatever the
    fresh model had, sliced; ``load_state_dict`` fills them)."""
    if not isinstance(history, Mapping) or history.get("version") != HISTORY_VERSION:
        raise SurgeryError(f"pruning history has version {getattr(history, 'get', lambda k: None)('version')!r}, "
                           f"expected {HISTORY_VERSION}")
    refuse_gated(model, "apply_pruning_history")
    new = copy.deepcopy(model)
    for i, step in enumerate(history.get("steps", [])):
        try:
            apply_plan(new, step)
        except (IndexError, RuntimeError) as e:
            raise SurgeryError(f"pruning history step {i} does not fit this model: {e}") from e
    new.dyngate_pruning = copy.deepcopy(dict(history))
    return new
