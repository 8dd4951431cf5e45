"""The install flow end to end against the fake Pipedrive on loopback, and uninstall.

Installs from a Marketplace redirect (no state) and from the bridge's own
``/oauth/install`` (signed state bound to a cookie); every way an install can
fail leaves nothing stored; re-installs, concurrent installs; Pipedrive's
uninstall notice. Each test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import html
import logging
import time
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import httpx
import pytest
from sqlalchemy import inspect, text
from sqlmodel import Session, select

import bridge.signing
from bridge.config import Config, PipedriveConfig
from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
from bridge.pipedrive.client import PipedriveClient, PipedriveError, TokenSet
from bridge.pipedrive.tokens import dump_tokens, load_tokens
from bridge.runtime import open_store
from bridge.storage.links import PIPEDRIVE_TOKENS, Link
from bridge.storage.schema import LINK_ACTIVE, LINK_UNINSTALLED, LINKS, SecretTable
from bridge.storage.secrets import backend_scope, link_scope
from bridge.storage.store import Store, StoreError
from bridge.testing import basic_auth, bridge_client, make_config
from bridge.web.sessions import SESSION_COOKIE, STATE_COOKIE, STATE_SECONDS

pytestmark = pytest.mark.anyio

BRIDGE = "http://bridge.test"
CALLBACK = "/oauth/callback"
MEETING_BODY: dict[str, Any] = {"topic": "Demo with Acme", "start_time": "2030-01-01 10:00", "duration": 30}


# --- fixtures ---------------------------------------------------------------------------


class FakeServer:
    """The running fake Pipedrive: its recorded state, and a way to stop answering."""

    def __init__(self, state: FakePipedriveState) -> None:
        self.state = state
        self._cm = running_fake_pipedrive(state)
        self._running = False

    def start(self) -> None:
        self._cm.__enter__()
        self._running = True

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._cm.__exit__(None, None, None)


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    server = FakeServer(FakePipedriveState(client_id="test-client", client_secret="set-by-the-config-fixture"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pipedrive(fake_server: FakeServer) -> FakePipedriveState:
    return fake_server.state


@pytest.fixture
def pipedrive_url(pipedrive: FakePipedriveState) -> str:
    """The fake's own base URL (``pipedrive.api_domain`` may be changed by a test)."""
    return pipedrive.api_domain


@pytest.fixture
def config(tmp_path: Path, database_url: str, pipedrive: FakePipedriveState, pipedrive_url: str) -> Config:
    config = make_config(
        tmp_path,
        database_url,
        pipedrive={"oauth_base": pipedrive_url, "api_base": pipedrive_url},
        server={"public_url": BRIDGE},
        meetings={"default_backend": "fake", "allowed_backends": ["fake", "other"]},
    )
    pipedrive.client_secret = config.pipedrive.client_secret
    return config


@pytest.fixture
async def fake_http() -> AsyncIterator[httpx.AsyncClient]:
    """A browser's view of the fake Pipedrive (its authorize page)."""
    async with httpx.AsyncClient() as http:
        yield http


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="bridge")
    return caplog


# --- helpers ----------------------------------------------------------------------------


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def marketplace_code(fake_http: httpx.AsyncClient, pipedrive: FakePipedriveState, pipedrive_url: str) -> str:
    """A code as Pipedrive's Marketplace hands it out: approved at the fake, no state of ours."""
    query = urlencode({"client_id": pipedrive.client_id, "redirect_uri": BRIDGE + CALLBACK})
    answer = await fake_http.get(f"{pipedrive_url}/oauth/authorize?{query}")
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(BRIDGE + CALLBACK + "?")
    return parse_qs(urlsplit(location).query)["code"][0]


async def marketplace_install(
    client: httpx.AsyncClient, fake_http: httpx.AsyncClient, pipedrive: FakePipedriveState, pipedrive_url: str
) -> httpx.Response:
    code = await marketplace_code(fake_http, pipedrive, pipedrive_url)
    return await client.get(CALLBACK, params={"code": code})


async def start_install(client: httpx.AsyncClient, fake_http: httpx.AsyncClient, *, deny: bool = False) -> str:
    """GET /oauth/install, approve (or deny) at the fake; the callback URL the browser is sent to."""
    start = await client.get("/oauth/install")
    assert start.status_code == 302, start.text
    authorize = start.headers["location"] + ("&deny=1" if deny else "")
    assert STATE_COOKIE in client.cookies
    answer = await fake_http.get(authorize)
    assert answer.status_code == 302
    location = answer.headers["location"]
    assert location.startswith(BRIDGE + CALLBACK + "?")
    return path_of(location)


def with_param(path: str, **changes: str) -> str:
    parts = urlsplit(path)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return f"{parts.path}?{urlencode(query)}"


