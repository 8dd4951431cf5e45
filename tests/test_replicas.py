"""Several replicas on one PostgreSQL database: one client, requests alternating between them.

Two real bridge processes (``python -m bridge.cli --config FILE serve``) share a
database and the fake Pipedrive on loopback. A user installs through one of them
(``/oauth/callback``); then the reverse API is driven through both at once, a
meeting made on one being moved and deleted on the other.

Token refresh across processes: the link's access token is expired and 200
callers need a fresh one at the same moment, 100 in each of two worker processes
(the reverse API itself never needs a Pipedrive token, so the callers are
``PipedriveTokens.fresh_tokens``, as the bridge calls it). Exactly one refresh reaches
the fake, none is refused, and no rotation is lost: the refresh token stored
afterwards is the only one the fake still honours, and it works. Then Pipedrive's
uninstall notice arrives at both replicas at once, again with an expired token.
The same refresh race runs for a Zoom user's own OAuth token through the Zoom
plugin's fake, where that plugin is installed.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import anyio
import anyio.to_thread
import httpx
import pytest
from sqlalchemy import text

from bridge.api.auth import basic_auth
from bridge.config import Config
from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
from bridge.errors import Gone
from bridge.pipedrive.client import PipedriveClient
from bridge.pipedrive.tokens import PipedriveTokens, dump_tokens, load_tokens
from bridge.plugin import Token, TokenKeeper
from bridge.runtime import open_store, prepare_database
from bridge.storage.credentials import ScopedCredentials
from bridge.storage.links import PIPEDRIVE_TOKENS
from bridge.storage.schema import LINK_UNINSTALLED
from bridge.storage.secrets import backend_scope, link_scope
from bridge.storage.store import Store
from bridge.storage.vault import generate_key, key_id
from bridge.testing import BridgeProcess, free_port, make_config, run_ready_go_workers, write_config_toml

pytestmark = pytest.mark.anyio

CALLERS = 100  # fresh_tokens calls in each worker process
START_SECONDS = 30


# --- processes -------------------------------------------------------------------------------


def toml_config(config: Config, *, zoom: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The config file's sections besides the shared ones (``write_config_toml`` with ``pipedrive_urls``)."""
    sections: dict[str, dict[str, Any]] = {
        "server": {"public_url": config.server.public_url},
        "logging": {"level": "WARNING"},
    }
    if zoom:
        sections["backends.zoom"] = dict(zoom)
    return sections


WORKER = r"""
import json, sys
from pathlib import Path

import anyio, httpx

from bridge.config import load_config
from bridge.runtime import open_store

config = load_config(Path(sys.argv[1]), env={})
kind, link_id, callers = sys.argv[2], sys.argv[3], int(sys.argv[4])
store = open_store(config)


class SlowTokenEndpoint(httpx.AsyncHTTPTransport):
    # a slow token endpoint: every caller of both processes is surely waiting at once

    async def handle_async_request(self, request):
        if request.url.path == "/oauth/token":
            await anyio.sleep(0.3)
        return await super().handle_async_request(request)


async def main():
    async with httpx.AsyncClient(transport=SlowTokenEndpoint()) as http:
        if kind == "pipedrive":
            from bridge.pipedrive.client import PipedriveClient
            from bridge.pipedrive.tokens import PipedriveTokens

            keeper = PipedriveTokens(store, PipedriveClient(config.pipedrive, http),
                                 config.pipedrive.token_refresh_margin_seconds)

            async def fresh():
                return (await keeper.fresh_tokens(link_id)).access_token

            def refreshes():
                return keeper.refreshes
        else:
            from bridge.vendors.interface import BackendContext, UserIdentity
            from bridge.storage.credentials import ScopedCredentials
            from bridge.storage.secrets import backend_scope, shared_scope
            from pipedrive_video_bridge_zoom.oauth import UserTokens, ZoomOAuth

            table = config.backend_table("zoom")
            tokens = UserTokens(ZoomOAuth(table["oauth_base"], table["client_id"], table["client_secret"]))
            ctx = BackendContext(user=UserIdentity(link_id=link_id, user_id=1, company_id=2), http=http,
                                 credentials=ScopedCredentials(store, backend_scope(link_id, "zoom")),
                                 shared=ScopedCredentials(store, shared_scope("zoom")))

            async def fresh():
                return await tokens.access_token(ctx)

            def refreshes():
                return None
        await store.ping()  # connected before the start signal
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        results, errors = [], []

        async def one():
            try:
                results.append(await fresh())
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        async with anyio.create_task_group() as tasks:
            for _ in range(callers):
                tasks.start_soon(one)
        print(json.dumps({"tokens": sorted(set(results)), "calls": len(results), "errors": errors,
                          "refreshes": refreshes()}), flush=True)


anyio.run(main)
store.close()
"""


