"""The bridge with the Teams plugin found through its installed entry point, against the fake Graph on loopback.

Pipedrive's calls go through the whole app (reverse API, store, outbox, the core's retrying
HTTP client); the per-user connect flow goes through the settings page, signed in with the
core's fake Pipedrive.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asgi_lifespan import LifespanManager
from pipedrive_video_bridge_teams.fake_teams import FakeTeamsState

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
TEAMS_ONLY = {"default_backend": "teams", "allowed_backends": ["teams"]}


def teams_config(tmp_path: Path, teams: FakeTeamsState, auth: str = "company", **sections: Any) -> Config:
    meetings = {**TEAMS_ONLY, **sections.pop("meetings", {})}
    return make_config(tmp_path, backends={"teams": teams.backend_config(auth)}, meetings=meetings, **sections)


async def create_link(config: Config, email: str = "ada@example.com") -> str:
    async with prepared_store(config) as store:
        link = await store.create_link(pipedrive_user_id=5, company_id=6, user_name="Ada Lovelace", user_email=email)
    return link.id


def meetings_path(link_id: str, meeting_id: str = "") -> str:
    return f"/api/v1/links/{link_id}/meetings" + (f"/{meeting_id}" if meeting_id else "")


# --- the company's Entra app through the reverse API ----------------------------------------------


async def test_create_move_delete_as_pipedrive_does(tmp_path: Path, teams: FakeTeamsState) -> None:
    config = teams_config(tmp_path, teams)
    link_id = await create_link(config)
    async with bridge_client(config, entry_points=True) as client:
        created = await client.post(meetings_path(link_id), json=MEETING)
        assert created.status_code == 201, created.text
        data = created.json()["data"]
        [(graph_id, made)] = teams.meetings.items()
        assert (made["subject"], made["startDateTime"], made["endDateTime"]) == (
            "Demo with Acme",
            "2031-05-14T09:30:00Z",
            "2031-05-14T10:00:00Z",
        )
        assert made["externalId"].startswith("pvb-") and made["participants"]["organizer"]["upn"] == "ada@example.com"
        assert data["join_url"].startswith("https://bridge.example.com/j/") and data["meeting_id"] != graph_id
        assert data["join_url"] in data["invitation"] and made["joinWebUrl"] not in data["invitation"]
        assert made["joinMeetingIdSettings"]["passcode"] in data["invitation"]
        opened = await client.get(data["join_url"], headers={"Authorization": ""})  # anyone's click
        assert opened.status_code == 303 and opened.headers["location"] == made["joinWebUrl"]

        moved = await client.patch(meetings_path(link_id, data["meeting_id"]), json=MOVED)
        assert moved.status_code == 204 and moved.content == b""
        assert (made["subject"], made["startDateTime"], made["endDateTime"]) == (
            MOVED["topic"],
            "2031-05-15T16:00:00Z",
            "2031-05-15T17:00:00Z",
        )
        again = await client.get(data["join_url"], headers={"Authorization": ""})
        assert again.headers["location"] == made["joinWebUrl"], "Teams keeps the meeting's link"

        deleted = await client.delete(meetings_path(link_id, data["meeting_id"]))
        assert deleted.status_code == 204 and teams.deleted == [graph_id] and teams.meetings == {}
        assert (await client.delete(meetings_path(link_id, data["meeting_id"]))).status_code == 204
    assert teams.token_requests == {"client_credentials": 1}


async def test_two_replicas_fetch_the_app_token_once(tmp_path: Path, teams: FakeTeamsState) -> None:
    config = teams_config(tmp_path, teams)
    link_id = await create_link(config)
    teams.token_delay = 0.3
    answers: list[int] = []
    async with bridge_client(config, entry_points=True) as one, bridge_client(config, entry_points=True) as two:

        async def post(client: httpx.AsyncClient, n: int) -> None:
            answer = await client.post(meetings_path(link_id), json={**MEETING, "topic": f"Call {n}"})
            answers.append(answer.status_code)

        async with anyio.create_task_group() as tasks:
            for n in range(20):
                tasks.start_soon(post, one if n % 2 else two, n)
    assert answers == [201] * 20 and len(teams.meetings) == 20
    assert teams.token_requests == {"client_credentials": 1}


async def test_a_user_without_an_access_policy_is_a_502_naming_the_powershell(
    tmp_path: Path, teams: FakeTeamsState
) -> None:
    config = teams_config(tmp_path, teams)
    link_id = await create_link(config)
    teams.users[0].policy = False
    async with bridge_client(config, entry_points=True) as client:
        answer = await client.post(meetings_path(link_id), json=MEETING)
    assert answer.status_code == 502 and answer.json()["success"] is False
    assert "Grant-CsApplicationAccessPolicy" in answer.json()["error"] and teams.meetings == {}


async def test_a_meeting_graph_made_after_the_bridge_gave_up_is_found_by_its_key_and_removed(
    tmp_path: Path, teams: FakeTeamsState
) -> None:
    config = teams_config(
        tmp_path,
        teams,
        meetings={"operation_lease_seconds": 1.0},
        server={"backend_timeout_seconds": 0.5},
    )
    link_id = await create_link(config)
    async with bridge_client(config, entry_points=True) as client:
        assert (await client.post(meetings_path(link_id), json={**MEETING, "topic": "warm-up"})).status_code == 201
        teams.create_delay = 1.0  # Graph makes the meeting but answers too late
        answer = await client.post(meetings_path(link_id), json=MEETING)
        assert answer.status_code == 504, answer.text
        teams.create_delay = 0.0
        [orphan] = [mid for mid, m in teams.meetings.items() if m["subject"] == MEETING["topic"]]
        await wait_until(lambda: orphan not in teams.meetings, what="the sweep of the meeting made too late")
    assert [m["subject"] for m in teams.meetings.values()] == ["warm-up"], "the stored meeting stays"
    assert teams.deleted == [orphan]


# --- each user's own Microsoft account through the settings page ------------------------------------

PUBLIC_URL = "http://bridge.test"


@pytest.fixture
def pipedrive() -> Iterator[FakePipedriveState]:
    with running_fake_pipedrive(FakePipedriveState("pd-client", "pd-secret-for-teams-tests")) as state:
        yield state


@pytest.fixture
async def app(tmp_path: Path, teams: FakeTeamsState, pipedrive: FakePipedriveState) -> AsyncIterator[Any]:
    config = teams_config(
        tmp_path,
        teams,
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


def database_bytes(tmp_path: Path) -> bytes:
    """The SQLite database and its write-ahead log, as a dump of the disk would show them."""
    return b"".join(path.read_bytes() for path in sorted(tmp_path.glob("bridge.sqlite3*")))


async def test_connecting_teams_on_the_settings_page_then_meeting_with_it(
    app: Any, browser: httpx.AsyncClient, pipedrive_api: httpx.AsyncClient, teams: FakeTeamsState, tmp_path: Path
) -> None:
    link_id = await sign_in(browser, app)
    page = (await browser.get("/settings")).text
    assert "Connect your Microsoft Teams account" in page and 'id="connect-warning"' in page

    refused = await pipedrive_api.post(meetings_path(link_id), json=MEETING)
    assert refused.status_code == 502 and "connect your Microsoft account first" in refused.json()["error"]

    started = await browser.get("/settings/connect/teams")
    assert started.headers["location"].startswith(f"{teams.base_url}/{teams.tenant_id}/oauth2/v2.0/authorize?")
    assert (
        "redirect_uri=http%3A%2F%2Fbridge.test%2Fsettings%2Fconnect%2Fteams%2Fcallback" in started.headers["location"]
    )
    finished = await round_trip(browser, "/settings/connect/teams")
    assert finished.status_code == 303 and finished.headers["location"] == "/settings?connected=teams"
    assert "Your Microsoft Teams account is connected." in (await browser.get(finished.headers["location"])).text
    assert teams.token_requests == {"authorization_code": 1}

    created = await pipedrive_api.post(meetings_path(link_id), json=MEETING)
    assert created.status_code == 201, created.text
    [made] = teams.meetings.values()
    assert made["participants"]["organizer"]["upn"] == "ada@example.com"
    assert teams.count("POST", "/v1.0/me/onlineMeetings/createOrGet") == 1
    stored = database_bytes(tmp_path)
    assert link_id.encode() in stored, "this is the bridge's database"
    assert teams.issued_secrets and teams.client_secret
    for secret in [teams.client_secret, *teams.issued_secrets]:
        assert secret.encode() not in stored, "the user's Microsoft tokens are kept encrypted"

    teams.expire_access_tokens()
    with teams.lock:
        teams.refresh_tokens.clear()  # the user's sessions were revoked in Entra
    revoked = await pipedrive_api.post(meetings_path(link_id), json={**MEETING, "topic": "After"})
    assert revoked.status_code == 502
    assert f"reconnect Microsoft Teams on {PUBLIC_URL}/settings" in revoked.json()["error"]
    assert "Connect your Microsoft Teams account" in (await browser.get("/settings")).text
    await round_trip(browser, "/settings/connect/teams")
    assert (await pipedrive_api.post(meetings_path(link_id), json={**MEETING, "topic": "Again"})).status_code == 201
