"""Access tokens for Zoom's API: one shared Server-to-Server token, or each user's own OAuth tokens.

Both are refreshed once, however many requests or replicas need a new one at
the same moment: requests of one process that need the same token while it is
being fetched wait for that fetch and share it (``SingleFlight``), and the fetch
runs inside the credential store's lock (``CredentialStore.locked``), which
re-reads the stored value first, so a token another replica got meanwhile is
used instead of asking Zoom again.

- ``AccountTokens``: ``grant_type=account_credentials`` with the app's account
  id; the token (one hour) is kept encrypted in ``ctx.shared`` for the whole
  company and reused until shortly before it expires.
- ``UserTokens``: the authorization-code grant through the settings page, kept
  in ``ctx.credentials`` (this user and backend only). Zoom rotates refresh
  tokens, so the new pair is written as one value; a refresh Zoom refuses with
  ``invalid_grant`` marks the connection as needing a reconnect, in the same
  locked write.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Protocol
from urllib.parse import urlencode

import httpx

from bridge.plugin import BackendContext, BackendError, LockedSecret, SingleFlight, basic_auth, raise_for_vendor

from .errors import TITLE, json_object

log = logging.getLogger(__name__)

REFRESH_MARGIN_SECONDS = 300
"""A token this close to its expiry is replaced before use."""

ACCOUNT_TOKEN = "account_token"
USER_TOKENS = "oauth_tokens"
SETTINGS_PAGE = "the bridge's settings page"


class TokenRefused(Exception):
    """Zoom's token endpoint refused the grant (an OAuth ``error`` such as ``invalid_grant``)."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(f"{error}: {reason}")
        self.error = error
        self.reason = reason


@dataclass(frozen=True)
class TokenAnswer:
    access_token: str
    expires_at: float
    refresh_token: str | None = None


class ZoomOAuth:
    """Zoom's OAuth server (``{oauth_base}/oauth/...``) for one app."""

    def __init__(self, base: str, client_id: str, client_secret: str) -> None:
        self.base = base
        self.client_id = client_id
        self._client_secret = client_secret

    def authorize_url(self, redirect_uri: str, state: str) -> str:
        query = urlencode({"response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri,
                           "state": state})
        return f"{self.base}/oauth/authorize?{query}"

    async def token(self, http: httpx.AsyncClient, grant: dict[str, str]) -> TokenAnswer:
        """POST ``/oauth/token`` with the app's Basic credentials; raise TokenRefused for a refused grant."""
        response = await http.post(f"{self.base}/oauth/token", data=grant,
                                   headers=basic_auth(self.client_id, self._client_secret))
        raise_for_vendor(response, TITLE)
        body = json_object(response)
        if response.status_code in (400, 401):
            raise TokenRefused(str(body.get("error") or "refused"), str(body.get("reason") or "")[:200])
        access_token, expires_in = body.get("access_token"), body.get("expires_in")
        if response.status_code != 200 or not isinstance(access_token, str) or not access_token \
                or not isinstance(expires_in, int | float):
            raise BackendError(f"Zoom's token endpoint gave no usable answer (HTTP {response.status_code})")
        refresh_token = body.get("refresh_token")
        return TokenAnswer(access_token, time.time() + float(expires_in),
                           refresh_token if isinstance(refresh_token, str) and refresh_token else None)


class TokenSource(Protocol):
    async def access_token(self, ctx: BackendContext, stale: str | None = None) -> str:
        """A fresh access token; ``stale`` is one Zoom just refused, which is replaced even if it looks fresh."""
        ...


def _fresh(expires_at: float) -> bool:
    return expires_at - REFRESH_MARGIN_SECONDS > time.time()


# --- Server-to-Server OAuth: one token for the company ------------------------------------

class AccountTokens:
    def __init__(self, oauth: ZoomOAuth, account_id: str) -> None:
        self.oauth = oauth
        self.account_id = account_id
        self._fetching: SingleFlight[str] = SingleFlight()

    async def access_token(self, ctx: BackendContext, stale: str | None = None) -> str:
        """A fresh token; ``stale`` is one Zoom just refused, which is replaced even if it looks fresh."""
        token = self._usable(await ctx.shared.get(ACCOUNT_TOKEN), stale)
        if token is not None:
            return token
        return await self._fetching.run(stale, lambda: self._locked_fetch(ctx, stale))

    async def _locked_fetch(self, ctx: BackendContext, stale: str | None) -> str:
        async with ctx.shared.locked(ACCOUNT_TOKEN) as locked:
            token = self._usable(locked.value, stale)
            if token is None:
                token = await self._fetch(ctx, locked)
        return token

    async def _fetch(self, ctx: BackendContext, locked: LockedSecret) -> str:
        try:
            answer = await self.oauth.token(ctx.http, {"grant_type": "account_credentials",
                                                       "account_id": self.account_id})
        except TokenRefused as exc:
            raise BackendError(f"Zoom refused the bridge's Server-to-Server OAuth credentials "
                               f"({exc.reason or exc.error}); check client_id, client_secret and account_id in "
                               "[backends.zoom] and that the app is activated in the Zoom App Marketplace") from None
        locked.replace(json.dumps({"access_token": answer.access_token, "expires_at": answer.expires_at,
                                   "client_id": self.oauth.client_id}))
        log.info("zoom account token fetched")
        return answer.access_token

    def _usable(self, stored: str | None, stale: str | None) -> str | None:
        try:
            record = json.loads(stored) if stored else None
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("client_id") != self.oauth.client_id:
            return None  # none yet, or one of another Zoom app (the config changed)
        token, expires_at = record.get("access_token"), record.get("expires_at")
        if not isinstance(token, str) or not isinstance(expires_at, int | float):
            return None
        return token if token != stale and _fresh(expires_at) else None


