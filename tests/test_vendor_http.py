"""The core's vendor retry policy (``bridge.vendors.http``): RetryTransport and raise_for_vendor.

Unit tests put an ``httpx.MockTransport`` that plays a vendor's answers under the
RetryTransport; the end-to-end tests run the app with a tiny backend that calls a
fake vendor served on loopback, and look at what Pipedrive gets.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.config import Config
from bridge.devtools.loopback import serve_on_loopback
from bridge.errors import BackendError, BackendUnavailable, VendorFailed
from bridge.storage.links import Link
from bridge.testing import bridge_client, make_config, prepared_store
from bridge.vendors.hookspecs import hookimpl
from bridge.vendors.http import (
    IDEMPOTENT_EXTENSION,
    RETRY_EXTENSION,
    THROTTLED_EXTENSION,
    RetryPolicy,
    RetryTransport,
    raise_for_vendor,
    retry_after_seconds,
    shared_client,
)
from bridge.vendors.interface import Backend, BackendContext, MeetingRequest, Room
from bridge.vendors.invitation import render_invitation

pytestmark = pytest.mark.anyio

POLICY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, max_retry_after=2.0)
URL = "https://vendor.example/v1/rooms"

Answer = httpx.Response | Exception


class ScriptedVendor:
    """Plays the given answers in order (the last one again once they run out) and counts the calls."""

    def __init__(self, answers: Iterable[Answer]) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer


class CutOffBody(httpx.AsyncByteStream):
    """A body whose connection drops after the headers arrived."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"id": '
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


def answer(status: int, headers: Mapping[str, str] | None = None, **body: Any) -> httpx.Response:
    return httpx.Response(status, headers=headers, json=body or {"status": status})


def client(
    vendor: ScriptedVendor, policy: RetryPolicy = POLICY, on_retry: Callable[[str, str], None] | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=RetryTransport(httpx.MockTransport(vendor), policy, on_retry=on_retry))


async def call(vendor: ScriptedVendor, method: str, policy: RetryPolicy = POLICY, **kwargs: Any) -> httpx.Response:
    async with client(vendor, policy) as http:
        return await http.request(method, URL, **kwargs)


# --- what is retried, for which method ----------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("status", [429, 503])
async def test_throttled_or_unavailable_is_retried_for_every_method(method: str, status: int) -> None:
    vendor = ScriptedVendor([answer(status), answer(status), answer(201)])
    response = await call(vendor, method)
    assert response.status_code == 201 and vendor.calls == 3


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize("status", [500, 502, 504])
async def test_server_errors_are_retried_for_methods_safe_to_repeat(method: str, status: int) -> None:
    vendor = ScriptedVendor([answer(status), answer(200)])
    response = await call(vendor, method)
    assert response.status_code == 200 and vendor.calls == 2


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_server_errors_are_not_retried_for_post(status: int) -> None:
    vendor = ScriptedVendor([answer(status), answer(201)])
    response = await call(vendor, "POST")
    assert response.status_code == status and vendor.calls == 1, "a POST that may have made a room is not repeated"


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize("error", [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("dropped")])
async def test_read_timeouts_and_drops_are_retried_for_methods_safe_to_repeat(method: str, error: Exception) -> None:
    vendor = ScriptedVendor([error, answer(200)])
    response = await call(vendor, method)
    assert response.status_code == 200 and vendor.calls == 2


@pytest.mark.parametrize("error", [httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("dropped")])
async def test_read_timeouts_and_drops_are_not_retried_for_post(error: Exception) -> None:
    vendor = ScriptedVendor([error, answer(201)])
    with pytest.raises(type(error)):
        await call(vendor, "POST")
    assert vendor.calls == 1


@pytest.mark.parametrize("first", [answer(500), answer(502), httpx.ReadTimeout("timed out"), httpx.ReadError("reset")])
async def test_a_post_the_vendor_makes_idempotent_is_retried_as_a_put_is(first: Answer) -> None:
    vendor = ScriptedVendor([first, answer(201)])
    response = await call(vendor, "POST", extensions={IDEMPOTENT_EXTENSION: True})
    assert response.status_code == 201 and vendor.calls == 2


