"""The settings page over HTTP: sign-in through the fake Pipedrive, choosing a backend, connecting an account.

The bridge runs in-process (its lifespan driven by asgi-lifespan); Pipedrive's
OAuth server and a small vendor OAuth server are real servers on loopback, and
a test walks the browser's redirects between them by hand.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlmodel import Session, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bridge.app import create_app
from bridge.config import Config
from bridge.devtools.fake_pipedrive import FakePipedriveState, FakeUser, running_fake_pipedrive
from bridge.devtools.loopback import serve_on_loopback
from bridge.errors import BackendError
from bridge.signing import Signer
from bridge.storage.links import Link
from bridge.storage.schema import SecretTable
from bridge.storage.secrets import backend_scope
from bridge.storage.store import Store
from bridge.testing import basic_auth, make_config
from bridge.vendors.hookspecs import hookimpl
from bridge.vendors.interface import Backend, BackendContext, MeetingRequest, Room
from bridge.vendors.invitation import render_invitation
from bridge.vendors.registry import load_plugins
from bridge.web.sessions import SESSION_COOKIE
from tests.conftest import FakeVendor

pytestmark = pytest.mark.anyio

PUBLIC_URL = "http://bridge.test"
CLIENT_ID = "settings-client"
CLIENT_SECRET = "settings-secret-" + secrets.token_hex(6)
MEETING = {"topic": "Demo", "start_time": "2031-05-14 09:30", "duration": 30}


# --- a vendor whose users connect their own account (OAuth), and its backend ----------------


@dataclass
class VendorAccounts:
    """The vendor's OAuth server: codes it handed out and tokens it issued."""

    codes: set[str] = field(default_factory=set)
    tokens: list[str] = field(default_factory=list)


def vendor_oauth_app(accounts: VendorAccounts) -> Starlette:
    async def authorize(request: Request) -> Response:
        params = request.query_params
        code = "code-" + secrets.token_urlsafe(8)
        accounts.codes.add(code)
        query = urlencode({"code": code, "state": params.get("state", "")})
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=302)

    async def token(request: Request) -> Response:
        code = str((await request.form()).get("code"))
        if code not in accounts.codes:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        accounts.codes.discard(code)
        accounts.tokens.append("acct-token-" + secrets.token_urlsafe(12))
        return JSONResponse({"access_token": accounts.tokens[-1]})

    return Starlette(routes=[Route("/authorize", authorize), Route("/token", token, methods=["POST"])])


class AccountBackend(Backend):
    """Makes rooms only for users who connected their Acct account."""

    name = "acct"
    title = "Acct Video"
    needs_user_account = True

    def __init__(self, oauth_base: str) -> None:
        self.oauth_base = oauth_base

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AccountBackend:
        return cls(str(config["oauth_base"]))

    async def connect_url(self, ctx: BackendContext, callback_url: str, state: str) -> str:
        return f"{self.oauth_base}/authorize?{urlencode({'redirect_uri': callback_url, 'state': state})}"

    async def connect_finish(self, ctx: BackendContext, params: Mapping[str, str], callback_url: str) -> None:
        response = await ctx.http.post(
            f"{self.oauth_base}/token", data={"code": params.get("code", ""), "redirect_uri": callback_url}
        )
        if response.status_code != 200:
            raise BackendError("Acct Video did not accept the sign-in; please try again")
        await ctx.credentials.set("access_token", response.json()["access_token"])

    async def is_connected(self, ctx: BackendContext) -> bool:
        return await ctx.credentials.get("access_token") is not None

    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        if await ctx.credentials.get("access_token") is None:
            raise BackendError("connect your Acct Video account in the settings first")
        url = f"https://acct.example.com/{secrets.token_hex(4)}"
        return Room(
            vendor_meeting_id=url.rsplit("/", 1)[1],
            join_url=url,
            invitation=render_invitation(meeting, url, user=ctx.user),
        )

    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room:
        return await self.create(ctx, meeting)

    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        return None


class AccountPlugin:
    __name__ = "acct-plugin"

    @staticmethod
    @hookimpl
    def register_backends(register: Any) -> None:
        register(AccountBackend)


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def pipedrive() -> Iterator[FakePipedriveState]:
    with running_fake_pipedrive(FakePipedriveState(CLIENT_ID, CLIENT_SECRET)) as state:
        yield state


