"""The backend interface: what a video vendor plugin implements.

A plugin hands the core backend *classes* through the ``register_backends`` hook
(see ``bridge.vendors.hookspecs``). At start-up the core builds each allowed backend once
from its own TOML table with :meth:`Backend.from_config`; then, for every
meeting, it calls ``create``, ``update`` or ``delete`` with a :class:`BackendContext`
that carries everything the backend may use and nothing else.

A backend that acts on each user's own vendor account (say, Zoom user OAuth)
sets ``needs_user_account = True`` and implements the connect flow: the
settings page sends the browser to :meth:`Backend.connect_url`, the vendor sends
it back to the bridge's callback, and :meth:`Backend.connect_finish` stores what
it got with ``ctx.credentials``. The core signs and checks ``state``; the backend
only passes it through.

Errors: raise ``bridge.plugin.BackendError`` (or ``BackendUnavailable`` /
``BackendTimeout``) with a message for the person reading it. Network errors of
the shared ``httpx.AsyncClient`` are mapped by the core; anything else a backend
raises is answered as a 502 and logged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Protocol, Self

import httpx

from bridge.vendors.tokens import TokenStore


@dataclass(frozen=True)
class MeetingRequest:
    """The validated body of postMeeting / patchUpdateMeeting."""

    topic: str
    start_time: datetime  # timezone-aware, UTC
    duration: int  # minutes, > 0
    key: str = ""
    """The bridge's reference for this meeting: 16 lowercase hex characters (empty when there is none).

    A backend whose vendor keeps something the bridge can read back (a field, a room
    name) tags the room with it at create and update, and reports it from
    :meth:`Backend.list_rooms`: that is how a room made just before a crash is found."""
    join_link: str = ""
    """The link the bridge hands out for this meeting (``<public_url>/j/<token>``), or empty when
    the vendor's URL is handed out. When set, put it in the invitation instead of the room's URL,
    and leave short-lived credentials out of ``Room.join_url``: :meth:`Backend.join_url` is asked
    at every click. (The core puts the link in place of ``Room.join_url`` in any invitation that
    still carries the room's URL.)"""

    @property
    def end_time(self) -> datetime:
        return self.start_time + timedelta(minutes=self.duration)


@dataclass(frozen=True)
class UserIdentity:
    """The Pipedrive user behind the link."""

    link_id: str
    user_id: int
    company_id: int
    name: str = ""
    email: str = ""


class CredentialStore(TokenStore, Protocol):
    """Encrypted key-value storage with a fixed scope: a backend sees only its own values.

    Tokens kept here are refreshed with ``bridge.plugin.TokenKeeper``, which uses the
    store's ``lease`` (one refresh across replicas, no transaction held meanwhile) and
    ``swap`` (compare-and-swap, so a late refresh never overwrites a newer value).
    """

    async def set(self, name: str, value: str) -> None: ...

    async def delete(self, name: str) -> None: ...


@dataclass(frozen=True)
class BackendContext:
    """What a backend gets for one call.

    ``credentials`` is scoped to this user's link and this backend (e.g. the
    user's own vendor tokens); ``shared`` to this backend for the whole company
    (e.g. one server-to-server token every replica reuses).
    """

    user: UserIdentity
    http: httpx.AsyncClient
    credentials: CredentialStore
    shared: CredentialStore


@dataclass(frozen=True)
class Room:
    """A room the vendor made; ``vendor_meeting_id`` is what update and delete receive."""

    vendor_meeting_id: str
    join_url: str
    invitation: str
    password: str | None = None


HOST = "host"
"""The organiser: the Pipedrive user who owns the meeting, signed in on the bridge in this browser."""
GUEST = "guest"
"""Anyone else who opens the meeting's join link."""


@dataclass(frozen=True)
class Joining:
    """Someone opening a meeting's join link, as :meth:`Backend.join_url` receives it."""

    vendor_meeting_id: str
    meeting: MeetingRequest
    """The meeting as last made or moved: topic, start, duration, ``key`` and ``join_link``."""
    role: str
    """``HOST`` or ``GUEST``."""
    join_url: str
    """The room's join URL as ``create`` or ``update`` returned it."""
    password: str | None = None
    name: str = ""
    """The person's name where the bridge knows it (the organiser's Pipedrive name); empty for a guest."""


@dataclass(frozen=True)
class VendorRoom:
    """A room at the vendor, as :meth:`Backend.list_rooms` reports it."""

    vendor_meeting_id: str
    key: str
    """The ``MeetingRequest.key`` the room was tagged with."""


class Backend(ABC):
    """One video vendor. Subclasses set ``name`` (a-z, 0-9, -, _) and ``title``."""

    name: ClassVar[str]
    title: ClassVar[str]
    needs_user_account: ClassVar[bool] = False
    """True when each user must connect their own vendor account before meetings work."""
    lists_rooms: ClassVar[bool] = False
    """True when :meth:`list_rooms` is implemented: the bridge can then find and remove
    rooms a crash or a vendor timeout left behind."""
    finds_rooms: ClassVar[bool] = False
    """True when :meth:`find_rooms` finds the room made for a key without listing (the vendor
    looks rooms up by an external id): enough for the bridge's sweeps, not for ``reconcile``'s
    list of rooms nobody holds."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """Build the backend from its ``[backends.<name>]`` table.

        Raise ``ValueError("setting: what is wrong")`` for a bad value; the core
        reports it with the table's name. The default accepts no settings.
        """
        if config:
            raise ValueError(f"{', '.join(config)}: unknown setting")
        return cls()

    @abstractmethod
    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        """Create a room for the meeting."""

    @abstractmethod
    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room | None:
        """Move or rename the room and return it.

        A new ``vendor_meeting_id`` means a new room: the core deletes the old one
        once the new one is stored. Return None when the vendor keeps the room's
        link and passcode (and gives nothing back): the core keeps the stored ones
        and writes a new invitation for the new time.
        """

    @abstractmethod
    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        """Remove the room; a room that is already gone counts as deleted."""

    async def list_rooms(self, ctx: BackendContext) -> list[VendorRoom]:
        """Every room the vendor holds, visible with ``ctx``, that carries a bridge key.

        Only rooms tagged with a ``MeetingRequest.key`` are listed (the company's other
        rooms are none of the bridge's business); follow the vendor's pagination to
        the end. Implement it (and set ``lists_rooms = True``) where the vendor keeps
        rooms the bridge could lose track of; a vendor without state (public Jitsi) has
        nothing to list.
        """
        raise NotImplementedError(f"{self.title} cannot list its rooms")

    async def find_rooms(self, ctx: BackendContext, key: str) -> list[VendorRoom]:
        """The rooms visible with ``ctx`` tagged with ``key``: after a crash or a vendor timeout, the
        bridge removes those that no live meeting holds.

        The default filters :meth:`list_rooms`. Override it (and set ``finds_rooms = True``) where the
        vendor finds a room by the key directly: a room looked up by an external id, or an idempotent
        create that answers the room already made for it."""
        return [room for room in await self.list_rooms(ctx) if room.key == key]

    @property
    def recovers_rooms(self) -> bool:
        """Whether the bridge can find a room again by its key: the sweeps are written only then."""
        return self.lists_rooms or self.finds_rooms

    # --- joining through the bridge's link --------------------------------------------

    async def join_url(self, ctx: BackendContext, joining: Joining) -> str | None:
        """Where to send the person opening the meeting's join link now; None: the room's ``join_url``.

        Called at every click of ``<public_url>/j/<token>``, so credentials minted here
        (a JWT, a signed URL) can be short-lived, and ``joining.role`` can pick the host's
        way in (a start URL, a host room, a moderator token) for ``HOST``. ``ctx.user`` is
        the organiser, whoever clicks. Errors are shown to the person as a page.
        """
        return None

    creates_on_join: ClassVar[bool] = False
    """True when the room is made at the first click (in :meth:`join_url`), not by ``create``: such a
    backend has no URL to hand Pipedrive and works only with ``join_links = "bridge"``."""

    creates_offline: ClassVar[bool] = False
    """True when ``create`` reaches no vendor and waits on nothing: it makes the room up (a name, a URL,
    a signed token) from its arguments alone. The bridge then runs it inside the database transaction
    that claims the postMeeting, perhaps on a thread without an event loop, and stores the meeting in
    that same transaction: one write instead of two. A ``create`` that awaits something that is not
    ready at once fails there (502, and the log says why); the conformance kit checks it."""

    # --- the optional per-user connect flow (only when ``needs_user_account``) --------

    async def connect_url(self, ctx: BackendContext, callback_url: str, state: str) -> str:
        """Where to send the browser to connect the user's vendor account.

        The vendor must send the browser back to ``callback_url`` with ``state``
        unchanged in the query (``?state=``, as OAuth does) plus whatever it adds,
        such as ``code``. An ``error`` there is shown to the user by the core,
        without calling :meth:`connect_finish`.
        """
        raise NotImplementedError(f"{self.title} has no per-user account to connect")

    async def connect_finish(self, ctx: BackendContext, params: Mapping[str, str], callback_url: str) -> None:
        """Finish connecting from the vendor's redirect (``params`` is its query; the core
        has already checked ``state``): store the credentials with ``ctx.credentials``.
        Raise ``BackendError`` with a message for the user when it fails."""
        raise NotImplementedError(f"{self.title} has no per-user account to connect")

    async def is_connected(self, ctx: BackendContext) -> bool:
        """Whether the user's vendor account is connected (typically: a credential is stored)."""
        return True
