"""The engine reads as its pipeline: stage folders, imports only from earlier stages, no cycles, torch-free entry points."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "engine" / "lungddpm"
# The stages in pipeline order; a module may import from its own stage and from earlier ones only.
STAGES = ("errors", "io", "runtime", "layout", "model", "sampling", "synthesis", "training", "generation", "evaluation",
          "demo", "cli_checks", "server", "cli", "__init__", "__main__")


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every lungddpm module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lungddpm."):
            found.add(node.module[len("lungddpm."):])
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the engine uses absolute lungddpm.<stage>.<module> imports")
        elif isinstance(node, ast.Import):
            found |= {a.name[len("lungddpm."):] for a in node.names if a.name.startswith("lungddpm.")}
    return found


def _stage(module: str) -> int:
    return STAGES.index(module.split(".")[0])


def test_every_module_sits_in_a_stage_and_imports_only_earlier_stages():
    modules = _modules()
    assert {m.split(".")[0] for m in modules} <= set(STAGES)
    late = [(m, i) for m, p in modules.items() for i in _imports(p) if _stage(i) > _stage(m)]
    assert late == []
    assert all(i in modules for p in modules.values() for i in _imports(p))


def test_no_import_cycles():
    graph = {m: _imports(p) for m, p in _modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, f"import cycle: {' -> '.join(path + [nxt])}"
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_stage_packages_import_nothing_and_the_entry_points_need_no_torch():
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        assert all(isinstance(n, ast.Expr) for n in tree.body), f"{init} should hold only its docstring"
    code = ("import sys, lungddpm, lungddpm.cli, lungddpm.io.volume, lungddpm.layout.lung_mask, lungddpm.layout.nodules, "
            "lungddpm.layout.attributes, lungddpm.layout.sidecar, lungddpm.layout.annotations, lungddpm.runtime.precision; "
            "lungddpm.cli.build_parser(); lungddpm.runtime.precision.auto_precision('cpu'); "
            "print('torch' in sys.modules)")  # the Slicer panel imports layout.attributes and runtime.precision
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parents[1])
    assert out.stdout.strip() == "False"
