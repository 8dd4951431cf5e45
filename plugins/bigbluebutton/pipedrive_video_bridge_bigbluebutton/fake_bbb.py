"""A stand-in for a BigBlueButton server's API, for the plugin's tests and for process tests of the bridge.

What it does comes from BigBlueButton's API documentation (docs.bigbluebutton.org, "API"):

    GET <api>/create?meetingID&name[&moderatorPW&attendeePW&record&welcome]&checksum
        SUCCESS with the meeting; the same meetingID again while it runs: SUCCESS with
        messageKey ``duplicateWarning``; no meetingID: FAILED ``missingParamMeetingID``
    GET <api>/join?meetingID&fullName[&role|&password][&redirect=true]&checksum
        with ``redirect=true`` a 302 to the meeting's client; without, the XML answer;
        an unknown meeting: FAILED ``invalidMeetingIdentifier``
    GET <api>/end?meetingID[&password]&checksum          SUCCESS ``sentEndMeetingRequest``, or FAILED ``notFound``
    GET <api>/isMeetingRunning?meetingID&checksum        <running>true|false</running>
    GET <api>/getMeetingInfo?meetingID&checksum          the meeting, or FAILED ``notFound``

Every call's ``checksum`` is the hex hash of ``call + query (without checksum) + secret``, with
the algorithm the server is set to (the checksum's length says which); a wrong one answers
FAILED ``checksumError``. ``down`` answers 503 to everything. ``joins`` and ``events`` record
what happened; ``meetings`` is the server's own ledger of running meetings.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.testing import serve_on_loopback

FAKE_SECRET = "bbb-fake-secret-8f2c41d9e7a6b305"
_LENGTHS = {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}


@dataclass(frozen=True)
class Join:
    meeting_id: str
    full_name: str
    role: str


@dataclass
class FakeBigBlueButton:
    secret: str = FAKE_SECRET
    algorithms: tuple[str, ...] = ("sha1", "sha256", "sha384", "sha512")
    meetings: dict[str, dict[str, str]] = field(default_factory=dict)
    joins: list[Join] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)  # (call, meetingID)
    down: bool = False
    base_url: str = ""

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/bigbluebutton/api"

    def backend_config(self, **settings: Any) -> dict[str, Any]:
        return {"url": self.api_url, "secret": self.secret, **settings}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = self.answer(request)
        await response(scope, receive, send)

    def answer(self, request: Request) -> Response:
        if self.down:
            return Response("<html>503 Service Temporarily Unavailable</html>", 503, media_type="text/html")
        path = request.url.path
        prefix = "/bigbluebutton/api/"
        if path.startswith("/client/"):
            return Response("<html>the BigBlueButton client</html>", media_type="text/html")
        if not path.startswith(prefix):
            return Response("not found", 404)
        call = path[len(prefix) :]
        query = request.url.query
        given = request.query_params.get("checksum", "")
        unsigned = "&".join(part for part in query.split("&") if not part.startswith("checksum="))
        algorithm = _LENGTHS.get(len(given))
        expected = hashlib.new(algorithm, (call + unsigned + self.secret).encode()).hexdigest() if algorithm else ""
        if algorithm not in self.algorithms or given != expected:
            return _xml("FAILED", "checksumError", "Checksums do not match")
        params = dict(request.query_params)
        handler = {
            "create": self._create,
            "join": self._join,
            "end": self._end,
            "isMeetingRunning": self._running,
            "getMeetingInfo": self._info,
        }.get(call)
        if handler is None:
            return _xml("FAILED", "unsupportedRequest", "This request is not supported.")
        return handler(params)

    def _create(self, params: dict[str, str]) -> Response:
        meeting_id = params.get("meetingID", "")
        if not meeting_id:
            return _xml("FAILED", "missingParamMeetingID", "You must specify a meeting ID for the meeting.")
        if not 2 <= len(meeting_id) <= 256 or "," in meeting_id:
            return _xml("FAILED", "invalidMeetingIdentifier", "Meeting id must be between 2 and 256 characters.")
        self.events.append(("create", meeting_id))
        if meeting_id in self.meetings:
            return _xml(
                "SUCCESS",
                "duplicateWarning",
                "This conference was already in existence and may currently be in progress.",
                meetingID=meeting_id,
            )
        self.meetings[meeting_id] = {
            "name": params.get("name", ""),
            "moderatorPW": params.get("moderatorPW", "mp"),
            "attendeePW": params.get("attendeePW", "ap"),
            "record": params.get("record", "false"),
        }
        return _xml("SUCCESS", "", "", meetingID=meeting_id, **self.meetings[meeting_id])

    def _join(self, params: dict[str, str]) -> Response:
        meeting_id = params.get("meetingID", "")
        meeting = self.meetings.get(meeting_id)
        if meeting is None:
            return _xml("FAILED", "invalidMeetingIdentifier", "The meeting ID that you supplied did not match.")
        role = params.get("role", "").upper()
        if role not in ("MODERATOR", "VIEWER"):
            password = params.get("password")
            role = {meeting["moderatorPW"]: "MODERATOR", meeting["attendeePW"]: "VIEWER"}.get(password or "", "")
        if not role or not params.get("fullName"):
            return _xml("FAILED", "invalidPassword", "You either did not supply a password or it did not match.")
        self.joins.append(Join(meeting_id, params["fullName"], role))
        self.events.append(("join", meeting_id))
        client = f"{self.base_url}/client/{len(self.joins)}?" + urlencode({"meetingID": meeting_id, "role": role})
        if params.get("redirect", "true") == "true":
            return RedirectResponse(client, status_code=302)
        return _xml("SUCCESS", "successfullyJoined", "You have joined successfully.", url=client)

    def _end(self, params: dict[str, str]) -> Response:
        meeting_id = params.get("meetingID", "")
        self.events.append(("end", meeting_id))
        if self.meetings.pop(meeting_id, None) is None:
            return _xml("FAILED", "notFound", "We could not find a meeting with that meeting ID")
        return _xml("SUCCESS", "sentEndMeetingRequest", "A request to end the meeting was sent.")

    def _running(self, params: dict[str, str]) -> Response:
        running = "true" if params.get("meetingID", "") in self.meetings else "false"
        return _xml("SUCCESS", "", "", running=running)

    def _info(self, params: dict[str, str]) -> Response:
        meeting = self.meetings.get(params.get("meetingID", ""))
        if meeting is None:
            return _xml("FAILED", "notFound", "We could not find a meeting with that meeting ID")
        return _xml("SUCCESS", "", "", meetingID=params["meetingID"], meetingName=meeting["name"], running="true")


def _xml(returncode: str, key: str, message: str, **fields: str) -> Response:
    parts = [f"<returncode>{returncode}</returncode>"]
    parts += [f"<{name}>{html.escape(value)}</{name}>" for name, value in fields.items()]
    if key:
        parts.append(f"<messageKey>{key}</messageKey><message>{html.escape(message)}</message>")
    return Response("<response>" + "".join(parts) + "</response>", media_type="text/xml")


@contextmanager
def running_fake_bbb(state: FakeBigBlueButton | None = None) -> Iterator[FakeBigBlueButton]:
    """Serve the fake on a real loopback socket in a background thread; ``state.api_url`` is its API URL."""
    fake = state if state is not None else FakeBigBlueButton()

    def build(url: str) -> ASGIApp:
        fake.base_url = url
        return fake

    with serve_on_loopback(build):
        yield fake
