"""A tiny backend plugin for the slow-vendor benchmark: every room is one HTTP call to a vendor on loopback.

It is what a real vendor plugin does on postMeeting (``POST`` to the vendor's API
with the shared ``ctx.http`` client, read the answer, build the invitation), so
the benchmark measures the bridge's concurrency while the vendor takes its time.
``[backends.slowvendor] url`` is the vendor's base URL (``python -m bench.servers vendor``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from bridge.errors import BackendError
from bridge.vendors.hookspecs import hookimpl
from bridge.vendors.interface import Backend, BackendContext, MeetingRequest, Room
from bridge.vendors.invitation import render_invitation


class SlowVendorBackend(Backend):
    name = "slowvendor"
    title = "Slow Vendor (benchmark)"

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        url = config.get("url")
        if not isinstance(url, str) or not url.startswith("http://127.0.0.1:"):
            raise ValueError("url: required, a loopback URL such as http://127.0.0.1:9000")
        return cls(url)

    async def create(self, ctx: BackendContext, meeting: MeetingRequest) -> Room:
        response = await ctx.http.post(f"{self.url}/rooms", json={"title": meeting.topic, "minutes": meeting.duration})
        if response.status_code != 201:
            raise BackendError(f"{self.title} refused the room (HTTP {response.status_code})")
        room = response.json()
        return Room(
            vendor_meeting_id=room["id"],
            join_url=room["url"],
            invitation=render_invitation(meeting, room["url"], user=ctx.user),
        )

    async def update(self, ctx: BackendContext, vendor_meeting_id: str, meeting: MeetingRequest) -> Room | None:
        return None

    async def delete(self, ctx: BackendContext, vendor_meeting_id: str) -> None:
        return None


@hookimpl
def register_backends(register: Any) -> None:
    register(SlowVendorBackend)
