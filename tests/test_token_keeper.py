"""The token primitive (``bridge.plugin.TokenKeeper``): fresh tokens, one refresh, leases, compare-and-swap.

The store-backed cases run on SQLite and PostgreSQL; a slow token endpoint is a
real server on loopback that takes seconds to answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.config import Config
from bridge.errors import ServiceUnavailable
from bridge.plugin import (
    Backend,
    BackendContext,
    BackendError,
    BackendUnavailable,
    GrantRefused,
    MeetingRequest,
    Room,
    Token,
    TokenKeeper,
    TokenRefused,
    hookimpl,
    render_invitation,
    token_answer,
)
from bridge.storage.credentials import ScopedCredentials
from bridge.storage.store import Store
from bridge.testing import InMemoryCredentials, bridge_client, make_config, prepared_store, serve_on_loopback

pytestmark = pytest.mark.anyio

NAME = "vendor_token"


class Issuer:
    """A token endpoint's counterpart in memory: each refresh issues the next token, after ``delay``."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0
        self.refuse = False
        self.during: Any = None  # awaited while the "request" is in flight
        self._numbers = count(1)

    async def refresh(self, current: Token | None) -> Token:
        self.calls += 1
        if self.during is not None:
            await self.during()
        await anyio.sleep(self.delay)
        if self.refuse:
            raise TokenRefused("invalid_grant")
        number = next(self._numbers)
        return Token(f"access-{number}", time.time() + 3600, f"refresh-{number}")


def expired(access: str = "access-0") -> str:
    return Token(access, time.time() - 10, "refresh-0", extra={"kept": "along"}).dump()


@pytest.fixture
async def scoped(store: Store) -> ScopedCredentials:
    return ScopedCredentials(store, "backend:test")


# --- the primitive on its own ------------------------------------------------------------


async def test_a_fresh_token_is_used_as_stored() -> None:
    store, issuer = InMemoryCredentials(), Issuer()
    store.values[NAME] = Token("stored", time.time() + 3600).dump()
    token = await TokenKeeper(NAME).token(store, issuer.refresh)
    assert token.access_token == "stored" and issuer.calls == 0


async def test_a_due_token_is_refreshed_and_stored_with_its_extra_fields_kept_by_the_refresh() -> None:
    store, issuer = InMemoryCredentials(), Issuer()
    store.values[NAME] = Token("old", time.time() + 100, "refresh-0").dump()  # inside the 300 s margin
    token = await TokenKeeper(NAME).token(store, issuer.refresh)
    assert token.access_token == "access-1" and issuer.calls == 1
    assert Token.load(store.values[NAME]) == token and store.refreshes == {"ok": 1}


async def test_a_stale_access_token_is_replaced_even_when_it_looks_fresh() -> None:
    store, issuer = InMemoryCredentials(), Issuer()
    store.values[NAME] = Token("refused-by-the-vendor", time.time() + 3600, "r").dump()
    keeper = TokenKeeper(NAME)
    assert (await keeper.token(store, issuer.refresh, stale="refused-by-the-vendor")).access_token == "access-1"
    assert (await keeper.token(store, issuer.refresh, stale="refused-by-the-vendor")).access_token == "access-1"
    assert issuer.calls == 1, "a stale token already replaced is not replaced again"


async def test_a_token_the_keeper_does_not_accept_is_replaced() -> None:
    """A fresh token issued to another app (the config changed) is not used: a new one is fetched once."""
    store = InMemoryCredentials()
    store.values[NAME] = Token("of-another-app", time.time() + 3600, extra={"client_id": "old"}).dump()
    calls = 0

    async def fetch(_current: Token | None) -> Token:
        nonlocal calls
        calls += 1
        return Token(f"of-this-app-{calls}", time.time() + 3600, extra={"client_id": "new"})

    keeper = TokenKeeper(NAME, usable=lambda token: token.extra.get("client_id") == "new")
    assert (await keeper.token(store, fetch)).access_token == "of-this-app-1"
    assert (await keeper.token(store, fetch)).access_token == "of-this-app-1" and calls == 1


async def test_a_refused_refresh_is_recorded_and_never_asked_again() -> None:
    store, issuer = InMemoryCredentials(), Issuer()
    store.values[NAME] = expired()
    issuer.refuse = True
    keeper = TokenKeeper(NAME)
    for _ in range(3):
        with pytest.raises(TokenRefused):
            await keeper.token(store, issuer.refresh)
    stored = Token.load(store.values[NAME])
    assert stored is not None and stored.refused and stored.extra == {"kept": "along"}
    assert issuer.calls == 1 and store.refreshes == {"refused": 1}


