"""Every page and redirect carries the browser security headers; nothing answered is built from ``Host``.

The pages are driven as a browser drives them (install, sign-in and connect flows
through a fake Pipedrive and a fake vendor), once through the ASGI app, once
against a real ``serve``, and once in headless Chromium under the page's CSP.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.app import create_app
from bridge.config import Config
from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
from bridge.devtools.loopback import serve_on_loopback
from bridge.testing import BridgeProcess, basic_auth, bridge_client, make_config, running, write_config_toml
from tests.test_settings_page import (
    CLIENT_ID,
    CLIENT_SECRET,
    AccountPlugin,
    Bridge,
    VendorAccounts,
    open_bridge_app,
    settings,
    settings_config,
    through_pipedrive,
    vendor_oauth_app,
)

PUBLIC_URL = "https://bridge.example.com"
EVIL = "evil.example"

# --- what a page and every answer must carry --------------------------------------------


def csp_directives(response: httpx.Response) -> dict[str, str]:
    policy = response.headers.get("content-security-policy", "")
    return {part.split(" ", 1)[0]: part.partition(" ")[2] for part in (p.strip() for p in policy.split(";")) if part}


def style_hash(html: str) -> str:
    found = re.search(r"<style>(.*?)</style>", html, re.S)
    assert found, "the page has its stylesheet"
    return "'sha256-" + base64.b64encode(hashlib.sha256(found.group(1).encode()).digest()).decode() + "'"


def assert_answer_headers(response: httpx.Response) -> None:
    where = f"{response.request.method} {response.request.url.path} ({response.status_code})"
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("referrer-policy") == "no-referrer", where


def assert_page_headers(response: httpx.Response) -> None:
    """A page (or a redirect of the browser flows): every header, and a CSP that lets only its own style run."""
    where = f"{response.request.method} {response.request.url.path} ({response.status_code})"
    assert_answer_headers(response)
    assert response.headers.get("x-frame-options") == "DENY", where
    assert response.headers.get("cache-control") == "no-store", where
    csp = csp_directives(response)
    assert csp.get("default-src") == "'none'", (where, csp)
    assert csp.get("img-src") == "'self'", (where, csp)
    assert csp.get("form-action") == "'self'", (where, csp)
    assert csp.get("frame-ancestors") == "'none'", (where, csp)
    assert csp.get("base-uri") == "'none'", (where, csp)
    assert "script-src" not in csp and "unsafe" not in response.headers["content-security-policy"], (where, csp)
    if response.headers.get("content-type", "").startswith("text/html"):
        html = response.text
        assert csp.get("style-src") == style_hash(html), (where, "the CSP allows exactly the page's stylesheet")
        assert "<script" not in html and " style=" not in html, where


# --- the app with a fake Pipedrive and a vendor users connect to ------------------------


@pytest.fixture
def pipedrive() -> Iterator[FakePipedriveState]:
    with running_fake_pipedrive(FakePipedriveState(CLIENT_ID, CLIENT_SECRET)) as state:
        yield state


@pytest.fixture
def vendor_url() -> Iterator[str]:
    with serve_on_loopback(lambda _url: vendor_oauth_app(VendorAccounts())) as url:
        yield url


@pytest.fixture
def config(tmp_path: Path, pipedrive: FakePipedriveState, vendor_url: str) -> Config:
    return settings_config(tmp_path, f"sqlite:///{tmp_path / 'bridge.sqlite3'}", pipedrive, vendor_url, PUBLIC_URL)


@pytest.fixture
async def bridge(config: Config, fake_plugin: Any) -> AsyncIterator[Bridge]:
    async for running_bridge in open_bridge_app(config, [fake_plugin, AccountPlugin()]):
        yield running_bridge


@pytest.mark.anyio
async def test_every_page_and_redirect_of_the_browser_flows_carries_the_headers(bridge: Bridge) -> None:
    seen: list[httpx.Response] = []
    stranger = bridge.browser()

    # install and sign-in: the start, Pipedrive's way back, and its failures
    seen.append(await stranger.get("/oauth/install"))
    seen.append(await stranger.get("/oauth/callback?error=access_denied"))
    seen.append(await bridge.browser().get("/oauth/callback"))
    seen.append(await bridge.browser().get("/oauth/callback?state=forged&code=x"))
    seen.append(await bridge.browser().get("/oauth/callback?code=not-a-code"))
    seen.append(await through_pipedrive(bridge.browser(), "/oauth/login"))  # not installed: 403 page
    seen.append(await through_pipedrive(bridge.browser(), "/oauth/install"))  # installed: to Pipedrive
    # the settings page signed out
    seen.append(await stranger.get("/settings"))
    seen.append(await stranger.post("/settings", data={"backend": "fake"}))
    seen.append(await stranger.post("/settings/logout"))
    # signed in: the page, its forms, and the connect flows
    browser = bridge.browser()
    signed_in = await through_pipedrive(browser, "/oauth/login")
    seen.append(signed_in)
    _html, csrf = await settings(browser)
    seen.append(await browser.get("/settings"))
    seen.append(await browser.post("/settings", data={"backend": "other", "csrf": csrf}))
    seen.append(await browser.get("/settings?saved=1"))
    seen.append(await browser.post("/settings", data={"backend": "other", "csrf": "forged"}))
    seen.append(await browser.post("/settings", data={"backend": "nope", "csrf": csrf}))
    started = await browser.get("/settings/connect/acct")
    seen.append(started)
    async with httpx.AsyncClient() as internet:
        at_vendor = await internet.get(started.headers["location"])
    seen.append(await browser.get(at_vendor.headers["location"]))
    seen.append(await browser.get("/settings/connect/acct/callback?state=forged&code=x"))
    seen.append(await browser.get("/settings/connect/fake"))
    seen.append(await browser.get("/settings/connect/gone"))
    seen.append(await browser.post("/settings/logout", data={"csrf": csrf}))

    statuses = sorted({response.status_code for response in seen})
    assert statuses == [200, 302, 303, 400, 403, 404, 502], statuses
    pages = [r for r in seen if r.headers.get("content-type", "").startswith("text/html")]
    assert len(pages) >= 12, [r.request.url for r in pages]
    for response in seen:
        assert_page_headers(response)


@pytest.mark.anyio
async def test_json_answers_are_not_sniffed_and_carry_no_page_policy(bridge: Bridge) -> None:
    api = bridge.pipedrive_api()
    for response in [
        await api.post("/api/v1/links/00000000-0000-0000-0000-000000000000/meetings", json={"topic": ""}),
        await api.post("/api/v1/links/x/meetings", content=b"{", headers={"content-type": "application/json"}),
        await bridge.browser().get("/api/v1/links/x/meetings"),
        await api.get("/manifest.json"),
        await api.get("/healthz"),
        await api.get("/nowhere"),
        await api.request("DELETE", "/oauth/callback", json={}),
    ]:
        assert response.headers["content-type"].startswith("application/json"), response.text
        assert_answer_headers(response)
        assert "content-security-policy" not in response.headers


# --- Host: never echoed, and only the bridge's own accepted ------------------------------


@pytest.mark.anyio
async def test_a_slash_redirect_is_built_on_public_url_whatever_the_host(tmp_path: Path) -> None:
    async with bridge_client(make_config(tmp_path)) as client:
        for host in ("bridge.example.com", "127.0.0.1:8000", "localhost"):
            response = await client.get("/settings/?saved=1", headers={"host": host})
            assert response.status_code == 307, (host, response.text)
            assert response.headers["location"] == PUBLIC_URL + "/settings?saved=1", host
            assert_page_headers(response)
        moved = await client.post("/api/v1/links/abc/meetings/", json={})
        assert moved.headers["location"] == PUBLIC_URL + "/api/v1/links/abc/meetings"
        protocol_relative = await client.get("//evil.example/", headers={"host": "localhost"})
        assert protocol_relative.status_code < 300 or protocol_relative.status_code == 404
        assert "location" not in protocol_relative.headers and "evil.example" not in protocol_relative.text


@pytest.mark.anyio
async def test_a_request_for_another_host_is_refused_except_health_checks(tmp_path: Path) -> None:
    async with bridge_client(make_config(tmp_path)) as client:
        for path in ("/settings/", "/settings", "/oauth/install", "/oauth/callback?code=x", "/manifest.json"):
            for host in (EVIL, f"{EVIL}:443", "bridge.example.com.evil.example", "[::2]"):
                response = await client.get(path, headers={"host": host})
                assert response.status_code == 400, (path, host, response.status_code)
                assert "location" not in response.headers and EVIL not in response.text
                assert_answer_headers(response)
                if path.startswith(("/settings", "/oauth/install")):  # a person's browser: a page
                    assert response.headers["content-type"].startswith("text/html"), (path, response.text)
                    assert_page_headers(response)
                else:
                    assert response.json() == {
                        "success": False,
                        "error": "this bridge does not answer for that host name",
                    }
        refused = await client.post("/api/v1/links/abc/meetings", json={}, headers={"host": EVIL})
        assert refused.status_code == 400 and refused.json()["success"] is False
        for path in ("/healthz", "/readyz", "/metrics"):
            for host in (EVIL, "10.0.3.7:8000"):
                assert (await client.get(path, headers={"host": host})).status_code == 200, (path, host)
        for host in ("bridge.example.com", "BRIDGE.example.com:443", "127.0.0.1:8000", "localhost", "[::1]:8000"):
            assert (await client.get("/oauth/install", headers={"host": host})).status_code == 302, host


def test_a_real_server_behind_a_proxy(tmp_path: Path) -> None:
    """``serve`` as deployed: a proxy on loopback passing the public Host and X-Forwarded-Proto."""
    config = make_config(tmp_path)
    path = write_config_toml(tmp_path / "bridge.toml", config, {"server": {"public_url": PUBLIC_URL}})
    with running(BridgeProcess.serve(path, tmp_path / "serve.log")) as server:
        proxied = {"host": "bridge.example.com", "x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"}
        with httpx.Client(base_url=server.url, timeout=10) as http:
            moved = http.get("/settings/", headers=proxied)
            assert moved.status_code == 307 and moved.headers["location"] == PUBLIC_URL + "/settings"
            page = http.get("/oauth/callback?error=access_denied", headers=proxied)
            assert page.status_code == 400 and "Nothing was installed" in page.text
            assert_page_headers(page)
            assert_page_headers(http.get("/settings", headers=proxied))
            direct = http.get("/settings/")  # a proxy that keeps its own upstream Host (127.0.0.1:port)
            assert direct.status_code == 307 and direct.headers["location"] == PUBLIC_URL + "/settings"
            evil = http.get("/settings/", headers={**proxied, "host": EVIL})
            assert evil.status_code == 400 and "location" not in evil.headers
            assert http.get("/healthz", headers={"host": "10.0.3.7:8000"}).status_code == 200
            api = http.post(
                "/api/v1/links/abc/meetings",
                json={},
                headers={**proxied, **basic_auth(config.pipedrive.client_id, config.pipedrive.client_secret)},
            )
            assert api.status_code == 404 and api.headers["x-content-type-options"] == "nosniff", api.text


# --- the page under its CSP in a real browser -------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium package")
def test_pages_keep_their_style_under_the_policy_in_chromium(tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: pip install -e '.[test]'")

    def build(url: str) -> Any:
        return create_app(make_config(tmp_path, server={"public_url": url}))

    with (
        serve_on_loopback(build, lifespan="on") as url,
        sync_api.sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            response = page.goto(url + "/oauth/callback?error=access_denied")
            assert response is not None and response.status == 400
            assert "content-security-policy" in response.headers
            assert page.text_content("h1") == "Nothing was installed"
            style = page.evaluate(
                "() => [getComputedStyle(document.body).maxWidth,"
                " getComputedStyle(document.querySelector('.box')).borderTopColor]"
            )
            assert style == ["640px", "rgb(207, 34, 46)"], "the stylesheet applies under the CSP"
            assert not [line for line in console if "Content Security Policy" in line], console
        finally:
            browser.close()


@pytest.mark.anyio
async def test_routing_errors_on_browser_paths_are_pages_and_elsewhere_json(config: Config, fake_plugin: Any) -> None:
    async with bridge_client(config, [fake_plugin]) as client:
        for method, path, status in [
            ("GET", "/settings/nowhere", 404),
            ("GET", "/oauth/nowhere", 404),
            ("POST", "/oauth/login", 405),
        ]:
            answer = await client.request(method, path)
            assert answer.status_code == status and answer.headers["content-type"].startswith("text/html"), path
            assert "default-src 'none'" in answer.headers["content-security-policy"]
        for method, path, status in [("GET", "/api/v1/nowhere", 404), ("PUT", "/oauth/callback", 405)]:
            answer = await client.request(method, path)
            assert answer.status_code == status and answer.json()["success"] is False, path
