"""Access tokens for the Calendar API: a service account acting for each user, or each user's own OAuth tokens.

Both are kept by the core's token primitive (``bridge.plugin.TokenKeeper``): fetched
once however many requests or replicas need one at the same moment, written with
compare-and-swap, and replaced once when Google answers 401.

- ``ServiceAccountTokens`` (``auth = "company"``): Google's JWT-bearer grant. The bridge
  signs a JWT (RS256, ``kid`` = the key's id) with the service account's private key,
  claiming ``iss`` = the account's e-mail, ``sub`` = the Workspace user it acts for,
  ``scope``, ``aud`` = the token endpoint, ``iat`` and ``exp`` (one hour at most), and
  posts it as ``assertion``. The token is the user's, so it is kept in
  ``ctx.credentials`` (this user's link and this backend only): it goes when the user
  uninstalls, and one user's token is never offered to another's calls. A stored token
  is used only if it was issued for this service account and this subject.
- ``UserTokens`` (``auth = "user"``): the authorization-code grant with offline access
  through the settings page, kept in ``ctx.credentials``. Google seldom returns a new
  refresh token on a refresh, so the old one is kept; ``invalid_grant`` marks the
  connection refused, and the user is asked to reconnect.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol
from urllib.parse import urlencode

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

from .settings import ServiceAccountKey

log = logging.getLogger(__name__)

SCOPE = "https://www.googleapis.com/auth/calendar.events"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_SECONDS = 3600
"""Google accepts an assertion valid for at most an hour."""
REFRESH_MARGIN_SECONDS = 300
SERVICE_ACCOUNT_TOKEN = "service_account_token"
USER_TOKENS = "oauth_tokens"
SETTINGS_PAGE = "the bridge's settings page"
TITLE = "Google"


class TokenEndpoint:
    """Google's token endpoint (``token_uri``)."""

    def __init__(self, token_uri: str) -> None:
        self.uri = token_uri

    async def token(self, http: httpx.AsyncClient, form: dict[str, str]) -> TokenAnswer:
        """POST the grant; raise GrantRefused for a refused one, BackendError for an answer without a token."""
        response = await http.post(self.uri, data=form)
        return token_answer(response, TITLE)


class TokenSource(Protocol):
    def auth(self, ctx: BackendContext, subject: str) -> httpx.Auth:
        """Bearer authentication for one API call acting for ``subject`` (ignored where the account is the user's)."""
        ...

    async def refused(self, ctx: BackendContext) -> BackendError:
        """What to tell the user when Google refused the token's grant for good (``TokenRefused``)."""
        ...


# --- a service account with domain-wide delegation ------------------------------------------------


class ServiceAccountTokens:
    def __init__(self, endpoint: TokenEndpoint, key: ServiceAccountKey) -> None:
        self.endpoint = endpoint
        self.key = key
        self._keepers: dict[str, TokenKeeper] = {}

    def keeper(self, subject: str) -> TokenKeeper:
        """The keeper of tokens for ``subject``: a stored token of another account or subject is replaced."""
        keeper = self._keepers.get(subject)
        if keeper is None:
            email = self.key.client_email
            keeper = self._keepers[subject] = TokenKeeper(
                SERVICE_ACCOUNT_TOKEN,
                margin_seconds=REFRESH_MARGIN_SECONDS,
                usable=lambda token: token.extra.get("client_email") == email and token.extra.get("subject") == subject,
            )
        return keeper

    def auth(self, ctx: BackendContext, subject: str) -> httpx.Auth:
        return self.keeper(subject).auth(
            ctx.credentials, lambda _stored: self._fetch(ctx, subject), key=(ctx.user.link_id, subject)
        )

    def assertion(self, subject: str, now: float | None = None) -> str:
        """The signed JWT the grant posts."""
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self.key.client_email,
            "sub": subject,
            "scope": SCOPE,
            "aud": self.endpoint.uri,
            "iat": issued,
            "exp": issued + ASSERTION_SECONDS,
        }
        return jwt.encode(claims, self.key.private_key, algorithm="RS256", headers={"kid": self.key.private_key_id})

    async def _fetch(self, ctx: BackendContext, subject: str) -> Token:
        try:
            answer = await self.endpoint.token(
                ctx.http, {"grant_type": JWT_BEARER, "assertion": self.assertion(subject)}
            )
        except GrantRefused as exc:
            raise self._refusal(exc, subject) from None
        log.info("google service account token fetched")
        return Token(
            answer.access_token,
            answer.expires_at,
            extra={"client_email": self.key.client_email, "subject": subject},
        )

    def _refusal(self, exc: GrantRefused, subject: str) -> BackendError:
        description = exc.description.lower()
        if exc.error == "unauthorized_client":
            client = f" (client ID {self.key.client_id})" if self.key.client_id else ""
            return BackendError(
                f"Google did not let the service account {self.key.client_email} act for {subject}: domain-wide "
                f"delegation is not granted for the scope {SCOPE}. In the Google Admin console (Security > Access "
                f"and data control > API controls > Domain-wide delegation), add the service account{client} "
                "with that scope; it can take some minutes to apply"
            )
        if exc.error == "invalid_grant" and "email or user id" in description:
            return BackendError(
                f"Google Workspace has no user {subject}: the Pipedrive user's e-mail must be their Google "
                "Workspace account in the organisation that granted the bridge domain-wide delegation"
            )
        if exc.error == "invalid_grant" and "signature" in description:
            return BackendError(
                "Google refused the service account's key (Invalid JWT Signature): it was deleted or disabled "
                "in the Google Cloud console, or the file is not the account's current key. Create a new JSON "
                "key and point service_account_file at it"
            )
        if exc.error == "invalid_grant" and ("timeframe" in description or "iat" in description):
            return BackendError(
                "Google refused the bridge's sign-in as out of date: check that the server's clock is right"
            )
        return BackendError(
            f"Google refused the service account's sign-in for {subject} ({exc.error}"
            f"{': ' + exc.description if exc.description else ''}); check service_account_file and the "
            "domain-wide delegation in the Google Admin console"
        )

    async def refused(self, ctx: BackendContext) -> BackendError:
        return BackendError("Google refused the service account's token; please try again")


