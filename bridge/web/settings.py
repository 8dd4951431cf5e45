"""The settings page: a signed-in Pipedrive user chooses a video backend and connects an account.

    GET  /settings                             the page (no session: sign in at Pipedrive first)
    POST /settings                             save the chosen backend (CSRF)
    GET  /settings/connect/{backend}           start the backend's per-user connect flow
    GET  /settings/connect/{backend}/callback  the vendor sends the browser back here
    POST /settings/logout                      end the session (CSRF)

The session cookie names the user's link and no URL does, so a user only ever
sees and changes their own. Every refusal is a plain page with a 4xx status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from bridge.api.meetings import MeetingService
from bridge.api.vendor_calls import backend_context, call_backend
from bridge.errors import BridgeError
from bridge.runtime import Bridge, bridge_of
from bridge.storage.links import Link
from bridge.vendors.interface import Backend
from bridge.web.install import LOGIN
from bridge.web.pages import Refuse, browser_page, page, sentence, templates
from bridge.web.sessions import (
    Session,
    connect_state,
    connect_state_ok,
    csrf_ok,
    csrf_token,
    end_session,
    is_users_link,
    read_session,
)

log = logging.getLogger(__name__)

SETTINGS = "/settings"
CONNECT = SETTINGS + "/connect/{backend}"
CONNECT_CALLBACK = CONNECT + "/callback"
LOGOUT = SETTINGS + "/logout"


@dataclass(frozen=True)
class BackendChoice:
    """One allowed backend as the page lists it."""

    name: str
    title: str
    available: bool
    needs_user_account: bool = False
    connected: bool = True

    @property
    def connect_path(self) -> str:
        return CONNECT.format(backend=self.name)


# --- who is asking ----------------------------------------------------------------------


def _session(request: Request, bridge: Bridge, *, form: bool = False) -> Session:
    """The signed-in session; without one a page view goes to sign-in and a form post is refused."""
    session = read_session(request, bridge)
    if session is None:
        raise Refuse(_not_signed_in(request, form=form))
    return session


def _not_signed_in(request: Request, *, form: bool) -> Response:
    if form:
        return _forbidden(request, "You are not signed in, or your sign-in has expired.")
    return RedirectResponse(LOGIN, status_code=303)


def _forbidden(request: Request, message: str) -> Response:
    return page(
        request, "The form was refused", message, hint="Open the settings again and resubmit the form.", status=403
    )


async def _active_link(request: Request, bridge: Bridge, session: Session) -> Link:
    link = await bridge.store.get_link(session.link_id)
    if link is None or not is_users_link(session, link):
        raise Refuse(
            page(
                request,
                "The app is not connected for you any more",
                "Your Pipedrive user's video calling connection was removed or needs renewing.",
                hint="Install the app again from Pipedrive's Marketplace, then open these settings again.",
                status=403,
            )
        )
    if link.session_generation != session.generation:
        # signed out, or installed again, since: this cookie proves nothing any more
        raise Refuse(_not_signed_in(request, form=request.method == "POST"))
    return link


async def _checked_form(request: Request, bridge: Bridge, session: Session) -> FormData:
    try:
        form = await request.form(max_files=0, max_fields=20)
    except HTTPException:
        raise Refuse(
            page(
                request,
                "The form was refused",
                "The form could not be read.",
                hint="Open the settings again and resubmit the form.",
                status=400,
            )
        ) from None
    token = form.get("csrf")
    if not csrf_ok(bridge, session, token if isinstance(token, str) else None):
        raise Refuse(_forbidden(request, "The form was out of date or did not come from this page."))
    return form


# --- backends ---------------------------------------------------------------------------


def _allowed_backend(request: Request, bridge: Bridge, name: object, *, status: int) -> Backend:
    backend = None
    if isinstance(name, str) and name in bridge.config.meetings.allowed_backends:
        backend = bridge.backends.available.get(name)
    if backend is None:
        raise Refuse(
            page(
                request,
                "That video service cannot be chosen",
                "It is not one of the video services your company allows, or it is not available right now.",
                hint="Go back to the settings and pick one from the list.",
                status=status,
            )
        )
    return backend


def _connectable_backend(request: Request, bridge: Bridge) -> Backend:
    backend = _allowed_backend(request, bridge, request.path_params["backend"], status=404)
    if not backend.needs_user_account:
        raise Refuse(
            page(
                request,
                "Nothing to connect",
                f"{backend.title} needs no account of your own.",
                hint="Go back to the settings.",
                status=404,
            )
        )
    return backend


async def _is_connected(bridge: Bridge, link: Link, backend: Backend) -> bool:
    ctx = backend_context(bridge, link, backend.name)
    try:
        return await call_backend(bridge, backend, "check your account", lambda: backend.is_connected(ctx))
    except BridgeError as exc:
        log.warning("could not check the account", extra={"backend": backend.name, "error": exc.message})
        return False


async def _choices(bridge: Bridge, link: Link) -> list[BackendChoice]:
    choices = []
    for name in bridge.config.meetings.allowed_backends:
        backend = bridge.backends.available.get(name)
        if backend is None:
            title = getattr(bridge.registry.backends.get(name), "title", name)
            choices.append(BackendChoice(name, title, available=False))
        elif backend.needs_user_account:
            choices.append(
                BackendChoice(
                    name,
                    backend.title,
                    available=True,
                    needs_user_account=True,
                    connected=await _is_connected(bridge, link, backend),
                )
            )
        else:
            choices.append(BackendChoice(name, backend.title, available=True))
    return choices


def _callback_url(bridge: Bridge, backend: Backend) -> str:
    return bridge.config.server.public_url + CONNECT_CALLBACK.format(backend=backend.name)


def _not_connected(request: Request, backend: Backend, message: str, *, status: int) -> Response:
    return page(
        request,
        f"Your {backend.title} account is not connected",
        sentence(message),
        hint="Go back to the settings and connect it again.",
        status=status,
    )


# --- the routes -------------------------------------------------------------------------


@browser_page
async def show(request: Request) -> Response:
    bridge = bridge_of(request)
    session = _session(request, bridge)
    link = await _active_link(request, bridge, session)
    choices = await _choices(bridge, link)
    by_name = {choice.name: choice for choice in choices}
    selected = by_name.get(MeetingService(bridge).backend_for(link))
    notice = None
    if request.query_params.get("saved") and selected is not None:
        notice = f"Saved. New meetings will use {selected.title}."
    connected = by_name.get(request.query_params.get("connected", ""))
    if connected is not None and connected.needs_user_account and connected.connected:
        notice = f"Your {connected.title} account is connected."
    return templates.TemplateResponse(
        request,
        "settings.html",
        {
            "link": link,
            "choices": choices,
            "selected": selected,
            "notice": notice,
            "default_backend": bridge.config.meetings.default_backend,
            "csrf": csrf_token(bridge, session),
        },
    )


@browser_page
async def save(request: Request) -> Response:
    bridge = bridge_of(request)
    session = _session(request, bridge, form=True)
    form = await _checked_form(request, bridge, session)
    link = await _active_link(request, bridge, session)
    backend = _allowed_backend(request, bridge, form.get("backend"), status=400)
    await bridge.store.set_link_backend(link.id, backend.name)
    log.info("backend chosen", extra={"link_id": link.id, "backend": backend.name})
    return RedirectResponse(SETTINGS + "?saved=1", status_code=303)


@browser_page
async def connect_start(request: Request) -> Response:
    bridge = bridge_of(request)
    session = _session(request, bridge)
    link = await _active_link(request, bridge, session)
    backend = _connectable_backend(request, bridge)
    ctx = backend_context(bridge, link, backend.name)
    state = connect_state(bridge, session, backend.name)
    try:
        url = await call_backend(
            bridge,
            backend,
            "start connecting your account",
            lambda: backend.connect_url(ctx, _callback_url(bridge, backend), state),
        )
    except BridgeError as exc:
        return _not_connected(request, backend, exc.message, status=exc.status)
    if not isinstance(url, str) or urlsplit(url).scheme not in ("https", "http") or not urlsplit(url).netloc:
        log.error("connect_url is not a web address", extra={"backend": backend.name})
        return _not_connected(request, backend, f"{backend.title} gave no address to connect your account.", status=502)
    return RedirectResponse(url, status_code=303)


@browser_page
async def connect_callback(request: Request) -> Response:
    bridge = bridge_of(request)
    session = _session(request, bridge)
    link = await _active_link(request, bridge, session)
    backend = _connectable_backend(request, bridge)
    params = request.query_params
    if not connect_state_ok(bridge, session, backend.name, params.get("state")):
        return page(
            request,
            "This link has expired",
            "The connect link is invalid, expired, or belongs to another sign-in.",
            hint="Go back to the settings and connect again.",
            status=400,
        )
    if params.get("error"):
        return _not_connected(request, backend, f"{backend.title} did not grant access.", status=400)
    ctx = backend_context(bridge, link, backend.name)
    try:
        await call_backend(
            bridge,
            backend,
            "connect your account",
            lambda: backend.connect_finish(ctx, dict(params), _callback_url(bridge, backend)),
        )
    except BridgeError as exc:
        return _not_connected(request, backend, exc.message, status=exc.status)
    log.info("account connected", extra={"link_id": link.id, "backend": backend.name})
    return RedirectResponse(f"{SETTINGS}?connected={backend.name}", status_code=303)


@browser_page
async def logout(request: Request) -> Response:
    bridge = bridge_of(request)
    session = read_session(request, bridge)
    if session is not None:
        await _checked_form(request, bridge, session)
        await bridge.store.end_sessions(session.link_id)  # every copy of the cookie, on every replica
    response = page(
        request,
        "You are signed out",
        "You signed out of the video calling settings.",
        hint="Open the settings again to sign in with Pipedrive.",
    )
    end_session(response)
    return response


routes = [
    Route(SETTINGS, show, methods=["GET"]),
    Route(SETTINGS, save, methods=["POST"]),
    Route(CONNECT, connect_start, methods=["GET"]),
    Route(CONNECT_CALLBACK, connect_callback, methods=["GET"]),
    Route(LOGOUT, logout, methods=["POST"]),
]
