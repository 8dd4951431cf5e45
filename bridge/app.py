"""The ASGI application: routes, the lifespan that builds the bridge, error rendering, and the headers.

Errors are rendered here and nowhere else: a BridgeError becomes
``{"success": false, "error": message}`` with its status; routing's 404/405 the
same; anything unexpected a logged 500 in the same shape, never a traceback.

Headers are set here and nowhere else (``Edge``), and nothing the app
answers is built from the request's ``Host``: the slash redirect is absolute on
``public_url``, the other redirects are path-only or point at Pipedrive or the
vendor, and a request naming another host is refused (also ``Edge``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Match, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.api import routes as reverse_api
from bridge.api.manifest import build_manifest
from bridge.api.meetings import JOIN_PREFIX
from bridge.api.openapi import build_openapi
from bridge.api.reconcile import run_worker
from bridge.config import Config
from bridge.errors import BridgeError, PayloadTooLarge
from bridge.logs import request_id_var
from bridge.metrics import CONTENT_TYPE
from bridge.pipedrive.tokens import run_upkeep
from bridge.runtime import bridge_of, open_bridge
from bridge.vendors.registry import PluginRegistry
from bridge.web import home, install, join
from bridge.web import settings as settings_page
from bridge.web.pages import EVERY_RESPONSE_HEADERS, PAGE_HEADERS, page

log = logging.getLogger("bridge.http")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def error_response(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Basic realm="pipedrive-video-bridge"'} if status == 401 else None
    return JSONResponse({"success": False, "error": message}, status_code=status, headers=headers)


async def _bridge_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BridgeError)
    if exc.status >= 500:
        log.warning("request failed", extra={"status": exc.status, "error": str(exc)})
    return error_response(exc.status, exc.message)


_BROWSER_PATHS = ("/settings", "/oauth/", "/j")


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing's 404 and 405."""
    assert isinstance(exc, HTTPException)
    messages = {404: "not found", 405: "method not allowed"}
    message = messages.get(exc.status_code, str(exc.detail))
    response = error_for(
        request,
        exc.status_code,
        message,
        title="This page does not exist",
        text=f"The bridge has no such page ({message}).",
        hint="Open the settings from the start.",
    )
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def error_for(request: Request, status: int, message: str, *, title: str, text: str, hint: str) -> Response:
    """A refusal made outside any route: a page on the browser's paths, Pipedrive's JSON shape everywhere else."""
    browser = request.url.path.startswith(_BROWSER_PATHS) and request.method in ("GET", "HEAD", "POST")
    if browser and request.url.path != "/oauth/callback":  # the callback's DELETE is Pipedrive's uninstall
        return page(request, title, text, hint=hint, status=status)
    return error_response(status, message)


# Probes and scrapes name whatever address they reach the process at; these answer no page and build no URL.
_ANY_HOST_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9._~-]+)(?::[0-9]{1,5})?")


def host_of(header: bytes) -> str | None:
    """The host a ``Host`` header names, lower-cased and without its port; None if it is not one."""
    match = _HOST.fullmatch(header.decode("latin-1").lower())
    return match[1] if match else None


