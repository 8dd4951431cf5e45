"""The token-refresh primitive: one access token kept fresh, refreshed once, however many callers and replicas.

Pipedrive's tokens and every plugin's vendor tokens go through :class:`TokenKeeper`:

1. the stored token is used while it is fresh (``margin_seconds`` before it expires);
2. callers of this process that find it due at the same moment share one refresh
   (:class:`~bridge.vendors.singleflight.SingleFlight`);
3. across replicas the refresh runs under a short **lease** on the token's name,
   taken and released in transactions of their own: no database transaction or
   lock is held while the token endpoint answers, so on SQLite nobody else's write
   waits for it, and a killed holder's lease simply expires;
4. after taking the lease the token is read again: another replica may have refreshed it;
5. the new token is written with **compare-and-swap** against the value the refresh
   started from, so a refresh finishing late never brings back an erased (uninstalled)
   or replaced (re-installed) token;
6. a refresh the issuer refuses for good (``invalid_grant``) is recorded as a
   *refused* marker in the same compare-and-swap, so no caller here or on another
   replica asks again, and the caller learns it as :class:`TokenRefused`.

:class:`TokenAuth` offers the same to plugins as an ``httpx.Auth`` flow: it attaches
the token and, when the vendor refuses it (a 401), refreshes once and sends again.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import httpx

from bridge.errors import BackendError
from bridge.vendors.http import raise_for_vendor
from bridge.vendors.singleflight import SingleFlight

LEASE_SECONDS = 60.0
"""How long a refresh may hold a token's lease; longer than any token request is allowed to take."""

_FIELDS = ("access_token", "expires_at", "refresh_token", "refused")


@dataclass(frozen=True)
class Token:
    """An access token, the refresh token that renews it (when the grant has one), and what else the issuer said.

    Stored as one JSON object: the fields below, plus ``extra``'s keys beside them.
    """

    access_token: str
    expires_at: float  # epoch seconds
    refresh_token: str | None = None
    refused: bool = False
    """The issuer refused ``refresh_token`` for good: only a new sign-in (install, connect) helps."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def fresh(self, margin_seconds: float, now: float | None = None) -> bool:
        return not self.refused and self.expires_at - margin_seconds > (time.time() if now is None else now)

    def dump(self) -> str:
        record = {
            **self.extra,
            "access_token": self.access_token,
            "expires_at": self.expires_at,
            "refresh_token": self.refresh_token,
            "refused": self.refused,
        }
        return json.dumps(record)

    @classmethod
    def load(cls, stored: str | None) -> Token | None:
        """The token in a stored value; None for nothing stored or a value that is not a token."""
        try:
            record = json.loads(stored) if stored else None
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None
        access_token, expires_at = record.get("access_token"), record.get("expires_at")
        refresh_token = record.get("refresh_token")
        if (
            not isinstance(access_token, str)
            or isinstance(expires_at, bool)
            or not isinstance(expires_at, int | float)
            or not isinstance(refresh_token, str | None)
        ):
            return None
        # ``needs_reconnect`` is how the Zoom plugin's first release stored the refused marker
        refused = bool(record.get("refused") or record.pop("needs_reconnect", False))
        extra = {key: value for key, value in record.items() if key not in _FIELDS}
        return cls(access_token, float(expires_at), refresh_token or None, refused, extra)


class TokenRefused(Exception):
    """The issuer refused the grant for good (OAuth ``invalid_grant``): the user has to sign in again.

    A refresh function raises it; :meth:`TokenKeeper.token` records the refusal and raises
    it again, to this caller and to every later one, without asking the issuer again.
    """


class TokenStore(Protocol):
    """Where a token lives: encrypted, scoped storage with a lease and compare-and-swap.

    ``bridge.plugin.CredentialStore`` (``ctx.credentials``, ``ctx.shared``) is one.
    """

    async def get(self, name: str) -> str | None: ...

    def lease(self, name: str, seconds: float) -> AbstractAsyncContextManager[None]:
        """Hold ``name`` exclusively across replicas for at most ``seconds`` (waiting for another holder)."""
        ...

    async def swap(self, name: str, expected: str | None, new: str) -> bool:
        """Write ``new`` only if the stored value is still ``expected``; whether it was written."""
        ...

    def count_refresh(self, outcome: str) -> None:
        """Count one refresh by its outcome (``ok``, ``refused``, ``error``) in the bridge's metrics."""
        ...


Refresh = Callable[[Token | None], Awaitable[Token]]
"""Get a new token from the issuer, given the stored one (None when there is none yet).

Raise :class:`TokenRefused` for a refused grant, or the plugin's own error (say, "connect
your account first" when there is no token and the grant needs one).
"""


