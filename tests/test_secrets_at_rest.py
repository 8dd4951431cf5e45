"""No secret at rest: after a full run, the database and the logs hold none of them in the clear.

The run: a user installs through the fake Pipedrive and ``/oauth/callback``; the
access token expires and is refreshed; meetings are created, moved and deleted on
Jitsi in token mode (each join link carries an HS256 JWT signed with the
``app_secret``); ``pipedrive-video-bridge keys rotate`` re-encrypts everything
under a new key; the bridge restarts with only the new key and makes more
meetings. Logging is the bridge's own (``configure_logging``) at DEBUG, into a
buffer.

Then every value that must stay secret (each access and refresh token Pipedrive
issued, the authorization code, the client secret, both vault keys, the Jitsi
``app_secret``, every JWT of every join link made) is looked for in: the SQLite
file and its WAL (bytes), or on PostgreSQL every row of every table as text and
``pg_dump``'s output; the captured logs, and the rotate command's output.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pipedrive_video_bridge_jitsi
import pytest
from sqlalchemy import create_engine, text

from bridge.config import Config
from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
from bridge.logs import configure_logging
from bridge.pipedrive.client import PipedriveClient
from bridge.pipedrive.tokens import PipedriveTokens, dump_tokens, load_tokens
from bridge.runtime import open_store, prepare_database
from bridge.storage.links import PIPEDRIVE_TOKENS
from bridge.storage.secrets import link_scope
from bridge.storage.vault import generate_key, key_id
from bridge.testing import bridge_client, make_config, write_config_toml

pytestmark = pytest.mark.anyio

BRIDGE = "http://bridge.test"
APP_SECRET = "jitsi-app-secret-" + "q7Zr2mXk9Lw4-vT8nB3sH5dJ1"
JWT = re.compile(r"jwt=([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+)")


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """The bridge's logging set up as a deployment has it, into a buffer; pytest's own put back after."""
    root = logging.getLogger()
    names = ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx")
    saved = (
        list(root.handlers),
        root.level,
        {
            name: (
                list(logging.getLogger(name).handlers),
                logging.getLogger(name).propagate,
                logging.getLogger(name).disabled,
                logging.getLogger(name).level,
            )
            for name in names
        },
    )
    buffer = io.StringIO()
    try:
        yield buffer
    finally:
        root.handlers[:], level, loggers = saved
        root.setLevel(level)
        for name, (handlers, propagate, disabled, logger_level) in loggers.items():
            logger = logging.getLogger(name)
            logger.handlers[:], logger.propagate, logger.disabled = handlers, propagate, disabled
            logger.setLevel(logger_level)


@dataclass
class RecordingPipedrive(FakePipedriveState):
    """The fake Pipedrive, remembering every token it ever handed out."""

    issued: list[str] = field(default_factory=list)

    def issue_tokens(self) -> dict[str, Any]:
        answer = super().issue_tokens()
        self.issued += [answer["access_token"], answer["refresh_token"]]
        return answer


def bridge_config(tmp_path: Path, database_url: str, pipedrive: FakePipedriveState, keys: list[str]) -> Config:
    return make_config(
        tmp_path,
        database_url,
        pipedrive={"oauth_base": pipedrive.api_domain, "api_base": pipedrive.api_domain},
        server={"public_url": BRIDGE},
        vault={"keys": keys},
        logging={"level": "DEBUG"},
        meetings={"default_backend": "jitsi", "allowed_backends": ["jitsi"]},
        backends={
            "jitsi": {"mode": "token", "domain": "meet.example.org", "app_id": "bridge-test", "app_secret": APP_SECRET}
        },
    )


def body(topic: str, start: str = "2031-07-08 09:00") -> dict[str, Any]:
    return {"topic": topic, "start_time": start, "duration": 40}


def database_text(config: Config) -> bytes:
    """What someone holding the database would see: the files' bytes, or every row and a pg_dump."""
    path = config.database.sqlite_path
    if path is not None:
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())
    engine = create_engine(config.database.url)
    chunks = []
    try:
        with engine.connect() as conn:
            tables = conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars()
            for table in list(tables):
                rows = conn.execute(text(f'SELECT t::text FROM "{table}" AS t')).scalars()
                chunks += [f"{table}: {row}" for row in rows]
    finally:
        engine.dispose()
    dump = shutil.which("pg_dump")
    if dump:
        url = config.database.url.replace("postgresql+psycopg://", "postgresql://")
        out = subprocess.run([dump, "--data-only", "--no-owner", url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        chunks.append(out.stdout)
    return "\n".join(chunks).encode()


async def test_no_secret_in_the_database_dump_or_the_logs(tmp_path: Path, database_url: str, logs: io.StringIO) -> None:
    old_key, new_key = generate_key(), generate_key()
    state = RecordingPipedrive(client_id="test-client", client_secret="set below")
    codes: list[str] = []
    join_urls: list[str] = []  # the links Pipedrive got, and where each click on one was sent (with a JWT)

    async def click(client: httpx.AsyncClient, join_url: str) -> None:
        opened = await client.get(join_url, headers={"Authorization": ""})
        assert opened.status_code == 303, opened.text
        join_urls.append(opened.headers["location"])

    with running_fake_pipedrive(state) as pipedrive:
        config = bridge_config(tmp_path, database_url, pipedrive, [old_key])
        pipedrive.client_secret = config.pipedrive.client_secret
        configure_logging(config.logging.level, config.logging.format, config.secret_values(), stream=logs)

        # install, as Pipedrive's Marketplace does it
        async with bridge_client(config, [pipedrive_video_bridge_jitsi]) as client, httpx.AsyncClient() as browser:
            query = urlencode({"client_id": pipedrive.client_id, "redirect_uri": BRIDGE + "/oauth/callback"})
            approved = await browser.get(f"{pipedrive.api_domain}/oauth/authorize?{query}")
            codes.append(parse_qs(urlsplit(approved.headers["location"]).query)["code"][0])
            installed = await client.get("/oauth/callback", params={"code": codes[-1]})
            assert installed.status_code == 302, installed.text
            [link_id] = list(pipedrive.links)
            meetings = f"/api/v1/links/{link_id}/meetings"

            # meetings made, moved, removed
            made = []
            for n in range(5):
                answer = await client.post(meetings, json=body(f"Secret-free demo {n}"))
                assert answer.status_code == 201, answer.text
                made.append(answer.json()["data"]["meeting_id"])
                join_urls.append(answer.json()["data"]["join_url"])
                await click(client, join_urls[-1])
            links = {meeting_id: url for meeting_id, url in zip(made, join_urls[::2], strict=True)}
            for meeting_id in made[:2]:
                moved = await client.patch(f"{meetings}/{meeting_id}", json=body("Moved", "2031-07-09 10:00"))
                assert moved.status_code == 204, moved.text
                await click(client, links[meeting_id])
            for meeting_id in made[3:]:
                assert (await client.delete(f"{meetings}/{meeting_id}")).status_code == 204

        # the access token expires and is refreshed
        store = open_store(config)
        try:
            await prepare_database(store, config)
            tokens = load_tokens(await store.get_secret(link_scope(link_id), PIPEDRIVE_TOKENS))
            assert tokens is not None
            await store.put_secret(
                link_scope(link_id), PIPEDRIVE_TOKENS, dump_tokens(replace(tokens, expires_at=time.time() - 60))
            )
            async with httpx.AsyncClient() as http:
                keeper = PipedriveTokens(store, PipedriveClient(config.pipedrive, http), 300)
                assert (await keeper.fresh_tokens(link_id)).access_token != tokens.access_token
        finally:
            store.close()

        # keys rotate, the real command, with the new key first
        rotating = replace(config, vault=replace(config.vault, keys=(new_key, old_key)))
        config_path = write_config_toml(tmp_path / "rotate.toml", rotating)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PVB_")}
        rotated = subprocess.run(
            [sys.executable, "-m", "bridge.cli", "--config", str(config_path), "keys", "rotate"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert rotated.returncode == 0, rotated.stderr

        # the bridge again, with only the new key: every meeting still reads, new ones are made
        after = replace(config, vault=replace(config.vault, keys=(new_key,)))
        async with bridge_client(after, [pipedrive_video_bridge_jitsi]) as client:
            assert (await client.patch(f"{meetings}/{made[2]}", json=body("Moved again"))).status_code == 204
            answer = await client.post(meetings, json=body("After the rotation"))
            assert answer.status_code == 201, answer.text
            join_urls.append(answer.json()["data"]["join_url"])
            await click(client, join_urls[-1])
            await click(client, links[made[2]])

        # every secret stored: with join links a room keeps no JWT, and any JWT a value held would be checked too
        store = open_store(after)
        try:
            with store.engine.connect() as conn:
                rows = conn.execute(text("SELECT scope, name FROM secret")).all()
            values = [await store.get_secret(scope, name) for scope, name in rows]
            assert set(await store.count_by_key()) == {key_id(new_key)}
        finally:
            store.close()

    jwts = {token for url in join_urls for token in JWT.findall(url)}
    jwts |= {token for value in values if value for token in JWT.findall(value)}
    assert len(jwts) >= 6  # a JWT per click (one minted in the same second for the same room may be identical)
    join_tokens = [url.rsplit("/j/", 1)[1] for url in join_urls if url.startswith(BRIDGE + "/j/")]
    assert len(join_tokens) == 6
    assert len(state.issued) == 4  # the install's pair and the refresh's
    secrets = {
        "client secret": [config.pipedrive.client_secret],
        "vault key": [old_key, new_key],
        "Jitsi app_secret": [APP_SECRET],
        "Pipedrive token": state.issued,
        "authorization code": codes,
        "JWT of a join link": sorted(jwts),
        "join link token": join_tokens,
    }
    at_rest = database_text(after)
    assert link_id.encode() in at_rest and key_id(new_key).encode() in at_rest  # the dump is a real one
    logged = logs.getvalue() + rotated.stdout + rotated.stderr
    assert "meeting created" in logged and "Pipedrive tokens refreshed" in logged  # the logs are real too
    for kind, values_ in secrets.items():
        for value in values_:
            assert value.encode() not in at_rest, f"a {kind} is in the database in the clear"
            assert value not in logged, f"a {kind} reached the logs"
    # nor a piece of a JWT big enough to matter (its signature)
    for token in jwts:
        signature = token.rsplit(".", 1)[1]
        assert signature.encode() not in at_rest and signature not in logged
