"""The layout of the code: no import cycle in core or in the app's helpers (ui), core never imports
Streamlit, ui never imports a page and pages never import each other, and every module imports on
its own in a fresh interpreter."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The layers of core, lowest first: a layer imports only from the layers before it (and core.errors).
# The book's chapter code is the foundation and knows nothing of LossLens; the fast path is a
# plug-in that only serving installs.
LAYERS = ["book", "runtime", "models", "lessons", "serving"]
# The page files app.py navigates to, as ui/lesson_nav.py lists them.
_NAV = (ROOT / "ui" / "lesson_nav.py").read_text(encoding="utf-8")
PAGES = sorted(set(re.findall(r"components/(\w+)\.py", _NAV)))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _absolute_imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function, as dotted names
    (`from core.book import model` gives core.book.model; relative imports resolved)."""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    if path.name == "__init__.py":
        package = here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[: len(package) - node.level + 1]
                base = ".".join([*prefix, base]) if base else ".".join(prefix)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _graph(package: str) -> dict[str, set[str]]:
    """Each module of `package` (recursively) and the modules of `package` it imports."""
    mods = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        deps = {m for m in _absolute_imports(path) if m in mods and m != name}
        graph[name] = {d for d in deps if not d.endswith("__init__")}
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "top"


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
    assert "core.book.train" in graph and "core.serving.runner" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_one():
    assert _cycle({"registry": {"train"}, "train": {"rng", "registry"}, "rng": set()}) == [
        "registry",
        "train",
        "registry",
    ]


def test_the_book_code_imports_only_itself_torch_and_tiktoken():
    allowed = {"torch", "tiktoken", "__future__"} | set(sys.stdlib_module_names)
    for path in (ROOT / "core" / "book").rglob("*.py"):
        for mod in _absolute_imports(path):
            top = mod.split(".")[0]
            if top == "core":
                assert mod.startswith("core.book"), f"{path.name} imports {mod}"
            else:
                assert top in allowed, f"{path.name} imports {mod}"


def test_each_layer_imports_only_the_layers_below_it_and_only_serving_imports_fast():
    graph = _graph("core")
    for module, deps in graph.items():
        layer = _layer(module)
        for dep in deps:
            below = _layer(dep)
            if dep == "core.errors" and layer != "book":
                continue
            if below == "fast":
                assert layer in ("serving", "fast", "top"), f"{module} imports the plug-in {dep}"
            elif layer == "fast":
                assert below in ("fast", "book", "runtime", "top") and dep != "core.cli", f"{module} -> {dep}"
            elif layer in LAYERS:
                assert below in LAYERS[: LAYERS.index(layer) + 1], f"{module} ({layer}) imports {dep}"
    # the public API stays where it was
    from core import (
        GPTModel,
        LossLensError,
        build_untrained_model,
        compute_loss,
        get_tokenizer,
        load_gpt2_weights,
    )

    assert all(
        (GPTModel, LossLensError, build_untrained_model, compute_loss, get_tokenizer, load_gpt2_weights)
    )


def test_the_registry_imports_saved_runs_only_from_checkpoints():
    graph = _graph("core")
    assert "core.models.checkpoints" in graph["core.models.registry"]
    assert not graph["core.models.registry"] & {
        "core.models.training",
        "core.serving.runner",
        "core.serving.background",
        "core.models.presets",
    }
    assert "core.models.registry" not in graph["core.models.training"] | graph["core.models.checkpoints"]


def test_core_never_imports_streamlit_and_pages_never_import_pages():
    for path in (ROOT / "core").rglob("*.py"):
        assert not any(m.split(".")[0] == "streamlit" for m in _absolute_imports(path)), path.name
    graph = _graph("components")
    pages = {f"components.{p}" for p in PAGES}
    assert len(PAGES) >= 8 and "figure57" in PAGES and "training" in PAGES
    assert set(graph) == pages, f"not a page: {set(graph) - pages}"  # components/ holds pages only
    for page in pages:
        assert not graph[page] & pages, f"{page} imports {graph[page] & pages}"


def test_ui_has_no_import_cycle_and_never_imports_a_page():
    graph = _graph("ui")
    assert "ui.a11y" in graph and "ui.formats" in graph["ui.a11y"] and "ui.style" in graph["ui.a11y"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    for path in (ROOT / "ui").rglob("*.py"):
        pages = {m for m in _absolute_imports(path) if m.split(".")[0] == "components"}
        assert not pages, f"{path.name} imports {pages}"


# One process loads the libraries the app uses once, then imports each module of the app first
# in a forked child of its own: the app's code is fresh in every child, the libraries' load is paid once.
_FORK_EACH = textwrap.dedent(
    """
    import json, os, sys, traceback
    import pandas, plotly.graph_objects, streamlit, tiktoken, torch

    failed = {}
    for name in sys.argv[1:]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                __import__(name)
            except BaseException:
                os.write(w, traceback.format_exc()[-2000:].encode())
                os._exit(1)
            os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out = f.read().decode()
        if os.waitpid(pid, 0)[1] != 0:
            failed[name] = out or "exited abnormally"
    print(json.dumps(failed))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_module_imports_first_in_a_fresh_interpreter():
    """Importing a module first, alone, is where a cycle hidden by the usual order (core's, or
    app.py's for a page or helper) breaks."""
    names = sorted(
        _module_name(p).removesuffix(".__init__")
        for package in ("core", "ui", "components")
        for p in (ROOT / package).rglob("*.py")
        if p.name != "__main__.py"
    )
    assert {"core", "core.book.model", "ui", "components.figure57"} <= set(names)
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_EACH, *names], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    failed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failed, failed