@pytest.fixture
def accounts() -> VendorAccounts:
    return VendorAccounts()


@pytest.fixture
def vendor_url(accounts: VendorAccounts) -> Iterator[str]:
    with serve_on_loopback(lambda _url: vendor_oauth_app(accounts)) as url:
        yield url


def settings_config(
    tmp_path: Path, database_url: str, pipedrive: FakePipedriveState, vendor_url: str, public_url: str = PUBLIC_URL
) -> Config:
    return make_config(
        tmp_path,
        database_url,
        pipedrive={
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "oauth_base": pipedrive.api_domain,
            "api_base": pipedrive.api_domain,
        },
        server={"public_url": public_url},
        # "gone" is allowed but no plugin provides it: listed, never choosable
        meetings={"default_backend": "fake", "allowed_backends": ["fake", "other", "acct", "gone"]},
        backends={"acct": {"oauth_base": vendor_url}},
    )


@pytest.fixture
def config(tmp_path: Path, database_url: str, pipedrive: FakePipedriveState, vendor_url: str) -> Config:
    return settings_config(tmp_path, database_url, pipedrive, vendor_url)


@dataclass
class Bridge:
    """The running app, and a way to open browsers (cookie jars) and Pipedrive's reverse-API client on it."""

    app: Any
    config: Config
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def browser(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url=self.config.server.public_url)
        self.clients.append(client)
        return client

    def pipedrive_api(self) -> httpx.AsyncClient:
        client = self.browser()
        client.headers.update(basic_auth(CLIENT_ID, CLIENT_SECRET))
        return client


async def open_bridge_app(config: Config, plugins: list[object]) -> AsyncIterator[Bridge]:
    app = create_app(config, load_plugins(plugins, entry_points=False))
    async with LifespanManager(app) as manager:
        bridge = Bridge(manager.app, config)
        try:
            yield bridge
        finally:
            for client in bridge.clients:
                await client.aclose()


@pytest.fixture
async def bridge(config: Config, fake_plugin: Any) -> AsyncIterator[Bridge]:
    async for running in open_bridge_app(config, [fake_plugin, AccountPlugin()]):
        yield running


# --- what a browser does ----------------------------------------------------------------


async def through_pipedrive(browser: httpx.AsyncClient, start: str) -> httpx.Response:
    """Start at the bridge's /oauth/install or /oauth/login, approve at the fake Pipedrive, land on the callback."""
    started = await browser.get(start)
    assert started.status_code == 302, started.text
    async with httpx.AsyncClient() as internet:
        approved = await internet.get(started.headers["location"])
    assert approved.status_code == 302, approved.text
    return await browser.get(approved.headers["location"])


async def installed_and_signed_in(bridge: Bridge) -> httpx.AsyncClient:
    """The fake Pipedrive's current user installs the app, then signs in to the settings in a fresh browser."""
    installed = await through_pipedrive(bridge.browser(), "/oauth/install")
    assert installed.status_code == 302, installed.text
    browser = bridge.browser()
    signed_in = await through_pipedrive(browser, "/oauth/login")
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/settings", signed_in.text
    return browser


async def settings(browser: httpx.AsyncClient) -> tuple[str, str]:
    """(the settings page's HTML, its CSRF token)."""
    response = await browser.get("/settings")
    assert response.status_code == 200, response.text
    found = re.search(r'name="csrf" value="([^"]+)"', response.text)
    assert found, "the form carries a CSRF token"
    return response.text, found.group(1)


def checked(html: str) -> list[str]:
    return re.findall(r'value="([a-z]+)"\s*checked', html)


async def user_link(store: Store, pipedrive: FakePipedriveState) -> Link:
    link = await store.find_active_link(pipedrive.user.company_id, pipedrive.user.id)
    assert link is not None
    return link


async def post_meeting(bridge: Bridge, link: Link) -> httpx.Response:
    return await bridge.pipedrive_api().post(f"/api/v1/links/{link.id}/meetings", json=MEETING)


def assert_refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    for word in words:
        assert word in response.text, f"{word!r} not on the page"


