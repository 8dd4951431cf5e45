"""Reading a backend's ``[backends.<name>]`` table: the checks every plugin's ``from_config`` needs.

Each raises ``ValueError("<key>: what is wrong")``, which the core reports with the table's
name (``[backends.zoom] client_id: required``), at start-up and in ``check``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit


def optional_text(config: Mapping[str, Any], key: str) -> str | None:
    """The setting as a stripped, non-empty string; None when it is not set."""
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key}: must be a non-empty string")
    return value.strip()


def required_text(config: Mapping[str, Any], key: str) -> str:
    """The setting as a stripped, non-empty string; it must be set."""
    value = optional_text(config, key)
    if value is None:
        raise ValueError(f"{key}: required")
    return value


def optional_bool(config: Mapping[str, Any], key: str) -> bool | None:
    """The setting as true or false; None when it is not set."""
    value = config.get(key)
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{key}: must be true or false")
    return value


def base_url(config: Mapping[str, Any], key: str, default: str) -> str:
    """An http(s) URL without query or fragment (``default`` when unset), without its trailing slash."""
    value = optional_text(config, key) or default
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{key}: must be an http(s) URL such as {default}, got {value!r}")
    return value.rstrip("/")
