"""Reconciling: what a crash or an outage left (lapsed claims, outbox jobs, rooms nobody holds), found and resolved.

Each replica's worker drops lapsed claims at start and on a timer, and runs due
jobs (``bridge.api.jobs``). ``pipedrive-video-bridge reconcile`` shows all of it per
backend, lists the rooms of vendors that can list them and, without
``--dry-run``, resolves everything at once: lapsed claims dropped, every pending
and failed job run now, and each room tagged by this bridge that no live meeting
holds removed. Rooms tagged with a key this database never issued belong to
another installation sharing the vendor account: they are counted, never touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import anyio

from bridge.api.jobs import JobResult, JobRunner
from bridge.api.vendor_calls import backend_context, call_backend
from bridge.errors import BridgeError
from bridge.runtime import Bridge
from bridge.storage.meetings import room_key
from bridge.storage.outbox import Job
from bridge.storage.schema import JOB_DELETE, JOB_FAILED
from bridge.vendors.interface import VendorRoom

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StaleClaim:
    fingerprint: str
    link_id: str
    meeting_id: str
    lapsed_seconds: float


@dataclass(frozen=True)
class StrayRoom:
    """A room this bridge tagged that no live meeting holds."""

    room: VendorRoom
    link_id: str


@dataclass
class BackendReport:
    backend: str
    title: str
    stale_claims: list[StaleClaim] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    lists_rooms: bool = False
    listing_error: str | None = None
    stray_rooms: list[StrayRoom] = field(default_factory=list)
    foreign_rooms: int = 0

    @property
    def pending(self) -> list[Job]:
        return [job for job in self.jobs if job.state != JOB_FAILED]

    @property
    def failed(self) -> list[Job]:
        return [job for job in self.jobs if job.state == JOB_FAILED]

    @property
    def clean(self) -> bool:
        return not (self.stale_claims or self.jobs or self.stray_rooms or self.listing_error)


async def drop_stale_claims(bridge: Bridge) -> int:
    """Mark claims whose process died failed, so identical requests may proceed; their sweep jobs find the rooms."""
    now = time.time()
    dropped = 0
    for claim in await bridge.store.stale_claims(now):
        if await bridge.store.drop_stale_claim(claim.fingerprint, claim.meeting_id, now):
            dropped += 1
            log.warning(
                "a postMeeting claim outlived its process; dropped",
                extra={"link_id": claim.link_id, "meeting_id": claim.meeting_id, "backend": claim.backend},
            )
    if dropped:
        bridge.metrics.stale_claims.inc(dropped)
    return dropped


async def survey(bridge: Bridge) -> list[BackendReport]:
    """What is unresolved, per backend (every backend with meetings, claims or jobs, and every available one)."""
    now = time.time()
    reports: dict[str, BackendReport] = {}

    def report(name: str) -> BackendReport:
        if name not in reports:
            backend = bridge.backends.available.get(name)
            reports[name] = BackendReport(name, backend.title if backend else name)
        return reports[name]

    for name in bridge.backends.available:
        report(name)
    for claim in await bridge.store.stale_claims(now):
        report(claim.backend).stale_claims.append(
            StaleClaim(claim.fingerprint, claim.link_id, claim.meeting_id, now - claim.lease_until)
        )
    for job in await bridge.store.jobs():
        report(job.backend).jobs.append(job)
    for name, entry in sorted(reports.items()):
        backend = bridge.backends.available.get(name)
        if backend is None or not backend.lists_rooms:
            continue
        entry.lists_rooms = True
        try:
            await _list_stray_rooms(bridge, entry, now)
        except BridgeError as exc:
            entry.listing_error = exc.message
    return [reports[name] for name in sorted(reports)]


async def _list_stray_rooms(bridge: Bridge, entry: BackendReport, now: float) -> None:
    backend = bridge.backends.get(entry.backend)
    live, issued = await bridge.store.known_keys(entry.backend)
    busy = await bridge.store.keys_in_flight(entry.backend, now)
    seen: dict[str, StrayRoom] = {}
    for link_id in await bridge.store.links_of_backend(entry.backend):
        link = await bridge.store.get_link(link_id)
        if link is None:
            continue
        ctx = backend_context(bridge, link, entry.backend)
        rooms = await call_backend(bridge, backend, "list its rooms", lambda ctx=ctx: backend.list_rooms(ctx))  # type: ignore[misc]
        for room in rooms:
            seen.setdefault(room.vendor_meeting_id, StrayRoom(room, link_id))
    for stray in seen.values():
        key, vendor_id = stray.room.key, stray.room.vendor_meeting_id
        if key not in issued:
            entry.foreign_rooms += 1
        elif key not in busy and (key not in live or live[key].vendor_meeting_id != vendor_id):
            entry.stray_rooms.append(stray)


@dataclass
class Resolution:
    claims_dropped: int = 0
    jobs: list[tuple[Job, JobResult | None]] = field(default_factory=list)
    rooms: list[tuple[StrayRoom, JobResult]] = field(default_factory=list)

    @property
    def unresolved(self) -> int:
        left = [r for _, r in self.jobs if r is None or r.outcome != "done"]
        return len(left) + sum(1 for _, r in self.rooms if r.outcome != "done")


async def resolve(bridge: Bridge, reports: list[BackendReport]) -> Resolution:
    """Resolve what ``survey`` found, now: drop lapsed claims, run every job, remove every stray room."""
    runner = JobRunner(bridge)
    resolution = Resolution(claims_dropped=await drop_stale_claims(bridge))
    for entry in reports:
        for job in entry.jobs:
            resolution.jobs.append((job, await runner.take_and_run(job.id, failed_too=True)))
        for stray in entry.stray_rooms:
            job = runner.delete_job(entry.backend, stray.link_id, stray.room.vendor_meeting_id, reason="stray room")
            await bridge.store.add_job(job)
            resolution.rooms.append((stray, await runner.run_held(job)))
    return resolution


def describe(reports: list[BackendReport], now: float | None = None) -> list[str]:
    """The survey as lines for a terminal."""
    now = time.time() if now is None else now
    lines: list[str] = []
    for entry in reports:
        lines.append(f"{entry.backend} ({entry.title}):")
        lines.append(f"  stale claims: {len(entry.stale_claims)}")
        for claim in entry.stale_claims:
            lines.append(
                f"    meeting {claim.meeting_id} of link {claim.link_id}: its process died "
                f"{claim.lapsed_seconds:.0f} s ago (room key {room_key(claim.meeting_id)})"
            )
        lines.append(f"  jobs: {len(entry.pending)} pending, {len(entry.failed)} failed")
        for job in entry.jobs:
            what = f"delete room {job.vendor_meeting_id}" if job.kind == JOB_DELETE else f"sweep key {job.room_key}"
            when = "never again (failed)" if job.state == JOB_FAILED else _when(job.next_attempt - now)
            error = f"; last error: {job.last_error}" if job.last_error else ""
            lines.append(f"    {what} ({job.reason}): {job.attempts} attempt(s), next {when}{error}")
        if not entry.lists_rooms:
            lines.append("  rooms: this backend cannot list its rooms")
        elif entry.listing_error:
            lines.append(f"  rooms: could not be listed: {entry.listing_error}")
        else:
            lines.append(f"  rooms the bridge does not know: {len(entry.stray_rooms)}")
            for stray in entry.stray_rooms:
                lines.append(f"    room {stray.room.vendor_meeting_id} (key {stray.room.key})")
            if entry.foreign_rooms:
                lines.append(f"  rooms tagged by another installation (left alone): {entry.foreign_rooms}")
    return lines


def _when(seconds: float) -> str:
    return "now" if seconds <= 0 else f"in {seconds:.0f} s"


async def run_worker(bridge: Bridge) -> None:
    """The background worker of one replica: reconcile at start, then run due jobs and reconcile on a timer."""
    runner = JobRunner(bridge)
    settings = bridge.config.meetings
    next_reconcile = 0.0
    while True:
        try:
            if time.monotonic() >= next_reconcile:
                await drop_stale_claims(bridge)
                next_reconcile = time.monotonic() + settings.reconcile_interval_seconds
            await runner.run_due()
        except Exception:
            log.exception("the outbox worker failed a round; it tries again")
        await anyio.sleep(settings.job_poll_seconds)