# --- signing in -------------------------------------------------------------------------


async def test_without_a_session_the_page_sends_the_browser_to_sign_in(bridge: Bridge) -> None:
    response = await bridge.browser().get("/settings")
    assert response.status_code == 303 and response.headers["location"] == "/oauth/login"


async def test_signing_in_through_pipedrive_shows_the_users_own_page(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState
) -> None:
    browser = await installed_and_signed_in(bridge)
    link = await user_link(store, pipedrive)
    response = await browser.get("/settings")
    html = response.text
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert "Sam Simulator" in html and "sam@example.com" in html and link.id in html
    for title in ("Fake Video", "Other Video", "Acct Video"):
        assert title in html
    assert checked(html) == ["fake"], "the company default is preselected"
    assert "(company default)" in html
    assert re.search(r'value="gone"\s*disabled', html), "an allowed backend no plugin provides is shown disabled"
    assert "Connect your Acct Video account" in html
    assert 'type="hidden" name="csrf"' in html
    assert "/settings/connect/acct" in html


async def test_a_user_who_never_installed_gets_the_not_installed_page(bridge: Bridge) -> None:
    response = await through_pipedrive(bridge.browser(), "/oauth/login")
    assert_refused(response, 403, "not installed")
    assert SESSION_COOKIE not in response.cookies


async def test_a_session_whose_link_was_uninstalled_is_told_to_reinstall(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState
) -> None:
    browser = await installed_and_signed_in(bridge)
    _, csrf = await settings(browser)
    link = await user_link(store, pipedrive)
    await store.uninstall_link(link.id)
    assert_refused(await browser.get("/settings"), 403, "Install the app again")
    assert_refused(
        await browser.post("/settings", data={"backend": "other", "csrf": csrf}), 403, "Install the app again"
    )
    assert (await store.get_link(link.id)).backend is None  # type: ignore[union-attr]


async def test_each_user_sees_only_their_own_link(bridge: Bridge, store: Store, pipedrive: FakePipedriveState) -> None:
    sam = await installed_and_signed_in(bridge)
    sam_link = await user_link(store, pipedrive)
    pipedrive.user = FakeUser(id=1002, name="Bo Other", email="bo@example.com")
    bo = await installed_and_signed_in(bridge)
    bo_link = await user_link(store, pipedrive)
    assert bo_link.id != sam_link.id
    sam_page, sam_csrf = await settings(sam)
    bo_page, _ = await settings(bo)
    assert sam_link.id in sam_page and bo_link.id not in sam_page and "Bo Other" not in sam_page
    assert bo_link.id in bo_page and sam_link.id not in bo_page and "Sam Simulator" not in bo_page
    saved = await sam.post("/settings", data={"backend": "other", "csrf": sam_csrf})
    assert saved.status_code == 303
    assert (await store.get_link(sam_link.id)).backend == "other"  # type: ignore[union-attr]
    assert (await store.get_link(bo_link.id)).backend is None  # type: ignore[union-attr]


# --- the session cookie -----------------------------------------------------------------


def set_cookie_header(response: httpx.Response, name: str) -> str:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]
    assert len(headers) == 1, response.headers.get_list("set-cookie")
    return headers[0]


async def test_cookies_are_httponly_and_samesite_lax_and_not_secure_over_http(bridge: Bridge) -> None:
    await through_pipedrive(bridge.browser(), "/oauth/install")
    browser = bridge.browser()
    started = await browser.get("/oauth/login")
    state_cookie = set_cookie_header(started, "pvb_oauth_state").lower()
    async with httpx.AsyncClient() as internet:
        approved = await internet.get(started.headers["location"])
    signed_in = await browser.get(approved.headers["location"])
    session_cookie = set_cookie_header(signed_in, SESSION_COOKIE).lower()
    for cookie in (state_cookie, session_cookie):
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
        assert "secure" not in cookie, "a plain-http deployment (a local trial) cannot use Secure cookies"


