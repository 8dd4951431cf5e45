"""Tests of the Jitsi backend, written like a third-party plugin's: only ``bridge.testing`` helpers.

Unit tests drive ``JitsiBackend`` directly; the end-to-end tests run the bridge with the
plugin discovered through its installed entry point, in-process and on a real socket.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pipedrive_video_bridge_jitsi import JitsiBackend

from bridge.plugin import GUEST, HOST, Backend, BackendContext, BackendError, Joining, MeetingRequest, Room
from bridge.testing import (
    BackendConformance,
    BridgeProcess,
    basic_auth,
    bridge_client,
    make_config,
    make_context,
    prepared_store,
    running,
    sample_meeting,
    sample_user,
    write_toml,
)

APP_ID = "my-jitsi-app"
APP_SECRET = "a-shared-secret-long-enough-for-hs256-0123456789"
JAAS_APP_ID = "vpaas-magic-cookie-0123456789abcdef0123456789abcdef"
JAAS_KEY_ID = "4f4910"
GRACE = 24 * 60 * 60  # the default token_grace_minutes, in seconds
JOIN_LINK = "https://bridge.example.com/j/Zk3q9Xw2b7Lr"
JOIN_TOKEN = 10 * 60  # the default join_token_minutes, in seconds


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def token_config(**overrides: Any) -> dict[str, Any]:
    return {"mode": "token", "domain": "meet.example.org", "app_id": APP_ID, "app_secret": APP_SECRET, **overrides}


def jaas_config(**overrides: Any) -> dict[str, Any]:
    return {
        "mode": "jaas",
        "app_id": JAAS_APP_ID,
        "api_key_id": JAAS_KEY_ID,
        "private_key": pem(rsa_key()),
        **overrides,
    }


def room_of(join_url: str) -> str:
    return urlsplit(join_url).path.rsplit("/", 1)[-1]


def jwt_of(join_url: str) -> str:
    values = parse_qs(urlsplit(join_url).query)["jwt"]
    assert len(values) == 1
    return values[0]


def decode_token(join_url: str) -> dict[str, Any]:
    return jwt.decode(jwt_of(join_url), APP_SECRET, algorithms=["HS256"], audience="jitsi")


def decode_jaas(join_url: str) -> dict[str, Any]:
    return jwt.decode(jwt_of(join_url), rsa_key().public_key(), algorithms=["RS256"], audience="jitsi")


@pytest.fixture
async def context() -> AsyncIterator[BackendContext]:
    async with httpx.AsyncClient() as http:
        yield make_context(http)


async def create(backend: Backend, context: BackendContext, meeting: MeetingRequest | None = None) -> Room:
    return await backend.create(context, meeting or sample_meeting())


# --- the conformance kit, once per mode ------------------------------------------------------


class TestPublicConformance(BackendConformance):
    @pytest.fixture
    def backend(self) -> Backend:
        return JitsiBackend.from_config({})


class TestTokenConformance(BackendConformance):
    @pytest.fixture
    def backend(self) -> Backend:
        return JitsiBackend.from_config(token_config())

    @pytest.fixture
    def vendor_secrets(self) -> list[str]:
        return [APP_SECRET]


class TestJaasConformance(BackendConformance):
    @pytest.fixture
    def backend(self) -> Backend:
        return JitsiBackend.from_config(jaas_config())


# --- room names and URLs ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_public_room_is_an_unguessable_name_on_meet_jit_si(context: BackendContext) -> None:
    room = await create(JitsiBackend.from_config({}), context)
    assert re.fullmatch(r"[a-z0-9]{26,}", room.vendor_meeting_id)
    assert room.join_url == f"https://meet.jit.si/{room.vendor_meeting_id}"
    assert room.password is None


@pytest.mark.anyio
async def test_room_prefix_is_honoured(context: BackendContext) -> None:
    room = await create(JitsiBackend.from_config({"room_prefix": "acme"}), context)
    assert room.vendor_meeting_id.startswith("acme")
    assert re.fullmatch(r"acme[a-z0-9]{26,}", room.vendor_meeting_id)
    assert room.join_url == f"https://meet.jit.si/{room.vendor_meeting_id}"


@pytest.mark.anyio
async def test_a_thousand_rooms_are_all_distinct(context: BackendContext) -> None:
    backend = JitsiBackend.from_config({"room_prefix": "x"})
    names = [(await create(backend, context)).vendor_meeting_id for _ in range(1000)]
    assert len(set(names)) == 1000
    assert all(re.fullmatch(r"x[a-z0-9]{26,}", name) for name in names)
    # the random part really varies in every position (no constant padding or counter)
    random_parts = [name[1:] for name in names]
    assert all(len({part[i] for part in random_parts}) > 1 for i in range(26))


@pytest.mark.anyio
async def test_self_hosted_domain_from_config(context: BackendContext) -> None:
    room = await create(JitsiBackend.from_config({"domain": "Meet.Example.org"}), context)
    assert room.join_url == f"https://meet.example.org/{room.vendor_meeting_id}"
    room = await create(JitsiBackend.from_config({"domain": "meet.example.org:8443"}), context)
    assert room.join_url == f"https://meet.example.org:8443/{room.vendor_meeting_id}"


# --- token mode (self-hosted jitsi-meet-tokens) ----------------------------------------------


@pytest.mark.anyio
async def test_token_mode_jwt_claims(context: BackendContext) -> None:
    meeting = sample_meeting()
    room = await create(JitsiBackend.from_config(token_config()), context, meeting)
    url = urlsplit(room.join_url)
    assert url.scheme == "https" and url.netloc == "meet.example.org"
    assert url.path == f"/{room.vendor_meeting_id}"
    assert re.fullmatch(r"[a-z0-9]{26,}", room.vendor_meeting_id)

    assert jwt.get_unverified_header(jwt_of(room.join_url))["alg"] == "HS256"
    claims = decode_token(room.join_url)
    assert claims["iss"] == APP_ID
    assert claims["aud"] == "jitsi"
    assert claims["sub"] == "meet.example.org"
    assert claims["room"] == room.vendor_meeting_id
    end = int(meeting.end_time.timestamp())
    assert end + GRACE <= claims["exp"] <= end + GRACE + 60
    assert abs(claims["iat"] - time.time()) < 60
    user = sample_user()
    assert claims["context"]["user"] == {"id": str(user.user_id), "name": user.name, "email": user.email}


@pytest.mark.anyio
async def test_token_mode_audience_subject_and_grace_from_config(context: BackendContext) -> None:
    backend = JitsiBackend.from_config(token_config(audience="my-aud", subject="tenant", token_grace_minutes=30))
    meeting = sample_meeting()
    room = await create(backend, context, meeting)
    claims = jwt.decode(jwt_of(room.join_url), APP_SECRET, algorithms=["HS256"], audience="my-aud")
    assert claims["sub"] == "tenant"
    assert claims["exp"] == int(meeting.end_time.timestamp()) + 30 * 60


@pytest.mark.anyio
async def test_token_for_a_past_meeting_is_valid_from_now(context: BackendContext) -> None:
    meeting = sample_meeting(start_time=datetime.now(UTC) - timedelta(days=3))
    room = await create(JitsiBackend.from_config(token_config()), context, meeting)
    claims = decode_token(room.join_url)  # would raise ExpiredSignatureError if exp were in the past
    assert time.time() + GRACE - 60 <= claims["exp"] <= time.time() + GRACE + 60


@pytest.mark.anyio
async def test_token_signed_with_another_secret_does_not_verify(context: BackendContext) -> None:
    room = await create(JitsiBackend.from_config(token_config()), context)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            jwt_of(room.join_url), "another-secret-that-is-also-long-enough-000", algorithms=["HS256"], audience="jitsi"
        )
    other = JitsiBackend.from_config(token_config(app_secret="another-secret-that-is-also-long-enough-000"))
    forged = await create(other, context)
    with pytest.raises(jwt.InvalidSignatureError):
        decode_token(forged.join_url)


# --- jaas mode (8x8 Jitsi as a Service) --------------------------------------------------------


@pytest.mark.anyio
async def test_jaas_jwt_header_claims_and_url(context: BackendContext) -> None:
    meeting = sample_meeting()
    room = await create(JitsiBackend.from_config(jaas_config()), context, meeting)
    name = room.vendor_meeting_id
    assert re.fullmatch(r"[a-z0-9]{26,}", name)
    assert room.join_url.startswith(f"https://8x8.vc/{JAAS_APP_ID}/{name}?jwt=")

    header = jwt.get_unverified_header(jwt_of(room.join_url))
    assert header["alg"] == "RS256"
    assert header["kid"] == f"{JAAS_APP_ID}/{JAAS_KEY_ID}"
    claims = decode_jaas(room.join_url)
    assert claims["iss"] == "chat"
    assert claims["aud"] == "jitsi"
    assert claims["sub"] == JAAS_APP_ID
    assert claims["room"] == name
    end = int(meeting.end_time.timestamp())
    assert end + GRACE <= claims["exp"] <= end + GRACE + 60
    user = claims["context"]["user"]
    assert user["moderator"] == "true"
    assert user["id"] == str(sample_user().user_id)
    assert user["name"] == "Ada Lovelace" and user["email"] == "ada@example.com"


@pytest.mark.anyio
async def test_jaas_moderator_false(context: BackendContext) -> None:
    room = await create(JitsiBackend.from_config(jaas_config(moderator=False)), context)
    assert decode_jaas(room.join_url)["context"]["user"]["moderator"] == "false"


@pytest.mark.anyio
async def test_jaas_token_does_not_verify_with_another_key(context: BackendContext) -> None:
    room = await create(JitsiBackend.from_config(jaas_config()), context)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(jwt_of(room.join_url), other.public_key(), algorithms=["RS256"], audience="jitsi")


@pytest.mark.anyio
async def test_jaas_private_key_file(tmp_path: Path, context: BackendContext) -> None:
    key_file = tmp_path / "jaas.pem"
    key_file.write_text(pem(rsa_key()))
    config = jaas_config(private_key_file=str(key_file))
    del config["private_key"]
    room = await create(JitsiBackend.from_config(config), context)
    assert decode_jaas(room.join_url)["room"] == room.vendor_meeting_id


# --- update and invitation ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("config", [{}, token_config(), jaas_config()], ids=["public", "token", "jaas"])
async def test_update_keeps_the_room(context: BackendContext, config: dict[str, Any]) -> None:
    backend = JitsiBackend.from_config(config)
    room = await create(backend, context)
    moved = sample_meeting(topic="Moved demo", start_time=datetime(2031, 6, 1, 16, 0, tzinfo=UTC), duration=90)
    updated = await backend.update(context, room.vendor_meeting_id, moved)
    assert updated.vendor_meeting_id == room.vendor_meeting_id
    assert urlsplit(updated.join_url).path == urlsplit(room.join_url).path
    assert "Moved demo" in updated.invitation
    assert "Sunday, 01 June 2031, 16:00 UTC" in updated.invitation
    assert "90 minutes" in updated.invitation
    assert updated.join_url in updated.invitation


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["token", "jaas"])
async def test_update_gives_a_fresh_token_for_the_new_time(context: BackendContext, mode: str) -> None:
    backend = JitsiBackend.from_config(token_config() if mode == "token" else jaas_config())
    decode = decode_token if mode == "token" else decode_jaas
    room = await create(backend, context)
    moved = sample_meeting(start_time=datetime(2031, 6, 1, 16, 0, tzinfo=UTC), duration=90)
    updated = await backend.update(context, room.vendor_meeting_id, moved)
    assert jwt_of(updated.join_url) != jwt_of(room.join_url)
    before, after = decode(room.join_url), decode(updated.join_url)
    assert after["room"] == before["room"] == room.vendor_meeting_id
    assert after["exp"] == int(moved.end_time.timestamp()) + GRACE
    assert before["exp"] == int(sample_meeting().end_time.timestamp()) + GRACE


@pytest.mark.anyio
@pytest.mark.parametrize("bad", ["", "../etc", "Room", "room-name", "x" * 65, "abc\n", "abc/def"])
async def test_update_refuses_foreign_room_names(context: BackendContext, bad: str) -> None:
    with pytest.raises(ValueError):
        await JitsiBackend.from_config({}).update(context, bad, sample_meeting())


@pytest.mark.anyio
async def test_invitation_text(context: BackendContext) -> None:
    meeting = sample_meeting()
    room = await create(JitsiBackend.from_config({}), context, meeting)
    text = room.invitation
    assert "Demo with Acme" in text
    assert "Wednesday, 14 May 2031, 09:30 UTC" in text
    assert "45 minutes" in text
    assert f"Join: {room.join_url}" in text
    assert "Ada Lovelace" in text


@pytest.mark.anyio
async def test_invitation_without_user_name() -> None:
    async with httpx.AsyncClient() as http:
        ctx = make_context(http, user=sample_user(name=""))
        room = await create(JitsiBackend.from_config({}), ctx)
    assert room.invitation.strip() and room.join_url in room.invitation


@pytest.mark.anyio
async def test_delete_is_a_no_op(context: BackendContext) -> None:
    backend = JitsiBackend.from_config({})
    assert await backend.delete(context, "doesnotexist") is None


# --- join links served by the bridge -------------------------------------------------------------

MODES = {"token": token_config, "jaas": jaas_config}


def decode_for(mode: str, join_url: str) -> dict[str, Any]:
    return decode_token(join_url) if mode == "token" else decode_jaas(join_url)


def joining(room: Room, meeting: MeetingRequest, role: str, name: str = "") -> Joining:
    """What the core hands ``join_url`` at a click: the stored room, the meeting, the person's role."""
    return Joining(
        vendor_meeting_id=room.vendor_meeting_id, meeting=meeting, role=role, join_url=room.join_url, name=name
    )


