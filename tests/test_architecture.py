"""The layers of docs/architecture.md hold: import-linter checks the contracts in .importlinter, and importing the
stream server loads no web framework."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), str(config), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_the_layers_hold():
    result = lint(ROOT / ".importlinter")
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout


def test_a_broken_layer_is_reported(tmp_path):
    """The check reads the real import graph: a contract the code breaks (the predictor writes to the ledger)
    fails, naming the import."""
    config = tmp_path / "broken.ini"
    config.write_text("[importlinter]\nroot_package = omni_mev\n\n[importlinter:contract:broken]\n"
                      "name = the predictor without the ledger\ntype = forbidden\n"
                      "source_modules =\n    omni_mev.predictor\nforbidden_modules =\n    omni_mev.ledger\n")
    result = lint(config)
    assert result.returncode == 1 and "omni_mev.predictor -> omni_mev.ledger" in result.stdout, result.stdout[-3000:]


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another in a circle (Tarjan), each with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in edges[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return groups


def test_no_import_runs_in_a_circle():
    """Counting every import: at module level, inside functions, and those only for type checking."""
    import grimp

    graph = grimp.build_graph("omni_mev", include_external_packages=False)
    edges = {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}
    assert strongly_connected(edges) == []


def test_the_circle_finder_finds_a_circle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


WEB_STACK = ("flask", "werkzeug", "gunicorn", "prometheus_flask_exporter", "omni_mev.api", "omni_mev.workers")


def loaded_by(module: str) -> list[str]:
    """The web stack's modules that importing `module` loads, in a fresh interpreter."""
    probe = (f"import sys, {module}; "
             f"print(' '.join(m for m in sys.modules if m.split('.')[0] in {WEB_STACK!r} or m in {WEB_STACK!r}))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


def test_the_stream_server_loads_no_web_framework():
    """The stream server and the core load neither Flask, werkzeug nor gunicorn, nor the HTTP API."""
    assert loaded_by("omni_mev.stream.server") == []
    assert loaded_by("omni_mev.core.v2") == []


def test_the_probe_sees_the_web_stack():
    """The same probe on the HTTP side finds it: the check above can fail."""
    assert {"flask", "omni_mev.api"} <= set(loaded_by("omni_mev.api.routes"))
