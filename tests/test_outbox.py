"""Claims, the outbox and reconciling, through the app (two app instances on one database standing in for
two replicas), on SQLite and PostgreSQL, with the ``listing`` fake backend that tags and lists its rooms.

The same guarantees against real processes, kill -9 and the Zoom and Whereby fakes are in
``test_durable.py``; these are the fast, exact cases.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import update

from bridge.api import reconcile
from bridge.api.meetings import request_fingerprint
from bridge.config import Config
from bridge.errors import BackendError
from bridge.runtime import open_bridge
from bridge.storage.links import Link
from bridge.storage.meetings import Choice, Ticket, room_key
from bridge.storage.schema import CLAIMS, JOBS, MEETING_ACTIVE
from bridge.storage.store import Store
from bridge.testing import bridge_client, load_plugins, make_config, wait_for_empty_outbox, wait_until
from bridge.vendors.interface import MeetingRequest

pytestmark = pytest.mark.anyio

BODY = {"topic": "Demo with Acme", "start_time": "2030-01-01 10:00", "duration": 30, "timezone": "UTC"}


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Config:
    return make_config(
        tmp_path,
        database_url,
        server={"backend_timeout_seconds": 2},
        meetings={
            "default_backend": "listing",
            "allowed_backends": ["listing", "finding", "fake"],
            "operation_lease_seconds": 3,
            "job_poll_seconds": 0.05,
            "job_retry_seconds": 0.05,
            "reconcile_interval_seconds": 0.2,
        },
    )


BODY_REQUEST = MeetingRequest(topic=BODY["topic"], start_time=datetime(2030, 1, 1, 10, 0, tzinfo=UTC), duration=30)


async def claim_elsewhere(store: Store, link: Link, *, lease_seconds: float, backend: str = "listing") -> Ticket:
    """BODY's postMeeting claimed by another process (one that may be dead), as the store records it."""
    fingerprint = request_fingerprint(link.id, BODY_REQUEST)
    claimed = await store.claim_meeting(
        fingerprint,
        link.id,
        lambda _link: Choice(backend, sweep=True),
        "elsewhere:1:x",
        lease_seconds=lease_seconds,
        since=None,
    )
    assert claimed.ticket is not None
    return claimed.ticket


def url(link: Link, meeting_id: str | None = None) -> str:
    base = f"/api/v1/links/{link.id}/meetings"
    return f"{base}/{meeting_id}" if meeting_id else base


def execute(store: Store, statement: Any) -> None:
    with store.engine.begin() as conn:
        conn.execute(statement)


# --- claims ------------------------------------------------------------------------------------


async def test_the_same_request_at_two_instances_at_once_makes_one_room(config, fake_plugin, vendor, store, link):
    vendor.delay = 0.5
    async with bridge_client(config, [fake_plugin]) as one, bridge_client(config, [fake_plugin]) as two:
        answers: list[httpx.Response] = []

        async def post(client: httpx.AsyncClient, after: float) -> None:
            await anyio.sleep(after)
            answers.append(await client.post(url(link), json=BODY))

        async with anyio.create_task_group() as tasks:
            for n in range(6):
                tasks.start_soon(post, (one, two)[n % 2], n * 0.1)

    assert [a.status_code for a in answers] == [201] * 6
    assert len({a.json()["data"]["meeting_id"] for a in answers}) == 1
    assert len({a.json()["data"]["invitation"] for a in answers}) == 1
    assert list(vendor.rooms) == ["listing-1"]


async def test_a_copy_of_a_request_another_process_is_still_making_is_asked_to_try_again(client, vendor, store, link):
    await claim_elsewhere(store, link, lease_seconds=60)
    started = time.monotonic()

    response = await client.post(url(link), json=BODY)

    assert response.status_code == 503, response.text
    assert "still being made" in response.json()["error"]
    assert 2.5 < time.monotonic() - started < 6  # it waited out the vendor timeout (2 s) and a moment more
    assert vendor.rooms == {}


async def test_a_request_whose_first_copy_failed_makes_its_room_on_the_retry(client, vendor, store, link):
    vendor.fail["create"] = BackendError("Listing Video refused for now")

    assert (await client.post(url(link), json=BODY)).status_code == 502
    retried = await client.post(url(link), json=BODY)

    assert retried.status_code == 201, retried.text
    assert list(vendor.rooms) == ["listing-1"]


