"""Creating, moving and deleting meetings: dispatch to a backend, keep the store in step.

The rules that hold whatever the vendor:
- the ``meeting_id`` Pipedrive gets is ours, mapped to (link, backend, vendor id);
  update and delete go to the backend that made the room;
- nothing half-written: a room created but not stored is deleted again; a room
  replaced by a new one is deleted only once the new one is stored;
- a delete the vendor fails leaves the row ``deleting``, so Pipedrive's retry finishes it;
- every vendor failure becomes a BridgeError with a status (502/503/504).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import anyio
import httpx

from bridge.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BridgeError,
    Gone,
    NotFound,
    ServiceUnavailable,
)
from bridge.metrics import Observation
from bridge.runtime import Bridge
from bridge.storage.credentials import ScopedCredentials
from bridge.storage.links import Link
from bridge.storage.meetings import Meeting, Repeated, StoredRoom, new_meeting
from bridge.storage.schema import LINK_ACTIVE, MEETING_ACTIVE, MEETING_DELETED, MEETING_DELETING, utcnow
from bridge.storage.secrets import backend_scope, shared_scope
from bridge.vendors.interface import Backend, BackendContext, MeetingRequest, Room, UserIdentity
from bridge.vendors.invitation import render_invitation

log = logging.getLogger(__name__)
T = TypeVar("T")

_CLEANUP_SECONDS = 10.0


def backend_context(bridge: Bridge, link: Link, backend: str) -> BackendContext:
    """What a backend gets for one call on behalf of the link's user: no more, no less."""

    def count(outcome: str) -> None:
        bridge.metrics.token_refreshes.labels(backend, outcome).inc()

    user = UserIdentity(
        link_id=link.id,
        user_id=link.pipedrive_user_id,
        company_id=link.company_id,
        name=link.user_name,
        email=link.user_email,
    )
    return BackendContext(
        user=user,
        http=bridge.http,
        credentials=ScopedCredentials(bridge.store, backend_scope(link.id, backend), count),
        shared=ScopedCredentials(bridge.store, shared_scope(backend), count),
    )


_OUTCOMES = {504: "timeout", 503: "unavailable"}


