"""The settings page in a real headless Chromium (Debian's package, driven by Playwright).

The bridge and the fake Pipedrive run on real loopback ports; the browser signs
in through the fake Pipedrive, chooses a backend and saves it, and the next
postMeeting lands on that backend. ``scripts/test`` installs Chromium when it is
missing and it can; without it this test is skipped, saying why.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from bridge.app import create_app
from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
from bridge.devtools.loopback import serve_on_loopback
from bridge.testing import basic_auth, make_config
from bridge.vendors.registry import load_plugins
from tests.conftest import FakeVendor

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CLIENT_ID = "browser-client"
CLIENT_SECRET = "browser-secret-" + secrets.token_hex(6)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: install Debian's chromium package (scripts/test does when it runs as root)",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: pip install -e '.[test]'")


@pytest.fixture
def allowed() -> list[str]:
    """The backends the company allows; the first is the default."""
    return ["fake", "other"]


@pytest.fixture
def bridge_url(tmp_path: Path, database_url: str, fake_plugin: Any, allowed: list[str]) -> Iterator[str]:
    """The bridge on a loopback port, signing in through the fake Pipedrive on another."""
    with running_fake_pipedrive(FakePipedriveState(CLIENT_ID, CLIENT_SECRET)) as pipedrive:

        def build(url: str) -> Any:
            config = make_config(
                tmp_path,
                database_url,
                pipedrive={
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "oauth_base": pipedrive.api_domain,
                    "api_base": pipedrive.api_domain,
                },
                server={"public_url": url},
                meetings={"default_backend": allowed[0], "allowed_backends": allowed},
            )
            return create_app(config, load_plugins([fake_plugin], entry_points=False))

        with serve_on_loopback(build, lifespan="on") as url:
            yield url


@pytest.fixture
def chromium() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_a_user_chooses_a_backend_in_the_browser_and_the_next_meeting_uses_it(
    bridge_url: str, chromium: Any, vendor: FakeVendor, tmp_path: Path
) -> None:
    # the user installs the app (Pipedrive's Marketplace would start this) ...
    installing = chromium.new_context()
    installing.new_page().goto(bridge_url + "/oauth/install")
    installing.close()

    # ... and later, in a fresh browser, opens the settings: off to Pipedrive and back, signed in
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.goto(bridge_url + "/settings")
    assert page.url == bridge_url + "/settings"
    sync_api.expect(page.get_by_role("heading", name="Video calls for Pipedrive")).to_be_visible()
    sync_api.expect(page.get_by_text("Sam Simulator")).to_be_visible()
    sync_api.expect(page.get_by_label("Fake Video")).to_be_checked()

    page.get_by_label("Other Video").check()
    page.get_by_role("button", name="Save").click()
    sync_api.expect(page.locator("#notice")).to_have_text("Saved. New meetings will use Other Video.")
    sync_api.expect(page.get_by_label("Other Video")).to_be_checked()
    assert page.url == bridge_url + "/settings?saved=1"
    page.screenshot(path=str(tmp_path / "settings.png"), full_page=True)

    cookies = {c["name"]: c for c in context.cookies(bridge_url)}
    assert cookies["pvb_session"]["httpOnly"] and cookies["pvb_session"]["sameSite"] == "Lax"

    link_id = page.locator("#link-id").inner_text()
    created = httpx.post(
        f"{bridge_url}/api/v1/links/{link_id}/meetings",
        headers=basic_auth(CLIENT_ID, CLIENT_SECRET),
        json={"topic": "Browser demo", "start_time": "2031-05-14 09:30", "duration": 30},
    )
    assert created.status_code == 201, created.text
    assert vendor.calls[-1][:2] == ("other", "create")
    context.close()


@pytest.fixture
def vendor_rooms(vendor: FakeVendor) -> Iterator[str]:
    """The fake vendor's rooms on a loopback port: each answers a page naming the role it was opened with."""

    async def room(request: Request) -> Response:
        role = request.query_params.get("role", "none")
        return HTMLResponse(f"<!doctype html><title>{role}</title><h1>{role} in the room</h1>")

    with serve_on_loopback(lambda _url: Starlette(routes=[Route("/{room}", room)])) as url:
        vendor.room_base = url
        yield url


@pytest.mark.parametrize("allowed", [["joining", "fake"]])
def test_the_organiser_and_a_guest_open_the_same_link_and_land_as_host_and_guest(
    bridge_url: str, chromium: Any, vendor: FakeVendor, allowed: list[str], vendor_rooms: str
) -> None:
    installing = chromium.new_context()
    installing.new_page().goto(bridge_url + "/oauth/install")
    installing.close()

    organiser = chromium.new_context()
    page = organiser.new_page()
    page.set_default_timeout(15_000)
    page.goto(bridge_url + "/settings")  # signs in through Pipedrive: the session the join link recognises
    sync_api.expect(page.get_by_label("Joining Video")).to_be_checked()
    link_id = page.locator("#link-id").inner_text()
    meetings = f"{bridge_url}/api/v1/links/{link_id}/meetings"
    created = httpx.post(
        meetings,
        headers=basic_auth(CLIENT_ID, CLIENT_SECRET),
        json={"topic": "Browser demo", "start_time": "2031-05-14 09:30", "duration": 30},
    )
    assert created.status_code == 201, created.text
    join_url = created.json()["data"]["join_url"]
    assert join_url.startswith(bridge_url + "/j/")

    page.goto(join_url)
    sync_api.expect(page.get_by_role("heading")).to_have_text("host in the room")
    host_query = parse_qs(urlsplit(page.url).query)
    assert page.url.startswith(vendor_rooms + "/joining-1?") and host_query["name"] == ["Sam Simulator"]

    guest = chromium.new_context()
    guest_page = guest.new_page()
    guest_page.set_default_timeout(15_000)
    guest_page.goto(join_url)
    sync_api.expect(guest_page.get_by_role("heading")).to_have_text("guest in the room")
    assert guest_page.url.startswith(vendor_rooms + "/joining-1?") and "Sam" not in guest_page.url
    assert [j.role for j in vendor.joins] == ["host", "guest"]

    deleted = httpx.delete(
        f"{meetings}/{created.json()['data']['meeting_id']}", headers=basic_auth(CLIENT_ID, CLIENT_SECRET)
    )
    assert deleted.status_code == 204
    guest_page.goto(join_url)
    sync_api.expect(guest_page.get_by_role("heading")).to_have_text("This meeting was cancelled")
    assert guest_page.url == join_url  # a page, not a redirect
    organiser.close()
    guest.close()
