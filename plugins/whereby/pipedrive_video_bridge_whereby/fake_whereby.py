"""A stand-in for Whereby's meetings API, for the plugin's tests and for process tests of the bridge.

What it does comes from Whereby's REST API reference (docs.whereby.com, whereby.dev/http-api, and
Whereby's published OpenAPI):

    POST   /v1/meetings              201 {meetingId, roomName, roomUrl, startDate, endDate[, hostRoomUrl]};
                                     400 for an ``endDate`` before "now", an unknown ``roomMode`` or
                                     ``fields`` value, or a ``roomNamePrefix`` that is not lowercase
                                     (a-z, 0-9, -) or longer than 39 characters. The room is named
                                     ``/<roomNamePrefix><uuid>``.
    GET    /v1/meetings              ?cursor=&limit= (1..100, default 50; 400 otherwise):
                                     {"results": [...], "cursor": "<next>" | null}, the cursor opaque
    GET    /v1/meetings/{meetingId}  ?fields=hostRoomUrl,viewerRoomUrl (comma-separated or repeated; 400 for
                                     another value): 200 with the meeting, or 404
    DELETE /v1/meetings/{meetingId}  204, also for a meeting already gone

Every room has a host URL (``roomUrl`` with a ``roomKey`` query) and a viewer URL from the start;
``hostRoomUrl`` and ``viewerRoomUrl`` are in an answer only when its request's ``fields`` asks for them.
A missing or wrong Bearer key is 401; throttling is 429 with ``Retry-After`` and
``{"error", "data": {"msLeft"}}``. The body of a 400 is not documented: the fake answers
``{"error": "..."}``, the shape of the documented 429.

Faults a test can ask for: ``answer_next`` (answers given, one per request, before the normal
ones: a response, ``DROP`` or ``Slow``), ``down`` (503 to everything until switched off again; safe
to flip from another thread) and ``clock_skew`` (Whereby's "now"). ``seen``, ``events`` and
``calls`` record what it was asked; ``live_rooms`` is Whereby's own ledger of rooms.

In the plugin's tests the fake runs in a background thread (``running_fake_whereby``); another
suite can run it the same way and point ``[backends.whereby]`` at ``backend_config()``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import secrets
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.testing import serve_on_loopback

FAKE_API_KEY = "whereby-fake-key-3c9d1e7a5b2f4068"
DROP = "drop the connection in the middle of the answer"
ROOM_HOST = "https://acme.whereby.com"
_PREFIX = re.compile(r"[a-z0-9-]{0,39}")
_CURSOR = re.compile(r"after:(\d+)")
DEFAULT_LIMIT, MAX_LIMIT = 50, 100
LIST_FIELDS = ("hostRoomUrl", "viewerRoomUrl")


@dataclass(frozen=True)
class Slow:
    """Answer normally, but only after ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str
    body: Any
    query: str = ""


def whereby_error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def throttled(retry_after: str) -> Response:
    return JSONResponse(
        {"error": "Rate limit active for throttle key: organization:1", "data": {"msLeft": 1000}},
        status_code=429,
        headers={"Retry-After": retry_after},
    )


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _cursor_after(meeting_id: str) -> str:
    return base64.urlsafe_b64encode(f"after:{meeting_id}".encode()).decode().rstrip("=")


def _position(cursor: str) -> int | None:
    """The meetingId a cursor continues after, or None for a cursor this fake never handed out."""
    try:
        decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    match = _CURSOR.fullmatch(decoded)
    return int(match[1]) if match else None


