"""Zoom meetings for Pipedrive video calls: create, move and delete them through Zoom's REST API.

``ZoomBackend`` uses the company's Server-to-Server OAuth app and makes each
meeting for the Pipedrive user's own Zoom user, found by e-mail (or the
configured ``fallback_host``). ``ZoomUserBackend`` (``auth = "user"``) makes it
with the user's own connected Zoom account instead. Retries, ``Retry-After``
and network errors are the core's (``ctx.http``); only Zoom's daily limit on
meeting creates and updates is never retried, as it lasts until midnight UTC.

A meeting made for a bridge key carries it as the first line of its agenda
(``Ref: pvb-<key>``), which Zoom's List meetings API returns (its first 250
characters), so ``list_rooms`` finds the meetings a crash left behind.

Through the bridge's join link, a guest goes to the meeting's ``join_url`` and the
organiser to a ``start_url`` read at the click (``GET /meetings/{meetingId}``):
Zoom's start links expire two hours after they are made (90 days for custCreate
users), and Get a meeting is Zoom's way to a current one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Self, cast
from urllib.parse import quote

import anyio
import httpx

from bridge.plugin import (
    HOST,
    RETRY_EXTENSION,
    Backend,
    BackendContext,
    BackendError,
    BridgeError,
    Joining,
    MeetingRequest,
    Room,
    TokenRefused,
    VendorRoom,
    render_invitation,
)

from .errors import (
    is_missing_meeting,
    is_missing_scope,
    is_missing_user,
    json_object,
    raise_for_zoom,
    worth_retrying,
)
from .oauth import AccountTokens, TokenSource, UserTokens, ZoomOAuth, settings_url_of
from .settings import ZoomSettings, parse_settings

log = logging.getLogger(__name__)

TOPIC_MAX_LENGTH = 200
"""Zoom's limit on a meeting topic."""
SCHEDULED_MEETING = 2
INVITATION_SECONDS = 5.0
"""How long the invitation text may take; after that the bridge writes its own."""
KEY_TAG = "Ref: pvb-{key}"
"""The agenda line that carries the bridge's key; the host sees it as the meeting's description."""
KEY = re.compile(r"[0-9a-f]{16}")
TAGGED = re.compile(r"^Ref: pvb-([0-9a-f]{16})\r?$", re.MULTILINE)
"""The tag as a whole line of the agenda (Zoom keeps the host's edits around it)."""
LIST_PAGE_SIZE = 300
"""Zoom's largest page for List meetings."""


