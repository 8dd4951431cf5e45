"""Key rotation without downtime: ``keys rotate`` runs while the bridge serves and secrets churn.

As the README's procedure has it: the rows are on the old key; the bridge runs
with ``NEW,OLD``; ``pipedrive-video-bridge keys rotate`` (a subprocess, the same
keys) re-encrypts every row while postMeeting, patchUpdateMeeting and
deleteMeeting run against the app and another writer keeps rewriting a few
secrets (as a replica refreshing tokens does). No request fails; no churned
value is lost to the rotation; afterwards every row is on the new key, and the
bridge restarted with only the new key reads every room through the API (a
retried postMeeting answers the stored meeting) and moves and deletes them.
On SQLite and PostgreSQL; PVB_SOAK=1 rotates a bigger database under more load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, deque
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from sqlalchemy import text

from bridge.config import Config
from bridge.runtime import open_store, prepare_database
from bridge.storage.schema import MEETING_ACTIVE
from bridge.storage.secrets import backend_scope
from bridge.storage.store import Store
from bridge.storage.vault import generate_key, key_id
from bridge.testing import bridge_client, make_config, write_config_toml

pytestmark = pytest.mark.anyio

SOAK = os.environ.get("PVB_SOAK") == "1"
SEEDED_SECRETS = 5000 if SOAK else 1000
SEEDED_MEETINGS = 150 if SOAK else 40
WORKERS = 8 if SOAK else 4
CHURNED = ["oauth_tokens", "account_token", "api_key"]
LIMIT_SECONDS = 120


def body(n: int, moved: bool = False) -> dict[str, Any]:
    return {
        "topic": f"rotation {n}",
        "start_time": "2031-09-10 11:00" if not moved else "2031-09-11 12:00",
        "duration": 30,
    }


def with_keys(config: Config, *keys: str) -> Config:
    return replace(config, vault=replace(config.vault, keys=keys))


async def test_keys_rotate_while_the_bridge_serves(
    tmp_path: Path, database_url: str, fake_plugin: Any, vendor: Any
) -> None:
    old_key, new_key = generate_key(), generate_key()
    base = make_config(
        tmp_path,
        database_url,
        vault={"keys": [old_key]},
        meetings={"default_backend": "fake", "allowed_backends": ["fake", "other"], "retry_window_seconds": 3600},
    )
    rolled = with_keys(base, new_key, old_key)  # every replica has the new key first, the old one after
    store = open_store(base)
    await prepare_database(store, base)
    link = await store.create_link(pipedrive_user_id=3, company_id=4, user_name="Rota")
    meetings = f"/api/v1/links/{link.id}/meetings"
    made: dict[int, str] = {}  # n -> meeting id

    # everything on the old key: meetings with their rooms, and a crowd of secrets
    async with bridge_client(base, [fake_plugin]) as client:
        for n in range(SEEDED_MEETINGS):
            answer = await client.post(meetings, json=body(n))
            assert answer.status_code == 201, answer.text
            made[n] = answer.json()["data"]["meeting_id"]
    for n in range(SEEDED_SECRETS):
        await store.put_secret(backend_scope(link.id, f"backend{n % 7}"), f"secret-{n}", f"value {n} " + "x" * 40)
    store.close()
    assert set(await _counts(base)) == {key_id(old_key)}

    config_path = write_config_toml(tmp_path / "rotate.toml", rolled, {"logging": {"level": "WARNING"}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVB_")}
    statuses: Counter[str] = Counter()
    churn = open_store(rolled)  # another replica, refreshing tokens all along
    last_written: dict[str, str] = {}
    rotation: subprocess.CompletedProcess[str] | None = None
    rotation_done = anyio.Event()
    next_n = iter(range(SEEDED_MEETINGS, 10**6))
    seeded = list(range(0, SEEDED_MEETINGS, 2))  # half the old meetings are deleted during the rotation

    async def rotate() -> None:
        nonlocal rotation
        rotation = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                [sys.executable, "-m", "bridge.cli", "--config", str(config_path), "keys", "rotate"],
                capture_output=True,
                text=True,
                timeout=LIMIT_SECONDS,
                env=env,
            )
        )
        await anyio.sleep(0.2)  # the load goes on a moment after the last batch
        rotation_done.set()

    async def requests(client: httpx.AsyncClient) -> None:
        mine: deque[int] = deque()
        while not rotation_done.is_set():
            n = next(next_n)
            created = await client.post(meetings, json=body(n))
            statuses[f"POST {created.status_code}"] += 1
            assert created.status_code == 201, created.text
            made[n] = created.json()["data"]["meeting_id"]
            mine.append(n)
            moved = await client.patch(f"{meetings}/{made[n]}", json=body(n, moved=True))
            statuses[f"PATCH {moved.status_code}"] += 1
            assert moved.status_code == 204, moved.text
            # a meeting made before the rotation (its room on the old key), or this worker's oldest
            old = seeded.pop() if seeded else (mine.popleft() if len(mine) > 2 else None)
            if old is not None:
                gone = await client.delete(f"{meetings}/{made.pop(old)}")
                statuses[f"DELETE {gone.status_code}"] += 1
                assert gone.status_code == 204, gone.text

    async def churn_secrets() -> None:
        count = 0
        while not rotation_done.is_set():
            name = CHURNED[count % len(CHURNED)]
            value = f"{name} #{count}"
            await churn.put_secret(backend_scope(link.id, "churn"), name, value)
            last_written[name] = value
            assert await churn.get_secret(backend_scope(link.id, "churn"), name) == value
            statuses["put_secret"] += 1
            count += 1

    try:
        async with bridge_client(rolled, [fake_plugin]) as client:
            with anyio.fail_after(LIMIT_SECONDS):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(rotate)
                    for _ in range(WORKERS):
                        tasks.start_soon(requests, client)
                    tasks.start_soon(churn_secrets)
    finally:
        churn.close()
    assert rotation is not None and rotation.returncode == 0, rotation.stderr if rotation else None
    assert "re-encrypted" in rotation.stdout
    print(dict(statuses), rotation.stdout.strip())
    assert statuses["POST 201"] >= WORKERS and statuses["put_secret"] > 0
    assert set(statuses) == {"POST 201", "PATCH 204", "DELETE 204", "put_secret"}, statuses

    # every row on the new key; nothing a writer wrote during the rotation was lost
    counts = await _counts(rolled)
    assert set(counts) == {key_id(new_key)}, counts
    only_new = with_keys(base, new_key)
    reader = open_store(only_new)
    try:
        await prepare_database(reader, only_new)  # what start-up checks: no unknown key, one secret decrypts
        for name, value in last_written.items():
            assert await reader.get_secret(backend_scope(link.id, "churn"), name) == value
        for n in range(0, SEEDED_SECRETS, 97):
            expected = f"value {n} " + "x" * 40
            assert await reader.get_secret(backend_scope(link.id, f"backend{n % 7}"), f"secret-{n}") == expected
        with reader.engine.connect() as conn:
            active = conn.execute(text("SELECT count(*) FROM meeting WHERE state = :s"), {"s": MEETING_ACTIVE})
            assert active.scalar_one() == len(made)
    finally:
        reader.close()

    # the bridge with only the new key reads every room: a retried postMeeting answers the stored one
    async with bridge_client(only_new, [fake_plugin]) as client:
        for n, meeting_id in made.items():
            retried = await client.post(meetings, json=body(n))  # the request that made it, again
            assert retried.status_code == 201, retried.text
            assert retried.json()["data"]["meeting_id"] == meeting_id
            join_url = retried.json()["data"]["join_url"]
            assert join_url.startswith(only_new.server.public_url + "/j/")
            opened = await client.get(join_url, follow_redirects=False)  # the room decrypts with the new key
            assert opened.headers["location"].startswith("https://video.example.com/"), opened.text
            assert (await client.patch(f"{meetings}/{meeting_id}", json=body(n))).status_code == 204
            assert (await client.delete(f"{meetings}/{meeting_id}")).status_code == 204
    assert not [room for room in vendor.rooms if room in made.values()]


async def _counts(config: Config) -> dict[str, int]:
    store: Store = open_store(config)
    try:
        return await store.count_by_key()
    finally:
        store.close()
