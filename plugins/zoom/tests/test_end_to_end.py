"""The bridge with the Zoom plugin found through its installed entry point, against the fake Zoom on loopback.

Pipedrive's calls go through the whole app (reverse API, store, the core's
retrying HTTP client); the per-user connect flow goes through the settings
page, signed in with the core's fake Pipedrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState

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
)

pytestmark = pytest.mark.anyio

MEETING = {"topic": "Demo with Acme", "start_time": "2031-05-14 09:30", "duration": 30}
MOVED = {"topic": "Demo with Acme (moved)", "start_time": "2031-05-15 16:00", "duration": 60}
ZOOM_ONLY = {"default_backend": "zoom", "allowed_backends": ["zoom"]}


def zoom_config(tmp_path: Path, zoom: FakeZoomState, auth: str = "account", **sections: Any) -> Config:
    return make_config(tmp_path, backends={"zoom": zoom.backend_config(auth)}, meetings=ZOOM_ONLY, **sections)


async def create_link(config: Config, email: str = "ada@example.com") -> str:
    async with prepared_store(config) as store:
        link = await store.create_link(pipedrive_user_id=5, company_id=6, user_name="Ada Lovelace", user_email=email)
    return link.id


def meetings_path(link_id: str, meeting_id: str = "") -> str:
    return f"/api/v1/links/{link_id}/meetings" + (f"/{meeting_id}" if meeting_id else "")


# --- Server-to-Server OAuth through the reverse API ------------------------------------------------


async def test_create_move_delete_as_pipedrive_does(tmp_path: Path, zoom: FakeZoomState) -> None:
    config = zoom_config(tmp_path, zoom)
    link_id = await create_link(config)
    async with bridge_client(config, entry_points=True) as client:
        created = await client.post(meetings_path(link_id), json=MEETING)
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["success"] is True and set(body["data"]) == {"meeting_id", "join_url", "password", "invitation"}
        [(zoom_id, made)] = zoom.meetings.items()
        assert (made["topic"], made["start_time"], made["duration"]) == ("Demo with Acme", "2031-05-14T09:30:00Z", 30)
        assert made["host_email"] == "ada@example.com"
        data = body["data"]
        assert data["join_url"].startswith("https://bridge.example.com/j/") and data["password"] == made["password"]
        assert data["meeting_id"] != zoom_id, "Pipedrive gets the bridge's own id"
        assert data["join_url"] in data["invitation"] and "Topic: Demo with Acme" in data["invitation"]
        opened = await client.get(data["join_url"], headers={"Authorization": ""})  # a guest's click
        assert opened.status_code == 303 and opened.headers["location"] == made["join_url"]

        moved = await client.patch(meetings_path(link_id, data["meeting_id"]), json=MOVED)
        assert moved.status_code == 204 and moved.content == b""
        assert (made["topic"], made["start_time"], made["duration"]) == (MOVED["topic"], "2031-05-15T16:00:00Z", 60)
        opened = await client.get(data["join_url"], headers={"Authorization": ""})
        assert opened.headers["location"] == made["join_url"], "Zoom keeps the meeting's link"

        deleted = await client.delete(meetings_path(link_id, data["meeting_id"]))
        assert deleted.status_code == 204 and zoom.deleted == [zoom_id] and zoom.meetings == {}
        assert (await client.delete(meetings_path(link_id, data["meeting_id"]))).status_code == 204
    assert zoom.token_requests == {"account_credentials": 1}


async def test_deleting_a_meeting_removed_in_zoom_answers_204(tmp_path: Path, zoom: FakeZoomState) -> None:
    config = zoom_config(tmp_path, zoom)
    link_id = await create_link(config)
    async with bridge_client(config, entry_points=True) as client:
        meeting_id = (await client.post(meetings_path(link_id), json=MEETING)).json()["data"]["meeting_id"]
        zoom.meetings.clear()  # someone deleted it in Zoom
        assert (await client.delete(meetings_path(link_id, meeting_id))).status_code == 204


async def test_two_replicas_fetch_the_shared_token_once(tmp_path: Path, zoom: FakeZoomState) -> None:
    config = zoom_config(tmp_path, zoom)
    link_id = await create_link(config)
    zoom.token_delay = 0.3
    answers: list[int] = []
    async with bridge_client(config, entry_points=True) as one, bridge_client(config, entry_points=True) as two:

        async def post(client: httpx.AsyncClient, n: int) -> None:
            answers.append(
                (await client.post(meetings_path(link_id), json={**MEETING, "topic": f"Call {n}"})).status_code
            )

        async with anyio.create_task_group() as tasks:
            for n in range(20):
                tasks.start_soon(post, one if n % 2 else two, n)
    assert answers == [201] * 20
    assert zoom.token_requests == {"account_credentials": 1}


async def test_the_daily_limit_is_a_plain_503_and_zoom_is_asked_once(tmp_path: Path, zoom: FakeZoomState) -> None:
    config = zoom_config(tmp_path, zoom)
    link_id = await create_link(config)
    zoom.daily_limit, zoom.daily_limit_headers = 0, False
    async with bridge_client(config, entry_points=True) as client:
        answer = await client.post(meetings_path(link_id), json=MEETING)
    assert answer.status_code == 503 and answer.json()["success"] is False
    assert "Zoom's daily limit for this Zoom user is reached" in answer.json()["error"]
    assert "resets at 00:00 UTC" in answer.json()["error"]
    assert zoom.count("POST") == 1


async def test_an_unknown_zoom_user_is_a_502_saying_what_to_do(tmp_path: Path, zoom: FakeZoomState) -> None:
    config = zoom_config(tmp_path, zoom)
    link_id = await create_link(config, email="nobody@example.com")
    async with bridge_client(config, entry_points=True) as client:
        answer = await client.post(meetings_path(link_id), json=MEETING)
    assert answer.status_code == 502
    assert "nobody@example.com does not exist in your company's Zoom account" in answer.json()["error"]


async def test_a_slow_zoom_is_a_504(tmp_path: Path, zoom: FakeZoomState) -> None:
    config = zoom_config(tmp_path, zoom, server={"backend_timeout_seconds": 0.5})
    link_id = await create_link(config)
    zoom.delay = 1.5
    async with bridge_client(config, entry_points=True) as client:
        answer = await client.post(meetings_path(link_id), json=MEETING)
    assert answer.status_code == 504 and "Zoom did not answer within 0.5 seconds" in answer.json()["error"]


async def test_a_dropped_create_is_a_503_and_not_sent_twice(tmp_path: Path, zoom: FakeZoomState) -> None:
    config = zoom_config(tmp_path, zoom)
    link_id = await create_link(config)
    zoom.drop_next = 1
    async with bridge_client(config, entry_points=True) as client:
        answer = await client.post(meetings_path(link_id), json=MEETING)
        assert answer.status_code == 503 and "Zoom could not be reached" in answer.json()["error"]
        assert zoom.count("POST") == 1
        assert (await client.post(meetings_path(link_id), json=MEETING)).status_code == 201


# --- user OAuth through the settings page ------------------------------------------------------

PUBLIC_URL = "http://bridge.test"


@pytest.fixture
def pipedrive() -> Iterator[FakePipedriveState]:
    with running_fake_pipedrive(FakePipedriveState("pd-client", "pd-secret-for-zoom-tests")) as state:
        yield state


@pytest.fixture
async def app(tmp_path: Path, zoom: FakeZoomState, pipedrive: FakePipedriveState) -> AsyncIterator[Any]:
    config = zoom_config(
        tmp_path,
        zoom,
        "user",
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


async def test_connecting_zoom_on_the_settings_page_then_meeting_with_it(
    app: Any, browser: httpx.AsyncClient, pipedrive_api: httpx.AsyncClient, zoom: FakeZoomState
) -> None:
    link_id = await sign_in(browser, app)
    page = (await browser.get("/settings")).text
    assert "Connect your Zoom account" in page and 'id="connect-warning"' in page

    refused = await pipedrive_api.post(meetings_path(link_id), json=MEETING)
    assert refused.status_code == 502 and "connect your Zoom account first" in refused.json()["error"]

    started = await browser.get("/settings/connect/zoom")
    assert started.headers["location"].startswith(f"{zoom.base_url}/oauth/authorize?response_type=code&")
    finished = await round_trip(browser, "/settings/connect/zoom")
    assert finished.status_code == 303 and finished.headers["location"] == "/settings?connected=zoom"
    assert "Your Zoom account is connected." in (await browser.get(finished.headers["location"])).text
    assert zoom.token_requests == {"authorization_code": 1}

    created = await pipedrive_api.post(meetings_path(link_id), json=MEETING)
    assert created.status_code == 201, created.text
    [made] = zoom.meetings.values()
    assert made["host_email"] == "ada@example.com"
    # the organiser, signed in on the bridge, opens the join link as host: the start URL fetched at the click
    host = await browser.get(created.json()["data"]["join_url"], follow_redirects=False)
    assert host.status_code == 303 and host.headers["location"] == made["start_url"] != made["join_url"]


async def test_user_tokens_are_refreshed_once_and_a_refused_refresh_asks_to_reconnect(
    app: Any, browser: httpx.AsyncClient, pipedrive_api: httpx.AsyncClient, zoom: FakeZoomState
) -> None:
    link_id = await sign_in(browser, app)
    await round_trip(browser, "/settings/connect/zoom")

    zoom.expire_access_tokens()  # Zoom answers 124 until the bridge refreshes
    zoom.token_delay = 0.2
    answers: list[int] = []

    async def post(n: int) -> None:
        answers.append(
            (await pipedrive_api.post(meetings_path(link_id), json={**MEETING, "topic": f"Call {n}"})).status_code
        )

    async with anyio.create_task_group() as tasks:
        for n in range(20):
            tasks.start_soon(post, n)
    assert answers == [201] * 20
    assert zoom.token_requests["refresh_token"] == 1 and len(zoom.spent_refresh_tokens) == 1

    zoom.expire_access_tokens()
    with zoom.lock:
        zoom.refresh_tokens.clear()  # the user removed the app in Zoom
    refused = await pipedrive_api.post(meetings_path(link_id), json={**MEETING, "topic": "After"})
    assert refused.status_code == 502
    assert refused.json()["error"] == (
        "Zoom no longer accepts your connection (it was revoked or has expired): "
        f"reconnect Zoom on {PUBLIC_URL}/settings"
    )
    assert zoom.spent_refresh_tokens.isdisjoint(zoom.refused_refresh_tokens), "a spent token is never sent again"
    page = (await browser.get("/settings")).text
    assert "Connect your Zoom account" in page and 'id="connect-warning"' in page

    await round_trip(browser, "/settings/connect/zoom")
    assert (await pipedrive_api.post(meetings_path(link_id), json={**MEETING, "topic": "Again"})).status_code == 201