async def test_an_answer_the_vendor_calls_a_throttle_is_retried_as_a_429_is() -> None:
    def throttled(response: httpx.Response) -> bool:
        return response.status_code == 403 and response.json().get("reason") == "rateLimitExceeded"

    vendor = ScriptedVendor([answer(403, {"Retry-After": "0"}, reason="rateLimitExceeded"), answer(201)])
    response = await call(vendor, "POST", extensions={THROTTLED_EXTENSION: throttled})
    assert response.status_code == 201 and vendor.calls == 2
    refused = ScriptedVendor([answer(403, reason="forbidden"), answer(201)])
    response = await call(refused, "POST", extensions={THROTTLED_EXTENSION: throttled})
    assert response.status_code == 403 and refused.calls == 1, "any other 403 is the vendor's answer"
    lasting = ScriptedVendor([answer(403, reason="rateLimitExceeded")])
    response = await call(lasting, "GET", extensions={THROTTLED_EXTENSION: throttled})
    assert response.status_code == 403 and lasting.calls == POLICY.attempts, "bounded like any retry"


async def test_a_body_cut_off_is_retried_for_get_but_not_for_post() -> None:
    vendor = ScriptedVendor([httpx.Response(200, stream=CutOffBody()), answer(200, id="r-1")])
    response = await call(vendor, "GET")
    assert response.json() == {"id": "r-1"} and vendor.calls == 2

    vendor = ScriptedVendor([httpx.Response(201, stream=CutOffBody()), answer(201, id="r-1")])
    with pytest.raises(httpx.RemoteProtocolError):
        await call(vendor, "POST")
    assert vendor.calls == 1


async def test_connection_errors_are_retried_even_for_post() -> None:
    vendor = ScriptedVendor([httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), answer(201)])
    response = await call(vendor, "POST")
    assert response.status_code == 201 and vendor.calls == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
async def test_client_errors_are_never_retried(status: int) -> None:
    vendor = ScriptedVendor([answer(status), answer(200)])
    response = await call(vendor, "GET")
    assert response.status_code == status and vendor.calls == 1


# --- bounded attempts, the final answer -------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 4])
async def test_attempts_are_bounded_and_the_last_answer_is_returned(attempts: int) -> None:
    vendor = ScriptedVendor([answer(503, attempt=n) for n in range(1, attempts + 3)])
    response = await call(vendor, "GET", RetryPolicy(attempts=attempts, base_delay=0.01, max_delay=0.02))
    assert vendor.calls == attempts
    assert response.status_code == 503 and response.json() == {"attempt": attempts}


async def test_connection_errors_are_raised_when_the_attempts_run_out() -> None:
    vendor = ScriptedVendor([httpx.ConnectError("refused")])
    with pytest.raises(httpx.ConnectError):
        await call(vendor, "POST")
    assert vendor.calls == POLICY.attempts


async def test_backoff_grows_but_stays_small_without_retry_after() -> None:
    vendor = ScriptedVendor([answer(503)])
    started = time.monotonic()
    await call(vendor, "GET", RetryPolicy(attempts=3, base_delay=0.1, max_delay=0.15))
    # waits: 0.05..0.1, then 0.075..0.15 (capped at max_delay, times 0.5..1 jitter)
    assert 0.12 <= time.monotonic() - started < 1.5


# --- Retry-After ------------------------------------------------------------------------------------


async def test_retry_after_seconds_are_honoured() -> None:
    vendor = ScriptedVendor([answer(429, {"Retry-After": "1"}), answer(201)])
    started = time.monotonic()
    response = await call(vendor, "POST")
    assert 0.95 <= time.monotonic() - started < 3
    assert response.status_code == 201 and vendor.calls == 2


async def test_retry_after_as_an_http_date_is_honoured() -> None:
    when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    vendor = ScriptedVendor([answer(503, {"Retry-After": when}), answer(200)])
    started = time.monotonic()
    response = await call(vendor, "GET")
    assert 0.5 <= time.monotonic() - started < 3  # the date has whole seconds only
    assert response.status_code == 200 and vendor.calls == 2


def test_retry_after_forms_are_parsed() -> None:
    now = datetime(2015, 10, 21, 7, 28, tzinfo=UTC).timestamp()

    def wait(value: str) -> float | None:
        return retry_after_seconds(httpx.Response(429, headers={"Retry-After": value}), now=now)

    assert wait("120") == 120.0
    assert wait("Wed, 21 Oct 2015 07:28:30 GMT") == 30.0
    assert wait("Wed, 21 Oct 2015 07:27:00 GMT") == 0.0, "a date already past means: now"
    assert wait("soon") is None and wait("-5") is None
    assert retry_after_seconds(httpx.Response(429)) is None


@pytest.mark.parametrize("retry_after", ["3600", "Wed, 21 Oct 2099 07:28:00 GMT"])
@pytest.mark.parametrize("status", [429, 503])
async def test_a_retry_after_longer_than_allowed_is_returned_at_once(retry_after: str, status: int) -> None:
    vendor = ScriptedVendor([answer(status, {"Retry-After": retry_after}), answer(201)])
    started = time.monotonic()
    response = await call(vendor, "POST")
    assert time.monotonic() - started < 0.5
    assert response.status_code == status and vendor.calls == 1


