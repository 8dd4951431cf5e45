"""Settings sessions against real ``serve`` processes: a planted code starts no session, and a sign-out on
one replica ends the session on the other (two servers, one database, the fake Pipedrive on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from bridge.devtools.fake_pipedrive import FakePipedriveState, FakeUser, running_fake_pipedrive
from bridge.testing import BridgeProcess, free_port, make_config, running, write_config_toml
from bridge.web.sessions import SESSION_COOKIE

CLIENT_ID = "served-sessions-client"
CLIENT_SECRET = "served-sessions-secret-0123456789"


@pytest.fixture
def pipedrive() -> Iterator[FakePipedriveState]:
    with running_fake_pipedrive(FakePipedriveState(CLIENT_ID, CLIENT_SECRET)) as state:
        yield state


@pytest.fixture
def replicas(tmp_path: Path, database_url: str, pipedrive: FakePipedriveState) -> Iterator[list[BridgeProcess]]:
    """Two ``serve`` processes on one database; ``public_url`` is the first one's (loopback hosts pass)."""
    ports = [free_port(), free_port()]
    public_url = f"http://127.0.0.1:{ports[0]}"
    config = make_config(tmp_path, database_url)
    path = write_config_toml(
        tmp_path / "bridge.toml",
        config,
        {
            "pipedrive": {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "oauth_base": pipedrive.api_domain,
                "api_base": pipedrive.api_domain,
            },
            "server": {"public_url": public_url},
        },
    )
    first = BridgeProcess.serve(path, tmp_path / "first.log", port=ports[0])
    with running(first):
        second = BridgeProcess.serve(path, tmp_path / "second.log", port=ports[1], name="the second replica")
        with running(second):
            yield [first, second]


def through_pipedrive(browser: httpx.Client, start: str) -> httpx.Response:
    """What a browser does: start at the bridge, approve at the fake Pipedrive, land on the callback."""
    started = browser.get(start)
    assert started.status_code == 302, started.text
    approved = httpx.get(started.headers["location"])
    assert approved.status_code == 302, approved.text
    return browser.get(approved.headers["location"])


def settings_csrf(browser: httpx.Client, url: str) -> str:
    page = browser.get(url + "/settings")
    assert page.status_code == 200, page.text
    return page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]


def test_a_sign_out_on_one_replica_ends_the_session_on_the_other(
    replicas: list[BridgeProcess], pipedrive: FakePipedriveState
) -> None:
    first, second = replicas
    with httpx.Client(base_url=first.url, timeout=10) as browser, httpx.Client(timeout=10) as thief:
        through_pipedrive(browser, "/oauth/install")
        signed_in = through_pipedrive(browser, "/oauth/login")
        assert signed_in.status_code == 303, signed_in.text
        thief.cookies.set(SESSION_COOKIE, browser.cookies[SESSION_COOKIE])
        assert thief.get(second.url + "/settings").status_code == 200, "the cookie works on both replicas"

        csrf = settings_csrf(browser, first.url)
        assert browser.post("/settings/logout", data={"csrf": csrf}).status_code == 200

        for server in (first, second):
            opened = thief.get(server.url + "/settings")
            assert opened.status_code == 303 and opened.headers["location"] == "/oauth/login", server.name
            saved = thief.post(server.url + "/settings", data={"backend": "jitsi", "csrf": csrf})
            assert saved.status_code == 403, server.name


def test_a_code_planted_through_the_marketplace_callback_starts_no_session(
    replicas: list[BridgeProcess], pipedrive: FakePipedriveState
) -> None:
    first, second = replicas
    victim = pipedrive.user
    with httpx.Client(base_url=first.url, timeout=10) as browser:
        through_pipedrive(browser, "/oauth/install")
        through_pipedrive(browser, "/oauth/login")
        own_session = browser.cookies[SESSION_COOKIE]

        pipedrive.user = FakeUser(id=7777, company_id=victim.company_id, name="Mallory", email="m@example.com")
        approved = httpx.get(
            f"{pipedrive.api_domain}/oauth/authorize",
            params={"client_id": CLIENT_ID, "redirect_uri": f"{first.url}/oauth/callback"},
        )
        planted = urlsplit(approved.headers["location"])
        assert "state" not in parse_qs(planted.query)
        answer = browser.get(f"{second.url}{planted.path}?{planted.query}")  # on the other replica, too

        assert answer.status_code == 302, answer.text
        assert SESSION_COOKIE not in answer.headers.get("set-cookie", "")
        assert browser.cookies[SESSION_COOKIE] == own_session
        pipedrive.user = victim
        page = browser.get("/settings")
        assert page.status_code == 200 and victim.name in page.text and "Mallory" not in page.text
