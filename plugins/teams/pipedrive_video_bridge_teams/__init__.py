"""Microsoft Teams meetings for pipedrive-video-bridge.

Two ways to reach Microsoft Graph, chosen with ``[backends.teams] auth``:

- ``"company"`` (default): the company's Entra app (application permission
  ``OnlineMeetings.ReadWrite.All``, client secret or certificate) makes each
  meeting for the Pipedrive user's Entra user, found by e-mail, or for
  ``fallback_organizer``;
- ``"user"``: each user connects their own Microsoft work account on the
  bridge's settings page (delegated ``OnlineMeetings.ReadWrite``).
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.plugin import hookimpl

from .backend import TeamsBackend, TeamsUserBackend

__all__ = ["TeamsBackend", "TeamsUserBackend", "register_backends"]


@hookimpl
def register_backends(register: Callable[[type], None]) -> None:
    register(TeamsBackend)