class Edge:
    """Every HTTP request's way in and out, in one middleware.

    In: a request id (the client's ``X-Request-ID`` if it is a sane one), a body-size
    limit (``Content-Length`` and the bytes actually sent), and the ``Host`` rule: a
    request naming neither ``public_url``'s host nor loopback (a proxy on the same
    machine that does not pass the Host on) is refused with 400, except health checks
    and metrics. Out: the request id, and the one place headers for browsers are set:
    ``nosniff`` and no referrer on every answer; the pages' CSP, no framing and no
    caching on every HTML answer and every redirect (the install and settings flows),
    whichever route or error handler made it. Then the access log line, and the last
    catch for unexpected errors (a 500 in the API's shape, never a traceback).
    """

    def __init__(self, app: ASGIApp, *, public_url: str, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.hosts = frozenset([urlsplit(public_url).hostname or "", *_LOOPBACK_HOSTS])
        self.every = [(name.lower().encode(), value.encode()) for name, value in EVERY_RESPONSE_HEADERS.items()]
        self.page = self.every + [(name.lower().encode(), value.encode()) for name, value in PAGE_HEADERS.items()]
        self.every_names = frozenset(name for name, _ in self.every)
        self.page_names = frozenset(name for name, _ in self.page)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_out(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                given = message.get("headers", [])
                content_type = next((value for name, value in given if name.lower() == b"content-type"), b"")
                if content_type.startswith(b"text/html") or 300 <= status < 400:
                    added, names = self.page, self.page_names
                else:
                    added, names = self.every, self.every_names
                message["headers"] = [
                    *((n, v) for n, v in given if n.lower() not in names),
                    *added,
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            length = headers.get(b"content-length", b"")
            if length and (not length.isdigit() or int(length) > self.max_body_bytes):
                response = (
                    _too_large(self.max_body_bytes)
                    if length.isdigit()
                    else error_response(400, "invalid Content-Length")
                )
                await response(scope, receive, send_out)
            elif scope["path"] not in _ANY_HOST_PATHS and host_of(headers.get(b"host", b"")) not in self.hosts:
                refused = error_for(
                    Request(scope),
                    400,
                    "this bridge does not answer for that host name",
                    title="Wrong address",
                    text="The bridge does not answer for that host name.",
                    hint="Open the bridge at its own address.",
                )
                await refused(scope, receive, send_out)
            else:
                await self.app(scope, self._limited(receive), send_out)
        except ClientDisconnect:
            status = 499  # the client hung up before its body arrived (or was cut off): nothing to answer
            log.info("client went away before its request was read")
        except Exception:
            log.exception("unhandled error")
            if not response_started:
                await error_response(500, "internal error; the request id is in X-Request-ID")(scope, receive, send_out)
        finally:
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": logged_path(scope["path"]),
                    "status": status,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
            request_id_var.reset(token)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body_bytes

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"the body is larger than {limit} bytes")
            return message

        return limited


def logged_path(path: str) -> str:
    """The path as the access log shows it: a join link's token is a way into a meeting, so it is left out."""
    return JOIN_PREFIX + "…" if path.startswith(JOIN_PREFIX) and len(path) > len(JOIN_PREFIX) else path


def _too_large(limit: int) -> Response:
    return error_response(413, f"the body is larger than {limit} bytes")


def redirect_slashes_to(router: Router, public_url: str) -> None:
    """Starlette's slash redirect, but on ``public_url``: its own builds the ``Location`` from the ``Host``."""
    router.redirect_slashes = False
    not_found = router.default

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path != "/":
            other = {**scope, "path": path.rstrip("/") if path.endswith("/") else path + "/"}
            if any(route.matches(other)[0] != Match.NONE for route in router.routes):
                query = scope.get("query_string", b"").decode("latin-1")
                location = public_url.rstrip("/") + other["path"] + (f"?{query}" if query else "")
                await RedirectResponse(location, status_code=307)(scope, receive, send)
                return
        await not_found(scope, receive, send)

    router.default = default


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    try:
        await bridge_of(request).store.ping()
    except Exception as exc:
        log.warning("not ready", extra={"error": exc.__class__.__name__})
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ready", "database": "ok"})


async def metrics(request: Request) -> Response:
    """This process's counters, and the outbox as the database (shared by every replica) has it now."""
    bridge = bridge_of(request)
    try:
        stats = await bridge.store.outbox_stats()
    except BridgeError:
        pass  # the counters still tell; /readyz says the database is down
    else:
        bridge.metrics.labelled(bridge.metrics.outbox_jobs, "pending").set(stats.pending)
        bridge.metrics.labelled(bridge.metrics.outbox_jobs, "failed").set(stats.failed)
        oldest = stats.oldest_created_at
        bridge.metrics.outbox_oldest.set(max(0.0, time.time() - oldest) if oldest else 0.0)
    return Response(bridge.metrics.render(), media_type=CONTENT_TYPE)


async def manifest(request: Request) -> Response:
    """The manifest this deployment's config produces (what to upload to Pipedrive)."""
    return JSONResponse(build_manifest(bridge_of(request).config))


async def openapi(_request: Request) -> Response:
    """The OpenAPI document of the reverse API (the same for every deployment)."""
    return JSONResponse(build_openapi())


def create_app(
    config: Config, registry: PluginRegistry | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> Starlette:
    """The bridge as an ASGI app. ``registry`` and ``transport`` let tests choose plugins and fake vendors."""

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with open_bridge(config, registry, transport=transport) as bridge, anyio.create_task_group() as tasks:
            tasks.start_soon(run_upkeep, bridge.tokens, config.pipedrive.refresh_idle_days)
            tasks.start_soon(run_worker, bridge)
            log.info(
                "bridge ready",
                extra={
                    "backends": sorted(bridge.backends.available),
                    "default_backend": config.meetings.default_backend,
                },
            )
            yield {"bridge": bridge}
            tasks.cancel_scope.cancel()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/manifest.json", manifest, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *reverse_api.routes,
        *install.routes,
        *settings_page.routes,
        *join.routes,
        *home.routes,
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={BridgeError: _bridge_error, HTTPException: _http_error},
    )
    redirect_slashes_to(app.router, config.server.public_url)
    app.add_middleware(Edge, public_url=config.server.public_url, max_body_bytes=config.server.max_body_bytes)
    return app
