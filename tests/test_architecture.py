"""The package's layering, read from its imports (scripts/import_graph.py prints the graph):
no import cycle, and no cell-side module that needs a sweep-side one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_import_cycle():
    graph = _import_graph()
    assert graph.cycles(graph.graph(ROOT / "src")) == []


def test_no_cell_side_module_imports_a_sweep_side_one():
    graph = _import_graph()
    assert graph.upward(graph.graph(ROOT / "src")) == []


def test_the_graph_sees_imports_inside_functions_and_cycles_through_them(tmp_path):
    graph = _import_graph()
    package = tmp_path / "sweep"
    package.mkdir()
    (package / "tracking.py").write_text("def f():\n    from sweep.aggregate import record_row\n")
    (package / "aggregate.py").write_text("from sweep import tracking\n")
    edges = graph.graph(tmp_path)
    assert edges == {"tracking": {"aggregate"}, "aggregate": {"tracking"}}
    assert graph.cycles(edges) == [["aggregate", "tracking"]]
    assert graph.upward(edges) == [("tracking", "aggregate")]
