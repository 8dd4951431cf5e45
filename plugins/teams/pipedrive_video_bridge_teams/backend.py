"""Microsoft Teams meetings for Pipedrive video calls, made with Microsoft Graph's online meetings API.

``TeamsBackend`` uses the company's Entra app (application permission
``OnlineMeetings.ReadWrite.All``, allowed for the users by an application access
policy) and makes each meeting for the Pipedrive user's Entra user, found by e-mail
(``GET /users/{upn}``, then cached), or for ``fallback_organizer``.
``TeamsUserBackend`` (``auth = "user"``) makes it with the user's own connected
Microsoft account (``/me``).

Meetings are made with ``createOrGet`` and ``externalId = pvb-<key>``: Graph answers the
meeting already made for that id instead of making a second one, so a retried call never
doubles a meeting, and the bridge's sweep after a crash finds the meeting by its key
(``find_rooms``). Such a meeting appears in no Outlook calendar: Pipedrive's activity is
the calendar entry. Teams has no separate host link: everyone joins by ``joinWebUrl``.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self, cast
from urllib.parse import quote

import httpx

from bridge.plugin import (
    IDEMPOTENT_EXTENSION,
    Backend,
    BackendContext,
    BackendError,
    MeetingRequest,
    Room,
    TokenRefused,
    VendorRoom,
    render_invitation,
)

from .auth import AppTokens, MicrosoftLogin, TokenSource, UserTokens, settings_url_of
from .errors import is_missing, is_missing_user, json_object, raise_for_graph
from .settings import TeamsSettings, parse_settings

log = logging.getLogger(__name__)

SUBJECT_MAX_LENGTH = 255
EXTERNAL_ID = "pvb-{key}"
KEY = re.compile(r"[0-9a-f]{16}")
ME = "me"
SEPARATOR = ":"
"""Between the organiser's object id (or ``me``) and Graph's meeting id in the bridge's vendor id
(Graph's ids are base64 and never hold one)."""
ORGANIZER_CACHE_SIZE = 10_000


class TeamsBackend(Backend):
    name = "teams"
    title = "Microsoft Teams"
    finds_rooms = True

    def __init__(self, settings: TeamsSettings) -> None:
        self.settings = settings
        self.login = MicrosoftLogin(settings)
        self.tokens: TokenSource = self._token_source()
        # UPN -> Entra object id; ids never change, so a process asks Graph once per user
        self._object_ids: OrderedDict[str, str] = OrderedDict()

    def _token_source(self) -> TokenSource:
        return AppTokens(self.login)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """The ``auth`` setting picks the class: ``TeamsUserBackend`` for ``"user"``."""
        settings = parse_settings(config)
        chosen = TeamsUserBackend if settings.auth == "user" else TeamsBackend
        return cast(Self, chosen(settings))

    # --- the three operations -------------------------------------------------------

    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        organizer, _upn = await self._organizer(ctx)
        room = _room(meeting, ctx, organizer, await self._create_or_get(ctx, organizer, meeting))
        log.info("teams meeting created", extra={"vendor_meeting_id": room.vendor_meeting_id})
        return room

    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room:
        """Graph keeps the meeting's link and answers the meeting as moved: its invitation is written anew."""
        organizer, meeting_id = _split(vendor_meeting_id)
        response = await self._request(
            ctx,
            "PATCH",
            f"{_owner_path(organizer)}/onlineMeetings/{quote(meeting_id, safe='')}",
            json=_schedule(meeting),
        )
        if is_missing(response):
            raise _meeting_gone()
        raise_for_graph(response, "move the meeting")
        return _room(meeting, ctx, organizer, _meeting_body(response))

    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        organizer, meeting_id = _split(vendor_meeting_id)
        response = await self._request(
            ctx, "DELETE", f"{_owner_path(organizer)}/onlineMeetings/{quote(meeting_id, safe='')}"
        )
        if is_missing(response):
            return  # already gone
        raise_for_graph(response, "delete the meeting")

    async def find_rooms(self, ctx: BackendContext, key: str) -> list[VendorRoom]:
        """The meeting made for ``key``, by ``createOrGet`` with its external id.

        Graph cannot list online meetings; asking ``createOrGet`` for the key answers the
        meeting made for it, or makes one now if there was none (the bridge's sweep then
        removes it with the rest)."""
        organizer, _upn = await self._organizer(ctx)
        placeholder = MeetingRequest(topic="Pipedrive meeting", start_time=_now(), duration=30, key=key)
        body = await self._create_or_get(ctx, organizer, placeholder)
        meeting_id = body.get("id")
        if not isinstance(meeting_id, str) or not meeting_id:
            raise BackendError("Microsoft Graph answered the meeting without an id")
        return [VendorRoom(_join(organizer, meeting_id), key)]

    # --- calling Graph -----------------------------------------------------------------

    async def _create_or_get(self, ctx: BackendContext, organizer: str, meeting: MeetingRequest) -> dict[str, Any]:
        response = await self._request(
            ctx,
            "POST",
            f"{_owner_path(organizer)}/onlineMeetings/createOrGet",
            json={"externalId": _external_id(meeting.key), **_schedule(meeting)},
            idempotent=True,  # Graph answers the meeting already made for an external id: safe to send again
        )
        raise_for_graph(response, "create the meeting", organizer=self._shown(organizer))
        return _meeting_body(response)

    async def _organizer(self, ctx: BackendContext) -> tuple[str, str]:
        """The Entra object id meetings are made for, and the UPN it was found by."""
        candidates = [ctx.user.email] if ctx.user.email else []
        if self.settings.fallback_organizer and self.settings.fallback_organizer.lower() not in (
            c.lower() for c in candidates
        ):
            candidates.append(self.settings.fallback_organizer)
        if not candidates:
            raise BackendError(
                "your Pipedrive user has no e-mail address to find your Microsoft 365 user by, and no "
                "fallback_organizer is configured; ask your admin to set [backends.teams] fallback_organizer"
            )
        for upn in candidates:
            object_id = await self._object_id(ctx, upn)
            if object_id is not None:
                return object_id, upn
            log.info("no such entra user; trying the fallback organizer", extra={"link_id": ctx.user.link_id})
        raise BackendError(
            f"{' or '.join(candidates)} is not a user of your company's Microsoft 365 tenant; ask your admin to "
            "add the user, or to set [backends.teams] fallback_organizer"
        )

    async def _object_id(self, ctx: BackendContext, upn: str) -> str | None:
        key = upn.lower()
        cached = self._object_ids.get(key)
        if cached is not None:
            self._object_ids.move_to_end(key)
            return cached
        response = await self._request(
            ctx, "GET", f"/users/{quote(upn, safe='@')}", params={"$select": "id,userPrincipalName"}
        )
        if is_missing_user(response):
            return None
        raise_for_graph(response, "find the user", organizer=upn)
        object_id = json_object(response).get("id")
        if not isinstance(object_id, str) or not object_id or SEPARATOR in object_id or "/" in object_id:
            raise BackendError(f"Microsoft Graph answered the user {upn} without a usable id")
        self._object_ids[key] = object_id
        while len(self._object_ids) > ORGANIZER_CACHE_SIZE:
            self._object_ids.popitem(last=False)
        return object_id

    def _shown(self, organizer: str) -> str:
        """The UPN behind an object id, for messages (the id itself means nothing to an admin)."""
        return next((upn for upn, oid in self._object_ids.items() if oid == organizer), "")

    async def _request(
        self,
        ctx: BackendContext,
        method: str,
        path: str,
        json: dict[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> httpx.Response:
        """One Graph call; a token Graph refuses (401) is replaced once and the call repeated once."""
        try:
            return await ctx.http.request(
                method,
                self.settings.graph_base + path,
                json=json,
                params=params,
                auth=self.tokens.auth(ctx),
                extensions={IDEMPOTENT_EXTENSION: idempotent},
            )
        except TokenRefused:
            raise await self.tokens.refused(ctx) from None


class TeamsUserBackend(TeamsBackend):
    """``auth = "user"``: every user connects their own Microsoft account on the settings page."""

    needs_user_account = True
    tokens: UserTokens

    def _token_source(self) -> UserTokens:
        return UserTokens(self.login)

    async def _organizer(self, ctx: BackendContext) -> tuple[str, str]:
        return ME, ""  # the connected account itself

    async def connect_url(self, ctx: BackendContext, callback_url: str, state: str) -> str:
        return self.login.authorize_url(callback_url, state)

    async def connect_finish(self, ctx: BackendContext, params: Mapping[str, str], callback_url: str) -> None:
        code = params.get("code")
        if not code:
            raise BackendError("Microsoft sent no authorization code; please connect Microsoft Teams again")
        await self.tokens.connect(ctx, code, callback_url, settings_url_of(callback_url, self.name))

    async def is_connected(self, ctx: BackendContext) -> bool:
        return await self.tokens.is_connected(ctx)


# --- the meeting ------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def _schedule(meeting: MeetingRequest) -> dict[str, Any]:
    return {
        "subject": meeting.topic[:SUBJECT_MAX_LENGTH],
        "startDateTime": meeting.start_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "endDateTime": meeting.end_time.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _external_id(key: str) -> str:
    """``pvb-<key>``; a meeting without a key gets an external id of its own, used once."""
    if not key:
        return "pvb-once-" + uuid.uuid4().hex
    if not KEY.fullmatch(key):
        raise BackendError(f"{key!r} is not a bridge meeting key (16 lowercase hex characters)")
    return EXTERNAL_ID.format(key=key)


def _owner_path(organizer: str) -> str:
    return "/me" if organizer == ME else f"/users/{quote(organizer, safe='')}"


def _join(organizer: str, meeting_id: str) -> str:
    return f"{organizer}{SEPARATOR}{meeting_id}"


def _split(vendor_meeting_id: str) -> tuple[str, str]:
    organizer, sep, meeting_id = vendor_meeting_id.partition(SEPARATOR)
    if not sep or not organizer or not meeting_id:
        raise BackendError(f"{vendor_meeting_id!r} is not a Teams meeting this bridge made")
    return organizer, meeting_id


def _meeting_body(response: httpx.Response) -> dict[str, Any]:
    body = json_object(response)
    if not body:
        raise BackendError(f"Microsoft Graph answered without the meeting (HTTP {response.status_code})")
    return body


def _room(meeting: MeetingRequest, ctx: BackendContext, organizer: str, body: Mapping[str, Any]) -> Room:
    meeting_id, join_url = body.get("id"), body.get("joinWebUrl")
    if not isinstance(meeting_id, str) or not meeting_id or not isinstance(join_url, str):
        raise BackendError("Microsoft Graph made the meeting but gave no meeting id or join link")
    if not join_url.startswith("https://"):
        raise BackendError("Microsoft Graph gave a join link that is not an https URL")
    shown = meeting.join_link or join_url
    invitation = render_invitation(meeting, shown, user=ctx.user, extra_lines=_dial_in(body))
    return Room(vendor_meeting_id=_join(organizer, meeting_id), join_url=join_url, invitation=invitation)


def _dial_in(body: Mapping[str, Any]) -> list[str]:
    """The meeting ID and passcode (to join from the Teams app) and the dial-in numbers, where Graph gave them."""
    lines: list[str] = []
    settings = body.get("joinMeetingIdSettings")
    if isinstance(settings, dict) and isinstance(settings.get("joinMeetingId"), str) and settings["joinMeetingId"]:
        lines.append(f"Meeting ID: {_spaced(settings['joinMeetingId'])}")
        if isinstance(settings.get("passcode"), str) and settings["passcode"]:
            lines.append(f"Passcode: {settings['passcode']}")
    audio = body.get("audioConferencing")
    if isinstance(audio, dict):
        numbers = [n for n in (audio.get("tollNumber"), audio.get("tollFreeNumber")) if isinstance(n, str) and n]
        conference = audio.get("conferenceId")
        if numbers:
            lines.append("")
            lines.append("Join by phone: " + ", ".join(numbers))
            if isinstance(conference, str) and conference:
                lines.append(f"Phone conference ID: {conference}#")
        dialin = audio.get("dialinUrl")
        if isinstance(dialin, str) and dialin.startswith("https://"):
            lines.append(f"Find a local number: {dialin}")
    return lines


def _spaced(meeting_id: str) -> str:
    """A Teams meeting ID in groups of three, as Teams shows it (``123 456 789 012``)."""
    return " ".join(meeting_id[i : i + 3] for i in range(0, len(meeting_id), 3)) if meeting_id.isdigit() else meeting_id


def _meeting_gone() -> BackendError:
    return BackendError(
        "this Teams meeting no longer exists (it was deleted in Teams); remove the video call "
        "from the activity and add a new one"
    )
