"""Pipedrive token upkeep against the fake Pipedrive on loopback, on SQLite and PostgreSQL.

A refresh token works once at the fake (stricter than Pipedrive), so a bridge
that refreshes twice shows up as an ``invalid_grant`` and a second refresh request.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from sqlalchemy import update
from sqlmodel import Session

from bridge.config import Config
from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
from bridge.errors import Gone, ServiceUnavailable
from bridge.pipedrive.client import PipedriveClient, TokenSet
from bridge.pipedrive.tokens import PipedriveTokens, dump_tokens, load_tokens
from bridge.storage.links import PIPEDRIVE_TOKENS, new_link
from bridge.storage.schema import LINK_ACTIVE, LINK_NEEDS_REINSTALL, LINK_UNINSTALLED, LinkTable, utcnow
from bridge.storage.secrets import link_scope
from bridge.storage.store import Store
from bridge.testing import make_config, run_ready_go_workers, write_config_toml

pytestmark = pytest.mark.anyio

BRIDGE = "http://bridge.test"


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def pipedrive() -> Iterator[FakePipedriveState]:
    state = FakePipedriveState(client_id="test-client", client_secret="set-by-the-config-fixture")
    with running_fake_pipedrive(state) as running:
        yield running


@pytest.fixture
def config(tmp_path: Path, database_url: str, pipedrive: FakePipedriveState) -> Config:
    config = make_config(
        tmp_path,
        database_url,
        pipedrive={"oauth_base": pipedrive.api_domain, "api_base": pipedrive.api_domain},
        server={"public_url": BRIDGE},
        meetings={"default_backend": "fake", "allowed_backends": ["fake", "other"]},
    )
    pipedrive.client_secret = config.pipedrive.client_secret
    return config


@pytest.fixture
async def keeper(store: Store, config: Config) -> AsyncIterator[PipedriveTokens]:
    async with httpx.AsyncClient() as http:
        yield PipedriveTokens(
            store, PipedriveClient(config.pipedrive, http), config.pipedrive.token_refresh_margin_seconds
        )


# --- helpers ----------------------------------------------------------------------------


def issue(pipedrive: FakePipedriveState, *, expires_in: float) -> TokenSet:
    """Tokens the fake really issued, stored as if they expire in ``expires_in`` seconds."""
    with pipedrive.lock:
        answer = pipedrive.issue_tokens()
    return TokenSet(
        access_token=answer["access_token"],
        refresh_token=answer["refresh_token"],
        expires_at=time.time() + expires_in,
        scope=answer["scope"],
        api_domain=answer["api_domain"],
    )


async def installed(
    store: Store, pipedrive: FakePipedriveState, *, expires_in: float = -60, user_id: int = 1001
) -> tuple[str, TokenSet]:
    """A link as an install leaves it, with tokens that expire in ``expires_in`` seconds."""
    tokens = issue(pipedrive, expires_in=expires_in)
    link = new_link(
        pipedrive_user_id=user_id,
        company_id=pipedrive.user.company_id,
        user_name="Sam",
        user_email="sam@example.com",
        api_domain=tokens.api_domain,
    )
    await store.save_install(link, dump_tokens(tokens))
    return link.id, tokens


async def stored(store: Store, link_id: str) -> TokenSet:
    tokens = load_tokens(await store.get_secret(link_scope(link_id), PIPEDRIVE_TOKENS))
    assert tokens is not None
    return tokens


def refreshes(pipedrive: FakePipedriveState) -> int:
    return pipedrive.token_requests["refresh_token"]


def set_refreshed_at(store: Store, link_id: str, days_ago: float) -> None:
    with Session(store.engine) as session:
        session.exec(
            update(LinkTable)
            .where(LinkTable.id == link_id)  # type: ignore[call-overload]
            .values(tokens_refreshed_at=utcnow() - timedelta(days=days_ago))
        )
        session.commit()


async def gather(count: int, call: Any) -> list[Any]:
    """Run ``call()`` ``count`` times at once; each result, or the exception it raised."""
    results: list[Any] = [None] * count

    async def one(index: int) -> None:
        try:
            results[index] = await call()
        except Exception as exc:
            results[index] = exc

    async with anyio.create_task_group() as tasks:
        for index in range(count):
            tasks.start_soon(one, index)
    return results


# --- refresh ----------------------------------------------------------------------------


async def test_fresh_tokens_are_returned_as_stored(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState
) -> None:
    link_id, tokens = await installed(store, pipedrive, expires_in=3600)
    assert await keeper.fresh_tokens(link_id) == tokens
    assert refreshes(pipedrive) == 0


async def test_an_expired_access_token_is_refreshed_once(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState
) -> None:
    link_id, old = await installed(store, pipedrive, expires_in=-60)
    set_refreshed_at(store, link_id, days_ago=10)

    new = await keeper.fresh_tokens(link_id)

    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 0
    assert new.access_token != old.access_token and new.refresh_token != old.refresh_token
    assert new.expires_at > time.time() + 3000 and new.api_domain == pipedrive.api_domain
    with pipedrive.lock:
        assert new.access_token in pipedrive.access_tokens and new.refresh_token in pipedrive.refresh_tokens
        assert old.refresh_token not in pipedrive.refresh_tokens  # spent
    assert await stored(store, link_id) == new
    link = await store.get_link(link_id)
    assert link is not None and link.status == LINK_ACTIVE
    assert link.tokens_refreshed_at is not None
    assert abs(link.tokens_refreshed_at.timestamp() - time.time()) < 60  # just now, not 10 days ago

    assert await keeper.fresh_tokens(link_id) == new  # and not again
    assert refreshes(pipedrive) == 1


async def test_a_token_inside_the_margin_is_refreshed(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState
) -> None:
    link_id, old = await installed(store, pipedrive, expires_in=keeper.margin / 2)
    new = await keeper.fresh_tokens(link_id)
    assert new.access_token != old.access_token and refreshes(pipedrive) == 1


async def test_a_short_lived_access_token_from_pipedrive_is_refreshed(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState
) -> None:
    """With ``access_ttl`` small, what Pipedrive issues is already due when it arrives."""
    pipedrive.access_ttl = 1
    link_id, _ = await installed(store, pipedrive, expires_in=1)
    pipedrive.access_ttl = 3600
    await anyio.sleep(1.1)
    with pipedrive.lock:
        assert all(expiry < time.time() for expiry in pipedrive.access_tokens.values())

    new = await keeper.fresh_tokens(link_id)

    assert refreshes(pipedrive) == 1
    with pipedrive.lock:
        assert pipedrive.access_tokens[new.access_token] > time.time() + 3000


async def test_a_hundred_concurrent_callers_share_one_refresh(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState
) -> None:
    link_id, old = await installed(store, pipedrive, expires_in=-60)

    results = await gather(100, lambda: keeper.fresh_tokens(link_id))

    assert not [r for r in results if isinstance(r, Exception)], results
    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 0
    assert keeper.refreshes == 1
    assert {r.access_token for r in results} == {(await stored(store, link_id)).access_token}
    assert results[0].access_token != old.access_token


async def test_callers_arriving_during_a_refresh_wait_for_it_instead_of_taking_the_lease_in_turn(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the first caller takes the cross-process lease; the rest are answered when its refresh ends."""
    link_id, _ = await installed(store, pipedrive, expires_in=-60)
    take_lease = store.take_lease
    taken: list[str] = []

    async def counting(name: str, holder: str, seconds: float) -> bool:
        taken.append(name)
        return await take_lease(name, holder, seconds)

    monkeypatch.setattr(store, "take_lease", counting)

    results = await gather(50, lambda: keeper.fresh_tokens(link_id))

    assert not [r for r in results if isinstance(r, Exception)], results
    assert taken == [f"{link_scope(link_id)}/{PIPEDRIVE_TOKENS}"] and refreshes(pipedrive) == 1
    assert len({r.access_token for r in results}) == 1


