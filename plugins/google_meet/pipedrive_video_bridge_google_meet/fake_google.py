"""A stand-in for Google's token endpoint, OAuth consent page and Calendar API, for the plugin's tests and local trials.

It speaks the documented shapes (API errors are ``{"error": {"code", "message",
"errors": [{"domain", "reason", "message"}], "status"}}``, OAuth errors
``{"error": ..., "error_description": ...}``):

    GET    /o/oauth2/v2/auth                       approves at once: redirect_uri?code=&state=&scope=
    POST   /token                                  the JWT-bearer grant (signature checked with the service
                                                   account's public key, ``aud``, ``iat``/``exp`` at most an
                                                   hour apart, scope delegated, subject in the domain),
                                                   authorization_code and refresh_token (client_id/secret in
                                                   the body; no new refresh token on a refresh)
    POST   /calendar/v3/calendars/{id}/events      insert; 409 ``duplicate`` for an id the calendar has (deleted
                                                   events too); a Meet conference ``pending`` for
                                                   ``pending_reads`` reads, then ``success`` (or ``failure``)
    GET    /calendar/v3/calendars/{id}/events      list: ``privateExtendedProperty`` (all must match),
                                                   ``showDeleted``, ``maxResults`` (250, at most 2500), ``pageToken``
    GET    /calendar/v3/calendars/{id}/events/{e}  the event, deleted ones too (``status: cancelled``); 404 notFound
    PATCH  /calendar/v3/calendars/{id}/events/{e}  merges summary, start, end
    DELETE /calendar/v3/calendars/{id}/events/{e}  204; a deleted event stays as ``cancelled``: 410 ``deleted``

The calendar is the token's user's (``primary``, or their e-mail). Switches: the API
disabled (403 accessNotConfigured / SERVICE_DISABLED), rate limits (403 or 429, with or
without ``Retry-After``), 503s, slow answers (an insert that makes its event and answers
late too), subjects outside the domain and scopes not delegated. Everything it saw is kept for assertions.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.testing import serve_on_loopback

SCOPE = "https://www.googleapis.com/auth/calendar.events"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_EVENT_ID = re.compile(r"[a-v0-9]{5,1024}")
LIST_PAGE_SIZE = (250, 2500)  # events.list: default and largest maxResults
PROJECT_NUMBER = "123456789012"

UNAUTHORIZED_CLIENT = (
    "Client is unauthorized to retrieve access tokens using this method, or client not authorized "
    "for any of the scopes requested."
)
UNKNOWN_USER = "Invalid email or User ID"
BAD_SIGNATURE = "Invalid JWT Signature."
OUT_OF_TIME = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)
API_DISABLED_MESSAGE = (
    f"Google Calendar API has not been used in project {PROJECT_NUMBER} before or it is disabled. Enable it by "
    f"visiting https://console.developers.google.com/apis/api/calendar-json.googleapis.com/overview?project="
    f"{PROJECT_NUMBER} then retry. If you enabled this API recently, wait a few minutes for the action to "
    "propagate to our systems and retry."
)
LIMIT_MESSAGES = {
    "rateLimitExceeded": "Rate Limit Exceeded",
    "userRateLimitExceeded": "User Rate Limit Exceeded",
    "dailyLimitExceeded": "Daily Limit Exceeded",
    "quotaExceeded": "Calendar usage limits exceeded.",
}


@dataclass
class FakeServiceAccount:
    client_email: str
    client_id: str
    private_key_id: str
    public_key: rsa.RSAPublicKey
    private_pem: str = field(repr=False)


@dataclass(frozen=True)
class Limit:
    """One limit answer to give: ``reason`` (403, or 429 for "rateLimitExceeded" with ``status=429``)."""

    reason: str
    status: int = 403
    retry_after: str | None = None


@dataclass
class FakeGoogleState:
    client_id: str = "fake-client.apps.googleusercontent.com"
    client_secret: str = field(default_factory=lambda: "GOCSPX-" + secrets.token_urlsafe(18))
    base_url: str = ""  # set when the server starts
    service_accounts: dict[str, FakeServiceAccount] = field(default_factory=dict)  # by private_key_id
    domain_users: set[str] = field(default_factory=lambda: {"ada@example.com", "host@example.com"})
    delegated_scopes: set[str] = field(default_factory=lambda: {SCOPE})
    authorizing_user: str = "ada@example.com"  # who signs in on the consent page
    access_ttl: int = 3600
    largest_page: int = LIST_PAGE_SIZE[1]  # smaller, to see paging with a few events
    # faults
    pending_reads: int = 0  # a new conference is "pending" at its insert and until its n-th read
    conference_failure: bool = False
    api_disabled: bool = False
    limits_next: list[Limit] = field(default_factory=list)
    failing_next: list[int] = field(default_factory=list)  # 5xx answers to give first
    delay: float = 0.0
    insert_delay: float = 0.0  # after the event is made, before the insert answers (a slow answer, not a slow make)
    token_delay: float = 0.0
    # records
    calendars: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # owner -> event id -> event
    reads_left: dict[str, int] = field(default_factory=dict)  # event id -> pending reads left
    access_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (owner, expiry)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # live refresh token -> owner
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (owner, redirect_uri)
    page_tokens: dict[str, list[str]] = field(default_factory=dict)  # pageToken -> the event ids still to list
    token_requests: Counter[str] = field(default_factory=Counter)  # by grant type
    assertions: list[dict[str, Any]] = field(default_factory=list)  # the claims of each accepted JWT
    refused_refresh_tokens: list[str] = field(default_factory=list)
    api_requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)  # (method, path, query)
    issued_secrets: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def token_uri(self) -> str:
        return self.base_url + "/token"

    @property
    def api_base(self) -> str:
        return self.base_url + "/calendar/v3"

    def new_service_account(
        self, directory: Path, name: str = "meet-bridge", key: rsa.RSAPrivateKey | None = None
    ) -> Path:
        """A new service account with a throwaway RSA key (``key``, or a fresh one): its JSON key file,
        written in ``directory``."""
        key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        account = FakeServiceAccount(
            client_email=f"{name}@fake-project.iam.gserviceaccount.com",
            client_id=str(100000000000000000000 + secrets.randbelow(10**20)),
            private_key_id=secrets.token_hex(20),
            public_key=key.public_key(),
            private_pem=pem,
        )
        self.service_accounts[account.private_key_id] = account
        record = {
            "type": "service_account",
            "project_id": "fake-project",
            "private_key_id": account.private_key_id,
            "private_key": pem,
            "client_email": account.client_email,
            "client_id": account.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
        path = directory / f"{name}-{account.private_key_id[:8]}.json"
        path.write_text(json.dumps(record, indent=2))
        return path

    def backend_config(self, auth: str = "company", **overrides: Any) -> dict[str, Any]:
        """A ``[backends.google_meet]`` table pointing at this fake (company mode needs ``service_account_file``)."""
        table: dict[str, Any] = {"auth": auth, "api_base": self.api_base, "token_uri": self.token_uri}
        if auth == "user":
            table.update(client_id=self.client_id, client_secret=self.client_secret, auth_base=self.base_url)
        return {**table, **overrides}

    def add_event(self, owner: str, event_id: str, private: dict[str, str] | None = None) -> None:
        """An event made in Google Calendar itself (not through the bridge), with these private properties."""
        event = {"id": event_id, "status": "confirmed", "summary": "Made in Google Calendar", "sequence": 0}
        if private is not None:
            event["extendedProperties"] = {"private": private}
        with self.lock:
            self.calendars.setdefault(owner, {})[event_id] = event

    def events(self, owner: str = "ada@example.com", *, live: bool = True) -> dict[str, dict[str, Any]]:
        """The owner's events (only those not deleted, unless ``live=False``)."""
        with self.lock:
            found = self.calendars.get(owner, {})
            return {k: v for k, v in found.items() if not live or v["status"] != "cancelled"}

    def count(self, method: str, path_part: str = "/calendar/v3/") -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.api_requests if m == method and path_part in p)

    def expire_access_tokens(self) -> None:
        with self.lock:
            for token, (owner, _) in self.access_tokens.items():
                self.access_tokens[token] = (owner, 0)

    def issue_access(self, owner: str) -> dict[str, Any]:
        access = "ya29." + secrets.token_urlsafe(32)
        self.access_tokens[access] = (owner, time.time() + self.access_ttl)
        self.issued_secrets.append(access)
        return {"access_token": access, "expires_in": self.access_ttl, "token_type": "Bearer", "scope": SCOPE}

    def issue_user_tokens(self, owner: str) -> dict[str, Any]:
        answer = self.issue_access(owner)
        refresh = "1//" + secrets.token_urlsafe(32)
        self.refresh_tokens[refresh] = owner
        self.issued_secrets.append(refresh)
        return {**answer, "refresh_token": refresh}