async def test_cookies_are_secure_behind_https(
    tmp_path: Path, database_url: str, pipedrive: FakePipedriveState, vendor_url: str, fake_plugin: Any
) -> None:
    config = settings_config(tmp_path, database_url, pipedrive, vendor_url, public_url="https://bridge.test")
    async for bridge in open_bridge_app(config, [fake_plugin, AccountPlugin()]):
        browser = bridge.browser()
        installed = await through_pipedrive(browser, "/oauth/install")
        assert installed.status_code == 302, installed.text
        cookie = set_cookie_header(installed, SESSION_COOKIE).lower()
        assert "secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
        page = await browser.get("/settings")
        assert page.status_code == 200 and "Sam Simulator" in page.text


def tampered(token: str) -> list[str]:
    body, mac = token.split(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    return [
        flipped + "." + mac,
        body + "." + mac[:-2] + ("A" if mac[-2] != "A" else "B") + mac[-1],
        body,
        "not-a-session",
        "x" * 5000,
    ]


async def test_a_forged_or_tampered_session_goes_back_to_sign_in(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState
) -> None:
    browser = await installed_and_signed_in(bridge)
    _, csrf = await settings(browser)
    link = await user_link(store, pipedrive)
    genuine = browser.cookies[SESSION_COOKIE]
    other_key = Signer([b"not the bridge's key" * 2]).sign(
        "session", {"link": link.id, "uid": link.pipedrive_user_id, "cid": link.company_id, "sid": "x"}, 3600
    )
    for value in [*tampered(genuine), other_key, csrf]:
        forged = bridge.browser()
        forged.cookies.set(SESSION_COOKIE, value, domain="bridge.test")
        shown = await forged.get("/settings")
        assert shown.status_code == 303 and shown.headers["location"] == "/oauth/login", value
        assert_refused(await forged.post("/settings", data={"backend": "other", "csrf": csrf}), 403, "not signed in")
    assert (await store.get_link(link.id)).backend is None  # type: ignore[union-attr]


# --- CSRF -------------------------------------------------------------------------------


async def test_a_post_without_or_with_a_wrong_csrf_token_changes_nothing(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState
) -> None:
    browser = await installed_and_signed_in(bridge)
    _, csrf = await settings(browser)
    link = await user_link(store, pipedrive)
    for data in (
        {"backend": "other"},
        {"backend": "other", "csrf": ""},
        {"backend": "other", "csrf": "forged"},
        {"backend": "other", "csrf": csrf[:-3] + "AAA"},
    ):
        assert_refused(await browser.post("/settings", data=data), 403, "did not come from this page")
    assert_refused(await bridge.browser().post("/settings", data={"backend": "other", "csrf": csrf}), 403)
    assert (await store.get_link(link.id)).backend is None  # type: ignore[union-attr]


async def test_a_csrf_token_of_another_session_is_refused(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState
) -> None:
    mine = await installed_and_signed_in(bridge)
    theirs = bridge.browser()  # the same user signed in elsewhere: another session
    assert (await through_pipedrive(theirs, "/oauth/login")).status_code == 303
    _, their_csrf = await settings(theirs)
    assert_refused(await mine.post("/settings", data={"backend": "other", "csrf": their_csrf}), 403)
    assert (await user_link(store, pipedrive)).backend is None


async def test_an_unreadable_form_is_a_400_page(bridge: Bridge) -> None:
    browser = await installed_and_signed_in(bridge)
    no_boundary = await browser.post(
        "/settings", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}
    )
    assert_refused(no_boundary, 400, "could not be read")
    a_file = await browser.post("/settings", data={"backend": "other"}, files={"f": ("a.txt", b"hello")})
    assert_refused(a_file, 400, "could not be read")
    too_many_fields = await browser.post("/settings", data={f"f{i}": "x" for i in range(50)})
    assert_refused(too_many_fields, 400, "could not be read")
    too_large = await browser.post("/settings", data={"backend": "x" * 100_000})
    assert too_large.status_code == 413  # refused by the body limit before any handler runs


# --- choosing -----------------------------------------------------------------------------


@pytest.mark.parametrize("choice", [None, "", "gone", "jitsi", "FAKE", "../fake", "x" * 300])
async def test_a_backend_that_is_not_allowed_or_available_cannot_be_chosen(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState, choice: str | None
) -> None:
    browser = await installed_and_signed_in(bridge)
    _, csrf = await settings(browser)
    data = {"csrf": csrf} if choice is None else {"csrf": csrf, "backend": choice}
    assert_refused(await browser.post("/settings", data=data), 400, "cannot be chosen")
    assert (await user_link(store, pipedrive)).backend is None


