"""The Pipedrive simulator against the real bridge: the ``simulate`` command and the ``Simulator`` class.

The command runs against ``pipedrive-video-bridge serve`` in a subprocess; the
class against the app served by uvicorn in a thread. Every call is real HTTP on
loopback: the install through the bridge's callback, the user-provider link,
the reverse API at the manifest's URLs, the uninstall.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.app import create_app
from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
from bridge.devtools.loopback import serve_on_loopback
from bridge.devtools.simulator import STEPS, Simulator, post_meeting_problems
from bridge.storage.vault import generate_key
from bridge.testing import BridgeProcess, free_port, make_config, running, write_toml

CLIENT_ID = "simulated-app"
CLIENT_SECRET = "simulated-app-secret-" + generate_key()[:8]
STEP_NAMES = [step.name for step in STEPS]
TIMEOUT = 60


def write_bridge_config(directory: Path, bridge_port: int, pipedrive_port: int) -> Path:
    pipedrive = f"http://127.0.0.1:{pipedrive_port}"
    return write_toml(
        directory / "bridge.toml",
        {
            "server": {"host": "127.0.0.1", "port": bridge_port, "public_url": f"http://127.0.0.1:{bridge_port}"},
            "pipedrive": {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "oauth_base": pipedrive,
                "api_base": pipedrive,
            },
            "database": {"url": f"sqlite:///{directory / 'bridge.sqlite3'}"},
            "vault": {"keys": [generate_key()]},
            "logging": {"level": "WARNING"},
        },
    )


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PVB_")}


@contextmanager
def serving_bridge(config: Path, port: int, cwd: Path) -> Iterator[None]:
    """``pipedrive-video-bridge serve`` (its port set in the config) until /healthz answers (20 s at most)."""
    process = BridgeProcess.serve(config, cwd / "bridge.log", port=port, port_arg=False, env=clean_env(), cwd=cwd)
    with running(process, "/healthz", 20):
        yield


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One bridge subprocess for the command's tests, configured for the simulator on ``pipedrive_port``."""
    directory = tmp_path_factory.mktemp("deployment")
    bridge_port, pipedrive_port = free_port(), free_port()
    config = write_bridge_config(directory, bridge_port, pipedrive_port)
    url = f"http://127.0.0.1:{bridge_port}"
    with serving_bridge(config, bridge_port, directory):
        yield {"url": url, "config": config, "pipedrive_port": pipedrive_port, "directory": directory}


def simulate(deployment: dict[str, Any], *extra: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    port = port or deployment["pipedrive_port"]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.cli",
            "--config",
            str(deployment["config"]),
            "simulate",
            "--bridge-url",
            deployment["url"],
            "--pipedrive-port",
            str(port),
            *extra,
        ],
        cwd=deployment["directory"],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def step_lines(output: str) -> dict[str, str]:
    """Each step's printed line, by step name."""
    lines = {}
    for line in output.splitlines():
        for name in STEP_NAMES:
            if line in (f"PASS  {name}",) or line.startswith(f"FAIL  {name}: "):
                lines[name] = line
    return lines


# --- the command against the real bridge ------------------------------------------------------


def test_simulate_passes_every_step_against_the_bridge(deployment: dict[str, Any]) -> None:
    result = simulate(deployment)
    assert result.returncode == 0, result.stdout + result.stderr
    pipedrive = f"http://127.0.0.1:{deployment['pipedrive_port']}"
    assert f'oauth_base = "{pipedrive}" and api_base = "{pipedrive}"' in result.stdout.splitlines()[0]
    assert step_lines(result.stdout) == {name: f"PASS  {name}" for name in STEP_NAMES}, result.stdout


def test_a_wrong_client_secret_fails_install_and_the_reverse_api(deployment: dict[str, Any]) -> None:
    result = simulate(deployment, "--client-secret", "not-the-bridges-secret")
    assert result.returncode == 1, result.stdout + result.stderr
    lines = step_lines(result.stdout)
    assert lines["healthz"] == "PASS  healthz" and lines["manifest"] == "PASS  manifest"
    assert lines["credentials"].startswith(
        "FAIL  credentials: the bridge refused this app's client id and secret (HTTP 401"
    )
    assert (
        lines["install"].startswith("FAIL  install: GET ")
        and "answered HTTP 502 instead of a redirect" in lines["install"]
        and "could not exchange the authorization code" in lines["install"]
    )
    assert lines["registration"] == "FAIL  registration: skipped: install failed"
    assert lines["deleteMeeting"] == "FAIL  deleteMeeting: skipped: install failed"


def test_a_bridge_pointed_at_another_pipedrive_fails_install(deployment: dict[str, Any]) -> None:
    elsewhere = free_port()
    result = simulate(deployment, port=elsewhere)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = step_lines(result.stdout)
    assert lines["install"] == (
        f"FAIL  install: /oauth/install sends the browser to "
        f"http://127.0.0.1:{deployment['pipedrive_port']}/oauth/authorize, not to this simulator's "
        f"http://127.0.0.1:{elsewhere}/oauth/authorize: set [pipedrive] oauth_base = "
        f'"http://127.0.0.1:{elsewhere}" on the bridge'
    )
    assert lines["uninstall"] == "FAIL  uninstall: skipped: install failed"
    assert lines["credentials"] == "PASS  credentials"


