"""Access tokens for Zoom's API: one shared Server-to-Server token, or each user's own OAuth tokens.

Both are kept by the core's token primitive (``bridge.plugin.TokenKeeper``): a
token is fetched once, however many requests or replicas need a new one at the
same moment (one fetch per process, a lease across replicas, the stored value
read again under it), and written with compare-and-swap. API calls carry it
through ``TokenKeeper.auth``, which replaces a token Zoom calls invalid once.

- ``AccountTokens``: ``grant_type=account_credentials`` with the app's account
  id; the token (one hour) is kept encrypted in ``ctx.shared`` for the whole
  company and reused until shortly before it expires.
- ``UserTokens``: the authorization-code grant through the settings page, kept
  in ``ctx.credentials`` (this user and backend only). Zoom rotates refresh
  tokens, so the new pair is written as one value; a refresh Zoom refuses with
  ``invalid_grant`` is recorded as refused, so the user is asked to reconnect.
"""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import urlencode

import httpx

from bridge.plugin import (
    BackendContext,
    BackendError,
    GrantRefused,
    Token,
    TokenAnswer,
    TokenKeeper,
    TokenRefused,
    basic_auth,
    token_answer,
)

from .errors import TITLE, is_invalid_token

log = logging.getLogger(__name__)

REFRESH_MARGIN_SECONDS = 300
"""A token this close to its expiry is replaced before use."""

ACCOUNT_TOKEN = "account_token"
USER_TOKENS = "oauth_tokens"
SETTINGS_PAGE = "the bridge's settings page"


