"""The package layout the README describes holds: no dyngate module imports a layer above its
own, and the packages below dyngate (kernels, models, netspec, fsio) never import it."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]

# lowest first; a module may import its own unit and any unit of a lower layer
LAYERS = [
    {"dyngate.errors", "dyngate.options"},
    {"dyngate.graph"},
    {"dyngate.gating"},
    {"dyngate.channel_ops", "dyngate.profile", "dyngate.pruning", "dyngate.deploy"},
    {"dyngate.checkpoint", "dyngate.compile", "dyngate.latency"},
    {"dyngate.train"},
    {"dyngate", "dyngate.__main__", "dyngate.cli", "dyngate.cli_model"},  # public API and CLIs
]


def _module(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """A top-level module, or a package (gating, pruning, train) as a whole."""
    return ".".join(module.split(".")[:2])


def _imports(path: pathlib.Path) -> set[str]:
    """Every module ``path`` imports, function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "dyngate":  # from dyngate import graph -> dyngate.graph
                found.update(f"dyngate.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _layer(unit: str) -> int:
    hits = [i for i, units in enumerate(LAYERS) if unit in units]
    assert hits, f"{unit} is not placed in a layer of tests/core/test_layout.py"
    return hits[0]


def test_no_dyngate_module_imports_upward():
    upward, top = [], len(LAYERS) - 1
    for path in sorted((ROOT / "dyngate").rglob("*.py")):
        mine = _unit(_module(path))
        for target in _imports(path):
            other = _unit(target)
            if target.split(".")[0] != "dyngate" or other == mine:
                continue
            if _layer(other) > _layer(mine) or _layer(other) == _layer(mine) < top:
                upward.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not upward, "\n".join(upward)


def test_lower_packages_do_not_import_dyngate_or_accel_sim():
    offenders = []
    for pkg in ("kernels", "models", "netspec", "fsio"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for target in _imports(path):
                if target.split(".")[0] in ("dyngate", "accel_sim"):
                    offenders.append(f"{path.relative_to(ROOT)} imports {target}")
    for path in sorted((ROOT / "dyngate").rglob("*.py")):
        offenders += [f"{path.relative_to(ROOT)} imports {t}" for t in _imports(path)
                      if t.split(".")[0] == "accel_sim"]
    assert not offenders, "\n".join(offenders)