async def test_callers_with_and_without_a_refused_token_each_end_on_a_working_one(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState
) -> None:
    """A caller whose token Pipedrive refused never shares an answer that hands it that token back."""
    link_id, old = await installed(store, pipedrive, expires_in=3600)
    pipedrive.expire_access_tokens()

    answers: list[tuple[bool, TokenSet]] = []

    async def call(refused: bool) -> None:
        stale = old.access_token if refused else None
        answers.append((refused, await keeper.fresh_tokens(link_id, stale_access_token=stale)))

    async with anyio.create_task_group() as tasks:
        for index in range(20):
            tasks.start_soon(call, index % 2 == 1)

    assert len(answers) == 20
    assert all(tokens.access_token != old.access_token for refused, tokens in answers if refused)
    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 0


async def test_a_refused_refresh_answers_every_waiting_caller_and_is_asked_once(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState
) -> None:
    link_id, tokens = await installed(store, pipedrive, expires_in=-60)
    with pipedrive.lock:
        pipedrive.refresh_tokens.discard(tokens.refresh_token)  # Pipedrive no longer knows it

    results = await gather(30, lambda: keeper.fresh_tokens(link_id))

    assert all(isinstance(r, Gone) for r in results), results
    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 1
    link = await store.get_link(link_id)
    assert link is not None and link.status == LINK_NEEDS_REINSTALL


