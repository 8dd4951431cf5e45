"""Errors as values: a status and a message meant for the person reading it.

Everything the reverse API can fail with is a :class:`BridgeError`; the app
renders it in exactly one place (``bridge.app``) into Pipedrive's shape,
``{"success": false, "error": "..."}``. Backends raise the subclasses below.
"""

from __future__ import annotations


class BridgeError(Exception):
    """An error with the HTTP status it should be answered with.

    ``message`` is for the person reading the answer; ``str(error)`` is what the log gets
    (the same, unless a subclass keeps a detail that is for the operator only).
    """

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(BridgeError):
    status = 400


class Unauthorized(BridgeError):
    status = 401


class NotFound(BridgeError):
    status = 404


class Gone(BridgeError):
    status = 410


class UnsupportedMediaType(BridgeError):
    status = 415


class PayloadTooLarge(BridgeError):
    status = 413


class ServiceUnavailable(BridgeError):
    """The bridge itself cannot serve right now (database down, backend not installed)."""

    status = 503


class StorageUnavailable(ServiceUnavailable):
    """The database or the vault failed. Every storage failure is one of these, so each surface answers
    it as it answers any BridgeError (a 503 in JSON or on a page) without knowing the storage layer;
    the detail (driver, host) goes to the log only."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.message = "the bridge's database is unavailable; please try again"


class BackendError(BridgeError):
    """The vendor refused or failed the call; the message says what the user should do.

    ``transient`` says whether the same call could succeed later unchanged (an outage,
    a timeout, a vendor's own failure) or the vendor refused it (then only a person
    fixing something helps): the outbox retries the first kind only.
    """

    status = 502
    transient = False


class VendorFailed(BackendError):
    """The vendor failed the call itself (a 5xx, an answer it should not have given): worth trying again."""

    transient = True


class BackendUnavailable(BackendError):
    """The vendor could not be reached or asked us to come back later."""

    status = 503
    transient = True


class BackendTimeout(BackendError):
    """The vendor did not answer in time."""

    status = 504
    transient = True


class ConfigError(Exception):
    """The configuration is wrong; ``problems`` lists each one as ``where: what``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