def page_text(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("text/html"), response.headers
    return html.unescape(response.text)


def dump_database(store: Store) -> str:
    """Every row of every table as text: what a database dump would show."""
    chunks = []
    with store.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                chunks.append(repr(tuple(row)))
    return "\n".join(chunks)


def links(store: Store) -> list[Link]:
    with store.engine.connect() as conn:
        return [Link(**row._mapping) for row in conn.execute(select(LINKS))]


def active_links(store: Store) -> list[Link]:
    return [link for link in links(store) if link.status == LINK_ACTIVE]


def secret_rows(store: Store) -> list[SecretTable]:
    with Session(store.engine) as session:
        return list(session.exec(select(SecretTable)))


async def stored_tokens(store: Store, link_id: str) -> TokenSet | None:
    return load_tokens(await store.get_secret(link_scope(link_id), PIPEDRIVE_TOKENS))


async def all_secret_values(store: Store) -> list[str]:
    return [value for row in secret_rows(store) if (value := await store.get_secret(row.scope, row.name)) is not None]


def assert_nothing_stored(store: Store) -> None:
    assert links(store) == []
    assert secret_rows(store) == []


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Everything the bridge's own loggers wrote: messages, extra fields, tracebacks.

    Library loggers (httpx, httpcore, uvicorn) are left out: here they mostly
    trace the tests' own clients and the fake Pipedrive, and a deployment keeps
    them at WARNING (``bridge.logs.configure_logging``).
    """
    formatter = logging.Formatter()
    parts = []
    for record in caplog.records:
        if record.name != "bridge" and not record.name.startswith("bridge."):
            continue
        parts.append(record.getMessage())
        parts.append(repr({k: v for k, v in vars(record).items() if k not in ("msg", "args", "exc_info")}))
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
    return "\n".join(parts)


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture, config: Config, *values: str) -> None:
    logged = log_text(caplog)
    for value in (config.pipedrive.client_secret, *config.vault.keys, *values):
        assert value not in logged, f"a secret reached the logs: {value[:6]}..."
    assert "pd-at-" not in logged and "pd-rt-" not in logged, "a Pipedrive token reached the logs"


def tokens_issued(pipedrive: FakePipedriveState) -> list[str]:
    with pipedrive.lock:
        return [*pipedrive.access_tokens, *pipedrive.refresh_tokens, *pipedrive.revoked]


class RecordingTransport(httpx.AsyncBaseTransport):
    """The bridge's outgoing HTTP: forwards to the real network, keeps every request seen."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host not in ("127.0.0.1", "localhost"):
            raise httpx.ConnectError("the tests reach loopback only", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


# --- installs that work -----------------------------------------------------------------


async def assert_installed(store: Store, pipedrive: FakePipedriveState, config: Config) -> Link:
    """One active link for the fake's user, tokens encrypted at rest, registered at the fake."""
    [link] = links(store)
    assert link.status == LINK_ACTIVE
    user = pipedrive.user
    assert (link.pipedrive_user_id, link.company_id) == (user.id, user.company_id)
    assert (link.user_name, link.user_email) == (user.name, user.email)
    assert link.api_domain == pipedrive.api_domain
    assert link.tokens_refreshed_at is not None

    tokens = await stored_tokens(store, link.id)
    assert tokens is not None
    with pipedrive.lock:
        assert tokens.access_token in pipedrive.access_tokens
        assert tokens.refresh_token in pipedrive.refresh_tokens
    assert tokens.api_domain == pipedrive.api_domain
    assert tokens.expires_at > time.time() + 3000
    dump = dump_database(store)
    assert tokens.access_token not in dump and tokens.refresh_token not in dump
    assert "pd-at-" not in dump and "pd-rt-" not in dump

    assert pipedrive.links == {
        link.id: {
            "user_provider_id": link.id,
            "user_id": user.id,
            "company_id": user.company_id,
            "marketplace_client_id": config.pipedrive.client_id,
        }
    }
    assert str(uuid.UUID(link.id)) == link.id  # a UUID
    return link


async def test_marketplace_install_stores_encrypted_tokens_and_registers_the_link(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
    logs: pytest.LogCaptureFixture,
) -> None:
    assert STATE_COOKIE not in client.cookies
    response = await marketplace_install(client, fake_http, pipedrive, pipedrive_url)

    assert response.status_code == 302, response.text
    assert response.headers["location"] == pipedrive.api_domain  # no redirectUrl: the company's Pipedrive
    assert SESSION_COOKIE not in client.cookies, "an install without our state signs nobody in"
    await assert_installed(store, pipedrive, config)
    assert pipedrive.token_requests == {"authorization_code": 1, "refresh_token": 0}
    assert_no_secret_logged(logs, config, *tokens_issued(pipedrive))


async def test_install_from_the_bridge_carries_state_and_cookie(
    client: httpx.AsyncClient, store: Store, pipedrive: FakePipedriveState, fake_http: httpx.AsyncClient, config: Config
) -> None:
    callback = await start_install(client, fake_http)
    assert "state=" in callback and "code=" in callback

    response = await client.get(callback)

    assert response.status_code == 302, response.text
    assert response.headers["location"] == pipedrive.api_domain
    await assert_installed(store, pipedrive, config)


async def test_redirects_to_pipedrives_redirect_url_only_when_it_is_pipedrive(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
) -> None:
    followed = [
        "https://app.pipedrive.com/settings/marketplace/app/abc/app-settings",
        "https://acme.pipedrive.com/calendar",
    ]
    refused = [
        "https://evil.example.com/phish",
        "https://pipedrive.com.evil.com/settings",
        "https://evilpipedrive.com/",
        "javascript:alert(1)",
        "//evil.example.com/",
    ]
    for redirect_url, expected in [
        *((url, url) for url in followed),
        *((url, pipedrive.api_domain) for url in refused),
    ]:
        pipedrive.redirect_url = redirect_url
        response = await marketplace_install(client, fake_http, pipedrive, pipedrive_url)
        assert response.status_code == 302, response.text
        assert response.headers["location"] == expected, redirect_url
    assert len(active_links(store)) == 1


# --- state ------------------------------------------------------------------------------


def assert_state_refused(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    body = page_text(response)
    assert "expired" in body and "another browser" in body
    assert "location" not in response.headers


async def test_tampered_state_is_refused(
    client: httpx.AsyncClient, store: Store, pipedrive: FakePipedriveState, fake_http: httpx.AsyncClient
) -> None:
    callback = await start_install(client, fake_http)
    state = parse_qs(urlsplit(callback).query)["state"][0]
    body, mac = state.split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    for forged in (f"{flipped}.{mac}", f"{body}.{mac[:-2]}xx", "not-a-state", ""):
        assert_state_refused(await client.get(with_param(callback, state=forged)))
    assert pipedrive.token_requests["authorization_code"] == 0  # the code was never spent
    assert_nothing_stored(store)
    assert pipedrive.links == {}


async def test_expired_state_is_refused(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    fake_http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    callback = await start_install(client, fake_http)
    later = time.time() + STATE_SECONDS + 5
    monkeypatch.setattr(bridge.signing, "time", types.SimpleNamespace(time=lambda: later))

    assert_state_refused(await client.get(callback))
    assert pipedrive.token_requests["authorization_code"] == 0
    assert_nothing_stored(store)


async def test_state_from_another_browser_is_refused(
    client: httpx.AsyncClient, store: Store, pipedrive: FakePipedriveState, fake_http: httpx.AsyncClient
) -> None:
    callback = await start_install(client, fake_http)
    # another browser that started its own install: its cookie carries another nonce
    client.cookies.clear()
    await start_install(client, fake_http)
    assert_state_refused(await client.get(callback))
    # a browser with no state cookie at all
    client.cookies.clear()
    assert_state_refused(await client.get(callback))

    assert pipedrive.token_requests["authorization_code"] == 0
    assert_nothing_stored(store)


async def test_a_state_cookie_without_state_is_refused(
    client: httpx.AsyncClient, store: Store, pipedrive: FakePipedriveState, fake_http: httpx.AsyncClient
) -> None:
    """A callback stripped of its state in a browser that started an install is not a Marketplace install."""
    callback = await start_install(client, fake_http)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    assert_state_refused(await client.get(CALLBACK, params={"code": code}))
    assert_nothing_stored(store)


async def test_a_marketplace_install_after_one_from_the_bridge_works(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
) -> None:
    """The state cookie is spent by its callback: it must not trip a later install that has no state."""
    assert (await client.get(await start_install(client, fake_http))).status_code == 302
    assert STATE_COOKIE not in client.cookies

    response = await marketplace_install(client, fake_http, pipedrive, pipedrive_url)

    assert response.status_code == 302, response.text
    assert len(active_links(store)) == 1


@pytest.mark.parametrize("via", ["marketplace", "bridge"])
async def test_user_denied_installs_nothing(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    via: str,
) -> None:
    if via == "bridge":
        callback = await start_install(client, fake_http, deny=True)
    else:
        query = urlencode({"client_id": pipedrive.client_id, "redirect_uri": BRIDGE + CALLBACK, "deny": "1"})
        answer = await fake_http.get(f"{pipedrive_url}/oauth/authorize?{query}")
        callback = path_of(answer.headers["location"])
    assert "error=user_denied" in callback

    response = await client.get(callback)

    assert response.status_code == 400, response.text
    assert "Nothing was installed" in page_text(response)
    assert SESSION_COOKIE not in client.cookies
    assert pipedrive.token_requests["authorization_code"] == 0
    assert_nothing_stored(store)


async def test_access_denied_installs_nothing(
    client: httpx.AsyncClient, store: Store, pipedrive: FakePipedriveState
) -> None:
    response = await client.get(
        CALLBACK, params={"error": "access_denied", "error_description": "The user denied access"}
    )
    assert response.status_code == 400, response.text
    assert "Nothing was installed" in page_text(response)
    assert pipedrive.token_requests["authorization_code"] == 0
    assert_nothing_stored(store)


# --- codes ------------------------------------------------------------------------------


async def test_missing_code_says_so(client: httpx.AsyncClient, store: Store, pipedrive: FakePipedriveState) -> None:
    for query in ({}, {"code": ""}, {"code": "x" * 3000}):
        response = await client.get(CALLBACK, params=query)
        assert response.status_code == 400, response.text
        body = page_text(response)
        assert "Nothing was installed" in body and "no authorization code" in body
    assert pipedrive.token_requests["authorization_code"] == 0
    assert_nothing_stored(store)


async def test_a_code_no_oauth_server_issues_is_400_without_asking_pipedrive(
    client: httpx.AsyncClient, store: Store, pipedrive: FakePipedriveState
) -> None:
    # control characters, other scripts, and what %ED%A0%80 (a lone surrogate in UTF-8) decodes to
    for query in ("code=%00", "code=abc%0Adef", "code=%C3%A9t%C3%A9", "code=%ED%A0%80", "code=%FF", "code=\u0661"):
        response = await client.get(f"{CALLBACK}?{query}")
        assert response.status_code == 400, (query, response.text)
        assert response.headers["content-type"].startswith("text/html")
        assert "no authorization code" in page_text(response), query
    assert pipedrive.token_requests["authorization_code"] == 0
    assert_nothing_stored(store)


async def test_a_spent_code_gives_a_clear_page_and_stores_nothing(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
    logs: pytest.LogCaptureFixture,
) -> None:
    code = await marketplace_code(fake_http, pipedrive, pipedrive_url)
    spent = await fake_http.post(
        f"{pipedrive_url}/oauth/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": BRIDGE + CALLBACK},
        headers=basic_auth(pipedrive.client_id, pipedrive.client_secret),
    )
    assert spent.status_code == 200

    response = await client.get(CALLBACK, params={"code": code})

    assert response.status_code == 502, response.text
    body = page_text(response)
    assert "exchange the authorization code" in body and "start again" in body
    assert "Reference for your administrator" in body
    assert pipedrive.invalid_grants == 1
    assert_nothing_stored(store)
    assert pipedrive.links == {}
    assert_no_secret_logged(logs, config, code, *tokens_issued(pipedrive))


async def test_replaying_the_callback_changes_nothing(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
    logs: pytest.LogCaptureFixture,
) -> None:
    code = await marketplace_code(fake_http, pipedrive, pipedrive_url)
    first = await client.get(CALLBACK, params={"code": code})
    assert first.status_code == 302, first.text
    [link] = links(store)
    tokens = await stored_tokens(store, link.id)

    again = await client.get(CALLBACK, params={"code": code})  # the browser's back button

    assert again.status_code == 502, again.text
    assert "exchange the authorization code" in page_text(again)
    assert pipedrive.token_requests["authorization_code"] == 2 and pipedrive.invalid_grants == 1
    assert [(row.id, row.status) for row in links(store)] == [(link.id, LINK_ACTIVE)]
    assert await stored_tokens(store, link.id) == tokens
    assert_no_secret_logged(logs, config, code, *tokens_issued(pipedrive))


# --- api_domain -------------------------------------------------------------------------


@pytest.fixture
def recorder() -> RecordingTransport:
    return RecordingTransport()


async def test_a_forged_api_domain_is_refused_without_sending_the_token(
    tmp_path: Path,
    database_url: str,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    fake_plugin: Any,
    recorder: RecordingTransport,
    logs: pytest.LogCaptureFixture,
) -> None:
    """With no api_base configured, only https://<company>.pipedrive.com is trusted with a bearer token."""
    config = make_config(
        tmp_path,
        database_url,
        pipedrive={"oauth_base": pipedrive_url},
        server={"public_url": BRIDGE},
        meetings={"default_backend": "fake", "allowed_backends": ["fake"]},
    )
    pipedrive.client_secret = config.pipedrive.client_secret
    forged = [
        "https://evil.example.com",
        "https://pipedrive.com.evil.com",
        "http://acme.pipedrive.com",
        pipedrive_url,
    ]  # the fake itself: plain http on loopback is not Pipedrive either

    async with bridge_client(config, [fake_plugin], transport=recorder) as client:
        for api_domain in forged:
            pipedrive.api_domain = api_domain  # what the token endpoint will answer
            response = await marketplace_install(client, fake_http, pipedrive, pipedrive_url)
            assert response.status_code == 502, response.text
            assert "exchange the authorization code" in page_text(response)

    assert pipedrive.token_requests["authorization_code"] == len(forged)
    assert {str(r.url) for r in recorder.requests} == {f"{pipedrive_url}/oauth/token"}
    assert not any(r.headers.get("authorization", "").startswith("Bearer") for r in recorder.requests)
    assert pipedrive.links == {}
    check = open_store(config)
    try:
        assert_nothing_stored(check)
    finally:
        check.close()
    assert_no_secret_logged(logs, config, *tokens_issued(pipedrive))


async def test_an_api_domain_other_than_the_configured_api_base_is_refused(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
) -> None:
    pipedrive.api_domain = "https://acme.pipedrive.com"  # genuine-looking, but not the configured api_base
    response = await marketplace_install(client, fake_http, pipedrive, pipedrive_url)
    assert response.status_code == 502, response.text
    assert_nothing_stored(store)
    assert pipedrive.links == {}


def _token_answer(api_domain: str) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(
                200,
                json={
                    "access_token": "at-1",
                    "refresh_token": "rt-1",
                    "expires_in": 3599,
                    "scope": "base,video-calls",
                    "token_type": "Bearer",
                    "api_domain": api_domain,
                },
            )
        raise AssertionError(f"no request may leave for {request.url}")

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    "api_domain", ["https://acme.pipedrive.com", "https://acme.pipedrive.com/", "https://my-company-2.pipedrive.com"]
)
async def test_check_api_domain_accepts_company_domains(api_domain: str) -> None:
    config = PipedriveConfig(client_id="cid", client_secret="secret-xyz")
    async with httpx.AsyncClient(transport=_token_answer(api_domain)) as http:
        tokens = await PipedriveClient(config, http).exchange_code("code", "https://bridge.example.com/cb")
    assert tokens.api_domain == api_domain.rstrip("/")


@pytest.mark.parametrize(
    "api_domain",
    [
        "http://acme.pipedrive.com",
        "https://pipedrive.com.evil.com",
        "https://acme.pipedrive.com:8443",
        "https://user@acme.pipedrive.com",
        "https://user:pw@acme.pipedrive.com",
        "https://:pw@acme.pipedrive.com",
        "https://acme.pipedrive.com/path",
        "https://acme.pipedrive.com?x=1",
        "https://acme.pipedrive.com#fragment",
        "https://@acme.pipedrive.com",
        "https://evil.example.com",
        "https://pipedrive.com",
        "https://acme.pipedrive.com.",
        "ftp://acme.pipedrive.com",
        "acme.pipedrive.com",
    ],
)
async def test_check_api_domain_rejects_everything_else(api_domain: str) -> None:
    config = PipedriveConfig(client_id="cid", client_secret="secret-xyz")
    async with httpx.AsyncClient(transport=_token_answer(api_domain)) as http:
        client = PipedriveClient(config, http)
        with pytest.raises(PipedriveError) as caught:
            await client.exchange_code("code", "https://bridge.example.com/cb")
        assert caught.value.step == "exchange the authorization code"
        # tokens carrying such a domain (say, stored earlier) are never sent there either
        forged = TokenSet("at-1", "rt-1", time.time() + 3600, "", api_domain)
        with pytest.raises((ValueError, PipedriveError)):
            await client.me(forged)


# --- registration and storage failures ---------------------------------------------------


async def test_refused_registration_names_the_step_and_stores_nothing(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
    logs: pytest.LogCaptureFixture,
) -> None:
    pipedrive.fail_link_registration = True
    response = await marketplace_install(client, fake_http, pipedrive, pipedrive_url)

    assert response.status_code == 502, response.text
    body = page_text(response)
    assert "register the video calling link" in body and "video-calls" in body
    assert SESSION_COOKIE not in client.cookies
    assert_nothing_stored(store)
    assert pipedrive.links == {}
    assert_no_secret_logged(logs, config, *tokens_issued(pipedrive))


async def test_a_store_failure_after_registration_withdraws_the_link(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
    logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(self: Store, link: Link, tokens: str) -> Link:
        raise StoreError("database unavailable: OperationalError")

    monkeypatch.setattr(Store, "save_install", broken)
    response = await marketplace_install(client, fake_http, pipedrive, pipedrive_url)

    assert response.status_code == 503, response.text
    assert "nothing was installed" in page_text(response)
    assert SESSION_COOKIE not in client.cookies
    assert len(pipedrive.removed_links) == 1
    assert pipedrive.links == {}  # registered, then withdrawn
    assert_nothing_stored(store)
    assert_no_secret_logged(logs, config, *tokens_issued(pipedrive))


# --- re-installs ------------------------------------------------------------------------


async def test_reinstall_keeps_the_link_and_replaces_the_tokens(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
) -> None:
    assert (await marketplace_install(client, fake_http, pipedrive, pipedrive_url)).status_code == 302
    [first] = links(store)
    old = await stored_tokens(store, first.id)
    assert old is not None
    pipedrive.user.name, pipedrive.user.email = "Sam Renamed", "sam.renamed@example.com"

    callback = await start_install(client, fake_http)  # the second time through the bridge's own start
    assert (await client.get(callback)).status_code == 302

    [again] = links(store)
    assert again.id == first.id and again.status == LINK_ACTIVE
    assert (again.user_name, again.user_email) == ("Sam Renamed", "sam.renamed@example.com")
    new = await stored_tokens(store, first.id)
    assert new is not None and new.refresh_token != old.refresh_token and new.access_token != old.access_token
    values = "\n".join(await all_secret_values(store))
    assert old.refresh_token not in values and old.access_token not in values
    assert list(pipedrive.links) == [first.id]


async def test_install_after_uninstall_makes_a_new_link(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
) -> None:
    assert (await marketplace_install(client, fake_http, pipedrive, pipedrive_url)).status_code == 302
    [first] = links(store)
    assert (await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive))).status_code == 200

    assert (await marketplace_install(client, fake_http, pipedrive, pipedrive_url)).status_code == 302

    rows = {row.id: row.status for row in links(store)}
    assert len(rows) == 2 and rows[first.id] == LINK_UNINSTALLED
    [active] = active_links(store)
    assert active.id != first.id
    assert await stored_tokens(store, first.id) is None
    assert await stored_tokens(store, active.id) is not None
    assert list(pipedrive.links) == [active.id]


async def test_reinstall_repairs_a_link_that_needs_reinstall(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
) -> None:
    """Pipedrive refused the refresh token; the user installs again, later uninstalls: nothing of theirs stays."""
    assert (await marketplace_install(client, fake_http, pipedrive, pipedrive_url)).status_code == 302
    [first] = links(store)
    await store.set_link_backend(first.id, "other")
    await store.put_secret(backend_scope(first.id, "other"), "api_key", "vendor-api-key-abcdef")
    await store.set_link_status(first.id, "needs_reinstall")

    assert (await marketplace_install(client, fake_http, pipedrive, pipedrive_url)).status_code == 302

    [active] = active_links(store)
    assert active.id == first.id and len(links(store)) == 1  # the same linkId Pipedrive knows
    assert active.backend == "other"  # the user's choice survives
    assert list(pipedrive.links) == [first.id]

    assert (await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive))).status_code == 200
    assert secret_rows(store) == []
    assert [row.status for row in links(store)] == [LINK_UNINSTALLED]


