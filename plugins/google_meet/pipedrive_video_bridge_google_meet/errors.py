"""Google's error answers turned into the bridge's errors.

Calendar API errors are ``{"error": {"code", "message", "errors": [{"domain", "reason",
"message"}], "status", "details": [...]}}``; the reasons used here are Google's documented
ones: ``rateLimitExceeded`` and ``userRateLimitExceeded`` (403, short-lived), ``429``
(too many requests), ``dailyLimitExceeded`` (the project's daily quota) and
``quotaExceeded`` ("Calendar usage limits exceeded": a per-user limit that lasts
hours), ``accessNotConfigured`` with the ``SERVICE_DISABLED`` ErrorInfo (the Calendar
API is not enabled in the Cloud project), ``duplicate`` (409, an event id already
used), ``notFound`` (404) and ``deleted`` (410).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.plugin import BackendError, BackendUnavailable, raise_for_vendor

TITLE = "Google Calendar"
RATE_LIMITS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
DAILY_LIMIT = "dailyLimitExceeded"
USAGE_LIMIT = "quotaExceeded"
API_DISABLED = frozenset({"accessNotConfigured", "SERVICE_DISABLED"})
_PROJECT = re.compile(r"projects/(\d+)|project (\d+)")


@dataclass(frozen=True)
class GoogleError:
    status: int
    reasons: frozenset[str]
    message: str
    project: str = ""
    """The Cloud project number Google names (for a disabled API), or ""."""


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when it is not one."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def google_error(response: httpx.Response) -> GoogleError:
    """The reasons (``errors[].reason`` and ``details[].reason``) and message of a Google error answer."""
    error = json_object(response).get("error")
    if not isinstance(error, dict):
        return GoogleError(response.status_code, frozenset(), "")
    reasons: set[str] = set()
    consumer = ""
    for entry in (*_dicts(error.get("errors")), *_dicts(error.get("details"))):
        if isinstance(entry.get("reason"), str):
            reasons.add(entry["reason"])
        metadata = entry.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("consumer"), str):
            consumer = metadata["consumer"]
    message = error.get("message")
    message = message.strip()[:300] if isinstance(message, str) else ""
    found = _PROJECT.search(consumer) or _PROJECT.search(message)
    project = next((group for group in found.groups() if group), "") if found else ""
    return GoogleError(response.status_code, frozenset(reasons), message, project)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def is_gone(response: httpx.Response) -> bool:
    """404 (no such event) or 410 (deleted)."""
    return response.status_code in (404, 410)


def is_duplicate(response: httpx.Response) -> bool:
    """409: an event with this id exists on the calendar already (deleted ones too)."""
    return response.status_code == 409


def is_rate_limited(response: httpx.Response) -> bool:
    """Google's short-lived limits answered as 403 (``THROTTLED_EXTENSION``): the core retries them as 429s."""
    return response.status_code == 403 and bool(google_error(response).reasons & RATE_LIMITS)


def worth_retrying(response: httpx.Response) -> bool:
    """The core's retry predicate (``RETRY_EXTENSION``): a daily or usage limit lasts for hours, so don't."""
    return not google_error(response).reasons & {DAILY_LIMIT, USAGE_LIMIT}


def raise_for_google(response: httpx.Response, action: str, *, who: str = "") -> None:
    """Raise the bridge's error for a Calendar API answer that is not a success; ``action`` completes "to ..."."""
    if response.is_success:
        return
    error = google_error(response)
    whose = f"the Google user {who}" if who else "your Google account"
    if DAILY_LIMIT in error.reasons:
        raise BackendUnavailable(
            "the Google Cloud project's daily Google Calendar API quota is used up; it resets at midnight "
            "Pacific time. Ask your admin to request a higher quota in the Google Cloud console"
        )
    if USAGE_LIMIT in error.reasons:
        raise BackendUnavailable(
            f"Google Calendar's usage limits for {whose} are reached (too many events in a short time); "
            "Google lifts them after a few hours. Please try again later"
        )
    if error.reasons & RATE_LIMITS:
        raise BackendUnavailable("Google Calendar is limiting requests right now; please try again in a minute")
    raise_for_vendor(response, TITLE)  # 429s the core's retries did not get past, and 5xx
    if error.reasons & API_DISABLED:
        project = f" {error.project}" if error.project else ""
        raise BackendError(
            f"the Google Calendar API is not enabled in the Google Cloud project{project}; enable it "
            "(Google Cloud console > APIs & Services > Library > Google Calendar API > Enable), wait a few "
            "minutes and try again"
        )
    if response.status_code == 401:
        raise BackendError(
            "Google did not accept the bridge's access token even after getting a new one; please try again"
        )
    if response.status_code == 403:
        raise BackendError(
            f"Google Calendar does not let {whose} {action} ({error.message or 'forbidden'}); check that "
            "the user has Google Calendar and Google Meet in your Google Workspace"
        )
    detail = f"{error.message} (" if error.message else "("
    reasons = f"{', '.join(sorted(error.reasons))}, " if error.reasons else ""
    raise BackendError(f"Google Calendar refused to {action}: {detail}{reasons}HTTP {response.status_code})")
