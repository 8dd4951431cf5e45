"""Microsoft's error answers turned into messages an admin can act on.

Graph answers ``{"error": {"code": ..., "message": ...}}``; the Microsoft identity
platform's token endpoint answers ``{"error": ..., "error_description": "AADSTS<n>: ...",
"error_codes": [n]}``. The cases admins meet most when connecting Teams:

- app-only calls for a user no application access policy covers: 403 "No application
  access policy found for this app" (older tenants: "App ... is not authorized to ... on
  behalf of user ...");
- a user without a Teams licence: 403 "Failed to get license information for the user";
- an unknown user: 404 ``Request_ResourceNotFound`` from ``/users/{upn}``;
- missing admin consent: 403 ``Authorization_RequestDenied`` (Graph) or AADSTS65001 (sign-in);
- a wrong or expired client secret (AADSTS7000215, 7000222), a certificate Entra does not
  know (AADSTS700027), an unknown app (AADSTS700016) or tenant (AADSTS90002);
- throttling: 429 with ``Retry-After``, retried by the core.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.plugin import BackendError, raise_for_vendor

TITLE = "Microsoft Teams"
POLICY_HELP = (
    "an administrator must allow the bridge's app to make meetings for this user with an application access "
    "policy in Teams PowerShell: New-CsApplicationAccessPolicy -Identity Pipedrive-Bridge -AppIds <client_id>, "
    "then Grant-CsApplicationAccessPolicy -PolicyName Pipedrive-Bridge -Identity <user> (or -Global); "
    "a new policy can take up to 30 minutes to apply"
)


@dataclass(frozen=True)
class GraphError:
    status: int
    code: str
    message: str


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when it is not one."""
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def graph_error(response: httpx.Response) -> GraphError:
    error = json_object(response).get("error")
    error = error if isinstance(error, dict) else {}
    code, message = error.get("code"), error.get("message")
    return GraphError(
        response.status_code,
        code if isinstance(code, str) else "",
        message.strip()[:300] if isinstance(message, str) else "",
    )


def is_invalid_token(response: httpx.Response) -> bool:
    """Graph refused the access token itself (expired, revoked): worth one new token."""
    return response.status_code == 401 and graph_error(response).code in ("InvalidAuthenticationToken", "")


def is_missing(response: httpx.Response) -> bool:
    return response.status_code == 404


def is_missing_user(response: httpx.Response) -> bool:
    return response.status_code == 404 and graph_error(response).code in ("Request_ResourceNotFound", "")


def lacks_access_policy(response: httpx.Response) -> bool:
    if response.status_code not in (401, 403):
        return False
    message = graph_error(response).message.lower()
    return "application access policy" in message or ("not authorized" in message and "on behalf of user" in message)


def lacks_license(response: httpx.Response) -> bool:
    return response.status_code == 403 and "license" in graph_error(response).message.lower()


def raise_for_graph(response: httpx.Response, action: str, *, organizer: str = "") -> None:
    """Raise the bridge's error for a Graph answer that is not a success; ``action`` completes "failed to ..."."""
    if response.is_success:
        return
    raise_for_vendor(response, TITLE)  # 429s after the core's retries, and 5xx
    error = graph_error(response)
    who = f"the Microsoft 365 user {organizer}" if organizer else "your Microsoft 365 user"
    if lacks_access_policy(response):
        raise BackendError(f"Microsoft Graph refused to {action} for {who}: {POLICY_HELP}")
    if lacks_license(response):
        raise BackendError(
            f"{who} has no Microsoft Teams licence, so Teams cannot make meetings for them; "
            "ask your Microsoft 365 admin to assign one"
        )
    if error.code == "Authorization_RequestDenied" or (response.status_code == 403 and not error.message):
        raise BackendError(
            f"the bridge's Entra app lacks a permission it needs to {action} ({error.message or 'HTTP 403'}); "
            "in the Entra admin center, add OnlineMeetings.ReadWrite.All and User.Read.All (application) and "
            "grant admin consent"
        )
    if is_invalid_token(response):
        raise BackendError(
            "Microsoft Graph did not accept the bridge's access token even after getting a new one; "
            "check the app registration in the Entra admin center and try again"
        )
    detail = f"{error.message} (" if error.message else "("
    code = f"{error.code}, " if error.code else ""
    raise BackendError(f"Microsoft Graph refused to {action}: {detail}{code}HTTP {response.status_code})")


@dataclass(frozen=True)
class SignInError:
    """A refusal from the token endpoint."""

    error: str
    codes: tuple[int, ...]
    description: str

    @property
    def first_line(self) -> str:
        return self.description.split("\r\n")[0].split("\n")[0][:240]


def sign_in_error(body: Mapping[str, Any]) -> SignInError:
    """The refusal in a token endpoint's error answer."""
    codes = body.get("error_codes")
    return SignInError(
        str(body.get("error") or "refused"),
        tuple(c for c in codes if isinstance(c, int)) if isinstance(codes, list) else (),
        str(body.get("error_description") or ""),
    )


def app_credentials_message(error: SignInError) -> str:
    """What to tell the admin when the token endpoint refuses the app's own credentials."""
    codes = set(error.codes)
    if codes & {7000215, 7000222}:
        hint = (
            "the client_secret is wrong or has expired: create a new one under Certificates & secrets "
            "and use its Value, not its Secret ID"
        )
    elif codes & {700027, 700024}:
        hint = "Entra does not accept the certificate's signature: upload the certificate to the app registration"
    elif 700016 in codes:
        hint = "no app with this client_id exists in the tenant: check client_id and tenant_id"
    elif codes & {90002, 900023}:
        hint = "the tenant_id is not a Microsoft Entra tenant: use the Directory (tenant) ID of your app"
    elif codes & {65001, 7000112}:
        hint = "the app has no admin consent (or is disabled): grant admin consent under API permissions"
    else:
        hint = error.first_line or error.error
    return f"Microsoft refused the bridge's Entra app credentials ({hint}); fix [backends.teams] and restart"
