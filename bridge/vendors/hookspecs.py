"""Every hook a plugin can implement. Read this file to know what a plugin can do."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "pipedrive_video_bridge"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_backends(register: Callable[[type], None]) -> None:
    """Call ``register(BackendClass)`` once for each ``bridge.plugin.Backend`` subclass the plugin provides."""