async def test_concurrent_installs_leave_one_active_link(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
) -> None:
    codes = [await marketplace_code(fake_http, pipedrive, pipedrive_url) for _ in range(2)]
    responses: list[httpx.Response] = []

    async def install(code: str) -> None:
        responses.append(await client.get(CALLBACK, params={"code": code}))

    async with anyio.create_task_group() as tasks:
        for code in codes:
            tasks.start_soon(install, code)

    statuses = sorted(r.status_code for r in responses)
    assert statuses in ([302, 302], [302, 503]), [r.text for r in responses]
    [active] = active_links(store)
    assert await stored_tokens(store, active.id) is not None
    assert {row.scope for row in secret_rows(store)} == {link_scope(active.id)}
    assert list(pipedrive.links) == [active.id]  # a losing install withdrew its registration


# --- uninstall --------------------------------------------------------------------------


def uninstall_body(config: Config, pipedrive: FakePipedriveState, **overrides: Any) -> dict[str, Any]:
    return {
        "client_id": config.pipedrive.client_id,
        "company_id": pipedrive.user.company_id,
        "user_id": pipedrive.user.id,
        "timestamp": "2030-01-01T10:00:00.000Z",
        **overrides,
    }


async def installed_with_meeting(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
) -> tuple[Link, str]:
    """An installed link with a meeting and a backend credential."""
    assert (await marketplace_install(client, fake_http, pipedrive, pipedrive_url)).status_code == 302
    [link] = links(store)
    created = await client.post(f"/api/v1/links/{link.id}/meetings", json=MEETING_BODY)
    assert created.status_code == 201, created.text
    await store.put_secret(backend_scope(link.id, "fake"), "oauth_tokens", "vendor-refresh-token-123456")
    await store.put_secret(backend_scope(link.id, "other"), "api_key", "vendor-api-key-abcdef")
    return link, created.json()["data"]["meeting_id"]