async def test_a_stale_access_token_forces_one_refresh(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState
) -> None:
    """Pipedrive answered 401 to a token whose expiry says it is fine: refresh it, once."""
    link_id, old = await installed(store, pipedrive, expires_in=3600)
    pipedrive.expire_access_tokens()

    results = await gather(20, lambda: keeper.fresh_tokens(link_id, stale_access_token=old.access_token))

    assert not [r for r in results if isinstance(r, Exception)], results
    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 0
    [new] = {r.access_token for r in results}
    assert new != old.access_token
    # a late caller that still saw the old token gets the new one without another refresh
    assert (await keeper.fresh_tokens(link_id, stale_access_token=old.access_token)).access_token == new
    assert refreshes(pipedrive) == 1


async def test_refused_refresh_token_needs_reinstall_and_is_not_retried(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState, config: Config, client: httpx.AsyncClient
) -> None:
    link_id, old = await installed(store, pipedrive, expires_in=-60)
    with pipedrive.lock:
        pipedrive.refresh_tokens.discard(old.refresh_token)  # revoked at Pipedrive (say, the user removed the app)

    with pytest.raises(Gone) as caught:
        await keeper.fresh_tokens(link_id)

    assert caught.value.status == 410 and "install the app again" in caught.value.message
    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 1
    link = await store.get_link(link_id)
    assert link is not None and link.status == LINK_NEEDS_REINSTALL

    response = await client.post(
        f"/api/v1/links/{link_id}/meetings", json={"topic": "Demo", "start_time": "2030-01-01 10:00", "duration": 30}
    )
    assert response.status_code == 410, response.text
    assert response.json()["success"] is False
    assert "install the app again" in response.json()["error"]

    # nothing keeps asking Pipedrive for a grant it refused: not callers, not the idle upkeep
    results = await gather(20, lambda: keeper.fresh_tokens(link_id))
    assert all(isinstance(r, Gone) for r in results), results
    set_refreshed_at(store, link_id, days_ago=45)
    assert await keeper.refresh_idle(30) == 0
    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 1


async def test_concurrent_callers_of_a_refused_refresh_token_ask_pipedrive_once(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState
) -> None:
    link_id, old = await installed(store, pipedrive, expires_in=-60)
    with pipedrive.lock:
        pipedrive.refresh_tokens.discard(old.refresh_token)

    results = await gather(30, lambda: keeper.fresh_tokens(link_id))

    assert all(isinstance(r, Gone) for r in results), results
    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 1


async def test_pipedrive_unreachable_is_503_and_keeps_the_link(
    tmp_path: Path, store: Store, pipedrive: FakePipedriveState, config: Config
) -> None:
    link_id, old = await installed(store, pipedrive, expires_in=-60)
    async with httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(503, json={"success": False}))
    ) as http:
        keeper = PipedriveTokens(store, PipedriveClient(config.pipedrive, http), 300)
        with pytest.raises(ServiceUnavailable):
            await keeper.fresh_tokens(link_id)
    link = await store.get_link(link_id)
    assert link is not None and link.status == LINK_ACTIVE
    assert await stored(store, link_id) == old


async def test_a_link_without_tokens_is_gone(keeper: PipedriveTokens, store: Store) -> None:
    link = await store.create_link(pipedrive_user_id=1, company_id=2)
    with pytest.raises(Gone):
        await keeper.fresh_tokens(link.id)


# --- idle links -------------------------------------------------------------------------