class ZoomOAuth:
    """Zoom's OAuth server (``{oauth_base}/oauth/...``) for one app."""

    def __init__(self, base: str, client_id: str, client_secret: str) -> None:
        self.base = base
        self.client_id = client_id
        self._client_secret = client_secret

    def authorize_url(self, redirect_uri: str, state: str) -> str:
        query = urlencode(
            {"response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_uri, "state": state}
        )
        return f"{self.base}/oauth/authorize?{query}"

    async def token(self, http: httpx.AsyncClient, grant: dict[str, str]) -> TokenAnswer:
        """POST ``/oauth/token`` with the app's Basic credentials; raise GrantRefused for a refused grant."""
        response = await http.post(
            f"{self.base}/oauth/token", data=grant, headers=basic_auth(self.client_id, self._client_secret)
        )
        return token_answer(response, TITLE)


class TokenSource(Protocol):
    async def access_token(self, ctx: BackendContext, stale: str | None = None) -> str:
        """A fresh access token; ``stale`` is one Zoom just refused, which is replaced even if it looks fresh."""
        ...

    def auth(self, ctx: BackendContext) -> httpx.Auth:
        """Bearer authentication for one API call, replacing a token Zoom calls invalid (401, code 124) once."""
        ...

    async def refused(self, ctx: BackendContext) -> BackendError:
        """What to tell the user when Zoom refused the token's grant for good (``TokenRefused``)."""
        ...


# --- Server-to-Server OAuth: one token for the company ------------------------------------


class AccountTokens:
    def __init__(self, oauth: ZoomOAuth, account_id: str) -> None:
        self.oauth = oauth
        self.account_id = account_id
        # a token of another Zoom app (the config changed) is not this app's: fetch one
        self.keeper = TokenKeeper(
            ACCOUNT_TOKEN,
            margin_seconds=REFRESH_MARGIN_SECONDS,
            usable=lambda token: token.extra.get("client_id") == oauth.client_id,
        )

    async def access_token(self, ctx: BackendContext, stale: str | None = None) -> str:
        token = await self.keeper.token(ctx.shared, lambda _stored: self._fetch(ctx), stale=stale)
        return token.access_token

    def auth(self, ctx: BackendContext) -> httpx.Auth:
        return self.keeper.auth(ctx.shared, lambda _stored: self._fetch(ctx), refused=is_invalid_token)

    async def _fetch(self, ctx: BackendContext) -> Token:
        try:
            answer = await self.oauth.token(
                ctx.http, {"grant_type": "account_credentials", "account_id": self.account_id}
            )
        except GrantRefused as exc:
            raise BackendError(
                f"Zoom refused the bridge's Server-to-Server OAuth credentials "
                f"({exc.description or exc.error}); check client_id, client_secret and account_id in "
                "[backends.zoom] and that the app is activated in the Zoom App Marketplace"
            ) from None
        log.info("zoom account token fetched")
        return Token(answer.access_token, answer.expires_at, extra={"client_id": self.oauth.client_id})

    async def refused(self, ctx: BackendContext) -> BackendError:
        return BackendError("Zoom refused the bridge's Server-to-Server OAuth token; please try again")


# --- user OAuth: each user's own Zoom account ---------------------------------------------


def settings_url_of(callback_url: str, backend: str) -> str:
    """The settings page the connect flow started from (its callback is ``…/connect/<backend>/callback``)."""
    tail = f"/connect/{backend}/callback"
    return callback_url[: -len(tail)] if callback_url.endswith(tail) else ""


class UserTokens:
    """A connected user's tokens: one ``Token`` with the settings page it was connected from in ``extra``."""

    def __init__(self, oauth: ZoomOAuth) -> None:
        self.oauth = oauth
        self.keeper = TokenKeeper(USER_TOKENS, margin_seconds=REFRESH_MARGIN_SECONDS)

    async def connect(self, ctx: BackendContext, code: str, callback_url: str, settings_url: str) -> None:
        try:
            answer = await self.oauth.token(
                ctx.http, {"grant_type": "authorization_code", "code": code, "redirect_uri": callback_url}
            )
        except GrantRefused as exc:
            raise BackendError(
                f"Zoom did not accept the sign-in ({exc.description or exc.error}); please connect Zoom again"
            ) from None
        if answer.refresh_token is None:
            raise BackendError("Zoom's sign-in gave no refresh token; please connect Zoom again")
        token = Token(
            answer.access_token, answer.expires_at, answer.refresh_token, extra={"settings_url": settings_url}
        )
        await ctx.credentials.set(USER_TOKENS, token.dump())

    async def is_connected(self, ctx: BackendContext) -> bool:
        token = await self.keeper.stored(ctx.credentials)
        return token is not None and not token.refused

    async def access_token(self, ctx: BackendContext, stale: str | None = None) -> str:
        """The user's fresh token; ``stale`` is one Zoom just refused, which is replaced even if it looks fresh."""
        try:
            token = await self.keeper.token(
                ctx.credentials, lambda stored: self._refresh(ctx, stored), stale=stale, key=ctx.user.link_id
            )
        except TokenRefused:
            raise await self.refused(ctx) from None
        return token.access_token

    def auth(self, ctx: BackendContext) -> httpx.Auth:
        return self.keeper.auth(
            ctx.credentials, lambda stored: self._refresh(ctx, stored), key=ctx.user.link_id, refused=is_invalid_token
        )

    async def _refresh(self, ctx: BackendContext, stored: Token | None) -> Token:
        if stored is None or stored.refresh_token is None:
            raise BackendError(
                f"connect your Zoom account first: open {SETTINGS_PAGE}, sign in with Pipedrive "
                "and click Connect next to Zoom"
            )
        try:
            answer = await self.oauth.token(
                ctx.http, {"grant_type": "refresh_token", "refresh_token": stored.refresh_token}
            )
        except GrantRefused as exc:
            if exc.error != "invalid_grant":
                raise BackendError(
                    f"Zoom refused to renew your Zoom connection ({exc.description or exc.error}); please try again"
                ) from None
            log.warning("zoom refused a refresh token: the user has to reconnect Zoom")
            raise TokenRefused("Zoom refused the refresh token") from None
        # Zoom rotates refresh tokens: the old one is spent, so keep the new one with its access token
        return Token(
            answer.access_token, answer.expires_at, answer.refresh_token or stored.refresh_token, extra=stored.extra
        )

    async def refused(self, ctx: BackendContext) -> BackendError:
        stored = await self.keeper.stored(ctx.credentials)
        where = str(stored.extra.get("settings_url") or "") if stored is not None else ""
        return BackendError(
            f"Zoom no longer accepts your connection (it was revoked or has expired): reconnect "
            f"Zoom on {where or SETTINGS_PAGE}"
        )
