"""The package's import graph: no cycles, and no exitlab import hidden inside a function (only optional
third-party extras, such as onnx or timm, are imported where they are used)."""

import ast
from pathlib import Path

import exitlab

ROOT = Path(exitlab.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """Intra-package modules imported at module level, and those imported inside functions (as 'line: name')."""
    tree = ast.parse(path.read_text())
    module, is_package = _module_name(path), path.name == "__init__.py"
    top, inner = set(), []
    modules = {_module_name(p) for p in ROOT.rglob("*.py")}

    def names(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        target = _target(module, is_package, node)
        subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
        return subs or [target]

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for n in names(child):
                    if n == "exitlab" or n.startswith("exitlab."):
                        (inner.append(f"{child.lineno}: {n}") if in_function else top.add(n))
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inside)

    visit(tree, False)
    return top, inner


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in ROOT.rglob("*.py"):
        top, _ = _imports(path)
        graph[_module_name(path)] = {t for t in top if t != _module_name(path)}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as a list of modules, or None. Packages' __init__ re-exports count as edges too,
    except the top-level package's (it only gathers the public API)."""
    colour, stack = {}, []

    def dfs(u: str) -> list[str] | None:
        colour[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if v == "exitlab":
                continue
            if colour.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if colour.get(v) is None:
                found = dfs(v)
                if found:
                    return found
        stack.pop()
        colour[u] = 2
        return None

    for u in sorted(graph):
        if u != "exitlab" and colour.get(u) is None:
            found = dfs(u)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycles():
    graph = _graph()
    engine = "exitlab.training.engine"
    assert len(graph) > 40 and engine in graph and "exitlab.runs.rundir" in graph[engine]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_exitlab_import_inside_a_function():
    hidden = {str(p.relative_to(ROOT)): inner for p in ROOT.rglob("*.py") if (inner := _imports(p)[1])}
    assert hidden == {}


def test_training_does_not_import_the_analyses_or_evaluation():
    graph = _graph()
    reach, todo = set(), ["exitlab.training.engine"]
    while todo:
        for v in graph.get(todo.pop(), ()):
            if v not in reach and v != "exitlab":
                reach.add(v)
                todo.append(v)
    assert not {m for m in reach if m.startswith(("exitlab.analysis", "exitlab.evaluation", "exitlab.recipes"))}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_evaluation_and_analyses_do_not_import_the_trainer_to_get_their_data():
    graph = _graph()
    starts = ("exitlab.evaluation.evaluate", "exitlab.evaluation.bench", "exitlab.analysis.analyze",
              "exitlab.deploy.export.onnx_export")
    for start in starts:
        reach, todo = set(), [start]
        while todo:
            for v in graph.get(todo.pop(), ()):
                if v not in reach and v != "exitlab":
                    reach.add(v)
                    todo.append(v)
        # the data comes from RunDir, not from the training engine
        assert "exitlab.training.engine" not in reach and "exitlab.runs.rundir" in reach, start


def test_importing_exitlab_does_not_import_transformers():
    """transformers is the optional nlp extra: exitlab.models.hf imports it only when a text model is built."""
    import os
    import subprocess
    import sys

    code = "import sys, exitlab, exitlab.models.hf, exitlab.data.text; sys.exit('transformers' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}  # this checkout's exitlab, whatever is installed
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
    assert "exitlab.models.hf" in _graph()["exitlab.models"]


# The layers, bottom up: a package imports only from packages on a lower layer (or its own). Packages on one layer
# do not import each other. The leaves errors and registry sit at the bottom; cli (and python -m exitlab) on top.
LAYERS = [
    {"errors"},
    {"registry"},
    {"models", "data"},
    {"runs"},
    {"training", "evaluation"},
    {"analysis", "deploy"},
    {"recipes"},
    {"cli"},
    {"__main__"},
]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself: __init__ gathers the public API from every layer
    top = parts[1]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_every_root_entry_has_a_layer():
    entries = {p.stem for p in ROOT.iterdir() if (p.suffix == ".py" or p.is_dir()) and not p.name.startswith("_")}
    entries |= {"__main__"}
    assert entries <= set().union(*LAYERS), entries - set().union(*LAYERS)
    assert len([e for e in entries if e != "__main__"]) <= 11


def test_packages_import_only_from_lower_layers():
    bad = []
    for module, targets in _graph().items():
        here = _layer(module)
        for t in targets:
            there = _layer(t)
            if here is None or there is None or t.split(".")[1] == module.split(".")[1]:
                continue
            if there >= here:
                bad.append(f"{module} -> {t}")
    assert bad == []


def test_the_layer_check_catches_an_upward_import():
    assert _layer("exitlab.models.core") < _layer("exitlab.runs.rundir") < _layer("exitlab.training.loop")
    assert _layer("exitlab.training.loop") == _layer("exitlab.evaluation.sweep")
