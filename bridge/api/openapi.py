"""The reverse API as an OpenAPI 3.0 document: what Pipedrive sends, and every answer it can get.

Built from the code it describes, so the two cannot drift: the paths and the id
pattern come from ``reverse_api``, the body's limits from ``validation``. The
same document is served at ``/openapi.json``, written by ``pipedrive-video-bridge
openapi`` and checked in as ``openapi.json`` (a test fails when that copy is
stale). It does not depend on the config: the paths are the same for every
deployment, and Pipedrive learns the base URL from the manifest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.api.meetings import JOIN_PATH
from bridge.api.routes import ID_PATTERN, MEETING, POST_MEETING
from bridge.api.validation import MAX_DURATION_MINUTES, MAX_TOPIC_LENGTH, START_TIME_PATTERN

OPENAPI_VERSION = "3.0.3"
SECURITY_SCHEME = "pipedriveBasic"

# every error the reverse API answers, in Pipedrive's shape; the status says which
ERRORS: dict[int, str] = {
    400: "The body is not valid JSON or a field is missing or wrong (the message names it), or the "
    "Content-Length header is not a number.",
    401: "The Authorization header is missing or is not Basic base64(client_id:client_secret) of this app.",
    404: "Unknown link, or a meeting this link does not have (a link never sees another link's meetings).",
    405: "The path exists, but not with this method (e.g. GET).",
    410: "The link was uninstalled, or Pipedrive no longer accepts its tokens: the user has to install the app again.",
    413: "The body is larger than [server] max_body_bytes (64 KiB by default).",
    415: "The body is not JSON (Content-Type must be application/json).",
    502: "The video vendor refused or failed the call.",
    503: "The video vendor could not be reached or asked to come back later, or the bridge's database or "
    "the user's backend is unavailable; nothing was left half-done, so Pipedrive may retry.",
    504: "The video vendor did not answer within [server] backend_timeout_seconds.",
}
BODY_ERRORS = (400, 401, 404, 405, 410, 413, 415, 502, 503, 504)
DELETE_ERRORS = (400, 401, 404, 405, 410, 413, 503)


def meeting_body_schema() -> dict[str, Any]:
    """The body of postMeeting and patchUpdateMeeting, as ``bridge.validation.parse_meeting`` checks it."""
    return {
        "type": "object",
        "required": ["topic", "start_time", "duration"],
        "properties": {
            "topic": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_TOPIC_LENGTH,
                "pattern": r"\S",
                "description": "The activity's name. Runs of whitespace are collapsed to one space; what is "
                f"left must be 1 to {MAX_TOPIC_LENGTH} characters of Unicode text (no lone surrogate such as "
                "'\\ud800').",
                "example": "Demo with Acme",
            },
            "start_time": {
                "type": "string",
                "pattern": f"^{START_TIME_PATTERN}$",
                "description": "Start of the meeting in UTC, 'YYYY-MM-DD HH:mm' with ASCII digits; it must be "
                "a real date and time, and the meeting (start plus duration) must end by 9999-12-31 23:59.",
                "example": "2026-12-01 14:00",
            },
            "duration": {
                "type": "number",
                "minimum": 0,
                "exclusiveMinimum": True,
                "maximum": MAX_DURATION_MINUTES,
                "description": "Length in minutes, positive, at most "
                f"{MAX_DURATION_MINUTES} ({MAX_DURATION_MINUTES // (24 * 60)} days); a fraction is "
                "rounded up.",
                "example": 30,
            },
        },
        "description": "Other fields are ignored.",
    }


def _error_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "error"],
        "additionalProperties": False,
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "error": {"type": "string", "minLength": 1, "description": "What went wrong, for a person to read."},
        },
    }


def _created_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["success", "data"],
        "additionalProperties": False,
        "properties": {
            "success": {"type": "boolean", "enum": [True]},
            "data": {
                "type": "object",
                "required": ["meeting_id", "join_url", "invitation"],
                "additionalProperties": False,
                "properties": {
                    "meeting_id": {
                        "type": "string",
                        "pattern": f"^{ID_PATTERN}$",
                        "description": "The bridge's id of the meeting: the :meetingId of "
                        "patchUpdateMeeting and deleteMeeting.",
                    },
                    "join_url": {
                        "type": "string",
                        "format": "uri",
                        "description": "Where to join the call: the bridge's own link, <public_url>/j/<token>, "
                        "resolved at each click to the meeting's room as it is then (GET /j/{token}); with "
                        "[meetings] join_links = \"vendor\" (or that backend's own setting), the vendor's URL.",
                    },
                    "password": {
                        "type": "string",
                        "minLength": 1,
                        "description": "The call's password, when the vendor has one.",
                    },
                    "invitation": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Text to share: topic, time, join link (and password).",
                    },
                },
            },
        },
    }


def _page(description: str) -> dict[str, Any]:
    return {"description": description + " An HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _path_parameter(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The {what}; anything else is an unknown {what} (404).",
        "schema": {"type": "string", "pattern": f"^{ID_PATTERN}$"},
    }


def _responses(success: dict[str, Any], errors: tuple[int, ...]) -> dict[str, Any]:
    responses = dict(success)
    for status in errors:
        responses[str(status)] = _ref("responses", f"Error{status}")
    return responses


def _body() -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref("schemas", "MeetingRequest")}}}


def build_openapi() -> dict[str, Any]:
    """The OpenAPI document of the reverse API, the join links and the health checks."""
    no_content = {"204": {"description": "Done (no body)."}}
    link = _ref("parameters", "linkId")
    meeting = _ref("parameters", "meetingId")
    request_id = _ref("parameters", "requestId")
    security: list[dict[str, list[str]]] = [{SECURITY_SCHEME: []}]
    error_responses = {
        f"Error{status}": {
            "description": description,
            "content": {"application/json": {"schema": _ref("schemas", "Error")}},
            **(
                {
                    "headers": {
                        "WWW-Authenticate": {
                            "description": 'Basic realm="pipedrive-video-bridge"',
                            "schema": {"type": "string"},
                        }
                    }
                }
                if status == 401
                else {}
            ),
        }
        for status, description in ERRORS.items()
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "pipedrive-video-bridge reverse API",
            "version": __version__,
            "description": "The endpoints Pipedrive's video calling app extension calls (listed in the "
            "manifest as postMeeting, patchUpdateMeeting and deleteMeeting, with :linkId and "
            ":meetingId), and the health checks. Every error answers "
            '{"success": false, "error": "..."}; every answer carries X-Request-ID.',
        },
        "tags": [
            {"name": "reverse API", "description": "Called by Pipedrive with the app's Basic credentials."},
            {"name": "join links", "description": "Opened by the people invited to a meeting, in a browser."},
            {"name": "health", "description": "For load balancers and orchestrators."},
        ],
        "paths": {
            POST_MEETING: {
                "parameters": [link, request_id],
                "post": {
                    "operationId": "postMeeting",
                    "tags": ["reverse API"],
                    "security": security,
                    "summary": "Create a video call for an activity",
                    "description": "A retry of a request already answered (same link, topic, time and duration "
                    "within [meetings] retry_window_seconds) answers the meeting already made.",
                    "requestBody": _body(),
                    "responses": _responses(
                        {
                            "201": {
                                "description": "The meeting was created.",
                                "content": {"application/json": {"schema": _ref("schemas", "MeetingCreated")}},
                            }
                        },
                        BODY_ERRORS,
                    ),
                },
            },
            MEETING: {
                "parameters": [link, meeting, request_id],
                "patch": {
                    "operationId": "patchUpdateMeeting",
                    "tags": ["reverse API"],
                    "security": security,
                    "summary": "Move or rename the video call of an activity",
                    "requestBody": _body(),
                    "responses": _responses(no_content, BODY_ERRORS),
                },
                "delete": {
                    "operationId": "deleteMeeting",
                    "tags": ["reverse API"],
                    "security": security,
                    "summary": "Remove the video call of an activity",
                    "description": (
                        "Answered 204 once the room's removal at the vendor is durably queued: a vendor "
                        "that fails it now gets it again in the background. A repeated delete answers 204 again."
                    ),
                    "responses": _responses(no_content, DELETE_ERRORS),
                },
            },
            JOIN_PATH: {
                "get": {
                    "operationId": "join",
                    "tags": ["join links"],
                    "security": [],
                    "summary": "Open a meeting from its join link (a browser, not Pipedrive)",
                    "description": "The organiser signed in on the bridge (the settings page's session cookie) "
                    "goes in as host where the vendor has a host's way in; anyone else as a guest. Pages and "
                    "redirects are Cache-Control: no-store and Referrer-Policy: no-referrer; HEAD answers what "
                    "GET would.",
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "description": "The link's token: 32 characters of [A-Za-z0-9_-] (192 random bits).",
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "303": {
                            "description": "To the meeting's room, as the vendor has it now.",
                            "headers": {"Location": {"description": "The vendor's URL.", "schema": {"type": "string"}}},
                        },
                        "404": _page("No meeting has this link."),
                        "410": _page("The meeting was cancelled, has ended, or its organiser uninstalled the app."),
                        "429": _page("This client tried too many unknown links; Retry-After says when to try again."),
                        "502": _page("The vendor failed to give a way into the meeting."),
                        "503": _page("The vendor, the meeting's backend or the database is unavailable."),
                        "504": _page("The vendor did not answer in time."),
                    },
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "tags": ["health"],
                    "security": [],
                    "summary": "The process is up",
                    "responses": {
                        "200": {
                            "description": "Up.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status"],
                                        "properties": {"status": {"type": "string", "enum": ["ok"]}},
                                    }
                                }
                            },
                        }
                    },
                },
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "tags": ["health"],
                    "security": [],
                    "summary": "The database answers",
                    "responses": {
                        "200": {
                            "description": "Ready.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status", "database"],
                                        "properties": {
                                            "status": {"type": "string", "enum": ["ready"]},
                                            "database": {"type": "string", "enum": ["ok"]},
                                        },
                                    }
                                }
                            },
                        },
                        "503": {
                            "description": "The database does not answer.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status", "database"],
                                        "properties": {
                                            "status": {"type": "string", "enum": ["unavailable"]},
                                            "database": {"type": "string", "enum": ["unreachable"]},
                                        },
                                    }
                                }
                            },
                        },
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "basic",
                    "description": "base64(client_id:client_secret) of the Pipedrive app, as in the OAuth token "
                    "exchange.",
                }
            },
            "parameters": {
                "linkId": _path_parameter("link_id", "link"),
                "meetingId": _path_parameter("meeting_id", "meeting"),
                "requestId": {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "description": "Echoed in the answer and the logs when it is 1-64 characters of "
                    "[A-Za-z0-9._-]; otherwise a new one is made.",
                    "schema": {"type": "string"},
                },
            },
            "schemas": {
                "MeetingRequest": meeting_body_schema(),
                "MeetingCreated": _created_schema(),
                "Error": _error_schema(),
            },
            "responses": error_responses,
        },
    }


def render_openapi(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_openapi(path: Path) -> dict[str, Any]:
    document = build_openapi()
    path.write_text(render_openapi(document), encoding="utf-8")
    return document