async def test_an_error_of_the_refresh_reaches_the_caller_and_stores_nothing() -> None:
    store = InMemoryCredentials()
    store.values[NAME] = before = expired()

    async def failing(_current: Token | None) -> Token:
        raise BackendError("the vendor's token endpoint is down")

    with pytest.raises(BackendError, match="down"):
        await TokenKeeper(NAME).token(store, failing)
    assert store.values[NAME] == before and store.refreshes == {"error": 1}


async def test_old_records_of_the_zoom_plugin_are_read() -> None:
    """A connection stored by the first release (``needs_reconnect``) still reads as refused."""
    token = Token.load(
        '{"access_token": "a", "refresh_token": "r", "expires_at": 1, "needs_reconnect": true, '
        '"settings_url": "https://bridge.example.com/settings"}'
    )
    assert (
        token is not None and token.refused and token.extra == {"settings_url": "https://bridge.example.com/settings"}
    )
    assert Token.load("not json") is None and Token.load('{"access_token": 1}') is None and Token.load(None) is None


# --- through the store: one refresh, leases, compare-and-swap ------------------------------


async def test_a_hundred_callers_share_one_refresh(scoped: ScopedCredentials, store: Store) -> None:
    await store.put_secret("backend:test", NAME, expired())
    issuer, keeper = Issuer(delay=0.2), TokenKeeper(NAME)
    tokens: list[Token] = []

    async def call() -> None:
        tokens.append(await keeper.token(scoped, issuer.refresh))

    async with anyio.create_task_group() as tasks:
        for _ in range(100):
            tasks.start_soon(call)
    assert issuer.calls == 1 and {t.access_token for t in tokens} == {"access-1"}


async def test_two_keepers_like_two_replicas_refresh_once(scoped: ScopedCredentials, store: Store) -> None:
    """Separate keepers share nothing in memory; the lease and the re-read under it make it one refresh."""
    await store.put_secret("backend:test", NAME, expired())
    issuer = Issuer(delay=0.3)
    keepers = [TokenKeeper(NAME), TokenKeeper(NAME)]
    tokens: list[Token] = []

    async def call(keeper: TokenKeeper) -> None:
        tokens.append(await keeper.token(ScopedCredentials(store, "backend:test"), issuer.refresh))

    async with anyio.create_task_group() as tasks:
        for keeper in keepers * 5:
            tasks.start_soon(call, keeper)
    assert issuer.calls == 1 and {t.access_token for t in tokens} == {"access-1"}


@pytest.mark.parametrize("meanwhile", ["erased", "replaced"])
async def test_a_refresh_finishing_late_never_overwrites_an_erase_or_a_newer_value(
    scoped: ScopedCredentials, store: Store, meanwhile: str
) -> None:
    """An uninstall erases, a re-install writes new tokens, while the token endpoint is answering: they win."""
    await store.put_secret("backend:test", NAME, expired())
    issuer, newer = Issuer(), Token("from-the-new-install", time.time() + 3600, "new-refresh").dump()

    async def act() -> None:
        if meanwhile == "erased":
            await store.delete_secret("backend:test", NAME)
        else:
            await store.put_secret("backend:test", NAME, newer)
        issuer.during = None

    issuer.during = act
    if meanwhile == "erased":
        with pytest.raises(TokenRefused):  # what is stored now (nothing) decides; the issuer is asked once more
            await TokenKeeper(NAME).token(scoped, _needs_a_token(issuer))
        assert await store.get_secret("backend:test", NAME) is None
    else:
        token = await TokenKeeper(NAME).token(scoped, issuer.refresh)
        assert token.access_token == "from-the-new-install"
        assert await store.get_secret("backend:test", NAME) == newer
    assert issuer.calls == 1


def _needs_a_token(issuer: Issuer) -> Any:
    async def refresh(current: Token | None) -> Token:
        if current is None:
            raise TokenRefused("nothing stored: connect again")
        return await issuer.refresh(current)

    return refresh


async def test_a_lease_left_by_a_killed_holder_expires(scoped: ScopedCredentials, store: Store) -> None:
    await store.put_secret("backend:test", NAME, expired())
    assert await store.take_lease(f"backend:test/{NAME}", "a-process-that-was-killed", 1.0)
    issuer = Issuer()
    started = time.monotonic()
    token = await TokenKeeper(NAME, lease_seconds=5).token(scoped, issuer.refresh)
    waited = time.monotonic() - started
    assert token.access_token == "access-1" and issuer.calls == 1
    assert 0.8 < waited < 4, waited