def secrets_of(store: Store, link_id: str) -> list[str]:
    return [
        f"{row.scope}/{row.name}"
        for row in secret_rows(store)
        if row.scope == link_scope(link_id) or row.scope.startswith(link_scope(link_id) + ":")
    ]


async def assert_meetings_gone(client: httpx.AsyncClient, link_id: str, meeting_id: str) -> None:
    url = f"/api/v1/links/{link_id}/meetings"
    for response in (
        await client.patch(f"{url}/{meeting_id}", json=MEETING_BODY),
        await client.delete(f"{url}/{meeting_id}"),
        await client.post(url, json=MEETING_BODY),
    ):
        assert response.status_code == 410, response.text
        assert response.json()["success"] is False
        assert "install the app again" in response.json()["error"]


async def test_uninstall_unregisters_revokes_and_erases(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
    logs: pytest.LogCaptureFixture,
) -> None:
    link, meeting_id = await installed_with_meeting(client, store, pipedrive, pipedrive_url, fake_http)
    tokens = await stored_tokens(store, link.id)
    assert tokens is not None and len(secrets_of(store, link.id)) == 3

    response = await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive))

    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    assert pipedrive.removed_links == [link.id] and pipedrive.links == {}
    assert pipedrive.revoked == [tokens.refresh_token]
    assert pipedrive.token_requests["refresh_token"] == 0  # the tokens were still fresh
    [row] = links(store)
    assert row.status == LINK_UNINSTALLED
    assert secrets_of(store, link.id) == []
    assert await store.get_secret(backend_scope(link.id, "fake"), "oauth_tokens") is None
    assert "vendor-refresh-token-123456" not in "\n".join(await all_secret_values(store))
    await assert_meetings_gone(client, link.id, meeting_id)
    assert_no_secret_logged(logs, config, *tokens_issued(pipedrive), "vendor-refresh-token-123456")