# --- the retry predicate and the retry callback ---------------------------------------------------


async def test_the_retry_predicate_vetoes_a_retry_after_reading_the_body() -> None:
    seen: list[str] = []

    def worth_repeating(response: httpx.Response) -> bool:
        seen.append(response.json()["error"])
        return response.json()["error"] != "daily quota exceeded"

    vendor = ScriptedVendor([answer(429, error="daily quota exceeded"), answer(201)])
    response = await call(vendor, "POST", extensions={RETRY_EXTENSION: worth_repeating})
    assert response.status_code == 429 and vendor.calls == 1
    assert seen == ["daily quota exceeded"]

    vendor = ScriptedVendor([answer(429, error="per-second limit"), answer(201)])
    response = await call(vendor, "POST", extensions={RETRY_EXTENSION: worth_repeating})
    assert response.status_code == 201 and vendor.calls == 2


async def test_the_retry_predicate_is_not_asked_about_answers_never_retried() -> None:
    asked: list[int] = []
    vendor = ScriptedVendor([answer(400), answer(201)])
    response = await call(vendor, "POST", extensions={RETRY_EXTENSION: lambda r: asked.append(r.status_code)})
    assert response.status_code == 400 and asked == []


async def test_on_retry_is_told_the_host_and_the_reason() -> None:
    retries: list[tuple[str, str]] = []
    vendor = ScriptedVendor([answer(503), httpx.ConnectError("refused"), answer(200)])
    async with client(vendor, on_retry=lambda host, reason: retries.append((host, reason))) as http:
        response = await http.get(URL)
    assert response.status_code == 200
    assert retries == [("vendor.example", "HTTP 503"), ("vendor.example", "ConnectError")]


# --- raise_for_vendor -------------------------------------------------------------------------------


