"""Exactly once, nothing orphaned: real ``serve`` processes against the plugins' fake vendors.

- Two replicas on one PostgreSQL database, Zoom answering after seconds: the same
  postMeeting sent to both, in every order and overlap, makes one meeting and
  answers one ``meeting_id``, join URL and invitation.
- ``kill -9`` of the server under a load of postMeetings, moves and deletes (Zoom,
  Whereby, Microsoft Teams and Google Meet: rooms found again by listing, by a
  tagged name, by an external id and by an event id derived from the key),
  several cycles, on SQLite and PostgreSQL: after the restart and the
  worker's reconciliation, each vendor's own ledger of rooms is exactly the bridge's
  live meetings (no orphan, none lost), and ``reconcile --dry-run`` finds nothing.
- Whereby down (503s, then connection refused) during a stream of deletes: every
  delete is answered 204 at once, and once Whereby is back every room is gone, with
  no request repeated by Pipedrive.

PVB_SOAK=1 runs more cycles with more requests.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from pipedrive_video_bridge_google_meet.fake_google import FakeGoogleState, running_fake_google
from pipedrive_video_bridge_teams.fake_teams import FakeTeamsState, running_fake_teams
from pipedrive_video_bridge_whereby.fake_whereby import FakeWhereby, running_fake_whereby
from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState, running_fake_zoom
from starlette.types import ASGIApp

from bridge.api.auth import basic_auth
from bridge.config import Config
from bridge.devtools.loopback import serve_on_loopback
from bridge.storage.schema import MEETING_ACTIVE
from bridge.testing import BridgeProcess, Store, free_port, make_config, prepared_store, write_config_toml

pytestmark = pytest.mark.anyio

SOAK = os.environ.get("PVB_SOAK") == "1"
CYCLES = 5 if SOAK else 2
KILL_WITHIN = 6.0 if SOAK else 2.0  # seconds of load before the kill
START_SECONDS = 30
SETTLE_SECONDS = 60
LEASE = 3.0  # operation_lease_seconds: a killed process's claims and jobs lapse after this
USER_EMAIL = "ada@example.com"  # a user the fake Zoom knows

# --- the vendors, the config, the processes ----------------------------------------------------


BACKENDS = ("zoom", "whereby", "teams", "google_meet")
TEAMS_TENANT, TEAMS_CLIENT = "72f988bf-86f1-41af-91ab-2d7cd011db47", "11111111-2222-4333-8444-555555555555"


@dataclass
class Vendors:
    zoom: FakeZoomState
    whereby: FakeWhereby
    teams: FakeTeamsState
    google: FakeGoogleState
    google_key: Path  # the service account's key file


@pytest.fixture
def vendors(tmp_path: Path) -> Iterator[Vendors]:
    with (
        running_fake_zoom(FakeZoomState("zoom-client", "zoom-secret-value")) as zoom,
        running_fake_whereby() as whereby,
        running_fake_teams(FakeTeamsState(TEAMS_TENANT, TEAMS_CLIENT, "teams-secret-value")) as teams,
        running_fake_google(FakeGoogleState()) as google,
    ):
        yield Vendors(zoom, whereby, teams, google, google.new_service_account(tmp_path))


def sections(vendors: Vendors, public_url: str, timeout: float, **meetings: Any) -> dict[str, dict[str, Any]]:
    return {
        "server": {"public_url": public_url, "backend_timeout_seconds": timeout},
        "logging": {"level": "WARNING"},
        "meetings": {
            "default_backend": "zoom",
            "allowed_backends": list(BACKENDS),
            "operation_lease_seconds": LEASE,
            "job_poll_seconds": 0.2,
            "job_retry_seconds": 0.2,
            "job_max_attempts": 50,
            "reconcile_interval_seconds": 1,
            **meetings,
        },
        "backends.zoom": vendors.zoom.backend_config(),
        "backends.whereby": vendors.whereby.backend_config(),
        "backends.teams": vendors.teams.backend_config(),
        "backends.google_meet": vendors.google.backend_config(service_account_file=str(vendors.google_key)),
    }


@dataclass
class Setup:
    tmp_path: Path
    config: Config
    config_path: Path
    auth: dict[str, str]
    links: dict[str, str]  # backend -> link id

    def serve(self, name: str, port: int | None = None) -> BridgeProcess:
        process = BridgeProcess.serve(self.config_path, self.tmp_path / f"{name}.log", port=port, name=name)
        process.wait_ready("/readyz", START_SECONDS)
        return process


async def make_setup(
    tmp_path: Path, database_url: str, vendors: Vendors, *, timeout: float = 2, **meetings: Any
) -> Setup:
    config = make_config(tmp_path, database_url)
    config_path = write_config_toml(
        tmp_path / "bridge.toml", config, sections(vendors, "http://127.0.0.1:8000", timeout, **meetings)
    )
    links = {}
    async with prepared_store(config) as store:
        for n, backend in enumerate(BACKENDS):
            link = await store.create_link(
                pipedrive_user_id=300 + n, company_id=77, user_name="Ada Lovelace", user_email=USER_EMAIL
            )
            await store.set_link_backend(link.id, backend)
            links[backend] = link.id
    auth = basic_auth(config.pipedrive.client_id, config.pipedrive.client_secret)
    return Setup(tmp_path, config, config_path, auth, links)


def body(topic: str, day: int = 1, duration: int = 30) -> dict[str, Any]:
    return {"topic": topic, "start_time": f"2030-03-{day:02d} 09:00", "duration": duration, "timezone": "UTC"}


async def live_meetings(config: Config) -> dict[str, set[str]]:
    """The bridge's live meetings: vendor ids by backend."""
    async with prepared_store(config) as store:
        found: dict[str, set[str]] = {backend: set() for backend in BACKENDS}
        for backend in found:
            live, _issued = await store.known_keys(backend)
            found[backend] = {meeting.vendor_meeting_id for meeting in live.values()}
        return found


