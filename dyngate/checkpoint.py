"""``dyngate.save`` / ``dyngate.load``: the architecture recipe, the conversion spec, the
pruning history and the state dict in one file, so a model comes back with identical outputs.

Any ``nn.Module`` can be saved. A model from ``models.build`` (registry, including builders a
user adds with ``models.register``) is rebuilt from its recorded name and arguments; any other
model is rebuilt from the fresh dense instance the caller passes, ``load(path, model=MyNet())``.
The file never names code to run: it is read with ``weights_only=True`` and only registry
names are looked up.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

import models
from dyngate.gating.convert import convert
from dyngate.errors import CheckpointError
from fsio import atomic_write

FORMAT = "dyngate.checkpoint"
VERSION = 1
MAX_PARAMS = 2_000_000_000   # a recorded recipe that builds more than this is refused, not allocated


def _class_name(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def save(model: nn.Module, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` (dense, gated, pruned, or pruned then gated) to ``path``.

    Registry models (``models.build``) record their recipe and load with no argument; any other
    ``nn.Module`` records its class name, which ``load(path, model=...)`` checks. ``extra``
    holds anything JSON-like (metrics, training args).
    """
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"save: expected an nn.Module, got {type(model).__name__}")
    payload = {"format": FORMAT, "version": VERSION,
               "arch": getattr(model, "dyngate_arch", None),
               "class": _class_name(model),   # convert/prune deep-copy the root: still the user's class
               "conversion": getattr(model, "dyngate_spec", None),
               "pruning": getattr(model, "dyngate_pruning", None),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "extra": extra or {}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "wb") as fh:  # a crash mid-save keeps the previous checkpoint
        torch.save(payload, fh)


def read(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a checkpoint's payload without building the model."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dyngate checkpoint (no '{FORMAT}' format tag)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')!r} is not "
                              f"supported (expected {VERSION})")
    if not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path}: field 'state_dict' is missing or not a mapping")
    for field in ("arch", "conversion", "pruning", "extra"):
        if payload.get(field) is not None and not isinstance(payload[field], dict):
            raise CheckpointError(f"{path}: field '{field}' must be a mapping, got "
                                  f"{type(payload[field]).__name__}")
    return payload


def _build_recorded(arch: dict[str, Any], path: str) -> nn.Module:
    """Rebuild a registry model from its recipe, refusing an absurd size before allocating."""
    name, kwargs = arch.get("name"), arch.get("kwargs", {})
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: field 'arch' must hold a model name and a kwargs mapping, got {arch!r}")
    try:
        with torch.device("meta"):
            n = sum(p.numel() for p in models.build(name, **kwargs).parameters())
        if n > MAX_PARAMS:
            raise CheckpointError(f"{path}: architecture {arch!r} would have {n:,} parameters "
                                  f"(more than {MAX_PARAMS:,}); refusing to build it")
        return models.build(name, **kwargs)
    except (ValueError, TypeError, RuntimeError, OverflowError) as e:
        raise CheckpointError(f"{path}: cannot rebuild architecture {arch!r}: {e}") from e


def _check_given(model: nn.Module, payload: dict[str, Any], path: str) -> None:
    from dyngate.gating.gated_conv import GatedConv2d  # noqa: PLC0415 (cycle: gating imports kernels)
    if any(isinstance(m, GatedConv2d) for m in model.modules()) or getattr(model, "dyngate_pruning", None):
        raise CheckpointError(f"load {path}: pass the fresh dense model the checkpoint was made from "
                              "(load re-applies its pruning and gating), not a gated or pruned one")
    saved, given = payload.get("class"), _class_name(model)
    if saved and saved != given:
        raise CheckpointError(f"{path} was saved from a {saved}, but model= is a {given}")


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the model saved at ``path`` and load its weights strictly: any missing,
    unexpected or mis-shaped tensor is an error.

    ``model`` is a fresh dense instance of the saved model's class (required for models not
    built by ``models.build``); the recorded pruning and gating are re-applied to a copy of it.
    """
    path = str(path)
    payload = read(path)
    if model is None:
        if not payload.get("arch"):
            raise CheckpointError(
                f"{path} holds a {payload.get('class') or 'user'} model, which is not in the model "
                "registry: pass a fresh dense instance, dyngate.load(path, model=MyNet(...)), or "
                "register its builder with models.register(name, fn) before saving")
        model = _build_recorded(payload["arch"], path)
    else:
        _check_given(model, payload, path)
    if payload.get("pruning"):
        from dyngate.pruning.surgery import apply_pruning_history  # noqa: PLC0415 (optional feature)
        try:
            model = apply_pruning_history(model, payload["pruning"])
        except Exception as e:
            raise CheckpointError(f"{path}: the saved pruning history does not fit this model: {e}") from e
    spec = payload.get("conversion")
    if spec:
        model = _reconvert(model, spec, path)
    _load_strict(model, payload["state_dict"], path)
    model.eval()
    return model


def _reconvert(model: nn.Module, spec: dict[str, Any], path: str) -> nn.Module:
    try:
        kw = {k: spec[k] for k in ("partitions", "grouped", "granularity", "alpha", "sparse_bp")}
        kw["tile"] = tuple(spec.get("tile", (1, 1)))   # spec version 1: per-element gates
        # recorded, not re-derived: ``include`` fixes the layers, but a re-save must still say
        # which rule chose them and where the thresholds started
        kw["rule"] = spec.get("rule", "cgnet")
        kw["threshold_init"] = spec.get("threshold_init", 0.0)
        gated = convert(model, include=spec["layers"], **kw)
        gated.dyngate_spec["skipped"] = dict(spec.get("skipped", {}))   # why the rule left them out
        return gated
    except KeyError as e:
        raise CheckpointError(f"{path}: the saved gating spec lacks field {e}") from e
    except Exception as e:
        raise CheckpointError(f"{path}: the saved gating spec does not fit this architecture: {e}") from e


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state)
                    if not isinstance(state[k], torch.Tensor) or own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: checkpoint {tuple(getattr(state[k], 'shape', ()))} vs model {tuple(own[k].shape)}"
                for k in shapes[:5]))
        raise CheckpointError(f"{path} does not match the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