class ZoomBackend(Backend):
    name = "zoom"
    title = "Zoom"
    lists_rooms = True

    def __init__(self, settings: ZoomSettings) -> None:
        self.settings = settings
        self.oauth = ZoomOAuth(settings.oauth_base, settings.client_id, settings.client_secret)
        self.tokens: TokenSource = self._token_source()

    def _token_source(self) -> TokenSource:
        return AccountTokens(self.oauth, self.settings.account_id)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """The ``auth`` setting picks the class: ``ZoomUserBackend`` for ``"user"``."""
        settings = parse_settings(config)
        chosen = ZoomUserBackend if settings.auth == "user" else ZoomBackend
        return cast(Self, chosen(settings))

    # --- the three operations -------------------------------------------------------

    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        response, host = await self._create_for_host(ctx, meeting)
        raise_for_zoom(response, "create the meeting", host=host)
        body = json_object(response)
        meeting_id, join_url, password = body.get("id"), body.get("join_url"), body.get("password")
        if not isinstance(meeting_id, int | str) or not isinstance(join_url, str) or not join_url:
            raise BackendError("Zoom created the meeting but gave no meeting id or join link")
        vendor_id = str(meeting_id)  # Zoom's ids exceed 32 bits; kept as text
        password = password if isinstance(password, str) and password else None
        invitation = _invitation_text(
            meeting, ctx, vendor_id, join_url, password, await self._invitation(ctx, vendor_id)
        )
        log.info("zoom meeting created", extra={"vendor_meeting_id": vendor_id})
        return Room(vendor_meeting_id=vendor_id, join_url=join_url, invitation=invitation, password=password)

    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> None:
        """Zoom keeps the join link and passcode (it answers 204 without a body), so the core keeps them too."""
        response = await self._request(
            ctx, "PATCH", f"/meetings/{_meeting_path(vendor_meeting_id)}", json=self._schedule(meeting)
        )
        if is_missing_meeting(response):
            raise _meeting_gone()
        raise_for_zoom(response, "move the meeting")

    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        response = await self._request(ctx, "DELETE", f"/meetings/{_meeting_path(vendor_meeting_id)}")
        if is_missing_meeting(response):
            return  # already gone
        raise_for_zoom(response, "delete the meeting")

    async def join_url(self, ctx: BackendContext, joining: Joining) -> str | None:
        """A guest: None, the meeting's ``join_url``. The organiser: a ``start_url`` read now (they expire).

        Without the scope to read a meeting, or without a start link in Zoom's answer, the organiser
        is sent to the join link too: signed in to Zoom as the host, they start the meeting from there."""
        if joining.role != HOST:
            return None
        response = await self._request(ctx, "GET", f"/meetings/{_meeting_path(joining.vendor_meeting_id)}")
        if is_missing_meeting(response):
            raise _meeting_gone()
        if is_missing_scope(response):
            log.warning(
                "zoom app cannot read meetings; the organiser gets the join link, not a start link "
                "(add the scope meeting:read:meeting or meeting:read:meeting:admin)"
            )
            return None
        raise_for_zoom(response, "read the meeting's start link")
        start_url = json_object(response).get("start_url")
        return start_url if isinstance(start_url, str) and start_url.startswith("https://") else None

    async def list_rooms(self, ctx: BackendContext) -> list[VendorRoom]:
        """The bridge's meetings of every host ``create`` would use for ``ctx``, each listed once.

        A host Zoom does not know (404, code 1001) has none; a user without e-mail and no
        ``fallback_host`` has no host, so nothing to list."""
        rooms: dict[str, VendorRoom] = {}
        for host in self._candidate_hosts(ctx):
            for room in await self._list_for_host(ctx, host):
                rooms.setdefault(room.vendor_meeting_id, room)
        return list(rooms.values())

    # --- the meeting ----------------------------------------------------------------

    def _schedule(self, meeting: MeetingRequest) -> dict[str, Any]:
        """Topic, start (UTC) and length: what a create sends and a move changes."""
        return {
            "topic": meeting.topic[:TOPIC_MAX_LENGTH],
            "start_time": meeting.start_time.strftime("%Y-%m-%dT%H:%M:00Z"),
            "duration": meeting.duration,
        }

    def _new_meeting(self, meeting: MeetingRequest) -> dict[str, Any]:
        body = {**self._schedule(meeting), "type": SCHEDULED_MEETING}
        if meeting.key:
            body["agenda"] = _key_tag(meeting.key)
        if self.settings.switches:
            body["settings"] = dict(self.settings.switches)
        if self.settings.passcode is not None:
            body["password"] = self.settings.passcode
        if self.settings.default_password is not None:
            body["default_password"] = self.settings.default_password
        return body

    def _candidate_hosts(self, ctx: BackendContext) -> list[str]:
        """Whom meetings are made for, in order: the user's Zoom user by e-mail, then ``fallback_host``."""
        hosts = [ctx.user.email] if ctx.user.email else []
        if self.settings.fallback_host and self.settings.fallback_host not in hosts:
            hosts.append(self.settings.fallback_host)
        return hosts

    def _hosts(self, ctx: BackendContext) -> list[str]:
        """The candidate hosts, or a message for the user when there is none."""
        hosts = self._candidate_hosts(ctx)
        if not hosts:
            raise BackendError(
                "your Pipedrive user has no e-mail address to find your Zoom user by, and no "
                "fallback_host is configured; ask your admin to set [backends.zoom] fallback_host"
            )
        return hosts

    async def _create_for_host(self, ctx: BackendContext, meeting: MeetingRequest) -> tuple[httpx.Response, str]:
        hosts = self._hosts(ctx)
        for host in hosts:
            response = await self._request(
                ctx, "POST", f"/users/{quote(host, safe='@')}/meetings", json=self._new_meeting(meeting)
            )
            if not is_missing_user(response) or host == hosts[-1]:
                break
            log.info("no such zoom user; trying the fallback host", extra={"link_id": ctx.user.link_id})
        return response, host

    async def _list_for_host(self, ctx: BackendContext, host: str) -> list[VendorRoom]:
        """One host's tagged meetings, following ``next_page_token`` to the last page."""
        rooms: list[VendorRoom] = []
        params = {"type": "scheduled", "page_size": str(LIST_PAGE_SIZE)}
        seen: set[str] = set()
        while True:
            response = await self._request(ctx, "GET", f"/users/{quote(host, safe='@')}/meetings", params=params)
            if is_missing_user(response):
                return []
            raise_for_zoom(response, "list the meetings", host=host)
            body = json_object(response)
            meetings = body.get("meetings", [])
            if not isinstance(meetings, list):
                raise BackendError("Zoom answered the list of meetings without a list")
            rooms.extend(room for item in meetings if (room := _tagged_room(item)) is not None)
            token = body.get("next_page_token")
            if not isinstance(token, str) or not token:
                return rooms
            if token in seen:
                raise BackendError("Zoom's list of meetings did not end (it repeated a page)")
            seen.add(token)
            params = {**params, "next_page_token": token}

    async def _invitation(self, ctx: BackendContext, vendor_id: str) -> str | None:
        """Zoom's own invitation text, or None (the app lacks the scope, Zoom fails or is slow)."""
        with anyio.move_on_after(INVITATION_SECONDS):
            try:
                response = await self._request(ctx, "GET", f"/meetings/{_meeting_path(vendor_id)}/invitation")
            except (httpx.HTTPError, BridgeError) as exc:
                log.info("zoom invitation unavailable", extra={"error": type(exc).__name__})
                return None
            text = json_object(response).get("invitation") if response.status_code == 200 else None
            if isinstance(text, str) and text.strip():
                return text
            log.info("zoom invitation unavailable", extra={"status": response.status_code})
        return None

    # --- calling Zoom ---------------------------------------------------------------

    async def _request(
        self,
        ctx: BackendContext,
        method: str,
        path: str,
        json: dict[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One API call; a token Zoom calls invalid (401, code 124) is replaced once and the call repeated once."""
        try:
            return await ctx.http.request(
                method,
                self.settings.api_base + path,
                json=json,
                params=params,
                auth=self.tokens.auth(ctx),
                extensions={RETRY_EXTENSION: worth_retrying},
            )
        except TokenRefused:
            raise await self.tokens.refused(ctx) from None


class ZoomUserBackend(ZoomBackend):
    """``auth = "user"``: every user connects their own Zoom account on the settings page."""

    needs_user_account = True
    tokens: UserTokens

    def _token_source(self) -> UserTokens:
        return UserTokens(self.oauth)

    def _candidate_hosts(self, ctx: BackendContext) -> list[str]:
        return ["me"]  # the connected account itself

    async def connect_url(self, ctx: BackendContext, callback_url: str, state: str) -> str:
        return self.oauth.authorize_url(callback_url, state)

    async def connect_finish(self, ctx: BackendContext, params: Mapping[str, str], callback_url: str) -> None:
        code = params.get("code")
        if not code:
            raise BackendError("Zoom sent no authorization code; please connect Zoom again")
        await self.tokens.connect(ctx, code, callback_url, settings_url_of(callback_url, self.name))

    async def is_connected(self, ctx: BackendContext) -> bool:
        return await self.tokens.is_connected(ctx)


def _meeting_gone() -> BackendError:
    return BackendError(
        "this Zoom meeting no longer exists (it was deleted in Zoom); remove the video call "
        "from the activity and add a new one"
    )


def _invitation_text(
    meeting: MeetingRequest,
    ctx: BackendContext,
    vendor_id: str,
    join_url: str,
    password: str | None,
    zoom_text: str | None,
) -> str:
    """Zoom's own invitation, or the bridge's; with a join link, it in place of Zoom's URL.

    The meeting ID and passcode stay: with them, someone in the Zoom app joins without the link."""
    link = meeting.join_link
    if not link:
        return zoom_text or render_invitation(meeting, join_url, user=ctx.user, password=password)
    if zoom_text and join_url in zoom_text:
        return zoom_text.replace(join_url, link)
    return render_invitation(
        meeting, link, user=ctx.user, password=password, extra_lines=[f"Meeting ID: {_spaced(vendor_id)}"]
    )


def _spaced(meeting_id: str) -> str:
    """A meeting ID as Zoom writes it: 3, 4 and the rest (``853 3710 9154``)."""
    return " ".join(part for part in (meeting_id[:3], meeting_id[3:7], meeting_id[7:]) if part)


def _key_tag(key: str) -> str:
    if not KEY.fullmatch(key):
        raise BackendError(f"{key!r} is not a bridge meeting key (16 lowercase hex characters)")
    return KEY_TAG.format(key=key)


def _tagged_room(item: Any) -> VendorRoom | None:
    """The room of one List meetings entry, or None when it carries no bridge key (or no usable id)."""
    if not isinstance(item, dict):
        return None
    meeting_id, agenda = item.get("id"), item.get("agenda")
    if isinstance(meeting_id, bool) or not isinstance(meeting_id, int | str) or not str(meeting_id).isdigit():
        return None
    found = TAGGED.search(agenda) if isinstance(agenda, str) else None
    return VendorRoom(vendor_meeting_id=str(meeting_id), key=found.group(1)) if found else None


def _meeting_path(vendor_meeting_id: str) -> str:
    if not vendor_meeting_id.isdigit():
        raise BackendError(f"{vendor_meeting_id!r} is not a Zoom meeting id")
    return vendor_meeting_id
