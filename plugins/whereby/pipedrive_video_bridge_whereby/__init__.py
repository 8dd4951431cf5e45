"""Whereby rooms for pipedrive-video-bridge, made through Whereby's REST API.

Whereby rooms are transient: ``POST /meetings`` makes a room that works from the
moment it is made until an hour after its ``endDate``, when Whereby removes it.
Whereby ignores ``startDate`` (deprecated, "start time now defaults to time of
request"), so the bridge does not send it: a room made today for next week's
meeting can already be joined today.

- create: ``endDate`` is the meeting's end plus ``end_grace_minutes``, and never
  less than a few minutes from now (Whereby refuses an ``endDate`` in the past);
- update: Whereby cannot change a room. A room that already lasts past the moved
  meeting's end is kept (update returns None): Pipedrive keeps the link it got
  when the meeting was made, so keeping the room keeps that link working.
  Otherwise a new room is made and returned; the core stores it, then deletes
  the old one;
- delete: ``DELETE /meetings/{meetingId}``; a room already gone counts as deleted;
- list_rooms: ``GET /meetings?limit=100`` page after page until Whereby gives no
  ``cursor``; only rooms tagged with a bridge key (below) are reported;
- join_url (a click of the bridge's join link): a guest goes to ``roomUrl``; the
  organiser to the room's ``hostRoomUrl``, read with ``GET /meetings/{meetingId}
  ?fields=hostRoomUrl`` (Whereby returns it only when ``fields`` asks for it). With
  a join link, create asks for ``hostRoomUrl`` too, and the invitation carries the
  bridge's link and never the host's.

The tag: when the bridge gives a meeting a key (``MeetingRequest.key``, 16
lowercase hex characters), the room is made with ``roomNamePrefix`` =
``room_name_prefix`` + ``pvb`` + key, so Whereby names it
``/<room_name_prefix>pvb<key><uuid>``. That is the only thing of the bridge's
own Whereby keeps and gives back, and it lets the bridge find (and remove) a
room made just before a crash, or by a create that timed out at the bridge but
succeeded at Whereby. Whereby allows 39 characters of prefix; the tag takes 19,
so ``room_name_prefix`` is cut to its first 20 characters in tagged rooms.
Listing reads the key only right after that (cut) prefix: a room whose name
does not start with ``/<prefix>pvb`` and 16 hex characters is not the bridge's.
Bridges that share one Whereby account must each have their own
``room_name_prefix`` (differing in its first 20 characters), or each would list
the other's rooms. A meeting without a key gets ``room_name_prefix`` alone, as
before.

Retries (429, 503, connection errors, Retry-After) are the core's, under
``ctx.http``; this module turns Whereby's final answers into errors a person can act on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Self
from urllib.parse import quote, urlsplit

import httpx

from bridge.plugin import (
    HOST,
    Backend,
    BackendContext,
    BackendError,
    Joining,
    MeetingRequest,
    Room,
    VendorRoom,
    hookimpl,
    raise_for_vendor,
    render_invitation,
)

DEFAULT_API_BASE = "https://api.whereby.dev/v1"
ROOM_MODES = ("normal", "group")
MAX_GRACE_MINUTES = 7 * 24 * 60
LATEST = datetime.max.replace(second=0, microsecond=0, tzinfo=UTC)
MIN_ROOM_LIFETIME = timedelta(minutes=5)  # the shortest room made, e.g. for a meeting already over
_PREFIX = re.compile(r"[a-z0-9-]{0,39}")  # Whereby's documented roomNamePrefix: lowercase, 39 characters at most
MAX_PREFIX = 39
TAG = "pvb"  # then the bridge's key: the start of every tagged room's name after room_name_prefix
_KEY = re.compile(r"[0-9a-f]{16}")
KEYED_PREFIX = MAX_PREFIX - len(TAG) - 16  # what is left of room_name_prefix in a tagged room: 20 characters
PAGE_SIZE = 100  # Whereby's largest page of GET /meetings
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
KNOWN_SETTINGS = {
    "api_key",
    "api_base",
    "room_mode",
    "room_name_prefix",
    "end_grace_minutes",
    "host_link_in_invitation",
}


@dataclass(frozen=True)
class WherebySettings:
    api_key: str = field(repr=False)
    api_base: str = DEFAULT_API_BASE
    room_mode: str = "normal"
    room_name_prefix: str = ""
    end_grace_minutes: int = 30
    host_link_in_invitation: bool = False


def _settings(config: Mapping[str, Any]) -> WherebySettings:
    unknown = sorted(set(config) - KNOWN_SETTINGS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: unknown setting (known: {', '.join(sorted(KNOWN_SETTINGS))})")
    api_key = config.get("api_key")
    if not isinstance(api_key, str) or not api_key.strip():
        raise ValueError("api_key: required (Whereby dashboard > Configure > API; or PVB_BACKENDS_WHEREBY_API_KEY)")
    room_mode = config.get("room_mode", "normal")
    if room_mode not in ROOM_MODES:
        raise ValueError(f"room_mode: must be one of {', '.join(ROOM_MODES)}, got {room_mode!r}")
    prefix = config.get("room_name_prefix", "")
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError("room_name_prefix: use at most 39 characters a-z, 0-9 and -")
    grace = config.get("end_grace_minutes", 30)
    if isinstance(grace, bool) or not isinstance(grace, int) or not 0 <= grace <= MAX_GRACE_MINUTES:
        raise ValueError(f"end_grace_minutes: must be a whole number of minutes from 0 to {MAX_GRACE_MINUTES}")
    host_link = config.get("host_link_in_invitation", False)
    if not isinstance(host_link, bool):
        raise ValueError("host_link_in_invitation: must be true or false")
    return WherebySettings(
        api_key=api_key.strip(),
        api_base=_api_base(config.get("api_base", DEFAULT_API_BASE)),
        room_mode=room_mode,
        room_name_prefix=prefix,
        end_grace_minutes=grace,
        host_link_in_invitation=host_link,
    )


def _api_base(value: Any) -> str:
    """An https URL (plain http only on loopback, for a test server): the API key travels with every call."""
    url = urlsplit(value.strip()) if isinstance(value, str) else None
    if url is None or url.scheme not in ("https", "http") or not url.hostname or url.query or url.fragment:
        raise ValueError(f"api_base: must be a URL such as {DEFAULT_API_BASE}, got {value!r}")
    if url.scheme == "http" and url.hostname not in _LOOPBACK:
        raise ValueError("api_base: must use https (plain http is accepted on loopback only)")
    return str(value).strip().rstrip("/")


def _whereby_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error_detail(response: httpx.Response) -> str:
    """Whereby's own words about a refused call (its documented error body is ``{"error": "..."}``)."""
    try:
        body = response.json()
    except ValueError:
        detail: Any = response.text
    else:
        detail = (body.get("error") or body.get("message")) if isinstance(body, dict) else None
    return " ".join(str(detail or "").split())[:200]