async def click(
    backend: JitsiBackend, context: BackendContext, room: Room, meeting: MeetingRequest, role: str
) -> tuple[str, float, float]:
    """The URL a click is sent to, and the time just before and just after it."""
    before = time.time()
    name = context.user.name if role == HOST else ""
    url = await backend.join_url(context, joining(room, meeting, role, name))
    after = time.time()
    assert url is not None
    return url, before, after


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["public", "token", "jaas"])
async def test_with_a_join_link_the_room_and_invitation_carry_no_token(context: BackendContext, mode: str) -> None:
    backend = JitsiBackend.from_config(MODES[mode]() if mode in MODES else {})
    meeting = sample_meeting(join_link=JOIN_LINK)
    for room in [await create(backend, context, meeting), await backend.update(context, "roomabc", meeting)]:
        assert urlsplit(room.join_url).query == "", "no JWT in the stored URL: one is minted at each click"
        assert room.join_url == backend.room_url(room.vendor_meeting_id)
        assert f"Join: {JOIN_LINK}" in room.invitation
        assert room.join_url not in room.invitation, "the invitation hands out the bridge's link, not the room"
        assert "jwt" not in room.invitation and "eyJ" not in room.invitation
        assert "Demo with Acme" in room.invitation and "Ada Lovelace" in room.invitation


