"""The ``[backends.teams]`` table, parsed and checked once at start-up (the certificate file is read here)."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from bridge.plugin import base_url, optional_text, required_text

AUTH_MODES = ("company", "user")
KNOWN_SETTINGS = {
    "auth",
    "tenant_id",
    "client_id",
    "client_secret",
    "certificate_file",
    "fallback_organizer",
    "graph_base",
    "login_base",
}
_COMPANY_ONLY = ("fallback_organizer", "certificate_file")
# a tenant is a GUID or a verified domain (contoso.onmicrosoft.com); "organizations" lets any work account sign in
_TENANT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
)
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Certificate:
    """The app's certificate credential: the private key that signs client assertions and the thumbprints."""

    private_key: RSAPrivateKey = field(repr=False)
    x5t: str  # base64url SHA-1 of the DER certificate
    x5t_s256: str  # base64url SHA-256 of the DER certificate


@dataclass(frozen=True)
class TeamsSettings:
    auth: str
    tenant_id: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    certificate: Certificate | None = field(default=None, repr=False)
    fallback_organizer: str = ""
    graph_base: str = "https://graph.microsoft.com/v1.0"
    login_base: str = "https://login.microsoftonline.com"


def parse_settings(config: Mapping[str, Any]) -> TeamsSettings:
    """Raise ``ValueError("setting: what is wrong")`` for the first bad setting."""
    unknown = sorted(set(config) - KNOWN_SETTINGS)
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: unknown setting (known: {', '.join(sorted(KNOWN_SETTINGS))})")
    auth = config.get("auth", "company")
    if auth not in AUTH_MODES:
        raise ValueError(f"auth: must be one of {', '.join(AUTH_MODES)}, got {auth!r}")
    if auth == "user":
        for key in _COMPANY_ONLY:
            if key in config:
                raise ValueError(f"{key}: only used with auth = 'company'")
    default_tenant = "organizations" if auth == "user" else None
    tenant = optional_text(config, "tenant_id") or default_tenant
    if tenant is None:
        raise ValueError("tenant_id: required (the Directory (tenant) ID of your Entra app)")
    if tenant != "organizations" and not _TENANT.fullmatch(tenant):
        raise ValueError(f"tenant_id: a GUID or a domain such as contoso.onmicrosoft.com, got {tenant!r}")
    client_id = required_text(config, "client_id")
    if not _GUID.fullmatch(client_id):
        raise ValueError(f"client_id: the Application (client) ID, a GUID, got {client_id!r}")
    secret = optional_text(config, "client_secret")
    certificate_file = optional_text(config, "certificate_file")
    if secret is not None and certificate_file is not None:
        raise ValueError("client_secret: set either client_secret or certificate_file, not both")
    if secret is None and certificate_file is None:
        needed = "client_secret" if auth == "user" else "client_secret or certificate_file"
        raise ValueError(f"{needed}: required (the app's credential from Certificates & secrets)")
    fallback = optional_text(config, "fallback_organizer") or ""
    if fallback and "@" not in fallback:
        raise ValueError(f"fallback_organizer: a user principal name such as frontdesk@contoso.com, got {fallback!r}")
    return TeamsSettings(
        auth=auth,
        tenant_id=tenant,
        client_id=client_id,
        client_secret=secret,
        certificate=read_certificate(certificate_file) if certificate_file else None,
        fallback_organizer=fallback,
        graph_base=base_url(config, "graph_base", TeamsSettings.graph_base),
        login_base=base_url(config, "login_base", TeamsSettings.login_base),
    )


def read_certificate(path: str) -> Certificate:
    """The PEM file's RSA private key and certificate; its contents never reach an error message."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ValueError(f"certificate_file: cannot read {path!r} ({exc.strerror or exc.__class__.__name__})") from None
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ValueError(f"certificate_file: {path!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(
            f"certificate_file: {path!r} holds no unencrypted PEM private key beside the certificate"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("certificate_file: the private key must be an RSA key (Entra signs with RS256)")
    if key.public_key().public_numbers() != certificate.public_key().public_numbers():  # type: ignore[union-attr]
        raise ValueError(f"certificate_file: the private key in {path!r} does not belong to its certificate")
    der = certificate.public_bytes(serialization.Encoding.DER)
    return Certificate(key, _b64url(hashlib.sha1(der).digest()), _b64url(hashlib.sha256(der).digest()))


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
