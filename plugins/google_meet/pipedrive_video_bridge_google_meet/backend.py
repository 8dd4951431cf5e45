"""Google Meet for Pipedrive video calls: a Google Calendar event with a Meet conference, made, moved and removed.

``GoogleMeetBackend`` (``auth = "company"``) acts for the Workspace user with the
Pipedrive user's e-mail through a service account with domain-wide delegation;
``GoogleMeetUserBackend`` (``auth = "user"``) acts with the user's own connected
Google account. Every call goes through ``ctx.http`` (the core's retries: 429 and
503 with ``Retry-After``); Google's daily and usage limits are never retried.

Notifications stay off (``sendUpdates=none``): Pipedrive sends its own invitation.

A meeting made for a bridge key gets the event id ``pvb<key>`` (Calendar takes
client-chosen ids of base32hex characters) and the key as a private extended
property. A create sent again finds the same event (409 for that id, then a read)
instead of making a second; ``find_rooms`` reads that id; ``list_rooms`` lists
the events carrying the property.

The vendor meeting id is ``<calendar owner>/<event id>`` in company mode, so a
move or delete acts for the user the event was made for, whatever their e-mail is
now; in user mode it is the event id alone (the connected account owns it).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Self, cast
from urllib.parse import quote

import anyio
import httpx

from bridge.plugin import (
    IDEMPOTENT_EXTENSION,
    RETRY_EXTENSION,
    THROTTLED_EXTENSION,
    Backend,
    BackendContext,
    BackendError,
    BackendUnavailable,
    Joining,
    MeetingRequest,
    Room,
    TokenRefused,
    VendorRoom,
    render_invitation,
)

from .errors import is_duplicate, is_gone, is_rate_limited, json_object, raise_for_google, worth_retrying
from .oauth import ServiceAccountTokens, TokenEndpoint, TokenSource, UserTokens, settings_url_of
from .settings import GoogleMeetSettings, parse_settings

log = logging.getLogger(__name__)

KEY = re.compile(r"[0-9a-f]{16}")
EVENT_ID = re.compile(r"[a-v0-9]{5,1024}")
"""Calendar's rule for event ids: base32hex characters, 5 to 1024 of them."""
EVENT_PREFIX = "pvb"
MARKER = "pipedriveVideoBridge"
"""The private extended property every keyed event carries (``"1"``): what ``list_rooms`` asks for."""
KEY_PROPERTY = "pipedriveVideoBridgeKey"
CREATE = {"conferenceDataVersion": "1", "sendUpdates": "none"}
READ = {"conferenceDataVersion": "1"}
CONFERENCE_POLLS = 4
CONFERENCE_POLL_SECONDS = 0.5
"""A conference still ``pending`` is read again this often, this many times (two seconds in all)."""
LIST_PAGE_SIZE = "2500"
"""The largest page events.list gives."""