@pytest.mark.anyio
async def test_with_a_join_link_the_room_urls_are_bare(context: BackendContext) -> None:
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await create(JitsiBackend.from_config(token_config()), context, meeting)
    assert room.join_url == f"https://meet.example.org/{room.vendor_meeting_id}"
    room = await create(JitsiBackend.from_config(jaas_config()), context, meeting)
    assert room.join_url == f"https://8x8.vc/{JAAS_APP_ID}/{room.vendor_meeting_id}"


@pytest.mark.anyio
@pytest.mark.parametrize("role", [HOST, GUEST])
async def test_public_rooms_need_no_token_at_a_click(context: BackendContext, role: str) -> None:
    backend = JitsiBackend.from_config({"domain": "meet.example.org"})
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await create(backend, context, meeting)
    assert await backend.join_url(context, joining(room, meeting, role)) is None, "the stored URL is right for all"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["token", "jaas"])
@pytest.mark.parametrize("role", [HOST, GUEST])
async def test_a_click_gets_a_token_minted_now_for_this_room_only(
    context: BackendContext, mode: str, role: str
) -> None:
    backend = JitsiBackend.from_config(MODES[mode]())
    meeting = sample_meeting(join_link=JOIN_LINK)  # in 2031: a meeting token would run until then
    room = await create(backend, context, meeting)
    url, before, after = await click(backend, context, room, meeting, role)

    assert url.startswith(room.join_url + "?jwt=")
    assert room_of(url.split("?")[0]) == room.vendor_meeting_id
    claims = decode_for(mode, url)  # verifies the signature, exp, nbf and iat
    assert int(before) <= claims["iat"] <= after, "issued at the click"
    assert claims["exp"] - claims["iat"] == JOIN_TOKEN, "valid for join_token_minutes, not until the meeting's end"
    assert 0 < claims["iat"] - claims["nbf"] <= 30, "valid from a few seconds before the click"
    assert claims["room"] == room.vendor_meeting_id, "no wildcard: this room only"
    assert jwt.get_unverified_header(jwt_of(url))["alg"] == ("HS256" if mode == "token" else "RS256")


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["token", "jaas"])
async def test_the_host_joins_as_the_organiser_with_moderator_rights(context: BackendContext, mode: str) -> None:
    backend = JitsiBackend.from_config(MODES[mode]())
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await create(backend, context, meeting)
    url, _, _ = await click(backend, context, room, meeting, HOST)

    user = decode_for(mode, url)["context"]["user"]
    organiser = sample_user()
    assert (user["id"], user["name"], user["email"]) == (str(organiser.user_id), organiser.name, organiser.email)
    assert user["moderator"] == "true"
    if mode == "token":
        assert user["affiliation"] == "owner", "what jitsi-contrib's token_affiliation turns into the room's owner"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["token", "jaas"])
