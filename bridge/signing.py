"""Signed, expiring tokens for the browser: OAuth ``state``, the session cookie, CSRF.

A token is ``base64(json payload).base64(HMAC-SHA256)``. The signing keys are
derived from the vault keys (``Vault.derive``, so a vault key is never used for
two purposes): the first signs, every one verifies, and rotating the vault keys
rotates these too without logging anyone out mid-rotation.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from typing import Any


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, keys: Iterable[bytes]) -> None:
        self._keys = list(keys)
        if not self._keys:
            raise ValueError("a signer needs at least one key")

    def _mac(self, key: bytes, purpose: str, body: str) -> bytes:
        return hmac.new(key, f"{purpose}\n{body}".encode(), hashlib.sha256).digest()

    def sign(self, purpose: str, payload: dict[str, Any], max_age: int) -> str:
        """A token for ``purpose`` (e.g. "state", "session") that expires after ``max_age`` seconds."""
        body = _b64(json.dumps({**payload, "exp": int(time.time()) + max_age}, separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(self._keys[0], purpose, body))}"

    def verify(self, purpose: str, token: str | None) -> dict[str, Any] | None:
        """The payload if the token is intact, for this purpose, and unexpired; else None."""
        if not token or len(token) > 4096 or token.count(".") != 1:
            return None
        body, mac = token.split(".")
        try:
            given = _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not any(hmac.compare_digest(given, self._mac(key, purpose, body)) for key in self._keys):
            return None
        try:
            payload = json.loads(_unb64(body))
        except (binascii.Error, ValueError):
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int) or payload["exp"] < time.time():
            return None
        return payload
