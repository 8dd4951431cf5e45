"""The ``[backends.zoom]`` table, parsed and checked once at start-up."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bridge.plugin import base_url, optional_bool, optional_text, required_text

AUTH_MODES = ("account", "user")
MEETING_SWITCHES = ("waiting_room", "join_before_host", "mute_upon_entry")
"""Zoom meeting settings a company may fix; unset ones follow the host's own Zoom settings."""

KNOWN_SETTINGS = {
    "auth",
    "client_id",
    "client_secret",
    "account_id",
    "fallback_host",
    "api_base",
    "oauth_base",
    "default_password",
    "passcode",
    *MEETING_SWITCHES,
}
_ACCOUNT_ONLY = ("account_id", "fallback_host")
# Zoom's passcode rule: at most 10 of a-z, A-Z, 0-9, @ - _ *
_PASSCODE = re.compile(r"[A-Za-z0-9@\-_*]{1,10}")


@dataclass(frozen=True)
class ZoomSettings:
    auth: str
    client_id: str
    client_secret: str = field(repr=False)
    account_id: str = ""
    fallback_host: str = ""
    api_base: str = "https://api.zoom.us/v2"
    oauth_base: str = "https://zoom.us"
    switches: Mapping[str, bool] = field(default_factory=dict)
    default_password: bool | None = None
    passcode: str | None = field(default=None, repr=False)


def parse_settings(config: Mapping[str, Any]) -> ZoomSettings:
    """Raise ``ValueError("setting: what is wrong")`` for the first bad setting."""
    unknown = sorted(set(config) - KNOWN_SETTINGS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: unknown setting (known: {', '.join(sorted(KNOWN_SETTINGS))})")
    auth = config.get("auth", "account")
    if auth not in AUTH_MODES:
        raise ValueError(f"auth: must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    if auth == "user":
        for key in _ACCOUNT_ONLY:
            if key in config:
                raise ValueError(f"{key}: only used with auth = 'account'")
    passcode = optional_text(config, "passcode")
    if passcode is not None and not _PASSCODE.fullmatch(passcode):
        raise ValueError("passcode: at most 10 characters a-z, A-Z, 0-9, @, -, _ or *")
    default_password = optional_bool(config, "default_password")
    if passcode is not None and default_password:
        raise ValueError("passcode: cannot be combined with default_password = true")
    return ZoomSettings(
        auth=auth,
        client_id=required_text(config, "client_id"),
        client_secret=required_text(config, "client_secret"),
        account_id=required_text(config, "account_id") if auth == "account" else "",
        fallback_host=optional_text(config, "fallback_host") or "",
        api_base=base_url(config, "api_base", ZoomSettings.api_base),
        oauth_base=base_url(config, "oauth_base", ZoomSettings.oauth_base),
        switches={key: value for key in MEETING_SWITCHES if (value := optional_bool(config, key)) is not None},
        default_password=default_password,
        passcode=passcode,
    )
