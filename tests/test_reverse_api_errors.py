"""The reverse API's errors through HTTP, each as ``{"success": false, "error": "<message>"}``.

Validation (400), authentication (401), unknown links and meetings (404), routing
(404/405), media type (415), body size (413), and vendor failures (502/503/504).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session, select

import bridge.storage.store
from bridge.api.meetings import MeetingService
from bridge.config import Config
from bridge.errors import BackendError, BackendTimeout, BackendUnavailable
from bridge.storage.links import Link
from bridge.storage.schema import MEETING_ACTIVE, MEETING_DELETED, LinkTable, MeetingTable, SecretTable
from bridge.storage.store import Store, StoreError
from bridge.testing import basic_auth, bridge_client, make_config, wait_for_empty_outbox, wait_until

pytestmark = pytest.mark.anyio

BODY: dict[str, Any] = {"topic": "Demo with Acme", "start_time": "2030-01-01 10:00", "duration": 30}
MOVED: dict[str, Any] = {"topic": "Moved demo", "start_time": "2030-02-03 16:45", "duration": 90}
REALM = 'Basic realm="pipedrive-video-bridge"'


def meetings_url(link_id: str) -> str:
    return f"/api/v1/links/{link_id}/meetings"


def meeting_url(link_id: str, meeting_id: str) -> str:
    return f"/api/v1/links/{link_id}/meetings/{meeting_id}"


def assert_error(response: httpx.Response, status: int, *words: str, case: Any = None) -> str:
    """The response is ``status`` with exactly ``{"success": false, "error": <message>}``.

    ``words`` must each appear in the message; ``case`` is shown when an assertion fails.
    """
    where = f"case {case!r}: " if case is not None else ""
    assert response.status_code == status, f"{where}{response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/json"), where
    body = response.json()
    assert set(body) == {"success", "error"}, f"{where}{body}"
    assert body["success"] is False, where
    assert isinstance(body["error"], str) and body["error"].strip(), where
    for word in words:
        assert word in body["error"], f"{where}{word!r} not in {body['error']!r}"
    return body["error"]  # type: ignore[no-any-return]


async def create(client: httpx.AsyncClient, link_id: str, **overrides: Any) -> str:
    response = await client.post(meetings_url(link_id), json={**BODY, **overrides})
    assert response.status_code == 201, response.text
    return response.json()["data"]["meeting_id"]  # type: ignore[no-any-return]


def _all_rows(store: Store) -> tuple[list[MeetingTable], list[SecretTable]]:
    with Session(store.engine) as session:
        return list(session.exec(select(MeetingTable))), list(session.exec(select(SecretTable)))


async def all_rows(store: Store) -> tuple[list[MeetingTable], list[SecretTable]]:
    return await anyio.to_thread.run_sync(_all_rows, store)


def b64(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode()


class Target:
    """postMeeting on a link, or patchUpdateMeeting on one of its meetings."""

    def __init__(self, method: str, url: str, vendor: Any) -> None:
        self.method = method
        self.url = url
        self.vendor = vendor
        self.calls_before = list(vendor.calls)
        self.rooms_before = dict(vendor.rooms)

    def assert_vendor_untouched(self) -> None:
        assert self.vendor.calls == self.calls_before
        assert self.vendor.rooms == self.rooms_before


@pytest.fixture(params=["POST", "PATCH"])
async def target(request: pytest.FixtureRequest, client: httpx.AsyncClient, link: Link, vendor: Any) -> Target:
    if request.param == "POST":
        return Target("POST", meetings_url(link.id), vendor)
    meeting_id = await create(client, link.id)
    return Target("PATCH", meeting_url(link.id, meeting_id), vendor)


# --- 400: the body ---------------------------------------------------------------------
# Each test loops over its cases (rather than parametrizing) so PostgreSQL makes one database per
# test, not per case; every assertion names the case it failed on.


async def send_json_text(client: httpx.AsyncClient, target: Target, raw: str | bytes) -> httpx.Response:
    return await client.request(target.method, target.url, content=raw, headers={"Content-Type": "application/json"})


async def test_a_body_that_is_not_json_is_400(client, target):
    for raw in [
        b"",
        b"not json",
        b"{",
        b'{"topic": "x",}',
        b"{'topic': 'x'}",
        b"\xff\xfe\x00garbage",
        b"[" * 10_000,
        json.dumps(BODY).encode() + b" trailing",
    ]:
        response = await send_json_text(client, target, raw)
        assert_error(response, 400, "not valid JSON", case=raw[:40])
    target.assert_vendor_untouched()


async def test_a_json_body_that_is_not_an_object_is_400(client, target):
    for body in [[], [BODY], "a string", None, 42, 30.5, True]:
        response = await send_json_text(client, target, json.dumps(body))
        assert_error(response, 400, "JSON object", case=body)
    target.assert_vendor_untouched()


async def test_a_bad_topic_is_400_naming_the_field(client, target):
    cases: list[tuple[Any, tuple[str, ...]]] = [
        (None, ("topic", "string", "null")),
        (42, ("topic", "string", "a number")),
        (True, ("topic", "string", "a boolean")),
        (["Demo"], ("topic", "string", "an array")),
        ({"text": "Demo"}, ("topic", "string", "an object")),
        ("", ("topic", "empty")),
        ("   ", ("topic", "empty")),
        (" \t\n\r ", ("topic", "empty")),
        ("\u3000\u00a0", ("topic", "empty")),
        ("x" * 1001, ("topic", "1000")),
    ]
    for topic, words in cases:
        response = await client.request(target.method, target.url, json={**BODY, "topic": topic})
        assert_error(response, 400, *words, case=topic)
    target.assert_vendor_untouched()


async def test_a_topic_with_a_lone_surrogate_is_400_before_anything_encodes_it(client, target, store):
    """``"\\ud800"`` is valid JSON but no Unicode text: refused, never hashed, stored or sent to a vendor."""
    rows_before = await all_rows(store)
    for escaped in ["\\ud800", "Demo \\udfff", "\\udc00\\ud83d", "\\ud83d Demo", "Demo\\ud800\\ud800"]:
        raw = json.dumps({**BODY, "topic": "@"}).replace('"@"', f'"{escaped}"')
        assert_error(await send_json_text(client, target, raw), 400, "topic", "surrogate", case=escaped)
    # the same code point as (invalid) UTF-8 bytes
    raw_bytes = json.dumps({**BODY, "topic": "@"}).encode().replace(b"@", b"\xed\xa0\x80")
    assert_error(await send_json_text(client, target, raw_bytes), 400, "topic", case=raw_bytes)
    target.assert_vendor_untouched()
    assert await all_rows(store) == rows_before


async def test_a_surrogate_pair_is_an_ordinary_character(client, link, vendor):
    raw = json.dumps({**BODY, "topic": "Demo \U0001f600"})  # ensure_ascii: the emoji as "\\ud83d\\ude00"
    assert "\\ud83d\\ude00" in raw
    response = await client.post(meetings_url(link.id), content=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == 201, response.text
    assert vendor.rooms["fake-1"].topic == "Demo \U0001f600"


async def test_a_missing_field_is_400_naming_it(client, target):
    for field in ("topic", "start_time", "duration"):
        body = {name: value for name, value in BODY.items() if name != field}
        response = await client.request(target.method, target.url, json=body)
        assert_error(response, 400, f"{field} is required", case=field)
    response = await client.request(target.method, target.url, json={})
    assert_error(response, 400, "is required")
    target.assert_vendor_untouched()


async def test_a_badly_formatted_start_time_is_400(client, target):
    for start_time in [
        "2026-12-01T14:00",
        "2026-12-01 14:00:00",
        "2026-12-01T14:00:00Z",
        "2026-12-01 14:00Z",
        "2026-12-01 14:00+02:00",
        "2026-12-01",
        "14:00",
        "2026-1-01 10:00",
        "2026-12-01 9:00",
        " 2026-12-01 14:00",
        "2026-12-01 14:00 ",
        "2026-12-01  14:00",
        "01.12.2026 14:00",
        "2026-12-01 14:00\n",
        "",
        None,
        1764597600,
        ["2026-12-01 14:00"],
    ]:
        response = await client.request(target.method, target.url, json={**BODY, "start_time": start_time})
        assert_error(response, 400, "start_time", "YYYY-MM-DD HH:mm", case=start_time)
    target.assert_vendor_untouched()


async def test_a_start_time_that_is_not_a_real_time_is_400(client, target):
    for start_time in [
        "2026-13-01 10:00",
        "2026-02-30 10:00",
        "2026-00-10 10:00",
        "2026-12-00 10:00",
        "2026-12-01 24:00",
        "2026-12-01 10:60",
        "2027-02-29 10:00",
        "0000-01-01 10:00",
    ]:
        response = await client.request(target.method, target.url, json={**BODY, "start_time": start_time})
        assert_error(response, 400, "start_time", start_time, case=start_time)
    target.assert_vendor_untouched()


async def test_a_meeting_ending_after_year_9999_is_400(client, target, store):
    """The end (start plus duration) is checked before any backend adds to it, so none overflows."""
    rows_before = await all_rows(store)
    for start_time, duration in [
        ("9999-12-31 23:59", 31 * 24 * 60),
        ("9999-12-31 23:59", 1),
        ("9999-12-31 23:58", 1.5),
        ("9999-12-31 23:00", 60.001),
        ("9999-12-01 00:00", 31 * 24 * 60),
    ]:
        body = {**BODY, "start_time": start_time, "duration": duration}
        response = await client.request(target.method, target.url, json=body)
        assert_error(response, 400, "start_time", "duration", "9999-12-31 23:59", case=body)
    target.assert_vendor_untouched()
    assert await all_rows(store) == rows_before


async def test_meetings_at_the_ends_of_the_calendar_are_accepted(client, link, vendor):
    await create(client, link.id, start_time="9999-12-31 23:58", duration=1)
    await create(client, link.id, start_time="9999-11-30 23:59", duration=31 * 24 * 60)
    await create(client, link.id, start_time="0001-01-01 00:00", duration=31 * 24 * 60)

    ends = sorted(room.end_time.isoformat() for room in vendor.rooms.values())
    assert ends == ["0001-02-01T00:00:00+00:00", "9999-12-31T23:59:00+00:00", "9999-12-31T23:59:00+00:00"]


async def test_a_leap_day_is_a_real_time(client, link, vendor):
    await create(client, link.id, start_time="2028-02-29 23:59")

    assert vendor.rooms["fake-1"].start_time.isoformat() == "2028-02-29T23:59:00+00:00"


async def test_a_bad_duration_is_400(client, target):
    cases: list[tuple[Any, tuple[str, ...]]] = [
        (0, ("duration", "positive")),
        (0.0, ("duration", "positive")),
        (-0.0, ("duration", "positive")),
        (-1, ("duration", "positive")),
        (-30.5, ("duration", "positive")),
        ("30", ("duration", "number", "a string")),
        ("", ("duration", "number", "a string")),
        (True, ("duration", "number", "a boolean")),
        (False, ("duration", "number", "a boolean")),
        (None, ("duration", "number", "null")),
        ([30], ("duration", "number", "an array")),
        ({"minutes": 30}, ("duration", "number", "an object")),
        (31 * 24 * 60 + 1, ("duration", "at most")),
        (31 * 24 * 60 + 0.5, ("duration", "at most")),
        (10**9, ("duration", "at most")),
        (1e300, ("duration", "at most")),
        (10**400, ("duration", "at most")),  # an integer too large for a float
    ]
    for duration, words in cases:
        response = await client.request(target.method, target.url, json={**BODY, "duration": duration})
        assert_error(response, 400, *words, case=str(duration)[:20])
    target.assert_vendor_untouched()


async def test_a_non_finite_duration_is_400(client, target):
    for literal in ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]:
        raw = f'{{"topic": "Demo", "start_time": "2030-01-01 10:00", "duration": {literal}}}'
        response = await send_json_text(client, target, raw)
        assert_error(response, 400, "duration", case=literal)
    target.assert_vendor_untouched()


async def test_the_longest_duration_is_accepted(client, link, vendor):
    await create(client, link.id, duration=31 * 24 * 60)

    assert vendor.rooms["fake-1"].duration == 31 * 24 * 60


async def test_a_failed_patch_leaves_the_meeting_as_it_was(client, link, vendor, store):
    meeting_id = await create(client, link.id)

    response = await client.patch(meeting_url(link.id, meeting_id), json={**MOVED, "duration": -5})

    assert_error(response, 400, "duration")
    stored = await store.get_meeting(link.id, meeting_id)
    assert stored is not None and stored.duration == 30 and stored.state == MEETING_ACTIVE
    assert vendor.rooms["fake-1"].topic == "Demo with Acme"


# --- 415 and 413 ---------------------------------------------------------------------------


async def test_a_body_that_is_not_declared_json_is_415(client, target):
    for content_type in [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/json",
        "application/jsonp",
        "application/json-seq",
        "application/xml",
        "",
    ]:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        response = await client.request(target.method, target.url, content=json.dumps(BODY), headers=headers)
        assert_error(response, 415, "application/json", case=content_type)
    target.assert_vendor_untouched()


async def test_a_form_post_is_415(client, link, vendor):
    response = await client.post(meetings_url(link.id), data={"topic": "Demo"})

    assert_error(response, 415)
    assert vendor.calls == []


def padded_body(size: int) -> bytes:
    """BODY as JSON, padded with trailing whitespace to exactly ``size`` bytes."""
    raw = json.dumps(BODY).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


async def test_a_body_of_exactly_the_limit_is_accepted(client, link, config):
    response = await client.post(
        meetings_url(link.id),
        content=padded_body(config.server.max_body_bytes),
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 201, response.text


async def test_a_body_over_the_limit_is_413(client, target, config):
    limit = config.server.max_body_bytes

    response = await client.request(
        target.method, target.url, content=padded_body(limit + 1), headers={"Content-Type": "application/json"}
    )

    assert_error(response, 413, str(limit))
    target.assert_vendor_untouched()


async def test_a_streamed_body_over_the_limit_is_413_without_reading_it_all(client, target, config):
    limit = config.server.max_body_bytes
    chunk = b" " * 4096
    chunks = limit // len(chunk) * 4
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        yield json.dumps(BODY).encode()
        for _ in range(chunks):
            sent += 1
            yield chunk

    response = await client.request(
        target.method, target.url, content=stream(), headers={"Content-Type": "application/json"}
    )

    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, str(limit))
    assert sent < chunks  # it stopped reading once over the limit
    target.assert_vendor_untouched()


async def test_a_streamed_body_under_the_limit_is_accepted(client, link, vendor):
    raw = json.dumps(BODY).encode()

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 7):
            yield raw[start : start + 7]

    response = await client.post(meetings_url(link.id), content=stream(), headers={"Content-Type": "application/json"})

    assert response.status_code == 201, response.text
    assert vendor.rooms["fake-1"].topic == "Demo with Acme"


# --- 404 and 405: routing ---------------------------------------------------------------


async def test_an_unknown_path_is_a_json_404(client):
    for method in ("POST", "PATCH", "DELETE"):  # "/" is a page for a browser's GET only
        assert_error(await client.request(method, "/"), 405, "method not allowed", case=(method, "/"))
    for path in [
        "/nope",
        "/api/v1/links",
        "/api/v1/links/abc",
        "/api/v1/links/abc/other",
        "/api/v1/meetings",
        "/api/v1/links/abc/meetings/def/extra",
        "/api/v2/links/abc/meetings",
    ]:
        for method in ("GET", "POST", "PATCH", "DELETE"):
            response = await client.request(method, path)
            assert_error(response, 404, "not found", case=(method, path))


async def test_get_on_the_meetings_path_is_405(client, link, vendor):
    response = await client.get(meetings_url(link.id))

    assert_error(response, 405, "method not allowed")
    assert "POST" in response.headers["allow"]
    assert vendor.calls == []


async def test_other_methods_on_a_meeting_are_405(client, link, vendor):
    meeting_id = await create(client, link.id)

    for method in ("GET", "PUT", "POST"):
        response = await client.request(method, meeting_url(link.id, meeting_id), json=MOVED)
        assert_error(response, 405, "method not allowed", case=method)
    assert vendor.calls == [("fake", "create", "fake-1")]
    assert vendor.rooms["fake-1"].topic == "Demo with Acme"


async def test_other_methods_on_the_meetings_path_are_405(client, link, vendor):
    for method in ("PUT", "DELETE", "PATCH"):
        assert_error(await client.request(method, meetings_url(link.id), json=BODY), 405, case=method)
    assert vendor.calls == []


# --- 404: unknown links and meetings ----------------------------------------------------


async def test_an_unknown_link_is_404(client, link, vendor):
    unknown = str(uuid.uuid4())

    assert_error(await client.post(meetings_url(unknown), json=BODY), 404, "unknown link")
    assert_error(await client.patch(meeting_url(unknown, "abc"), json=BODY), 404, "unknown link")
    assert_error(await client.delete(meeting_url(unknown, "abc")), 404, "unknown link")
    assert vendor.calls == []


async def test_an_unknown_meeting_is_404(client, link, vendor):
    await create(client, link.id)

    for meeting_id in ("abc", "x" * 64, "fake-1"):  # the vendor's id is not a meeting id
        assert_error(await client.patch(meeting_url(link.id, meeting_id), json=MOVED), 404, "unknown meeting")
        assert_error(await client.delete(meeting_url(link.id, meeting_id)), 404, "unknown meeting")
    assert vendor.calls == [("fake", "create", "fake-1")]
    assert vendor.rooms["fake-1"].topic == "Demo with Acme"


BAD_IDS = ["bad$id", "a.b", "a b", "a%20b", "caf%C3%A9", "x" * 65, "a+b", "a~b", "%00", "'%20OR%201=1--"]


async def test_a_link_id_with_bad_characters_or_too_long_is_404(client, link, vendor):
    for bad in [*BAD_IDS, link.id + "x" * (65 - len(link.id)), link.id + "$"]:
        assert_error(await client.post(meetings_url(bad), json=BODY), 404, "unknown link", case=bad)
        assert_error(await client.patch(meeting_url(bad, "abc"), json=BODY), 404, "unknown link", case=bad)
        assert_error(await client.delete(meeting_url(bad, "abc")), 404, "unknown link", case=bad)
    assert vendor.calls == []


async def test_a_meeting_id_with_bad_characters_or_too_long_is_404(client, link, vendor):
    meeting_id = await create(client, link.id)

    for bad in [*BAD_IDS, meeting_id + "x" * (65 - len(meeting_id)), meeting_id + ".", meeting_id + "%20"]:
        assert_error(await client.patch(meeting_url(link.id, bad), json=MOVED), 404, "unknown meeting", case=bad)
        assert_error(await client.delete(meeting_url(link.id, bad)), 404, "unknown meeting", case=bad)
    assert vendor.calls == [("fake", "create", "fake-1")]


async def test_ids_of_64_characters_are_looked_up(client, store, vendor):
    link_id = "L" * 64

    def insert_link() -> None:
        with Session(store.engine) as session:
            session.add(LinkTable(id=link_id, pipedrive_user_id=909, company_id=808))
            session.commit()

    await anyio.to_thread.run_sync(insert_link)

    meeting_id = await create(client, link_id)
    assert_error(await client.delete(meeting_url(link_id, "m" * 64)), 404, "unknown meeting")
    assert (await client.delete(meeting_url(link_id, meeting_id))).status_code == 204
    assert_error(await client.post(meetings_url(link_id + "L"), json=BODY), 404, "unknown link")
    assert vendor.rooms == {}


async def test_an_uninstalled_link_is_410(client, link, vendor, store):
    def uninstall() -> None:
        with Session(store.engine) as session:
            session.exec(update(LinkTable).where(LinkTable.id == link.id).values(status="uninstalled"))  # type: ignore
            session.commit()

    await anyio.to_thread.run_sync(uninstall)

    assert_error(await client.post(meetings_url(link.id), json=BODY), 410, "uninstalled")
    assert_error(await client.delete(meeting_url(link.id, "abc")), 410, "uninstalled")
    assert vendor.calls == []


# --- 401 ---------------------------------------------------------------------------------


def bad_headers(config: Config) -> dict[str, str]:
    client_id, secret = config.pipedrive.client_id, config.pipedrive.client_secret
    return {
        "wrong secret": "Basic " + b64(f"{client_id}:wrong-secret"),
        "secret with a suffix": "Basic " + b64(f"{client_id}:{secret}x"),
        "secret cut short": "Basic " + b64(f"{client_id}:{secret[:-1]}"),
        "wrong client id": "Basic " + b64(f"someone-else:{secret}"),
        "secret as the client id": "Basic " + b64(f"{secret}:{client_id}"),
        "empty credentials": "Basic " + b64(":"),
        "only the client id": "Basic " + b64(f"{client_id}:"),
        "bearer scheme": "Bearer " + b64(f"{client_id}:{secret}"),
        "digest scheme": "Digest " + b64(f"{client_id}:{secret}"),
        "no scheme": b64(f"{client_id}:{secret}"),
        "scheme only": "Basic",
        "malformed base64": "Basic !!!not-base64!!!",
        "base64 with junk": "Basic " + b64(f"{client_id}:{secret}") + "$$",
        "no colon": "Basic " + b64(f"{client_id}{secret}"),
        "over-long": "Basic " + "A" * 4994,
        "over-long but right": "Basic " + b64(f"{client_id}:{secret}") + " " * 5000,
    }


AUTH_CASES = [
    "missing",
    "wrong secret",
    "secret with a suffix",
    "secret cut short",
    "wrong client id",
    "secret as the client id",
    "empty credentials",
    "only the client id",
    "bearer scheme",
    "digest scheme",
    "no scheme",
    "scheme only",
    "malformed base64",
    "base64 with junk",
    "no colon",
    "over-long",
    "over-long but right",
]


async def send_with_auth(
    client: httpx.AsyncClient, config: Config, case: str, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    request = client.build_request(method, url, **kwargs)
    if case == "missing":
        del request.headers["Authorization"]
    else:
        header = bad_headers(config)[case]
        if case == "over-long":
            assert len(header) == 5000
        request.headers["Authorization"] = header
    return await client.send(request)


async def test_post_without_the_right_credentials_is_401(client, config, link, vendor, store):
    for case in AUTH_CASES:
        response = await send_with_auth(client, config, case, "POST", meetings_url(link.id), json=BODY)
        assert_error(response, 401, case=case)
        assert response.headers["www-authenticate"] == REALM, case
    assert vendor.calls == []
    meetings, _ = await all_rows(store)
    assert meetings == []


async def test_patch_and_delete_without_the_right_credentials_are_401(client, config, link, vendor, store):
    meeting_id = await create(client, link.id)

    for case in AUTH_CASES:
        patched = await send_with_auth(client, config, case, "PATCH", meeting_url(link.id, meeting_id), json=MOVED)
        deleted = await send_with_auth(client, config, case, "DELETE", meeting_url(link.id, meeting_id))
        for response in (patched, deleted):
            assert_error(response, 401, case=case)
            assert response.headers["www-authenticate"] == REALM, case
    assert vendor.calls == [("fake", "create", "fake-1")]
    assert vendor.rooms["fake-1"].topic == "Demo with Acme"
    assert (await store.get_meeting(link.id, meeting_id)).state == MEETING_ACTIVE  # type: ignore[union-attr]


async def test_401_comes_before_looking_up_the_link(client, config):
    """Without credentials nobody learns whether a link exists."""
    for link_id in (str(uuid.uuid4()), "bad$id"):
        response = await send_with_auth(client, config, "wrong secret", "POST", meetings_url(link_id), json=BODY)
        assert_error(response, 401)


async def test_401_messages_do_not_reveal_which_half_was_wrong(client, config, link):
    messages = set()
    for case in ("wrong secret", "wrong client id", "only the client id", "secret cut short"):
        response = await send_with_auth(client, config, case, "POST", meetings_url(link.id), json=BODY)
        messages.add(assert_error(response, 401))
    assert len(messages) == 1
    assert config.pipedrive.client_secret not in messages.pop()


async def test_the_scheme_is_case_insensitive(client, config, link, vendor):
    token = b64(f"{config.pipedrive.client_id}:{config.pipedrive.client_secret}")

    for scheme in ("basic", "BASIC", "bAsIc"):
        headers = {"Authorization": f"{scheme} {token}"}
        created = await client.post(meetings_url(link.id), json=BODY, headers=headers)
        assert created.status_code == 201, (scheme, created.text)
        meeting_id = created.json()["data"]["meeting_id"]
        patched = await client.patch(meeting_url(link.id, meeting_id), json=MOVED, headers=headers)
        assert patched.status_code == 204, (scheme, patched.text)
        deleted = await client.delete(meeting_url(link.id, meeting_id), headers=headers)
        assert deleted.status_code == 204, (scheme, deleted.text)
    assert [c[1] for c in vendor.calls] == ["create", "update", "delete"] * 3
    assert vendor.rooms == {}


async def test_the_client_credentials_are_what_the_config_says(client, config, link):
    response = await client.post(
        meetings_url(link.id), json=BODY, headers=basic_auth(config.pipedrive.client_id, config.pipedrive.client_secret)
    )
    assert response.status_code == 201, response.text


# --- vendor failures ----------------------------------------------------------------------


def status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://video.example.com/api/rooms")
    return httpx.HTTPStatusError("refused", request=request, response=httpx.Response(status, request=request))


@pytest.mark.parametrize(
    ("exc", "status", "words"),
    [
        (BackendError("Fake Video has no rooms left this month"), 502, ("Fake Video has no rooms left this month",)),
        (BackendUnavailable("Fake Video is down for maintenance"), 503, ("Fake Video is down for maintenance",)),
        (BackendTimeout("Fake Video is slow"), 504, ("Fake Video is slow",)),
        (httpx.ConnectError("connection refused"), 503, ("Fake Video", "could not be reached", "ConnectError")),
        (httpx.RemoteProtocolError("peer closed"), 503, ("Fake Video", "could not be reached")),
        (httpx.ReadTimeout("timed out"), 504, ("Fake Video", "did not answer")),
        (httpx.ConnectTimeout("timed out"), 504, ("Fake Video", "did not answer")),
        (status_error(500), 502, ("Fake Video", "HTTP 500")),
        (status_error(401), 502, ("Fake Video", "HTTP 401")),
    ],
)
async def test_a_failed_create_maps_to_its_status_and_leaves_nothing_behind(
    client, link, vendor, store, exc, status, words
):
    vendor.fail["create"] = exc

    response = await client.post(meetings_url(link.id), json=BODY)

    assert_error(response, status, *words)
    assert vendor.rooms == {}
    meetings, secrets = await all_rows(store)
    assert meetings == [] and secrets == []

    # the next call works again
    await create(client, link.id)
    assert len(vendor.rooms) == 1


async def test_a_backend_crash_is_502_without_internals(client, link, vendor, store):
    vendor.fail["create"] = RuntimeError("boom at /srv/bridge/secret_module.py line 42 token=abc123")

    response = await client.post(meetings_url(link.id), json=BODY)

    message = assert_error(response, 502, "Fake Video", "create")
    for leak in ("Traceback", "RuntimeError", "boom", "secret_module", "abc123", 'File "'):
        assert leak not in response.text
    assert "boom" not in message
    meetings, _ = await all_rows(store)
    assert meetings == []


async def test_a_vendor_slower_than_the_deadline_is_504(
    tmp_path: Path, database_url: str, config: Config, store: Store, link: Link, fake_plugin: Any, vendor: Any
):
    fast = make_config(
        tmp_path,
        database_url,
        vault={"keys": list(config.vault.keys)},
        server={"backend_timeout_seconds": 0.2},
        meetings={"default_backend": "fake", "allowed_backends": ["fake", "other"]},
    )
    vendor.delay = 30.0

    async with bridge_client(fast, [fake_plugin]) as client:
        started = time.monotonic()
        response = await client.post(meetings_url(link.id), json=BODY)
        elapsed = time.monotonic() - started

    assert_error(response, 504, "Fake Video", "0.2 seconds")
    assert elapsed < 10
    assert vendor.rooms == {} and vendor.calls == []
    meetings, secrets = await all_rows(store)
    assert meetings == [] and secrets == []


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (BackendError("Fake Video refused the change"), 502),
        (httpx.ConnectError("x"), 503),
        (httpx.ReadTimeout("x"), 504),
        (RuntimeError("boom"), 502),
    ],
)
async def test_a_failed_update_leaves_the_meeting_as_it_was(client, link, vendor, store, exc, status):
    meeting_id = await create(client, link.id)
    vendor.fail["update"] = exc

    response = await client.patch(meeting_url(link.id, meeting_id), json=MOVED)

    assert_error(response, status)
    assert "boom" not in response.text
    assert vendor.rooms["fake-1"].topic == "Demo with Acme"
    stored = await store.get_meeting(link.id, meeting_id)
    assert stored is not None and stored.duration == 30 and stored.state == MEETING_ACTIVE
    room = await store.get_room(meeting_id)
    assert room is not None and "Demo with Acme" in room.invitation

    retry = await client.patch(meeting_url(link.id, meeting_id), json=MOVED)
    assert retry.status_code == 204, retry.text
    assert vendor.rooms["fake-1"].topic == "Moved demo"


@pytest.mark.parametrize("exc", [httpx.ConnectError("x"), httpx.ReadTimeout("x")], ids=["refused", "timeout"])
async def test_a_delete_the_vendor_fails_for_now_is_retried_until_the_room_is_gone(client, link, vendor, store, exc):
    meeting_id = await create(client, link.id)
    vendor.fail["delete"] = exc

    assert (await client.delete(meeting_url(link.id, meeting_id))).status_code == 204
    assert (await store.get_meeting(link.id, meeting_id)).state == MEETING_DELETED  # type: ignore[union-attr]

    await wait_until(lambda: vendor.rooms == {}, what="the room's removal by the outbox worker")
    await wait_for_empty_outbox(store)


async def test_a_delete_the_vendor_refuses_ends_failed_and_is_not_retried(client, link, vendor, store):
    meeting_id = await create(client, link.id)
    vendor.fail["delete"] = BackendError("Fake Video refused: this room belongs to another account")

    assert (await client.delete(meeting_url(link.id, meeting_id))).status_code == 204

    [job] = await store.jobs()
    assert job.state == "failed" and job.attempts == 1
    assert job.last_error and "another account" in job.last_error
    await anyio.sleep(0.5)  # ten of the worker's rounds: it leaves a refused job alone
    [still] = await store.jobs()
    assert still.attempts == 1 and "fake-1" in vendor.rooms


# --- the bridge itself failing ---------------------------------------------------------------


async def test_an_unavailable_database_is_503(client, link, vendor, monkeypatch):
    async def failing_lookup(self: Store, *args: Any, **kwargs: Any) -> None:
        raise StoreError("database unavailable: OperationalError at 10.0.0.5")

    monkeypatch.setattr(bridge.storage.store.Store, "claim_meeting", failing_lookup)

    response = await client.post(meetings_url(link.id), json=BODY)

    assert_error(response, 503, "database")
    assert "10.0.0.5" not in response.text
    assert vendor.calls == []


async def test_an_unexpected_error_is_a_json_500_without_internals(client, link, monkeypatch):
    async def crashing_create(self: MeetingService, *args: Any) -> None:
        raise RuntimeError("boom at /srv/bridge/secret_module.py")

    monkeypatch.setattr(MeetingService, "create", crashing_create)

    response = await client.post(meetings_url(link.id), json=BODY, headers={"X-Request-ID": "req-500"})

    assert_error(response, 500, "X-Request-ID")
    assert response.headers["x-request-id"] == "req-500"
    for leak in ("Traceback", "RuntimeError", "boom", "secret_module"):
        assert leak not in response.text