class GoogleMeetBackend(Backend):
    name = "google_meet"
    title = "Google Meet"
    lists_rooms = True
    finds_rooms = True

    def __init__(self, settings: GoogleMeetSettings) -> None:
        self.settings = settings
        self.endpoint = TokenEndpoint(settings.token_uri)
        self.tokens: TokenSource = self._token_source()

    def _token_source(self) -> TokenSource:
        assert self.settings.service_account is not None
        return ServiceAccountTokens(self.endpoint, self.settings.service_account)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """The ``auth`` setting picks the class: ``GoogleMeetUserBackend`` for ``"user"``."""
        settings = parse_settings(config)
        chosen = GoogleMeetUserBackend if settings.auth == "user" else GoogleMeetBackend
        return cast(Self, chosen(settings))

    # --- the operations -------------------------------------------------------------

    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        owner = self._new_owner(ctx)
        event_id = _event_id(meeting.key)
        response = await self._request(
            ctx,
            owner,
            "POST",
            self._events_path(),
            params=CREATE,
            json=self._new_event(meeting, event_id),
            idempotent=True,  # the event id is the meeting's: a repeated insert answers 409, then the event is read
        )
        if is_duplicate(response) and meeting.key:
            log.info("google event made earlier for this key; reading it", extra={"link_id": ctx.user.link_id})
            response = await self._request(ctx, owner, "GET", self._events_path(event_id), params=READ)
            if is_gone(response):
                raise BackendError("Google Calendar has this meeting's event id but no event; please try again")
        raise_for_google(response, "create the meeting's calendar event", who=self._who(owner))
        event = json_object(response)
        if event.get("status") == "cancelled":
            raise BackendError(
                "this meeting's Google Calendar event was deleted; remove the video call from the "
                "activity and add a new one"
            )
        event = await self._with_conference(ctx, owner, event)
        join_url = _join_url(event)
        vendor_id = self._vendor_id(owner, _checked_id(event.get("id")))
        log.info("google meet event created", extra={"vendor_meeting_id": vendor_id})
        return Room(
            vendor_meeting_id=vendor_id, join_url=join_url, invitation=_invitation_text(meeting, ctx, join_url, event)
        )

    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room:
        """The event keeps its Meet link; its invitation is written anew from the moved event (dial-ins kept)."""
        owner, event_id = self._owner_and_event(ctx, vendor_meeting_id)
        response = await self._request(
            ctx, owner, "PATCH", self._events_path(event_id), params=CREATE, json=self._schedule(meeting)
        )
        if is_gone(response) or (response.is_success and json_object(response).get("status") == "cancelled"):
            raise _meeting_gone()
        raise_for_google(response, "move the meeting's calendar event", who=self._who(owner))
        event = json_object(response)
        join_url = _join_url(event)
        return Room(
            vendor_meeting_id=vendor_meeting_id,
            join_url=join_url,
            invitation=_invitation_text(meeting, ctx, join_url, event),
        )

    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        owner, event_id = self._owner_and_event(ctx, vendor_meeting_id)
        response = await self._request(
            ctx, owner, "DELETE", self._events_path(event_id), params={"sendUpdates": "none"}
        )
        if is_gone(response):
            return  # already gone (410: deleted earlier)
        raise_for_google(response, "delete the meeting's calendar event", who=self._who(owner))

    async def join_url(self, ctx: BackendContext, joining: Joining) -> str | None:
        """None: Meet has one link for the organiser and guests alike (the organiser is host when signed in)."""
        return None

    async def list_rooms(self, ctx: BackendContext) -> list[VendorRoom]:
        """The bridge's live events on the calendar ``create`` uses for ``ctx``, every page of them.

        A user without an e-mail has no Workspace calendar to look in, so nothing to list."""
        owner = self._list_owner(ctx)
        if owner is None:
            return []
        rooms: list[VendorRoom] = []
        params = {"privateExtendedProperty": f"{MARKER}=1", "maxResults": LIST_PAGE_SIZE, "showDeleted": "false"}
        seen: set[str] = set()
        while True:
            response = await self._request(ctx, owner, "GET", self._events_path(), params=params)
            raise_for_google(response, "list the meetings' calendar events", who=self._who(owner))
            body = json_object(response)
            items = body.get("items", [])
            if not isinstance(items, list):
                raise BackendError("Google Calendar answered the list of events without a list")
            for item in items:
                found = _tagged(item)
                if found is not None:
                    rooms.append(VendorRoom(self._vendor_id(owner, found[0]), found[1]))
            token = body.get("nextPageToken")
            if not isinstance(token, str) or not token:
                return rooms
            if token in seen:
                raise BackendError("Google Calendar's list of events did not end (it repeated a page)")
            seen.add(token)
            params = {**params, "pageToken": token}

    async def find_rooms(self, ctx: BackendContext, key: str) -> list[VendorRoom]:
        """The event made for ``key``, read by its id (one call, no listing); [] when it is none or deleted."""
        owner = self._list_owner(ctx)
        if owner is None or not KEY.fullmatch(key):
            return []
        response = await self._request(ctx, owner, "GET", self._events_path(_event_id(key)), params=READ)
        if is_gone(response):
            return []
        raise_for_google(response, "read the meeting's calendar event", who=self._who(owner))
        found = _tagged(json_object(response))
        return [VendorRoom(self._vendor_id(owner, found[0]), found[1])] if found and found[1] == key else []

    # --- the event ------------------------------------------------------------------

    def _schedule(self, meeting: MeetingRequest) -> dict[str, Any]:
        """Topic, start and end (UTC): what a create sends and a move changes."""
        return {
            "summary": meeting.topic,
            "start": {"dateTime": _utc(meeting.start_time), "timeZone": "UTC"},
            "end": {"dateTime": _utc(meeting.end_time), "timeZone": "UTC"},
        }

    def _new_event(self, meeting: MeetingRequest, event_id: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            **self._schedule(meeting),
            "id": event_id,
            # the same requestId for the same event: Google makes one conference for it
            "conferenceData": {
                "createRequest": {"requestId": event_id, "conferenceSolutionKey": {"type": "hangoutsMeet"}}
            },
        }
        if meeting.key:
            body["extendedProperties"] = {"private": {MARKER: "1", KEY_PROPERTY: meeting.key}}
        return body

    async def _with_conference(self, ctx: BackendContext, owner: str, event: dict[str, Any]) -> dict[str, Any]:
        """The event once Google has made its Meet conference: a ``pending`` one is read again a few times."""
        for poll in range(CONFERENCE_POLLS + 1):
            status = _conference_status(event)
            if status == "failure":
                raise BackendError(
                    "Google Calendar could not add a Google Meet conference to the event; check that Google "
                    "Meet is turned on for the user in the Google Admin console (Apps > Google Workspace > "
                    "Google Meet) and try again"
                )
            if status != "pending":
                return event
            if poll == CONFERENCE_POLLS:
                break
            await anyio.sleep(CONFERENCE_POLL_SECONDS)
            response = await self._request(
                ctx, owner, "GET", self._events_path(_checked_id(event.get("id"))), params=READ
            )
            raise_for_google(response, "read the meeting's calendar event", who=self._who(owner))
            event = json_object(response)
        raise BackendUnavailable(
            "Google Meet is still setting up the meeting's video link; please try again in a moment"
        )

    # --- whose calendar -------------------------------------------------------------

    def _new_owner(self, ctx: BackendContext) -> str:
        """The Workspace user the event is made for: the Pipedrive user's e-mail."""
        if not ctx.user.email:
            raise BackendError(
                "your Pipedrive user has no e-mail address, which Google Meet needs to find your Google "
                "Workspace account; add it to your Pipedrive profile"
            )
        return ctx.user.email

    def _list_owner(self, ctx: BackendContext) -> str | None:
        return ctx.user.email or None

    def _vendor_id(self, owner: str, event_id: str) -> str:
        return f"{owner}/{event_id}"

    def _owner_and_event(self, ctx: BackendContext, vendor_meeting_id: str) -> tuple[str, str]:
        owner, _, event_id = vendor_meeting_id.rpartition("/")
        return owner or self._new_owner(ctx), _checked_id(event_id)

    def _who(self, owner: str) -> str:
        return owner

    # --- calling Google -------------------------------------------------------------

    def _events_path(self, event_id: str = "") -> str:
        path = f"/calendars/{quote(self.settings.calendar_id, safe='@')}/events"
        return f"{path}/{event_id}" if event_id else path

    async def _request(
        self,
        ctx: BackendContext,
        owner: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: dict[str, Any] | None = None,
        idempotent: bool = False,
    ) -> httpx.Response:
        """One API call acting for ``owner``; a token Google answers 401 to is replaced once and the call repeated."""
        try:
            return await ctx.http.request(
                method,
                self.settings.api_base + path,
                params=params,
                json=json,
                auth=self.tokens.auth(ctx, owner),
                extensions={
                    RETRY_EXTENSION: worth_retrying,
                    THROTTLED_EXTENSION: is_rate_limited,
                    IDEMPOTENT_EXTENSION: idempotent,
                },
            )
        except TokenRefused:
            raise await self.tokens.refused(ctx) from None


