"""``dyngate.save`` / ``dyngate.load``: the architecture recipe, the conversion spec and the
state dict in one file, so a gated model comes back with identical outputs."""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

import models
from dyngate.convert import convert
from dyngate.errors import CheckpointError
from fsio import atomic_write

FORMAT = "dyngate.checkpoint"
VERSION = 1


def save(model: nn.Module, path: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> None:
    """Write ``model`` (dense or gated) to ``path``.

    The model must come from ``models.build`` (it carries ``dyngate_arch``) so that ``load`` can
    rebuild it; ``extra`` holds anything JSON-like (metrics, training args).
    """
    arch = getattr(model, "dyngate_arch", None)
    if arch is None:
        raise CheckpointError("save: the model has no 'dyngate_arch' recipe; build it with "
                              "models.build(name, ...) or pass a model to load(path, model=...)")
    payload = {"format": FORMAT, "version": VERSION, "arch": arch,
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
    return payload


def load(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the model saved at ``path`` (or convert the given dense ``model`` the same way)
    and load its weights strictly: any missing, unexpected or mis-shaped tensor is an error."""
    payload = read(path)
    if model is None:
        arch = payload["arch"]
        try:
            model = models.build(arch["name"], **arch.get("kwargs", {}))
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: cannot rebuild architecture {arch!r}: {e}") from e
    if payload.get("pruning"):
        from dyngate.surgery import apply_pruning_history  # noqa: PLC0415 (optional feature)
        model = apply_pruning_history(model, payload["pruning"])
    spec = payload.get("conversion")
    if spec:
        kw = {k: spec[k] for k in ("partitions", "grouped", "granularity", "alpha", "sparse_bp")}
        kw["tile"] = tuple(spec.get("tile", (1, 1)))   # spec version 1: per-element gates
        try:
            model = convert(model, include=spec["layers"], **kw)
        except Exception as e:
            raise CheckpointError(f"{path}: the saved gating spec does not fit this architecture: {e}") from e
    _load_strict(model, payload["state_dict"], str(path))
    model.eval()
    return model


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + ", ".join(
                f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in shapes[:5]))
        raise CheckpointError(f"{path} does not match the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