async def test_a_lease_held_for_too_long_is_a_503(scoped: ScopedCredentials, store: Store) -> None:
    await store.put_secret("backend:test", NAME, expired())
    assert await store.take_lease(f"backend:test/{NAME}", "a-slow-replica", 30.0)
    with pytest.raises(ServiceUnavailable):
        await TokenKeeper(NAME, lease_seconds=0.5).token(scoped, Issuer().refresh)


# --- TokenAuth: the token on every request, one refresh on a 401 ----------------------------


async def test_token_auth_attaches_the_token_and_refreshes_once_on_a_401() -> None:
    store, issuer = InMemoryCredentials(), Issuer()
    store.values[NAME] = Token("revoked-early", time.time() + 3600, "r").dump()
    seen: list[str] = []

    def vendor(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(
            401 if request.headers["authorization"] == "Bearer revoked-early" else 200,
            json={"body": request.content.decode()},
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(vendor)) as http:
        answer = await http.post(
            "https://vendor.example/meetings", content=b"payload", auth=TokenKeeper(NAME).auth(store, issuer.refresh)
        )
        assert answer.status_code == 200 and answer.json() == {"body": "payload"}
        assert seen == ["Bearer revoked-early", "Bearer access-1"] and issuer.calls == 1

        seen.clear()
        always = await http.get(
            "https://vendor.example/x",
            auth=TokenKeeper(NAME).auth(store, issuer.refresh, refused=lambda response: response.status_code == 200),
        )
        assert always.status_code == 200 and len(seen) == 2, "refreshed once, then the answer is the caller's"


# --- the figure: a slow token endpoint delays nobody else ------------------------------------


@pytest.fixture
def slow_token_server() -> Iterator[tuple[str, dict[str, int]]]:
    """A token endpoint that takes 3 seconds to answer."""
    served = {"tokens": 0}

    async def token(_request: Request) -> Response:
        await anyio.sleep(3.0)
        served["tokens"] += 1
        return JSONResponse({"access_token": f"slow-{served['tokens']}", "expires_in": 3600})

    with serve_on_loopback(lambda _url: Starlette(routes=[Route("/token", token, methods=["POST"])])) as url:
        yield url, served


def token_plugin(token_url: str) -> Any:
    """``tokened``: each meeting needs the company's vendor token (fetched from ``token_url``); ``plain`` none."""
    keeper = TokenKeeper("company_token")

    def room(ctx: BackendContext, name: str, meeting: MeetingRequest) -> Room:
        url = f"https://video.example.com/{name}"
        return Room(vendor_meeting_id=name, join_url=url, invitation=render_invitation(meeting, url, user=ctx.user))

    class Tokened(Backend):
        name = "tokened"
        title = "Tokened Video"

        async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
            async def fetch(_stored: Token | None) -> Token:
                answer = (await ctx.http.post(token_url)).json()
                return Token(answer["access_token"], time.time() + answer["expires_in"])

            token = await keeper.token(ctx.shared, fetch)
            return room(ctx, f"t-{token.access_token}-{time.monotonic_ns()}", meeting)

        async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> None:
            return None

        async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
            return None

    class Plain(Tokened):
        name = "plain"
        title = "Plain Video"

        async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
            return room(ctx, f"p-{time.monotonic_ns()}", meeting)

    class Plugin:
        __name__ = "token-plugin"

        @staticmethod
        @hookimpl
        def register_backends(register: Any) -> None:
            register(Tokened)
            register(Plain)

    return Plugin()


@pytest.fixture
def sqlite_config(tmp_path: Path) -> Config:
    return make_config(
        tmp_path,
        meetings={"default_backend": "plain", "allowed_backends": ["plain", "tokened"]},
        server={"backend_timeout_seconds": 20},
    )


async def test_while_a_token_request_takes_seconds_other_users_meetings_are_not_delayed(
    sqlite_config: Config, slow_token_server: tuple[str, dict[str, int]]
) -> None:
    """SQLite, the embedded default: the refresh holds no database lock while the token endpoint answers."""
    url, served = slow_token_server
    async with prepared_store(sqlite_config) as store:
        waiting = await store.create_link(pipedrive_user_id=1, company_id=9, user_name="Ada")
        await store.set_link_backend(waiting.id, "tokened")
        others = [
            await store.create_link(pipedrive_user_id=10 + n, company_id=9, user_name=f"User {n}") for n in range(5)
        ]
    body = {"topic": "Demo", "start_time": "2031-05-14 09:30", "duration": 30}
    timings: dict[str, float] = {}

    async with bridge_client(sqlite_config, [token_plugin(url + "/token")]) as client:

        async def post(label: str, link_id: str) -> None:
            started = time.perf_counter()
            answer = await client.post(f"/api/v1/links/{link_id}/meetings", json=body)
            assert answer.status_code == 201, answer.text
            timings[label] = time.perf_counter() - started

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(post, "tokened", waiting.id)
            await anyio.sleep(0.3)  # the token request is in flight now
            for n, link in enumerate(others):
                tasks.start_soon(post, f"plain-{n}", link.id)

    assert served["tokens"] == 1 and timings["tokened"] >= 3.0
    slowest = max(value for label, value in timings.items() if label != "tokened")
    assert slowest < 0.5, f"another user's meeting took {slowest:.2f} s while a token request took 3 s"


async def test_one_keeper_serves_many_users_without_mixing_their_tokens(store: Store) -> None:
    """A plugin keeps one keeper per backend; each user's store refreshes on its own, never shared."""
    keeper, issued = TokenKeeper(NAME), count(1)
    users = [f"link:user-{n}:backend:test" for n in range(4)]
    for scope in users:
        await store.put_secret(scope, NAME, expired())

    async def refresh_for(scope: str) -> Any:
        async def refresh(_current: Token | None) -> Token:
            await anyio.sleep(0.2)  # all four in flight at once
            return Token(f"{scope}-{next(issued)}", time.time() + 3600, "r")

        return refresh

    tokens: dict[str, Token] = {}

    async def call(scope: str) -> None:
        tokens[scope] = await keeper.token(ScopedCredentials(store, scope), await refresh_for(scope))

    async with anyio.create_task_group() as tasks:
        for scope in users * 3:
            tasks.start_soon(call, scope)
    assert all(token.access_token.startswith(scope) for scope, token in tokens.items())
    assert sorted(int(token.access_token.rsplit("-", 1)[1]) for token in tokens.values()) == [1, 2, 3, 4]


# --- reading a token endpoint's answer (bridge.plugin.token_answer) ----------------------------


def token_response(status: int, body: Any = None, text: str | None = None) -> httpx.Response:
    request = httpx.Request("POST", "https://login.example/token")
    if text is not None:
        return httpx.Response(status, text=text, request=request)
    return httpx.Response(status, json=body, request=request)


def test_a_token_answer_gives_the_token_its_expiry_and_the_refresh_token() -> None:
    before = time.time()
    answer = token_answer(token_response(200, {"access_token": "at", "expires_in": 3600, "refresh_token": "rt"}), "X")
    assert (answer.access_token, answer.refresh_token) == ("at", "rt")
    assert before + 3600 <= answer.expires_at <= time.time() + 3600
    digits = token_answer(token_response(200, {"access_token": "at", "expires_in": "3599"}), "X")
    assert digits.refresh_token is None and digits.expires_at > before + 3500


@pytest.mark.parametrize(
    ("body", "description"),
    [
        ({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, "Token has been"),
        ({"error": "invalid_client", "reason": "Invalid client_id or client_secret"}, "Invalid client_id"),
        ({"error": "invalid_request"}, ""),
    ],
)
def test_an_oauth_error_answer_is_grant_refused_with_what_the_issuer_said(
    body: dict[str, Any], description: str
) -> None:
    with pytest.raises(GrantRefused) as raised:
        token_answer(token_response(400, body), "X")
    assert raised.value.error == body["error"] and raised.value.description.startswith(description)
    assert raised.value.body == body


@pytest.mark.parametrize(
    "response",
    [
        token_response(200, {"access_token": "", "expires_in": 3600}),
        token_response(200, {"access_token": "at", "expires_in": True}),
        token_response(200, {"access_token": "at"}),
        token_response(200, ["not", "an", "object"]),
        token_response(200, text="<html>sign-in page</html>"),
        token_response(401, {"message": "no OAuth error field"}),
    ],
)
def test_an_answer_without_a_usable_token_is_a_clear_backend_error(response: httpx.Response) -> None:
    with pytest.raises(BackendError, match=r"^Acme's token endpoint gave no usable answer \(HTTP \d+\)$"):
        token_answer(response, "Acme")


def test_throttling_and_server_errors_are_the_cores() -> None:
    with pytest.raises(BackendUnavailable):
        token_answer(token_response(503, {"error": "temporarily_unavailable"}), "Acme")
