"""A stand-in for Pipedrive's OAuth server and API, for the simulator and the tests.

It speaks the parts of Pipedrive the bridge uses, with Pipedrive's shapes:

    GET    /oauth/authorize                        approves at once: redirect to redirect_uri?code=&state=
                                                   (``deny=1`` in the query answers ?error=user_denied)
    POST   /oauth/token                            authorization_code / refresh_token grants, Basic auth
    POST   /oauth/revoke                           RFC 7009
    GET    /api/v1/users/me                        Bearer
    POST   /api/v1/meetings/userProviderLinks      Bearer; records the link
    DELETE /api/v1/meetings/userProviderLinks/{id} Bearer

Codes live 5 minutes and work once; access tokens live ``access_ttl`` seconds;
a refresh token works once (the answer carries a new one) — stricter than
Pipedrive, so a bridge that refreshes twice is caught. Everything it saw is kept
in ``FakePipedriveState`` for assertions.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bridge.api.auth import basic_auth
from bridge.devtools.loopback import serve_on_loopback

LINKS_PATH = "/api/v1/meetings/userProviderLinks"


@dataclass
class FakeUser:
    id: int = 1001
    company_id: int = 2002
    name: str = "Sam Simulator"
    email: str = "sam@example.com"


@dataclass
class FakePipedriveState:
    client_id: str
    client_secret: str
    api_domain: str = ""  # set when the server starts: its own base URL
    user: FakeUser = field(default_factory=FakeUser)
    access_ttl: int = 3600
    codes: dict[str, float] = field(default_factory=dict)  # code -> expiry
    access_tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry
    refresh_tokens: set[str] = field(default_factory=set)
    revoked: list[str] = field(default_factory=list)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)  # user_provider_id -> body
    removed_links: list[str] = field(default_factory=list)
    token_requests: dict[str, int] = field(default_factory=lambda: {"authorization_code": 0, "refresh_token": 0})
    invalid_grants: int = 0
    redirect_url: str | None = None  # what userProviderLinks answers as data.redirectUrl, if anything
    fail_link_registration: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def issue_tokens(self) -> dict[str, Any]:
        access, refresh = "pd-at-" + secrets.token_urlsafe(16), "pd-rt-" + secrets.token_urlsafe(16)
        self.access_tokens[access] = time.time() + self.access_ttl
        self.refresh_tokens.add(refresh)
        return {
            "access_token": access,
            "token_type": "Bearer",
            "refresh_token": refresh,
            "scope": "base,video-calls",
            "expires_in": self.access_ttl,
            "api_domain": self.api_domain,
        }

    def expire_access_tokens(self) -> None:
        """Make every access token Pipedrive issued so far answer 401 from now on."""
        with self.lock:
            for token in self.access_tokens:
                self.access_tokens[token] = 0


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"success": False, "error": error, "message": message}, status_code=status)


def create_fake_pipedrive(state: FakePipedriveState) -> Starlette:
    def client_ok(request: Request) -> bool:
        return request.headers.get("authorization") == basic_auth(state.client_id, state.client_secret)["Authorization"]

    def bearer_ok(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        with state.lock:
            return state.access_tokens.get(token, 0) > time.time()

    async def authorize(request: Request) -> Response:
        params = request.query_params
        if params.get("client_id") != state.client_id or not params.get("redirect_uri"):
            return _error(400, "invalid_request", "unknown client_id or missing redirect_uri")
        target = params["redirect_uri"]
        sep = "&" if "?" in target else "?"
        extra = "&" + urlencode({"state": params["state"]}) if params.get("state") else ""
        if params.get("deny"):
            return RedirectResponse(f"{target}{sep}error=user_denied{extra}", status_code=302)
        code = secrets.token_urlsafe(16)
        with state.lock:
            state.codes[code] = time.time() + 300
        return RedirectResponse(f"{target}{sep}code={code}{extra}", status_code=302)

    async def token(request: Request) -> Response:
        if not client_ok(request):
            return _error(401, "invalid_client", "Invalid client credentials")
        form = await request.form()
        grant = form.get("grant_type")
        with state.lock:
            if grant == "authorization_code":
                state.token_requests["authorization_code"] += 1
                if state.codes.pop(str(form.get("code")), 0) < time.time():
                    state.invalid_grants += 1
                    return _error(400, "invalid_grant", "Invalid grant: authorization code is invalid")
                return JSONResponse(state.issue_tokens())
            if grant == "refresh_token":
                state.token_requests["refresh_token"] += 1
                refresh = str(form.get("refresh_token"))
                if refresh not in state.refresh_tokens:
                    state.invalid_grants += 1
                    return _error(400, "invalid_grant", "Invalid grant: refresh token is invalid")
                state.refresh_tokens.discard(refresh)
                return JSONResponse(state.issue_tokens())
        return _error(400, "unsupported_grant_type", "Unsupported grant type")

    async def revoke(request: Request) -> Response:
        if not client_ok(request):
            return _error(401, "invalid_client", "Invalid client credentials")
        form = await request.form()
        with state.lock:
            token = str(form.get("token"))
            state.revoked.append(token)
            state.refresh_tokens.discard(token)
        return Response(status_code=200)

    async def me(request: Request) -> Response:
        if not bearer_ok(request):
            return _error(401, "unauthorized", "Unauthorized")
        user = state.user
        return JSONResponse(
            {
                "success": True,
                "data": {"id": user.id, "company_id": user.company_id, "name": user.name, "email": user.email},
            }
        )

    async def add_link(request: Request) -> Response:
        if not bearer_ok(request):
            return _error(401, "unauthorized", "Unauthorized")
        if state.fail_link_registration:
            return _error(403, "forbidden", "The app lacks the video-calls scope")
        body = await request.json()
        with state.lock:
            state.links[str(body.get("user_provider_id"))] = body
        data: dict[str, Any] = {"message": "The user was added successfully"}
        if state.redirect_url:
            data["redirectUrl"] = state.redirect_url
        return JSONResponse({"success": True, "data": data})

    async def remove_link(request: Request) -> Response:
        if not bearer_ok(request):
            return _error(401, "unauthorized", "Unauthorized")
        link_id = request.path_params["link_id"]
        with state.lock:
            state.removed_links.append(link_id)
            found = state.links.pop(link_id, None)
        if found is None:
            return _error(404, "not_found", "Link not found")
        return JSONResponse({"success": True, "data": {"message": "The user was removed successfully"}})

    return Starlette(
        routes=[
            Route("/oauth/authorize", authorize, methods=["GET"]),
            Route("/oauth/token", token, methods=["POST"]),
            Route("/oauth/revoke", revoke, methods=["POST"]),
            Route("/api/v1/users/me", me, methods=["GET"]),
            Route(LINKS_PATH, add_link, methods=["POST"]),
            Route(LINKS_PATH + "/{link_id}", remove_link, methods=["DELETE"]),
        ]
    )


@contextmanager
def running_fake_pipedrive(
    state: FakePipedriveState, host: str = "127.0.0.1", port: int = 0
) -> Iterator[FakePipedriveState]:
    """Serve the fake on a real loopback socket in a background thread; ``state.api_domain`` is its URL."""

    def build(url: str) -> Starlette:
        state.api_domain = url
        return create_fake_pipedrive(state)

    with serve_on_loopback(build, host=host, port=port):
        yield state