async def test_a_guest_joins_without_the_organisers_identity_or_rights(context: BackendContext, mode: str) -> None:
    backend = JitsiBackend.from_config(MODES[mode]())
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await create(backend, context, meeting)
    url, _, _ = await click(backend, context, room, meeting, GUEST)

    claims = decode_for(mode, url)
    user = claims["context"]["user"]
    organiser = sample_user()
    assert "id" not in user and "email" not in user
    assert "name" not in user, "no name in the token: Jitsi asks the guest for theirs"
    assert organiser.email not in jwt_of(url) and organiser.name not in str(claims)
    assert user["moderator"] == "false"
    if mode == "token":
        assert user["affiliation"] == "member"


@pytest.mark.anyio
async def test_every_click_mints_its_own_token_whenever_the_meeting_is(context: BackendContext) -> None:
    backend = JitsiBackend.from_config(jaas_config())
    meeting = sample_meeting(start_time=datetime.now(UTC) - timedelta(days=3), join_link=JOIN_LINK)
    room = await create(backend, context, meeting)
    first, before, _ = await click(backend, context, room, meeting, GUEST)
    second, _, _ = await click(backend, context, room, meeting, HOST)
    assert jwt_of(first) != jwt_of(second)
    claims = decode_jaas(first)  # a meeting three days past: still valid from the click on, for a while
    assert int(before) <= claims["iat"] and claims["exp"] == claims["iat"] + JOIN_TOKEN


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["token", "jaas"])
async def test_join_token_minutes_from_config(context: BackendContext, mode: str) -> None:
    backend = JitsiBackend.from_config(MODES[mode](join_token_minutes=3, token_grace_minutes=30))
    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await create(backend, context, meeting)
    url, _, _ = await click(backend, context, room, meeting, HOST)
    claims = decode_for(mode, url)
    assert claims["exp"] - claims["iat"] == 3 * 60, "token_grace_minutes does not apply to a click's token"


