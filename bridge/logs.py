"""Structured logs with a request id, and a last line of defence against leaked secrets.

Code logs plain messages with ``extra={...}`` fields; the formatter adds the time,
level, logger and the id of the request being served. Before anything is written,
every configured secret value and anything that looks like a credential
(``Bearer …``, ``Basic …``, ``jwt=…``, ``access_token``…) is replaced by ``***``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_JSON = json.JSONEncoder(default=str, ensure_ascii=False)  # one encoder for every line
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def _words(*words: str) -> re.Pattern[str]:
    """Finds any of ``words`` (lower case, as they are) in lower-cased text."""
    return re.compile("|".join(map(re.escape, words)))


_PATTERNS = [  # (pattern, replacement, words one of which any match holds): the credential goes, its name stays
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***", _words("bearer", "basic")),
    (
        re.compile(r"(?i)([?&](?:jwt|token|access_token|code|state)=)[^&\s\"']+"),
        r"\1***",
        _words("jwt=", "token=", "code=", "state="),
    ),
    (
        re.compile(
            r"(?i)(\"?(?:access_token|refresh_token|client_secret|password|app_secret|api_key)\"?\s*[:=]\s*\"?)"
            r"[^\"',\s}]+"
        ),
        r"\1***",
        _words("access_token", "refresh_token", "client_secret", "password", "app_secret", "api_key"),
    ),
]


class Redactor:
    """Replaces known secret values and credential-shaped text with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: tuple[str, ...] = ()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        known = set(self._secrets) | {s for s in secrets if s and len(s) >= 6}
        self._secrets = tuple(sorted(known, key=len, reverse=True))  # longest first: no part of one is left

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        # in ASCII text a pattern can only match where one of its words is, in any case, and most lines hold
        # none; beyond ASCII, case-insensitive matching reaches letters such as "ſ": every pattern runs
        lowered = text.lower() if text.isascii() else None
        for pattern, replacement, words in _PATTERNS:
            if lowered is None or words.search(lowered):
                text = pattern.sub(replacement, text)
        return text


class _Formatter(logging.Formatter):
    def __init__(self, redact: Redactor, as_json: bool) -> None:
        super().__init__()
        self.redact = redact
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            fields["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                fields[key] = value
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.as_json:
            line = _JSON.encode(fields)
        else:
            extras = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("ts", "level", "logger", "msg"))
            line = f"{fields['ts']} {record.levelname:<7} {record.name}: {fields['msg']} {extras}".rstrip()
        return self.redact(line)


def configure_logging(
    level: str = "INFO", fmt: str = "json", secrets: Iterable[str] = (), stream: Any = None
) -> Redactor:
    """Send every log line (ours, uvicorn's, httpx's) through one redacting formatter."""
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(redactor, as_json=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # the bridge writes its own access line
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its INFO lines carry full URLs
    # what no line shows is not gathered for every record: the calling frame, the thread, the process
    # (the logging HOWTO's "Optimization"); together about a tenth of a record's cost
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    return redactor