async def test_a_repeated_uninstall_changes_nothing(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
) -> None:
    _link, _ = await installed_with_meeting(client, store, pipedrive, pipedrive_url, fake_http)
    assert (await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive))).status_code == 200
    seen = (list(pipedrive.removed_links), list(pipedrive.revoked), dict(pipedrive.token_requests))
    before = [(row.id, row.status, row.updated_at) for row in links(store)]

    again = await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive))

    assert again.status_code == 200 and again.json() == {"success": True}
    assert (pipedrive.removed_links, pipedrive.revoked, pipedrive.token_requests) == seen
    assert [(row.id, row.status, row.updated_at) for row in links(store)] == before


async def test_uninstall_of_an_unknown_user_is_a_no_op(
    client: httpx.AsyncClient, store: Store, pipedrive: FakePipedriveState, config: Config
) -> None:
    response = await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive, user_id=999))
    assert response.status_code == 200 and response.json() == {"success": True}
    assert pipedrive.removed_links == [] and pipedrive.revoked == []


async def test_uninstall_with_wrong_credentials_is_401(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
) -> None:
    assert (await marketplace_install(client, fake_http, pipedrive, pipedrive_url)).status_code == 302
    [link] = links(store)
    client.headers.pop("authorization")
    for headers in (
        {},
        {"Authorization": "Bearer something"},
        basic_auth(config.pipedrive.client_id, "wrong-secret"),
        basic_auth("other-client", config.pipedrive.client_secret),
    ):
        response = await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive), headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["success"] is False
    assert active_links(store)[0].id == link.id and await stored_tokens(store, link.id) is not None
    assert pipedrive.removed_links == [] and pipedrive.revoked == []


