"""The body of postMeeting and patchUpdateMeeting, checked field by field.

Pipedrive sends ``{"topic": str, "start_time": "YYYY-MM-DD HH:mm" (UTC), "duration": number}``.
Each problem is answered as a 400 that names the field and says why.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from bridge.errors import BadRequest
from bridge.vendors.interface import MeetingRequest

MAX_TOPIC_LENGTH = 1000
MAX_DURATION_MINUTES = 31 * 24 * 60
# also the OpenAPI schema's (bridge.api.openapi): months, days, hours and minutes in their ranges, so that
# requests generated from the document are mostly valid; a day past its month's end is still refused below
START_TIME_PATTERN = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01]) ([01][0-9]|2[0-3]):[0-5][0-9]"
_START_TIME = re.compile(START_TIME_PATTERN)


def parse_meeting(body: Any) -> MeetingRequest:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with topic, start_time and duration")
    return MeetingRequest(topic=_topic(body), start_time=_start_time(body), duration=_duration(body))


def _topic(body: dict[str, Any]) -> str:
    if "topic" not in body:
        raise BadRequest("topic is required")
    topic = body["topic"]
    if not isinstance(topic, str):
        raise BadRequest(f"topic must be a string, got {_json_type(topic)}")
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
