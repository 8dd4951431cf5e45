"""Creating, moving and deleting meetings: dispatch to a backend, keep the store in step, exactly once.

The rules that hold whatever the vendor, on one replica or several, across crashes:
- the ``meeting_id`` Pipedrive gets is ours, mapped to (link, backend, vendor id);
  update and delete go to the backend that made the room;
- **claim, then call**: a postMeeting claims its request in the database before the
  vendor is called; an identical request anywhere waits for that claim and answers
  its meeting, so a retry never makes a second room. A backend that makes its rooms
  offline (``creates_offline``) has nothing to wait for: its room is made inside the
  claim's transaction and stored with it, one write instead of two;
- **the outbox**: a deleted meeting's room, a room replaced by a move (once the new
  one is stored) and a room made but not stored are jobs, run at once and retried
  in the background until the vendor has them gone;
- **sweeps**: before a call that may make a room, a backend that can list its rooms
  gets a sweep job due when the call's lease ends; storing the room removes it, so a
  process killed mid-call leaves a job that finds and removes the room it made;
- **join links**: unless the backend's ``join_links`` is "vendor", Pipedrive gets the bridge's
  own ``<public_url>/j/<token>`` (and the invitation carries it), resolved at each click
  (``bridge.web.join``); the token is kept encrypted with the room, its hash on the meeting;
- every vendor failure becomes a BridgeError with a status (502/503/504).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

import anyio

from bridge.api.jobs import JobRunner
from bridge.api.vendor_calls import backend_context, call_backend, call_offline, count_call
from bridge.config import Config
from bridge.errors import BridgeError, Gone, NotFound, ServiceUnavailable
from bridge.metrics import Observation
from bridge.runtime import Bridge
from bridge.storage.links import Link
from bridge.storage.meetings import (
    Choice,
    LostClaim,
    Meeting,
    StoredMeeting,
    StoredRoom,
    Ticket,
    join_key,
    new_join_token,
    new_meeting,
    room_key,
    sweep_job,
)
from bridge.storage.outbox import Job
from bridge.storage.schema import LINK_ACTIVE, MEETING_ACTIVE, MEETING_DELETED, utcnow
from bridge.storage.transactions import StoreError
from bridge.vendors.interface import Backend, BackendContext, MeetingRequest, Room
from bridge.vendors.invitation import render_invitation

log = logging.getLogger(__name__)

_CLEANUP_SECONDS = 10.0
_STORE_MARGIN = 1.0
_CLAIM_POLL = (0.02, 0.25)  # the first and the longest wait between two looks at a claim another request holds
CREATE = "create the meeting"  # finishes "<title> failed to ..."
JOIN_PREFIX = "/j/"
JOIN_PATH = JOIN_PREFIX + "{token}"  # the route (bridge.web.join) and the OpenAPI document's path


def join_link(config: Config, token: str | None) -> str:
    """The join URL the bridge hands out for a meeting with this token ("" for none)."""
    return config.server.public_url.rstrip("/") + JOIN_PREFIX + token if token else ""


@dataclass(frozen=True)
class CreatedMeeting:
    meeting_id: str
    room: Room


class MeetingService:
    def __init__(self, bridge: Bridge, observation: Observation | None = None) -> None:
        self.bridge = bridge
        self.store = bridge.store
        self.jobs = JobRunner(bridge)
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
        """A new room, unless this is a retry of a request being answered or already answered.

        Pipedrive retries on timeouts, perhaps on another replica: the request's claim
        makes every copy wait for the first and answer its meeting. After a user
        switches backends, the same request is a new room on the new backend.
        """
        settings = self.bridge.config.meetings
        window = settings.retry_window_seconds
        fingerprint = request_fingerprint(link_id, request) if window else secrets.token_hex(32)
        since = utcnow() - timedelta(seconds=window) if window else None

        offline: list[tuple[Backend, BridgeError | None]] = []  # the last offline create's outcome, counted once

        def choose(found: Link | None) -> Choice:  # runs in the claim's transaction (perhaps more than once)
            link = _usable(found)
            name = self.backend_for(link)
            backend = self._backend(name)
            if not type(backend).creates_offline:
                return Choice(name, sweep=backend.recovers_rooms)

            def make(meeting_id: str) -> StoredMeeting:  # the room made and stored with the claim: one transaction
                token, keyed = self._keyed(name, request, meeting_id)
                ctx = backend_context(self.bridge, link, name)
                offline.clear()
                try:
                    room = call_offline(self.bridge, backend, CREATE, lambda: backend.create(ctx, keyed))
                except BridgeError as exc:
                    offline.append((backend, exc))
                    raise
                offline.append((backend, None))
                return self._made(link, name, keyed, fingerprint, meeting_id, token, room)

            return Choice(name, make=make)

        # an identical request's vendor call ends within the timeout; a moment more lets it store its answer
        deadline = anyio.current_time() + self.bridge.config.server.backend_timeout_seconds + _STORE_MARGIN
        wait, longest = _CLAIM_POLL
        while True:
            try:
                claimed = await self.store.claim_meeting(
                    fingerprint,
                    link_id,
                    choose,
                    self.bridge.holder,
                    lease_seconds=settings.operation_lease_seconds,
                    since=since,
                )
            finally:
                if offline:
                    maker, error = offline[-1]
                    count_call(self.bridge, maker, CREATE, error)
                    offline.clear()
            if claimed.made is not None:
                log.info("meeting created", extra={"meeting_id": claimed.made.meeting.id, "backend": claimed.backend})
                return self._answer(claimed.made)
            if claimed.repeated is not None:
                self.observation.backend = claimed.repeated.meeting.backend
                log.info(
                    "repeated postMeeting answered with the meeting already made",
                    extra={"meeting_id": claimed.repeated.meeting.id},
                )
                return self._answer(claimed.repeated)
            if claimed.ticket is not None and claimed.link is not None:
                backend = self._backend(claimed.backend)
                return await self._create(claimed.link, claimed.backend, backend, request, claimed.ticket)
            if anyio.current_time() >= deadline:
                raise ServiceUnavailable(
                    "the same meeting is still being made for an earlier request; please try again"
                )
            await anyio.sleep(wait)
            wait = min(wait * 2, longest)

    def _answer(self, stored: StoredMeeting) -> CreatedMeeting:
        """What Pipedrive gets for a stored meeting: the same whether it was just made or made before."""
        meeting, room = stored.meeting, stored.room
        answer = Room(
            vendor_meeting_id=meeting.vendor_meeting_id,
            join_url=join_link(self.bridge.config, room.join_token) or room.join_url,
            invitation=room.invitation,
            password=room.password,
        )
        return CreatedMeeting(meeting.id, answer)

    def _keyed(self, name: str, request: MeetingRequest, meeting_id: str) -> tuple[str | None, MeetingRequest]:
        """A new meeting's join-link token (None when the backend hands out the vendor's links) and the
        request as its backend gets it: with the room's key and the join link."""
        token = new_join_token() if self.bridge.config.meetings.join_links_for(name) == "bridge" else None
        keyed = dataclasses.replace(request, key=room_key(meeting_id), join_link=join_link(self.bridge.config, token))
        return token, keyed

    def _made(
        self,
        link: Link,
        name: str,
        keyed: MeetingRequest,
        fingerprint: str,
        meeting_id: str,
        token: str | None,
        room: Room,
    ) -> StoredMeeting:
        """The new meeting and its room as they are stored."""
        meeting = new_meeting(
            link_id=link.id,
            backend=name,
            vendor_meeting_id=room.vendor_meeting_id,
            start_time=keyed.start_time,
            duration=keyed.duration,
            request_hash=fingerprint,
            meeting_id=meeting_id,
            join_key=join_key(token) if token else None,
        )
        return StoredMeeting(meeting, _stored_room(room, handed_out(room, keyed.join_link), token, keyed))

    async def _create(
        self, link: Link, name: str, backend: Backend, request: MeetingRequest, ticket: Ticket
    ) -> CreatedMeeting:
        ctx = backend_context(self.bridge, link, name)
        token, keyed = self._keyed(name, request, ticket.meeting_id)
        try:
            room = await call_backend(self.bridge, backend, CREATE, lambda: backend.create(ctx, keyed))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release(ticket)
            raise
        made = self._made(link, name, keyed, ticket.fingerprint, ticket.meeting_id, token, room)
        meeting = made.meeting
        with anyio.CancelScope(shield=True):
            try:
                await self.store.add_meeting(meeting, made.room, ticket)
            except Exception as exc:
                await self._remove_room(backend, ctx, link.id, room.vendor_meeting_id, reason="create not stored")
                if isinstance(exc, LostClaim):
                    raise ServiceUnavailable(
                        "making the meeting took too long and the request was taken over; please try again"
                    ) from exc
                raise ServiceUnavailable(
                    "the meeting could not be saved, so its room was removed again; please try again"
                ) from exc
        log.info("meeting created", extra={"meeting_id": meeting.id, "backend": name})
        return self._answer(made)

    async def _release(self, ticket: Ticket) -> None:
        """After a failed vendor call: identical requests may try again (the claim's sweep job stays)."""
        try:
            await self.store.fail_claim(ticket)
        except Exception:
            log.exception(
                "could not release a claim; it lapses with its lease", extra={"meeting_id": ticket.meeting_id}
            )

    async def update(self, link: Link, meeting: Meeting, request: MeetingRequest) -> None:
        if meeting.state != MEETING_ACTIVE:
            raise NotFound("this meeting was deleted")
        backend = self._backend(meeting.backend)
        ctx = backend_context(self.bridge, link, meeting.backend)
        stored = await self.store.get_room(meeting.id)
        if stored is None:
            raise ServiceUnavailable("the meeting's stored room could not be read; please try again")
        old_vendor_id = meeting.vendor_meeting_id
        lease = self.bridge.config.meetings.operation_lease_seconds
        sweep = None
        if backend.recovers_rooms:  # a move may make a new room: cover the call as a create is covered
            sweep = sweep_job(meeting.backend, link.id, meeting.id, reason="update", delay=lease)
            await self.store.add_job(sweep)
        keyed = dataclasses.replace(
            request, key=room_key(meeting.id), join_link=join_link(self.bridge.config, stored.join_token)
        )
        updated = await call_backend(
            self.bridge, backend, "update the meeting", lambda: backend.update(ctx, old_vendor_id, keyed)
        )
        room = updated or _same_room(meeting, stored, ctx, keyed)
        replaced = room.vendor_meeting_id != old_vendor_id
        then = self._delete_job(meeting, old_vendor_id, reason="replaced by update") if replaced else None
        with anyio.CancelScope(shield=True):
            try:
                await self.store.replace_room(
                    meeting,
                    vendor_meeting_id=room.vendor_meeting_id,
                    room=_stored_room(room, handed_out(room, keyed.join_link), stored.join_token, keyed),
                    start_time=request.start_time,
                    duration=request.duration,
                    sweep_job_id=None if sweep is None else sweep.id,
                    then=then,
                )
            except Exception as exc:
                if replaced and not isinstance(exc, LostClaim):  # a lost sweep removes the new room itself
                    await self._remove_room(backend, ctx, link.id, room.vendor_meeting_id, reason="update not stored")
                raise ServiceUnavailable("the meeting change could not be saved; please try again") from exc
            if then is not None:
                await self.jobs.run_held(then)
        log.info("meeting updated", extra={"meeting_id": meeting.id, "backend": meeting.backend})

    async def delete(self, link: Link, meeting: Meeting) -> None:
        """Mark the meeting deleted and queue its room's removal in one transaction, then remove it.

        Answered once the removal is durably queued: a vendor that fails it now gets it
        again in the background (Pipedrive has removed the call from the activity either way).
        """
        if meeting.state == MEETING_DELETED:
            return  # a repeated delete answers as the first did
        self._backend(meeting.backend)  # an uninstalled backend is a 503, with nothing changed
        job = self._delete_job(meeting, meeting.vendor_meeting_id, reason="meeting deleted")
        await self.store.delete_meeting(meeting.id, job)
        with anyio.CancelScope(shield=True):
            result = await self.jobs.run_held(job)
        log.info(
            "meeting deleted" if result.outcome == "done" else "meeting deleted; its room's removal is queued",
            extra={"meeting_id": meeting.id, "backend": meeting.backend},
        )

    # --- vendor work that must finish -------------------------------------------------

    def _delete_job(self, meeting: Meeting, vendor_meeting_id: str, *, reason: str) -> Job:
        return self.jobs.delete_job(
            meeting.backend, meeting.link_id, vendor_meeting_id, reason=reason, meeting_id=meeting.id
        )

    async def _remove_room(
        self, backend: Backend, ctx: BackendContext, link_id: str, vendor_meeting_id: str, *, reason: str
    ) -> None:
        """Remove a room the bridge will not keep: as a job when the database takes one, else directly."""
        job = self.jobs.delete_job(backend.name, link_id, vendor_meeting_id, reason=reason)
        try:
            await self.store.add_job(job)
        except StoreError:
            await self._discard(backend, ctx, vendor_meeting_id, reason=reason)
        else:
            await self.jobs.run_held(job)

    async def _discard(self, backend: Backend, ctx: BackendContext, vendor_meeting_id: str, *, reason: str) -> None:
        """Best-effort removal when not even a job can be written; failures are logged, not raised."""
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


