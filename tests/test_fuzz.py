"""Hostile input: generated requests against the real app, and property tests of the parsers.

Schemathesis reads the app's own ``/openapi.json`` and builds requests from it,
valid ones and ones that break the schema on purpose (wrong types, missing
fields, junk bodies, odd headers, other methods), and sends them to the ASGI app
with its lifespan running, on SQLite with the fake backend: with Pipedrive's
credentials, half of them on a link and meetings that exist (so bodies reach
validation and the vendor), and without credentials. Whatever arrives, the
bridge never answers 5xx and every 4xx is ``{"success": false, "error": "..."}``.

Hypothesis checks the two parsers every request goes through: ``parse_meeting``
on any JSON value, ``check_basic_auth`` on any header. It also sends what the
document cannot describe to the running app: topics with lone surrogates and
other odd Unicode, boundary dates (years 0001 and 9999, Feb 29 and 30, 23:59)
with long meetings, and uninstall notices with every field of any type and size
(numbers past 2**63, 5,000-digit strings, other scripts' digits).
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import re
import string
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema
import pytest
import schemathesis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bridge.api.auth import MAX_HEADER_LENGTH, basic_auth, check_basic_auth
from bridge.api.openapi import build_openapi
from bridge.api.routes import ID_PATTERN, MEETING, POST_MEETING
from bridge.api.validation import LATEST_END, MAX_DURATION_MINUTES, MAX_TOPIC_LENGTH, parse_meeting
from bridge.app import create_app
from bridge.config import Config
from bridge.errors import BadRequest, Unauthorized
from bridge.runtime import open_store, prepare_database
from bridge.testing import bridge_client, make_config
from bridge.vendors.interface import MeetingRequest
from bridge.vendors.registry import load_plugins

# Generated requests per (operation, generation mode): 6 runs with credentials, 6 without, about 1,900
# requests in all with schemathesis' coverage cases (each boundary, each field broken in turn, other methods)
# and the health checks; the file runs in under a minute. PVB_SOAK=1 sends ten times as many.
SCALE = 10 if os.environ.get("PVB_SOAK") == "1" else 1
EXAMPLES = {True: 200 * SCALE, False: 50 * SCALE}  # authenticated or not
REVERSE_API = [("POST", POST_MEETING), ("PATCH", MEETING), ("DELETE", MEETING)]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
CONFORMANCE = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def fuzz_settings(max_examples: int) -> settings:
    # one app for all examples of a run is the point (it keeps its state), hence the fixture health check
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )


# --- the app under fire -----------------------------------------------------------------


@dataclass
class Target:
    """The app being fuzzed, what exists in its database, and the statuses it answered."""

    app: Any
    config: Config
    link_id: str
    patch_meeting: str
    delete_meeting: str
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def auth(self) -> dict[str, str]:
        return basic_auth(self.config.pipedrive.client_id, self.config.pipedrive.client_secret)

    def existing(self, method: str, path: str) -> dict[str, str]:
        """Path parameters naming a link and a meeting that exist (delete gets its own meeting)."""
        if path == POST_MEETING:
            return {"link_id": self.link_id}
        meeting = self.patch_meeting if method == "PATCH" else self.delete_meeting
        return {"link_id": self.link_id, "meeting_id": meeting}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    # a small body limit, so generated bodies hit the 413 path too
    return make_config(
        tmp_path,
        # schemathesis' ASGI client sends Host: testserver, and the bridge answers only its own host
        server={"max_body_bytes": 4096, "public_url": "http://testserver"},
        meetings={"default_backend": "fake", "allowed_backends": ["fake", "other"]},
    )


@pytest.fixture
def target(config: Config, fake_plugin: Any) -> Iterator[Target]:
    async def seed() -> tuple[str, list[str]]:
        """A link, and two meetings on it (one to move, one to delete), made through the app."""
        store = open_store(config)
        try:
            await prepare_database(store, config)
            link_id = (await store.create_link(pipedrive_user_id=7, company_id=8, user_name="Fuzz")).id
        finally:
            store.close()
        meetings = []
        async with bridge_client(config, [fake_plugin]) as client:
            for topic in ("moved by the fuzzer", "deleted by the fuzzer"):
                answer = await client.post(
                    f"/api/v1/links/{link_id}/meetings",
                    json={"topic": topic, "start_time": "2031-01-01 10:00", "duration": 30},
                )
                assert answer.status_code == 201, answer.text
                meetings.append(answer.json()["data"]["meeting_id"])
        return link_id, meetings

    link_id, meetings = anyio.run(seed)
    app = create_app(config, load_plugins([fake_plugin], entry_points=False))
    try:
        yield Target(app, config, link_id, *meetings)
    finally:
        # schemathesis starts the app's lifespan on its first request and keeps it up until told
        asgi.shutdown_lifespans()


@pytest.fixture
def api(target: Target) -> Any:
    """The schema as the app serves it."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", target.app)
    schema.validate()
    return schema


