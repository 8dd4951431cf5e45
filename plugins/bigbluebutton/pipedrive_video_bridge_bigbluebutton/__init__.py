"""BigBlueButton meetings for pipedrive-video-bridge: made on the server at the first click of the join link.

A BigBlueButton meeting lives only while it is in use (the server ends one nobody
joined within minutes), so nothing is made when Pipedrive asks for a meeting: the
backend picks the meeting's id, and Pipedrive gets the bridge's join link. At each
click the backend calls ``create`` (idempotent for one ``meetingID``: a running
meeting answers ``duplicateWarning``) and sends the person to a signed ``join``
URL, as moderator for the organiser and as viewer for everyone else; a deleted
meeting is ``end``ed.

Every call is ``<url>/<call>?<query>&checksum=<hex>``, the checksum being the hash
of ``call + query + secret`` (sha256 by default; sha1 for servers before 2.6,
sha384/sha512 where the server allows them). Answers are XML:
``<response><returncode>SUCCESS|FAILED</returncode><messageKey/><message/>...``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import urlencode, urlsplit

import httpx

from bridge.plugin import (
    HOST,
    Backend,
    BackendContext,
    BackendError,
    BackendUnavailable,
    Joining,
    MeetingRequest,
    Room,
    hookimpl,
    raise_for_vendor,
    render_invitation,
)

CHECKSUMS = ("sha1", "sha256", "sha384", "sha512")
KNOWN_SETTINGS = ("url", "secret", "checksum", "record", "welcome", "guest_name")
MAX_NAME = 256  # BigBlueButton's limit on a meeting's name
MODERATOR, VIEWER = "MODERATOR", "VIEWER"


@dataclass(frozen=True)
class BigBlueButtonSettings:
    url: str  # the API's base, ending in /api
    secret: str
    checksum: str = "sha256"
    record: bool = False
    welcome: str = ""
    guest_name: str = "Guest"


def _settings(config: Mapping[str, Any]) -> BigBlueButtonSettings:
    unknown = sorted(set(config) - set(KNOWN_SETTINGS))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: unknown setting (known: {', '.join(KNOWN_SETTINGS)})")
    url = config.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ValueError("url: required, the server's API URL, e.g. https://bbb.example.com/bigbluebutton/api")
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError("url: must be an http(s) URL such as https://bbb.example.com/bigbluebutton/api")
    if not parts.path.endswith("/api"):
        raise ValueError(
            "url: must be the API URL, ending in /api (`bbb-conf --secret` prints it, "
            "e.g. https://bbb.example.com/bigbluebutton/api)"
        )
    secret = config.get("secret")
    if not isinstance(secret, str) or len(secret.strip()) < 12:
        raise ValueError("secret: required, the server's shared secret (`bbb-conf --secret` prints it)")
    checksum = config.get("checksum", "sha256")
    if checksum not in CHECKSUMS:
        raise ValueError(f"checksum: must be one of {', '.join(CHECKSUMS)}, got {checksum!r}")
    record = config.get("record", False)
    if not isinstance(record, bool):
        raise ValueError("record: must be true or false")
    welcome = config.get("welcome", "")
    guest_name = config.get("guest_name", "Guest")
    if not isinstance(welcome, str):
        raise ValueError("welcome: must be text")
    if not isinstance(guest_name, str) or not guest_name.strip():
        raise ValueError("guest_name: must be a non-empty name")
    return BigBlueButtonSettings(
        url=url,
        secret=secret.strip(),
        checksum=checksum,
        record=record,
        welcome=welcome,
        guest_name=guest_name.strip(),
    )


def checksum(call: str, query: str, secret: str, algorithm: str) -> str:
    """BigBlueButton's checksum of one call: the hex digest of ``call + query + secret``."""
    return hashlib.new(algorithm, (call + query + secret).encode()).hexdigest()


def new_meeting_id(key: str) -> str:
    """``pvb-<key>-<random>``: unguessable, no commas, and carrying the bridge's key when there is one."""
    random_part = secrets.token_hex(12)
    return f"pvb-{key}-{random_part}" if key else f"pvb-{random_part}"


