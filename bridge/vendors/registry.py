"""The plugin manager: the one place that touches pluggy.

``load_plugins`` builds a manager, registers the plugins a caller passes (tests
pass exactly the ones they want) and, unless told not to, every distribution
that declares an entry point in the ``pipedrive_video_bridge`` group. A plugin
that fails to import, implements an unknown hook or fails while registering is
recorded with the reason and left out; the others, and the service, carry on.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import pluggy

from bridge.config import BACKEND_NAME
from bridge.vendors import hookspecs
from bridge.vendors.interface import Backend

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = hookspecs.PROJECT


@dataclass
class PluginInfo:
    name: str
    version: str | None = None
    backends: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class PluginRegistry:
    manager: pluggy.PluginManager
    plugins: list[PluginInfo]
    backends: dict[str, type[Backend]]

    def problems(self) -> list[str]:
        return [f"plugin {p.name!r}: {p.error}" for p in self.plugins if p.error]

    def plugin_of(self, backend: str) -> PluginInfo | None:
        return next((p for p in self.plugins if backend in p.backends), None)


def load_plugins(plugins: Iterable[object] = (), *, entry_points: bool = True) -> PluginRegistry:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}

    def add(plugin: object, name: str, version: str | None) -> None:
        info = infos.setdefault(name, PluginInfo(name=name, version=version))
        try:
            pm.register(plugin, name=name)
        except (ValueError, pluggy.PluginValidationError) as exc:
            info.error = f"cannot be registered: {exc}"
            return
        unknown = [caller.name for caller in pm.get_hookcallers(plugin) or [] if caller.spec is None]
        if unknown:
            pm.unregister(plugin)
            info.error = f"implements unknown hook(s) {', '.join(unknown)} (misspelt?)"

    for plugin in plugins:
        add(plugin, getattr(plugin, "__name__", None) or type(plugin).__name__, None)

    if entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            version = ep.dist.version if ep.dist else None
            if ep.name in infos:
                continue
            try:
                loaded = ep.load()
            except Exception as exc:  # a broken plugin must not take the service down
                infos[ep.name] = PluginInfo(ep.name, version, error=f"failed to import: {exc!r}")
                continue
            add(loaded, ep.name, version)

    backends: dict[str, type[Backend]] = {}
    for impl in pm.hook.register_backends.get_hookimpls():
        info = infos[impl.plugin_name]
        found: list[type[Backend]] = []
        try:
            impl.function(register=found.append)
        except Exception as exc:
            info.error = f"failed in register_backends: {exc!r}"
            continue
        for cls in found:
            problem = _backend_problem(cls, backends)
            if problem:
                info.error = "; ".join(filter(None, [info.error, problem]))
                continue
            backends[cls.name] = cls
            info.backends.append(cls.name)

    for info in infos.values():
        if info.error:
            log.error("plugin not loaded", extra={"plugin": info.name, "reason": info.error})
    return PluginRegistry(manager=pm, plugins=list(infos.values()), backends=backends)


def _backend_problem(cls: object, known: dict[str, type[Backend]]) -> str | None:
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        return f"registered {cls!r}, which is not a bridge.plugin.Backend subclass"
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not BACKEND_NAME.match(name):
        return f"backend {cls.__name__} has no valid name (a-z, 0-9, -, _)"
    if not isinstance(getattr(cls, "title", None), str):
        return f"backend {name!r} has no title"
    if getattr(cls, "__abstractmethods__", None):
        return f"backend {name!r} does not implement {', '.join(sorted(cls.__abstractmethods__))}"
    if cls.needs_user_account and (
        cls.connect_url is Backend.connect_url or cls.connect_finish is Backend.connect_finish
    ):
        return f"backend {name!r} needs a user account but does not implement connect_url and connect_finish"
    if name in known:
        return f"backend name {name!r} is already taken by {known[name].__module__}"
    return None
