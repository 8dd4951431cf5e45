"""The outbox: vendor work that must finish (a room to delete, a key to sweep), kept as rows until it is done.

A job is written in the same transaction as the state change that needs it, so a
crash can delay it but never lose it. Whoever writes it holds it (``holder`` until
``lease_until``) and runs it at once; if that fails or the process dies, any
replica's worker takes it once ``next_attempt`` has come and the lease has lapsed.
Taking a job is a compare-and-swap on its row, so one worker runs it at a time.
"""

from __future__ import annotations

import secrets as _secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, delete, func, insert, or_, select, update

from bridge.storage.schema import (
    JOB_FAILED,
    JOB_PENDING,
    JOB_SWEEP,
    JOBS,
    MEETING_ACTIVE,
    MEETINGS,
    field_names,
    row_values,
)
from bridge.storage.statements import Prepared
from bridge.storage.transactions import Database, in_thread, writes


@dataclass(frozen=True, slots=True)
class Job:
    """A row of ``job``: what to do at which vendor, and how it has gone so far."""

    id: str
    kind: str
    backend: str
    link_id: str
    next_attempt: float
    created_at: float
    meeting_id: str | None = None
    vendor_meeting_id: str | None = None
    room_key: str | None = None
    reason: str = ""
    state: str = JOB_PENDING
    attempts: int = 0
    holder: str | None = None
    lease_until: float = 0.0
    last_error: str | None = None


def new_job(
    kind: str,
    *,
    backend: str,
    link_id: str,
    reason: str,
    meeting_id: str | None = None,
    vendor_meeting_id: str | None = None,
    room_key: str | None = None,
    holder: str | None = None,
    lease_seconds: float = 0.0,
    delay: float = 0.0,
) -> Job:
    """A pending job; with a ``holder`` it is held for ``lease_seconds`` by whoever runs it at once."""
    now = time.time()
    return Job(
        id=_secrets.token_hex(16),
        kind=kind,
        backend=backend,
        link_id=link_id,
        meeting_id=meeting_id,
        vendor_meeting_id=vendor_meeting_id,
        room_key=room_key,
        reason=reason,
        next_attempt=now + delay,
        created_at=now,
        holder=holder,
        lease_until=now + lease_seconds if holder else 0.0,
    )


def job_from_row(row: Row[Any]) -> Job:
    return Job(**row._mapping)


# on the path of every postMeeting that sweeps: run on the driver's cursor (see bridge.storage.statements)
_INSERT_JOB = Prepared(insert(JOBS), keys=field_names(Job))
_TAKE_UNCLAIMED = Prepared(delete(JOBS).where(JOBS.c.id == bindparam("id"), JOBS.c.holder.is_(None)))


def insert_job(conn: Connection, job: Job) -> None:
    """Add the job inside the caller's transaction (the state change that needs it)."""
    _INSERT_JOB.run(conn, row_values(job))


def take_unclaimed(conn: Connection, job_id: str) -> bool:
    """Remove a job nobody has started (a sweep that an operation, now stored, made unnecessary).

    False when a worker holds it or it is gone: the operation lost the race and must
    not count on the job's absence."""
    return _TAKE_UNCLAIMED.run(conn, {"id": job_id}).rowcount == 1


def sweep_in_flight_at(now: float) -> Any:
    """A sweep job still covering an operation at ``now``: pending, not yet due, or held by a worker."""
    return and_(
        JOBS.c.kind == JOB_SWEEP,
        JOBS.c.state == JOB_PENDING,
        or_(JOBS.c.next_attempt > now, JOBS.c.lease_until > now),
    )


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    failed: int
    oldest_created_at: float | None