BAD_UNINSTALL_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"company_id": 2002, "user_id": 1001}', "client_id"),
    (b'{"client_id": "test-client", "user_id": 1001}', "company_id"),
    (b'{"client_id": "test-client", "company_id": 2002}', "user_id"),
    (b'{"client_id": "test-client", "company_id": "acme", "user_id": 1001}', "company_id"),
    (b'{"client_id": "test-client", "company_id": 2002, "user_id": true}', "user_id"),
    (b'{"client_id": "another-app", "company_id": 2002, "user_id": 1001}', "client_id"),
]


async def test_uninstall_with_a_bad_body_is_400(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
) -> None:
    assert (await marketplace_install(client, fake_http, pipedrive, pipedrive_url)).status_code == 302
    for body, words in BAD_UNINSTALL_BODIES:
        response = await client.request("DELETE", CALLBACK, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (body, response.text)
        assert response.json()["success"] is False and words in response.json()["error"], body
    assert len(active_links(store)) == 1
    assert pipedrive.removed_links == [] and pipedrive.revoked == []


BAD_IDS: list[Any] = [
    "²",  # a digit to str.isdigit, no number to int()
    "١٢",  # Arabic-Indic digits, which int() reads as 12
    "１２",  # fullwidth digits
    "9" * 5000,  # more digits than int() converts by default
    10**30,
    2**63,  # one past what the BIGINT column holds
    -1,
    0,
    "0",
    "-5",
    " 12",
    "12\n",
    "1e3",
    1.5,
    1e300,
    None,
    [1],
    {"id": 1},
]


async def test_uninstall_with_an_id_out_of_bounds_is_400_naming_it(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
) -> None:
    assert (await marketplace_install(client, fake_http, pipedrive, pipedrive_url)).status_code == 302
    for key in ("company_id", "user_id"):
        for value in BAD_IDS:
            response = await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive, **{key: value}))
            assert response.status_code == 400, (key, str(value)[:20], response.text)
            assert response.json()["success"] is False and key in response.json()["error"], (key, str(value)[:20])
    assert len(active_links(store)) == 1
    assert pipedrive.removed_links == [] and pipedrive.revoked == []