class GoogleMeetUserBackend(GoogleMeetBackend):
    """``auth = "user"``: every user connects their own Google account on the settings page."""

    needs_user_account = True
    tokens: UserTokens

    def _token_source(self) -> UserTokens:
        s = self.settings
        return UserTokens(self.endpoint, s.auth_base, s.client_id, s.client_secret)

    def _new_owner(self, ctx: BackendContext) -> str:
        return "me"  # the connected account itself

    def _list_owner(self, ctx: BackendContext) -> str | None:
        return "me"

    def _vendor_id(self, owner: str, event_id: str) -> str:
        return event_id

    def _owner_and_event(self, ctx: BackendContext, vendor_meeting_id: str) -> tuple[str, str]:
        return "me", _checked_id(vendor_meeting_id)

    def _who(self, owner: str) -> str:
        return ""

    async def connect_url(self, ctx: BackendContext, callback_url: str, state: str) -> str:
        return self.tokens.authorize_url(callback_url, state)

    async def connect_finish(self, ctx: BackendContext, params: Mapping[str, str], callback_url: str) -> None:
        code = params.get("code")
        if not code:
            raise BackendError("Google sent no authorization code; please connect Google Meet again")
        await self.tokens.connect(ctx, code, callback_url, settings_url_of(callback_url, self.name))

    async def is_connected(self, ctx: BackendContext) -> bool:
        return await self.tokens.is_connected(ctx)


