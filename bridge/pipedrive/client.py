"""The Pipedrive client: OAuth token endpoint, the current user, user-provider links.

Every call Pipedrive's side of the install and uninstall flows needs, and the
one check that keeps the bridge's bearer tokens at home: ``api_domain`` from a
token answer is only accepted when it is ``https://<company>.pipedrive.com``
(or, for tests and staging, exactly the configured ``api_base``).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from bridge.config import PipedriveConfig

_PIPEDRIVE_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.pipedrive\.com$")


class PipedriveError(Exception):
    """Pipedrive refused or failed a call; ``step`` names which, for the user's error page."""

    def __init__(self, step: str, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step
        self.message = message
        self.status = status


class InvalidGrant(PipedriveError):
    """The code or refresh token is no longer valid: the user must install again."""


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    refresh_token: str
    expires_at: float  # epoch seconds
    scope: str
    api_domain: str
    refused: bool = False  # Pipedrive refused the refresh token: only a re-install helps

    def fresh(self, margin: float, now: float | None = None) -> bool:
        return self.expires_at - margin > (now if now is not None else time.time())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenSet:
        return cls(
            **{k: data[k] for k in ("access_token", "refresh_token", "expires_at", "scope", "api_domain")},
            refused=bool(data.get("refused", False)),
        )


@dataclass(frozen=True)
class PipedriveUser:
    id: int
    company_id: int
    name: str
    email: str


class PipedriveClient:
    def __init__(self, config: PipedriveConfig, http: httpx.AsyncClient) -> None:
        self.config = config
        self.http = http

    # --- OAuth ----------------------------------------------------------------------

    def authorize_url(self, redirect_uri: str, state: str) -> str:
        query = httpx.QueryParams({"client_id": self.config.client_id, "redirect_uri": redirect_uri, "state": state})
        return f"{self.config.oauth_base}/oauth/authorize?{query}"

    def _basic(self) -> httpx.BasicAuth:
        return httpx.BasicAuth(self.config.client_id, self.config.client_secret)

    async def exchange_code(self, code: str, redirect_uri: str) -> TokenSet:
        return await self._token(
            "exchange the authorization code",
            {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri},
        )

    async def refresh(self, refresh_token: str) -> TokenSet:
        return await self._token(
            "refresh the access token", {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    async def _token(self, step: str, form: dict[str, str]) -> TokenSet:
        try:
            response = await self.http.post(f"{self.config.oauth_base}/oauth/token", data=form, auth=self._basic())
        except httpx.HTTPError as exc:
            raise PipedriveError(
                step, f"Pipedrive's OAuth server could not be reached ({exc.__class__.__name__})"
            ) from exc
        body = _json(response)
        if response.status_code != 200:
            error = str(body.get("error", "")) if isinstance(body, dict) else ""
            if error == "invalid_grant" or (response.status_code in (400, 401) and "invalid_grant" in response.text):
                raise InvalidGrant(step, "Pipedrive no longer accepts this grant", status=response.status_code)
            raise PipedriveError(step, f"Pipedrive answered HTTP {response.status_code}", status=response.status_code)
        try:
            return TokenSet(
                access_token=_required_str(body, "access_token"),
                refresh_token=_required_str(body, "refresh_token"),
                expires_at=time.time() + float(body.get("expires_in", 3599)),
                scope=str(body.get("scope", "")),
                api_domain=self.check_api_domain(_required_str(body, "api_domain")),
            )
        except (TypeError, ValueError) as exc:
            raise PipedriveError(step, f"Pipedrive's token answer is unusable: {exc}") from None

    async def revoke(self, refresh_token: str) -> None:
        """RFC 7009 revocation of the refresh token (and with it the grant)."""
        step = "revoke the refresh token"
        try:
            response = await self.http.post(
                f"{self.config.oauth_base}/oauth/revoke",
                auth=self._basic(),
                data={"token": refresh_token, "token_type_hint": "refresh_token"},
            )
        except httpx.HTTPError as exc:
            raise PipedriveError(step, f"unreachable ({exc.__class__.__name__})") from exc
        if response.status_code not in (200, 204):
            raise PipedriveError(step, f"Pipedrive answered HTTP {response.status_code}", status=response.status_code)

    def check_api_domain(self, api_domain: str) -> str:
        """The api_domain if it is Pipedrive's (or the configured test base); else ValueError."""
        value = api_domain.rstrip("/")
        if self.config.api_base is not None:
            if value != self.config.api_base:
                raise ValueError(f"api_domain {value!r} is not the configured api_base")
            return value
        parts = urlsplit(value)
        if (
            parts.scheme != "https"
            or not _PIPEDRIVE_HOST.match(parts.hostname or "")
            or parts.port
            or parts.path
            or parts.query
            or parts.fragment
            or "@" in parts.netloc
        ):
            raise ValueError(f"api_domain {value!r} is not a Pipedrive domain")
        return value

    # --- API ------------------------------------------------------------------------

    async def _api(self, step: str, method: str, tokens: TokenSet, path: str, **kwargs: Any) -> httpx.Response:
        url = self.check_api_domain(tokens.api_domain) + path
        try:
            return await self.http.request(
                method, url, headers={"Authorization": f"Bearer {tokens.access_token}"}, **kwargs
            )
        except httpx.HTTPError as exc:
            raise PipedriveError(step, f"Pipedrive's API could not be reached ({exc.__class__.__name__})") from exc

    async def me(self, tokens: TokenSet) -> PipedriveUser:
        step = "read the installing user"
        response = await self._api(step, "GET", tokens, "/api/v1/users/me")
        body = _json(response)
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise PipedriveError(step, f"Pipedrive answered HTTP {response.status_code}", status=response.status_code)
        data = body["data"]
        try:
            return PipedriveUser(
                id=_required_int(data, "id"),
                company_id=_required_int(data, "company_id"),
                name=str(data.get("name") or ""),
                email=str(data.get("email") or ""),
            )
        except (TypeError, ValueError) as exc:
            raise PipedriveError(step, f"Pipedrive's user answer is unusable: {exc}") from None

    async def register_link(self, tokens: TokenSet, link_id: str, user: PipedriveUser) -> str | None:
        """POST the user-provider link; returns Pipedrive's ``redirectUrl`` when it gives one."""
        step = "register the video calling link"
        payload = {
            "user_provider_id": link_id,
            "user_id": user.id,
            "company_id": user.company_id,
            "marketplace_client_id": self.config.client_id,
        }
        response = await self._api(step, "POST", tokens, self.config.provider_links_path, json=payload)
        body = _json(response)
        if response.status_code not in (200, 201) or (isinstance(body, dict) and body.get("success") is False):
            raise PipedriveError(step, f"Pipedrive answered HTTP {response.status_code}", status=response.status_code)
        data = body.get("data") if isinstance(body, dict) else None
        redirect = data.get("redirectUrl") if isinstance(data, dict) else None
        return redirect if isinstance(redirect, str) and redirect.startswith(("https://", "http://")) else None

    async def unregister_link(self, tokens: TokenSet, link_id: str) -> None:
        step = "remove the video calling link"
        response = await self._api(step, "DELETE", tokens, f"{self.config.provider_links_path}/{link_id}")
        if response.status_code not in (200, 204, 404):
            raise PipedriveError(step, f"Pipedrive answered HTTP {response.status_code}", status=response.status_code)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _required_str(body: Any, key: str) -> str:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is missing")
    return value


def _required_int(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} is missing or not a number")
    return value
