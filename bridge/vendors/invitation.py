"""The invitation text Pipedrive shows with a video call, for backends without their own."""

from __future__ import annotations

from collections.abc import Iterable

from bridge.vendors.interface import MeetingRequest, UserIdentity


def format_start(meeting: MeetingRequest) -> str:
    return meeting.start_time.strftime("%A, %d %B %Y, %H:%M UTC")


def render_invitation(
    meeting: MeetingRequest,
    join_url: str,
    *,
    user: UserIdentity | None = None,
    password: str | None = None,
    extra_lines: Iterable[str] = (),
) -> str:
    """A plain-text invitation: who invites, topic, time in UTC, length, link, passcode."""
    if user and user.name:
        opening = f"{user.name} is inviting you to a video meeting."
    else:
        opening = "You are invited to a video meeting."
    lines = [
        opening,
        "",
        f"Topic: {meeting.topic}",
        f"Time: {format_start(meeting)} ({meeting.duration} minutes)",
        "",
        f"Join: {join_url}",
    ]
    if password:
        lines.append(f"Passcode: {password}")
    lines.extend(extra_lines)
    return "\n".join(lines)