async def test_the_shared_client_sends_only_the_cookies_a_call_sets_itself() -> None:
    seen: list[str | None] = []

    def vendor(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(201, headers=[("set-cookie", "session=abc"), ("set-cookie", "lb=3; Path=/")])

    async with shared_client(httpx.Timeout(5.0), httpx.MockTransport(vendor), POLICY) as http:
        await http.post(URL, json={})
        await http.post(URL, json={}, headers={"Cookie": "mine=1"})
        await http.post(URL, json={})
        assert not http.cookies
    assert seen == [None, "mine=1", None]


def test_raise_for_vendor_throttled_is_503_with_the_wait() -> None:
    with pytest.raises(BackendUnavailable) as caught:
        raise_for_vendor(httpx.Response(429, headers={"Retry-After": "30"}), "Acme Video")
    assert caught.value.status == 503
    assert caught.value.message == "Acme Video is limiting requests right now; please try again in about 31 seconds"

    with pytest.raises(BackendUnavailable) as caught:
        raise_for_vendor(httpx.Response(429), "Acme Video")
    assert caught.value.message.endswith("please try again later")


def test_raise_for_vendor_unavailable_is_503() -> None:
    with pytest.raises(BackendUnavailable) as caught:
        raise_for_vendor(httpx.Response(503), "Acme Video")
    assert caught.value.status == 503 and "Acme Video" in caught.value.message


@pytest.mark.parametrize("status", [500, 502, 504])
def test_raise_for_vendor_server_error_is_502(status: int) -> None:
    with pytest.raises(BackendError) as caught:
        raise_for_vendor(httpx.Response(status), "Acme Video")
    assert type(caught.value) is VendorFailed  # a 502 for Pipedrive, and worth another try for the outbox
    assert caught.value.status == 502 and caught.value.transient and f"HTTP {status}" in caught.value.message


@pytest.mark.parametrize("status", [200, 201, 204, 400, 401, 403, 404, 409, 422])
def test_raise_for_vendor_leaves_other_answers_to_the_backend(status: int) -> None:
    assert raise_for_vendor(httpx.Response(status), "Acme Video") is None


# --- end to end: Pipedrive -> the app -> a backend -> a fake vendor on loopback ------------------------


class FakeVendor:
    """A vendor that answers ``POST /rooms`` with ``failures`` 503s first, then 201s."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def app(self) -> Starlette:
        async def rooms(request: Request) -> Response:
            self.calls += 1
            if self.calls <= self.failures:
                return JSONResponse({"error": "maintenance"}, status_code=503)
            body = await request.json()
            room_id = f"room-{self.calls}"
            return JSONResponse(
                {"id": room_id, "url": f"https://video.example/{room_id}", "topic": body["topic"]}, status_code=201
            )

        return Starlette(routes=[Route("/rooms", rooms, methods=["POST"])])


class VendorBackend(Backend):
    """A backend written like a plugin's: the core's client, then raise_for_vendor."""

    name = "flaky"
    title = "Flaky Video"

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        return cls(str(config["base_url"]))

    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        response = await ctx.http.post(f"{self.base_url}/rooms", json={"topic": meeting.topic})
        raise_for_vendor(response, self.title)
        room = response.json()
        return Room(
            vendor_meeting_id=room["id"],
            join_url=room["url"],
            invitation=render_invitation(meeting, room["url"], user=ctx.user),
        )

    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> None:
        return None

    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        return None


class VendorPlugin:
    __name__ = "flaky-vendor-plugin"

    @staticmethod
    @hookimpl
    def register_backends(register: Any) -> None:
        register(VendorBackend)


@pytest.fixture(params=[2, 10], ids=["503-twice", "503-always"])
def vendor(request: pytest.FixtureRequest) -> FakeVendor:
    return FakeVendor(failures=request.param)


@pytest.fixture
def vendor_url(vendor: FakeVendor) -> Iterator[str]:
    with serve_on_loopback(lambda url: vendor.app()) as url:
        yield url


@pytest.fixture
def config(tmp_path: Path, vendor_url: str) -> Config:
    """Overrides the suite's config: one SQLite bridge whose only backend calls the fake vendor."""
    return make_config(
        tmp_path,
        backends={"flaky": {"base_url": vendor_url}},
        meetings={"default_backend": "flaky", "allowed_backends": ["flaky"]},
        server={"vendor_attempts": 3},
    )


async def test_end_to_end_pipedrive_sees_the_vendors_recovery_or_a_503(
    config: Config, link: Link, vendor: FakeVendor
) -> None:
    async with bridge_client(config, [VendorPlugin()]) as pipedrive:
        response = await pipedrive.post(
            f"/api/v1/links/{link.id}/meetings",
            json={"topic": "Demo with Acme", "start_time": "2031-05-14 09:30", "duration": 45},
        )
        opened = await pipedrive.get(response.json()["data"]["join_url"]) if response.status_code == 201 else None
    assert vendor.calls == 3, "two retries, in the core"
    if vendor.failures < 3:
        assert response.status_code == 201, response.text
        assert response.json()["success"] is True and opened is not None
        assert opened.headers["location"] == "https://video.example/room-3"  # the room the third attempt made
    else:
        assert response.status_code == 503, response.text
        assert response.json() == {
            "success": False,
            "error": "Flaky Video is unavailable right now (HTTP 503); please try again",
        }


class CookieVendor:
    """A vendor (or the load balancer before it) that sets cookies on every answer and notes those it is sent."""

    def __init__(self) -> None:
        self.sent: list[str | None] = []

    def app(self) -> Starlette:
        async def rooms(request: Request) -> Response:
            self.sent.append(request.headers.get("cookie"))
            room_id = f"room-{len(self.sent)}"
            response = JSONResponse({"id": room_id, "url": f"https://video.example/{room_id}"}, status_code=201)
            response.set_cookie("session", f"of-the-user-of-call-{len(self.sent)}")
            response.set_cookie("lb", "backend-3", path="/")
            return response

        return Starlette(routes=[Route("/rooms", rooms, methods=["POST"])])


async def test_a_cookie_one_users_vendor_call_was_given_never_goes_out_with_another_call(tmp_path: Path) -> None:
    """The bridge's one client calls the vendor for every user: it keeps no cookie an answer sets."""
    vendor = CookieVendor()
    with serve_on_loopback(lambda url: vendor.app()) as url:
        config = make_config(
            tmp_path,
            backends={"flaky": {"base_url": url}},
            meetings={"default_backend": "flaky", "allowed_backends": ["flaky"]},
        )
        async with prepared_store(config) as store:
            links = [
                await store.create_link(
                    pipedrive_user_id=user, company_id=202, user_name="A", user_email="a@example.com"
                )
                for user in (101, 102)
            ]
        async with bridge_client(config, [VendorPlugin()]) as pipedrive:
            for user_link in (links[0], links[1], links[0]):
                response = await pipedrive.post(
                    f"/api/v1/links/{user_link.id}/meetings",
                    json={"topic": f"Demo {len(vendor.sent)}", "start_time": "2031-05-14 09:30", "duration": 45},
                )
                assert response.status_code == 201, response.text
    assert vendor.sent == [None, None, None]
