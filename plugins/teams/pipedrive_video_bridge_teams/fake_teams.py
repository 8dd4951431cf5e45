"""A stand-in for the Microsoft identity platform and Microsoft Graph's online meetings, for tests and trials.

It speaks the documented shapes (Graph errors are ``{"error": {"code", "message", "innerError"}}``,
the token endpoint's ``{"error", "error_description": "AADSTS<n>: ...", "error_codes": [n]}``):

    GET    /{tenant}/oauth2/v2.0/authorize        signs ``authorizing_user`` in at once: redirect_uri?code=&state=
    POST   /{tenant}/oauth2/v2.0/token            client_credentials (client_secret, or a client assertion
                                                  checked against the certificate: RS256, x5t, aud, iss, sub,
                                                  exp), authorization_code and refresh_token (rotated: a spent
                                                  refresh token answers invalid_grant AADSTS70008)
    GET    /v1.0/users/{id | upn}                 the user; 404 Request_ResourceNotFound; 403
                                                  Authorization_RequestDenied without User.Read.All
    POST   /v1.0/users/{id}/onlineMeetings/createOrGet   201 a new meeting, 200 the one with that externalId;
    POST   /v1.0/me/onlineMeetings/createOrGet           app-only calls need the user's application access
                                                          policy (403) and a Teams licence (403)
    GET, PATCH, DELETE  /v1.0/{users/{id} | me}/onlineMeetings/{meetingId}   404 for another's or no meeting

An expired or unknown access token answers 401 InvalidAuthenticationToken. Faults a test can switch on:
429s with ``Retry-After``, server errors, slow answers, and answers lost after the work was done (504).
``live_meetings()`` is Graph's own ledger.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.testing import serve_on_loopback

APP_ROLES = frozenset({"OnlineMeetings.ReadWrite.All", "User.Read.All"})
NO_POLICY = "No application access policy found for this app."
NO_LICENSE = (
    "Failed to get license information for the user. Ensure user has a valid Office365 license assigned to them."
)


@dataclass
class FakeEntraUser:
    id: str
    upn: str
    name: str = ""
    licensed: bool = True
    policy: bool = True  # an application access policy allows the app for this user


def _default_users() -> list[FakeEntraUser]:
    return [
        FakeEntraUser("6e7b768e-07e2-4810-8459-485f84f8f204", "ada@example.com", "Ada Lovelace"),
        FakeEntraUser("2c0f3b8e-3d71-4b6a-9a4c-1f0b5e9d7a11", "frontdesk@example.com", "Front Desk"),
    ]


@dataclass
class FakeTeamsState:
    tenant_id: str
    client_id: str
    client_secret: str | None = None
    certificate_key: RSAPublicKey | None = None  # the certificate uploaded to the app registration
    certificate_x5t: str = ""
    base_url: str = ""  # set when the server starts
    users: list[FakeEntraUser] = field(default_factory=_default_users)
    authorizing_user: str = "ada@example.com"
    access_ttl: int = 3599
    app_roles: set[str] = field(default_factory=lambda: set(APP_ROLES))  # admin-consented application permissions
    # faults
    delay: float = 0.0
    token_delay: float = 0.0
    busy_next: list[str | None] = field(default_factory=list)  # 429s to answer first, with this Retry-After
    failing_next: list[int] = field(default_factory=list)  # server errors (500, 503...) to answer first
    create_delay: float = 0.0  # seconds a createOrGet waits after making its meeting, before answering
    lost_next: int = 0  # requests carried out whose answer is replaced by a 504 (a gateway gave up waiting)
    # records
    meetings: dict[str, dict[str, Any]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    access_tokens: dict[str, tuple[str | None, float]] = field(default_factory=dict)  # -> (user id, expiry)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # live refresh token -> user id
    spent_refresh_tokens: set[str] = field(default_factory=set)
    refused_refresh_tokens: list[str] = field(default_factory=list)
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # code -> (user id, redirect_uri)
    token_requests: Counter[str] = field(default_factory=Counter)  # by grant type
    assertions: list[dict[str, Any]] = field(default_factory=list)  # the claims of each client assertion
    api_requests: list[tuple[str, str]] = field(default_factory=list)
    issued_secrets: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def graph_base(self) -> str:
        return self.base_url + "/v1.0"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/{self.tenant_id}/oauth2/v2.0/token"

    def backend_config(self, auth: str = "company", **overrides: Any) -> dict[str, Any]:
        """A ``[backends.teams]`` table pointing at this fake (with the client secret, if it has one)."""
        table: dict[str, Any] = {
            "auth": auth,
            "tenant_id": self.tenant_id,
            "client_id": self.client_id,
            "graph_base": self.graph_base,
            "login_base": self.base_url,
        }
        if self.client_secret is not None:
            table["client_secret"] = self.client_secret
        return {**table, **overrides}

    def user(self, id_or_upn: str) -> FakeEntraUser | None:
        wanted = id_or_upn.lower()
        return next((u for u in self.users if u.id == wanted or u.upn.lower() == wanted), None)

    def live_meetings(self, organizer: str | None = None) -> list[str]:
        """Graph's meeting ids (of one organiser, by id or UPN, if given), oldest first."""
        user = self.user(organizer) if organizer is not None else None
        with self.lock:
            return [
                meeting_id
                for meeting_id, meeting in self.meetings.items()
                if organizer is None or (user is not None and meeting["organizer"] == user.id)
            ]

    def expire_access_tokens(self) -> None:
        with self.lock:
            for token, (user_id, _) in self.access_tokens.items():
                self.access_tokens[token] = (user_id, 0)

    def count(self, method: str, path_part: str = "/v1.0/") -> int:
        with self.lock:
            return sum(1 for m, p in self.api_requests if m == method and path_part in p)

    def issue(self, user_id: str | None, *, refresh: bool) -> dict[str, Any]:
        """A token answer (call with the lock held): app-only for ``user_id`` None."""
        access = "eyJ0eXAiOiJKV1QifQ." + secrets.token_urlsafe(32)
        self.access_tokens[access] = (user_id, time.time() + self.access_ttl)
        self.issued_secrets.append(access)
        answer: dict[str, Any] = {"token_type": "Bearer", "expires_in": self.access_ttl, "ext_expires_in": 3599}
        answer["access_token"] = access
        if refresh and user_id is not None:
            token = "0.AX" + secrets.token_urlsafe(40)
            self.refresh_tokens[token] = user_id
            self.issued_secrets.append(token)
            answer["refresh_token"] = token
            answer["scope"] = "https://graph.microsoft.com/OnlineMeetings.ReadWrite"
        return answer


