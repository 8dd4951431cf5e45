"""The ``[backends.google_meet]`` table, parsed and checked once at start-up, and the service account key it names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bridge.plugin import base_url, optional_text, required_text

AUTH_MODES = ("company", "user")
KNOWN_SETTINGS = {
    "auth",
    "service_account_file",
    "client_id",
    "client_secret",
    "calendar_id",
    "api_base",
    "token_uri",
    "auth_base",
}
_COMPANY_ONLY = ("service_account_file",)
_USER_ONLY = ("client_id", "client_secret")
_KEY_FIELDS = ("client_email", "private_key_id", "private_key")


@dataclass(frozen=True)
class ServiceAccountKey:
    """What the bridge needs of a service account's JSON key: who it is, and its private key (parsed, never text)."""

    client_email: str
    client_id: str
    private_key_id: str
    private_key: RSAPrivateKey = field(repr=False)


@dataclass(frozen=True)
class GoogleMeetSettings:
    auth: str
    service_account: ServiceAccountKey | None = None
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    calendar_id: str = "primary"
    api_base: str = "https://www.googleapis.com/calendar/v3"
    token_uri: str = "https://oauth2.googleapis.com/token"
    auth_base: str = "https://accounts.google.com"


def parse_settings(config: Mapping[str, Any]) -> GoogleMeetSettings:
    """Raise ``ValueError("setting: what is wrong")`` for the first bad setting."""
    unknown = sorted(set(config) - KNOWN_SETTINGS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: unknown setting (known: {', '.join(sorted(KNOWN_SETTINGS))})")
    auth = config.get("auth", "company")
    if auth not in AUTH_MODES:
        raise ValueError(f"auth: must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    for key in _USER_ONLY if auth == "company" else _COMPANY_ONLY:
        if key in config:
            other = "user" if auth == "company" else "company"
            raise ValueError(f"{key}: only used with auth = '{other}'")
    return GoogleMeetSettings(
        auth=auth,
        service_account=load_service_account(required_text(config, "service_account_file"))
        if auth == "company"
        else None,
        client_id=required_text(config, "client_id") if auth == "user" else "",
        client_secret=required_text(config, "client_secret") if auth == "user" else "",
        calendar_id=optional_text(config, "calendar_id") or GoogleMeetSettings.calendar_id,
        api_base=base_url(config, "api_base", GoogleMeetSettings.api_base),
        token_uri=base_url(config, "token_uri", GoogleMeetSettings.token_uri),
        auth_base=base_url(config, "auth_base", GoogleMeetSettings.auth_base),
    )


def load_service_account(path: str) -> ServiceAccountKey:
    """The key in the JSON file Google hands out for a service account; a ValueError naming the setting otherwise.

    Messages name the file, never its contents."""
    where = f"service_account_file: {path}"
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{where} cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        record = json.loads(text)
    except ValueError:
        raise ValueError(
            f"{where} is not JSON; use the JSON key file Google Cloud gives for the service account"
        ) from None
    if not isinstance(record, dict) or record.get("type") != "service_account":
        kind = record.get("type") if isinstance(record, dict) else None
        raise ValueError(
            f"{where} is not a service account key (its type is {kind!r}, not 'service_account'); create a "
            "JSON key under IAM & Admin > Service Accounts > the account > Keys"
        )
    missing = [name for name in _KEY_FIELDS if not isinstance(record.get(name), str) or not record[name].strip()]
    if missing:
        raise ValueError(f"{where} lacks {', '.join(missing)}; download a new JSON key for the service account")
    try:
        private_key = load_pem_private_key(record["private_key"].encode(), password=None)
    except (ValueError, TypeError):
        private_key = None
    if not isinstance(private_key, RSAPrivateKey):
        raise ValueError(f"{where}: its private_key is not a readable RSA private key; download a new JSON key")
    client_id = record.get("client_id")
    return ServiceAccountKey(
        client_email=record["client_email"].strip(),
        client_id=client_id.strip() if isinstance(client_id, str) else "",
        private_key_id=record["private_key_id"].strip(),
        private_key=private_key,
    )