async def test_a_claim_whose_process_died_lets_the_retry_through_and_its_room_is_swept(client, vendor, store, link):
    # a process claimed this request and the vendor made the room, tagged with the claim's key; then the
    # process died before storing it: its claim (a short lease) and its sweep job are all that is left
    dead = await claim_elsewhere(store, link, lease_seconds=0.3)
    vendor.rooms["listing-orphan"] = replace(BODY_REQUEST, key=room_key(dead.meeting_id))

    retried = await client.post(url(link), json=BODY)  # Pipedrive's retry waits out the lapsed lease

    assert retried.status_code == 201, retried.text
    assert retried.json()["data"]["meeting_id"] != dead.meeting_id
    await wait_until(lambda: "listing-orphan" not in vendor.rooms, what="the sweep of the dead claim's room")
    await wait_for_empty_outbox(store)
    assert list(vendor.rooms) == ["listing-1"]
    assert not await store.stale_claims(time.time() + 3600)


async def test_a_backend_that_finds_rooms_by_key_has_its_dead_claims_room_swept_without_listing(
    client, vendor, store, link
):
    dead = await claim_elsewhere(store, link, lease_seconds=0.3, backend="finding")
    key = room_key(dead.meeting_id)
    vendor.rooms["finding-orphan"] = replace(BODY_REQUEST, key=key)
    vendor.rooms["finding-other"] = replace(BODY_REQUEST, key="0123456789abcdef")  # another meeting's room

    retried = await client.post(url(link), json=BODY)

    assert retried.status_code == 201, retried.text
    await wait_until(lambda: "finding-orphan" not in vendor.rooms, what="the sweep of the dead claim's room")
    await wait_for_empty_outbox(store)
    assert "finding-other" in vendor.rooms
    finding_calls = [(operation, arg) for backend, operation, arg in vendor.calls if backend == "finding"]
    assert ("find", key) in finding_calls
    assert all(operation != "list" for operation, _ in finding_calls)


async def test_a_holder_slower_than_its_lease_stores_nothing_and_its_room_goes(
    config, fake_plugin, vendor, store, link
):
    async with bridge_client(config, [fake_plugin]) as client:
        original = vendor.take_failure

        def take_over(operation: str) -> None:
            if operation == "create":  # while the vendor works, another replica takes the lapsed claim over
                execute(store, update(CLAIMS).values(holder="another-replica"))
            original(operation)

        vendor.take_failure = take_over  # type: ignore[method-assign]
        response = await client.post(url(link), json=BODY)
        vendor.take_failure = original  # type: ignore[method-assign]

        assert response.status_code == 503, response.text
        assert "taken over" in response.json()["error"]
        await wait_until(lambda: vendor.rooms == {}, what="the removal of the room nobody stored")
    live, _ = await store.known_keys("listing")
    assert live == {}


# --- the outbox -----------------------------------------------------------------------------------


async def test_a_move_that_makes_a_new_room_queues_the_old_rooms_deletion_with_the_change(client, vendor, store, link):
    vendor.new_room_on_update = True
    made = await client.post(url(link), json=BODY)
    meeting_id = made.json()["data"]["meeting_id"]
    vendor.fail["delete"] = httpx.ConnectError("down")

    moved = await client.patch(url(link, meeting_id), json={**BODY, "start_time": "2030-02-01 10:00"})

    assert moved.status_code == 204
    assert (await store.meeting_by_id(meeting_id)).vendor_meeting_id == "listing-2"  # type: ignore[union-attr]
    await wait_until(lambda: list(vendor.rooms) == ["listing-2"], what="the old room's removal")
    await wait_for_empty_outbox(store)


async def test_a_job_is_run_by_one_worker_at_a_time(config, fake_plugin, vendor, store, link):
    vendor.delay = 0.0
    async with bridge_client(config, [fake_plugin]) as client:
        made = await client.post(url(link), json=BODY)
        meeting_id = made.json()["data"]["meeting_id"]
        vendor.fail["delete"] = httpx.ConnectError("down")
        assert (await client.delete(url(link, meeting_id))).status_code == 204
        async with bridge_client(config, [fake_plugin]), bridge_client(config, [fake_plugin]):
            await wait_until(lambda: vendor.rooms == {}, what="the room's removal")  # three workers now
            await anyio.sleep(0.3)
    assert vendor.calls.count(("listing", "delete", "listing-1")) == 1