async def test_choosing_other_is_saved_and_the_next_post_meeting_uses_it(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState, vendor: FakeVendor
) -> None:
    browser = await installed_and_signed_in(bridge)
    link = await user_link(store, pipedrive)
    assert (await post_meeting(bridge, link)).status_code == 201
    assert vendor.calls[-1][:2] == ("fake", "create")
    _, csrf = await settings(browser)
    saved = await browser.post("/settings", data={"backend": "other", "csrf": csrf})
    assert saved.status_code == 303 and saved.headers["location"] == "/settings?saved=1"
    page = await browser.get(saved.headers["location"])
    assert "Saved. New meetings will use Other Video." in page.text
    assert checked(page.text) == ["other"]
    assert (await store.get_link(link.id)).backend == "other"  # type: ignore[union-attr]
    created = await post_meeting(bridge, link)
    assert created.status_code == 201, created.text
    assert vendor.calls[-1][:2] == ("other", "create")


async def test_signing_out_ends_the_session(bridge: Bridge) -> None:
    browser = await installed_and_signed_in(bridge)
    _, csrf = await settings(browser)
    assert_refused(await browser.post("/settings/logout", data={"csrf": "forged"}), 403)
    signed_out = await browser.post("/settings/logout", data={"csrf": csrf})
    assert signed_out.status_code == 200 and "signed out" in signed_out.text
    assert SESSION_COOKIE not in browser.cookies
    assert (await browser.get("/settings")).headers["location"] == "/oauth/login"


# --- connecting a per-user account ----------------------------------------------------------


async def connect(browser: httpx.AsyncClient, backend: str = "acct") -> httpx.Response:
    started = await browser.get(f"/settings/connect/{backend}")
    assert started.status_code == 303, started.text
    async with httpx.AsyncClient() as internet:
        approved = await internet.get(started.headers["location"])
    assert approved.status_code == 302, approved.text
    return await browser.get(approved.headers["location"])


async def test_connecting_an_account_stores_it_encrypted_for_that_link_and_backend(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState, accounts: VendorAccounts, vendor_url: str
) -> None:
    browser = await installed_and_signed_in(bridge)
    link = await user_link(store, pipedrive)
    _, csrf = await settings(browser)
    saved = await browser.post("/settings", data={"backend": "acct", "csrf": csrf})
    assert saved.status_code == 303, "a backend whose account is not connected can still be chosen"
    page = (await browser.get("/settings?saved=1")).text
    assert checked(page) == ["acct"] and "until you do" in page

    started = await browser.get("/settings/connect/acct")
    target = urlsplit(started.headers["location"])
    assert f"{target.scheme}://{target.netloc}" == vendor_url
    query = parse_qs(target.query)
    assert query["redirect_uri"] == [f"{PUBLIC_URL}/settings/connect/acct/callback"] and query["state"][0]

    finished = await connect(browser)
    assert finished.status_code == 303 and finished.headers["location"] == "/settings?connected=acct"
    page = (await browser.get(finished.headers["location"])).text
    assert "Your Acct Video account is connected." in page and "until you do" not in page

    [token] = accounts.tokens
    assert await store.get_secret(backend_scope(link.id, "acct"), "access_token") == token
    assert await store.get_secret(backend_scope(link.id, "fake"), "access_token") is None
    with Session(store.engine) as session:
        rows = list(session.exec(select(SecretTable).where(SecretTable.scope == backend_scope(link.id, "acct"))))
    assert [row.name for row in rows] == ["access_token"]
    assert token not in rows[0].ciphertext, "the vendor token is stored encrypted"

    created = await post_meeting(bridge, link)
    assert created.status_code == 201, created.text
    opened = await browser.get(created.json()["data"]["join_url"], follow_redirects=False)
    assert opened.status_code == 303 and opened.headers["location"].startswith("https://acct.example.com/")