def _api_error(code: int, reason: str, message: str, domain: str = "global", **extra: Any) -> JSONResponse:
    error = {"errors": [{"domain": domain, "reason": reason, "message": message}], "code": code, "message": message}
    return JSONResponse({"error": {**error, **extra}}, status_code=code)


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


def api_disabled() -> JSONResponse:
    """Google's answer when the Calendar API is not enabled in the caller's Cloud project."""
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "SERVICE_DISABLED",
            "domain": "googleapis.com",
            "metadata": {"service": "calendar-json.googleapis.com", "consumer": f"projects/{PROJECT_NUMBER}"},
        }
    ]
    return _api_error(
        403, "accessNotConfigured", API_DISABLED_MESSAGE, "usageLimits", status="PERMISSION_DENIED", details=details
    )


def limit_answer(limit: Limit) -> JSONResponse:
    message = LIMIT_MESSAGES.get(limit.reason, "Too Many Requests")
    headers = {"Retry-After": limit.retry_after} if limit.retry_after is not None else None
    body = {
        "error": {
            "errors": [{"domain": "usageLimits", "reason": limit.reason, "message": message}],
            "code": limit.status,
            "message": message,
        }
    }
    return JSONResponse(body, status_code=limit.status, headers=headers)


class _Faults:
    """Wraps the Calendar routes: records each request, then delays, disables or limits it when asked."""

    def __init__(self, app: ASGIApp, state: FakeGoogleState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/calendar/v3/"):
            await self.app(scope, receive, send)
            return
        state = self.state
        query = dict(Request(scope).query_params)
        with state.lock:
            state.api_requests.append((scope["method"], scope["path"], query))
            limit = state.limits_next.pop(0) if state.limits_next else None
            failing = state.failing_next.pop(0) if state.failing_next and limit is None else None
        if state.delay:
            await anyio.sleep(state.delay)
        if state.api_disabled:
            await api_disabled()(scope, receive, send)
        elif limit is not None:
            await limit_answer(limit)(scope, receive, send)
        elif failing is not None:
            await _api_error(failing, "backendError", "Backend Error")(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_fake_google(state: FakeGoogleState) -> ASGIApp:
    def owner_of(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        with state.lock:
            owner, expiry = state.access_tokens.get(token, ("", 0.0))
        return owner if expiry > time.time() else None

    def invalid_credentials() -> JSONResponse:
        return _api_error(401, "authError", "Invalid Credentials", locationType="header", location="Authorization")

    def calendar_of(request: Request, owner: str) -> dict[str, dict[str, Any]] | None:
        wanted = request.path_params["calendar_id"]
        if wanted not in ("primary", owner):
            return None
        return state.calendars.setdefault(owner, {})

    def not_found() -> JSONResponse:
        return _api_error(404, "notFound", "Not Found")

    async def authorize(request: Request) -> Response:
        params = request.query_params
        if params.get("client_id") != state.client_id:
            return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        if params.get("response_type") != "code" or not params.get("redirect_uri"):
            return _oauth_error(400, "invalid_request", "Required parameter is missing: response_type")
        if SCOPE not in params.get("scope", "").split():
            return _oauth_error(400, "invalid_scope", "Some requested scopes were invalid.")
        code = "4/" + secrets.token_urlsafe(24)
        with state.lock:
            state.codes[code] = (state.authorizing_user, params["redirect_uri"])
        query = {"code": code, "scope": SCOPE, **({"state": params["state"]} if "state" in params else {})}
        return RedirectResponse(f"{params['redirect_uri']}?{urlencode(query)}", status_code=302)

    def jwt_grant(assertion: str) -> JSONResponse:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return _oauth_error(400, "invalid_grant", "Invalid JWT.")
        account = state.service_accounts.get(str(header.get("kid")))
        if account is None or header.get("alg") != "RS256":
            return _oauth_error(400, "invalid_grant", BAD_SIGNATURE)
        try:
            claims = jwt.decode(
                assertion,
                account.public_key,
                algorithms=["RS256"],
                audience=state.token_uri,
                options={"require": ["iss", "aud", "exp", "iat", "scope"]},
                leeway=30,
            )
        except jwt.InvalidSignatureError:
            return _oauth_error(400, "invalid_grant", BAD_SIGNATURE)
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError, jwt.InvalidIssuedAtError):
            return _oauth_error(400, "invalid_grant", OUT_OF_TIME)
        except jwt.PyJWTError as exc:
            return _oauth_error(400, "invalid_grant", f"Invalid JWT: {exc}")
        if claims["iss"] != account.client_email:
            return _oauth_error(400, "invalid_grant", BAD_SIGNATURE)
        if claims["exp"] - claims["iat"] > 3600:
            return _oauth_error(400, "invalid_grant", OUT_OF_TIME)
        subject = claims.get("sub")
        if subject is None or subject not in state.domain_users:
            return _oauth_error(400, "invalid_grant", UNKNOWN_USER)
        if not set(str(claims["scope"]).split()) <= state.delegated_scopes:
            return _oauth_error(401, "unauthorized_client", UNAUTHORIZED_CLIENT)
        state.assertions.append({"header": header, **claims})
        answer = state.issue_access(subject)
        return JSONResponse(
            {"access_token": answer["access_token"], "expires_in": answer["expires_in"], "token_type": "Bearer"}
        )

    async def token(request: Request) -> Response:
        if state.token_delay:
            await anyio.sleep(state.token_delay)
        form = await request.form()
        grant = str(form.get("grant_type"))
        with state.lock:
            state.token_requests[grant] += 1
            if grant == JWT_BEARER:
                return jwt_grant(str(form.get("assertion", "")))
            if grant not in ("authorization_code", "refresh_token"):
                return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant}")
            if form.get("client_id") != state.client_id or form.get("client_secret") != state.client_secret:
                return _oauth_error(401, "invalid_client", "Unauthorized")
            if grant == "authorization_code":
                owner, redirect_uri = state.codes.pop(str(form.get("code")), ("", ""))
                if not owner:
                    return _oauth_error(400, "invalid_grant", "Malformed auth code.")
                if form.get("redirect_uri") != redirect_uri:
                    return _oauth_error(400, "redirect_uri_mismatch", "Bad Request")
                return JSONResponse(state.issue_user_tokens(owner))
            refresh = str(form.get("refresh_token"))
            owner = state.refresh_tokens.get(refresh, "")
            if not owner:
                state.refused_refresh_tokens.append(refresh)
                return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
            return JSONResponse(state.issue_access(owner))  # Google keeps the refresh token: none is sent

    def conference(event_id: str, request_id: str) -> dict[str, Any]:
        """A new Meet conference: pending for ``pending_reads`` reads, then with its entry points."""
        if state.pending_reads:
            state.reads_left[event_id] = state.pending_reads
        status = "failure" if state.conference_failure else "pending"  # settled at once without pending_reads
        return {
            "createRequest": {
                "requestId": request_id,
                "conferenceSolutionKey": {"type": "hangoutsMeet"},
                "status": {"statusCode": status},
            }
        }

    def settle(event: dict[str, Any]) -> None:
        """Fill in the conference once no pending reads are left (call with the lock held)."""
        data = event.get("conferenceData")
        if not data or data["createRequest"]["status"]["statusCode"] != "pending":
            return
        left = state.reads_left.get(event["id"], 0) - 1  # this read counts
        state.reads_left[event["id"]] = left
        if left > 0:
            return
        code = "-".join("".join(secrets.choice("abcdefghijkmnopqrstuvwxyz") for _ in range(n)) for n in (3, 4, 3))
        meet = f"https://meet.google.com/{code}"
        pin = f"{secrets.randbelow(10**9):09d}"
        data["createRequest"]["status"]["statusCode"] = "success"
        data.update(
            conferenceId=code,
            conferenceSolution={"key": {"type": "hangoutsMeet"}, "name": "Google Meet"},
            entryPoints=[
                {"entryPointType": "video", "uri": meet, "label": meet.removeprefix("https://")},
                {
                    "entryPointType": "phone",
                    "uri": "tel:+1-323-555-0166",
                    "label": "+1 323-555-0166",
                    "pin": pin,
                    "regionCode": "US",
                },
                {"entryPointType": "more", "uri": f"https://tel.meet/{code}?pin={pin}", "pin": pin},
            ],
        )
        event["hangoutLink"] = meet

    def answer(event: dict[str, Any], status_code: int = 200) -> JSONResponse:
        return JSONResponse(json.loads(json.dumps(event)), status_code=status_code)

    async def insert(request: Request) -> Response:
        owner = owner_of(request)
        if owner is None:
            return invalid_credentials()
        body = await request.json()
        with state.lock:
            calendar = calendar_of(request, owner)
            if calendar is None:
                return not_found()
            event_id = body.get("id") or secrets.token_hex(13)
            if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
                return _api_error(400, "invalid", "Invalid resource id value.")
            if event_id in calendar:
                return _api_error(409, "duplicate", "The requested identifier already exists.")
            if not all(isinstance(body.get(k), dict) and "dateTime" in body[k] for k in ("start", "end")):
                return _api_error(400, "required", "Missing end time.")
            event: dict[str, Any] = {
                "kind": "calendar#event",
                "id": event_id,
                "status": "confirmed",
                "htmlLink": f"https://www.google.com/calendar/event?eid={event_id}",
                "summary": body.get("summary", ""),
                "creator": {"email": owner, "self": True},
                "organizer": {"email": owner, "self": True},
                "start": body["start"],
                "end": body["end"],
                "iCalUID": f"{event_id}@google.com",
                "sequence": 0,
                "eventType": "default",
            }
            if "extendedProperties" in body:
                event["extendedProperties"] = body["extendedProperties"]
            create = (body.get("conferenceData") or {}).get("createRequest")
            if request.query_params.get("conferenceDataVersion") == "1" and isinstance(create, dict):
                event["conferenceData"] = conference(event_id, str(create.get("requestId")))
                if not state.pending_reads and not state.conference_failure:
                    settle(event)
            calendar[event_id] = event
            made = answer(event)
        if state.insert_delay:
            await anyio.sleep(state.insert_delay)
        return made

    def found_event(request: Request, owner: str) -> dict[str, Any] | None:
        """The path's event on the owner's calendar (call with the lock held)."""
        return (calendar_of(request, owner) or {}).get(request.path_params["event_id"])

    async def get_event(request: Request) -> Response:
        owner = owner_of(request)
        if owner is None:
            return invalid_credentials()
        with state.lock:
            event = found_event(request, owner)
            if event is None:
                return not_found()
            settle(event)
            return answer(event)

    async def patch_event(request: Request) -> Response:
        body = await request.json()
        owner = owner_of(request)
        if owner is None:
            return invalid_credentials()
        with state.lock:
            event = found_event(request, owner)
            if event is None:
                return not_found()
            event.update({k: body[k] for k in ("summary", "start", "end") if k in body})
            event["sequence"] += 1
            return answer(event)

    async def delete_event(request: Request) -> Response:
        owner = owner_of(request)
        if owner is None:
            return invalid_credentials()
        with state.lock:
            event = found_event(request, owner)
            if event is None:
                return not_found()
            if event["status"] == "cancelled":
                return _api_error(410, "deleted", "Resource has been deleted")
            event["status"] = "cancelled"
            return Response(status_code=204)

    async def list_events(request: Request) -> Response:
        owner = owner_of(request)
        if owner is None:
            return invalid_credentials()
        query = request.query_params
        size = query.get("maxResults", str(LIST_PAGE_SIZE[0]))
        if not size.isdigit() or int(size) < 1:
            return _api_error(400, "invalid", "Invalid value for: maxResults")
        page_size = min(int(size), state.largest_page)
        wanted = [tuple(c.split("=", 1)) for c in query.getlist("privateExtendedProperty")]
        if any(len(c) != 2 for c in wanted):
            return _api_error(400, "invalid", "Invalid extended property constraint.")
        show_deleted = query.get("showDeleted") == "true"
        with state.lock:
            calendar = calendar_of(request, owner)
            if calendar is None:
                return not_found()
            token = query.get("pageToken", "")
            if token:
                if token not in state.page_tokens:
                    return _api_error(400, "invalid", "Invalid page token.")
                remaining = state.page_tokens[token]
            else:
                remaining = [
                    event_id
                    for event_id, event in calendar.items()
                    if (show_deleted or event["status"] != "cancelled")
                    and all(
                        event.get("extendedProperties", {}).get("private", {}).get(name) == value
                        for name, value in wanted
                    )
                ]
            page, rest = remaining[:page_size], remaining[page_size:]
            body: dict[str, Any] = {
                "kind": "calendar#events",
                "summary": owner,
                "items": [json.loads(json.dumps(calendar[k])) for k in page if k in calendar],
            }
            if rest:
                next_token = secrets.token_urlsafe(24)
                state.page_tokens[next_token] = rest
                body["nextPageToken"] = next_token
        return JSONResponse(body)

    events = "/calendar/v3/calendars/{calendar_id}/events"
    app = Starlette(
        routes=[
            Route("/o/oauth2/v2/auth", authorize, methods=["GET"]),
            Route("/token", token, methods=["POST"]),
            Route(events, insert, methods=["POST"]),
            Route(events, list_events, methods=["GET"]),
            Route(events + "/{event_id}", get_event, methods=["GET"]),
            Route(events + "/{event_id}", patch_event, methods=["PATCH"]),
            Route(events + "/{event_id}", delete_event, methods=["DELETE"]),
        ]
    )
    return _Faults(app, state)


@contextmanager
def running_fake_google(state: FakeGoogleState) -> Iterator[FakeGoogleState]:
    """Serve the fake on a real loopback socket in a background thread; ``state.base_url`` is its URL."""

    def build(url: str) -> ASGIApp:
        state.base_url = url
        return create_fake_google(state)

    with serve_on_loopback(build):
        yield state
