"""The package's import graph: which sweep module imports which (at module level or inside
a function), its cycles, and the arrows from a cell-side module to a sweep-side one.

    python scripts/import_graph.py [SRC]     # SRC: a src/ folder (default: this checkout's)

Cell side: what a cell's job runs. Sweep side: what plans, watches and aggregates a sweep.
A cell-side module must not need a sweep-side one (tests/test_architecture.py keeps it so).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SWEEP_SIDE = {
    "plan",
    "status",
    "aggregate",
    "aggregate_cli",
    "plotting",
    "dashboard",
    "reference",
    "cache_admin",
    "cache_cli",
    "cli",
    "prepare",
    "hydra_plugins",
}


def module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    if parts[0] == "hydra_plugins":
        return "hydra_plugins"
    return ".".join(parts[1:]) if parts[-1] != "__init__" else ".".join(parts[1:-1]) or "sweep"


def imports(path: Path) -> set[str]:
    """The sweep modules that `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "sweep":
            rest = node.module.split(".")[1:]
            if rest:
                found.add(rest[0])
            else:  # from sweep import record
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("sweep.") and "." in a.name)
    return found


def graph(src: Path) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in sorted(src.rglob("*.py")):
        if "/conf/" in str(path) or "egg-info" in str(path):
            continue
        name = module_name(path, src)
        if name in ("sweep", "conf"):
            continue
        edges.setdefault(name, set()).update(m for m in imports(path) if m not in (name, "conf"))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's strongly connected component (Tarjan), as sorted lists."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in edges.items() for b in targets if a not in SWEEP_SIDE and b in SWEEP_SIDE)


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "src"
    edges = graph(src)
    lines = {
        module_name(p, src): len(p.read_text().splitlines())
        for p in src.rglob("*.py")
        if "/conf/" not in str(p) and "egg-info" not in str(p)
    }
    for name in sorted(edges):
        side = "sweep" if name in SWEEP_SIDE else "cell "
        print(f"{side} {name:<14} {lines.get(name, 0):>4} lines -> {', '.join(sorted(edges[name])) or '-'}")
    print(f"modules: {len(edges)}, lines: {sum(lines.values())}")
    print("cycles:", "; ".join(" <-> ".join(c) for c in cycles(edges)) or "none")
    print("cell -> sweep arrows:", ", ".join(f"{a} -> {b}" for a, b in upward(edges)) or "none")


if __name__ == "__main__":
    main()