def assert_answer(response: Any, *, authenticated: bool, other_method: bool, path_parameters: dict[str, Any]) -> None:
    """No 5xx; a 4xx in Pipedrive's error shape; without credentials, a routable reverse-API call is 401."""
    status = response.status_code
    headers = {name.lower(): values[0] for name, values in response.headers.items()}
    assert status < 500, (status, response.text)
    assert headers.get("x-request-id"), headers
    if status >= 400:
        assert headers.get("content-type", "").startswith("application/json"), headers
        body = json.loads(response.content)
        assert isinstance(body, dict) and set(body) == {"success", "error"} and body["success"] is False, body
        assert isinstance(body["error"], str) and body["error"].strip(), body
    if authenticated:
        assert status != 401, response.text
    elif path_parameters:
        routable = all(isinstance(v, str) and re.fullmatch(ID_PATTERN, v) for v in path_parameters.values())
        # routing answers first: an id no route takes is 404, another method 405; the rest needs credentials
        assert status == 401 or (not routable and status in (404, 405)) or (other_method and status == 405), (
            status,
            response.text,
        )


def send(case: Any, target: Target, method: str, *, authenticated: bool) -> None:
    if authenticated:
        # in the case itself, not as call(headers=...): a case whose negation dropped the header would drop it again
        case.headers = {**(case.headers or {}), **target.auth}
    response = case.call()
    target.statuses[response.status_code] += 1
    # the answer is one the document promises: a listed status, its media type and schema
    case.validate_response(response, checks=CONFORMANCE)
    assert_answer(
        response,
        authenticated=authenticated,
        other_method=case.method.upper() != method,
        path_parameters=dict(case.path_parameters or {}),
    )


# --- generated requests -------------------------------------------------------------------


