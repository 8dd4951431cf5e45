"""Tokens for Microsoft Graph from the Microsoft identity platform, kept with the core's ``TokenKeeper``.

- ``AppTokens``: the client-credentials grant (``scope=https://graph.microsoft.com/.default``)
  with the app's client secret or a certificate's signed client assertion. One token
  (about an hour) for the whole company, encrypted in ``ctx.shared`` and reused by every replica.
- ``UserTokens``: the authorization-code grant through the settings page, in
  ``ctx.credentials`` (this user and backend only). Microsoft rotates refresh tokens on
  use, so each answer's pair is stored as one value; ``invalid_grant`` (expired, revoked,
  password changed) is recorded as refused, and the user is asked to reconnect.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Protocol
from urllib.parse import quote, urlencode

import httpx
import jwt

from bridge.plugin import (
    BackendContext,
    BackendError,
    GrantRefused,
    Token,
    TokenAnswer,
    TokenKeeper,
    TokenRefused,
    token_answer,
)

from .errors import app_credentials_message, is_invalid_token, sign_in_error
from .settings import TeamsSettings

log = logging.getLogger(__name__)

REFRESH_MARGIN_SECONDS = 300
"""A token this close to its expiry is replaced before use."""
GRAPH_DEFAULT_SCOPE = "https://graph.microsoft.com/.default"
DELEGATED_SCOPES = "https://graph.microsoft.com/OnlineMeetings.ReadWrite offline_access"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 600
APP_TOKEN = "app_token"
USER_TOKENS = "oauth_tokens"
SETTINGS_PAGE = "the bridge's settings page"


class MicrosoftLogin:
    """The identity platform's v2.0 endpoints of one tenant, for one app registration."""

    def __init__(self, settings: TeamsSettings) -> None:
        self.settings = settings
        self.client_id = settings.client_id
        base = f"{settings.login_base}/{quote(settings.tenant_id, safe='')}/oauth2/v2.0"
        self.token_url = f"{base}/token"
        self.authorize_base = f"{base}/authorize"

    def authorize_url(self, redirect_uri: str, state: str) -> str:
        query = urlencode(
            {
                "client_id": self.client_id,
                "response_type": "code",
                "redirect_uri": redirect_uri,
                "response_mode": "query",
                "scope": DELEGATED_SCOPES,
                "state": state,
            }
        )
        return f"{self.authorize_base}?{query}"

    def _credential(self) -> dict[str, str]:
        """The app's proof of identity: its secret, or a client assertion signed with its certificate's key."""
        certificate = self.settings.certificate
        if certificate is None:
            return {"client_secret": self.settings.client_secret or ""}
        now = int(time.time())
        claims = {
            "aud": self.token_url,
            "iss": self.client_id,
            "sub": self.client_id,
            "jti": str(uuid.uuid4()),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_SECONDS,
        }
        headers = {"x5t": certificate.x5t, "x5t#S256": certificate.x5t_s256}
        assertion = jwt.encode(claims, certificate.private_key, algorithm="RS256", headers=headers)
        return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}

    async def token(self, http: httpx.AsyncClient, grant: dict[str, str]) -> TokenAnswer:
        """POST the grant to the token endpoint; raise GrantRefused for a refused grant."""
        form = {"client_id": self.client_id, **grant, **self._credential()}
        response = await http.post(self.token_url, data=form)
        return token_answer(response, "Microsoft")


class TokenSource(Protocol):
    def auth(self, ctx: BackendContext) -> httpx.Auth:
        """Bearer authentication for one Graph call, replacing a token Graph refuses (401) once."""
        ...

    async def refused(self, ctx: BackendContext) -> BackendError:
        """What to tell the user when the grant was refused for good (``TokenRefused``)."""
        ...


# --- client credentials: one token for the company ---------------------------------------


