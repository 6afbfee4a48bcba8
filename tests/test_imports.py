"""Imports point down and never in a circle: variants -> (nothing of ours); lit -> variants;
experiments and benchmarks -> lit, variants (the CLI alone reaches benchmarks, to dispatch
`ablate bench`); inside experiments, cli -> commands -> the modules they share. Function-level
imports count too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("variants", "lit", "experiments", "benchmarks")
ALLOWED = {  # package -> the packages of ours it may import
    "variants": {"variants"},
    "lit": {"lit", "variants"},
    "benchmarks": {"benchmarks", "lit", "variants"},
    "experiments": {"experiments", "lit", "variants"},
}
EXCEPTIONS = {("experiments.cli", "benchmarks")}  # `ablate bench` is dispatched by the CLI
# inside experiments/: a module may import only modules of its own rank or below
RANKS = {
    "experiments.cli": 4,
    "experiments.demo": 3, "experiments.reproduce": 3,
    "experiments.train": 2, "experiments.launchers": 2, "experiments.report": 2, "experiments.components": 2,
    "experiments.wandb_view": 2, "experiments.use": 2, "experiments.warm": 2,
    "experiments.sweep": 1, "experiments.status": 1, "experiments.sharing": 1, "experiments.wandb_log": 1,
    "experiments.config": 0, "experiments.wandb_records": 0, "experiments.rundir": 0, "experiments.stats": 0,
    "experiments": 0,
}


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


def test_every_experiments_module_has_a_rank():
    missing = sorted(m for m in GRAPH if m.startswith("experiments") and m not in RANKS)
    assert not missing, f"place these in RANKS (tests/test_imports.py): {missing}"


def test_experiments_layers():
    bad = [f"{a} -> {b}" for a, targets in GRAPH.items() if a in RANKS
           for b in targets if b in RANKS and RANKS[b] > RANKS[a]]
    assert not bad, "imports from a lower to a higher layer: " + ", ".join(sorted(bad))


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
    assert "experiments.train" in GRAPH["experiments.cli"]  # imported inside a function
    assert "lit.data.bible" in GRAPH["lit.data.sources"]  # ``from lit.data import bible``
