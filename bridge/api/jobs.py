"""Running the outbox: vendor work that must finish, done at once and retried by a worker on every replica.

Two kinds of job (``bridge.storage.outbox``):

- **delete**: remove one room at the vendor, unless a live meeting holds it;
- **sweep**: find the vendor's rooms tagged with the job's key (``Backend.find_rooms``) and
  remove those that no live meeting holds. A sweep is written, due when the
  lease ends, before every vendor call that may make a room; storing the result
  removes it. So a process killed mid-call leaves a sweep that finds its room.

An attempt that fails is tried again with backoff when the vendor may answer
differently later (``BackendError.transient``); a refusal, or too many attempts,
leaves the job ``failed`` for ``pipedrive-video-bridge reconcile`` to show and rerun.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import anyio
import httpx

from bridge.api.vendor_calls import backend_context, call_backend
from bridge.errors import BridgeError, ServiceUnavailable
from bridge.runtime import Bridge
from bridge.storage.outbox import Job, new_job
from bridge.storage.schema import JOB_DELETE, JOB_SWEEP, MEETING_ACTIVE
from bridge.vendors.interface import Backend, BackendContext

log = logging.getLogger(__name__)

T = TypeVar("T")
Outcome = Literal["done", "retry", "failed", "deferred"]
_LONGEST_WAIT = 3600.0
_GONE = frozenset({404, 410})


@dataclass
class JobResult:
    outcome: Outcome
    error: str | None = None
    rooms_removed: list[str] = field(default_factory=list)


class JobRunner:
    """Runs jobs this process holds, and finds due ones for the background worker."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.store = bridge.store
        self.lease = bridge.config.meetings.operation_lease_seconds

    def delete_job(
        self, backend: str, link_id: str, vendor_meeting_id: str, *, reason: str, meeting_id: str | None = None
    ) -> Job:
        """A job deleting one room, held by this process (it runs the job at once, once it is stored)."""
        return new_job(
            JOB_DELETE,
            backend=backend,
            link_id=link_id,
            meeting_id=meeting_id,
            vendor_meeting_id=vendor_meeting_id,
            reason=reason,
            holder=self.bridge.holder,
            lease_seconds=self.lease,
        )

    async def run_held(self, job: Job) -> JobResult:
        """One attempt at a job this process holds; never raises (what happened is in the job's row)."""
        try:
            result = await self._attempt(job)
        except Exception as exc:  # every failure is recorded on the job, and the caller goes on
            result = self._failure(job, exc)
            try:
                await self._postpone(job, result)
            except Exception:
                log.exception("could not record a job's failure", extra={"job_id": job.id})
            return result
        try:
            if result.outcome == "done":
                await self.store.finish_job(job.id, self.bridge.holder)
        except Exception:
            log.exception("could not mark a job done; it will run again", extra={"job_id": job.id})
        self._count(job, result)
        return result

    async def run_due(self, limit: int = 50, concurrency: int = 8) -> int:
        """Take and run every job that is due (one worker per job across replicas); how many were run."""
        due = await self.store.due_jobs(time.time(), limit)
        ran = 0
        limiter = anyio.CapacityLimiter(concurrency)

        async def one(candidate: Job) -> None:
            nonlocal ran
            async with limiter:
                job = await self.store.take_job(candidate.id, self.bridge.holder, self.lease)
                if job is not None:
                    ran += 1
                    await self.run_held(job)

        async with anyio.create_task_group() as tasks:
            for candidate in due:
                tasks.start_soon(one, candidate)
        return ran

    async def take_and_run(self, job_id: str, *, failed_too: bool = False) -> JobResult | None:
        """Run one job now, whatever its next attempt says (the reconcile command); None if another holds it."""
        job = await self.store.take_job(job_id, self.bridge.holder, self.lease, failed_too=failed_too)
        return None if job is None else await self.run_held(job)

    # --- one attempt ------------------------------------------------------------------

    async def _attempt(self, job: Job) -> JobResult:
        backend = self.bridge.backends.get(job.backend)
        link = await self.store.get_link(job.link_id)
        if link is None:
            raise ServiceUnavailable(f"the job's link {job.link_id} no longer exists")
        ctx = backend_context(self.bridge, link, job.backend)
        if job.kind == JOB_DELETE:
            return await self._delete(job, backend, ctx)
        if job.kind == JOB_SWEEP:
            return await self._sweep(job, backend, ctx)
        raise ServiceUnavailable(f"unknown job kind {job.kind!r}")

    async def _delete(self, job: Job, backend: Backend, ctx: BackendContext) -> JobResult:
        room = job.vendor_meeting_id or ""
        if await self.store.room_in_use(job.backend, room):
            log.info("room still in use; not deleted", extra={"job_id": job.id, "vendor_meeting_id": room})
            return JobResult("done")
        await self._remove(backend, ctx, room)
        log.info("room removed at the vendor", extra={"backend": job.backend, "reason": job.reason})
        return JobResult("done", rooms_removed=[room])

    async def _sweep(self, job: Job, backend: Backend, ctx: BackendContext) -> JobResult:
        if not backend.recovers_rooms:
            return JobResult("done")
        later = await self.store.sweep_in_flight(job.room_key or "", job.id)
        if later is not None:  # another operation on this meeting is still within its lease
            await self.store.defer_job(job.id, self.bridge.holder, later + 1.0)
            return JobResult("deferred")
        key = job.room_key or ""
        rooms = await self._call(backend, "find its rooms", lambda: backend.find_rooms(ctx, key))
        meeting = await self.store.meeting_by_id(job.meeting_id or "")
        keep = meeting.vendor_meeting_id if meeting is not None and meeting.state == MEETING_ACTIVE else None
        removed = []
        for room in rooms:
            if room.key == key and room.vendor_meeting_id != keep:
                await self._remove(backend, ctx, room.vendor_meeting_id)
                removed.append(room.vendor_meeting_id)
        if removed:
            log.warning(
                "rooms nobody holds removed at the vendor",
                extra={"backend": job.backend, "reason": job.reason, "count": len(removed)},
            )
        return JobResult("done", rooms_removed=removed)

    async def _remove(self, backend: Backend, ctx: BackendContext, vendor_meeting_id: str) -> None:
        try:
            await self._call(backend, "delete the meeting", lambda: backend.delete(ctx, vendor_meeting_id))
        except BridgeError as exc:
            cause = exc.__cause__
            if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code in _GONE:
                return  # the vendor has no such room any more: nothing left to do
            raise

    async def _call(self, backend: Backend, action: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call_backend(self.bridge, backend, action, call)

    # --- after a failed attempt ---------------------------------------------------------

    def _failure(self, job: Job, exc: Exception) -> JobResult:
        transient = getattr(exc, "transient", isinstance(exc, ServiceUnavailable))
        message = exc.message if isinstance(exc, BridgeError) else f"{exc.__class__.__name__}: {exc}"
        last_try = job.attempts + 1 >= self.bridge.config.meetings.job_max_attempts
        outcome: Outcome = "retry" if transient and not last_try else "failed"
        log.warning(
            "vendor job failed" + ("; will retry" if outcome == "retry" else "; left for `reconcile`"),
            extra={"job_id": job.id, "backend": job.backend, "kind": job.kind, "attempt": job.attempts + 1},
        )
        return JobResult(outcome, error=message)

    async def _postpone(self, job: Job, result: JobResult) -> None:
        base = self.bridge.config.meetings.job_retry_seconds
        wait = min(base * 2**job.attempts, _LONGEST_WAIT) * random.uniform(0.9, 1.1)
        with anyio.CancelScope(shield=True):
            await self.store.postpone_job(
                job.id,
                self.bridge.holder,
                error=result.error or "",
                next_attempt=time.time() + wait,
                failed=result.outcome == "failed",
            )
        self._count(job, result)

    def _count(self, job: Job, result: JobResult) -> None:
        self.bridge.metrics.labelled(self.bridge.metrics.jobs, job.kind, result.outcome).inc()
        if result.rooms_removed:
            self.bridge.metrics.labelled(self.bridge.metrics.rooms_removed, job.backend, job.reason).inc(
                len(result.rooms_removed)
            )