def _same_room(meeting: Meeting, stored: StoredRoom, ctx: BackendContext, request: MeetingRequest) -> Room:
    """The stored room with an invitation for the new time, for a backend whose update returned None."""
    shown = request.join_link or stored.join_url
    invitation = render_invitation(request, shown, user=ctx.user, password=stored.password)
    return Room(
        vendor_meeting_id=meeting.vendor_meeting_id,
        join_url=stored.join_url,
        invitation=invitation,
        password=stored.password,
    )


def handed_out(room: Room, link: str) -> Room:
    """The room as Pipedrive gets it: with a bridge join link, that link in place of the vendor's URL."""
    if not link:
        return room
    invitation = room.invitation.replace(room.join_url, link) if room.join_url else room.invitation
    if link not in invitation:
        invitation = f"{invitation.rstrip()}\n\nJoin: {link}"
    return dataclasses.replace(room, join_url=link, invitation=invitation)


def _stored_room(room: Room, answer: Room, token: str | None, request: MeetingRequest) -> StoredRoom:
    """What is kept: the vendor's URL (a click resolves it), the invitation as answered, the link's token."""
    return StoredRoom(
        join_url=room.join_url,
        invitation=answer.invitation,
        password=room.password,
        join_token=token,
        topic=request.topic if token else "",
    )
