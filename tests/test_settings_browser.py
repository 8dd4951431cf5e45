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

import httpx
import pytest

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
def bridge_url(tmp_path: Path, database_url: str, fake_plugin: Any) -> Iterator[str]:
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
                meetings={"default_backend": "fake", "allowed_backends": ["fake", "other"]},
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
