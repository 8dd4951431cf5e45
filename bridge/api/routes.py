"""The reverse API Pipedrive calls: postMeeting, patchUpdateMeeting, deleteMeeting.

Paths (each listed in the generated manifest, ``:linkId`` and ``:meetingId`` filled in):

    POST   /api/v1/links/{linkId}/meetings               -> 201 {"success": true, "data": {...}}
    PATCH  /api/v1/links/{linkId}/meetings/{meetingId}   -> 204
    DELETE /api/v1/links/{linkId}/meetings/{meetingId}   -> 204

Every call must carry ``Authorization: Basic base64(client_id:client_secret)``.
Errors are raised as BridgeErrors and rendered by the app in Pipedrive's shape.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.api.auth import check_basic_auth
from bridge.api.meetings import MeetingService
from bridge.api.validation import parse_meeting
from bridge.errors import BadRequest, BridgeError, NotFound, UnsupportedMediaType
from bridge.runtime import bridge_of
from bridge.vendors.interface import MeetingRequest

PREFIX = "/api/v1/links"
POST_MEETING = PREFIX + "/{link_id}/meetings"
MEETING = PREFIX + "/{link_id}/meetings/{meeting_id}"

ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"  # a linkId or meetingId; anything else is an unknown one (404)
_ID = re.compile(ID_PATTERN)


def _authenticate(request: Request) -> None:
    pipedrive = bridge_of(request).config.pipedrive
    check_basic_auth(request.headers.get("authorization"), pipedrive.client_id, pipedrive.client_secret)


def _path_id(request: Request, name: str, what: str) -> str:
    value = request.path_params[name]
    if not _ID.fullmatch(value):
        raise NotFound(f"unknown {what}")
    return value  # type: ignore[no-any-return]


async def _meeting_body(request: Request) -> MeetingRequest:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType("the body must be JSON (Content-Type: application/json)")
    raw = await request.body()
    try:
        body: Any = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRequest("the body is not valid JSON") from None
    return parse_meeting(body)


Handler = Callable[[Request, MeetingService], Awaitable[Response]]


def _operation(name: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Authenticate, time and count one reverse-API operation (``/metrics``), then run it."""

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            bridge = bridge_of(request)
            with bridge.metrics.observe(name) as seen:
                _authenticate(request)
                response = await handler(request, MeetingService(bridge, seen))
                seen.status = response.status_code
            return response

        return endpoint

    return wrap


async def _checked_body(request: Request, service: MeetingService, link_id: str) -> MeetingRequest:
    """The meeting in the body; an unknown or uninstalled link answers so first, whatever the body."""
    try:
        return await _meeting_body(request)
    except BridgeError:
        await service.link(link_id)
        raise


@_operation("postMeeting")
async def post_meeting(request: Request, service: MeetingService) -> Response:
    link_id = _path_id(request, "link_id", "link")
    created = await service.create(link_id, await _checked_body(request, service, link_id))
    data: dict[str, str] = {
        "meeting_id": created.meeting_id,
        "join_url": created.room.join_url,
        "invitation": created.room.invitation,
    }
    if created.room.password:
        data["password"] = created.room.password
    return JSONResponse({"success": True, "data": data}, status_code=201)


@_operation("patchUpdateMeeting")
async def patch_meeting(request: Request, service: MeetingService) -> Response:
    link_id = _path_id(request, "link_id", "link")
    body = await _checked_body(request, service, link_id)
    link, meeting = await service.link_and_meeting(link_id, _path_id(request, "meeting_id", "meeting"))
    await service.update(link, meeting, body)
    return Response(status_code=204)


@_operation("deleteMeeting")
async def delete_meeting(request: Request, service: MeetingService) -> Response:
    link, meeting = await service.link_and_meeting(
        _path_id(request, "link_id", "link"), _path_id(request, "meeting_id", "meeting")
    )
    await service.delete(link, meeting)
    return Response(status_code=204)


routes = [
    Route(POST_MEETING, post_meeting, methods=["POST"], name="postMeeting"),
    Route(MEETING, patch_meeting, methods=["PATCH"], name="patchUpdateMeeting"),
    Route(MEETING, delete_meeting, methods=["DELETE"], name="deleteMeeting"),
]
