"""The signed-in Pipedrive user's browser session, and CSRF tokens for its forms.

The session is a signed cookie that any replica can read: ``HttpOnly``,
``SameSite=Lax``, ``Secure`` when the public URL is https. It is started only by
a sign-in the bridge began (a ``state`` bound to this browser), never by a
stateless install callback, so nobody can plant their session in someone
else's browser. It carries its link's session generation: signing out,
uninstalling or installing again raises the generation in the database, which
ends every session of that link on every replica, whatever cookies are left.
A form's CSRF token, and the ``state`` of a vendor's connect flow, are signed
for the session's random id, so they are useless with any other session.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from bridge.runtime import Bridge
from bridge.storage.links import Link
from bridge.storage.schema import LINK_ACTIVE

SESSION_COOKIE = "pvb_session"
STATE_COOKIE = "pvb_oauth_state"
SESSION_SECONDS = 8 * 3600
STATE_SECONDS = 10 * 60


@dataclass(frozen=True)
class Session:
    link_id: str
    user_id: int
    company_id: int
    sid: str
    generation: int


def _secure(bridge: Bridge) -> bool:
    return bridge.config.server.public_url.startswith("https://")


def set_cookie(response: Response, bridge: Bridge, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax", secure=_secure(bridge), path="/")


def start_session(response: Response, bridge: Bridge, link: Link) -> None:
    """Sign the link's user in; only after a sign-in this browser started (its ``state`` checked)."""
    payload = {
        "link": link.id,
        "uid": link.pipedrive_user_id,
        "cid": link.company_id,
        "sid": secrets.token_urlsafe(16),
        "gen": link.session_generation,
    }
    token = bridge.signer.sign("session", payload, SESSION_SECONDS)
    set_cookie(response, bridge, SESSION_COOKIE, token, SESSION_SECONDS)


def end_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


def read_session(request: Request, bridge: Bridge) -> Session | None:
    payload = bridge.signer.verify("session", request.cookies.get(SESSION_COOKIE))
    if payload is None:
        return None
    try:
        return Session(
            link_id=str(payload["link"]),
            user_id=int(payload["uid"]),
            company_id=int(payload["cid"]),
            sid=str(payload["sid"]),
            generation=int(payload["gen"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def is_users_link(session: Session, link: Link) -> bool:
    """Whether the session was started by this link's user (and the link is still live)."""
    return (
        link.id == session.link_id
        and link.status == LINK_ACTIVE
        and link.pipedrive_user_id == session.user_id
        and link.company_id == session.company_id
    )


def signed_in_as(request: Request, bridge: Bridge, link: Link) -> bool:
    """Whether this browser is signed in as the link's user, in a session not ended since (its generation)."""
    session = read_session(request, bridge)
    return session is not None and is_users_link(session, link) and link.session_generation == session.generation


def csrf_token(bridge: Bridge, session: Session) -> str:
    return bridge.signer.sign("csrf", {"sid": session.sid}, SESSION_SECONDS)


def csrf_ok(bridge: Bridge, session: Session, token: str | None) -> bool:
    return _for_session(bridge.signer.verify("csrf", token), session)


def connect_state(bridge: Bridge, session: Session, backend: str) -> str:
    """The ``state`` a vendor's connect flow carries: good only for this session and backend."""
    return bridge.signer.sign("connect", {"sid": session.sid, "backend": backend}, STATE_SECONDS)


def connect_state_ok(bridge: Bridge, session: Session, backend: str, state: str | None) -> bool:
    payload = bridge.signer.verify("connect", state)
    return _for_session(payload, session) and payload is not None and payload.get("backend") == backend


def _for_session(payload: dict[str, Any] | None, session: Session) -> bool:
    return payload is not None and hmac.compare_digest(str(payload.get("sid", "")).encode(), session.sid.encode())


def new_state(bridge: Bridge, purpose: str) -> tuple[str, str]:
    """(state for the authorize URL, value for the state cookie): both carry the same nonce."""
    nonce = secrets.token_urlsafe(24)
    state = bridge.signer.sign("state", {"purpose": purpose, "nonce": nonce}, STATE_SECONDS)
    return state, nonce


def check_state(request: Request, bridge: Bridge, state: str | None) -> str | None:
    """The purpose of a valid state bound to this browser's cookie; None if invalid."""
    payload = bridge.signer.verify("state", state)
    cookie = request.cookies.get(STATE_COOKIE, "")
    if payload is None or not hmac.compare_digest(str(payload.get("nonce", "")).encode(), cookie.encode()):
        return None
    purpose = payload.get("purpose")
    return purpose if purpose in ("install", "login") else None