# --- each user's own Google account ----------------------------------------------------------------


def settings_url_of(callback_url: str, backend: str) -> str:
    """The settings page the connect flow started from (its callback is ``…/connect/<backend>/callback``)."""
    tail = f"/connect/{backend}/callback"
    return callback_url[: -len(tail)] if callback_url.endswith(tail) else ""


class UserTokens:
    """A connected user's tokens: one ``Token`` with the settings page it was connected from in ``extra``."""

    def __init__(self, endpoint: TokenEndpoint, auth_base: str, client_id: str, client_secret: str) -> None:
        self.endpoint = endpoint
        self.auth_base = auth_base
        self.client_id = client_id
        self._client_secret = client_secret
        self.keeper = TokenKeeper(USER_TOKENS, margin_seconds=REFRESH_MARGIN_SECONDS)

    def authorize_url(self, redirect_uri: str, state: str) -> str:
        query = urlencode(
            {
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "response_type": "code",
                "scope": SCOPE,
                "access_type": "offline",  # a refresh token, for meetings made while the user is away
                "prompt": "consent",  # Google sends the refresh token only with a consent
                "state": state,
            }
        )
        return f"{self.auth_base}/o/oauth2/v2/auth?{query}"

    def _client(self) -> dict[str, str]:
        return {"client_id": self.client_id, "client_secret": self._client_secret}

    async def connect(self, ctx: BackendContext, code: str, callback_url: str, settings_url: str) -> None:
        try:
            answer = await self.endpoint.token(
                ctx.http,
                {"grant_type": "authorization_code", "code": code, "redirect_uri": callback_url, **self._client()},
            )
        except GrantRefused as exc:
            raise BackendError(
                f"Google did not accept the sign-in ({exc.description or exc.error}); please connect Google Meet again"
            ) from None
        if answer.refresh_token is None:
            raise BackendError("Google's sign-in gave no refresh token; please connect Google Meet again")
        token = Token(
            answer.access_token, answer.expires_at, answer.refresh_token, extra={"settings_url": settings_url}
        )
        await ctx.credentials.set(USER_TOKENS, token.dump())

    async def is_connected(self, ctx: BackendContext) -> bool:
        token = await self.keeper.stored(ctx.credentials)
        return token is not None and not token.refused

    def auth(self, ctx: BackendContext, subject: str) -> httpx.Auth:
        return self.keeper.auth(ctx.credentials, lambda stored: self._refresh(ctx, stored), key=ctx.user.link_id)

    async def _refresh(self, ctx: BackendContext, stored: Token | None) -> Token:
        if stored is None or stored.refresh_token is None:
            raise BackendError(
                f"connect your Google account first: open {SETTINGS_PAGE}, sign in with Pipedrive "
                "and click Connect next to Google Meet"
            )
        try:
            answer = await self.endpoint.token(
                ctx.http, {"grant_type": "refresh_token", "refresh_token": stored.refresh_token, **self._client()}
            )
        except GrantRefused as exc:
            if exc.error != "invalid_grant":
                raise BackendError(
                    f"Google refused to renew your Google connection ({exc.description or exc.error}); please try again"
                ) from None
            log.warning("google refused a refresh token: the user has to reconnect Google Meet")
            raise TokenRefused("Google refused the refresh token") from None
        # Google keeps the refresh token valid and seldom sends a new one: keep the old one then
        return Token(
            answer.access_token, answer.expires_at, answer.refresh_token or stored.refresh_token, extra=stored.extra
        )

    async def refused(self, ctx: BackendContext) -> BackendError:
        stored = await self.keeper.stored(ctx.credentials)
        where = str(stored.extra.get("settings_url") or "") if stored is not None else ""
        return BackendError(
            "Google no longer accepts your connection (it was revoked or has expired): reconnect "
            f"Google Meet on {where or SETTINGS_PAGE}"
        )
