"""A stand-in for Zoom's OAuth server and meeting API, for the plugin's tests and local trials.

It speaks the documented shapes (errors are ``{"code": ..., "message": ...}``,
OAuth errors ``{"reason": ..., "error": ...}``):

    GET    /oauth/authorize                   approves at once: redirect_uri?code=&state=
    POST   /oauth/token                       Basic auth; account_credentials, authorization_code and
                                              refresh_token (rotated: a spent refresh token answers invalid_grant)
    POST   /v2/users/{userId}/meetings        201 with the meeting; 404 code 1001 for an unknown user,
                                              400 code 3161 for a user who may not host
    GET    /v2/users/{userId}/meetings        the user's meetings: ``page_size`` (default 30, at most 300),
                                              ``next_page_token`` (opaque, "" on the last page), ``total_records``;
                                              ``agenda`` cut to 250 characters and left out when empty;
                                              404 code 1001 and 400 code 3161 as for a create
    GET    /v2/meetings/{meetingId}           the meeting, with its whole agenda and a new ``start_url`` (a fresh
                                              ZAK each time, as Zoom's start links expire two hours after they
                                              are made); 404 code 3001 for a meeting that does not exist,
                                              400 code 4711 without the scope
    PATCH  /v2/meetings/{meetingId}           204, no body
    DELETE /v2/meetings/{meetingId}           204; 404 code 3001 for a meeting that does not exist
    GET    /v2/meetings/{meetingId}/invitation  {"invitation": "..."}; 400 code 4711 without the scope

An expired or unknown access token answers 401 code 124. Faults a test can
switch on: a per-user daily limit on creates and updates (429 until 00:00
UTC, with or without ``X-RateLimit-Type``/``Retry-After``), per-second 429s,
server errors, slow answers and dropped connections. Everything it saw is kept
for assertions; ``live_meetings()`` is Zoom's own ledger of the rooms that exist.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.plugin import basic_auth
from bridge.testing import serve_on_loopback

_START_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_PASSCODE = re.compile(r"[A-Za-z0-9@\-_*]{1,10}")
DAILY_LIMIT_MESSAGE = (
    "You have exceeded the daily rate limit (100) of Meeting Create/Update API requests "
    "permitted for this particular user. You may resume these requests at GMT 00:00:00."
)
PER_SECOND_MESSAGE = "You have reached the maximum per-second rate limit for this API. Try again later."
AGENDA_MAX_LENGTH = 2000
LISTED_AGENDA_LENGTH = 250
"""List meetings cuts each agenda to this; Get a meeting answers it whole."""
LIST_PAGE_SIZE = (30, 300)  # List meetings: default and largest page_size
PAGE_TOKEN_SECONDS = 15 * 60  # how long a next_page_token lasts
LIST_TYPES = {"scheduled": True, "upcoming": True, "upcoming_meetings": True, "live": False, "previous_meetings": False}
"""The documented ``type`` values and whether the fake's meetings (all scheduled, none started) are in them."""


@dataclass
class FakeZoomUser:
    id: str
    email: str
    name: str = ""
    may_host: bool = True


def _default_users() -> list[FakeZoomUser]:
    return [
        FakeZoomUser("KDcuGIm1QgePTO8WbOqwIQ", "ada@example.com", "Ada Lovelace"),
        FakeZoomUser("z8yCxjabcdEFGhijkLMnop", "host@example.com", "Front Desk"),
    ]


@dataclass(frozen=True)
class ListPage:
    """Where a ``next_page_token`` goes on: the rest of the list as it was when its first page was asked for."""

    user_id: str
    rest: list[str]
    total: int
    expiry: float


