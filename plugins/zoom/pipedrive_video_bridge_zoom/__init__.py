"""Zoom meetings for pipedrive-video-bridge.

Two ways to reach Zoom, chosen with ``[backends.zoom] auth``:

- ``"account"`` (default): the company's Server-to-Server OAuth app makes each
  meeting for the Pipedrive user's Zoom user (matched by e-mail), or for
  ``fallback_host``;
- ``"user"``: each user connects their own Zoom account on the bridge's
  settings page (Zoom user OAuth).
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.plugin import hookimpl

from .backend import ZoomBackend, ZoomUserBackend

__all__ = ["ZoomBackend", "ZoomUserBackend", "register_backends"]


@hookimpl
def register_backends(register: Callable[[type], None]) -> None:
    register(ZoomBackend)
