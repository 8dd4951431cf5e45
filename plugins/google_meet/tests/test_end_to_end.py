"""The bridge with the Google Meet plugin found through its installed entry point, against the fake Google on loopback.

Pipedrive's calls go through the whole app (reverse API, store, the core's retrying
HTTP client); the per-user connect flow goes through the settings page, signed in
with the core's fake Pipedrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pipedrive_video_bridge_google_meet.fake_google import FakeGoogleState, Limit

from bridge.testing import (
    Config,
    FakePipedriveState,
    basic_auth,
    bridge_client,
    create_app,
    load_plugins,
    make_config,
    pipedrive_table,
    prepared_store,
    round_trip,
    running_fake_pipedrive,
    sign_in,
    wait_until,
)

pytestmark = pytest.mark.anyio

MEETING = {"topic": "Demo with Acme", "start_time": "2031-05-14 09:30", "duration": 30}
MOVED = {"topic": "Demo with Acme (moved)", "start_time": "2031-05-15 16:00", "duration": 60}
MEET_ONLY = {"default_backend": "google_meet", "allowed_backends": ["google_meet"]}


def meet_config(tmp_path: Path, table: dict[str, Any], **sections: Any) -> Config:
    return make_config(tmp_path, backends={"google_meet": table}, meetings=MEET_ONLY, **sections)


async def create_link(config: Config, email: str = "ada@example.com") -> str:
    async with prepared_store(config) as store:
        link = await store.create_link(pipedrive_user_id=5, company_id=6, user_name="Ada Lovelace", user_email=email)
    return link.id


def meetings_path(link_id: str, meeting_id: str = "") -> str:
    return f"/api/v1/links/{link_id}/meetings" + (f"/{meeting_id}" if meeting_id else "")


# --- the service account through the reverse API ----------------------------------------------


async def test_create_move_delete_as_pipedrive_does(tmp_path: Path, google: FakeGoogleState, key_file: Path) -> None:
    config = meet_config(tmp_path, google.backend_config(service_account_file=str(key_file)))
    link_id = await create_link(config)
    async with bridge_client(config, entry_points=True) as client:
        created = await client.post(meetings_path(link_id), json=MEETING)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["success"] is True
        [(event_id, made)] = google.events().items()
        assert event_id.startswith("pvb") and made["summary"] == "Demo with Acme"
        assert (made["start"]["dateTime"], made["end"]["dateTime"]) == ("2031-05-14T09:30:00Z", "2031-05-14T10:00:00Z")
        data = body["data"]
        assert data["join_url"].startswith("https://bridge.example.com/j/") and data["meeting_id"] != event_id
        assert data["join_url"] in data["invitation"] and "Join by phone: +1 323-555-0166" in data["invitation"]
        assert made["hangoutLink"] not in data["invitation"], "the bridge's link, not Meet's"
        opened = await client.get(data["join_url"], headers={"Authorization": ""})  # a guest's click
        assert opened.status_code == 303 and opened.headers["location"] == made["hangoutLink"]

        moved = await client.patch(meetings_path(link_id, data["meeting_id"]), json=MOVED)
        assert moved.status_code == 204 and moved.content == b""
        made = google.events()[event_id]
        assert made["summary"] == MOVED["topic"]
        assert (made["start"]["dateTime"], made["end"]["dateTime"]) == ("2031-05-15T16:00:00Z", "2031-05-15T17:00:00Z")
        opened = await client.get(data["join_url"], headers={"Authorization": ""})
        assert opened.headers["location"] == made["hangoutLink"], "Meet keeps the event's link"

        deleted = await client.delete(meetings_path(link_id, data["meeting_id"]))
        assert deleted.status_code == 204 and google.events() == {}
        assert google.events(live=False)[event_id]["status"] == "cancelled"
        assert (await client.delete(meetings_path(link_id, data["meeting_id"]))).status_code == 204
    assert sum(google.token_requests.values()) == 1


async def test_an_event_deleted_in_google_answers_204_on_delete(
    tmp_path: Path, google: FakeGoogleState, key_file: Path
) -> None:
    config = meet_config(tmp_path, google.backend_config(service_account_file=str(key_file)))
    link_id = await create_link(config)
    async with bridge_client(config, entry_points=True) as client:
        meeting_id = (await client.post(meetings_path(link_id), json=MEETING)).json()["data"]["meeting_id"]
        google.calendars["ada@example.com"].clear()  # someone removed it in Google Calendar
        assert (await client.delete(meetings_path(link_id, meeting_id))).status_code == 204


async def test_a_user_outside_the_workspace_is_a_502_saying_so(
    tmp_path: Path, google: FakeGoogleState, key_file: Path
) -> None:
    config = meet_config(tmp_path, google.backend_config(service_account_file=str(key_file)))
    link_id = await create_link(config, email="nobody@elsewhere.example")
    async with bridge_client(config, entry_points=True) as client:
        answer = await client.post(meetings_path(link_id), json=MEETING)
    assert (
        answer.status_code == 502 and "Google Workspace has no user nobody@elsewhere.example" in answer.json()["error"]
    )


async def test_the_daily_quota_is_a_503_and_google_is_asked_once(
    tmp_path: Path, google: FakeGoogleState, key_file: Path
) -> None:
    config = meet_config(tmp_path, google.backend_config(service_account_file=str(key_file)))
    link_id = await create_link(config)
    google.limits_next = [Limit("dailyLimitExceeded")]
    async with bridge_client(config, entry_points=True) as client:
        answer = await client.post(meetings_path(link_id), json=MEETING)
    assert answer.status_code == 503 and "daily Google Calendar API quota" in answer.json()["error"]
    assert google.count("POST") == 1


async def test_an_event_google_made_after_the_bridge_gave_up_is_swept_by_its_key(
    tmp_path: Path, google: FakeGoogleState, key_file: Path
) -> None:
    config = make_config(
        tmp_path,
        backends={"google_meet": google.backend_config(service_account_file=str(key_file))},
        meetings={**MEET_ONLY, "operation_lease_seconds": 1.0},
        server={"backend_timeout_seconds": 0.5},
    )
    link_id = await create_link(config)
    async with bridge_client(config, entry_points=True) as client:
        assert (await client.post(meetings_path(link_id), json={**MEETING, "topic": "warm-up"})).status_code == 201
        google.insert_delay = 1.0  # Google makes the event but answers too late
        answer = await client.post(meetings_path(link_id), json=MEETING)
        assert answer.status_code == 504, answer.text
        google.insert_delay = 0.0
        [orphan] = [event_id for event_id, event in google.events().items() if event["summary"] == MEETING["topic"]]
        await wait_until(lambda: orphan not in google.events(), what="the sweep of the event made too late")
    reads = [path for method, path, _ in google.api_requests if method == "GET"]
    assert any(path.endswith("/events/" + orphan) for path in reads), "found by a read of its id"
    assert not any(path.endswith("/events") for path in reads), "without listing"
    assert len(google.events()) == 1, "the warm-up meeting's event stays"


# --- each user's own Google account through the settings page -----------------------------------------

PUBLIC_URL = "http://bridge.test"


@pytest.fixture
def pipedrive() -> Iterator[FakePipedriveState]:
    with running_fake_pipedrive(FakePipedriveState("pd-client", "pd-secret-for-meet-tests")) as state:
        yield state


@pytest.fixture
async def app(tmp_path: Path, google: FakeGoogleState, pipedrive: FakePipedriveState) -> AsyncIterator[Any]:
    config = meet_config(
        tmp_path,
        google.backend_config("user"),
        server={"public_url": PUBLIC_URL},
        pipedrive=pipedrive_table(pipedrive),
    )
    async with LifespanManager(create_app(config, load_plugins(entry_points=True))) as manager:
        yield manager.app


@pytest.fixture
async def browser(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL) as client:
        yield client


@pytest.fixture
async def pipedrive_api(app: Any, pipedrive: FakePipedriveState) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url=PUBLIC_URL,
        headers=basic_auth(pipedrive.client_id, pipedrive.client_secret),
    ) as client:
        yield client


async def test_connecting_google_on_the_settings_page_then_meeting_with_it(
    app: Any, browser: httpx.AsyncClient, pipedrive_api: httpx.AsyncClient, google: FakeGoogleState, tmp_path: Path
) -> None:
    link_id = await sign_in(browser, app)
    page = (await browser.get("/settings")).text
    assert "Connect your Google Meet account" in page and 'id="connect-warning"' in page

    refused = await pipedrive_api.post(meetings_path(link_id), json=MEETING)
    assert refused.status_code == 502 and "connect your Google account first" in refused.json()["error"]

    started = await browser.get("/settings/connect/google_meet")
    location = started.headers["location"]
    assert location.startswith(f"{google.base_url}/o/oauth2/v2/auth?client_id=")
    assert "redirect_uri=http%3A%2F%2Fbridge.test%2Fsettings%2Fconnect%2Fgoogle_meet%2Fcallback" in location
    finished = await round_trip(browser, "/settings/connect/google_meet")
    assert finished.status_code == 303 and finished.headers["location"] == "/settings?connected=google_meet"
    assert google.token_requests == {"authorization_code": 1}

    created = await pipedrive_api.post(meetings_path(link_id), json=MEETING)
    assert created.status_code == 201, created.text
    [made] = google.events("ada@example.com").values()
    # the organiser opens the join link: Meet has one link for everyone
    host = await browser.get(created.json()["data"]["join_url"], follow_redirects=False)
    assert host.status_code == 303 and host.headers["location"] == made["hangoutLink"]
    # the SQLite database and its write-ahead log hold the user's Google tokens only encrypted
    stored = b"".join(path.read_bytes() for path in sorted(tmp_path.glob("bridge.sqlite3*")))
    assert link_id.encode() in stored, "this is the bridge's database"
    assert google.issued_secrets
    for secret in [google.client_secret, *google.issued_secrets]:
        assert secret.encode() not in stored


async def test_a_refused_refresh_asks_to_reconnect_on_the_settings_page(
    app: Any, browser: httpx.AsyncClient, pipedrive_api: httpx.AsyncClient, google: FakeGoogleState
) -> None:
    link_id = await sign_in(browser, app)
    await round_trip(browser, "/settings/connect/google_meet")
    google.expire_access_tokens()
    with google.lock:
        google.refresh_tokens.clear()  # the user removed the bridge's access in their Google account
    refused = await pipedrive_api.post(meetings_path(link_id), json=MEETING)
    assert refused.status_code == 502
    assert refused.json()["error"] == (
        "Google no longer accepts your connection (it was revoked or has expired): "
        f"reconnect Google Meet on {PUBLIC_URL}/settings"
    )
    await round_trip(browser, "/settings/connect/google_meet")
    assert (await pipedrive_api.post(meetings_path(link_id), json=MEETING)).status_code == 201