async def test_a_chosen_but_unconnected_account_fails_post_meeting_with_a_clear_message(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState
) -> None:
    browser = await installed_and_signed_in(bridge)
    _, csrf = await settings(browser)
    await browser.post("/settings", data={"backend": "acct", "csrf": csrf})
    failed = await post_meeting(bridge, await user_link(store, pipedrive))
    assert failed.status_code == 502 and "connect your Acct Video account" in failed.json()["error"]


async def test_a_bad_connect_state_is_a_400_page_and_stores_nothing(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState, accounts: VendorAccounts
) -> None:
    browser = await installed_and_signed_in(bridge)
    link = await user_link(store, pipedrive)
    other_browser = bridge.browser()
    await through_pipedrive(other_browser, "/oauth/login")
    another_sessions_state = parse_qs(
        urlsplit((await other_browser.get("/settings/connect/acct")).headers["location"]).query
    )["state"][0]
    callback = "/settings/connect/acct/callback"
    for query in ({"code": "x"}, {"code": "x", "state": "forged"}, {"code": "x", "state": another_sessions_state}):
        assert_refused(await browser.get(callback, params=query), 400, "expired")
    assert accounts.tokens == [], "the vendor was never asked for a token"
    assert await store.get_secret(backend_scope(link.id, "acct"), "access_token") is None


async def test_a_declined_or_failed_connect_is_a_page_and_stores_nothing(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState
) -> None:
    browser = await installed_and_signed_in(bridge)
    link = await user_link(store, pipedrive)
    state = parse_qs(urlsplit((await browser.get("/settings/connect/acct")).headers["location"]).query)["state"][0]
    callback = "/settings/connect/acct/callback"
    declined = await browser.get(callback, params={"state": state, "error": "access_denied"})
    assert_refused(declined, 400, "Acct Video did not grant access")
    refused = await browser.get(callback, params={"state": state, "code": "not-a-code"})
    assert_refused(refused, 502, "did not accept the sign-in")
    assert await store.get_secret(backend_scope(link.id, "acct"), "access_token") is None


@pytest.mark.parametrize(
    "path",
    [
        "/settings/connect/fake",
        "/settings/connect/nope",
        "/settings/connect/gone",
        "/settings/connect/fake/callback?state=x&code=y",
    ],
)
async def test_connecting_a_backend_without_accounts_is_a_404_page(bridge: Bridge, path: str) -> None:
    browser = await installed_and_signed_in(bridge)
    assert_refused(await browser.get(path), 404)


async def test_connecting_without_a_session_goes_to_sign_in(bridge: Bridge) -> None:
    for path in ("/settings/connect/acct", "/settings/connect/acct/callback?state=x&code=y"):
        response = await bridge.browser().get(path)
        assert response.status_code == 303 and response.headers["location"] == "/oauth/login"


def test_a_backend_needing_accounts_without_a_connect_flow_is_refused_at_load() -> None:
    class Halfway(AccountBackend):
        name = "halfway"
        connect_url = Backend.connect_url  # type: ignore[assignment]

    class Plugin:
        __name__ = "halfway-plugin"

        @staticmethod
        @hookimpl
        def register_backends(register: Any) -> None:
            register(Halfway)

    registry = load_plugins([Plugin()], entry_points=False)
    assert "halfway" not in registry.backends
    assert "does not implement connect_url and connect_finish" in " ".join(registry.problems())


# --- sessions nobody can plant, and that end on the server --------------------------------