class AppTokens:
    def __init__(self, login: MicrosoftLogin) -> None:
        self.login = login
        owner = f"{login.settings.tenant_id}/{login.client_id}"
        # a token of another app or tenant (the config changed) is not this app's: fetch one
        self.keeper = TokenKeeper(
            APP_TOKEN, margin_seconds=REFRESH_MARGIN_SECONDS, usable=lambda token: token.extra.get("app") == owner
        )
        self.owner = owner

    def auth(self, ctx: BackendContext) -> httpx.Auth:
        return self.keeper.auth(ctx.shared, lambda _stored: self._fetch(ctx), refused=is_invalid_token)

    async def _fetch(self, ctx: BackendContext) -> Token:
        try:
            answer = await self.login.token(
                ctx.http, {"grant_type": "client_credentials", "scope": GRAPH_DEFAULT_SCOPE}
            )
        except GrantRefused as exc:
            raise BackendError(app_credentials_message_of(exc)) from None
        log.info("microsoft graph app token fetched")
        return Token(answer.access_token, answer.expires_at, extra={"app": self.owner})

    async def refused(self, ctx: BackendContext) -> BackendError:
        return BackendError("Microsoft refused the bridge's app token; please try again")


def _said(exc: GrantRefused) -> str:
    """What Microsoft said, without the trace and correlation ids it adds on further lines."""
    return sign_in_error(exc.body).first_line or exc.error


def app_credentials_message_of(exc: GrantRefused) -> str:
    return app_credentials_message(sign_in_error(exc.body))


# --- authorization code: each user's own Microsoft account -------------------------------


def settings_url_of(callback_url: str, backend: str) -> str:
    """The settings page the connect flow started from (its callback is ``…/connect/<backend>/callback``)."""
    tail = f"/connect/{backend}/callback"
    return callback_url[: -len(tail)] if callback_url.endswith(tail) else ""


class UserTokens:
    """A connected user's tokens: one ``Token`` with the settings page it was connected from in ``extra``."""

    def __init__(self, login: MicrosoftLogin) -> None:
        self.login = login
        self.keeper = TokenKeeper(USER_TOKENS, margin_seconds=REFRESH_MARGIN_SECONDS)

    async def connect(self, ctx: BackendContext, code: str, callback_url: str, settings_url: str) -> None:
        try:
            answer = await self.login.token(
                ctx.http,
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": callback_url,
                    "scope": DELEGATED_SCOPES,
                },
            )
        except GrantRefused as exc:
            raise BackendError(
                f"Microsoft did not accept the sign-in ({_said(exc)}); please connect Teams again"
            ) from None
        if answer.refresh_token is None:
            raise BackendError(
                "Microsoft's sign-in gave no refresh token (the app must be allowed offline_access); "
                "please connect Teams again"
            )
        token = Token(
            answer.access_token, answer.expires_at, answer.refresh_token, extra={"settings_url": settings_url}
        )
        await ctx.credentials.set(USER_TOKENS, token.dump())

    async def is_connected(self, ctx: BackendContext) -> bool:
        token = await self.keeper.stored(ctx.credentials)
        return token is not None and not token.refused

    def auth(self, ctx: BackendContext) -> httpx.Auth:
        return self.keeper.auth(
            ctx.credentials, lambda stored: self._refresh(ctx, stored), key=ctx.user.link_id, refused=is_invalid_token
        )

    async def _refresh(self, ctx: BackendContext, stored: Token | None) -> Token:
        if stored is None or stored.refresh_token is None:
            raise BackendError(
                f"connect your Microsoft account first: open {SETTINGS_PAGE}, sign in with Pipedrive "
                "and click Connect next to Microsoft Teams"
            )
        try:
            answer = await self.login.token(
                ctx.http,
                {"grant_type": "refresh_token", "refresh_token": stored.refresh_token, "scope": DELEGATED_SCOPES},
            )
        except GrantRefused as exc:
            if exc.error != "invalid_grant":
                raise BackendError(
                    f"Microsoft refused to renew your Teams connection ({_said(exc)}); please try again"
                ) from None
            log.warning("microsoft refused a refresh token: the user has to reconnect Teams")
            raise TokenRefused("Microsoft refused the refresh token") from None
        # Microsoft hands out a new refresh token with each answer: keep the new pair together
        return Token(
            answer.access_token, answer.expires_at, answer.refresh_token or stored.refresh_token, extra=stored.extra
        )

    async def refused(self, ctx: BackendContext) -> BackendError:
        stored = await self.keeper.stored(ctx.credentials)
        where = str(stored.extra.get("settings_url") or "") if stored is not None else ""
        return BackendError(
            "Microsoft no longer accepts your Teams connection (it was revoked or has expired): reconnect "
            f"Microsoft Teams on {where or SETTINGS_PAGE}"
        )
