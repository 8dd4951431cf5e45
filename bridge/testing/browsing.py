"""A browser's round trips through the bridge's pages, for tests of the install and connect flows.

``round_trip`` follows a redirect of the bridge to another site (the fake Pipedrive, a fake
vendor's sign-in page), which approves at once and redirects back, and lands there;
``sign_in`` installs the app as the fake Pipedrive's user and signs that user in to the
settings page; ``pipedrive_table`` is the ``[pipedrive]`` table pointing at a fake Pipedrive.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from bridge.devtools.fake_pipedrive import FakePipedriveState

_LINK_ID = re.compile(r'<code id="link-id">([^<]+)</code>')


def pipedrive_table(pipedrive: FakePipedriveState) -> dict[str, str]:
    """The ``[pipedrive]`` table of a bridge that installs and signs in through ``pipedrive``."""
    return {
        "client_id": pipedrive.client_id,
        "client_secret": pipedrive.client_secret,
        "oauth_base": pipedrive.api_domain,
        "api_base": pipedrive.api_domain,
    }


async def round_trip(browser: httpx.AsyncClient, start: str, status: int = 302) -> httpx.Response:
    """Open ``start``, follow its redirect to the other site (which must answer ``status``), and land back."""
    started = await browser.get(start)
    assert started.status_code in (302, 303), started.text
    async with httpx.AsyncClient() as internet:
        approved = await internet.get(started.headers["location"])
    assert approved.status_code == status, approved.text
    return await browser.get(approved.headers["location"])


async def sign_in(browser: httpx.AsyncClient, app: Any) -> str:
    """The fake Pipedrive's user installs the app, then signs in to the settings page in ``browser``; its link id."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=str(browser.base_url)) as installer:
        assert (await round_trip(installer, "/oauth/install")).status_code == 302
    landed = await round_trip(browser, "/oauth/login")
    assert landed.status_code == 303 and landed.headers["location"] == "/settings", landed.text
    found = _LINK_ID.search((await browser.get("/settings")).text)
    assert found, "the settings page shows the user's link id"
    return found.group(1)