class BigBlueButtonBackend(Backend):
    name = "bigbluebutton"
    title = "BigBlueButton"
    creates_on_join = True
    creates_offline = True  # create asks the server nothing

    def __init__(self, settings: BigBlueButtonSettings) -> None:
        self.settings = settings

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        return cls(_settings(config))

    # --- what Pipedrive asks for: no server call, the meeting is made at the first click --------

    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        return self._room(ctx, new_meeting_id(meeting.key), meeting)

    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room:
        """The same meeting id (the server keeps nothing until someone joins); a new invitation for the new time."""
        return self._room(ctx, vendor_meeting_id, meeting)

    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        """End the meeting if it is running; one that is not (``notFound``) counts as ended."""
        params = {"meetingID": vendor_meeting_id, "password": self._password(vendor_meeting_id, MODERATOR)}
        answer = await self._call(ctx, "end", params)
        if answer.ok or answer.key == "notFound":
            return
        raise answer.error(self.title, "end the meeting")

    def _room(self, ctx: BackendContext, meeting_id: str, meeting: MeetingRequest) -> Room:
        if not meeting.join_link:
            raise BackendError(
                'BigBlueButton needs the bridge\'s join links: set [meetings] join_links = "bridge" '
                "(or leave it unset) for this backend"
            )
        invitation = render_invitation(meeting, meeting.join_link, user=ctx.user)
        return Room(vendor_meeting_id=meeting_id, join_url=meeting.join_link, invitation=invitation)

    # --- a click on the join link ------------------------------------------------------------

    async def join_url(self, ctx: BackendContext, joining: Joining) -> str:
        """Make the meeting if it is not running, then the signed ``join`` URL for this person's role."""
        meeting_id = joining.vendor_meeting_id
        params = {
            "meetingID": meeting_id,
            "name": (joining.meeting.topic or "Meeting")[:MAX_NAME],
            "moderatorPW": self._password(meeting_id, MODERATOR),
            "attendeePW": self._password(meeting_id, VIEWER),
            "record": "true" if self.settings.record else "false",
        }
        if self.settings.welcome:
            params["welcome"] = self.settings.welcome
        answer = await self._call(ctx, "create", params)
        if not answer.ok:
            raise answer.error(self.title, "start the meeting")
        role = MODERATOR if joining.role == HOST else VIEWER
        join = {
            "meetingID": meeting_id,
            "fullName": joining.name or self.settings.guest_name,
            "role": role,  # BigBlueButton 2.6 and later
            "password": self._password(meeting_id, role),  # earlier servers tell the role by the password
            "redirect": "true",
        }
        if joining.role == HOST:
            join["userID"] = f"pipedrive-{ctx.user.company_id}-{ctx.user.user_id}"
        return self._signed("join", join)

    # --- the API -----------------------------------------------------------------------------

    def _password(self, meeting_id: str, role: str) -> str:
        """The meeting's moderator or attendee password, derived from the secret so nothing is stored."""
        digest = hmac.new(self.settings.secret.encode(), f"{role}:{meeting_id}".encode(), hashlib.sha256)
        return digest.hexdigest()[:20]

    def _signed(self, call: str, params: Mapping[str, str]) -> str:
        query = urlencode(params)
        digest = checksum(call, query, self.settings.secret, self.settings.checksum)
        return f"{self.settings.url}/{call}?{query}&checksum={digest}"

    async def _call(self, ctx: BackendContext, call: str, params: Mapping[str, str]) -> Answer:
        response = await ctx.http.get(self._signed(call, params))
        raise_for_vendor(response, self.title)
        return Answer.parse(response, self.title)


@dataclass(frozen=True)
class Answer:
    """One XML answer of the API: its return code, message key and message."""

    ok: bool
    key: str
    message: str

    @classmethod
    def parse(cls, response: httpx.Response, title: str) -> Answer:
        try:
            root = ET.fromstring(response.content)
        except ET.ParseError:
            raise BackendUnavailable(
                f"{title} answered HTTP {response.status_code} with something other than its API's XML: "
                "check [backends.bigbluebutton] url (it ends in /bigbluebutton/api)"
            ) from None
        return cls(
            ok=(root.findtext("returncode") or "").strip() == "SUCCESS",
            key=(root.findtext("messageKey") or "").strip(),
            message=" ".join((root.findtext("message") or "").split())[:200],
        )

    def error(self, title: str, action: str) -> BackendError:
        if self.key == "checksumError":
            return BackendError(
                f"{title} refused the bridge's checksum: [backends.bigbluebutton] secret (or checksum) does not "
                "match the server's (`bbb-conf --secret` prints the secret; servers before 2.6 need "
                'checksum = "sha1")'
            )
        detail = f"{self.key}: {self.message}" if self.message else self.key or "no reason given"
        return BackendError(f"{title} could not {action} ({detail})")


@hookimpl
def register_backends(register: Any) -> None:
    register(BigBlueButtonBackend)
