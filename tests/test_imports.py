"""Imports point down and never in a circle: variants, tools -> (nothing of ours); lit -> variants,
tools; experiments and benchmarks -> lit, variants, tools (the CLI alone reaches benchmarks, to dispatch
`ablate bench`); inside experiments, the commands on top -> report -> sweep -> run. Function-level
imports count too."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("variants", "tools", "lit", "experiments", "benchmarks")
ALLOWED = {  # package -> the packages of ours it may import
    "variants": {"variants"},
    "tools": {"tools"},
    "lit": {"lit", "variants", "tools"},
    "benchmarks": {"benchmarks", "lit", "variants", "tools"},
    "experiments": {"experiments", "lit", "variants", "tools"},
}
EXCEPTIONS = {("experiments.cli", "benchmarks")}  # `ablate bench` is dispatched by the CLI
# inside experiments/, by the life of a run: a run knows nothing of sweeps, a sweep nothing of
# reports, and the commands on top (cli, demo, reproduce, use, components) may use them all
ROOMS = {  # room -> the rooms of experiments/ it may import
    "experiments.run": {"experiments.run"},
    "experiments.sweep": {"experiments.run", "experiments.sweep"},
    "experiments.report": {"experiments.run", "experiments.sweep", "experiments.report"},
}
TOP = {"experiments.cli", "experiments.demo", "experiments.reproduce", "experiments.use", "experiments.components",
       "experiments"}


def _room(module: str) -> str:
    return next((room for room in ROOMS if module == room or module.startswith(room + ".")), module)


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            found = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in found:
                if target.split(".")[0] in PACKAGES:
                    # the longest prefix that is one of our modules (``from lit.data import bible``)
                    while target not in modules and "." in target:
                        target = target.rsplit(".", 1)[0]
                    if target in modules and target != name:
                        targets.add(target)
        graph[name] = targets
    return graph


GRAPH = _graph()


def test_packages_import_only_downwards():
    bad = [f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
           if b.split(".")[0] not in ALLOWED[a.split(".")[0]] and (a, b.split(".")[0]) not in EXCEPTIONS]
    assert not bad, "upward imports: " + ", ".join(sorted(bad))


def test_every_experiments_module_is_in_a_room_or_on_top():
    stray = sorted(m for m in GRAPH if m.startswith("experiments") and _room(m) not in ROOMS and m not in TOP)
    assert not stray, f"put these in experiments/run, sweep or report, or in TOP (tests/test_imports.py): {stray}"


def test_experiments_rooms():
    bad = [f"{a} -> {b}" for a, targets in GRAPH.items() if _room(a) in ROOMS
           for b in targets if b.startswith("experiments") and _room(b) not in ROOMS[_room(a)]]
    assert not bad, "imports against the rooms of experiments/: " + ", ".join(sorted(bad))


def test_a_run_imports_nothing_of_sweeps():
    """Everything a training run loads, transitively, lies in experiments/run (or below it)."""
    seen, todo = set(), ["experiments.run.train"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += GRAPH.get(module, ())
    assert not [m for m in seen if m.startswith("experiments") and _room(m) != "experiments.run"]


def test_no_import_cycles():
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


def test_the_check_sees_function_level_imports():
    assert "experiments.run.train" in GRAPH["experiments.cli"]  # imported inside a function
    assert "lit.data.bible" in GRAPH["lit.data.sources"]  # ``from lit.data import bible``


@pytest.mark.parametrize("package, least", [("variants", 7), ("tools", 3)])
def test_the_bottom_packages_import_no_training_stack(package, least):
    """Every module under variants/ and tools/ (found on disk, so new ones count too) imports
    without Lightning, OmegaConf or W&B: they stay usable without the training stack."""
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import {package} as package
        names = [m.name for m in pkgutil.walk_packages(package.__path__, "{package}.")]
        for name in names:
            importlib.import_module(name)
        banned = {{"lightning", "pytorch_lightning", "lightning_fabric", "omegaconf", "wandb"}}
        found = sorted(m for m in sys.modules if m.split(".")[0] in banned)
        assert not found, found
        print(len(names))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= least  # the walk found the modules: an empty walk cannot pass
