"""Play Pipedrive against a running bridge, to prove a set-up before the app is submitted.

``pipedrive-video-bridge simulate`` serves the fake Pipedrive (``fake_pipedrive``)
on loopback and runs these steps against the bridge, each reported as
``PASS  <step>`` or ``FAIL  <step>: <reason>``:

    healthz                      GET /healthz answers 200
    manifest                     GET /manifest.json is a valid manifest with this app's clientId
    credentials                  postMeeting with this app's Basic auth on an unknown link: 404, not 401
    install                      /oauth/install -> Pipedrive's authorize -> the bridge's callback -> back to Pipedrive
    registration                 exactly one new user-provider link, with the contract's fields
    postMeeting                  201 and exactly the contract's answer
    postMeeting without auth     401 in the error shape
    postMeeting with a bad body  400 in the error shape
    patchUpdateMeeting           204 with an empty body
    deleteMeeting                204 with an empty body
    uninstall                    DELETE on the callback URL: 2xx; the link removed and the refresh token revoked
    postMeeting after uninstall  404 or 410 in the error shape

The reverse-API calls go to the manifest's URLs with ``Authorization: Basic``,
as Pipedrive's do. A step whose prerequisite failed is reported as
``FAIL  <step>: skipped: <step> failed``.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit

import httpx

from bridge.api.auth import basic_auth
from bridge.api.manifest import manifest_problems
from bridge.devtools.fake_pipedrive import FakePipedriveState
from bridge.web.install import CALLBACK, INSTALL

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8901

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_REDIRECTS = (301, 302, 303, 307, 308)
_MEETING_FIELDS = {"meeting_id", "join_url", "password", "invitation"}


@dataclass(frozen=True)
class StepResult:
    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"PASS  {self.name}" if self.ok else f"FAIL  {self.name}: {self.detail}"


class StepFailed(Exception):
    """A check failed; the message is the reason printed."""


def check(condition: bool, reason: str) -> None:
    if not condition:
        raise StepFailed(reason)


def meeting_body(start: datetime, *, topic: str = "Pipedrive simulator check", duration: int = 30) -> dict[str, Any]:
    """A postMeeting / patchUpdateMeeting body as Pipedrive sends it."""
    return {"topic": topic, "start_time": start.strftime("%Y-%m-%d %H:%M"), "duration": duration}


def post_meeting_problems(body: Any) -> list[str]:
    """How a postMeeting answer deviates from the contract; empty when it is exactly right."""
    if not isinstance(body, dict):
        return ["the answer is not a JSON object"]
    problems = [f"unexpected top-level key {key!r}" for key in sorted(set(body) - {"success", "data"})]
    if body.get("success") is not True:
        problems.append(f"success must be true, got {body.get('success')!r}")
    data = body.get("data")
    if not isinstance(data, dict):
        return [*problems, "data must be an object"]
    problems += [f"unexpected key data.{key}" for key in sorted(set(data) - _MEETING_FIELDS)]
    for key in ("meeting_id", "join_url", "invitation"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            problems.append(f"data.{key} must be a non-empty string")
    join_url = data.get("join_url")
    if isinstance(join_url, str) and join_url.strip():
        parts = urlsplit(join_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"data.join_url must be an absolute http(s) URL, got {join_url[:100]!r}")
    if "password" in data and not isinstance(data["password"], str):
        problems.append("data.password must be a string when present")
    return problems


def error_shape_problems(response: httpx.Response) -> list[str]:
    """How an error answer deviates from ``{"success": false, "error": "<message>"}``."""
    body = _json_or_none(response)
    if not isinstance(body, dict):
        return [f"the body is not a JSON object: {excerpt(response)}"]
    problems = []
    if body.get("success") is not False:
        problems.append(f"success must be false, got {body.get('success')!r}")
    if not isinstance(body.get("error"), str) or not body["error"].strip():
        problems.append("error must be a non-empty string")
    return problems


def excerpt(response: httpx.Response, limit: int = 300) -> str:
    """What an answer says, short: a JSON error's message, or an HTML page's text."""
    body = _json_or_none(response)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        text = body["error"]
    elif body is not None:
        text = json.dumps(body)
    else:
        text = response.text
        if "html" in response.headers.get("content-type", ""):
            text = re.sub(r"(?is)<(head|script|style)\b.*?</\1>", " ", text)
            text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = " ".join(text.split())
    return (text[:limit] + "…" if len(text) > limit else text) or "(empty body)"


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def sent(request: httpx.Request) -> str:
    """``METHOD url`` without the query, which may carry an authorization code."""
    return f"{request.method} {_without_query(str(request.url))}"


def expect_status(response: httpx.Response, *expected: int) -> None:
    wanted = " or ".join(str(s) for s in expected)
    check(
        response.status_code in expected,
        f"{sent(response.request)} answered HTTP {response.status_code}, expected {wanted}: {excerpt(response)}",
    )


def expect_error(response: httpx.Response, *expected: int) -> None:
    expect_status(response, *expected)
    problems = error_shape_problems(response)
    check(not problems, f"HTTP {response.status_code} is not in the error shape: {'; '.join(problems)}")


def expect_empty(response: httpx.Response) -> None:
    check(not response.content, f"HTTP {response.status_code} must have an empty body, got {excerpt(response)}")


def redirect_target(response: httpx.Response) -> str:
    check(
        response.status_code in _REDIRECTS and "location" in response.headers,
        f"{sent(response.request)} answered HTTP {response.status_code} instead of a redirect: {excerpt(response)}",
    )
    return urljoin(str(response.request.url), response.headers["location"])


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _query(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Simulator], Awaitable[None]]
    needs: tuple[str, ...] = ()


class Simulator:
    """Pipedrive's side of an install, the reverse API and an uninstall, against the bridge at ``bridge_url``.

    ``pipedrive`` is a started fake Pipedrive (``running_fake_pipedrive``) that
    the bridge uses as its ``oauth_base`` and ``api_base``.
    """

    def __init__(
        self,
        bridge_url: str,
        client_id: str,
        client_secret: str,
        pipedrive: FakePipedriveState,
        *,
        echo: Callable[[str], None] | None = print,
        timeout: float = 30.0,
    ) -> None:
        parts = urlsplit(bridge_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the bridge URL must be an http(s) URL, got {bridge_url!r}")
        if not pipedrive.api_domain:
            raise ValueError("the fake Pipedrive is not started (its api_domain is empty)")
        self.bridge_url = bridge_url.rstrip("/")
        self.client_id = client_id
        self.auth = basic_auth(client_id, client_secret)
        self.pipedrive = pipedrive
        self.echo = echo
        self.timeout = timeout
        self.results: list[StepResult] = []
        start = (datetime.now(UTC) + timedelta(days=1)).replace(second=0, microsecond=0)
        self.meeting = meeting_body(start)
        self.moved_meeting = meeting_body(
            start + timedelta(hours=1), topic="Pipedrive simulator check (moved)", duration=45
        )
        # what the steps learn, for the steps after them
        self.endpoints: dict[str, str] = {}
        self.callback_url = ""
        self.link_id = ""
        self.meeting_id = ""
        self._links_before: set[str] = set()
        self._refresh_tokens_before: set[str] = set()
        self.http: httpx.AsyncClient  # open while run() runs

    async def run(self) -> bool:
        """Run every step in order; True when all passed."""
        failed: dict[str, str] = {}  # step -> the step whose failure it stands for
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as self.http:
            for step in STEPS:
                cause = next((failed[need] for need in step.needs if need in failed), None)
                result = (
                    StepResult(step.name, False, f"skipped: {cause} failed") if cause else await self._attempt(step)
                )
                if not result.ok:
                    failed[step.name] = cause or step.name
                self.results.append(result)
                if self.echo is not None:
                    self.echo(result.line())
        return all(result.ok for result in self.results)

    async def _attempt(self, step: Step) -> StepResult:
        try:
            await step.run(self)
        except StepFailed as exc:
            return StepResult(step.name, False, str(exc))
        except httpx.HTTPError as exc:
            where = sent(exc.request) if _has_request(exc) else "a request"
            return StepResult(step.name, False, f"{where} failed: {exc.__class__.__name__} {exc}".strip())
        return StepResult(step.name, True)

    def endpoint(self, name: str, meeting_id: str = "", link_id: str | None = None) -> str:
        """The manifest's URL for ``name`` with ``:linkId`` and ``:meetingId`` filled in, as Pipedrive does."""
        link = self.link_id if link_id is None else link_id
        return (
            self.endpoints[name]
            .replace(":linkId", quote(link, safe=""))
            .replace(":meetingId", quote(meeting_id, safe=""))
        )

    # --- the steps --------------------------------------------------------------------

    async def healthz(self) -> None:
        expect_status(await self.http.get(self.bridge_url + "/healthz"), 200)

    async def manifest(self) -> None:
        response = await self.http.get(self.bridge_url + "/manifest.json")
        expect_status(response, 200)
        manifest = _json_or_none(response)
        problems = manifest_problems(manifest)
        check(not problems, "the manifest is invalid: " + "; ".join(problems))
        check(
            manifest["clientId"] == self.client_id,
            f"clientId is {manifest['clientId']!r}, not this app's client id {self.client_id!r}",
        )
        self.endpoints = manifest["endpoints"]

    async def credentials(self) -> None:
        response = await self.http.post(
            self.endpoint("postMeeting", link_id=str(uuid.uuid4())), json=self.meeting, headers=self.auth
        )
        check(
            response.status_code != 401,
            f"the bridge refused this app's client id and secret (HTTP 401: "
            f"{excerpt(response)}): the bridge and Pipedrive must use the same app credentials",
        )
        expect_error(response, 404)

    async def install(self) -> None:
        with self.pipedrive.lock:
            self._links_before = set(self.pipedrive.links)
            self._refresh_tokens_before = set(self.pipedrive.refresh_tokens)
        authorize_url = redirect_target(await self.http.get(self.bridge_url + INSTALL))
        expected = self.pipedrive.api_domain + "/oauth/authorize"
        check(
            _without_query(authorize_url) == expected,
            f"{INSTALL} sends the browser to {_without_query(authorize_url)}, not to this simulator's "
            f'{expected}: set [pipedrive] oauth_base = "{self.pipedrive.api_domain}" on the bridge',
        )
        query = _query(authorize_url)
        check(
            query.get("client_id") == self.client_id,
            f"the authorize URL's client_id is {query.get('client_id')!r}, not {self.client_id!r}",
        )
        callback_url = query.get("redirect_uri", "")
        check(
            urlsplit(callback_url).scheme in ("http", "https") and urlsplit(callback_url).path.endswith(CALLBACK),
            f"the authorize URL's redirect_uri {callback_url!r} is not the bridge's {CALLBACK}",
        )
        check(bool(query.get("state")), "the authorize URL carries no state")
        back = redirect_target(await self.http.get(authorize_url))
        check(
            _without_query(back) == callback_url and "code" in _query(back),
            f"Pipedrive's authorize did not send the browser back to {callback_url} with a code, but to "
            f"{_without_query(back)}",
        )
        landing = redirect_target(await self.http.get(back))
        allowed = {self.pipedrive.api_domain, *([self.pipedrive.redirect_url] if self.pipedrive.redirect_url else [])}
        check(
            landing.rstrip("/") in {url.rstrip("/") for url in allowed},
            f"after the install the callback redirects to {landing}, expected Pipedrive "
            f"({' or '.join(sorted(allowed))})",
        )
        self.callback_url = callback_url

    async def registration(self) -> None:
        with self.pipedrive.lock:
            new = {key: body for key, body in self.pipedrive.links.items() if key not in self._links_before}
        check(len(new) == 1, f"Pipedrive got {len(new)} new user-provider links, expected exactly 1")
        ((link_id, body),) = new.items()
        user = self.pipedrive.user
        check(bool(_UUID.fullmatch(link_id)), f"user_provider_id {link_id!r} is not a UUID")
        for key, want in (("user_id", user.id), ("company_id", user.company_id)):
            got = body.get(key)
            check(type(got) is int and got == want, f"{key} is {got!r}, expected the number {want}")
        check(
            body.get("marketplace_client_id") == self.client_id,
            f"marketplace_client_id is {body.get('marketplace_client_id')!r}, expected {self.client_id!r}",
        )
        self.link_id = link_id

    async def post_meeting(self) -> None:
        response = await self.http.post(self.endpoint("postMeeting"), json=self.meeting, headers=self.auth)
        expect_status(response, 201)
        body = _json_or_none(response)
        problems = post_meeting_problems(body)
        check(not problems, "the answer breaks the contract: " + "; ".join(problems))
        self.meeting_id = body["data"]["meeting_id"]

    async def post_meeting_without_auth(self) -> None:
        expect_error(await self.http.post(self.endpoint("postMeeting"), json=self.meeting), 401)

    async def post_meeting_bad_body(self) -> None:
        bad = {**self.meeting, "start_time": "tomorrow at noon"}
        expect_error(await self.http.post(self.endpoint("postMeeting"), json=bad, headers=self.auth), 400)

    async def patch_update_meeting(self) -> None:
        response = await self.http.patch(
            self.endpoint("patchUpdateMeeting", self.meeting_id), json=self.moved_meeting, headers=self.auth
        )
        expect_status(response, 204)
        expect_empty(response)

    async def delete_meeting(self) -> None:
        response = await self.http.delete(self.endpoint("deleteMeeting", self.meeting_id), headers=self.auth)
        expect_status(response, 204)
        expect_empty(response)

    async def uninstall(self) -> None:
        state = self.pipedrive
        with state.lock:
            removed_before, revoked_before = len(state.removed_links), len(state.revoked)
        notice = {
            "client_id": self.client_id,
            "company_id": state.user.company_id,
            "user_id": state.user.id,
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        }
        response = await self.http.request("DELETE", self.callback_url, json=notice, headers=self.auth)
        check(
            200 <= response.status_code < 300,
            f"{sent(response.request)} answered HTTP {response.status_code}, expected 2xx: {excerpt(response)}",
        )
        with state.lock:
            removed = self.link_id in state.removed_links[removed_before:] and self.link_id not in state.links
            revoked = state.revoked[revoked_before:]
            still_live = state.refresh_tokens - self._refresh_tokens_before
        check(removed, f"the bridge did not remove the user-provider link {self.link_id} at Pipedrive")
        check(bool(revoked) and not still_live, "the bridge did not revoke its refresh token at Pipedrive")

    async def post_meeting_after_uninstall(self) -> None:
        response = await self.http.post(self.endpoint("postMeeting"), json=self.meeting, headers=self.auth)
        expect_error(response, 404, 410)


def _has_request(exc: httpx.HTTPError) -> bool:
    try:
        exc.request  # noqa: B018 - raises RuntimeError when the error has no request
    except RuntimeError:
        return False
    return True


STEPS: tuple[Step, ...] = (
    Step("healthz", Simulator.healthz),
    Step("manifest", Simulator.manifest, ("healthz",)),
    Step("credentials", Simulator.credentials, ("manifest",)),
    Step("install", Simulator.install, ("healthz",)),
    Step("registration", Simulator.registration, ("install",)),
    Step("postMeeting", Simulator.post_meeting, ("manifest", "registration")),
    Step("postMeeting without auth", Simulator.post_meeting_without_auth, ("manifest", "registration")),
    Step("postMeeting with a bad body", Simulator.post_meeting_bad_body, ("manifest", "registration")),
    Step("patchUpdateMeeting", Simulator.patch_update_meeting, ("postMeeting",)),
    Step("deleteMeeting", Simulator.delete_meeting, ("postMeeting",)),
    Step("uninstall", Simulator.uninstall, ("registration",)),
    Step("postMeeting after uninstall", Simulator.post_meeting_after_uninstall, ("manifest", "uninstall")),
)