@pytest.mark.parametrize("authenticated", [True, False], ids=["authenticated", "unauthenticated"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize(("method", "path"), REVERSE_API, ids=[m for m, _ in REVERSE_API])
def test_generated_requests(
    api: Any, target: Target, method: str, path: str, mode: GenerationMode, authenticated: bool
) -> None:
    operation = api[path][method]
    # half on the link and meeting that exist, half on generated ids
    cases = st.one_of(
        operation.as_strategy(mode, path_parameters=target.existing(method, path)), operation.as_strategy(mode)
    )

    @fuzz_settings(EXAMPLES[authenticated])
    @given(case=cases)
    def run(case: Any) -> None:
        send(case, target, method, authenticated=authenticated)

    run()
    assert sum(target.statuses.values()) >= EXAMPLES[authenticated] // 2, target.statuses
    if authenticated and mode is GenerationMode.POSITIVE:
        # valid requests got through: rooms made, moved, removed
        assert target.statuses[201 if method == "POST" else 204] > 0, target.statuses


@pytest.mark.parametrize("authenticated", [True, False], ids=["authenticated", "unauthenticated"])
def test_coverage_cases(api: Any, target: Target, authenticated: bool) -> None:
    """Schemathesis' deterministic cases: each boundary, each field missing or of each wrong type, other methods."""
    sent = 0
    for method, path in [*REVERSE_API, ("GET", "/healthz"), ("GET", "/readyz")]:
        operation = api[path][method]
        config = api.config.generation_for(operation=operation)
        for case in api.iter_coverage_cases(operation, generation_modes=MODES, generation_config=config):
            same_operation = authenticated and case.path_parameters and case.method.upper() == method
            if (
                same_operation
                and zlib.crc32(json.dumps(case.path_parameters, sort_keys=True, default=str).encode()) % 2
            ):
                case.path_parameters = {**case.path_parameters, **target.existing(method, path)}
            send(case, target, method, authenticated=authenticated)
            sent += 1
    assert sent >= 100, target.statuses


def test_health_checks(api: Any, target: Target) -> None:
    for path in ("/healthz", "/readyz"):

        @fuzz_settings(20 * SCALE)
        @given(case=api[path]["GET"].as_strategy())
        def run(case: Any) -> None:
            response = case.call()
            assert response.status_code == 200, response.text
            assert response.headers.get("x-request-id", [""])[0]

        run()


# --- parse_meeting --------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
SURROGATES = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
ODD_CHARACTERS = st.characters(whitelist_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp", "Zs", "Mn", "Nd", "No"))
TOPICS = (
    st.text()
    | st.text(alphabet=" \t\n\u00a0\u2003\x1c\x85x", max_size=20)
    | st.text(alphabet=ODD_CHARACTERS, max_size=20)
    | st.builds(lambda head, bad, tail: head + bad + tail, st.text(max_size=5), SURROGATES, st.text(max_size=5))
    | st.just("x" * MAX_TOPIC_LENGTH)
    | st.just("x" * (MAX_TOPIC_LENGTH + 1))
    | JSON_VALUES
)
BOUNDARY_TIMES = st.builds(
    lambda year, month_day, clock: f"{year:04d}-{month_day} {clock}",
    st.sampled_from([1, 2, 4, 100, 1900, 2000, 2024, 2100, 9996, 9998, 9999]),
    st.sampled_from(["01-01", "02-28", "02-29", "02-30", "12-01", "12-31"]),
    st.sampled_from(["00:00", "00:01", "12:00", "23:00", "23:58", "23:59"]),
)
START_TIMES = (
    BOUNDARY_TIMES
    | st.from_regex(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}", fullmatch=True)
    | st.from_regex(r"[0-9٠-٩]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(:00)?Z?\n?", fullmatch=True)
    | JSON_VALUES
)
DURATIONS = (
    st.integers()
    | st.floats()
    | st.integers(MAX_DURATION_MINUTES - 2, MAX_DURATION_MINUTES)
    | st.integers(1, 3)
    | st.sampled_from(
        [
            0,
            -0.0,
            1e-300,
            MAX_DURATION_MINUTES,
            MAX_DURATION_MINUTES + 1,
            MAX_DURATION_MINUTES + 0.5,
            math.inf,
            math.nan,
            True,
            False,
            "30",
            None,
        ]
    )
)
MEETING_LIKE = st.fixed_dictionaries(
    {}, optional={"topic": TOPICS, "start_time": START_TIMES, "duration": DURATIONS, "extra": JSON_VALUES}
)


@fuzz_settings(1000 * SCALE)
@given(body=JSON_VALUES | MEETING_LIKE)
@example(body={"topic": "x", "start_time": "2024-02-30 10:00", "duration": 1})
@example(body={"topic": "x", "start_time": "0000-01-01 10:00", "duration": 1})
@example(body={"topic": "x", "start_time": "2024-01-01 10:00", "duration": 10**400})
@example(body={"topic": "x", "start_time": "2024-01-01 10:00", "duration": float("nan")})
@example(body={"topic": "\ud800", "start_time": "2024-01-01 10:00", "duration": 1})
@example(body={"topic": "x", "start_time": "9999-12-31 23:59", "duration": MAX_DURATION_MINUTES})
@example(body={"topic": "x", "start_time": "0001-01-01 00:00", "duration": MAX_DURATION_MINUTES})
def test_parse_meeting_answers_a_meeting_or_bad_request(body: Any) -> None:
    try:
        meeting = parse_meeting(body)
    except BadRequest as exc:
        assert exc.status == 400 and exc.message.strip() and len(exc.message) <= 300
        return
    assert isinstance(meeting, MeetingRequest)
    assert 0 < len(meeting.topic) <= MAX_TOPIC_LENGTH and meeting.topic == " ".join(meeting.topic.split())
    assert meeting.start_time.tzinfo is UTC
    assert isinstance(meeting.duration, int) and 0 < meeting.duration <= MAX_DURATION_MINUTES
    # what the core and every backend do with it next: encode the topic, compute the end
    meeting.topic.encode()
    assert meeting.end_time <= LATEST_END


# --- bodies and uninstall notices through HTTP ---------------------------------------------
# schemathesis builds bodies from the document, which never holds a lone surrogate, a boundary date or an
# uninstall notice; these send the strategies above to the running app, one app for all examples.


class Browserless:
    """The app (lifespan running, in a portal's event loop) behind the test kit's client, called synchronously."""

    def __init__(self, portal: BlockingPortal, http: httpx.AsyncClient, config: Config, link_id: str) -> None:
        self.portal, self.http, self.config, self.link_id = portal, http, config, link_id

    def send(self, method: str, url: str, body: Any) -> httpx.Response:
        # ensure_ascii writes a lone surrogate as its escape, the way a hostile client would send it
        content = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
        call = functools.partial(
            self.http.request, method, url, content=content, headers={"Content-Type": "application/json"}
        )
        return self.portal.call(call)


@pytest.fixture
def client(tmp_path: Path, fake_plugin: Any) -> Iterator[Browserless]:
    """A link of user 7 at company 8, and a body limit that lets long ids in."""
    config = make_config(
        tmp_path,
        server={"max_body_bytes": 65536},
        meetings={"default_backend": "fake", "allowed_backends": ["fake", "other"]},
    )

    async def seed() -> str:
        store = open_store(config)
        try:
            await prepare_database(store, config)
            return (await store.create_link(pipedrive_user_id=7, company_id=8, user_name="Fuzz")).id
        finally:
            store.close()

    link_id = anyio.run(seed)
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(bridge_client(config, [fake_plugin])) as http,
    ):
        yield Browserless(portal, http, config, link_id)


def assert_json_answer(response: Any) -> None:
    """No 5xx, and a 4xx is Pipedrive's error shape."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"success", "error"} and body["success"] is False and body["error"].strip(), body


# bodies that mostly reach the backend: odd but often valid topics, boundary dates, long meetings
NEARLY_VALID = st.fixed_dictionaries(
    {
        "topic": st.text(min_size=1, max_size=20)
        | st.builds(lambda head, bad: head + bad, st.text(max_size=5), SURROGATES),
        "start_time": BOUNDARY_TIMES,
        "duration": st.integers(1, MAX_DURATION_MINUTES) | st.sampled_from([1, 61, MAX_DURATION_MINUTES]),
    }
)


@fuzz_settings(150 * SCALE)
@given(body=MEETING_LIKE | NEARLY_VALID, patch=st.booleans())
@example(body={"topic": "\ud800", "start_time": "2031-01-01 10:00", "duration": 30}, patch=False)
@example(body={"topic": "\ud800", "start_time": "2031-01-01 10:00", "duration": 30}, patch=True)
@example(body={"topic": "x", "start_time": "9999-12-31 23:59", "duration": MAX_DURATION_MINUTES}, patch=False)
@example(body={"topic": "x", "start_time": "9999-12-31 23:59", "duration": MAX_DURATION_MINUTES}, patch=True)
def test_odd_meeting_bodies_never_get_a_5xx(client: Browserless, body: Any, patch: bool) -> None:
    url = f"/api/v1/links/{client.link_id}/meetings"
    if patch:
        made = client.send("POST", url, {"topic": "moved", "start_time": "2031-01-01 10:00", "duration": 30})
        assert made.status_code == 201, made.text
        url += "/" + made.json()["data"]["meeting_id"]
    response = client.send("PATCH" if patch else "POST", url, body)
    assert_json_answer(response)
    try:
        parse_meeting(body)
    except BadRequest as exc:
        assert response.status_code == 400 and response.json()["error"] == exc.message, response.text
    else:
        assert response.status_code == (204 if patch else 201), response.text


UNINSTALL_IDS = (
    st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.from_regex(r"[0-9]{1,25}", fullmatch=True)
    | st.text(alphabet=st.characters(whitelist_categories=("Nd", "No", "Nl")), min_size=1, max_size=25)
    | st.builds(
        lambda digits, pad: pad + digits + pad, st.from_regex(r"[0-9]{1,5}", fullmatch=True), st.text(max_size=2)
    )
    | st.sampled_from([0, 1, 7, 8, 2**63 - 1, 2**63, -1, 10**30, "9" * 5000, "²", "١٢", "１２", "0", "007", 1.0, 1e300])
    | JSON_VALUES
)


def _expected_id(value: Any) -> int | None:
    """The uninstall notice's rule for an id, written out: a whole number from 1 to 2**63 - 1, as a JSON
    number or a string of at most 19 ASCII digits."""
    if isinstance(value, str) and 1 <= len(value) <= 19 and all(c in "0123456789" for c in value):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2**63:
        return value
    return None


@fuzz_settings(250 * SCALE)
@example(body={"client_id": "test-client", "company_id": "²", "user_id": 1})
@example(body={"client_id": "test-client", "company_id": 1, "user_id": "9" * 5000})
@example(body={"client_id": "test-client", "company_id": 10**30, "user_id": 1})
@example(body={"client_id": "test-client", "company_id": "١٢", "user_id": "١٢"})
@given(
    body=st.fixed_dictionaries(
        {},
        optional={
            "client_id": st.just("test-client") | JSON_VALUES,
            "company_id": UNINSTALL_IDS,
            "user_id": UNINSTALL_IDS,
            "timestamp": st.just("2030-01-01T10:00:00.000Z") | JSON_VALUES,
            "extra": JSON_VALUES,
        },
    )
    | JSON_VALUES
)
def test_odd_uninstall_notices_never_get_a_5xx(client: Browserless, body: Any) -> None:
    config = client.config
    if isinstance(body, dict) and body.get("client_id") == "test-client":
        body["client_id"] = config.pipedrive.client_id
    response = client.send("DELETE", "/oauth/callback", body)
    assert_json_answer(response)
    valid = (
        isinstance(body, dict)
        and body.get("client_id") == config.pipedrive.client_id
        and _expected_id(body.get("company_id")) is not None
        and _expected_id(body.get("user_id")) is not None
    )
    assert response.status_code == (200 if valid else 400), (str(body)[:200], response.text)


def _form(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} {moment.hour:02d}:{moment.minute:02d}"


WORDS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)).filter(lambda c: not c.isspace()), min_size=1, max_size=30
)
VALID_TOPICS = st.lists(WORDS, min_size=1, max_size=8).map(" ".join).filter(lambda t: len(t) <= MAX_TOPIC_LENGTH)
VALID_TIMES = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59)).map(
    lambda moment: moment.replace(second=0, microsecond=0, tzinfo=UTC)
)
VALID_DURATIONS = st.integers(1, MAX_DURATION_MINUTES) | st.floats(min_value=1e-9, max_value=MAX_DURATION_MINUTES)


@fuzz_settings(300 * SCALE)
@given(
    topic=VALID_TOPICS,
    moment=VALID_TIMES,
    duration=VALID_DURATIONS,
    padding=st.sampled_from(["", " ", "\t\n ", "\u00a0"]),
)
def test_valid_meetings_round_trip(topic: str, moment: datetime, duration: float, padding: str) -> None:
    body = {
        "topic": padding + topic.replace(" ", " " + padding) + padding,
        "start_time": _form(moment),
        "duration": duration,
    }
    if LATEST_END - moment < timedelta(minutes=math.ceil(duration)):
        with pytest.raises(BadRequest, match="start_time plus duration"):
            parse_meeting(json.loads(json.dumps(body)))
        return
    meeting = parse_meeting(json.loads(json.dumps(body)))
    assert meeting == MeetingRequest(topic=topic, start_time=moment, duration=math.ceil(duration))
    # what the bridge understood, written back the way Pipedrive writes it, reads the same
    again = {"topic": meeting.topic, "start_time": _form(meeting.start_time), "duration": meeting.duration}
    assert parse_meeting(again) == meeting


def _schema_accepts(body: Any) -> bool:
    schema = build_openapi()["components"]["schemas"]["MeetingRequest"]
    return jsonschema.Draft4Validator(schema).is_valid(body)  # OpenAPI 3.0's schema dialect


@pytest.mark.parametrize(
    "body",
    [
        {"topic": "x" * MAX_TOPIC_LENGTH, "start_time": "2030-01-01 10:00", "duration": 1},
        {"topic": "x" * (MAX_TOPIC_LENGTH + 1), "start_time": "2030-01-01 10:00", "duration": 1},
        {"topic": "", "start_time": "2030-01-01 10:00", "duration": 1},
        {"topic": "   ", "start_time": "2030-01-01 10:00", "duration": 1},
        {"topic": "x", "start_time": "2030-01-01 10:00", "duration": MAX_DURATION_MINUTES},
        {"topic": "x", "start_time": "2030-01-01 10:00", "duration": MAX_DURATION_MINUTES + 0.5},
        {"topic": "x", "start_time": "2030-01-01 10:00", "duration": 0},
        {"topic": "x", "start_time": "2030-01-01 10:00", "duration": 0.001},
        {"topic": "x", "start_time": "2030-01-01 10:00", "duration": -1},
        {"topic": "x", "start_time": "2030-01-01 10:00", "duration": True},
        {"topic": "x", "start_time": "2030-01-01 10:00", "duration": "30"},
        {"topic": "x", "start_time": "2030-01-01T10:00", "duration": 30},
        {"topic": "x", "start_time": "2030-01-01 10:00:00", "duration": 30},
        {"topic": "x", "start_time": " 2030-01-01 10:00", "duration": 30},
        {"topic": "x", "duration": 30},
        {"start_time": "2030-01-01 10:00", "duration": 30},
        {"topic": "x", "start_time": "2030-01-01 10:00"},
        {"topic": "x", "start_time": "2030-01-01 10:00", "duration": 30, "ignored": [1, 2]},
    ],
)
def test_the_documented_body_schema_agrees_with_validation(body: dict[str, Any]) -> None:
    """At each limit the OpenAPI schema (built from validation's constants) and parse_meeting say the same."""
    try:
        parse_meeting(body)
        accepted = True
    except BadRequest:
        accepted = False
    assert _schema_accepts(body) is accepted


# --- check_basic_auth -----------------------------------------------------------------------

CLIENT_ID = "pd-client-1a2b"
CLIENT_SECRET = "s3cr3t:with/colon+and=signs"
VALID_HEADER = basic_auth(CLIENT_ID, CLIENT_SECRET)["Authorization"]


def _names_exactly_the_credentials(header: str) -> bool:
    scheme, _, encoded = header.strip().partition(" ")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:
        return False
    return scheme.lower() == "basic" and decoded == f"{CLIENT_ID}:{CLIENT_SECRET}".encode()


BASE64_ISH = "Basic :=+/" + string.ascii_letters + string.digits
HEADERS = (
    st.text()
    | st.text(alphabet=BASE64_ISH)
    | st.builds(lambda user, password: basic_auth(user, password)["Authorization"], st.text(), st.text())
    | st.builds(lambda raw: "Basic " + base64.b64encode(raw).decode(), st.binary())
    | st.builds(lambda prefix, suffix: prefix + VALID_HEADER + suffix, st.text(max_size=3), st.text(max_size=3))
    | st.sampled_from(
        [
            VALID_HEADER,
            VALID_HEADER.lower(),
            "BASIC " + VALID_HEADER[6:],
            f"  {VALID_HEADER}\t",
            VALID_HEADER + "=",
            VALID_HEADER.replace("Basic ", "Bearer "),
            "Basic",
            "Basic ",
            VALID_HEADER + "x" * MAX_HEADER_LENGTH,
        ]
    )
)


@fuzz_settings(2000 * SCALE)
@given(header=HEADERS | st.none())
def test_basic_auth_passes_only_the_exact_credentials(header: str | None) -> None:
    try:
        check_basic_auth(header, CLIENT_ID, CLIENT_SECRET)
    except Unauthorized as exc:
        assert exc.status == 401 and exc.message
        assert header is None or not _names_exactly_the_credentials(header) or len(header) > MAX_HEADER_LENGTH
        return
    assert header is not None and _names_exactly_the_credentials(header), header


@fuzz_settings(1000 * SCALE)
@given(data=st.data())
def test_one_character_off_is_refused(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(VALID_HEADER)))
    kind = data.draw(st.sampled_from(["insert", "delete", "replace"]))
    char = data.draw(st.characters(blacklist_categories=("Cs",)))
    header = {
        "insert": VALID_HEADER[:index] + char + VALID_HEADER[index:],
        "delete": VALID_HEADER[:index] + VALID_HEADER[index + 1 :],
        "replace": VALID_HEADER[:index] + char + VALID_HEADER[index + 1 :],
    }[kind]
    if _names_exactly_the_credentials(header):  # e.g. case of the scheme, surrounding space, padding bits
        check_basic_auth(header, CLIENT_ID, CLIENT_SECRET)
    else:
        with pytest.raises(Unauthorized):
            check_basic_auth(header, CLIENT_ID, CLIENT_SECRET)


@fuzz_settings(300 * SCALE)
@given(
    client_id=st.text(min_size=1, max_size=200).filter(lambda s: ":" not in s), secret=st.text(min_size=1, max_size=200)
)
def test_any_credentials_work_for_their_own_app(client_id: str, secret: str) -> None:
    check_basic_auth(basic_auth(client_id, secret)["Authorization"], client_id, secret)
    with pytest.raises(Unauthorized):
        check_basic_auth(basic_auth(client_id, secret + "x")["Authorization"], client_id, secret)
