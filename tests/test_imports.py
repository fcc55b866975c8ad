"""The layout of the code: no import cycle in core, core never imports Streamlit, pages never
import each other, and every core module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = sorted(p.stem for p in (ROOT / "core").glob("*.py"))
# The page files app.py navigates to, as components/lesson_nav.py lists them.
_NAV = (ROOT / "components" / "lesson_nav.py").read_text(encoding="utf-8")
PAGES = sorted(set(re.findall(r"components/(\w+)\.py", _NAV)))


def _imports(path: Path, package: str) -> set[str]:
    """Every module of `package` that `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(a.name for a in node.names)
            elif node.module and node.module.startswith(package + "."):
                found.add(node.module.split(".")[1])
            elif node.module == package:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith(package + "."))
    return found


def _graph(package: str) -> dict[str, set[str]]:
    folder = ROOT / package
    names = {p.stem for p in folder.glob("*.py")}
    return {p.stem: _imports(p, package) & names for p in folder.glob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_core_has_no_import_cycle():
    graph = _graph("core")
    assert "train" in graph and "runner" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert _cycle({"registry": {"train"}, "train": {"rng", "registry"}, "rng": set()}) == [
        "registry",
        "train",
        "registry",
    ]


def test_the_registry_imports_saved_runs_only_from_checkpoints():
    graph = _graph("core")
    assert "checkpoints" in graph["registry"]
    assert not graph["registry"] & {"train", "runner", "background", "presets"}
    assert "registry" not in graph["train"] | graph["checkpoints"] | graph["runner"]


def test_core_never_imports_streamlit_and_pages_never_import_pages():
    for path in (ROOT / "core").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        mods |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.split(".")[0] == "streamlit" for m in mods), path.name
    graph = _graph("components")
    assert len(PAGES) >= 8 and "common" not in PAGES and "store" not in PAGES
    for page in PAGES:
        assert not graph[page] & set(PAGES), f"{page} imports {graph[page] & set(PAGES)}"


@pytest.mark.slow
def test_every_core_module_imports_first_in_a_fresh_interpreter():
    """Importing a module first, alone, is where a cycle hidden by the usual order breaks."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", f"import core.{name}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in CORE
    }
    failed = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            failed[name] = out[-2000:]
    assert not failed, failed