@dataclass
class FakeWhereby:
    """Whereby's meetings API, as an ASGI app; ``api_base`` is set once it is served."""

    api_key: str = FAKE_API_KEY
    api_base: str = ""
    rooms: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)  # ("create" | "delete", meetingId), in order
    script: list[Response | str | Slow] = field(default_factory=list)
    clock_skew: timedelta = timedelta(0)
    counter: int = 0
    down: bool = False  # answer 503 to every request while set
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- for tests ------------------------------------------------------------------------------

    def answer_next(self, *answers: Response | str | Slow) -> None:
        with self.lock:
            self.script.extend(answers)

    def calls(self, method: str, path_prefix: str = "") -> int:
        with self.lock:
            return sum(1 for s in self.seen if s.method == method and s.path.startswith(path_prefix))

    def live_rooms(self) -> set[str]:
        """The meetingIds that exist at Whereby right now."""
        with self.lock:
            return set(self.rooms)

    def set_down(self, down: bool = True) -> None:
        """Answer 503 to everything (or stop doing so); safe from any thread."""
        with self.lock:
            self.down = down

    def backend_config(self, **overrides: Any) -> dict[str, Any]:
        """A ``[backends.whereby]`` table pointing at this fake."""
        return {"api_key": self.api_key, "api_base": self.api_base, **overrides}

    def add_room(self, room_name_prefix: str = "", end: datetime | None = None) -> str:
        """A room made at Whereby by someone other than the bridge (its dashboard, another app); its meetingId."""
        room = self._make_room(room_name_prefix, end or datetime.now(UTC) + timedelta(hours=1))
        return str(room["meetingId"])

    # --- the API ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        with self.lock:
            self.seen.append(
                Seen(
                    request.method,
                    scope["raw_path"].decode(),
                    request.headers.get("authorization", ""),
                    body,
                    scope.get("query_string", b"").decode(),
                )
            )
            down = self.down
            answer = self.script.pop(0) if self.script and not down else None
        if down:
            await whereby_error(503, "Service Unavailable")(scope, receive, send)
            return
        if answer == DROP:
            await send(
                {
                    "type": "http.response.start",
                    "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"200")],
                }
            )
            await send({"type": "http.response.body", "body": b'{"meetingId": ', "more_body": True})
            return  # uvicorn closes the connection with the answer half sent
        if isinstance(answer, Slow):
            await asyncio.sleep(answer.seconds)
        response = answer if isinstance(answer, Response) else self.handle(request, body)
        await response(scope, receive, send)

    def handle(self, request: Request, body: Any) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Response(status_code=401)
        path, method = request.url.path, request.method
        if path == "/v1/meetings" and method == "POST":
            return self.create(body)
        if path == "/v1/meetings" and method == "GET":
            return self.list(request)
        match = re.fullmatch(r"/v1/meetings/([^/]+)", path)
        if match and method == "GET":
            wanted = _fields(request)
            if wanted is None:
                return whereby_error(400, '"fields" contains an invalid value')
            with self.lock:
                room = self.rooms.get(match[1])
            return JSONResponse(_shown(room, wanted)) if room else whereby_error(404, "Meeting not found")
        if match and method == "DELETE":
            with self.lock:
                self.rooms.pop(match[1], None)
                self.events.append(("delete", match[1]))
            return Response(status_code=204)
        return whereby_error(404, "Not found")

    def create(self, body: Any) -> Response:
        if not isinstance(body, dict):
            return whereby_error(400, '"value" must be of type object')
        now = datetime.now(UTC) + self.clock_skew
        try:
            end = datetime.fromisoformat(body["endDate"])
        except (KeyError, TypeError, ValueError):
            return whereby_error(400, '"endDate" is required and must be a date-time')
        if end < now:
            return whereby_error(400, '"endDate" must be greater than or equal to "now"')
        if body.get("roomMode", "normal") not in ("normal", "group"):
            return whereby_error(400, '"roomMode" must be one of [group, normal]')
        prefix = body.get("roomNamePrefix", "")
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            return whereby_error(400, '"roomNamePrefix" fails to match the required pattern')
        fields = body.get("fields", [])
        if not isinstance(fields, list) or not set(fields) <= set(LIST_FIELDS):
            return whereby_error(400, '"fields" contains an invalid value')
        return JSONResponse(_shown(self._make_room(prefix, end, now), set(fields)), status_code=201)

    def _make_room(self, prefix: str, end: datetime, now: datetime | None = None) -> dict[str, Any]:
        room_name = f"/{prefix}{uuid.uuid4()}"
        room_url = f"{ROOM_HOST}{room_name}"
        room = {
            "roomName": room_name,
            "roomUrl": room_url,
            "startDate": iso(now or datetime.now(UTC)),
            "endDate": iso(end),
            "hostRoomUrl": f"{room_url}?roomKey={secrets.token_urlsafe(24)}",
            "viewerRoomUrl": f"{room_url}?viewerKey={secrets.token_urlsafe(24)}",
        }
        with self.lock:
            self.counter += 1
            meeting_id = str(self.counter)
            room = {"meetingId": meeting_id, **room}
            self.rooms[meeting_id] = room
            self.events.append(("create", meeting_id))
        return room

    def list(self, request: Request) -> Response:
        params = request.query_params
        try:
            limit = int(params.get("limit", DEFAULT_LIMIT))
        except ValueError:
            return whereby_error(400, '"limit" must be a number')
        if not 1 <= limit <= MAX_LIMIT:
            return whereby_error(400, f'"limit" must be between 1 and {MAX_LIMIT}')
        after = 0
        if params.get("cursor"):
            position = _position(params["cursor"])
            if position is None:
                return whereby_error(400, '"cursor" is invalid')
            after = position
        wanted = _fields(request)
        if wanted is None:
            return whereby_error(400, '"fields" contains an invalid value')
        with self.lock:
            later = sorted((int(k), room) for k, room in self.rooms.items() if int(k) > after)
        page = later[:limit]
        results = [_shown(room, wanted) for _, room in page]
        cursor = _cursor_after(str(page[-1][0])) if len(later) > limit else None
        return JSONResponse({"results": results, "cursor": cursor})


def _fields(request: Request) -> set[str] | None:
    """The ``fields`` a GET asks for (``fields=a,b`` or ``fields=a&fields=b``), or None for an unknown one."""
    wanted = {name for value in request.query_params.getlist("fields") for name in value.split(",") if name}
    return wanted if wanted <= set(LIST_FIELDS) else None


def _shown(room: dict[str, Any], wanted: set[str]) -> dict[str, Any]:
    """The room as Whereby answers it: the host and viewer URLs only when asked for."""
    return {k: v for k, v in room.items() if k not in LIST_FIELDS or k in wanted}


@contextmanager
def running_fake_whereby(state: FakeWhereby | None = None) -> Iterator[FakeWhereby]:
    """Serve the fake on a real loopback socket in a background thread; ``state.api_base`` is its URL
    (``http://127.0.0.1:<port>/v1``), ``state.backend_config()`` a ``[backends.whereby]`` table for it."""
    fake = state if state is not None else FakeWhereby()

    def build(url: str) -> ASGIApp:
        fake.api_base = f"{url}/v1"
        return fake

    with serve_on_loopback(build):
        yield fake
