"""Checks of the sparsity-profile file that dyngate (writer and reader) and accel_sim (reader)
share. Each returns the problem as text, or None, and the caller raises its own ProfileError:
pure Python, so accel_sim reads profiles without torch.
"""
from __future__ import annotations

from typing import Any

SCHEMA = "dyngate.sparsity_profile"
VERSION = 2          # 2 adds per-layer ``tile`` and ``block_density``; version 1 files still read
READABLE = (1, 2)


def header_problem(data: Any) -> str | None:
    """Why ``data`` is not a profile mapping of a readable schema version (None if it is)."""
    if not isinstance(data, dict):
        return "top level must be a mapping"
    if data.get("schema") != SCHEMA:
        return f"field 'schema' must be {SCHEMA!r}, got {data.get('schema')!r}"
    version = data.get("version")
    if version not in READABLE or isinstance(version, bool):
        return (f"field 'version' must be one of {', '.join(map(str, READABLE))}, got {version!r} "
                "(unsupported profile version)")
    return None


def gate_block_problem(entry: dict[str, Any]) -> str | None:
    """Fill a gated layer's decision block as version 1 meant it (``tile`` [1, 1], per-element
    gates, so ``block_density`` equals ``density``) and check both fields; None if they hold."""
    tile = entry.setdefault("tile", [1, 1])
    if not (isinstance(tile, list) and len(tile) == 2
            and all(isinstance(a, int) and not isinstance(a, bool) and a >= 1 for a in tile)):
        return f"field 'tile' must be a list of two integers >= 1, got {tile!r}"
    bd = entry.setdefault("block_density", entry["density"])
    if isinstance(bd, bool) or not isinstance(bd, (int, float)) or not 0.0 <= bd <= 1.0:
        return f"field 'block_density' must be a number in [0, 1], got {bd!r}"
    return None
