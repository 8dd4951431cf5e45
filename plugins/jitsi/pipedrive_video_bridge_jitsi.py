"""Jitsi Meet rooms for pipedrive-video-bridge.

Jitsi needs no API call to make a room: a room exists as soon as someone joins
its URL. The backend's job is to pick an unguessable name (``[a-z0-9]`` only,
which restrictive nginx rules on self-hosted Jitsi accept) and, where the server
requires it, a JWT that lets the link in:

- ``public``: ``https://<domain>/<room>`` (meet.jit.si by default);
- ``token``: self-hosted Jitsi with ``jitsi-meet-tokens``, HS256 with app_id/app_secret;
- ``jaas``: 8x8's Jitsi as a Service, RS256 with kid ``<app_id>/<api_key_id>``.

When the bridge hands out its own join link (``MeetingRequest.join_link``), the room's
URL carries no token: :meth:`JitsiBackend.join_url` mints one at every click, valid for
``join_token_minutes``, with the organiser's identity and moderator rights for the host
and neither for a guest. Without a join link, the room's URL carries one token for
everybody, valid until the meeting's end plus ``token_grace_minutes``, as before.

Moderator rights come from the token's ``context.user``: JaaS reads ``moderator``
(``"true"``/``"false"``). jitsi-meet-tokens itself assigns no roles (Jicofo does: by
default the first to join is moderator); the token mode writes ``affiliation``
(``"owner"``/``"member"``) and ``moderator`` alike, which jitsi-contrib's
``token_affiliation`` Prosody module turns into the room's affiliation once Jicofo's
``enable-auto-owner`` is off.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bridge.plugin import (
    HOST,
    Backend,
    BackendContext,
    BackendError,
    Joining,
    MeetingRequest,
    Room,
    UserIdentity,
    hookimpl,
    render_invitation,
)

MODES = ("public", "token", "jaas")
JAAS_DOMAIN = "8x8.vc"
JAAS_APP_PREFIX = "vpaas-magic-cookie-"
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:\d{1,5})?$")
_PREFIX = re.compile(r"^[a-z0-9]{0,24}$")
_ROOM = re.compile(r"^[a-z0-9]{1,64}$")
JOIN_TOKEN_MINUTES = 10
"""How long a token minted at a click lets its holder in: long enough to load the page, pass
the pre-join screen and reload it once or twice; short enough that a URL copied from the
address bar stops working soon after. Anyone who needs in again clicks the bridge's link."""
NBF_LEEWAY_SECONDS = 10  # "not before" a little in the past, for the Jitsi server's clock


def new_room_name(prefix: str = "") -> str:
    """``prefix`` + 26 characters of base32 (a-z, 2-7): 128 random bits."""
    random_part = base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()
    return prefix + random_part


@dataclass(frozen=True)
class JitsiSettings:
    mode: str = "public"
    domain: str = "meet.jit.si"
    room_prefix: str = ""
    app_id: str = ""
    app_secret: str = ""
    audience: str = "jitsi"
    subject: str = ""
    api_key_id: str = ""
    private_key: RSAPrivateKey | None = None
    token_grace_minutes: int = 24 * 60
    moderator: bool = True
    join_token_minutes: int = JOIN_TOKEN_MINUTES


def _settings(config: Mapping[str, Any]) -> JitsiSettings:
    known = {
        "mode",
        "domain",
        "room_prefix",
        "app_id",
        "app_secret",
        "audience",
        "subject",
        "api_key_id",
        "private_key",
        "private_key_file",
        "token_grace_minutes",
        "moderator",
        "join_token_minutes",
    }
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: unknown setting (known: {', '.join(sorted(known))})")
    mode = config.get("mode", "public")
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    domain = str(config.get("domain", JAAS_DOMAIN if mode == "jaas" else "meet.jit.si")).lower()
    if not _DOMAIN.fullmatch(domain):
        raise ValueError(f"domain: must be a host name such as meet.example.com, got {domain!r}")
    prefix = config.get("room_prefix", "")
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ValueError("room_prefix: use at most 24 characters a-z and 0-9")
    grace = config.get("token_grace_minutes", 24 * 60)
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
        raise ValueError("token_grace_minutes: must be a whole number of minutes >= 0")
    moderator = config.get("moderator", True)
    if not isinstance(moderator, bool):
        raise ValueError("moderator: must be true or false")
    join_minutes = config.get("join_token_minutes", JOIN_TOKEN_MINUTES)
    if isinstance(join_minutes, bool) or not isinstance(join_minutes, int) or join_minutes < 1:
        raise ValueError("join_token_minutes: must be a whole number of minutes >= 1")
    base = dict(
        mode=mode,
        domain=domain,
        room_prefix=prefix,
        token_grace_minutes=grace,
        moderator=moderator,
        join_token_minutes=join_minutes,
    )

    def required(key: str) -> str:
        value = config.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{key}: required with mode = {mode!r}")
        return value.strip()

    if mode == "token":
        return JitsiSettings(
            **base,
            app_id=required("app_id"),
            app_secret=required("app_secret"),
            audience=str(config.get("audience", "jitsi")),
            subject=str(config.get("subject", domain.split(":")[0])),
        )
    if mode == "jaas":
        app_id = required("app_id")
        if not app_id.startswith(JAAS_APP_PREFIX):
            raise ValueError(f"app_id: a JaaS AppID starts with {JAAS_APP_PREFIX!r}")
        return JitsiSettings(**base, app_id=app_id, api_key_id=required("api_key_id"), private_key=_private_key(config))
    return JitsiSettings(**base)