@dataclass
class FakeZoomState:
    client_id: str
    client_secret: str
    account_id: str = "fake-account-id"
    base_url: str = ""  # set when the server starts
    users: list[FakeZoomUser] = field(default_factory=_default_users)
    authorizing_user: str = "ada@example.com"  # who signs in at /oauth/authorize
    access_ttl: int = 3600
    # faults
    daily_limit: int | None = None  # creates + updates per user per day
    daily_limit_headers: bool = True  # documented headers; Zoom has been seen to send the body only
    invitation_scope: bool = True
    read_scope: bool = True  # the app may read a meeting (Get a meeting)
    list_scope: bool = True  # the app may list meetings
    delay: float = 0.0  # seconds before every API answer
    token_delay: float = 0.0  # seconds before every token answer
    drop_next: int = 0  # API requests whose connection is dropped before any answer
    busy_next: list[str | None] = field(default_factory=list)  # per-second 429s to answer, with this Retry-After
    failing_next: list[int] = field(default_factory=list)  # server errors (500, 503...) to answer first
    # records
    meetings: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    page_tokens: dict[str, ListPage] = field(default_factory=dict)  # next_page_token -> what it goes on with
    access_tokens: dict[str, tuple[str | None, float]] = field(default_factory=dict)  # -> (user id, expiry)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # live refresh token -> user id
    spent_refresh_tokens: set[str] = field(default_factory=set)
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (user id, redirect_uri)
    token_requests: Counter[str] = field(default_factory=Counter)  # by grant type
    refused_refresh_tokens: list[str] = field(default_factory=list)
    api_requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path), faults included
    daily_counts: Counter[str] = field(default_factory=Counter)
    issued_secrets: list[str] = field(default_factory=list)  # every token and host key handed out
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def api_base(self) -> str:
        return self.base_url + "/v2"

    def backend_config(self, auth: str = "account", **overrides: Any) -> dict[str, Any]:
        """A ``[backends.zoom]`` table pointing at this fake."""
        table: dict[str, Any] = {
            "auth": auth,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "api_base": self.api_base,
            "oauth_base": self.base_url,
        }
        if auth == "account":
            table["account_id"] = self.account_id
        return {**table, **overrides}

    def user(self, id_or_email: str) -> FakeZoomUser | None:
        wanted = id_or_email.lower()
        return next((u for u in self.users if u.id.lower() == wanted or u.email.lower() == wanted), None)

    def live_meetings(self, host: str | None = None) -> list[str]:
        """The ids of the meetings that exist at Zoom (of one host, by id or e-mail, if given), oldest first."""
        user = self.user(host) if host is not None else None
        with self.lock:
            return [
                meeting_id
                for meeting_id, meeting in self.meetings.items()
                if host is None or (user is not None and meeting["host_id"] == user.id)
            ]

    def add_meeting(self, user: FakeZoomUser, body: Mapping[str, Any]) -> dict[str, Any]:
        """Store a new meeting of ``user`` from a (checked) create body and return it as Zoom answers it."""
        meeting_id = secrets.randbelow(9 * 10**10) + 10**10  # 11 digits, beyond 32 bits like Zoom's
        meeting = {
            "id": meeting_id,
            "uuid": secrets.token_urlsafe(16),
            "host_id": user.id,
            "host_email": user.email,
            "topic": body["topic"],
            "agenda": body.get("agenda", ""),
            "type": 2,
            "start_time": body["start_time"],
            "duration": body["duration"],
            "timezone": "UTC",
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "password": body.get("password") or f"{secrets.randbelow(10**6):06d}",
            "join_url": f"https://zoom.us/j/{meeting_id}?pwd={secrets.token_urlsafe(16)}",
            "settings": body.get("settings", {}),
            "default_password": body.get("default_password", False),
        }
        with self.lock:
            meeting["start_url"] = self.new_start_url(meeting_id)
            self.meetings[str(meeting_id)] = meeting
        return meeting

    def new_start_url(self, meeting_id: int) -> str:
        """A start link with a ZAK of its own (call with the lock held); Zoom's expire after two hours."""
        zak = "zak-" + secrets.token_urlsafe(24)
        self.issued_secrets.append(zak)
        return f"https://zoom.us/s/{meeting_id}?zak={zak}"

    def schedule(self, host: str, topic: str = "Made in Zoom", agenda: str = "") -> str:
        """A meeting the host scheduled in Zoom itself (not through the bridge); its id."""
        user = self.user(host)
        assert user is not None, "host must be one of the fake's users"
        body = {"topic": topic, "start_time": "2031-05-14T09:30:00Z", "duration": 30, "agenda": agenda}
        return str(self.add_meeting(user, body)["id"])

    def expire_access_tokens(self) -> None:
        """Every access token issued so far answers 401 code 124 from now on."""
        with self.lock:
            for token, (user_id, _) in self.access_tokens.items():
                self.access_tokens[token] = (user_id, 0)

    def count(self, method: str, path_prefix: str = "/v2/") -> int:
        with self.lock:
            return sum(1 for m, p in self.api_requests if m == method and p.startswith(path_prefix))

    def issue_user_tokens(self, user_id: str) -> dict[str, Any]:
        """A new access and refresh token pair for a user (what the grants answer)."""
        answer = self.issue_access(user_id)
        refresh = "zoom-rt-" + secrets.token_urlsafe(24)
        self.refresh_tokens[refresh] = user_id
        self.issued_secrets.append(refresh)
        return {**answer, "refresh_token": refresh}

    def issue_access(self, user_id: str | None) -> dict[str, Any]:
        access = "zoom-at-" + secrets.token_urlsafe(24)
        self.access_tokens[access] = (user_id, time.time() + self.access_ttl)
        self.issued_secrets.append(access)
        scope = "meeting:write:meeting:admin" if user_id is None else "meeting:write:meeting"
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.access_ttl,
            "scope": scope,
            "api_url": self.base_url,
        }


