"""Config dataclass fields that carry their own help text and allowed values, so the CLI's
``--help``, YAML validation and the docs come from one definition and cannot drift."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, field, fields
from typing import Any, Sequence


def option(default: Any, help: str, *, choices: Sequence[Any] | None = None,
           allowed: str | None = None, item: type = int, kind: type | None = None) -> Any:
    """A dataclass field with ``help`` and either ``choices`` or a words ``allowed`` range.
    ``item`` is the element type of a list field, ``kind`` the value type of a field whose
    default is None (str when not given)."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "allowed": allowed,
            "item": item, "kind": kind}
    if isinstance(default, list):
        return field(default_factory=lambda d=tuple(default): list(d), metadata=meta)
    return field(default=default, metadata=meta)


def _default(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def help_text(f: Field) -> str:
    """'<help> (default: D; one of: a, b | allowed: ...)' for a field made by :func:`option`."""
    meta = f.metadata
    if "help" not in meta:
        raise TypeError(f"config field '{f.name}' has no help text; declare it with option()")
    d = _default(f)
    shown = (" ".join(map(str, d)) or "none") if isinstance(d, list) else ("none" if d is None else d)
    rng = (f"one of: {', '.join(map(str, meta['choices']))}" if meta["choices"]
           else meta["allowed"] or "")
    return f"{meta['help']} (default: {shown}" + (f"; {rng})" if rng else ")")


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--flag`` per field of dataclass ``cls``; every flag parses to None when absent, so
    a YAML config can supply values that flags then override."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        d = _default(f)
        kw: dict[str, Any] = {"default": None, "help": help_text(f)}
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if isinstance(d, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(d, list):
            item = f.metadata["item"]
            parser.add_argument(flag, type=item, nargs="*", metavar="N" if item is int else "NAME", **kw)
        else:
            typ = type(d) if d is not None else (f.metadata["kind"] or str)
            parser.add_argument(flag, type=typ, **kw)
