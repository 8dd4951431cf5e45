"""The house plan holds: imports flow one way, plugins use only the public plugin module, the test kit
imports in a production install."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import bridge.plugin

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "bridge"
PLUGINS = ROOT / "plugins"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> Iterator[str]:
    """Modules a file imports when it is imported (not under ``if TYPE_CHECKING``, not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ast.walk(node) if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else ():
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                break
            if isinstance(child, ast.Import):
                yield from (alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                yield child.module
                yield from (f"{child.module}.{alias.name}" for alias in child.names)


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in CORE.rglob("*.py")}
    return {
        name: {target for target in imported(path) if target in modules and target != name}
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def unit(module: str) -> str:
    """The folder (or top-level module) of the core a module belongs to: ``bridge.storage``, ``bridge.cli``."""
    return ".".join(module.split(".")[:2])


def test_the_core_has_no_import_cycle() -> None:
    assert cycles(core_graph()) == []


def test_imports_flow_one_way_between_the_cores_folders() -> None:
    graph: dict[str, set[str]] = {}
    for source, targets in core_graph().items():
        graph.setdefault(unit(source), set()).update(unit(t) for t in targets if unit(t) != unit(source))
    assert cycles(graph) == []
    # the bottom of the house: the plugin side and storage know nothing of the app above them
    for low in ("bridge.vendors", "bridge.storage", "bridge.errors", "bridge.config"):
        assert not graph.get(low, set()) & {
            "bridge.api",
            "bridge.web",
            "bridge.app",
            "bridge.runtime",
            "bridge.cli",
            "bridge.testing",
            "bridge.devtools",
        }, (low, graph[low])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def plugin_files() -> list[Path]:
    return sorted(path for path in PLUGINS.rglob("*.py") if "build" not in path.parts)


@pytest.mark.parametrize("path", plugin_files(), ids=lambda p: str(p.relative_to(PLUGINS)))
def test_plugins_import_only_the_public_plugin_module(path: Path) -> None:
    """``bridge.plugin`` is the contract; tests and fake vendors may use the test kit too."""
    allowed = {"bridge.plugin"}
    if "tests" in path.parts or path.name.startswith("fake_"):
        allowed.add("bridge.testing")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    used = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names} | {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    core = {name for name in used if name == "bridge" or name.startswith("bridge.")}
    assert core <= allowed, f"{path.name} imports {sorted(core - allowed)}"


def test_the_plugin_module_exports_exactly_its_contract() -> None:
    public = {name for name in vars(bridge.plugin) if not name.startswith("_") and name != "annotations"}
    assert set(bridge.plugin.__all__) == public
    for name in (
        "Backend",
        "BackendContext",
        "MeetingRequest",
        "Room",
        "BackendError",
        "hookimpl",
        "render_invitation",
        "raise_for_vendor",
        "TokenKeeper",
        "TokenAuth",
    ):
        assert name in bridge.plugin.__all__


def test_the_test_kit_imports_without_pytest() -> None:
    """A production install has no pytest: ``bridge.testing`` still imports; only the conformance kit needs it."""
    script = (
        "import sys; sys.modules['pytest'] = None\n"
        "import bridge.testing\n"
        "try:\n    bridge.testing.BackendConformance\n"
        "except ImportError:\n    print('conformance needs pytest')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "conformance needs pytest"