@pytest.mark.anyio
async def test_the_moderator_setting_governs_the_vendor_link_only(context: BackendContext) -> None:
    backend = JitsiBackend.from_config(jaas_config(moderator=False))
    vendor_room = await create(backend, context)
    assert decode_jaas(vendor_room.join_url)["context"]["user"]["moderator"] == "false"

    meeting = sample_meeting(join_link=JOIN_LINK)
    room = await create(backend, context, meeting)
    host, _, _ = await click(backend, context, room, meeting, HOST)
    guest, _, _ = await click(backend, context, room, meeting, GUEST)
    assert decode_jaas(host)["context"]["user"]["moderator"] == "true", "the organiser moderates their meeting"
    assert decode_jaas(guest)["context"]["user"]["moderator"] == "false"


@pytest.mark.anyio
async def test_a_click_token_does_not_verify_with_another_secret_or_key(context: BackendContext) -> None:
    meeting = sample_meeting(join_link=JOIN_LINK)
    backend = JitsiBackend.from_config(token_config())
    url, _, _ = await click(backend, context, await create(backend, context, meeting), meeting, HOST)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(jwt_of(url), "another-secret-that-is-also-long-enough-000", algorithms=["HS256"], audience="jitsi")

    backend = JitsiBackend.from_config(jaas_config())
    url, _, _ = await click(backend, context, await create(backend, context, meeting), meeting, GUEST)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(jwt_of(url), other.public_key(), algorithms=["RS256"], audience="jitsi")