def _zoom_error(status: int, code: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


def _oauth_error(status: int, error: str, reason: str) -> JSONResponse:
    return JSONResponse({"reason": reason, "error": error}, status_code=status)


def _next_midnight() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


class _Faults:
    """Wraps the API routes: records each request, then drops, delays or rate-limits it when asked."""

    def __init__(self, app: ASGIApp, state: FakeZoomState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v2/"):
            await self.app(scope, receive, send)
            return
        state = self.state
        with state.lock:
            state.api_requests.append((scope["method"], scope["path"]))
            drop = state.drop_next > 0
            state.drop_next -= drop
            busy = state.busy_next.pop(0) if state.busy_next and not drop else False
            failing = state.failing_next.pop(0) if state.failing_next and not drop and busy is False else None
        if drop:
            # h11 refuses this header after the response has begun, so uvicorn closes the socket
            # without answering: to the client, the connection dropped
            await send({"type": "http.response.start", "status": 200, "headers": [(b"x-drop", b"a\nb")]})
            return
        if state.delay:
            await anyio.sleep(state.delay)
        if busy is not False:
            headers = {"X-RateLimit-Type": "QPS", **({"Retry-After": str(busy)} if busy is not None else {})}
            await _zoom_error(429, 429, PER_SECOND_MESSAGE, headers)(scope, receive, send)
            return
        if failing is not None:
            await _zoom_error(failing, failing, "Internal Error.")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_fake_zoom(state: FakeZoomState) -> ASGIApp:
    def caller(request: Request) -> tuple[bool, str | None]:
        """(token valid, its user id or None for the account's Server-to-Server token)."""
        header = request.headers.get("authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        with state.lock:
            user_id, expiry = state.access_tokens.get(token, (None, 0.0))
        return expiry > time.time(), user_id

    def invalid_token() -> JSONResponse:
        return _zoom_error(401, 124, "Invalid access token.")

    def within_daily_limit(user_id: str) -> bool:
        with state.lock:
            if state.daily_limit is not None and state.daily_counts[user_id] >= state.daily_limit:
                return False
            state.daily_counts[user_id] += 1
            return True

    def daily_limit_reached() -> JSONResponse:
        headers = {
            "X-RateLimit-Type": "Daily-limit",
            "X-RateLimit-Limit": "100",
            "X-RateLimit-Remaining": "0",
            "Retry-After": _next_midnight().strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return _zoom_error(429, 429, DAILY_LIMIT_MESSAGE, headers if state.daily_limit_headers else None)

    def schedule_problem(body: Any, *, partial: bool) -> str | None:
        if not isinstance(body, dict):
            return "Request Body should be a valid JSON object."
        checks: dict[str, Callable[[Any], bool]] = {
            "topic": lambda v: isinstance(v, str) and 0 < len(v) <= 200,
            "type": lambda v: v == 2,
            "start_time": lambda v: isinstance(v, str) and _START_TIME.fullmatch(v) is not None,
            "duration": lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
            "password": lambda v: isinstance(v, str) and _PASSCODE.fullmatch(v) is not None,
            "agenda": lambda v: isinstance(v, str) and len(v) <= AGENDA_MAX_LENGTH,
        }
        for key, ok in checks.items():
            if key in body and not ok(body[key]):
                return f"Invalid field: {key}"
            if key not in body and key not in ("password", "agenda") and not partial:
                return f"Missing field: {key}"
        return None

    def meeting_of(request: Request, user_id: str | None) -> dict[str, Any] | None:
        meeting = state.meetings.get(request.path_params["meeting_id"])
        if meeting is None or (user_id is not None and meeting["host_id"] != user_id):
            return None
        return meeting

    def meeting_missing(request: Request) -> JSONResponse:
        return _zoom_error(404, 3001, f"Meeting does not exist: {request.path_params['meeting_id']}.")

    async def authorize(request: Request) -> Response:
        params = request.query_params
        if (
            params.get("response_type") != "code"
            or params.get("client_id") != state.client_id
            or not params.get("redirect_uri")
        ):
            return _oauth_error(400, "invalid_request", "Invalid client_id, response_type or redirect_uri")
        user = state.user(state.authorizing_user)
        assert user is not None, "authorizing_user must be one of the fake's users"
        code = secrets.token_urlsafe(16)
        with state.lock:
            state.codes[code] = (user.id, params["redirect_uri"])
        query = urlencode({"code": code, **({"state": params["state"]} if "state" in params else {})})
        return RedirectResponse(f"{params['redirect_uri']}?{query}", status_code=302)

    async def token(request: Request) -> Response:
        if state.token_delay:
            await anyio.sleep(state.token_delay)
        if request.headers.get("authorization") != basic_auth(state.client_id, state.client_secret)["Authorization"]:
            return _oauth_error(401, "invalid_client", "Invalid client_id or client_secret")
        form = await request.form()
        grant = str(form.get("grant_type"))
        with state.lock:
            state.token_requests[grant] += 1
            if grant == "account_credentials":
                if form.get("account_id") != state.account_id:
                    return _oauth_error(400, "invalid_request", "Invalid account_id")
                return JSONResponse(state.issue_access(None))
            if grant == "authorization_code":
                user_id, redirect_uri = state.codes.pop(str(form.get("code")), ("", ""))
                if not user_id:
                    return _oauth_error(400, "invalid_grant", "Invalid authorization code")
                if form.get("redirect_uri") != redirect_uri:
                    return _oauth_error(400, "invalid_request", "Redirect URI mismatch.")
                return JSONResponse(state.issue_user_tokens(user_id))
            if grant == "refresh_token":
                refresh = str(form.get("refresh_token"))
                user_id = state.refresh_tokens.pop(refresh, "")
                if not user_id:
                    state.refused_refresh_tokens.append(refresh)
                    return _oauth_error(400, "invalid_grant", "Invalid Token!")
                state.spent_refresh_tokens.add(refresh)
                return JSONResponse(state.issue_user_tokens(user_id))
        return _oauth_error(400, "unsupported_grant_type", "Unsupported grant type")

    def user_of_path(request: Request, own_id: str | None) -> FakeZoomUser | None:
        """The ``{userId}`` of the path (an id, an e-mail or ``me``), if the caller may act for it."""
        wanted = request.path_params["user_id"]
        user = state.user(own_id or state.users[0].id) if wanted == "me" else state.user(wanted)
        return None if user is None or (own_id is not None and user.id != own_id) else user

    def may_not_host() -> JSONResponse:
        return _zoom_error(400, 3161, "Your user account is not allowed meeting hosting and scheduling capabilities.")

    def user_missing(request: Request) -> JSONResponse:
        return _zoom_error(404, 1001, f"User does not exist: {request.path_params['user_id']}.")

    async def create_meeting(request: Request) -> Response:
        valid, own_id = caller(request)
        if not valid:
            return invalid_token()
        user = user_of_path(request, own_id)
        if user is None:
            return user_missing(request)
        if not user.may_host:
            return may_not_host()
        body = await request.json()
        problem = schedule_problem(body, partial=False)
        if problem:
            return _zoom_error(400, 300, problem)
        if not within_daily_limit(user.id):
            return daily_limit_reached()
        return JSONResponse(state.add_meeting(user, body), status_code=201)

    async def update_meeting(request: Request) -> Response:
        valid, own_id = caller(request)
        if not valid:
            return invalid_token()
        meeting = meeting_of(request, own_id)
        if meeting is None:
            return meeting_missing(request)
        body = await request.json()
        problem = schedule_problem(body, partial=True)
        if problem:
            return _zoom_error(400, 300, problem)
        if not within_daily_limit(meeting["host_id"]):
            return daily_limit_reached()
        with state.lock:
            meeting.update({k: body[k] for k in ("topic", "agenda", "start_time", "duration", "password") if k in body})
        return Response(status_code=204)

    async def delete_meeting(request: Request) -> Response:
        valid, own_id = caller(request)
        if not valid:
            return invalid_token()
        if meeting_of(request, own_id) is None:
            return meeting_missing(request)
        with state.lock:
            state.meetings.pop(request.path_params["meeting_id"])
            state.deleted.append(request.path_params["meeting_id"])
        return Response(status_code=204)

    async def list_meetings(request: Request) -> Response:
        valid, own_id = caller(request)
        if not valid:
            return invalid_token()
        if not state.list_scope:
            return _zoom_error(
                400,
                4711,
                "Invalid access token, does not contain scopes:[meeting:read:list_meetings, "
                "meeting:read:list_meetings:admin].",
            )
        user = user_of_path(request, own_id)
        if user is None:
            return user_missing(request)
        if not user.may_host:
            return may_not_host()
        query = request.query_params
        kind = query.get("type", "scheduled")
        if kind not in LIST_TYPES:
            return _zoom_error(400, 300, "Invalid field: type")
        size = query.get("page_size", str(LIST_PAGE_SIZE[0]))
        if not size.isdigit() or int(size) < 1:
            return _zoom_error(400, 300, "Invalid field: page_size")
        page_size = min(int(size), LIST_PAGE_SIZE[1])
        now = time.time()
        with state.lock:
            token = query.get("next_page_token", "")
            if token:  # a token may be used again (a retry) until it expires
                earlier = state.page_tokens.get(token)
                if earlier is None or earlier.user_id != user.id or earlier.expiry < now:
                    return _zoom_error(400, 300, "The next page token is invalid or expired.")
                remaining, total = earlier.rest, earlier.total
            else:  # the list as it is now; later pages go on from it
                remaining = (
                    [k for k, m in state.meetings.items() if m["host_id"] == user.id] if LIST_TYPES[kind] else []
                )
                total = len(remaining)
            page, rest = remaining[:page_size], remaining[page_size:]
            next_token = ""
            if rest:
                next_token = secrets.token_urlsafe(24)
                state.page_tokens[next_token] = ListPage(user.id, rest, total, now + PAGE_TOKEN_SECONDS)
            listed = [listed_meeting(state.meetings[k]) for k in page if k in state.meetings]
        return JSONResponse(
            {"page_size": page_size, "total_records": total, "next_page_token": next_token, "meetings": listed}
        )

    def listed_meeting(meeting: dict[str, Any]) -> dict[str, Any]:
        fields = ("uuid", "id", "host_id", "topic", "type", "start_time", "duration", "timezone", "created_at")
        item = {k: meeting[k] for k in fields}
        if meeting["agenda"]:
            item["agenda"] = meeting["agenda"][:LISTED_AGENDA_LENGTH]
        return {**item, "join_url": meeting["join_url"]}

    async def get_meeting(request: Request) -> Response:
        valid, own_id = caller(request)
        if not valid:
            return invalid_token()
        if not state.read_scope:
            return _zoom_error(
                400,
                4711,
                "Invalid access token, does not contain scopes:[meeting:read:meeting, meeting:read:meeting:admin].",
            )
        meeting = meeting_of(request, own_id)
        if meeting is None:
            return meeting_missing(request)
        with state.lock:
            meeting["start_url"] = state.new_start_url(meeting["id"])  # the latest is the one that works
            answer = dict(meeting)
        return JSONResponse(answer)

    async def invitation(request: Request) -> Response:
        valid, own_id = caller(request)
        if not valid:
            return invalid_token()
        if not state.invitation_scope:
            return _zoom_error(
                400,
                4711,
                "Invalid access token, does not contain scopes:[meeting:read:invitation, "
                "meeting:read:invitation:admin].",
            )
        meeting = meeting_of(request, own_id)
        if meeting is None:
            return meeting_missing(request)
        host = state.user(meeting["host_id"])
        number = str(meeting["id"])
        text = (
            f"{host.name if host else 'Zoom'} is inviting you to a scheduled Zoom meeting.\n\n"
            f"Topic: {meeting['topic']}\nTime: {meeting['start_time']} Universal Time UTC\n\n"
            f"Join Zoom Meeting\n{meeting['join_url']}\n\n"
            f"Meeting ID: {number[:3]} {number[3:7]} {number[7:]}\nPasscode: {meeting['password']}\n"
        )
        return JSONResponse({"invitation": text})

    app = Starlette(
        routes=[
            Route("/oauth/authorize", authorize, methods=["GET"]),
            Route("/oauth/token", token, methods=["POST"]),
            Route("/v2/users/{user_id}/meetings", create_meeting, methods=["POST"]),
            Route("/v2/users/{user_id}/meetings", list_meetings, methods=["GET"]),
            Route("/v2/meetings/{meeting_id}", get_meeting, methods=["GET"]),
            Route("/v2/meetings/{meeting_id}", update_meeting, methods=["PATCH"]),
            Route("/v2/meetings/{meeting_id}", delete_meeting, methods=["DELETE"]),
            Route("/v2/meetings/{meeting_id}/invitation", invitation, methods=["GET"]),
        ]
    )
    return _Faults(app, state)


@contextmanager
def running_fake_zoom(state: FakeZoomState) -> Iterator[FakeZoomState]:
    """Serve the fake on a real loopback socket in a background thread; ``state.base_url`` is its URL."""

    def build(url: str) -> ASGIApp:
        state.base_url = url
        return create_fake_zoom(state)

    with serve_on_loopback(build):
        yield state
