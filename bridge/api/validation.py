"""The body of postMeeting and patchUpdateMeeting, checked field by field.

Pipedrive sends ``{"topic": str, "start_time": "YYYY-MM-DD HH:mm" (UTC), "duration": number}``.
Each problem is answered as a 400 that names the field and says why.

Everything is decided here, before anything encodes, hashes, stores or adds to a
value, so no backend and no later step of the core meets a value it cannot handle:

- a topic holding a lone UTF-16 surrogate (``"\\ud800"`` is valid JSON, but no
  Unicode text) is refused, not repaired: Pipedrive never sends one, so it can only
  be a broken or hostile client, and replacing it would store a topic nobody typed;
- a meeting must end by the last minute of year 9999 (Python's and ISO 8601's
  last year), so ``start_time + duration`` can always be computed and written.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from bridge.errors import BadRequest
from bridge.vendors.interface import MeetingRequest

MAX_TOPIC_LENGTH = 1000
MAX_DURATION_MINUTES = 31 * 24 * 60
# also the OpenAPI schema's (bridge.api.openapi): months, days, hours and minutes in their ranges, so that
# requests generated from the document are mostly valid; a day past its month's end is still refused below
START_TIME_PATTERN = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01]) ([01][0-9]|2[0-3]):[0-5][0-9]"
_START_TIME = re.compile(START_TIME_PATTERN)
LATEST_END = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_meeting(body: Any) -> MeetingRequest:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with topic, start_time and duration")
    topic, start_time, duration = _topic(body), _start_time(body), _duration(body)
    if LATEST_END - start_time < timedelta(minutes=duration):
        raise BadRequest("start_time plus duration must end by 9999-12-31 23:59 UTC")
    return MeetingRequest(topic=topic, start_time=start_time, duration=duration)


def _topic(body: dict[str, Any]) -> str:
    if "topic" not in body:
        raise BadRequest("topic is required")
    topic = body["topic"]
    if not isinstance(topic, str):
        raise BadRequest(f"topic must be a string, got {_json_type(topic)}")
    if _LONE_SURROGATE.search(topic):
        raise BadRequest("topic must be valid Unicode text (it holds a lone surrogate)")
    topic = " ".join(topic.split())
    if not topic:
        raise BadRequest("topic must not be empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise BadRequest(f"topic must be at most {MAX_TOPIC_LENGTH} characters")
    return topic


def _start_time(body: dict[str, Any]) -> datetime:
    if "start_time" not in body:
        raise BadRequest("start_time is required")
    value = body["start_time"]
    if not isinstance(value, str) or not _START_TIME.fullmatch(value):
        raise BadRequest(f"start_time must be a UTC time formatted 'YYYY-MM-DD HH:mm', got {value!r}"[:200])
    try:
        return datetime.strptime(value, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    except ValueError:
        raise BadRequest(f"start_time {value!r} is not a real date and time") from None


def _duration(body: dict[str, Any]) -> int:
    if "duration" not in body:
        raise BadRequest("duration is required")
    value = body["duration"]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"duration must be a number of minutes, got {_json_type(value)}")
    if (isinstance(value, float) and not math.isfinite(value)) or value <= 0:
        raise BadRequest("duration must be a positive number of minutes")
    if value > MAX_DURATION_MINUTES:
        raise BadRequest(f"duration must be at most {MAX_DURATION_MINUTES} minutes (31 days)")
    return math.ceil(value)


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)