def ledgers(vendors: Vendors) -> dict[str, set[str]]:
    """Each vendor's own record of the rooms that exist, as the bridge's vendor meeting ids."""
    with vendors.teams.lock:
        teams = {f"{m['organizer']}:{meeting_id}" for meeting_id, m in vendors.teams.meetings.items()}
    return {
        "zoom": set(vendors.zoom.live_meetings()),
        "whereby": set(vendors.whereby.live_rooms()),
        "teams": teams,
        "google_meet": {f"{USER_EMAIL}/{event_id}" for event_id in vendors.google.events(USER_EMAIL)},
    }


async def settled(store: Store) -> bool:
    """No job left, and no claim still being made."""
    return not await store.jobs() and not await store.stale_claims(float("inf"))


def reconcile(config_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "--config", str(config_path), "reconcile", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- the same postMeeting at two replicas -----------------------------------------------------


async def test_the_same_post_meeting_at_two_replicas_in_any_order_makes_one_meeting(
    tmp_path: Path, postgres_url: str, vendors: Vendors
) -> None:
    setup = await make_setup(tmp_path, postgres_url, vendors, timeout=10, operation_lease_seconds=15)
    vendors.zoom.delay = 1.0  # every Zoom answer takes a second: a create is in flight for about two
    link = setup.links["zoom"]
    first, second = setup.serve("replica-1"), setup.serve("replica-2")
    # (delay before the first copy, replica of the first copy, delay before the second copy)
    overlaps = [(0.0, 0.0), (0.0, 0.3), (0.0, 1.2), (0.3, 0.0), (1.2, 0.0), (0.0, 5.0)]
    try:
        async with httpx.AsyncClient(timeout=30, headers=setup.auth) as http:
            for case, (one_after, two_after) in enumerate(overlaps):
                answers: list[httpx.Response] = []

                async def post(
                    replica: BridgeProcess, after: float, topic: str = f"Demo {case}", into: list[Any] = answers
                ) -> None:
                    await anyio.sleep(after)
                    into.append(await http.post(f"{replica.url}/api/v1/links/{link}/meetings", json=body(topic)))

                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(post, first, one_after)
                    tasks.start_soon(post, second, two_after)

                assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
                datas = [a.json()["data"] for a in answers]
                assert datas[0] == datas[1], f"case {case}: two different answers"
        assert len(vendors.zoom.live_meetings()) == len(overlaps)
        assert vendors.zoom.count("POST", "/v2/users/") == len(overlaps)  # one create per request, never two
    finally:
        first.stop()
        second.stop()


async def test_identical_post_meetings_for_an_offline_backend_at_two_replicas_make_one_meeting(
    tmp_path: Path, postgres_url: str
) -> None:
    """Jitsi makes its rooms offline, inside the claim's transaction: copies of one request racing at two
    replicas wait on the claim's unique key, and every copy answers the one meeting the first stored."""
    config = make_config(tmp_path, postgres_url)
    meetings = {"default_backend": "jitsi", "allowed_backends": ["jitsi"]}
    config_path = write_config_toml(
        tmp_path / "bridge.toml", config, {"logging": {"level": "WARNING"}, "meetings": meetings}
    )
    async with prepared_store(config) as store:
        link = (await store.create_link(pipedrive_user_id=401, company_id=77, user_name="Ada Lovelace")).id
    auth = basic_auth(config.pipedrive.client_id, config.pipedrive.client_secret)
    replicas = [BridgeProcess.serve(config_path, tmp_path / f"replica-{n}.log", name=f"replica-{n}") for n in (1, 2)]
    rounds, copies = 30, 6
    try:
        for replica in replicas:
            replica.wait_ready("/readyz", START_SECONDS)
        async with httpx.AsyncClient(timeout=30, headers=auth) as http:
            answers: dict[int, list[httpx.Response]] = {n: [] for n in range(rounds)}

            async def post(n: int, replica: BridgeProcess) -> None:
                url = f"{replica.url}/api/v1/links/{link}/meetings"
                answers[n].append(await http.post(url, json=body(f"Offline demo {n}", day=1 + n % 28)))

            async with anyio.create_task_group() as tasks:  # every round's copies at once, the rounds overlapping
                for n in range(rounds):
                    for copy in range(copies):
                        tasks.start_soon(post, n, replicas[copy % 2])
        for n, got in answers.items():
            assert [a.status_code for a in got] == [201] * copies, [a.text for a in got]
            assert len({a.text for a in got}) == 1, f"round {n}: the copies were answered differently"
        async with prepared_store(config) as store:
            live, _issued = await store.known_keys("jitsi")
        assert sorted(m.id for m in live.values()) == sorted(
            got[0].json()["data"]["meeting_id"] for got in answers.values()
        )
    finally:
        for replica in replicas:
            replica.stop()


# --- kill -9 under load ---------------------------------------------------------------------------


@dataclass
class Load:
    answered: dict[str, str]  # meeting id -> backend, answered 201 and no delete sent since
    deleted: set[str]


async def load_then_kill(setup: Setup, bridge: BridgeProcess, cycle: int, rng: random.Random) -> Load:
    """Meetings made, moved (Whereby rooms replaced) and deleted by 8 clients; SIGKILL in the middle."""
    load = Load({}, set())
    kill_after = rng.uniform(0.8, KILL_WITHIN)

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        for n in itertools.count(worker, 8):  # until the server is killed
            backend = BACKENDS[n % len(BACKENDS)]
            base = f"{bridge.url}/api/v1/links/{setup.links[backend]}/meetings"
            try:
                made = await http.post(base, json=body(f"cycle {cycle} meeting {n}"))
                if made.status_code != 201:
                    continue
                meeting_id = made.json()["data"]["meeting_id"]
                load.answered[meeting_id] = backend
                if n % 3 == 0:  # moved days later: Whereby makes a new room, Zoom moves the same one
                    await http.patch(
                        f"{base}/{meeting_id}", json=body(f"cycle {cycle} meeting {n}", day=20, duration=90)
                    )
                if n % 5 == 0:
                    del load.answered[meeting_id]  # from here on it may be deleted (the kill may cut the answer)
                    deleted = await http.delete(f"{base}/{meeting_id}")
                    if deleted.status_code == 204:
                        load.deleted.add(meeting_id)
            except httpx.HTTPError:
                return  # the server is gone

    async with (
        httpx.AsyncClient(timeout=10, headers=setup.auth) as http,
        anyio.create_task_group() as tasks,
    ):
        for worker in range(8):
            tasks.start_soon(client, worker, http)
        await anyio.sleep(kill_after)
        bridge.kill()
    return load


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
async def test_kill_9_under_load_leaves_no_orphan_and_loses_nothing(
    tmp_path: Path, database: str, request: pytest.FixtureRequest, vendors: Vendors
) -> None:
    url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    setup = await make_setup(tmp_path, url or f"sqlite:///{tmp_path / 'bridge.sqlite3'}", vendors)
    # so that several creates are in flight at every moment (Teams and Google make the room, then answer late)
    vendors.zoom.delay = 0.1
    vendors.teams.create_delay = vendors.google.insert_delay = 0.1
    rng = random.Random(11)
    port = free_port()
    loads = []
    for cycle in range(CYCLES):
        bridge = setup.serve(f"bridge-{cycle}", port)
        loads.append(await load_then_kill(setup, bridge, cycle, rng))
    bridge = setup.serve("bridge-after", port)  # its worker drops the lapsed claims and runs the sweeps
    try:
        async with prepared_store(setup.config) as store:
            deadline = anyio.current_time() + SETTLE_SECONDS
            while not await settled(store):
                assert anyio.current_time() < deadline, f"still unsettled: {await store.jobs()}"
                await anyio.sleep(0.2)
            live = await live_meetings(setup.config)
            # every meeting answered 201 and never sent a delete is live, and every live one is at its vendor
            for load in loads:
                for meeting_id, backend in load.answered.items():
                    meeting = await store.meeting_by_id(meeting_id)
                    assert meeting is not None and meeting.state == MEETING_ACTIVE, meeting_id
                    assert meeting.vendor_meeting_id in live[backend]
                for meeting_id in load.deleted:
                    assert (await store.meeting_by_id(meeting_id)).state != MEETING_ACTIVE  # type: ignore[union-attr]
        assert sum(len(load.answered) for load in loads) > 10  # the load did make meetings before each kill
        assert ledgers(vendors) == live  # no orphan at either vendor, no meeting without its room
        checked = reconcile(setup.config_path, "--dry-run")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "rooms the bridge does not know: 0" in checked.stdout
    finally:
        bridge.stop()


# --- a vendor outage during a stream of deletes ---------------------------------------------------


async def test_deletes_while_whereby_is_down_finish_once_it_is_back(
    tmp_path: Path, postgres_url: str, vendors: Vendors
) -> None:
    whereby = FakeWhereby()
    port = free_port()

    def build(url: str) -> ASGIApp:
        whereby.api_base = f"{url}/v1"
        return whereby

    vendors.whereby = whereby
    with serve_on_loopback(build, port=port):
        setup = await make_setup(tmp_path, postgres_url, vendors)
        bridge = setup.serve("bridge")
        base = f"{bridge.url}/api/v1/links/{setup.links['whereby']}/meetings"
        try:
            async with httpx.AsyncClient(timeout=30, headers=setup.auth) as http:
                made = []
                for n in range(12):
                    answer = await http.post(base, json=body(f"outage {n}"))
                    assert answer.status_code == 201, answer.text
                    made.append(answer.json()["data"]["meeting_id"])
                assert len(whereby.live_rooms()) == 12
                whereby.set_down()  # 503 to everything
                for meeting_id in made[:6]:
                    assert (await http.delete(f"{base}/{meeting_id}")).status_code == 204
        except BaseException:
            bridge.stop()
            raise
    # now nothing listens on Whereby's port: connection refused
    try:
        async with httpx.AsyncClient(timeout=30, headers=setup.auth) as http:
            for meeting_id in made[6:]:
                assert (await http.delete(f"{base}/{meeting_id}")).status_code == 204
            async with prepared_store(setup.config) as store:
                jobs = await store.jobs()
                assert len(jobs) == 12 and all(job.state == "pending" for job in jobs)
                assert all(job.last_error for job in jobs)
        assert len(whereby.live_rooms()) == 12  # none could be deleted yet
        shown = reconcile(setup.config_path, "--dry-run")
        assert shown.returncode == 1, shown.stdout + shown.stderr  # something is unresolved
        assert "jobs: 12 pending, 0 failed" in shown.stdout
        assert "rooms: could not be listed: Whereby could not be reached" in shown.stdout
        assert shown.stdout.count("(meeting deleted): ") == 12 and "last error: " in shown.stdout
        whereby.set_down(False)
        with serve_on_loopback(build, port=port):  # Whereby is back, at the same address
            async with prepared_store(setup.config) as store:
                deadline = anyio.current_time() + SETTLE_SECONDS
                while whereby.live_rooms() or await store.jobs():
                    assert anyio.current_time() < deadline, f"rooms left: {whereby.live_rooms()}"
                    await anyio.sleep(0.2)
            metrics = httpx.get(f"{bridge.url}/metrics").text
            assert 'pvb_outbox_jobs{state="pending"} 0.0' in metrics
            assert 'pvb_outbox_job_runs_total{kind="delete",outcome="done"} 12.0' in metrics
    finally:
        bridge.stop()
