"""Join links: ``GET /j/<token>`` sends the person to the meeting's room as it is at that moment.

Pipedrive learns a meeting's ``join_url`` once, from postMeeting's answer, so the
link it holds is the bridge's own and is resolved at each click:

- to the room the meeting has now (a move that made a new room changes nothing for
  the link), through the backend's ``join_url`` (credentials minted now, a room
  made at the first click) or else the room's stored URL;
- with the host's way in for the organiser signed in on the bridge in this
  browser (the settings page's session), a guest's for everyone else;
- or to a page: the meeting was cancelled, it has ended, the link is unknown.

Nothing here redirects anywhere but the vendor's URL; every answer is ``no-store``
with no referrer (``bridge.app.Edge``); a client trying unknown tokens is held off
by ``MissLimiter``. HEAD answers what GET would.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from bridge.api.meetings import JOIN_PATH, join_link
from bridge.api.vendor_calls import backend_context, call_backend
from bridge.errors import VendorFailed
from bridge.runtime import Bridge, bridge_of
from bridge.storage.meetings import JoinTarget, Meeting, room_key
from bridge.storage.schema import LINK_ACTIVE, MEETING_ACTIVE, utcnow
from bridge.vendors.interface import GUEST, HOST, Joining, MeetingRequest
from bridge.web.pages import browser_page, page
from bridge.web.sessions import signed_in_as

log = logging.getLogger(__name__)

TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")  # what ``new_join_token`` makes; anything else is unknown without a lookup


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _count(bridge: Bridge, outcome: str, backend: str = "-", role: str = "-") -> None:
    bridge.metrics.labelled(bridge.metrics.join_clicks, backend, role, outcome).inc()


@browser_page
async def join(request: Request) -> Response:
    bridge = bridge_of(request)
    token: str = request.path_params["token"]
    client, now = _client(request), time.monotonic()
    wait = bridge.join_misses.wait(client, now)
    if wait:
        _count(bridge, "limited")
        response = page(
            request,
            "Too many unknown links",
            "This browser opened too many meeting links that do not exist.",
            hint=f"Wait {int(wait) + 1} seconds, then open the link from the invitation again.",
            status=429,
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    target = await bridge.store.join_target(token) if TOKEN.fullmatch(token) else None
    if target is None:
        bridge.join_misses.miss(client, now)
        _count(bridge, "unknown")
        return page(
            request,
            "This meeting link is not known",
            "No meeting has this link. It may have been mistyped or cut short.",
            hint="Open the link from the invitation again, or ask the organiser for a new one.",
            status=404,
        )
    refusal = _closed(request, bridge, target)
    if refusal is not None:
        return refusal
    return await _to_room(request, bridge, target, token)


def _closed(request: Request, bridge: Bridge, target: JoinTarget) -> Response | None:
    """The page for a meeting that can no longer be joined; None when it can."""
    meeting, backend = target.meeting, target.meeting.backend
    if meeting.state != MEETING_ACTIVE or target.room is None:
        _count(bridge, "cancelled", backend)
        return page(
            request,
            "This meeting was cancelled",
            "The organiser cancelled this video meeting, so it can no longer be joined.",
            hint="If you still need to meet, ask the organiser to send a new invitation.",
            status=410,
        )
    start = _start(meeting)
    end = start + timedelta(minutes=meeting.duration)
    if utcnow() > end + timedelta(hours=bridge.config.meetings.join_open_hours):
        _count(bridge, "ended", backend)
        return page(
            request,
            "This meeting has ended",
            f"This video meeting was held on {_when(start)} and can no longer be joined.",
            hint="If you need to meet again, ask the organiser to send a new invitation.",
            status=410,
        )
    if target.link is None or target.link.status != LINK_ACTIVE:
        _count(bridge, "cancelled", backend)
        return page(
            request,
            "This meeting is no longer available",
            "The organiser's video calling connection was removed, so this meeting can no longer be joined.",
            hint="Ask the organiser to send a new invitation.",
            status=410,
        )
    return None


async def _to_room(request: Request, bridge: Bridge, target: JoinTarget, token: str) -> Response:
    meeting, room, link = target.meeting, target.room, target.link
    assert room is not None and link is not None  # _closed answered otherwise
    role = HOST if signed_in_as(request, bridge, link) else GUEST
    try:
        backend = bridge.backends.get(meeting.backend)
        start = _start(meeting)
        joining = Joining(
            vendor_meeting_id=meeting.vendor_meeting_id,
            meeting=MeetingRequest(
                topic=room.topic,
                start_time=start,
                duration=meeting.duration,
                key=room_key(meeting.id),
                join_link=join_link(bridge.config, token),
            ),
            role=role,
            join_url=room.join_url,
            password=room.password,
            name=link.user_name if role == HOST else "",
        )
        ctx = backend_context(bridge, link, meeting.backend)
        found = await call_backend(bridge, backend, "open the meeting", lambda: backend.join_url(ctx, joining))
        url = found or room.join_url
        if not _leaves_for_vendor(url, joining.meeting.join_link):
            log.warning("backend gave no usable join URL", extra={"backend": meeting.backend})
            raise VendorFailed(f"{backend.title} gave no address to join the meeting at")
    except Exception:
        _count(bridge, "failed", meeting.backend, role)
        raise
    _count(bridge, "redirected", meeting.backend, role)
    log.info("join link opened", extra={"meeting_id": meeting.id, "backend": meeting.backend, "role": role})
    return RedirectResponse(url, status_code=303)


def _leaves_for_vendor(url: str, own_link: str) -> bool:
    """An absolute http(s) URL that is not this very link (a redirect to itself would loop)."""
    parts = urlsplit(url)
    return parts.scheme in ("https", "http") and bool(parts.netloc) and url != own_link and not re.search(r"\s", url)


def _start(meeting: Meeting) -> datetime:
    """The meeting's start in UTC (SQLite hands the stored time back without its zone)."""
    return meeting.start_time if meeting.start_time.tzinfo else meeting.start_time.replace(tzinfo=UTC)


def _when(start: datetime) -> str:
    return start.strftime("%A, %d %B %Y at %H:%M UTC")


routes = [Route(JOIN_PATH, join, methods=["GET"], name="join")]
