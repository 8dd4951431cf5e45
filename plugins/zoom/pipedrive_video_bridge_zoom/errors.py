"""Zoom's error answers (``{"code": ..., "message": ...}``) turned into the bridge's errors.

The codes are Zoom's documented ones: 124 invalid or expired access token (HTTP
401), 1001 user does not exist (404), 1010 user not in this account, 3001
meeting does not exist (404), 3161 the user may not host or schedule meetings,
4700/4711 the token lacks a scope (400), and 429 for rate limits. The per-user
daily limit on meeting creates and updates answers 429 until 00:00 UTC, with
``X-RateLimit-Type: Daily-limit`` or only a message saying "daily rate limit".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bridge.plugin import BackendError, BackendUnavailable, raise_for_vendor

TITLE = "Zoom"
INVALID_TOKEN = 124
USER_MISSING = frozenset({1001, 1010})
MEETING_MISSING = 3001
MAY_NOT_HOST = 3161
MISSING_SCOPE = frozenset({4700, 4711})
DAILY_LIMIT_PER_USER = 100


@dataclass(frozen=True)
class ZoomError:
    status: int
    code: int | None
    message: str


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when it is not one."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def zoom_error(response: httpx.Response) -> ZoomError:
    """Zoom's code and message, or None and "" when the body is not Zoom's error shape."""
    body = json_object(response)
    code = body.get("code")
    message = body.get("message")
    return ZoomError(
        response.status_code,
        code if isinstance(code, int) else None,
        message.strip()[:300] if isinstance(message, str) else "",
    )


def is_invalid_token(response: httpx.Response) -> bool:
    return response.status_code == 401 and zoom_error(response).code == INVALID_TOKEN


def is_missing_user(response: httpx.Response) -> bool:
    return response.status_code in (400, 404) and zoom_error(response).code in USER_MISSING


def is_missing_meeting(response: httpx.Response) -> bool:
    return 400 <= response.status_code < 500 and zoom_error(response).code == MEETING_MISSING


def is_missing_scope(response: httpx.Response) -> bool:
    return 400 <= response.status_code < 500 and zoom_error(response).code in MISSING_SCOPE


def is_daily_limit(response: httpx.Response) -> bool:
    if response.status_code != 429:
        return False
    if response.headers.get("x-ratelimit-type", "").lower() == "daily-limit":
        return True
    return "daily" in zoom_error(response).message.lower()


def worth_retrying(response: httpx.Response) -> bool:
    """The core's retry predicate (``RETRY_EXTENSION``): a daily limit stays until midnight, so don't."""
    return not is_daily_limit(response)


def daily_limit_reset(response: httpx.Response, now: datetime | None = None) -> datetime:
    """When the limit lifts: Zoom's ``Retry-After`` (an ISO date there) if readable, else the next 00:00 UTC."""
    value = response.headers.get("retry-after", "").strip()
    try:
        reset = datetime.fromisoformat(value)
    except ValueError:
        reset = None
    if reset is not None and reset.tzinfo is not None:
        return reset.astimezone(UTC)
    now = now or datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


def daily_limit_error(response: httpx.Response, now: datetime | None = None) -> BackendUnavailable:
    now = now or datetime.now(UTC)
    reset = daily_limit_reset(response, now)
    return BackendUnavailable(
        f"Zoom's daily limit for this Zoom user is reached (Zoom allows {DAILY_LIMIT_PER_USER} meeting "
        f"creates and updates per user per day); it resets at {reset:%H:%M} UTC, {_in_about(reset - now)}. "
        "Please try again after that"
    )


def _in_about(wait: timedelta) -> str:
    minutes = max(1, round(wait.total_seconds() / 60))
    if minutes < 120:
        return f"in about {minutes} minute{'s' if minutes != 1 else ''}"
    return f"in about {round(minutes / 60)} hours"


def raise_for_zoom(response: httpx.Response, action: str, *, host: str = "") -> None:
    """Raise the bridge's error for a Zoom answer that is not a success; ``action`` completes "failed to ..."."""
    if response.is_success:
        return
    if is_daily_limit(response):
        raise daily_limit_error(response)
    raise_for_vendor(response, TITLE)  # other 429s (after the core's retries) and 5xx
    error = zoom_error(response)
    who = f"the Zoom user {host}" if host and host != "me" else "your Zoom user"
    if is_invalid_token(response):
        raise BackendError(
            f"Zoom did not accept the bridge's access token (code {INVALID_TOKEN}) even after "
            "getting a new one; check that the Zoom app is activated and try again"
        )
    if is_missing_scope(response):
        raise BackendError(
            f"the Zoom app lacks a scope it needs to {action} ({error.message}); add it to the "
            "app in the Zoom App Marketplace"
        )
    if error.code == MAY_NOT_HOST:
        raise BackendError(
            f"Zoom does not let {who} host or schedule meetings (the user is deactivated or has "
            "no license that allows it); ask your Zoom admin to activate or license the user"
        )
    if error.code in USER_MISSING:
        raise BackendError(
            f"{who} does not exist in your company's Zoom account; ask your Zoom admin to add or activate the user"
        )
    detail = f"{error.message} (" if error.message else "("
    code = f"code {error.code}, " if error.code is not None else ""
    raise BackendError(f"Zoom refused to {action}: {detail}{code}HTTP {response.status_code})")