# --- the class against the app in this process ------------------------------------------------


@pytest.fixture
def pipedrive() -> Iterator[FakePipedriveState]:
    state = FakePipedriveState(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    with running_fake_pipedrive(state):
        yield state


@contextmanager
def bridge_in_thread(
    tmp_path: Path, pipedrive: FakePipedriveState, wrap: Callable[[ASGIApp], ASGIApp] = lambda app: app
) -> Iterator[str]:
    """The bridge app (Jitsi from its entry point) on a loopback port, using ``pipedrive`` as Pipedrive."""

    def build(url: str) -> ASGIApp:
        config = make_config(
            tmp_path,
            server={"public_url": url},
            pipedrive={
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "oauth_base": pipedrive.api_domain,
                "api_base": pipedrive.api_domain,
            },
        )
        return wrap(create_app(config))

    with serve_on_loopback(build, lifespan="on") as url:
        yield url


async def run_simulator(url: str, pipedrive: FakePipedriveState) -> tuple[bool, dict[str, str]]:
    lines: list[str] = []
    ok = await Simulator(url, pipedrive.client_id, pipedrive.client_secret, pipedrive, echo=lines.append).run()
    return ok, step_lines("\n".join(lines))


@pytest.mark.anyio
async def test_the_simulator_class_passes_against_the_app(tmp_path: Path, pipedrive: FakePipedriveState) -> None:
    with bridge_in_thread(tmp_path, pipedrive) as url:
        ok, lines = await run_simulator(url, pipedrive)
    assert ok, lines
    assert list(lines.values()) == [f"PASS  {name}" for name in STEP_NAMES]
    assert pipedrive.links == {} and len(pipedrive.removed_links) == 1
    assert pipedrive.token_requests == {"authorization_code": 1, "refresh_token": 0}
    assert pipedrive.refresh_tokens == set() and len(pipedrive.revoked) == 1


class PostMeetingRewriter:
    """The real bridge, with its successful postMeeting answers rewritten by ``rewrite(status, body)``."""

    def __init__(self, app: ASGIApp, rewrite: Callable[[int, Any], tuple[int, Any]]) -> None:
        self.app = app
        self.rewrite = rewrite

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/meetings"):
            await self.app(scope, receive, send)
            return
        answer: list[Message] = []

        async def keep(message: Message) -> None:
            answer.append(message)

        await self.app(scope, receive, keep)
        status, body = answer[0]["status"], json.loads(b"".join(m.get("body", b"") for m in answer[1:]))
        if status == 201:
            status, body = self.rewrite(status, body)
        await JSONResponse(body, status_code=status)(scope, receive, send)


def without_invitation(status: int, body: Any) -> tuple[int, Any]:
    del body["data"]["invitation"]
    return status, body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("rewrite", "reason"),
    [
        (lambda status, body: (200, body), "answered HTTP 200, expected 201: "),
        (without_invitation, "the answer breaks the contract: data.invitation must be a non-empty string"),
        (
            lambda status, body: (status, {**body, "data": {**body["data"], "url": "x"}}),
            "the answer breaks the contract: unexpected key data.url",
        ),
    ],
    ids=["status-200", "no-invitation", "extra-key"],
)
async def test_a_contract_violation_fails_post_meeting(
    tmp_path: Path, pipedrive: FakePipedriveState, rewrite: Callable[[int, Any], tuple[int, Any]], reason: str
) -> None:
    with bridge_in_thread(tmp_path, pipedrive, lambda app: PostMeetingRewriter(app, rewrite)) as url:
        ok, lines = await run_simulator(url, pipedrive)
    assert not ok
    assert lines["postMeeting"].startswith("FAIL  postMeeting: ") and reason in lines["postMeeting"]
    assert lines["patchUpdateMeeting"] == "FAIL  patchUpdateMeeting: skipped: postMeeting failed"
    assert lines["deleteMeeting"] == "FAIL  deleteMeeting: skipped: postMeeting failed"
    assert lines["uninstall"] == "PASS  uninstall"
    assert lines["postMeeting after uninstall"] == "PASS  postMeeting after uninstall"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            {"success": True, "data": {"meeting_id": "m", "join_url": "/relative", "invitation": "i"}},
            "data.join_url must be an absolute http(s) URL",
        ),
        (
            {
                "success": True,
                "data": {"meeting_id": "m", "join_url": "https://x.test/r", "invitation": "i", "password": 1234},
            },
            "data.password must be a string when present",
        ),
        (
            {"success": "yes", "data": {"meeting_id": "m", "join_url": "https://x.test/r", "invitation": "i"}},
            "success must be true, got 'yes'",
        ),
        (
            {"success": True, "data": {"meeting_id": "", "join_url": "https://x.test/r", "invitation": "i"}, "x": 1},
            "unexpected top-level key 'x'",
        ),
    ],
)
def test_post_meeting_problems_names_each_deviation(body: Any, problem: str) -> None:
    assert problem in "; ".join(post_meeting_problems(body))


def test_post_meeting_problems_accepts_the_contracts_answer() -> None:
    answer = {
        "success": True,
        "data": {
            "meeting_id": "m1",
            "join_url": "https://meet.example/r",
            "password": "p",
            "invitation": "Join: https://meet.example/r",
        },
    }
    assert post_meeting_problems(answer) == []