def graph_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    inner = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "request-id": str(uuid.uuid4())}
    return JSONResponse(
        {"error": {"code": code, "message": message, "innerError": inner}}, status_code=status, headers=headers
    )


def sign_in_error(status: int, error: str, code: int, description: str) -> JSONResponse:
    trace = str(uuid.uuid4())
    return JSONResponse(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {uuid.uuid4()}"
            f"\r\nTimestamp: {datetime.now(UTC):%Y-%m-%d %H:%M:%SZ}",
            "error_codes": [code],
            "trace_id": trace,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
        status_code=status,
    )


class _Faults:
    """Wraps the Graph routes: records each request, then delays or refuses it when asked."""

    def __init__(self, app: ASGIApp, state: FakeTeamsState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1.0/"):
            await self.app(scope, receive, send)
            return
        state = self.state
        with state.lock:
            state.api_requests.append((scope["method"], scope["path"]))
            lost = state.lost_next > 0
            state.lost_next -= lost
            busy = bool(state.busy_next)
            retry_after = state.busy_next.pop(0) if busy else None
            failing = state.failing_next.pop(0) if state.failing_next and not busy else None
        if state.delay:
            await anyio.sleep(state.delay)
        if busy:
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            await graph_error(429, "TooManyRequests", "Too many requests.", headers)(scope, receive, send)
            return
        if failing is not None:
            await graph_error(failing, "ServiceUnavailable", "The service is temporarily unavailable.")(
                scope, receive, send
            )
            return
        if lost:
            await self.app(scope, receive, _discard)
            await graph_error(504, "GatewayTimeout", "The gateway did not receive a response in time.")(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)


async def _discard(_message: Any) -> None:
    """Where an answer that never reaches the caller goes."""


def _meeting_id(organizer: str) -> str:
    """An id shaped like Graph's: base64 of ``1*<organizer>*0**19:meeting_…@thread.v2`` (no / or + here)."""
    while True:
        thread = base64.b64encode(secrets.token_bytes(36)).decode()
        raw = f"1*{organizer}*0**19:meeting_{thread}@thread.v2".encode()
        encoded = base64.b64encode(raw).decode().rstrip("=")
        if "/" not in encoded and "+" not in encoded:
            return encoded


def create_fake_teams(state: FakeTeamsState) -> ASGIApp:
    def caller(request: Request) -> tuple[bool, str | None]:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        with state.lock:
            user_id, expiry = state.access_tokens.get(token, (None, 0.0))
        return expiry > time.time(), user_id

    def invalid_token() -> JSONResponse:
        return graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")

    async def authorize(request: Request) -> Response:
        params = request.query_params
        if params.get("client_id") != state.client_id or params.get("response_type") != "code":
            return sign_in_error(400, "unauthorized_client", 700016, "Application not found in the directory.")
        if "offline_access" not in params.get("scope", "").split():
            return sign_in_error(400, "invalid_request", 90014, "The scope must include offline_access.")
        user = state.user(state.authorizing_user)
        assert user is not None, "authorizing_user must be one of the fake's users"
        code = "0.AQ" + secrets.token_urlsafe(24)
        with state.lock:
            state.codes[code] = (user.id, params.get("redirect_uri", ""))
        query = urlencode({"code": code, **({"state": params["state"]} if "state" in params else {})})
        return RedirectResponse(f"{params.get('redirect_uri', '')}?{query}", status_code=302)

    def client_refused(form: Mapping[str, Any]) -> JSONResponse | None:
        """None when the form proves the app's identity (its secret or a valid client assertion)."""
        if form.get("client_id") != state.client_id:
            return sign_in_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form.get('client_id')}' was not found in the directory.",
            )
        assertion = form.get("client_assertion")
        if assertion is not None:
            if state.certificate_key is None:
                return sign_in_error(401, "invalid_client", 700027, "Client assertion contains an invalid signature.")
            try:
                header = jwt.get_unverified_header(str(assertion))
                claims = jwt.decode(
                    str(assertion), state.certificate_key, algorithms=["RS256"], audience=state.token_url
                )
            except jwt.PyJWTError as exc:
                return sign_in_error(401, "invalid_client", 700027, f"Client assertion failed: {exc}.")
            if header.get("x5t") != state.certificate_x5t:
                return sign_in_error(401, "invalid_client", 700027, "The certificate with this thumbprint is unknown.")
            if claims.get("iss") != state.client_id or claims.get("sub") != state.client_id or "jti" not in claims:
                return sign_in_error(401, "invalid_client", 700023, "Client assertion iss or sub is wrong.")
            with state.lock:
                state.assertions.append(claims)
            return None
        if state.client_secret is None or form.get("client_secret") != state.client_secret:
            return sign_in_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the "
                "request is the client secret value, not the client secret ID.",
            )
        return None

    async def token(request: Request) -> Response:
        if state.token_delay:
            await anyio.sleep(state.token_delay)
        if request.path_params["tenant"] != state.tenant_id:
            return sign_in_error(400, "invalid_request", 90002, f"Tenant '{request.path_params['tenant']}' not found.")
        form = await request.form()
        refused = client_refused(form)
        if refused is not None:
            return refused
        grant = str(form.get("grant_type"))
        with state.lock:
            state.token_requests[grant] += 1
            if grant == "client_credentials":
                if form.get("scope") != "https://graph.microsoft.com/.default":
                    return sign_in_error(400, "invalid_scope", 1002012, "The provided value for scope is not valid.")
                return JSONResponse(state.issue(None, refresh=False))
            if grant == "authorization_code":
                user_id, redirect_uri = state.codes.pop(str(form.get("code")), ("", ""))
                if not user_id:
                    return sign_in_error(400, "invalid_grant", 70000, "The provided authorization code is invalid.")
                if form.get("redirect_uri") != redirect_uri:
                    return sign_in_error(400, "invalid_grant", 50148, "The redirect_uri does not match.")
                return JSONResponse(state.issue(user_id, refresh=True))
            if grant == "refresh_token":
                refresh = str(form.get("refresh_token"))
                user_id = state.refresh_tokens.pop(refresh, "")
                if not user_id:
                    state.refused_refresh_tokens.append(refresh)
                    return sign_in_error(
                        400,
                        "invalid_grant",
                        70008,
                        "The provided authorization code or refresh token has expired due to inactivity.",
                    )
                state.spent_refresh_tokens.add(refresh)
                return JSONResponse(state.issue(user_id, refresh=True))
        return sign_in_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")

    async def get_user(request: Request) -> Response:
        valid, user_id = caller(request)
        if not valid:
            return invalid_token()
        if user_id is None and "User.Read.All" not in state.app_roles:
            return graph_error(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
        wanted = request.path_params["user"]
        user = state.user(wanted)
        if user is None:
            return graph_error(
                404,
                "Request_ResourceNotFound",
                f"Resource '{wanted}' does not exist or one of its queried reference-property objects are not present.",
            )
        return JSONResponse({"id": user.id, "userPrincipalName": user.upn, "displayName": user.name})

    def organizer_of(request: Request) -> tuple[FakeEntraUser | None, Response | None]:
        """The meeting owner the path names, or the refusal Graph answers."""
        valid, user_id = caller(request)
        if not valid:
            return None, invalid_token()
        path_user = request.path_params.get("user")
        if path_user is None:  # /me
            if user_id is None:
                return None, graph_error(
                    400, "BadRequest", "/me request is only valid with delegated authentication flow."
                )
            user = state.user(user_id)
        else:
            user = state.user(path_user)
            if user_id is None:
                if "OnlineMeetings.ReadWrite.All" not in state.app_roles:
                    return None, graph_error(403, "Forbidden", "Application does not have the required permission.")
                if user is not None and not user.policy:
                    return None, graph_error(403, "Forbidden", NO_POLICY)
            elif user is None or user.id != user_id:
                return None, graph_error(403, "Forbidden", "The user may only act on their own meetings.")
        if user is None:
            return None, graph_error(404, "NotFound", "The user was not found.")
        if not user.licensed:
            return None, graph_error(403, "Forbidden", NO_LICENSE)
        return user, None

    def schedule_problem(body: Any) -> str | None:
        if not isinstance(body, dict):
            return "The request body must be a JSON object."
        for name in ("startDateTime", "endDateTime"):
            if name in body:
                try:
                    datetime.fromisoformat(str(body[name]).replace("Z", "+00:00"))
                except ValueError:
                    return f"Invalid {name}."
        if "subject" in body and not isinstance(body["subject"], str):
            return "Invalid subject."
        return None

    def shown(meeting: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in meeting.items() if k != "organizer"}

    async def create_or_get(request: Request) -> Response:
        user, refused = organizer_of(request)
        if refused is not None or user is None:
            return refused or graph_error(404, "NotFound", "No user.")
        body = await request.json()
        problem = schedule_problem(body)
        if problem is None and (not isinstance(body.get("externalId"), str) or not body["externalId"]):
            problem = "externalId is required."
        if problem is not None:
            return graph_error(400, "BadRequest", problem)
        with state.lock:
            for meeting in state.meetings.values():
                if meeting["organizer"] == user.id and meeting["externalId"] == body["externalId"]:
                    return JSONResponse(shown(meeting), status_code=200)
            meeting_id = _meeting_id(user.id)
            thread = secrets.token_urlsafe(30)
            meeting = {
                "id": meeting_id,
                "organizer": user.id,
                "externalId": body["externalId"],
                "subject": body.get("subject", ""),
                "startDateTime": body.get("startDateTime"),
                "endDateTime": body.get("endDateTime"),
                "creationDateTime": datetime.now(UTC).isoformat(),
                "joinWebUrl": f"https://teams.microsoft.com/l/meetup-join/19%3ameeting_{thread}%40thread.v2/0",
                "joinMeetingIdSettings": {
                    "isPasscodeRequired": True,
                    "joinMeetingId": str(secrets.randbelow(9 * 10**11) + 10**11),
                    "passcode": secrets.token_urlsafe(5)[:6],
                },
                "audioConferencing": {
                    "conferenceId": str(secrets.randbelow(10**9)),
                    "tollNumber": "+1 323-555-0166",
                    "tollFreeNumber": "+1 800-555-0123",
                    "dialinUrl": "https://dialin.teams.microsoft.com/22f12fa0-499f-435b-bc69-b8de580ba330",
                },
                "participants": {"organizer": {"identity": {"user": {"id": user.id}}, "upn": user.upn}},
            }
            state.meetings[meeting_id] = meeting
        if state.create_delay:
            await anyio.sleep(state.create_delay)
        return JSONResponse(shown(meeting), status_code=201)

    def meeting_of(request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        user, refused = organizer_of(request)
        if refused is not None or user is None:
            return None, refused or graph_error(404, "NotFound", "No user.")
        meeting = state.meetings.get(request.path_params["meeting_id"])
        if meeting is None or meeting["organizer"] != user.id:
            return None, graph_error(404, "NotFound", "The specified meeting was not found.")
        return meeting, None

    async def get_meeting(request: Request) -> Response:
        meeting, refused = meeting_of(request)
        return refused or JSONResponse(shown(meeting or {}))

    async def update_meeting(request: Request) -> Response:
        meeting, refused = meeting_of(request)
        if refused is not None or meeting is None:
            return refused or graph_error(404, "NotFound", "No meeting.")
        body = await request.json()
        problem = schedule_problem(body)
        if problem is not None:
            return graph_error(400, "BadRequest", problem)
        if ("startDateTime" in body) != ("endDateTime" in body):
            return graph_error(400, "BadRequest", "startDateTime and endDateTime must be changed together.")
        with state.lock:
            meeting.update({k: body[k] for k in ("subject", "startDateTime", "endDateTime") if k in body})
        return JSONResponse(shown(meeting))

    async def delete_meeting(request: Request) -> Response:
        meeting, refused = meeting_of(request)
        if refused is not None or meeting is None:
            return refused or graph_error(404, "NotFound", "No meeting.")
        with state.lock:
            state.meetings.pop(meeting["id"], None)
            state.deleted.append(meeting["id"])
        return Response(status_code=204)

    app = Starlette(
        routes=[
            Route("/{tenant}/oauth2/v2.0/authorize", authorize, methods=["GET"]),
            Route("/{tenant}/oauth2/v2.0/token", token, methods=["POST"]),
            Route("/v1.0/users/{user}", get_user, methods=["GET"]),
            Route("/v1.0/users/{user}/onlineMeetings/createOrGet", create_or_get, methods=["POST"]),
            Route("/v1.0/me/onlineMeetings/createOrGet", create_or_get, methods=["POST"]),
            Route("/v1.0/users/{user}/onlineMeetings/{meeting_id}", get_meeting, methods=["GET"]),
            Route("/v1.0/users/{user}/onlineMeetings/{meeting_id}", update_meeting, methods=["PATCH"]),
            Route("/v1.0/users/{user}/onlineMeetings/{meeting_id}", delete_meeting, methods=["DELETE"]),
            Route("/v1.0/me/onlineMeetings/{meeting_id}", get_meeting, methods=["GET"]),
            Route("/v1.0/me/onlineMeetings/{meeting_id}", update_meeting, methods=["PATCH"]),
            Route("/v1.0/me/onlineMeetings/{meeting_id}", delete_meeting, methods=["DELETE"]),
        ]
    )
    return _Faults(app, state)


def write_certificate(path: Path, common_name: str = "pipedrive-video-bridge") -> Path:
    """A self-signed certificate and its RSA key in one PEM file, as an admin makes one with openssl."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(key_pem + certificate.public_bytes(serialization.Encoding.PEM))
    return path


@contextmanager
def running_fake_teams(state: FakeTeamsState) -> Iterator[FakeTeamsState]:
    """Serve the fake on a real loopback socket in a background thread; ``state.base_url`` is its URL."""

    def build(url: str) -> ASGIApp:
        state.base_url = url
        return create_fake_teams(state)

    with serve_on_loopback(build):
        yield state