# --- user OAuth: each user's own Zoom account ---------------------------------------------

@dataclass(frozen=True)
class UserConnection:
    """What is kept for a user's connected Zoom account, as one secret."""

    access_token: str
    refresh_token: str
    expires_at: float
    needs_reconnect: bool = False
    settings_url: str = ""

    def dump(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def load(cls, stored: str | None) -> UserConnection | None:
        try:
            record = json.loads(stored) if stored else None
            return cls(**record) if isinstance(record, dict) else None
        except (ValueError, TypeError):
            return None

    def usable(self, stale: str | None) -> bool:
        return self.access_token != stale and _fresh(self.expires_at)


def settings_url_of(callback_url: str, backend: str) -> str:
    """The settings page the connect flow started from (its callback is ``…/connect/<backend>/callback``)."""
    tail = f"/connect/{backend}/callback"
    return callback_url[:-len(tail)] if callback_url.endswith(tail) else ""


class UserTokens:
    def __init__(self, oauth: ZoomOAuth) -> None:
        self.oauth = oauth
        self._refreshing: SingleFlight[str] = SingleFlight()

    async def connect(self, ctx: BackendContext, code: str, callback_url: str, settings_url: str) -> None:
        try:
            answer = await self.oauth.token(ctx.http, {"grant_type": "authorization_code", "code": code,
                                                       "redirect_uri": callback_url})
        except TokenRefused as exc:
            raise BackendError(f"Zoom did not accept the sign-in ({exc.reason or exc.error}); please connect "
                               "Zoom again") from None
        if answer.refresh_token is None:
            raise BackendError("Zoom's sign-in gave no refresh token; please connect Zoom again")
        connection = UserConnection(answer.access_token, answer.refresh_token, answer.expires_at,
                                    settings_url=settings_url)
        async with ctx.credentials.locked(USER_TOKENS) as locked:
            locked.replace(connection.dump())

    async def is_connected(self, ctx: BackendContext) -> bool:
        connection = UserConnection.load(await ctx.credentials.get(USER_TOKENS))
        return connection is not None and not connection.needs_reconnect

    async def access_token(self, ctx: BackendContext, stale: str | None = None) -> str:
        """The user's fresh token; ``stale`` is one Zoom just refused, which is replaced even if it looks fresh."""
        connection = _connected(UserConnection.load(await ctx.credentials.get(USER_TOKENS)))
        if connection.usable(stale):
            return connection.access_token
        return await self._refreshing.run((ctx.user.link_id, stale), lambda: self._locked_refresh(ctx, stale))

    async def _locked_refresh(self, ctx: BackendContext, stale: str | None) -> str:
        async with ctx.credentials.locked(USER_TOKENS) as locked:
            connection = _connected(UserConnection.load(locked.value))
            if connection.usable(stale):
                return connection.access_token  # another task or replica refreshed meanwhile
            refreshed = await self._refresh(ctx, connection)
            locked.replace(refreshed.dump())  # written even when refused: the reconnect flag must stick
        return _connected(refreshed).access_token

    async def _refresh(self, ctx: BackendContext, connection: UserConnection) -> UserConnection:
        try:
            answer = await self.oauth.token(ctx.http, {"grant_type": "refresh_token",
                                                       "refresh_token": connection.refresh_token})
        except TokenRefused as exc:
            if exc.error != "invalid_grant":
                raise BackendError(f"Zoom refused to renew your Zoom connection ({exc.reason or exc.error}); "
                                   "please try again") from None
            log.warning("zoom refused a refresh token: the user has to reconnect Zoom")
            return replace(connection, needs_reconnect=True)
        # Zoom rotates refresh tokens: the old one is spent, so keep the new one with its access token
        return replace(connection, access_token=answer.access_token, expires_at=answer.expires_at,
                       refresh_token=answer.refresh_token or connection.refresh_token)


def _connected(connection: UserConnection | None) -> UserConnection:
    if connection is None:
        raise BackendError(f"connect your Zoom account first: open {SETTINGS_PAGE}, sign in with Pipedrive and "
                           "click Connect next to Zoom")
    if connection.needs_reconnect:
        where = connection.settings_url or SETTINGS_PAGE
        raise BackendError(f"Zoom no longer accepts your connection (it was revoked or has expired): reconnect "
                           f"Zoom on {where}")
    return connection