class WherebyBackend(Backend):
    name = "whereby"
    title = "Whereby"
    lists_rooms = True

    def __init__(self, settings: WherebySettings) -> None:
        self.settings = settings
        # a tagged room's name: "/", the (cut) prefix, the tag and the key, at the very start (Whereby's uuid follows)
        self._tag = re.compile(rf"/{re.escape(settings.room_name_prefix[:KEYED_PREFIX])}{TAG}([0-9a-f]{{16}})")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        return cls(_settings(config))

    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        s = self.settings
        body: dict[str, Any] = {"endDate": _whereby_time(self.room_end(meeting)), "roomMode": s.room_mode}
        prefix = self.room_name_prefix(meeting.key)
        if prefix:
            body["roomNamePrefix"] = prefix
        if s.host_link_in_invitation or meeting.join_link:
            body["fields"] = ["hostRoomUrl"]  # with a join link, so that the organiser's click finds one
        response = await ctx.http.post(f"{s.api_base}/meetings", headers=self._auth, json=body)
        self._check(response, "create the room")
        return self._room(ctx, meeting, response)

    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room | None:
        if await self._lasts_until(ctx, vendor_meeting_id, self.room_end(meeting)):
            return None  # the same room and link; the core writes the invitation for the new time
        return await self.create(ctx, meeting)

    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        response = await ctx.http.delete(self._meeting_url(vendor_meeting_id), headers=self._auth)
        if response.status_code != 404:
            self._check(response, "delete the room")

    async def join_url(self, ctx: BackendContext, joining: Joining) -> str | None:
        """A guest: None, the room's ``roomUrl``. The organiser: the room's ``hostRoomUrl``, read now."""
        if joining.role != HOST:
            return None
        response = await ctx.http.get(
            self._meeting_url(joining.vendor_meeting_id), headers=self._auth, params={"fields": "hostRoomUrl"}
        )
        if response.status_code == 404:
            raise BackendError(
                "Whereby no longer has this meeting's room (Whereby removes a room an hour after its end, "
                "or it was deleted in Whereby); change the meeting's time or title in Pipedrive and the "
                "bridge makes a new room for the same link"
            )
        self._check(response, "read the room")
        host_url = json_object(response).get("hostRoomUrl")
        return host_url if _is_https_url(host_url) else None  # none given: the organiser still gets in, as a guest

    async def list_rooms(self, ctx: BackendContext) -> list[VendorRoom]:
        """Every room at Whereby whose name carries a bridge key after this bridge's prefix."""
        found: dict[str, VendorRoom] = {}
        cursor: str | None = None
        cursors: set[str] = set()
        while True:
            params: dict[str, str | int] = {"limit": PAGE_SIZE}
            if cursor:
                params["cursor"] = cursor
            response = await ctx.http.get(f"{self.settings.api_base}/meetings", headers=self._auth, params=params)
            self._check(response, "list the rooms")
            results, cursor = self._page(response)
            for data in results:
                room = self._tagged(data)
                if room is not None:
                    found.setdefault(room.vendor_meeting_id, room)
            if not cursor:
                return list(found.values())
            if cursor in cursors:
                raise BackendError("Whereby answered the same page cursor twice while the bridge listed its rooms")
            cursors.add(cursor)

    def room_name_prefix(self, key: str) -> str:
        """The ``roomNamePrefix`` of a room for a meeting with this key (see the module's docstring)."""
        if not key:
            return self.settings.room_name_prefix
        if not _KEY.fullmatch(key):
            raise BackendError("the bridge gave a meeting key that is not 16 lowercase hex characters")
        return f"{self.settings.room_name_prefix[:KEYED_PREFIX]}{TAG}{key}"

    def room_end(self, meeting: MeetingRequest) -> datetime:
        """The room's ``endDate``: the meeting's end plus the grace, and never (nearly) past.

        The grace stops at the last representable moment: the core accepts meetings
        ending as late as 9999-12-31 23:59, and adding to that would overflow.
        """
        grace = min(timedelta(minutes=self.settings.end_grace_minutes), LATEST - meeting.end_time)
        return max(meeting.end_time + grace, datetime.now(UTC) + MIN_ROOM_LIFETIME)

    # --- talking to Whereby ---------------------------------------------------------

    @property
    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key}"}

    def _meeting_url(self, vendor_meeting_id: str) -> str:
        return f"{self.settings.api_base}/meetings/{quote(vendor_meeting_id, safe='')}"

    async def _lasts_until(self, ctx: BackendContext, vendor_meeting_id: str, end: datetime) -> bool:
        """Whether the room still exists at Whereby and lasts until ``end``."""
        response = await ctx.http.get(self._meeting_url(vendor_meeting_id), headers=self._auth)
        if response.status_code == 404:
            return False
        self._check(response, "read the room")
        try:
            room_end = datetime.fromisoformat(response.json()["endDate"])
        except (ValueError, KeyError, TypeError):
            return False
        return (room_end if room_end.tzinfo else room_end.replace(tzinfo=UTC)) >= end

    def _check(self, response: httpx.Response, action: str) -> None:
        """Return on success; otherwise raise the error that says what went wrong and who can fix it."""
        if response.is_success:
            return
        if response.status_code == 401:
            raise BackendError(
                "Whereby refused the bridge's API key (HTTP 401): the bridge's administrator "
                "should check [backends.whereby] api_key (or PVB_BACKENDS_WHEREBY_API_KEY)"
            )
        raise_for_vendor(response, self.title)  # 429 and 5xx, after the core's retries
        detail = _error_detail(response)
        raise BackendError(
            f"Whereby refused to {action} (HTTP {response.status_code})" + (f": {detail}" if detail else "")
        )

    def _page(self, response: httpx.Response) -> tuple[list[Any], str | None]:
        try:
            body = response.json()
            results, cursor = body["results"], body.get("cursor")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise BackendError("Whereby's answer to listing the rooms had no results") from None
        if not isinstance(results, list) or not (cursor is None or isinstance(cursor, str)):
            raise BackendError("Whereby answered the list of rooms in a shape this bridge cannot read")
        return results, cursor

    def _tagged(self, data: Any) -> VendorRoom | None:
        """The room, if its name starts with this bridge's prefix and tag; None for every other room."""
        if not isinstance(data, dict) or not isinstance(data.get("meetingId"), str) or not data["meetingId"]:
            return None
        name = data.get("roomName")
        if not isinstance(name, str) or not name:
            url = data.get("roomUrl")
            name = urlsplit(url).path if isinstance(url, str) else ""
        match = self._tag.match(name if name.startswith("/") else f"/{name}")
        return VendorRoom(vendor_meeting_id=data["meetingId"], key=match[1]) if match else None

    def _room(self, ctx: BackendContext, meeting: MeetingRequest, response: httpx.Response) -> Room:
        try:
            data = response.json()
            meeting_id, room_url = data["meetingId"], data["roomUrl"]
        except (ValueError, KeyError, TypeError):
            raise BackendError("Whereby's answer to creating a room had no meetingId and roomUrl") from None
        if not isinstance(meeting_id, str) or not meeting_id or not _is_https_url(room_url):
            raise BackendError("Whereby answered with a room this bridge cannot use (no meetingId or https roomUrl)")
        # with a join link the organiser's own click opens the host room: the invitation needs no host link
        host_url = data.get("hostRoomUrl") if self.settings.host_link_in_invitation and not meeting.join_link else None
        host_lines = ["", f"Host link, for the organiser only (it gives host rights; do not forward it): {host_url}"]
        invitation = render_invitation(
            meeting,
            meeting.join_link or room_url,
            user=ctx.user,
            extra_lines=host_lines if _is_https_url(host_url) else (),
        )
        return Room(vendor_meeting_id=meeting_id, join_url=room_url, invitation=invitation)


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when it is not one."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _is_https_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("https://") and len(value) > 8 and not re.search(r"\s", value)


@hookimpl
def register_backends(register: Any) -> None:
    register(WherebyBackend)
