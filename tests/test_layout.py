"""The package's architecture, read from its source with `ast`: no import cycles, layers
that only import downwards, and no function longer than the training loop."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "semantica_jax")
JOBS = {"main", "train", "train_step", "evaluate", "train_encoder"}
LIBRARY_LAYERS = ("models", "diffusion", "metrics", "data", "utils")


def _modules() -> dict[str, str]:
    """Dotted module name -> file path, for every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            found[".".join(rel)] = os.path.join(folder, name)
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """Package modules imported anywhere in the file (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import name` imports pkg.name when that is a module.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        out.update(name for name in names if name in modules)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    # A package's __init__ is not an edge worth a cycle: importing pkg.mod runs pkg first.
    return {name: {d for d in deps if not name.startswith(d + ".")} for name, deps in graph.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _is_job_or_tool(module: str) -> bool:
    parts = module.split(".")
    return (len(parts) == 2 and parts[1] in JOBS) or (len(parts) >= 2 and parts[1] == "tools")


def test_no_import_cycle():
    assert _find_cycle(_graph()) is None, f"import cycle: {' -> '.join(_find_cycle(_graph()))}"


def test_the_cycle_finder_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("layer", LIBRARY_LAYERS)
def test_library_layers_import_no_job_and_no_tool(layer):
    graph = _graph()
    prefix = f"semantica_jax.{layer}"
    bad = {
        module: sorted(d for d in deps if _is_job_or_tool(d))
        for module, deps in graph.items()
        if module == prefix or module.startswith(prefix + ".")
    }
    assert not {m: d for m, d in bad.items() if d}


def test_layer_rule_sees_jobs_and_tools():
    assert _is_job_or_tool("semantica_jax.train") and _is_job_or_tool("semantica_jax.tools.cli")
    assert not _is_job_or_tool("semantica_jax.assets")
    assert not _is_job_or_tool("semantica_jax.utils.parallel")


def _function_lengths() -> dict[str, int]:
    lengths = {}
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths[f"{module}.{node.name}"] = node.end_lineno - node.lineno + 1
    return lengths


def test_no_function_is_longer_than_the_training_loop():
    lengths = _function_lengths()
    limit = lengths["semantica_jax.train.training_loop"]
    longer = {name: n for name, n in lengths.items() if n > limit}
    assert not longer, f"longer than the training loop ({limit} lines): {longer}"
