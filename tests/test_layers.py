"""The map holds: imports point down the layers (README's Layout), and no module imports itself back."""
from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).parents[1] / "src" / "hone"
# Lower numbers are lower floors; a module may import its own floor and those below.
FLOORS = {"version": 0, "config": 0, "errors": 0, "home": 0, "atomic": 0, "hardware": 0, "servicedb": 0,
          "data": 1, "models": 2, "registry": 3, "methods": 4, "launch": 5, "training": 6, "kb": 7, "evaluation": 7,
          "exporting": 7, "llamacpp": 7, "monitor": 9, "objectives": 10, "sweeps": 12, "hone": 15, "cli": 20,
          "serve": 20}


def modules() -> dict[str, Path]:
    found = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict) -> set[str]:
    """hone modules `name` imports, at any depth except under `if TYPE_CHECKING:`."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - child.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in child.names] + [base]
            elif isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            else:
                visit(child)
                continue
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("hone"):
                    out.add(target)
                    break

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return out


def floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS[parts[1]] if len(parts) > 1 else FLOORS["hone"]


def test_every_import_points_down_a_floor():
    known = modules()
    upward = [f"{name} -> {target}" for name, path in known.items() for target in imports(name, path, known)
              if floor(target) > floor(name)]
    assert not upward, upward


def test_there_is_no_import_loop():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    # a package's __init__ may import its own submodules; every other cycle is a loop
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    state: dict[str, int] = {}
    loops = []

    def walk(node, trail):
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                loops.append(trail[trail.index(target):] + [target])
            elif target not in state:
                walk(target, trail + [target])
        state[node] = 2

    for name in graph:
        if name not in state:
            walk(name, [name])
    assert not loops, loops
