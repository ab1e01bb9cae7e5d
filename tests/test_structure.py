"""The shape of the package: lab2's modules import each other without a circle, read from the source
with `ast` (every import, the ones inside functions too: a circle hidden in a function is still one)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, for every module of a flat package."""
    name, modules = package.name, {p.stem for p in package.glob("*.py")}
    graph = {}
    for path in package.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == name:
                deps |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(f"{name}."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith(f"{name}.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every circle a depth-first walk meets, as [a, b, ..., a]."""
    found, state, stack = [], {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_lab2_has_no_import_cycle():
    graph = import_graph(REPO / "lab2")
    assert len(graph) >= 20 and graph["data"] >= {"data_selection", "conversations", "config"}  # the graph was read
    assert cycles(graph) == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(graph))


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from pkg.c import x\n")  # inside a function: still a circle
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import a\n")
    assert cycles(import_graph(package)) == [["a", "b", "c", "a"]]


def test_maintainer_tooling_lives_outside_the_runtime_package():
    """The Colab package-list refresh, the rehearsal, the screenshot and the sample-data generator run
    for maintainers and CI only: tools/, never lab2/, and nothing in lab2 imports them."""
    tools = {"colab_runtime", "colab_rehearsal", "screenshot", "sample_data"}
    assert tools <= {p.stem for p in (REPO / "tools").glob("*.py")}
    assert not tools & {p.stem for p in (REPO / "lab2").glob("*.py")}
    for path in (REPO / "lab2").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "tools" or n.startswith("tools.") for n in names), f"{path} imports maintainer tooling"
