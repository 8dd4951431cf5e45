"""HTTP Basic authentication with the app's client id and secret, as Pipedrive sends it."""

from __future__ import annotations

import base64
import binascii
import hmac

from bridge.errors import Unauthorized

MAX_HEADER_LENGTH = 2048


def basic_auth(client_id: str, client_secret: str) -> dict[str, str]:
    """The ``Authorization`` header Pipedrive sends: ``Basic base64(client_id:client_secret)``."""
    token = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def check_basic_auth(header: str | None, client_id: str, client_secret: str) -> None:
    """Raise Unauthorized unless ``header`` is ``Basic base64(client_id:client_secret)``.

    Both halves are always compared, in constant time, so the answer's timing
    tells nothing about which part was wrong.
    """
    if not header:
        raise Unauthorized("missing Authorization header (expected Basic client_id:client_secret)")
    if len(header) > MAX_HEADER_LENGTH:
        raise Unauthorized("Authorization header is too long")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise Unauthorized("Authorization must use the Basic scheme")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized("Authorization header is not valid base64") from None
    given_id, sep, given_secret = decoded.partition(b":")
    id_ok = hmac.compare_digest(given_id, client_id.encode())
    secret_ok = hmac.compare_digest(given_secret, client_secret.encode())
    if not (sep and id_ok and secret_ok):
        raise Unauthorized("invalid client credentials")