async def test_uninstall_takes_ids_as_numbers_or_ascii_digit_strings(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
) -> None:
    assert (await marketplace_install(client, fake_http, pipedrive, pipedrive_url)).status_code == 302
    largest = uninstall_body(config, pipedrive, company_id=2**63 - 1, user_id=str(2**63 - 1))
    response = await client.request("DELETE", CALLBACK, json=largest)
    assert response.status_code == 200 and response.json() == {"success": True}, response.text
    assert len(active_links(store)) == 1  # nobody of that id installed the app

    as_strings = uninstall_body(config, pipedrive, company_id=str(pipedrive.user.company_id))
    response = await client.request("DELETE", CALLBACK, json=as_strings)
    assert response.status_code == 200, response.text
    assert active_links(store) == []


async def test_uninstall_cleans_up_when_the_refresh_fails(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
    logs: pytest.LogCaptureFixture,
) -> None:
    link, meeting_id = await installed_with_meeting(client, store, pipedrive, pipedrive_url, fake_http)
    tokens = await stored_tokens(store, link.id)
    assert tokens is not None
    # the access token lapsed and Pipedrive no longer knows the refresh token
    pipedrive.expire_access_tokens()
    with pipedrive.lock:
        pipedrive.refresh_tokens.clear()
    await store.put_secret(
        link_scope(link.id),
        PIPEDRIVE_TOKENS,
        dump_tokens(TokenSet(**{**tokens.to_dict(), "expires_at": time.time() - 60})),
    )

    response = await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive))

    assert response.status_code == 200 and response.json() == {"success": True}
    assert pipedrive.token_requests["refresh_token"] == 1 and pipedrive.invalid_grants == 1
    [row] = links(store)
    assert row.status == LINK_UNINSTALLED
    assert secrets_of(store, link.id) == []
    await assert_meetings_gone(client, link.id, meeting_id)
    assert_no_secret_logged(logs, config, *tokens_issued(pipedrive), tokens.refresh_token)


