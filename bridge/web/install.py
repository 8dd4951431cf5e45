"""The install flow: Pipedrive OAuth in, user-provider link registered; and uninstall.

    GET    /oauth/install   start an install from the bridge (Developer Hub's Installation URL)
    GET    /oauth/login     sign in to the settings page
    GET    /oauth/callback  Pipedrive's redirect with ?code= (or ?error=)
    DELETE /oauth/callback  Pipedrive's uninstall notice

A Marketplace install starts at Pipedrive and arrives with no state of ours;
one started here carries a signed, expiring state bound to a cookie, and then
the callback requires it. Nothing is stored until Pipedrive has accepted the
link; a failure shows the user a plain page saying what failed and what to do.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bridge.api.auth import check_basic_auth
from bridge.errors import BadRequest
from bridge.pipedrive.client import PipedriveError, PipedriveUser, TokenSet
from bridge.pipedrive.tokens import dump_tokens
from bridge.runtime import Bridge, bridge_of
from bridge.storage.links import Link, new_link
from bridge.storage.schema import LINK_UNINSTALLED
from bridge.web.pages import browser_page, page
from bridge.web.sessions import STATE_COOKIE, STATE_SECONDS, check_state, new_state, set_cookie, start_session

log = logging.getLogger(__name__)

INSTALL = "/oauth/install"
LOGIN = "/oauth/login"
CALLBACK = "/oauth/callback"


# an OAuth authorization code is 1*VSCHAR (RFC 6749, appendix A.11): printable ASCII; bounded in length too
_CODE = re.compile(r"[\x20-\x7e]{1,2048}")


def redirect_uri(bridge: Bridge) -> str:
    return bridge.config.server.public_url + CALLBACK


def _start(request: Request, purpose: str) -> Response:
    bridge = bridge_of(request)
    state, nonce = new_state(bridge, purpose)
    response = RedirectResponse(bridge.pipedrive.authorize_url(redirect_uri(bridge), state), status_code=302)
    set_cookie(response, bridge, STATE_COOKIE, nonce, STATE_SECONDS)
    return response


async def install_start(request: Request) -> Response:
    return _start(request, "install")


async def login_start(request: Request) -> Response:
    return _start(request, "login")


async def callback(request: Request) -> Response:
    response = await _callback(request)
    if STATE_COOKIE in request.cookies:
        # a state works once: a stale cookie would make a later Marketplace install (no state) fail
        response.delete_cookie(STATE_COOKIE, path="/")
    return response


async def _callback(request: Request) -> Response:
    bridge = bridge_of(request)
    params = request.query_params
    purpose = "install"
    stateful = params.get("state") is not None or STATE_COOKIE in request.cookies
    if stateful:
        checked = check_state(request, bridge, params.get("state"))
        if checked is None:
            return page(
                request,
                "This link has expired",
                "The sign-in or install link is invalid, expired, or was opened in another browser.",
                hint="Start again from Pipedrive.",
                status=400,
            )
        purpose = checked
    if params.get("error"):
        return page(
            request,
            "Nothing was installed",
            "You declined access in Pipedrive, so the video calling app was not connected.",
            hint="Install the app again from Pipedrive's Marketplace and allow access when asked.",
            status=400,
        )
    code = params.get("code", "")
    if not _CODE.fullmatch(code):  # nothing Pipedrive could have issued: not worth a call to its token endpoint
        return page(
            request,
            "Nothing was installed",
            "Pipedrive's answer carried no authorization code.",
            hint="Start the installation again from Pipedrive.",
            status=400,
        )
    try:
        tokens = await bridge.pipedrive.exchange_code(code, redirect_uri(bridge))
        user = await bridge.pipedrive.me(tokens)
    except PipedriveError as exc:
        log.warning("install failed", extra={"step": exc.step, "error": exc.message})
        return page(
            request,
            "Pipedrive did not complete the sign-in",
            f"The bridge could not {exc.step}: {exc.message}.",
            hint="Authorization codes are valid for 5 minutes: start again from "
            "Pipedrive. If it keeps failing, tell your administrator the reference below.",
            status=502,
        )
    if purpose == "login":
        return await _login(request, bridge, tokens, user)
    # only an install this browser started here (its state checked) signs it in: a Marketplace install
    # arrives without one, and a session from it could be a stranger's, planted with their own code
    return await _install(request, bridge, tokens, user, sign_in=stateful)


async def _login(request: Request, bridge: Bridge, tokens: TokenSet, user: PipedriveUser) -> Response:
    link = await bridge.store.find_active_link(user.company_id, user.id)
    if link is None:
        return page(
            request,
            "The app is not installed for you",
            "Your Pipedrive user has no video calling connection yet.",
            hint="Install the app from Pipedrive's Marketplace first.",
            status=403,
        )
    # a sign-in renews the tokens and keeps the user's other sessions (another browser, say)
    saved = await bridge.store.save_install(_link_row(link.id, user, tokens), dump_tokens(tokens), end_sessions=False)
    response = RedirectResponse("/settings", status_code=303)
    start_session(response, bridge, saved)
    return response


async def _install(
    request: Request, bridge: Bridge, tokens: TokenSet, user: PipedriveUser, *, sign_in: bool
) -> Response:
    # the user's link, active or needing re-install (a re-install repairs it); an uninstalled one is history
    existing = await bridge.store.find_link(user.company_id, user.id)
    if existing is not None and existing.status == LINK_UNINSTALLED:
        existing = None
    link_id = existing.id if existing else str(uuid.uuid4())
    try:
        pipedrive_redirect = await bridge.pipedrive.register_link(tokens, link_id, user)
    except PipedriveError as exc:
        log.warning("install failed", extra={"step": exc.step, "error": exc.message, "status": exc.status})
        return page(
            request,
            "The video calling app could not be connected",
            f"The bridge could not {exc.step}: {exc.message}.",
            hint="Check that the app has the video-calls scope in Pipedrive's Developer Hub, then install it again.",
            status=502,
        )
    try:
        saved = await bridge.store.save_install(_link_row(link_id, user, tokens), dump_tokens(tokens))
    except Exception:
        log.exception("install could not be stored", extra={"link_id": link_id})
        if existing is None:
            try:
                await bridge.pipedrive.unregister_link(tokens, link_id)
            except PipedriveError as exc:
                log.warning("could not withdraw the link", extra={"link_id": link_id, "error": exc.message})
        return page(
            request,
            "The video calling app could not be connected",
            "The bridge could not save the connection, so nothing was installed.",
            hint="Try installing again in a minute.",
            status=503,
        )
    log.info("installed", extra={"link_id": link_id, "reinstall": existing is not None})
    response = RedirectResponse(_safe_redirect(pipedrive_redirect, tokens.api_domain), status_code=302)
    if sign_in:
        start_session(response, bridge, saved)
    return response


def _link_row(link_id: str, user: PipedriveUser, tokens: TokenSet) -> Link:
    return new_link(
        link_id=link_id,
        pipedrive_user_id=user.id,
        company_id=user.company_id,
        user_name=user.name[:255],
        user_email=user.email[:320],
        api_domain=tokens.api_domain,
    )


def _safe_redirect(url: str | None, api_domain: str) -> str:
    """Pipedrive's redirectUrl if it points at Pipedrive (or the api_domain); else the company's Pipedrive."""
    if url:
        host = urlsplit(url).hostname or ""
        if host == urlsplit(api_domain).hostname or host == "pipedrive.com" or host.endswith(".pipedrive.com"):
            return url
    return api_domain


async def uninstall(request: Request) -> Response:
    """Pipedrive's notice that a user uninstalled: withdraw the link, revoke, erase. Idempotent."""
    bridge = bridge_of(request)
    check_basic_auth(
        request.headers.get("authorization"), bridge.config.pipedrive.client_id, bridge.config.pipedrive.client_secret
    )
    body = _uninstall_body(await request.body())
    if body["client_id"] != bridge.config.pipedrive.client_id:
        raise BadRequest("client_id is not this app's client id")
    link = await bridge.store.find_link(body["company_id"], body["user_id"])
    if link is None or link.status == LINK_UNINSTALLED:
        return JSONResponse({"success": True})
    tokens = await bridge.tokens.tokens(link.id)
    if tokens is not None:
        try:
            fresh = await bridge.tokens.fresh_tokens(link.id)
            await bridge.pipedrive.unregister_link(fresh, link.id)
            tokens = fresh
        except Exception as exc:  # the local clean-up goes on whatever Pipedrive says
            log.warning(
                "could not remove the provider link",
                extra={"link_id": link.id, "error": getattr(exc, "message", str(exc))},
            )
        try:
            await bridge.pipedrive.revoke(tokens.refresh_token)
        except PipedriveError as exc:
            log.warning("could not revoke the refresh token", extra={"link_id": link.id, "error": exc.message})
    erased = await bridge.store.uninstall_link(link.id)
    log.info("uninstalled", extra={"link_id": link.id, "secrets_erased": erased})
    return JSONResponse({"success": True})


def _uninstall_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with client_id, company_id, user_id")
    if not isinstance(body.get("client_id"), str):
        raise BadRequest("client_id is required")
    for key in ("company_id", "user_id"):
        body[key] = _pipedrive_id(body.get(key), key)
    return body


MAX_ID = 2**63 - 1  # the largest value the BIGINT id columns hold
_DIGITS = re.compile(r"[0-9]{1,19}")


def _pipedrive_id(value: Any, key: str) -> int:
    """A Pipedrive id as a number or a string of ASCII digits, from 1 to ``MAX_ID``; anything else is a 400.

    Bounded before it is converted: ``int()`` would read other scripts' digits
    (``"١٢"`` as 12) and spend time on a digit string of any length.
    """
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{key} must be a number")
    if not 0 < value <= MAX_ID:
        raise BadRequest(f"{key} must be a number from 1 to {MAX_ID}")
    return value


routes = [
    Route(INSTALL, browser_page(install_start), methods=["GET"]),
    Route(LOGIN, browser_page(login_start), methods=["GET"]),
    Route(CALLBACK, browser_page(callback), methods=["GET"]),
    Route(CALLBACK, uninstall, methods=["DELETE"]),
]
