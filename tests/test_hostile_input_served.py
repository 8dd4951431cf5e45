"""Hostile input against a real ``serve`` (Jitsi, SQLite): each answers a 4xx in Pipedrive's JSON shape,
never a 5xx, and nothing is written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import httpx

from bridge.testing import BridgeProcess, basic_auth, make_config, prepared_store, running, write_config_toml

BODIES = [
    # a lone surrogate, as its JSON escape: nothing may encode it before validation refuses it
    (b'{"topic": "\\ud800", "start_time": "2031-05-14 09:30", "duration": 30}', "topic"),
    # a meeting ending after 9999-12-31 23:59
    (b'{"topic": "Demo", "start_time": "9999-12-31 23:59", "duration": 44640}', "duration"),
]
UNINSTALL_IDS = ["\u00b2", "\u0661\u0662", "9" * 5000, 10**30, 2**63, 0, -5, 1.5, None]


def test_hostile_bodies_and_ids_are_400s_on_a_served_bridge(tmp_path: Path) -> None:
    config = make_config(tmp_path)

    async def create_link() -> str:
        async with prepared_store(config) as store:
            return (await store.create_link(pipedrive_user_id=5, company_id=6, user_name="Ada")).id

    link_id = anyio.run(create_link)
    path = write_config_toml(tmp_path / "bridge.toml", config, {"server": {"public_url": "https://bridge.example.com"}})
    auth = basic_auth(config.pipedrive.client_id, config.pipedrive.client_secret)
    with running(BridgeProcess.serve(path, tmp_path / "serve.log")) as server, httpx.Client(timeout=10) as http:
        for body, field in BODIES:
            answer = http.post(
                f"{server.url}/api/v1/links/{link_id}/meetings",
                content=body,
                headers={**auth, "content-type": "application/json"},
            )
            assert answer.status_code == 400, answer.text
            assert answer.json()["success"] is False and field in answer.json()["error"], answer.text
        for key in ("company_id", "user_id"):
            for value in UNINSTALL_IDS:
                notice = {"client_id": config.pipedrive.client_id, "company_id": 6, "user_id": 5, key: value}
                answer = http.request("DELETE", f"{server.url}/oauth/callback", json=notice, headers=auth)
                assert answer.status_code == 400 and key in answer.json()["error"], (key, value, answer.text)
        log = server.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-2000:]
    db = sqlite3.connect(str(tmp_path / "bridge.sqlite3"))
    try:
        assert db.execute("SELECT count(*) FROM meeting").fetchone() == (0,)
        assert db.execute("SELECT status FROM link").fetchall() == [("active",)], "nothing was uninstalled"
    finally:
        db.close()