async def test_uninstall_cleans_up_when_the_link_removal_is_refused(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
) -> None:
    link, _ = await installed_with_meeting(client, store, pipedrive, pipedrive_url, fake_http)
    tokens = await stored_tokens(store, link.id)
    assert tokens is not None
    pipedrive.expire_access_tokens()  # the bridge still believes them fresh: the removal gets a 401

    response = await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive))

    assert response.status_code == 200 and response.json() == {"success": True}
    assert pipedrive.revoked == [tokens.refresh_token]
    assert links(store)[0].status == LINK_UNINSTALLED
    assert secrets_of(store, link.id) == []


async def test_uninstall_cleans_up_when_pipedrive_does_not_answer(
    client: httpx.AsyncClient,
    store: Store,
    pipedrive: FakePipedriveState,
    pipedrive_url: str,
    fake_http: httpx.AsyncClient,
    config: Config,
    fake_server: FakeServer,
) -> None:
    link, meeting_id = await installed_with_meeting(client, store, pipedrive, pipedrive_url, fake_http)
    fake_server.stop()

    response = await client.request("DELETE", CALLBACK, json=uninstall_body(config, pipedrive))

    assert response.status_code == 200 and response.json() == {"success": True}
    [row] = links(store)
    assert row.status == LINK_UNINSTALLED
    assert secrets_of(store, link.id) == []
    await assert_meetings_gone(client, link.id, meeting_id)