async def test_refresh_idle_refreshes_only_links_idle_too_long(
    keeper: PipedriveTokens, store: Store, pipedrive: FakePipedriveState
) -> None:
    idle_id, idle_old = await installed(store, pipedrive, expires_in=3600, user_id=1)
    recent_id, recent_old = await installed(store, pipedrive, expires_in=3600, user_id=2)
    gone_id, _ = await installed(store, pipedrive, expires_in=3600, user_id=3)
    broken_id, _ = await installed(store, pipedrive, expires_in=3600, user_id=4)
    await store.uninstall_link(gone_id)
    await store.set_link_status(broken_id, LINK_NEEDS_REINSTALL)
    set_refreshed_at(store, idle_id, days_ago=31)
    set_refreshed_at(store, recent_id, days_ago=29)
    set_refreshed_at(store, gone_id, days_ago=50)
    set_refreshed_at(store, broken_id, days_ago=50)

    assert await keeper.refresh_idle(30) == 1

    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 0
    idle_new = await stored(store, idle_id)
    assert idle_new.refresh_token != idle_old.refresh_token  # a new 60-day refresh token
    assert await stored(store, recent_id) == recent_old
    idle = await store.get_link(idle_id)
    assert idle is not None and idle.tokens_refreshed_at is not None
    assert abs(idle.tokens_refreshed_at.timestamp() - time.time()) < 60
    gone = await store.get_link(gone_id)
    assert gone is not None and gone.status == LINK_UNINSTALLED

    assert await keeper.refresh_idle(30) == 0  # the refreshed link is no longer idle
    assert refreshes(pipedrive) == 1


# --- across processes -------------------------------------------------------------------

WORKER = r"""
import json, sys
from pathlib import Path

import anyio, httpx

from bridge.config import load_config
from bridge.pipedrive.client import PipedriveClient
from bridge.runtime import open_store
from bridge.pipedrive.tokens import PipedriveTokens

config = load_config(Path(sys.argv[1]), env={})
link_id = sys.argv[2]
store = open_store(config)


class SlowTokenEndpoint(httpx.AsyncHTTPTransport):
    # a slow network to the token endpoint: both processes are surely inside fresh_tokens at once

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            await anyio.sleep(0.3)
        return await super().handle_async_request(request)


async def main() -> None:
    async with httpx.AsyncClient(transport=SlowTokenEndpoint()) as http:
        keeper = PipedriveTokens(store, PipedriveClient(config.pipedrive, http),
                             config.pipedrive.token_refresh_margin_seconds)
        await store.ping()  # connected before the start signal
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        results, errors = [], []

        async def one() -> None:
            try:
                results.append((await keeper.fresh_tokens(link_id)).access_token)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        async with anyio.create_task_group() as tasks:
            for _ in range(50):
                tasks.start_soon(one)
        final = (await keeper.tokens(link_id)).access_token
        print(json.dumps({"tokens": sorted(set(results)), "errors": errors, "final": final,
                          "refreshes": keeper.refreshes}), flush=True)


anyio.run(main)
store.close()
"""


def write_config(path: Path, config: Config) -> Path:
    return write_config_toml(path, config, {"server": {"public_url": BRIDGE}}, pipedrive_urls=True)


def run_workers(config_path: Path, link_id: str, count: int = 2) -> list[dict[str, Any]]:
    return run_ready_go_workers([[sys.executable, "-c", WORKER, str(config_path), link_id] for _ in range(count)])


async def test_two_processes_refresh_once(
    tmp_path: Path, store: Store, pipedrive: FakePipedriveState, config: Config
) -> None:
    link_id, old = await installed(store, pipedrive, expires_in=-60)
    config_path = write_config(tmp_path / "bridge.toml", config)

    outputs = await anyio.to_thread.run_sync(run_workers, config_path, link_id)

    assert [o["errors"] for o in outputs] == [[], []]
    assert refreshes(pipedrive) == 1 and pipedrive.invalid_grants == 0
    assert sorted(o["refreshes"] for o in outputs) == [0, 1]
    new = await stored(store, link_id)
    assert new.access_token != old.access_token
    assert [o["final"] for o in outputs] == [new.access_token, new.access_token]
    assert [o["tokens"] for o in outputs] == [[new.access_token], [new.access_token]]
