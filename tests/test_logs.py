"""The log redactor: what it removes, and that its shortcut removes exactly what every pattern would.

The redactor skips a credential pattern on an ASCII line that holds none of that
pattern's words; these tests hold it to the plain algorithm (every known secret,
longest first, then every pattern on every line) on generated lines, lines that
are not ASCII among them, where case-insensitive matching reaches letters such as
``ſ`` and ``K`` (the Kelvin sign).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.logs import _PATTERNS, Redactor, configure_logging, request_id_var

SECRETS = ["client-secret-7Hq2", "vault-key-AAAAAAAAAAAAAAAA", "vault-key-AAAA"]


def every_pattern(secrets: list[str], text: str) -> str:
    """The redactor without its shortcut."""
    for secret in sorted((s for s in secrets if len(s) >= 6), key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern, replacement, _words in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


FRAGMENTS = st.sampled_from(
    [
        "Bearer ",
        "bAsIc ",
        "BEARER\t",
        "?jwt=",
        "&token=",
        "?Access_Token=",
        "&code=",
        "?STATE=",
        '"password": "',
        "password=",
        "Refresh_Token:",
        "client_secret = ",
        "app_secret=",
        "API_KEY:",
        "paſſword=",  # long s: (?i) matches it to "s"
        "\u212aey",  # Kelvin sign, matched to "k"
        "api_\u212aey=",
        "ıd",
        "İ",
        "abc123",
        "x.y-z~+/=",
        " ",
        '"',
        "'",
        ",",
        "}",
        "&",
        "?",
        "é",
        *SECRETS,
    ]
)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.one_of(FRAGMENTS, st.text(max_size=6)), max_size=14))
def test_the_redactor_removes_exactly_what_every_pattern_would(parts: list[str]) -> None:
    text = "".join(parts)
    assert Redactor(SECRETS)(text) == every_pattern(SECRETS, text)


@pytest.mark.parametrize(
    ("line", "redacted"),
    [
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer ***"),
        ("auth basic dXNlcjpwYXNz and more", "auth basic *** and more"),
        ("GET /cb?code=AbC123&state=xyz HTTP/1.1", "GET /cb?code=***&state=*** HTTP/1.1"),
        ('{"access_token": "tok-1", "expires_in": 3600}', '{"access_token": "***", "expires_in": 3600}'),
        ("paſſword=hunter2", "paſſword=***"),
        ("sent client-secret-7Hq2 and vault-key-AAAAAAAAAAAAAAAA", "sent *** and ***"),
        ("nothing to hide here: status=201", "nothing to hide here: status=201"),
    ],
)
def test_credentials_and_known_secrets_become_stars(line: str, redacted: str) -> None:
    assert Redactor(SECRETS)(line) == redacted


def test_a_secret_added_later_is_redacted_and_short_values_are_ignored() -> None:
    redact = Redactor(["abc"])  # under 6 characters: too short to tell from ordinary text
    assert redact("abc abcdef-secret") == "abc abcdef-secret"
    redact.add(["abcdef-secret", "abcdef"])
    assert redact("abc abcdef-secret abcdef") == "abc *** ***"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    buffer = io.StringIO()
    configure_logging("INFO", "json", SECRETS, stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], root.level = saved


def test_a_json_line_carries_its_fields_and_the_request_id_with_secrets_redacted(lines: io.StringIO) -> None:
    token = request_id_var.set("r" * 32)
    try:
        logging.getLogger("bridge.test").info(
            "token refreshed", extra={"detail": "Bearer abc.def", "user": "Ada", "secret": SECRETS[0]}
        )
    finally:
        request_id_var.reset(token)
    [line] = lines.getvalue().splitlines()
    fields = json.loads(line)
    assert fields["msg"] == "token refreshed"
    assert fields["level"] == "INFO" and fields["logger"] == "bridge.test"
    assert fields["request_id"] == "r" * 32
    assert fields["detail"] == "Bearer ***" and fields["secret"] == "***" and fields["user"] == "Ada"