def run_workers(config_path: Path, kind: str, link_id: str, count: int = 2) -> list[dict[str, Any]]:
    """``count`` processes with CALLERS concurrent token callers each, started on one signal."""
    return run_ready_go_workers(
        [[sys.executable, "-c", WORKER, str(config_path), kind, link_id, str(CALLERS)] for _ in range(count)]
    )


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def pipedrive() -> Iterator[FakePipedriveState]:
    state = FakePipedriveState(client_id="replica-client", client_secret="set-by-the-config-fixture")
    with running_fake_pipedrive(state) as running:
        yield running


@pytest.fixture
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture
def config(tmp_path: Path, postgres_url: str, pipedrive: FakePipedriveState, ports: tuple[int, int]) -> Config:
    config = make_config(
        tmp_path,
        postgres_url,
        pipedrive={"client_id": "replica-client", "oauth_base": pipedrive.api_domain, "api_base": pipedrive.api_domain},
        server={"public_url": f"http://127.0.0.1:{ports[0]}"},
    )
    pipedrive.client_secret = config.pipedrive.client_secret
    return config


@pytest.fixture
def replicas(tmp_path: Path, config: Config, store: Store, ports: tuple[int, int]) -> Iterator[list[BridgeProcess]]:
    config_path = write_config_toml(tmp_path / "bridge.toml", config, toml_config(config), pipedrive_urls=True)
    started = [
        BridgeProcess.serve(config_path, tmp_path / f"replica-{n}.log", port=port, name="the replica")
        for n, port in enumerate(ports)
    ]
    try:
        for replica in started:
            replica.wait_ready("/readyz", START_SECONDS)
        yield started
    finally:
        for replica in started:
            replica.stop()


async def install(replica: BridgeProcess, pipedrive: FakePipedriveState, config: Config) -> str:
    """A Marketplace install: approved at the fake Pipedrive, finished at the replica's /oauth/callback."""
    async with httpx.AsyncClient() as browser:
        query = urlencode(
            {"client_id": pipedrive.client_id, "redirect_uri": config.server.public_url + "/oauth/callback"}
        )
        approved = await browser.get(f"{pipedrive.api_domain}/oauth/authorize?{query}")
        assert approved.status_code == 302
        code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]
        finished = await browser.get(f"{replica.url}/oauth/callback", params={"code": code})
        assert finished.status_code == 302, finished.text
    [link_id] = list(pipedrive.links)
    return link_id


async def expire(store: Store, pipedrive: FakePipedriveState, link_id: str) -> None:
    """Pipedrive stops honouring the access token, and the bridge's copy says it expired a minute ago."""
    pipedrive.expire_access_tokens()
    tokens = load_tokens(await store.get_secret(link_scope(link_id), PIPEDRIVE_TOKENS))
    assert tokens is not None
    await store.put_secret(
        link_scope(link_id), PIPEDRIVE_TOKENS, dump_tokens(replace(tokens, expires_at=time.time() - 60))
    )


def refreshes(pipedrive: FakePipedriveState) -> int:
    return pipedrive.token_requests["refresh_token"]


# --- the test --------------------------------------------------------------------------------


