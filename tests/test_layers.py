"""The house: layers point down, no module reaches into another package's privates.

Every ``import`` of harp inside ``src/harp`` is read from the source (those inside
functions too: a lazy import upward is still an upward dependency). A package may use
its own layer and the ones below it, never one above; a name or module starting with
``_`` is used only inside the package that defines it; and the modules' top-level
imports form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import harp

SRC = Path(harp.__file__).resolve().parent

#: The layers, bottom to top. A module's layer is its first package under harp.
LAYERS = [
    ("core", "_version"),
    ("data",),
    ("execution",),
    ("nn",),
    ("models",),
    ("training",),
    ("features",),
    ("selectors",),
    ("api",),
    ("bench",),
    ("app", "__main__"),
    ("__init__",),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[str, list[str], bool, int]]:
    """``(module imported, names, at top level, line)`` of each harp import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "harp" or node.module.startswith("harp."):
                names = [a.name for a in node.names]
                out.append((node.module, names, id(node) in top, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("harp"):
                    out.append((alias.name, [], id(node) in top, node.lineno))
    return out


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def test_every_module_has_a_layer():
    unknown = sorted({_package(m) for m in MODULES} - set(RANK))
    assert not unknown, f"packages without a layer in LAYERS: {unknown}"


def test_imports_point_down():
    upward = []
    for module, path in MODULES.items():
        here = RANK[_package(module)]
        for target, names, _, line in _imports(path):
            targets = [target] if target != "harp" else [f"harp.{n}" for n in names]
            for full in targets:
                there = RANK.get(_package(full))
                if there is not None and there > here:
                    upward.append(f"{path.relative_to(SRC)}:{line}: {module} -> {full}")
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_private_names_across_packages():
    leaks = []
    for module, path in MODULES.items():
        package = _package(module)
        for target, names, _, line in _imports(path):
            # harp/_version.py is the package's version file (a packaging
            # convention), not a private module.
            if _package(target) == package or target in ("harp", "harp._version"):
                continue
            private_module = any(
                part.startswith("_") and part != "__init__"
                for part in target.split(".")[1:]
            )
            private_names = [n for n in names if n.startswith("_")]
            if private_module or private_names:
                what = target + (f" ({', '.join(private_names)})" if names else "")
                leaks.append(f"{path.relative_to(SRC)}:{line}: {what}")
    assert not leaks, "private names used outside their package:\n" + "\n".join(leaks)


def test_top_level_imports_have_no_cycle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, names, at_top, _ in _imports(path):
            if not at_top:
                continue
            # "from harp.x import y" may import the submodule harp.x.y.
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in MODULES and candidate != module:
                    graph[module].add(candidate)
                    break
    # Tarjan-free check: depth-first search for a back edge.
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt) :] + [nxt])
                return True
            if nxt not in state and visit(nxt, stack):
                return True
        stack.pop()
        state[node] = 2
        return False

    for node in sorted(graph):
        if node not in state and visit(node, []):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)