async def call_backend(bridge: Bridge, backend: Backend, action: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run one backend call under the configured deadline; map every failure to a BridgeError.

    ``action`` finishes the sentence "<title> failed to ...", e.g. "create the meeting".
    """
    try:
        result = await _mapped_call(bridge, backend, action, call)
    except BridgeError as exc:
        bridge.metrics.vendor_calls.labels(backend.name, action, _OUTCOMES.get(exc.status, "error")).inc()
        raise
    bridge.metrics.vendor_calls.labels(backend.name, action, "ok").inc()
    return result


async def _mapped_call(bridge: Bridge, backend: Backend, action: str, call: Callable[[], Awaitable[T]]) -> T:
    title = backend.title
    timeout = bridge.config.server.backend_timeout_seconds
    try:
        with anyio.fail_after(timeout):
            return await call()
    except BridgeError:
        raise
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise BackendTimeout(f"{title} did not answer within {timeout:g} seconds; please try again") from exc
    except httpx.TransportError as exc:
        raise BackendUnavailable(f"{title} could not be reached ({exc.__class__.__name__}); please try again") from exc
    except httpx.HTTPStatusError as exc:
        raise BackendError(f"{title} refused the request (HTTP {exc.response.status_code})") from exc
    except Exception as exc:
        log.exception("backend failed", extra={"backend": backend.name, "operation": action})
        raise BackendError(f"{title} failed to {action}") from exc


@dataclass(frozen=True)
class CreatedMeeting:
    meeting_id: str
    room: Room


class MeetingService:
    def __init__(self, bridge: Bridge, observation: Observation | None = None) -> None:
        self.bridge = bridge
        self.store = bridge.store
        self.observation = observation or Observation()

    # --- lookups --------------------------------------------------------------------

    async def link(self, link_id: str) -> Link:
        return _usable(await self.store.get_link(link_id))

    async def link_and_meeting(self, link_id: str, meeting_id: str) -> tuple[Link, Meeting]:
        link, meeting = await self.store.get_link_and_meeting(link_id, meeting_id)
        link = _usable(link)
        if meeting is None:
            raise NotFound("unknown meeting for this link")
        return link, meeting

    def _backend(self, name: str) -> Backend:
        self.observation.backend = name
        return self.bridge.backends.get(name)

    def backend_for(self, link: Link) -> str:
        allowed = self.bridge.config.meetings.allowed_backends
        if link.backend and link.backend in allowed:
            return link.backend
        return self.bridge.config.meetings.default_backend

    # --- the three operations -------------------------------------------------------

    async def create(self, link_id: str, request: MeetingRequest) -> CreatedMeeting:
        """A new room, unless this is a retry of a request already answered (Pipedrive retries on timeouts).

        The link and the retry's original are read in one transaction. After a user
        switches backends, the same request is a new room on the new backend.
        """
        fingerprint = request_fingerprint(link_id, request)
        window = self.bridge.config.meetings.retry_window_seconds
        since = utcnow() - timedelta(seconds=window) if window else None
        async with self.bridge.create_locks[fingerprint]:
            try:
                found, repeated = await self.store.get_link_and_repeat(link_id, fingerprint, since)
                link = _usable(found)
                name = self.backend_for(link)
                if repeated is not None and repeated.meeting.backend == name:
                    return self._repeated(repeated)
                return await self._create(link, name, request, fingerprint)
            finally:
                self.bridge.create_locks.pop(fingerprint, None)

    def _repeated(self, repeated: Repeated) -> CreatedMeeting:
        meeting, stored = repeated.meeting, repeated.room
        self.observation.backend = meeting.backend
        log.info("repeated postMeeting answered with the meeting already made", extra={"meeting_id": meeting.id})
        room = Room(
            vendor_meeting_id=meeting.vendor_meeting_id,
            join_url=stored.join_url,
            invitation=stored.invitation,
            password=stored.password,
        )
        return CreatedMeeting(meeting.id, room)

    async def _create(self, link: Link, name: str, request: MeetingRequest, fingerprint: str) -> CreatedMeeting:
        backend = self._backend(name)
        ctx = backend_context(self.bridge, link, name)
        room = await call_backend(self.bridge, backend, "create the meeting", lambda: backend.create(ctx, request))
        meeting = new_meeting(
            link_id=link.id,
            backend=name,
            vendor_meeting_id=room.vendor_meeting_id,
            start_time=request.start_time,
            duration=request.duration,
            request_hash=fingerprint,
        )
        with anyio.CancelScope(shield=True):
            try:
                await self.store.add_meeting(meeting, _stored_room(room))
            except Exception as exc:
                await self._discard(backend, ctx, room.vendor_meeting_id, reason="create not stored")
                raise ServiceUnavailable(
                    "the meeting could not be saved, so its room was removed again; please try again"
                ) from exc
        log.info("meeting created", extra={"meeting_id": meeting.id, "backend": name})
        return CreatedMeeting(meeting.id, room)

    async def update(self, link: Link, meeting: Meeting, request: MeetingRequest) -> None:
        if meeting.state != MEETING_ACTIVE:
            raise NotFound("this meeting was deleted")
        backend = self._backend(meeting.backend)
        ctx = backend_context(self.bridge, link, meeting.backend)
        old_vendor_id = meeting.vendor_meeting_id
        updated = await call_backend(
            self.bridge, backend, "update the meeting", lambda: backend.update(ctx, old_vendor_id, request)
        )
        room = updated or await self._same_room(meeting, ctx, request)
        with anyio.CancelScope(shield=True):
            try:
                await self.store.replace_room(
                    meeting,
                    vendor_meeting_id=room.vendor_meeting_id,
                    room=_stored_room(room),
                    start_time=request.start_time,
                    duration=request.duration,
                )
            except Exception as exc:
                if room.vendor_meeting_id != old_vendor_id:
                    await self._discard(backend, ctx, room.vendor_meeting_id, reason="update not stored")
                raise ServiceUnavailable("the meeting change could not be saved; please try again") from exc
            if room.vendor_meeting_id != old_vendor_id:
                await self._discard(backend, ctx, old_vendor_id, reason="replaced by update")
        log.info("meeting updated", extra={"meeting_id": meeting.id, "backend": meeting.backend})

    async def _same_room(self, meeting: Meeting, ctx: BackendContext, request: MeetingRequest) -> Room:
        """The stored room with an invitation for the new time, for a backend whose update returned None."""
        stored = await self.store.get_room(meeting.id)
        if stored is None:
            raise ServiceUnavailable("the meeting's stored room could not be read; please try again")
        invitation = render_invitation(request, stored.join_url, user=ctx.user, password=stored.password)
        return Room(
            vendor_meeting_id=meeting.vendor_meeting_id,
            join_url=stored.join_url,
            invitation=invitation,
            password=stored.password,
        )

    async def delete(self, link: Link, meeting: Meeting) -> None:
        if meeting.state == MEETING_DELETED:
            return  # a repeated delete answers as the first did
        backend = self._backend(meeting.backend)
        ctx = backend_context(self.bridge, link, meeting.backend)
        await self.store.set_meeting_state(meeting.id, MEETING_DELETING)
        await call_backend(
            self.bridge, backend, "delete the meeting", lambda: backend.delete(ctx, meeting.vendor_meeting_id)
        )
        await self.store.set_meeting_state(meeting.id, MEETING_DELETED)
        log.info("meeting deleted", extra={"meeting_id": meeting.id, "backend": meeting.backend})

    # --- vendor calls ---------------------------------------------------------------

    async def _discard(self, backend: Backend, ctx: BackendContext, vendor_meeting_id: str, *, reason: str) -> None:
        """Best-effort removal of a room the bridge will not keep; failures are logged, not raised."""
        try:
            with anyio.fail_after(_CLEANUP_SECONDS):
                await backend.delete(ctx, vendor_meeting_id)
        except Exception:
            log.exception(
                "could not remove a room",
                extra={"backend": backend.name, "reason": reason, "vendor_meeting_id": vendor_meeting_id},
            )


def _usable(link: Link | None) -> Link:
    if link is None:
        raise NotFound("unknown link: this user has no connection to the bridge (re-install the app)")
    if link.status != LINK_ACTIVE:
        raise Gone(f"this link is {link.status.replace('_', ' ')}: the user has to install the app again")
    return link


def request_fingerprint(link_id: str, request: MeetingRequest) -> str:
    """The same link, topic, start time and duration give the same fingerprint."""
    text = "\n".join([link_id, request.topic, request.start_time.isoformat(), str(request.duration)])
    return hashlib.sha256(text.encode()).hexdigest()


def _stored_room(room: Room) -> StoredRoom:
    return StoredRoom(join_url=room.join_url, invitation=room.invitation, password=room.password)
