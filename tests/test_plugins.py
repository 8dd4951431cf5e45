"""Plugin discovery: real distributions installed with pip, broken ones, and load_plugins in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.runtime import build_backends
from bridge.testing import BridgeProcess, free_port, make_config, write_toml
from bridge.vendors.hookspecs import hookimpl
from bridge.vendors.interface import Backend, BackendContext, MeetingRequest, Room
from bridge.vendors.registry import load_plugins

TIMEOUT = 60

GOOD_PLUGIN = """
from bridge.vendors.interface import Backend, Room
from bridge.vendors.hookspecs import hookimpl


class AcmeBackend(Backend):
    name = "acme"
    title = "Acme Video"

    async def create(self, ctx, meeting):
        return Room(vendor_meeting_id="acme-1", join_url="https://acme.example.com/1",
                    invitation=f"{meeting.topic}: https://acme.example.com/1")

    async def update(self, ctx, vendor_meeting_id, meeting):
        return await self.create(ctx, meeting)

    async def delete(self, ctx, vendor_meeting_id):
        return None


@hookimpl
def register_backends(register):
    register(AcmeBackend)
"""

BROKEN_IMPORT_PLUGIN = """
raise ImportError("acme-vendor-sdk is not installed")
"""

TYPO_PLUGIN = """
from bridge.vendors.hookspecs import hookimpl


@hookimpl
def register_backend(register):  # misspelt: the hook is register_backends
    raise AssertionError("never called")
"""

NOT_A_BACKEND_PLUGIN = """
from bridge.vendors.hookspecs import hookimpl


class LooksLikeABackend:
    name = "lookalike"
    title = "Look-alike Video"


