"""The folders draw the architecture (docs/architecture.md): calls flow one way, launch -> api -> jobs -> live ->
index/trainer, with durable/ under everything; the watcher (service/watch) is a process of its own beside them,
on live; the trainer and the index never import each other; no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("trainer", "index", "service", "durable")
# layer -> what it may import of this project (besides itself); service's root modules (settings, cli) are shared
MAY_IMPORT = {
    "durable": set(),
    "trainer": {"durable"},
    "index": {"durable"},
    "service.live": {"durable", "trainer", "index", "service.settings"},
    "service.jobs": {"durable", "trainer", "index", "service.settings", "service.live"},
    "service.api": {"durable", "trainer", "index", "service.settings", "service.live", "service.jobs"},
    "service.launch": {"durable", "trainer", "index", "service.settings", "service.jobs"},
    "service.watch": {"durable", "trainer", "index", "service.settings", "service.live"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of the project modules a file imports (relative imports resolved), at any depth of the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = {f"{module}.{a.name}" for a in node.names}  # `from . import x`: x may be a module
            found |= {module} | names
    return {m for m in found if m.split(".")[0] in PACKAGES}


def layer_of(module: str) -> str | None:
    return next((layer for layer in sorted(MAY_IMPORT, key=len, reverse=True)
                 if module == layer or module.startswith(layer + ".")), None)


FILES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_reaches_up_the_flow(path):
    layer = layer_of(module_name(path))
    if layer is None:  # service/__init__, settings, cli: the root wires the processes together
        return
    allowed = MAY_IMPORT[layer] | {layer}
    wrong = sorted(m for m in imports_of(path) if not any(m == a or m.startswith(a + ".") for a in allowed)
                   and not (layer.startswith("service.") and m == "service"))
    assert not wrong, f"{module_name(path)} ({layer}) imports {wrong}: against the flow of docs/architecture.md"


def test_no_import_cycles_between_modules():
    graph = {module_name(p): {m for m in imports_of(p)} for p in FILES}
    modules = set(graph)
    graph = {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = path[path.index(d):] + [d] if d in path else [m, d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