class TokenKeeper:
    """One kind of token (Pipedrive's, a vendor's account or user token): fresh, refreshed once.

    ``usable`` may reject a stored token that is fresh but no longer fits (issued to another
    app, say), so that it is replaced.
    """

    def __init__(
        self,
        name: str,
        *,
        margin_seconds: float = 300.0,
        lease_seconds: float = LEASE_SECONDS,
        usable: Callable[[Token], bool] | None = None,
    ) -> None:
        self.name = name
        self.margin = margin_seconds
        self.lease_seconds = lease_seconds
        self._usable = usable
        self._flights: SingleFlight[Token] = SingleFlight()

    def usable(self, token: Token | None, stale: str | None = None) -> bool:
        """Fresh, not refused, not the ``stale`` access token the vendor just refused, and accepted."""
        return (
            token is not None
            and token.fresh(self.margin)
            and token.access_token != stale
            and (self._usable is None or self._usable(token))
        )

    async def stored(self, store: TokenStore) -> Token | None:
        return Token.load(await store.get(self.name))

    async def token(
        self, store: TokenStore, refresh: Refresh, *, stale: str | None = None, key: object = None
    ) -> Token:
        """A usable token from ``store``, renewed with ``refresh`` when due; ``stale`` is an access token the
        vendor just refused, replaced even if it looks fresh.

        Callers with the same store scope (``store.scope``; ``key`` when given) and the same
        ``stale`` share one refresh, so one keeper serves every user's store safely.
        """
        current = await self.stored(store)
        if self.usable(current, stale):
            assert current is not None
            return current
        if current is not None and current.refused:
            raise TokenRefused(f"{self.name} was refused")
        flight = (key if key is not None else getattr(store, "scope", id(store)), stale)
        return await self._flights.run(flight, lambda: self._renew(store, refresh, stale))

    async def _renew(self, store: TokenStore, refresh: Refresh, stale: str | None) -> Token:
        async with store.lease(self.name, self.lease_seconds):
            for _ in range(3):  # a lost compare-and-swap means someone else wrote: look again
                raw = await store.get(self.name)
                current = Token.load(raw)
                if self.usable(current, stale):
                    assert current is not None
                    return current  # refreshed meanwhile, by another task or replica
                if current is not None and current.refused:
                    raise TokenRefused(f"{self.name} was refused")
                try:
                    new = await refresh(current)
                except TokenRefused:
                    store.count_refresh("refused")
                    if current is None or await store.swap(self.name, raw, replace(current, refused=True).dump()):
                        raise
                    continue  # the value changed meanwhile (a re-install, an erase): look again
                except Exception:
                    store.count_refresh("error")
                    raise
                store.count_refresh("ok")
                if await store.swap(self.name, raw, new.dump()):
                    return new
                stale = None  # the value changed under us: what is stored now decides
        raise TokenRefused(f"{self.name} keeps changing while it is refreshed")

    def auth(
        self,
        store: TokenStore,
        refresh: Refresh,
        *,
        key: object = None,
        refused: Callable[[httpx.Response], bool] | None = None,
    ) -> TokenAuth:
        """An ``httpx.Auth`` for one request with this keeper's token (see :class:`TokenAuth`)."""
        return TokenAuth(self, store, refresh, key=key, refused=refused)


def _unauthorized(response: httpx.Response) -> bool:
    return response.status_code == 401


class TokenAuth(httpx.Auth):
    """Bearer authentication with a kept token: on an answer ``refused`` says is a refused token
    (default: 401), the token is replaced once and the request sent once more."""

    requires_response_body = True  # ``refused`` may read the vendor's error body

    def __init__(
        self,
        keeper: TokenKeeper,
        store: TokenStore,
        refresh: Refresh,
        *,
        key: object = None,
        refused: Callable[[httpx.Response], bool] | None = None,
    ) -> None:
        self.keeper = keeper
        self.store = store
        self.refresh = refresh
        self.key = key
        self.refused = refused or _unauthorized

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.keeper.token(self.store, self.refresh, key=self.key)
        request.headers["Authorization"] = f"Bearer {token.access_token}"
        response = yield request
        if self.refused(response):
            token = await self.keeper.token(self.store, self.refresh, stale=token.access_token, key=self.key)
            request.headers["Authorization"] = f"Bearer {token.access_token}"
            yield request


# --- an OAuth token endpoint's answer ----------------------------------------------------------


class GrantRefused(Exception):
    """The token endpoint refused the grant: an OAuth error answer (``invalid_grant``, ``invalid_client``...).

    ``description`` is the issuer's ``error_description`` (Zoom's ``reason``), cut to 200 characters;
    ``body`` the whole answer, for issuers with more to read (Microsoft's ``error_codes``)."""

    def __init__(self, error: str, description: str, body: Mapping[str, Any]) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.body = body


@dataclass(frozen=True)
class TokenAnswer:
    """A token endpoint's success: the access token, when it expires (epoch seconds), the refresh token if any."""

    access_token: str
    expires_at: float
    refresh_token: str | None = None


def token_answer(response: httpx.Response, issuer: str) -> TokenAnswer:
    """Read an OAuth token endpoint's answer (RFC 6749 5.1 and 5.2).

    Throttling and server errors are the core's (``raise_for_vendor``); a 4xx with an ``error``
    raises :class:`GrantRefused`; an answer without a usable token is a ``BackendError`` naming ``issuer``.
    ``expires_in`` may be a number or digits in a string (Microsoft's v1 endpoints send it so)."""
    raise_for_vendor(response, issuer)
    try:
        parsed = response.json()
    except ValueError:
        parsed = None
    body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    error = body.get("error")
    if 400 <= response.status_code < 500 and isinstance(error, str) and error:
        description = body.get("error_description") or body.get("reason")
        text = description.strip()[:200] if isinstance(description, str) else ""
        raise GrantRefused(error, text, body)
    access_token, expires_in = body.get("access_token"), body.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)
    if (
        response.status_code != 200
        or not isinstance(access_token, str)
        or not access_token
        or isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
    ):
        raise BackendError(f"{issuer}'s token endpoint gave no usable answer (HTTP {response.status_code})")
    refresh_token = body.get("refresh_token")
    return TokenAnswer(
        access_token,
        time.time() + float(expires_in),
        refresh_token if isinstance(refresh_token, str) and refresh_token else None,
    )