async def test_replicas_share_meetings_and_refresh_each_token_once(
    tmp_path: Path, config: Config, store: Store, pipedrive: FakePipedriveState, replicas: list[BridgeProcess]
) -> None:
    auth = basic_auth(config.pipedrive.client_id, config.pipedrive.client_secret)
    link_id = await install(replicas[0], pipedrive, config)
    assert pipedrive.token_requests == {"authorization_code": 1, "refresh_token": 0}

    # one client, requests alternating between the replicas: made on one, moved and deleted on the other
    async with httpx.AsyncClient(headers=auth, timeout=30) as http:
        created: list[tuple[int, str]] = []

        async def create(n: int) -> None:
            replica = replicas[n % 2]
            answer = await http.post(
                f"{replica.url}/api/v1/links/{link_id}/meetings",
                json={"topic": f"replicated {n}", "start_time": "2031-05-06 07:00", "duration": 30},
            )
            assert answer.status_code == 201, answer.text
            created.append((n, answer.json()["data"]["meeting_id"]))

        async def move_then_delete(n: int, meeting_id: str) -> None:
            path = f"/api/v1/links/{link_id}/meetings/{meeting_id}"
            moved = await http.patch(
                replicas[(n + 1) % 2].url + path,
                json={"topic": f"moved {n}", "start_time": "2031-05-07 08:00", "duration": 45},
            )
            assert moved.status_code == 204, moved.text
            gone = await http.delete(replicas[n % 2].url + path)
            assert gone.status_code == 204, gone.text

        async with anyio.create_task_group() as tasks:
            for n in range(100):
                tasks.start_soon(create, n)
        async with anyio.create_task_group() as tasks:
            for n, meeting_id in created:
                tasks.start_soon(move_then_delete, n, meeting_id)
    with store.engine.connect() as conn:
        states = dict(conn.execute(text("SELECT state, count(*) FROM meeting GROUP BY state")).all())
    assert states == {"deleted": 100}

    # 200 callers in two processes need a fresh token at once: one refresh, no refusal, no lost rotation
    await expire(store, pipedrive, link_id)
    config_path = tmp_path / "bridge.toml"
    outputs = await anyio.to_thread.run_sync(run_workers, config_path, "pipedrive", link_id)
    assert [o["errors"] for o in outputs] == [[], []]
    assert [o["calls"] for o in outputs] == [CALLERS, CALLERS]
    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 0
    assert sorted(o["refreshes"] for o in outputs) == [0, 1]
    stored = load_tokens(await store.get_secret(link_scope(link_id), PIPEDRIVE_TOKENS))
    assert stored is not None and [o["tokens"] for o in outputs] == [[stored.access_token]] * 2
    with pipedrive.lock:
        assert pipedrive.refresh_tokens == {stored.refresh_token}  # the one the fake issued last, and only it
        assert pipedrive.access_tokens[stored.access_token] > time.time() + 3000
    async with httpx.AsyncClient() as http:  # and it works: one more refresh through the bridge's code path
        keeper = PipedriveTokens(store, PipedriveClient(config.pipedrive, http), 300)
        again = await keeper.fresh_tokens(link_id, stale_access_token=stored.access_token)
    assert refreshes(pipedrive) == 2 and pipedrive.invalid_grants == 0 and again.refresh_token != stored.refresh_token
    with pipedrive.lock:
        assert pipedrive.refresh_tokens == {again.refresh_token}

    # Pipedrive's uninstall notice reaches both replicas at once, with the token expired again
    await expire(store, pipedrive, link_id)
    notice = {
        "client_id": config.pipedrive.client_id,
        "company_id": pipedrive.user.company_id,
        "user_id": pipedrive.user.id,
        "timestamp": int(time.time()),
    }
    async with httpx.AsyncClient(headers=auth, timeout=30) as http:

        async def uninstall(n: int) -> None:
            answer = await http.request("DELETE", replicas[n % 2].url + "/oauth/callback", json=notice)
            assert answer.status_code == 200 and answer.json() == {"success": True}, answer.text

        async with anyio.create_task_group() as tasks:
            for n in range(20):
                tasks.start_soon(uninstall, n)
        for replica in replicas:
            gone = await http.post(
                f"{replica.url}/api/v1/links/{link_id}/meetings",
                json={"topic": "after", "start_time": "2031-05-06 07:00", "duration": 30},
            )
            assert gone.status_code == 410, gone.text
    assert refreshes(pipedrive) == 3 and pipedrive.invalid_grants == 0
    link = await store.get_link(link_id)
    assert link is not None and link.status == LINK_UNINSTALLED
    with store.engine.connect() as conn:
        left = conn.execute(text("SELECT scope, name FROM secret WHERE scope LIKE :p"), {"p": f"link:{link_id}%"}).all()
    assert left == []  # every secret of the install erased, none written back by a late refresh
    assert link_id not in pipedrive.links and link_id in pipedrive.removed_links
    with pipedrive.lock:
        assert pipedrive.refresh_tokens == set()  # the last refresh token was revoked


ZOOM = importlib.util.find_spec("pipedrive_video_bridge_zoom") is not None


