"""Google Meet meetings for pipedrive-video-bridge: a Google Calendar event with a Meet conference per call.

Two ways to reach Google, chosen with ``[backends.google_meet] auth``:

- ``"company"`` (default): a Google Workspace service account with domain-wide
  delegation makes each event on the calendar of the Workspace user with the
  Pipedrive user's e-mail;
- ``"user"``: each user connects their own Google account on the bridge's
  settings page (Google OAuth, offline access).
"""

from __future__ import annotations

from collections.abc import Callable

from bridge.plugin import hookimpl

from .backend import GoogleMeetBackend, GoogleMeetUserBackend

__all__ = ["GoogleMeetBackend", "GoogleMeetUserBackend", "register_backends"]


@hookimpl
def register_backends(register: Callable[[type], None]) -> None:
    register(GoogleMeetBackend)