async def test_a_marketplace_callback_with_someone_elses_code_neither_starts_nor_replaces_a_session(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState, accounts: VendorAccounts
) -> None:
    """Login CSRF: an attacker keeps the code of her own authorisation and gets the victim's browser to open
    the stateless callback with it. Her link is repaired, but the victim stays signed in as herself, and a
    vendor account the victim connects lands on the victim's own link."""
    victim_browser = await installed_and_signed_in(bridge)
    victim = await user_link(store, pipedrive)
    victim_user = pipedrive.user
    pipedrive.user = FakeUser(id=6666, company_id=victim_user.company_id, name="Mallory", email="m@example.com")
    await through_pipedrive(bridge.browser(), "/oauth/install")  # the attacker's own install
    attacker = await user_link(store, pipedrive)
    async with httpx.AsyncClient() as internet:  # her next authorisation, its code kept instead of used
        approved = await internet.get(
            f"{pipedrive.api_domain}/oauth/authorize",
            params={"client_id": CLIENT_ID, "redirect_uri": f"{PUBLIC_URL}/oauth/callback"},
        )
    code_url = urlsplit(approved.headers["location"])
    assert "state" not in parse_qs(code_url.query)

    planted = await victim_browser.get(f"{code_url.path}?{code_url.query}")  # opened in the victim's browser

    assert planted.status_code == 302, planted.text
    assert SESSION_COOKIE not in planted.headers.get("set-cookie", "")
    pipedrive.user = victim_user
    html, _ = await settings(victim_browser)
    assert victim_user.name in html and "Mallory" not in html
    finished = await connect(victim_browser)
    assert finished.status_code == 303, finished.text
    [token] = accounts.tokens
    assert await store.get_secret(backend_scope(victim.id, "acct"), "access_token") == token
    assert await store.get_secret(backend_scope(attacker.id, "acct"), "access_token") is None


async def test_an_install_started_here_signs_the_browser_in(bridge: Bridge) -> None:
    browser = bridge.browser()
    installed = await through_pipedrive(browser, "/oauth/install")
    assert installed.status_code == 302 and SESSION_COOKIE in browser.cookies
    assert (await browser.get("/settings")).status_code == 200


async def cookie_copy(browser: httpx.AsyncClient, bridge: Bridge) -> httpx.AsyncClient:
    """Another browser holding a copy of this one's session cookie."""
    copy = bridge.browser()
    copy.cookies.set(SESSION_COOKIE, browser.cookies[SESSION_COOKIE])
    return copy


async def test_a_cookie_copied_before_sign_out_opens_nothing_after_it(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState
) -> None:
    browser = await installed_and_signed_in(bridge)
    _, csrf = await settings(browser)
    stolen = await cookie_copy(browser, bridge)
    assert (await stolen.get("/settings")).status_code == 200

    signed_out = await browser.post("/settings/logout", data={"csrf": csrf})
    assert signed_out.status_code == 200, signed_out.text

    opened = await stolen.get("/settings")
    assert opened.status_code == 303 and opened.headers["location"] == "/oauth/login"
    refused = await stolen.post("/settings", data={"backend": "other", "csrf": csrf})
    assert refused.status_code == 403
    assert (await user_link(store, pipedrive)).backend is None, "nothing was saved with the old cookie"


async def test_a_reinstall_ends_every_session_but_a_sign_in_keeps_the_others(
    bridge: Bridge, store: Store, pipedrive: FakePipedriveState
) -> None:
    first = await installed_and_signed_in(bridge)
    second = bridge.browser()
    await through_pipedrive(second, "/oauth/login")  # another browser signs in: the first stays signed in
    assert (await first.get("/settings")).status_code == 200
    assert (await second.get("/settings")).status_code == 200

    await through_pipedrive(bridge.browser(), "/oauth/install")  # installed again
    for browser in (first, second):
        opened = await browser.get("/settings")
        assert opened.status_code == 303 and opened.headers["location"] == "/oauth/login"


async def test_sign_out_ends_the_session_on_every_replica(
    tmp_path: Path, database_url: str, pipedrive: FakePipedriveState, vendor_url: str, fake_plugin: Any
) -> None:
    """Two replicas on one database: a sign-out on one ends the session on the other."""
    config = settings_config(tmp_path, database_url, pipedrive, vendor_url)
    async for one in open_bridge_app(config, [fake_plugin, AccountPlugin()]):
        async for other in open_bridge_app(config, [fake_plugin, AccountPlugin()]):
            browser = await installed_and_signed_in(one)
            _, csrf = await settings(browser)
            on_other = other.browser()
            on_other.cookies.set(SESSION_COOKIE, browser.cookies[SESSION_COOKIE])
            assert (await on_other.get("/settings")).status_code == 200, "the session works on both"

            assert (await browser.post("/settings/logout", data={"csrf": csrf})).status_code == 200

            assert (await on_other.get("/settings")).status_code == 303
            assert (await on_other.post("/settings", data={"backend": "other", "csrf": csrf})).status_code == 403