@pytest.mark.skipif(not ZOOM, reason="the Zoom plugin (plugins/zoom) is not installed")
async def test_a_zoom_user_token_is_refreshed_once_across_processes(
    tmp_path: Path, config: Config, store: Store
) -> None:
    from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState, running_fake_zoom
    from pipedrive_video_bridge_zoom.oauth import USER_TOKENS

    from bridge.plugin import Token

    state = FakeZoomState(client_id="zoom-client", client_secret="zoom-secret-value")
    with running_fake_zoom(state):
        link = await store.create_link(pipedrive_user_id=5, company_id=6, user_name="Ada")
        user = state.users[0].id
        with state.lock:
            issued = state.issue_user_tokens(user)
        scope = backend_scope(link.id, "zoom")
        await store.put_secret(
            scope, USER_TOKENS, Token(issued["access_token"], time.time() - 60, issued["refresh_token"]).dump()
        )
        state.expire_access_tokens()
        config_path = tmp_path / "zoom.toml"
        write_config_toml(
            config_path,
            config,
            toml_config(
                config,
                zoom={"oauth_base": state.base_url, "client_id": state.client_id, "client_secret": state.client_secret},
            ),
            pipedrive_urls=True,
        )

        outputs = await anyio.to_thread.run_sync(run_workers, config_path, "zoom", link.id)

        assert [o["errors"] for o in outputs] == [[], []]
        assert [o["calls"] for o in outputs] == [CALLERS, CALLERS]
        assert state.token_requests["refresh_token"] == 1 and state.refused_refresh_tokens == []
        stored = Token.load(await store.get_secret(scope, USER_TOKENS))
        assert stored is not None and not stored.refused
        assert [o["tokens"] for o in outputs] == [[stored.access_token]] * 2
        with state.lock:
            live = {token for token, owner in state.refresh_tokens.items() if owner == user}
        assert live == {stored.refresh_token}  # the one Zoom issued last, and only it
        async with httpx.AsyncClient() as http:  # and it works: one more refresh, forced
            from pipedrive_video_bridge_zoom.oauth import UserTokens, ZoomOAuth

            from bridge.storage.credentials import ScopedCredentials
            from bridge.storage.secrets import shared_scope
            from bridge.vendors.interface import BackendContext, UserIdentity

            ctx = BackendContext(
                user=UserIdentity(link_id=link.id, user_id=5, company_id=6),
                http=http,
                credentials=ScopedCredentials(store, scope),
                shared=ScopedCredentials(store, shared_scope("zoom")),
            )
            tokens = UserTokens(ZoomOAuth(state.base_url, state.client_id, state.client_secret))
            renewed = await tokens.access_token(ctx, stale=stored.access_token)
        assert renewed != stored.access_token
        assert state.token_requests["refresh_token"] == 2 and state.refused_refresh_tokens == []


@pytest.mark.parametrize("meanwhile", ["uninstall", "reinstall", "rotation"])
async def test_a_write_during_a_refresh_is_not_overwritten_by_it(
    tmp_path: Path, database_url: str, meanwhile: str
) -> None:
    """One replica refreshes (its token request in flight) while another erases, replaces or re-encrypts them.

    The refresh must not write its tokens over an uninstall (that would bring back a live refresh
    token the uninstall promised to erase) nor over a re-install's new tokens; a key rotation only
    re-encrypted the same value, so the refreshed tokens are kept.
    """
    old_key, new_key = generate_key(), generate_key()
    config = make_config(tmp_path, database_url, vault={"keys": [old_key]})
    rotated = make_config(tmp_path, database_url, vault={"keys": [new_key, old_key]})
    writer = open_store(config)
    refreshing, other = open_store(rotated), open_store(rotated if meanwhile == "rotation" else config)
    scope = link_scope("0b9f3c2e-5d7a-4e61-9a38-2f4c6d8e1a57")
    before = Token("before the refresh", time.time() - 60, "refresh-1").dump()
    reinstalled = Token("of the new install", time.time() + 3600, "refresh-new").dump()
    after = Token("after the refresh", time.time() + 3600, "refresh-2")
    try:
        await prepare_database(writer, config)
        await writer.put_secret(scope, PIPEDRIVE_TOKENS, before)
        actions = {
            "uninstall": lambda: other.delete_scope(scope),
            "reinstall": lambda: other.put_secret(scope, PIPEDRIVE_TOKENS, reinstalled),
            "rotation": lambda: other.rotate(),
        }
        asked: list[Token | None] = []

        async def refresh(current: Token | None) -> Token:
            asked.append(current)
            if current is None:
                raise Gone("no tokens: install again")
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(actions[meanwhile])
                await anyio.sleep(0.3)  # Pipedrive answering the refresh
            return after

        keeper = TokenKeeper(PIPEDRIVE_TOKENS)
        if meanwhile == "uninstall":
            with pytest.raises(Gone):
                await keeper.token(ScopedCredentials(refreshing, scope), refresh)
            assert len(asked) == 2 and asked[1] is None, "what is stored after the erase decides: nothing"
        else:
            token = await keeper.token(ScopedCredentials(refreshing, scope), refresh)
            assert token.access_token == {"reinstall": "of the new install", "rotation": "after the refresh"}[meanwhile]
            assert len(asked) == 1
        expected = {"uninstall": None, "reinstall": reinstalled, "rotation": after.dump()}[meanwhile]
        assert await refreshing.get_secret(scope, PIPEDRIVE_TOKENS) == expected
        if meanwhile == "rotation":
            assert set(await refreshing.count_by_key()) == {key_id(new_key)}
    finally:
        for store in (writer, refreshing, other):
            store.close()