@pytest.mark.anyio
@pytest.mark.parametrize("bad", ["", "../etc", "Room", "abc/def"])
async def test_a_click_on_a_foreign_room_name_is_refused(context: BackendContext, bad: str) -> None:
    meeting = sample_meeting(join_link=JOIN_LINK)
    gone = Joining(vendor_meeting_id=bad, meeting=meeting, role=HOST, join_url="https://meet.example.org/x")
    with pytest.raises(BackendError):
        await JitsiBackend.from_config(token_config()).join_url(context, gone)


def test_join_token_minutes_defaults_to_ten() -> None:
    assert JitsiBackend.from_config(token_config()).settings.join_token_minutes == 10
    assert JitsiBackend.from_config(jaas_config(join_token_minutes=1)).settings.join_token_minutes == 1
    assert JitsiBackend.from_config({"join_token_minutes": 240}).settings.join_token_minutes == 240


# --- configuration errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "setting"),
    [
        ({"colour": "blue"}, "colour"),
        ({"mode": "private"}, "mode"),
        ({"domain": "meet.jit.si/x"}, "domain"),
        ({"domain": "http://x"}, "domain"),
        ({"domain": "https://meet.example.org"}, "domain"),
        ({"domain": ""}, "domain"),
        ({"domain": "meet.example.org\n"}, "domain"),
        ({"domain": "meet example.org"}, "domain"),
        ({"room_prefix": "acme-"}, "room_prefix"),
        ({"room_prefix": "Acme"}, "room_prefix"),
        ({"room_prefix": "acme\n"}, "room_prefix"),
        ({"room_prefix": "a" * 25}, "room_prefix"),
        ({"room_prefix": 7}, "room_prefix"),
        ({"token_grace_minutes": -1}, "token_grace_minutes"),
        ({"token_grace_minutes": "60"}, "token_grace_minutes"),
        ({"moderator": "yes"}, "moderator"),
        ({"join_token_minutes": 0}, "join_token_minutes"),
        ({"join_token_minutes": -5}, "join_token_minutes"),
        ({"join_token_minutes": "10"}, "join_token_minutes"),
        ({"join_token_minutes": 2.5}, "join_token_minutes"),
        ({"join_token_minutes": True}, "join_token_minutes"),
        ({"mode": "token", "app_id": APP_ID}, "app_secret"),
        ({"mode": "token", "app_id": APP_ID, "app_secret": "   "}, "app_secret"),
        ({"mode": "token", "app_secret": APP_SECRET}, "app_id"),
        (jaas_config(app_id="my-app"), "app_id"),
        (jaas_config(api_key_id=""), "api_key_id"),
        (jaas_config(private_key="garbage"), "private_key"),
        (jaas_config(private_key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "private_key"),
        (jaas_config(private_key=pem(ec.generate_private_key(ec.SECP256R1()))), "private_key"),
        ({**jaas_config(), "private_key": "", "private_key_file": "/nonexistent/jaas.pem"}, "private_key_file"),
        ({k: v for k, v in jaas_config().items() if k != "private_key"}, "private_key"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_config_errors_name_the_setting(config: dict[str, Any], setting: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        JitsiBackend.from_config(config)
    assert setting in str(excinfo.value)


def test_jaas_with_an_ec_key_says_rsa_is_needed() -> None:
    with pytest.raises(ValueError, match="RSA"):
        JitsiBackend.from_config(jaas_config(private_key=pem(ec.generate_private_key(ec.SECP256R1()))))


def test_jaas_with_an_encrypted_key_is_refused() -> None:
    encrypted = (
        rsa_key()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
        .decode()
    )
    with pytest.raises(ValueError, match="private_key"):
        JitsiBackend.from_config(jaas_config(private_key=encrypted))


def test_jaas_private_key_file_in_der_is_refused_naming_the_setting(tmp_path: Path) -> None:
    key_file = tmp_path / "jaas.der"
    key_file.write_bytes(
        rsa_key().private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    config = {k: v for k, v in jaas_config().items() if k != "private_key"}
    with pytest.raises(ValueError, match="private_key"):
        JitsiBackend.from_config({**config, "private_key_file": str(key_file)})


def test_defaults_are_public_on_meet_jit_si() -> None:
    backend = JitsiBackend.from_config({})
    assert backend.settings.mode == "public"
    assert backend.settings.domain == "meet.jit.si"
    assert JitsiBackend.from_config(jaas_config()).settings.domain == "8x8.vc"


# --- end to end, in-process, plugin found through its entry point -------------------------------


async def create_link(config: Any, **fields: Any) -> str:
    async with prepared_store(config) as store:
        link = await store.create_link(pipedrive_user_id=5, company_id=6, **fields)
    return link.id


MEETING_BODY = {"topic": "Demo with Acme", "start_time": "2031-05-14 09:30", "duration": 45}
MOVED_BODY = {"topic": "Moved demo", "start_time": "2031-06-01 16:00", "duration": 90}


@pytest.mark.anyio
async def test_end_to_end_in_process_public(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    link_id = await create_link(config)
    async with bridge_client(config, entry_points=True) as client:
        response = await client.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["success"] is True
        data = body["data"]
        assert data["join_url"].startswith("https://bridge.example.com/j/")  # the bridge's join link
        assert data["join_url"] in data["invitation"] and "Demo with Acme" in data["invitation"]
        opened = await client.get(data["join_url"], headers={"Authorization": ""})
        assert opened.status_code == 303
        assert re.fullmatch(r"https://meet\.jit\.si/[a-z0-9]{26,}", opened.headers["location"])
        meeting_url = f"/api/v1/links/{link_id}/meetings/{data['meeting_id']}"

        response = await client.patch(meeting_url, json=MOVED_BODY)
        assert response.status_code == 204, response.text
        response = await client.delete(meeting_url)
        assert response.status_code == 204, response.text
        response = await client.delete(meeting_url)
        assert response.status_code == 204, "a repeated delete answers as the first did"
        response = await client.patch(meeting_url, json=MOVED_BODY)
        assert response.status_code == 404


@pytest.mark.anyio
async def test_end_to_end_in_process_token_mode_carries_the_link_user(tmp_path: Path) -> None:
    config = make_config(tmp_path, backends={"jitsi": token_config()})
    link_id = await create_link(config, user_name="Grace Hopper", user_email="grace@example.com")
    async with bridge_client(config, entry_points=True) as client:
        response = await client.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY)
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        assert "jwt=" not in data["join_url"] and "jwt=" not in data["invitation"]
        assert "Grace Hopper" in data["invitation"]
        opened = await client.get(data["join_url"], headers={"Authorization": ""})  # a guest's click
        room_url = opened.headers["location"]
        assert room_url.startswith("https://meet.example.org/")
        claims = decode_token(room_url)
        assert claims["room"] == room_of(room_url)
        assert "grace@example.com" not in str(claims), "a guest's token does not carry the organiser"
        assert claims["exp"] - claims["iat"] <= 60 * 60, "minted at the click, valid for minutes"


@pytest.mark.anyio
async def test_end_to_end_token_mode_refuses_a_meeting_ending_after_year_9999(tmp_path: Path) -> None:
    config = make_config(tmp_path, backends={"jitsi": token_config()})
    link_id = await create_link(config)
    async with bridge_client(config, entry_points=True) as client:
        body = {**MEETING_BODY, "start_time": "9999-12-31 23:59", "duration": 44640}
        response = await client.post(f"/api/v1/links/{link_id}/meetings", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["success"] is False and "start_time" in response.json()["error"]
        last = {**MEETING_BODY, "start_time": "9999-12-31 23:58", "duration": 1}
        response = await client.post(f"/api/v1/links/{link_id}/meetings", json=last)
        assert response.status_code == 201, response.text


@pytest.mark.anyio
async def test_end_to_end_refuses_wrong_credentials(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    link_id = await create_link(config)
    async with bridge_client(config, entry_points=True) as client:
        response = await client.post(
            f"/api/v1/links/{link_id}/meetings",
            json=MEETING_BODY,
            headers=basic_auth(config.pipedrive.client_id, "wrong"),
        )
        assert response.status_code == 401


# --- end to end on a real socket: the CLI, uvicorn, the installed plugin ------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """``serve`` in a subprocess on a free port: (base URL, config file, auth headers)."""
    from bridge.testing import generate_key

    client_secret = "e2e-secret-" + generate_key()[:16]
    config_file = write_toml(
        tmp_path / "bridge.toml",
        {
            "pipedrive": {"client_id": "e2e-client", "client_secret": client_secret},
            "database": {"url": f"sqlite:///{tmp_path / 'bridge.sqlite3'}"},
            "vault": {"keys": [generate_key()]},
            "logging": {"level": "WARNING"},
            "backends.jitsi": {"domain": "meet.example.org"},
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVB_")}
    with running(
        BridgeProcess.serve(config_file, tmp_path / "serve.log", env=env, name="serve"), "/healthz", 20
    ) as server:
        yield server.url, config_file, basic_auth("e2e-client", client_secret)


def test_end_to_end_on_a_real_socket(served: tuple[str, Path, dict[str, str]]) -> None:
    base_url, config_file, auth = served
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVB_")}
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.cli",
            "--config",
            str(config_file),
            "links",
            "create",
            "--user-id",
            "5",
            "--company-id",
            "6",
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
    )
    assert created.returncode == 0, created.stderr
    link_id = created.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", link_id)

    with httpx.Client(base_url=base_url, headers=auth, timeout=10) as client:
        assert client.get("/readyz").json()["status"] == "ready"
        response = client.post(f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY)
        assert response.status_code == 201, response.text
        data = response.json()["data"]
        join_path = urlsplit(data["join_url"]).path  # on [server] public_url, which this config leaves default
        assert join_path.startswith("/j/") and data["join_url"] in data["invitation"]
        opened = client.get(join_path, headers={"Authorization": ""})
        assert opened.status_code == 303
        assert re.fullmatch(r"https://meet\.example\.org/[a-z0-9]{26,}", opened.headers["location"])
        meeting_url = f"/api/v1/links/{link_id}/meetings/{data['meeting_id']}"

        assert client.patch(meeting_url, json=MOVED_BODY).status_code == 204
        assert client.delete(meeting_url).status_code == 204
        assert client.patch(meeting_url, json=MOVED_BODY).status_code == 404

        unauthenticated = client.post(
            f"/api/v1/links/{link_id}/meetings", json=MEETING_BODY, headers={"Authorization": ""}
        )
        assert unauthenticated.status_code == 401
        assert unauthenticated.json()["success"] is False
