"""The package's import structure, read from its source (nothing is imported).

Two rules, checked on every module of ``longsearch``:

- **no import circle** among the package's modules. Every import counts: at module level, inside a
  function (a lazy import hides a circle from Python, not from a reader), and under
  ``TYPE_CHECKING``. ``from longsearch.x import y`` where ``y`` is a submodule is an import of that
  submodule; importing a package is an import of its ``__init__``.
- **no private name of another module**: neither ``from .needles import _resolve_depths`` nor
  ``models._patched_type`` on an imported module. A helper two modules share is public, and lives in
  the lower of them (or below both).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import longsearch

ROOT = Path(longsearch.__file__).resolve().parent

# Exceptions, each with its reason (none today). An entry that no longer matches an import (or an edge
# that no longer closes a circle) fails the test, so the lists can only shrink.
#
# Import edges (importer, imported) that close a circle:
KNOWN_CIRCLE_EDGES: set[tuple[str, str]] = set()
# Private names used across modules, (importer, "module.name"):
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package at ``root``, by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module if _is_package(path) else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _scan(modules: dict[str, Path]) -> tuple[list[Edge], list[tuple[str, str, int]]]:
    """Every import edge between package modules, and every private name used across modules."""
    edges: list[Edge] = []
    private: list[tuple[str, str, int]] = []
    package = next(iter(modules)).partition(".")[0]
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        aliases: dict[str, str] = {}  # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        edges.append(Edge(module, alias.name, node.lineno))
                        if alias.asname:
                            aliases[alias.asname] = alias.name
                        else:
                            aliases[alias.name.partition(".")[0]] = alias.name.partition(".")[0]
            elif isinstance(node, ast.ImportFrom):
                base = _base(module, path, node)
                if base.partition(".")[0] != package:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        edges.append(Edge(module, sub, node.lineno))
                        aliases[alias.asname or alias.name] = sub
                        if _is_private(alias.name):
                            private.append((module, sub, node.lineno))
                    else:
                        edges.append(Edge(module, base, node.lineno))
                        if _is_private(alias.name) and base != module:
                            private.append((module, f"{base}.{alias.name}", node.lineno))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                owner = _dotted(node.value)
                if owner is None:
                    continue
                head, _, rest = owner.partition(".")
                if head not in aliases:
                    continue
                target = ".".join(filter(None, [aliases[head], rest]))
                if target in modules and target != module:
                    private.append((module, f"{target}.{node.attr}", node.lineno))
    return [e for e in edges if e.importer != e.imported], private


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _graph(edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
    return graph


def _describe(circles: list[list[str]], edges: list[Edge]) -> str:
    lines = []
    for component in circles:
        members = set(component)
        lines.append("circle: " + " ↔ ".join(component))
        inside = {(e.importer, e.line, e.imported) for e in edges if e.importer in members and e.imported in members}
        lines += [f"  {importer} (line {line}) imports {imported}" for importer, line, imported in sorted(inside)]
    return "\n".join(lines)


def test_the_scan_sees_every_kind_of_import(tmp_path):
    """The checker itself, on a made-up package: every form of import is an edge, every private use is seen."""
    files = {
        "pkg/__init__.py": "",
        "pkg/low.py": "import os\n\ndef _helper(): ...\ndef public(): ...\n",
        "pkg/sub/__init__.py": "from .. import low\n",  # a package importing a sibling module by name
        "pkg/sub/leaf.py": "from ..low import _helper, public\n",  # relative, two levels; a private name
        "pkg/mid.py": (
            "import pkg.low as lo\n"
            "from pkg import sub\n"  # a subpackage: its __init__
            "def f():\n"
            "    from .sub import leaf\n"  # function level; a submodule named in `from … import`
            "    return lo._helper, lo.__name__\n"  # a private attribute of an imported module (a dunder is not private)
            "def g():\n"
            "    import pkg.top\n"
            "    return pkg.top._x\n"  # the dotted form
        ),
        "pkg/top.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .mid import f\n_x = 1\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = _modules(tmp_path / "pkg")
    assert set(modules) == {"pkg", "pkg.low", "pkg.sub", "pkg.sub.leaf", "pkg.mid", "pkg.top"}
    edges, private = _scan(modules)
    assert {(e.importer, e.imported) for e in edges} == {
        ("pkg.sub", "pkg.low"),
        ("pkg.sub.leaf", "pkg.low"),
        ("pkg.mid", "pkg.low"),
        ("pkg.mid", "pkg.sub"),
        ("pkg.mid", "pkg.sub.leaf"),
        ("pkg.mid", "pkg.top"),
        ("pkg.top", "pkg.mid"),
    }
    assert sorted((i, n) for i, n, _ in private) == [
        ("pkg.mid", "pkg.low._helper"),
        ("pkg.mid", "pkg.top._x"),
        ("pkg.sub.leaf", "pkg.low._helper"),
    ]
    assert _circles(_graph(edges)) == [["pkg.mid", "pkg.top"]]  # a type-only import closes a circle too
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) == []


def test_no_import_circle():
    edges, _ = _scan(_modules())
    everything = _circles(_graph(edges))
    in_circle = {(e.importer, e.imported) for e in edges if any({e.importer, e.imported} <= set(c) for c in everything)}
    stale = sorted(KNOWN_CIRCLE_EDGES - in_circle)
    assert not stale, f"these allow-listed imports are gone or close no circle now; remove them from KNOWN_CIRCLE_EDGES: {stale}"
    if everything:  # shown with pytest -s
        print("import circles (allow-listed edges included):\n" + _describe(everything, edges))
    checked = [e for e in edges if (e.importer, e.imported) not in KNOWN_CIRCLE_EDGES]
    circles = _circles(_graph(checked))
    assert not circles, "import circles among longsearch's modules:\n" + _describe(circles, checked)


def test_no_private_name_imported_across_modules():
    _, private = _scan(_modules())
    found = {(importer, name) for importer, name, _ in private}
    stale = sorted(KNOWN_PRIVATE_IMPORTS - found)
    assert not stale, f"these allow-listed private imports are gone; remove them from KNOWN_PRIVATE_IMPORTS: {stale}"
    if private:  # shown with pytest -s
        print("private names used across modules (allow-listed included):")
        for importer, name, line in sorted(private):
            print(f"  {importer} (line {line}) uses {name}")
    offending = sorted((i, n, line) for i, n, line in private if (i, n) not in KNOWN_PRIVATE_IMPORTS)
    assert not offending, "private names used across modules:\n" + "\n".join(f"  {i} (line {line}) uses {n}" for i, n, line in offending)