def _private_key(config: Mapping[str, Any]) -> RSAPrivateKey:
    pem = config.get("private_key")
    if not pem and config.get("private_key_file"):
        try:
            pem = Path(str(config["private_key_file"])).read_text()
        except OSError as exc:
            raise ValueError(f"private_key_file: cannot be read ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ValueError("private_key_file: not a PEM text file") from None
    if not isinstance(pem, str) or not pem.strip():
        raise ValueError("private_key or private_key_file: required with mode = 'jaas'")
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("private_key: not a PEM private key without passphrase") from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("private_key: JaaS needs an RSA key")
    return key


class JitsiBackend(Backend):
    name = "jitsi"
    title = "Jitsi Meet"
    creates_offline = True  # a room is a name; its token is signed here

    def __init__(self, settings: JitsiSettings | None = None) -> None:
        self.settings = settings or JitsiSettings()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        return cls(_settings(config))

    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        return self._room(ctx.user, new_room_name(self.settings.room_prefix), meeting)

    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room:
        if not _ROOM.fullmatch(vendor_meeting_id):
            raise ValueError("not a room name this backend made")
        return self._room(ctx.user, vendor_meeting_id, meeting)  # same room; a fresh token for the new time

    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        """Jitsi rooms exist only while someone is in them: nothing to remove."""

    async def join_url(self, ctx: BackendContext, joining: Joining) -> str | None:
        """Public rooms: None, the room's URL is right for everyone. Otherwise the room's URL with a
        token minted now: the organiser's identity and moderator rights for ``HOST``, neither for a guest."""
        if self.settings.mode == "public":
            return None
        room = joining.vendor_meeting_id
        if not _ROOM.fullmatch(room):
            raise BackendError("this meeting's room is not a Jitsi room this bridge made")
        host = joining.role == HOST
        if host:
            identity = {"id": str(ctx.user.user_id), "name": joining.name or ctx.user.name, "email": ctx.user.email}
        else:
            identity = {}  # no name at all: Jitsi asks the guest for one (a name, even "", would be imposed)
        identity["moderator"] = "true" if host else "false"
        if self.settings.mode == "token":
            identity["affiliation"] = "owner" if host else "member"
        now = int(time.time())
        token = self._sign(room, identity, iat=now, exp=now + self.settings.join_token_minutes * 60, nbf=True)
        return f"{self.room_url(room)}?jwt={token}"

    def _room(self, user: UserIdentity, room: str, meeting: MeetingRequest) -> Room:
        if meeting.join_link:  # the bridge's link goes out; a token is minted at each click
            join_url, link = self.room_url(room), meeting.join_link
        else:
            join_url = link = self.vendor_url(user, room, meeting)
        return Room(vendor_meeting_id=room, join_url=join_url, invitation=render_invitation(meeting, link, user=user))

    def room_url(self, room: str) -> str:
        """The room's address, without a token."""
        s = self.settings
        if s.mode == "jaas":
            return f"https://{s.domain}/{s.app_id}/{room}"
        return f"https://{s.domain}/{room}"

    def vendor_url(self, user: UserIdentity, room: str, meeting: MeetingRequest) -> str:
        """The room's URL as everyone gets it when the bridge hands out the vendor's links."""
        if self.settings.mode == "public":
            return self.room_url(room)
        return f"{self.room_url(room)}?jwt={self.meeting_token(user, room, meeting)}"

    def meeting_token(self, user: UserIdentity, room: str, meeting: MeetingRequest) -> str:
        """The one token of a vendor link, valid from now until the meeting's end plus ``token_grace_minutes``."""
        s = self.settings
        now = int(time.time())
        exp = max(int(meeting.end_time.timestamp()), now) + s.token_grace_minutes * 60
        identity = {"id": str(user.user_id), "name": user.name, "email": user.email}
        if s.mode == "jaas":
            identity["moderator"] = "true" if s.moderator else "false"
        return self._sign(room, identity, iat=now, exp=exp, nbf=False)  # as it always was

    def _sign(self, room: str, identity: dict[str, str], *, iat: int, exp: int, nbf: bool) -> str:
        """A JWT for this room only, in the shape the mode's server expects; ``nbf``: whether a token-mode
        JWT carries "not before" (a JaaS one always does)."""
        s = self.settings
        claims: dict[str, Any]
        if s.mode == "token":
            claims = {"iss": s.app_id, "aud": s.audience, "sub": s.subject, "room": room, "iat": iat, "exp": exp}
            if nbf:
                claims["nbf"] = iat - NBF_LEEWAY_SECONDS
            claims["context"] = {"user": identity}
            return jwt.encode(claims, s.app_secret, algorithm="HS256")
        claims = {
            "iss": "chat",
            "aud": "jitsi",
            "sub": s.app_id,
            "room": room,
            "iat": iat,
            "nbf": iat - NBF_LEEWAY_SECONDS,
            "exp": exp,
            "context": {"user": identity, "features": {}},
        }
        return jwt.encode(
            claims,
            s.private_key,  # type: ignore[arg-type]  # set in JaaS mode, which from_config checks
            algorithm="RS256",
            headers={"kid": f"{s.app_id}/{s.api_key_id}"},
        )


@hookimpl
def register_backends(register: Any) -> None:
    register(JitsiBackend)