def _meeting_gone() -> BackendError:
    return BackendError(
        "this meeting no longer exists in Google Calendar (its event was deleted); remove the video call "
        "from the activity and add a new one"
    )


def _event_id(key: str) -> str:
    """``pvb<key>`` for a keyed meeting, a random UUID's hex otherwise (both base32hex)."""
    if not key:
        return uuid.uuid4().hex
    if not KEY.fullmatch(key):
        raise BackendError(f"{key!r} is not a bridge meeting key (16 lowercase hex characters)")
    return EVENT_PREFIX + key


def _checked_id(event_id: Any) -> str:
    if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
        raise BackendError(f"{event_id!r} is not a Google Calendar event id")
    return event_id


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _conference_status(event: Mapping[str, Any]) -> str:
    """``pending``, ``success``, ``failure`` or "" (no create request in the answer)."""
    conference = event.get("conferenceData")
    request = conference.get("createRequest") if isinstance(conference, dict) else None
    status = request.get("status") if isinstance(request, dict) else None
    code = status.get("statusCode") if isinstance(status, dict) else None
    return code if isinstance(code, str) else ""


def _entry_points(event: Mapping[str, Any]) -> list[dict[str, Any]]:
    conference = event.get("conferenceData")
    points = conference.get("entryPoints") if isinstance(conference, dict) else None
    return [point for point in points if isinstance(point, dict)] if isinstance(points, list) else []


def _join_url(event: Mapping[str, Any]) -> str:
    """The Meet link: ``hangoutLink``, or the ``video`` entry point's uri."""
    candidates = [event.get("hangoutLink")]
    candidates += [p.get("uri") for p in _entry_points(event) if p.get("entryPointType") == "video"]
    for url in candidates:
        if isinstance(url, str) and url.startswith("https://") and not re.search(r"\s", url):
            return url
    raise BackendError(
        "Google Calendar made the event without a Google Meet link; check that Google Meet is turned on "
        "for the user in the Google Admin console"
    )


def _phone_lines(event: Mapping[str, Any]) -> list[str]:
    """Dial-in numbers with their PIN, and the page with more numbers."""
    lines: list[str] = []
    for point in _entry_points(event):
        kind, uri = point.get("entryPointType"), point.get("uri")
        if kind == "phone" and isinstance(uri, str):
            label = point.get("label")
            number = label if isinstance(label, str) and label else uri.removeprefix("tel:")
            pin = point.get("pin")
            lines.append(f"Join by phone: {number}" + (f" (PIN: {pin})" if isinstance(pin, str) and pin else ""))
        elif kind == "more" and isinstance(uri, str) and uri.startswith("https://"):
            lines.append(f"More phone numbers: {uri}")
    return lines


def _invitation_text(meeting: MeetingRequest, ctx: BackendContext, join_url: str, event: Mapping[str, Any]) -> str:
    """The bridge's invitation with the Meet link (or the bridge's join link when there is one) and the dial-ins."""
    return render_invitation(meeting, meeting.join_link or join_url, user=ctx.user, extra_lines=_phone_lines(event))


def _tagged(item: Any) -> tuple[str, str] | None:
    """(event id, key) of a live event carrying a bridge key, or None."""
    if not isinstance(item, dict) or item.get("status") == "cancelled":
        return None
    event_id = item.get("id")
    properties = item.get("extendedProperties")
    private = properties.get("private") if isinstance(properties, dict) else None
    key = private.get(KEY_PROPERTY) if isinstance(private, dict) else None
    if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
        return None
    return (event_id, key) if isinstance(key, str) and KEY.fullmatch(key) else None