async def test_a_job_that_keeps_failing_stops_after_its_attempts(tmp_path, database_url, fake_plugin, vendor, store):
    config = make_config(
        tmp_path,
        database_url,
        meetings={
            "default_backend": "fake",
            "allowed_backends": ["fake"],
            "job_poll_seconds": 0.02,
            "job_retry_seconds": 0.01,
            "job_max_attempts": 4,
        },
    )
    async with bridge_client(config, [fake_plugin]) as client:
        link = await store.create_link(pipedrive_user_id=5, company_id=6, user_name="Bo", user_email="bo@example.com")
        made = await client.post(url(link), json=BODY)
        meeting_id = made.json()["data"]["meeting_id"]

        def failing_delete(operation: str, original: Any = vendor.take_failure) -> None:
            if operation == "delete":
                raise httpx.ConnectError("Fake Video is down")
            original(operation)

        vendor.take_failure = failing_delete  # type: ignore[assignment]
        assert (await client.delete(url(link, meeting_id))).status_code == 204

        async def given_up() -> bool:
            jobs = await store.jobs()
            return bool(jobs) and jobs[0].state == "failed"

        await wait_until(given_up, what="the job's last attempt")
    [job] = await store.jobs()
    assert job.attempts == 4 and "could not be reached" in (job.last_error or "")


# --- reconcile and metrics ------------------------------------------------------------------------


async def test_reconcile_shows_then_resolves_what_a_crash_left(config, fake_plugin, vendor, store, link):
    async with bridge_client(config, [fake_plugin]) as client:
        made = await client.post(url(link), json=BODY)
        live_id = made.json()["data"]["meeting_id"]
        doomed = await client.post(url(link), json={**BODY, "topic": "Doomed"})
        doomed_id = doomed.json()["data"]["meeting_id"]
        vendor.fail["delete"] = BackendError("Listing Video refused: try later")
        assert (await client.delete(url(link, doomed_id))).status_code == 204
    # a room the bridge tagged that no meeting holds (its meeting deleted, its delete refused), and
    # a room tagged by another installation sharing the account
    vendor.rooms["foreign"] = replace(vendor.rooms["listing-1"], key="f" * 16)

    async with open_bridge(config, load_plugins([fake_plugin])) as bridge:
        reports = await reconcile.survey(bridge)
        text = "\n".join(reconcile.describe(reports))
        [listing] = [r for r in reports if r.backend == "listing"]
        assert len(listing.failed) == 1 and "try later" in text
        assert [s.room.vendor_meeting_id for s in listing.stray_rooms] == ["listing-2"]
        assert listing.foreign_rooms == 1 and "another installation (left alone): 1" in text

        resolution = await reconcile.resolve(bridge, reports)
        assert resolution.unresolved == 0

        after = await reconcile.survey(bridge)
        assert all(entry.clean for entry in after), reconcile.describe(after)
    assert sorted(vendor.rooms) == ["foreign", "listing-1"]
    meeting = await store.meeting_by_id(live_id)
    assert meeting is not None and meeting.state == MEETING_ACTIVE


async def test_metrics_show_the_outbox(config, fake_plugin, vendor, store, link):
    async with bridge_client(config, [fake_plugin]) as client:
        made = await client.post(url(link), json=BODY)
        vendor.fail["delete"] = BackendError("Listing Video refused")
        await client.delete(url(link, made.json()["data"]["meeting_id"]))
        execute(store, update(JOBS).values(created_at=time.time() - 120))
        text = (await client.get("/metrics")).text
    assert 'pvb_outbox_jobs{state="failed"} 1.0' in text
    assert 'pvb_outbox_jobs{state="pending"} 0.0' in text
    assert 'pvb_outbox_job_runs_total{kind="delete",outcome="failed"} 1.0' in text
    assert "pvb_outbox_oldest_job_age_seconds 0.0" in text  # a failed job is not waiting to run
