"""The rooms' imports run one way (docs/method.md, "Architecture"), read from the sources.

sweep -> trainer; analysis -> only trainer's result schema; benchmarks -> trainer; trainer
imports nothing from analysis or sweep, and no circle of imports runs among its modules.
Imports in an ``if __name__ == "__main__":`` block are a script's, not the module's.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOMS = ("trainer", "sweep", "analysis", "benchmarks")
# analysis reads what the trainer writes (the Parquet schema), and its command line uses the
# torch-free one-line-error argparse that every command shares.
ANALYSIS_MAY_IMPORT = {"trainer", "trainer.results", "trainer.cli"}
# The export command (not a library module) reads sweep folders through the sweep's own
# finder of its checkpoints, as ``python -m trainer.export SWEEP --trial/--front`` always has.
COMMAND_IMPORTS = {("trainer.export.cli", "sweep.checkpoints")}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_main_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == "__name__")


def imported(path: Path) -> set[str]:
    """The project modules ``path`` imports anywhere (functions included), but for its
    ``__main__`` block."""
    tree = ast.parse(path.read_text(), str(path))
    skip = {id(n) for node in ast.walk(tree) if is_main_block(node) for n in ast.walk(node)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.split(".")[0] in ROOMS}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for room in ROOMS for p in (REPO / room).rglob("*.py")}
    return {name: {m for m in imported(path) if m in modules} for name, path in modules.items()}


def room(module: str) -> str:
    return module.split(".")[0]


def test_trainer_imports_nothing_from_sweep_or_analysis():
    wrong = sorted((m, i) for m, imports in graph().items() if room(m) == "trainer"
                   for i in imports if room(i) in ("sweep", "analysis")
                   and (m, i) not in COMMAND_IMPORTS)
    assert not wrong, f"trainer reaches up into another room: {wrong}"


def test_analysis_reads_only_the_result_schema_of_the_trainer():
    wrong = sorted((m, i) for m, imports in graph().items() if room(m) == "analysis"
                   for i in imports if room(i) == "trainer" and i not in ANALYSIS_MAY_IMPORT)
    assert not wrong, f"analysis imports trainer modules beyond the schema: {wrong}"
    wrong = sorted((m, i) for m, imports in graph().items() if room(m) == "analysis"
                   for i in imports if room(i) in ("sweep", "benchmarks"))
    assert not wrong, f"analysis imports the sweep or the benchmarks: {wrong}"


def test_nothing_but_the_benchmarks_imports_the_benchmarks():
    wrong = sorted((m, i) for m, imports in graph().items() if room(m) != "benchmarks"
                   for i in imports if room(i) == "benchmarks")
    assert not wrong, f"{wrong}"


def test_no_circle_of_imports_among_the_trainer_modules():
    edges = {m: {i for i in imports if room(i) == "trainer" and i != m}
             for m, imports in graph().items() if room(m) == "trainer"}
    for m in edges:  # a package's own __init__ is imported by its modules: not an edge back
        edges[m] = {i for i in edges[m] if not m.startswith(i + ".")}
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            raise AssertionError("circle of imports: " + " -> ".join(path + [node]))
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, path + [node])
        done.add(node)

    for m in sorted(edges):
        visit(m, [])


def test_the_checks_see_a_circle_and_a_wrong_way_import(tmp_path):
    """The parser finds imports inside functions, and leaves the __main__ block out."""
    f = tmp_path / "m.py"
    f.write_text("import os\ndef g():\n    from analysis.pareto import front_of\n"
                 "if __name__ == '__main__':\n    from sweep.run import main\n")
    assert imported(f) == {"analysis.pareto", "analysis.pareto.front_of"}