@hookimpl
def register_backends(register):
    register(LooksLikeABackend)
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVB_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def make_distribution(root: Path, dist: str, module: str, entry_point: str, source: str) -> Path:
    src = root / "src" / dist
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.2.3"

        [project.entry-points.pipedrive_video_bridge]
        {entry_point} = "{module}"

        [tool.setuptools]
        py-modules = ["{module}"]
    ''')
    )
    (src / f"{module}.py").write_text(source)
    return src


def pip_install(site: Path, *sources: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(site),
            *map(str, sources),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``good``: the acme plugin; ``bad``: three broken plugins. Each a --target directory."""
    root = tmp_path_factory.mktemp("plugins")
    good = make_distribution(root, "acme-video-plugin", "acme_video_plugin", "acme", GOOD_PLUGIN)
    bad = [
        make_distribution(root, "broken-import-plugin", "broken_import_plugin", "broken-import", BROKEN_IMPORT_PLUGIN),
        make_distribution(root, "typo-plugin", "typo_plugin", "typo", TYPO_PLUGIN),
        make_distribution(root, "lookalike-plugin", "lookalike_plugin", "lookalike", NOT_A_BACKEND_PLUGIN),
    ]
    pip_install(root / "site-good", good)
    pip_install(root / "site-bad", *bad)
    return {"good": root / "site-good", "bad": root / "site-bad"}


def plugins_json(tmp_path: Path, *sites: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    env = clean_env(PYTHONPATH=os.pathsep.join(map(str, sites)))
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "plugins", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    rows = json.loads(result.stdout)
    return result.returncode, {row["name"]: row for row in rows}


# --- installed distributions ------------------------------------------------------------


def test_an_installed_plugin_and_its_backend_are_listed(tmp_path: Path, sites: dict[str, Path]) -> None:
    code, rows = plugins_json(tmp_path, sites["good"])
    assert code == 0
    assert rows["acme"] == {"name": "acme", "version": "1.2.3", "backends": ["acme"], "error": None}
    assert rows["jitsi"]["backends"] == ["jitsi"] and rows["jitsi"]["error"] is None


def test_broken_plugins_are_reported_and_the_others_load(tmp_path: Path, sites: dict[str, Path]) -> None:
    code, rows = plugins_json(tmp_path, sites["good"], sites["bad"])
    assert code == 1
    assert rows["jitsi"]["backends"] == ["jitsi"] and rows["jitsi"]["error"] is None
    assert rows["acme"]["backends"] == ["acme"] and rows["acme"]["error"] is None

    broken = rows["broken-import"]
    assert broken["backends"] == [] and broken["version"] == "1.2.3"
    assert "failed to import" in broken["error"] and "acme-vendor-sdk is not installed" in broken["error"]

    typo = rows["typo"]
    assert typo["backends"] == []
    assert "unknown hook(s) register_backend" in typo["error"] and "misspelt" in typo["error"]

    lookalike = rows["lookalike"]
    assert lookalike["backends"] == []
    assert "LooksLikeABackend" in lookalike["error"] and "not a bridge.plugin.Backend subclass" in lookalike["error"]


def test_plugins_text_output_shows_the_errors(tmp_path: Path, sites: dict[str, Path]) -> None:
    env = clean_env(PYTHONPATH=os.pathsep.join(map(str, [sites["good"], sites["bad"]])))
    result = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "plugins"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 1
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "backends: jitsi" in lines["jitsi"]
    assert "backends: acme" in lines["acme"]
    for name in ("broken-import", "typo", "lookalike"):
        assert "ERROR: " in lines[name]


@pytest.fixture
def serve_with_broken_plugins(tmp_path: Path, sites: dict[str, Path]) -> Iterator[BridgeProcess]:
    port = free_port()
    config = write_toml(
        tmp_path / "bridge.toml",
        {
            "server": {"host": "127.0.0.1", "port": port, "public_url": f"http://127.0.0.1:{port}"},
            "database": {"url": f"sqlite:///{tmp_path / 'bridge.sqlite3'}"},
            "meetings": {"default_backend": "jitsi", "allowed_backends": ["jitsi", "acme"]},
        },
    )
    env = clean_env(PYTHONPATH=os.pathsep.join(map(str, [sites["good"], sites["bad"]])))
    with BridgeProcess.serve(
        config, tmp_path / "serve.log", port=port, port_arg=False, env=env, cwd=tmp_path, name="serve"
    ) as bridge:
        yield bridge


def test_the_service_starts_despite_broken_plugins(serve_with_broken_plugins: BridgeProcess) -> None:
    bridge = serve_with_broken_plugins
    bridge.wait_ready("/healthz", 20)
    assert httpx.get(f"{bridge.url}/readyz", timeout=5).status_code == 200
    bridge.process.terminate()
    bridge.process.wait(timeout=10)
    output = bridge.log()
    for name in ("broken-import", "typo", "lookalike"):
        assert name in output, f"the log does not name the broken plugin {name!r}:\n{output}"


# --- load_plugins in process ------------------------------------------------------------


def backend_class(backend_name: str, title: str | None = "Test Video", *, complete: bool = True) -> type:
    async def create(self: Any, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        raise NotImplementedError

    async def update(self: Any, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room:
        raise NotImplementedError

    async def delete(self: Any, ctx: BackendContext, vendor_meeting_id: str) -> None:
        return None

    namespace: dict[str, Any] = {"name": backend_name, "create": create}
    if title is not None:
        namespace["title"] = title
    if complete:
        namespace.update(update=update, delete=delete)
    return type(f"{backend_name.title().replace('-', '')}Backend", (Backend,), namespace)


def plugin(
    name: str, *classes: object, raises: Exception | None = None, hook: str = "register_backends"
) -> types.ModuleType:
    module = types.ModuleType(name)

    def register_backends(register: Any) -> None:
        for cls in classes:
            register(cls)
        if raises is not None:
            raise raises

    setattr(module, hook, hookimpl(register_backends))
    return module


def registry_of(*plugins: object) -> Any:
    return load_plugins(plugins, entry_points=False)


def info(registry: Any, name: str) -> Any:
    return next(p for p in registry.plugins if p.name == name)


def test_plugins_passed_in_register_their_backends() -> None:
    one, two = backend_class("one"), backend_class("two")
    registry = registry_of(plugin("first", one, two))
    assert registry.backends == {"one": one, "two": two}
    assert info(registry, "first").backends == ["one", "two"] and info(registry, "first").error is None
    assert registry.problems() == []
    assert registry.plugin_of("two").name == "first"
    assert registry.plugin_of("absent") is None


def test_entry_points_are_loaded_unless_turned_off() -> None:
    assert "jitsi" in load_plugins().backends
    assert load_plugins(entry_points=False).backends == {}


def test_duplicate_backend_names_are_rejected() -> None:
    first, second, extra = backend_class("dup"), backend_class("dup"), backend_class("extra")
    registry = registry_of(plugin("plugin-a", first), plugin("plugin-b", second, extra))
    assert registry.backends["dup"] is first
    assert registry.backends["extra"] is extra
    b = info(registry, "plugin-b")
    assert b.backends == ["extra"]
    assert "'dup' is already taken" in b.error
    assert info(registry, "plugin-a").error is None
    assert registry.problems() == [f"plugin 'plugin-b': {b.error}"]


def test_a_backend_missing_abstract_methods_is_rejected() -> None:
    registry = registry_of(plugin("half-done", backend_class("half", complete=False), backend_class("whole")))
    assert "half" not in registry.backends and "whole" in registry.backends
    error = info(registry, "half-done").error
    assert "'half' does not implement" in error and "delete" in error and "update" in error


@pytest.mark.parametrize(
    ("registered", "says"),
    [
        (backend_class("Bad Name"), "no valid name"),
        (backend_class("untitled", title=None), "has no title"),
        (dict, "not a bridge.plugin.Backend subclass"),
        ("jitsi", "not a bridge.plugin.Backend subclass"),
        (object(), "not a bridge.plugin.Backend subclass"),
    ],
)
def test_invalid_registrations_are_rejected(registered: object, says: str) -> None:
    registry = registry_of(plugin("odd", registered), plugin("fine", backend_class("fine")))
    assert says in info(registry, "odd").error
    assert info(registry, "odd").backends == []
    assert list(registry.backends) == ["fine"]


def test_a_hook_that_raises_is_reported_and_others_still_register() -> None:
    registry = registry_of(
        plugin("explodes", backend_class("early"), raises=RuntimeError("vendor SDK exploded")),
        plugin("steady", backend_class("steady")),
    )
    error = info(registry, "explodes").error
    assert "failed in register_backends" in error and "vendor SDK exploded" in error
    assert "steady" in registry.backends
    assert "early" not in registry.backends, "a plugin that failed must not half-register"


def test_a_misspelt_hook_is_reported() -> None:
    registry = registry_of(
        plugin("typo", backend_class("t"), hook="register_backend"), plugin("fine", backend_class("fine"))
    )
    assert "unknown hook(s) register_backend" in info(registry, "typo").error
    assert list(registry.backends) == ["fine"]
    assert registry.manager.get_plugin("typo") is None


def test_a_hook_with_wrong_arguments_is_reported() -> None:
    module = types.ModuleType("wrong-args")

    @hookimpl
    def register_backends(register: Any, extra: Any) -> None:  # not in the hookspec
        raise AssertionError("never called")

    module.register_backends = register_backends  # type: ignore[attr-defined]
    registry = registry_of(module, plugin("fine", backend_class("fine")))
    assert "cannot be registered" in info(registry, "wrong-args").error
    assert list(registry.backends) == ["fine"]


def test_a_broken_plugin_does_not_stop_the_backends_being_built(tmp_path: Path) -> None:
    registry = registry_of(plugin("explodes", raises=RuntimeError("boom")), plugin("fine", backend_class("fine")))
    config = make_config(tmp_path, meetings={"default_backend": "fine", "allowed_backends": ["fine", "gone"]})
    backends, problems = build_backends(registry, config)
    assert problems == []
    assert set(backends.available) == {"fine"}
    assert "no installed plugin provides it" in backends.missing["gone"]
    assert "boom" in backends.missing["gone"], "the reason should name the plugin that failed"
