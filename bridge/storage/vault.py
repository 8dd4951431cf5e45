"""Encryption at rest: AES-256-GCM with a key ring, every ciphertext bound to its row.

The first key encrypts, every key decrypts, so a new key can be rolled out to all
replicas before ``keys rotate`` re-encrypts the rows. Each ciphertext names the id
of the key that made it and is authenticated together with a *context* string (the
row it belongs to): copied into another row, it no longer decrypts. There is no
fallback to plaintext: without a key the service does not start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge.errors import StorageUnavailable

log = logging.getLogger(__name__)

_VERSION = "v1"
_NONCE_BYTES = 12


class VaultError(StorageUnavailable):
    """A key is missing, malformed or wrong, or a ciphertext was tampered with."""


def generate_key() -> str:
    """A new random 256-bit key, printable (URL-safe base64)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def key_id(key: str) -> str:
    """A short public fingerprint of a key; stored beside each ciphertext."""
    return hashlib.sha256(_decode_key(key)).hexdigest()[:12]


def _decode_key(key: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(key.strip().encode())
    except (binascii.Error, ValueError):
        raise VaultError(
            "a vault key is not valid base64; make one with `pipedrive-video-bridge keys generate`"
        ) from None
    if len(raw) != 32:
        raise VaultError(
            f"a vault key must be 32 bytes, got {len(raw)}; make one with `pipedrive-video-bridge keys generate`"
        )
    return raw


class Vault:
    """Encrypts and decrypts short secrets with a ring of AES-256-GCM keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        ring: dict[str, AESGCM] = {}
        raw: dict[str, bytes] = {}
        order: list[str] = []
        for key in keys:
            kid = key_id(key)
            if kid not in ring:
                raw[kid] = _decode_key(key)
                ring[kid] = AESGCM(raw[kid])
                order.append(kid)
        if not order:
            raise VaultError(
                "no vault key is configured: set [vault] keys or PVB_VAULT_KEYS "
                "(make one with `pipedrive-video-bridge keys generate`)"
            )
        self._ring = ring
        self._raw = raw
        self.primary_key_id = order[0]
        self.key_ids = tuple(order)

    def encrypt(self, plaintext: str, context: str) -> tuple[str, str]:
        """Encrypt with the primary key; returns (key id, ciphertext)."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ring[self.primary_key_id].encrypt(nonce, plaintext.encode(), context.encode())
        token = base64.urlsafe_b64encode(nonce + sealed).decode()
        return self.primary_key_id, f"{_VERSION}:{self.primary_key_id}:{token}"

    def decrypt(self, ciphertext: str, context: str) -> str:
        try:
            version, kid, token = ciphertext.split(":", 2)
            blob = base64.urlsafe_b64decode(token.encode())
        except (ValueError, binascii.Error):
            raise VaultError("a stored secret is malformed") from None
        if version != _VERSION:
            raise VaultError(f"a stored secret has unknown format {version!r}")
        aead = self._ring.get(kid)
        if aead is None:
            raise VaultError(
                f"a stored secret was encrypted with key {kid}, which is not configured; "
                "add that key back to [vault] keys"
            )
        try:
            return aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], context.encode()).decode()
        except InvalidTag:
            raise VaultError(
                f"a stored secret does not decrypt with key {kid} for its row "
                "(wrong key, or the value was moved or altered)"
            ) from None

    def knows(self, kid: str) -> bool:
        return kid in self._ring

    def derive(self, purpose: str) -> list[bytes]:
        """One 256-bit key per vault key (primary first) for another use, via HKDF."""
        return [
            HKDF(
                algorithm=hashes.SHA256(), length=32, salt=None, info=f"pipedrive-video-bridge/{purpose}".encode()
            ).derive(self._raw[kid])
            for kid in self.key_ids
        ]


def load_or_create_key_file(path: Path) -> list[str]:
    """Keys from a key file (one per line, first encrypts); a missing file is created with a new key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(generate_key() + "\n")
        log.warning(
            "created a new vault key file",
            extra={"path": str(path), "hint": "keep it with the database; losing it loses every stored token"},
        )
    lines = [line.strip() for line in path.read_text().splitlines()]
    keys = [line for line in lines if line and not line.startswith("#")]
    if not keys:
        raise VaultError(f"{path}: the key file holds no key")
    return keys