class Outbox(Database):
    """Every read and write of ``job``."""

    @writes
    def add_job(self, job: Job) -> None:
        with self._transaction(write=True) as conn:
            insert_job(conn, job)

    @in_thread
    def due_jobs(self, now: float, limit: int = 50) -> list[Job]:
        """Pending jobs whose time has come and whose holder (if any) has let its lease lapse."""
        with self._transaction() as conn:
            rows = conn.execute(
                select(JOBS)
                .where(JOBS.c.state == JOB_PENDING, JOBS.c.next_attempt <= now, JOBS.c.lease_until < now)
                .order_by(JOBS.c.next_attempt)
                .limit(limit)
            )
            return [job_from_row(row) for row in rows]

    @in_thread
    def jobs(self) -> list[Job]:
        with self._transaction() as conn:
            return [job_from_row(row) for row in conn.execute(select(JOBS).order_by(JOBS.c.created_at))]

    @writes
    def take_job(self, job_id: str, holder: str, lease_seconds: float, *, failed_too: bool = False) -> Job | None:
        """Hold the job for ``lease_seconds`` if nobody holds it; None when another holder has it (or it is gone)."""
        now = time.time()
        states = [JOB_PENDING, JOB_FAILED] if failed_too else [JOB_PENDING]
        with self._transaction(write=True) as conn:
            result = conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.state.in_(states), JOBS.c.lease_until < now)
                .values(holder=holder, lease_until=now + lease_seconds, state=JOB_PENDING)
            )
            if result.rowcount != 1:
                return None
            return job_from_row(conn.execute(select(JOBS).where(JOBS.c.id == job_id)).one())

    @writes
    def finish_job(self, job_id: str, holder: str) -> None:
        with self._transaction(write=True) as conn:
            conn.execute(delete(JOBS).where(JOBS.c.id == job_id, JOBS.c.holder == holder))

    @writes
    def postpone_job(self, job_id: str, holder: str, *, error: str, next_attempt: float, failed: bool) -> None:
        """Release the job after an attempt that did not finish it: try again at ``next_attempt``, or never."""
        with self._transaction(write=True) as conn:
            conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.holder == holder)
                .values(
                    attempts=JOBS.c.attempts + 1,
                    last_error=error[:2000],
                    next_attempt=next_attempt,
                    state=JOB_FAILED if failed else JOB_PENDING,
                    holder=None,
                    lease_until=0.0,
                )
            )

    @writes
    def defer_job(self, job_id: str, holder: str, next_attempt: float) -> None:
        """Release the job unattempted until ``next_attempt`` (another operation on its key is in flight)."""
        with self._transaction(write=True) as conn:
            conn.execute(
                update(JOBS)
                .where(JOBS.c.id == job_id, JOBS.c.holder == holder)
                .values(next_attempt=next_attempt, holder=None, lease_until=0.0)
            )

    @in_thread
    def sweep_in_flight(self, room_key: str, job_id: str) -> float | None:
        """When another operation on the key is still within its lease (its sweep job not yet due), its due time."""
        now = time.time()
        with self._transaction() as conn:
            return conn.execute(
                select(func.max(JOBS.c.next_attempt)).where(
                    JOBS.c.room_key == room_key, JOBS.c.id != job_id, sweep_in_flight_at(now)
                )
            ).scalar()

    @in_thread
    def room_in_use(self, backend: str, vendor_meeting_id: str) -> bool:
        """Whether a live meeting holds this vendor room (then no job may delete it)."""
        with self._transaction() as conn:
            found = conn.execute(
                select(MEETINGS.c.id).where(
                    and_(
                        MEETINGS.c.backend == backend,
                        MEETINGS.c.vendor_meeting_id == vendor_meeting_id,
                        MEETINGS.c.state == MEETING_ACTIVE,
                    )
                )
            ).first()
            return found is not None

    @in_thread
    def outbox_stats(self) -> OutboxStats:
        with self._transaction() as conn:
            counts: dict[str, int] = dict(conn.execute(select(JOBS.c.state, func.count()).group_by(JOBS.c.state)).all())
            oldest = conn.execute(select(func.min(JOBS.c.created_at)).where(JOBS.c.state == JOB_PENDING)).scalar()
            return OutboxStats(counts.get(JOB_PENDING, 0), counts.get(JOB_FAILED, 0), oldest)
