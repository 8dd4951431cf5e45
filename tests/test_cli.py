"""The real ``pipedrive-video-bridge`` command, run in subprocesses against a TOML file in tmp_path."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from bridge.api.manifest import VERSION, manifest_problems
from bridge.config import load_config
from bridge.runtime import open_store, prepare_database
from bridge.storage.store import Store, make_engine
from bridge.storage.vault import Vault, generate_key, key_id
from bridge.testing import write_toml

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 60


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any PVB_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PVB_")}
    env.update(extra)
    return env


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def base_config(tmp_path: Path, keys: list[str] | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, dict[str, Any]] = {
        "server": {"public_url": "https://bridge.example.com"},
        "pipedrive": {"client_id": "cli-test-client", "client_secret": "cli-test-secret-value"},
        "database": {"url": f"sqlite:///{tmp_path / 'bridge.sqlite3'}"},
        "vault": {"keys": keys or [generate_key()]},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_toml(tmp_path / "bridge.toml", base_config(tmp_path))


# --- check ----------------------------------------------------------------------------


def test_check_ok(tmp_path: Path, config_file: Path) -> None:
    result = cli("-c", str(config_file), "check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "jitsi" in result.stdout
    assert "cli-test-secret-value" not in result.stdout + result.stderr


def test_check_lists_every_config_problem_with_where(tmp_path: Path) -> None:
    raw = base_config(
        tmp_path,
        server={"port": "eighty", "public_url": "ftp://bridge.example.com"},
        logging={"level": "LOUD"},
        bogus={"x": 1},
    )
    path = write_toml(tmp_path / "bridge.toml", raw)
    result = cli("-c", str(path), "check", cwd=tmp_path)
    assert result.returncode != 0
    for where in ["[server] port: ", "[server] public_url: ", "[logging] level: ", "[bogus]: "]:
        assert where in result.stderr, result.stderr
    assert result.stdout == ""


def test_check_reports_plugin_level_problems(tmp_path: Path) -> None:
    raw = base_config(tmp_path, meetings={"default_backend": "jitsi", "allowed_backends": ["jitsi", "skype"]})
    raw["backends.jitsi"] = {"mode": "nonsense"}
    path = write_toml(tmp_path / "bridge.toml", raw)
    result = cli("-c", str(path), "check", cwd=tmp_path)
    assert result.returncode == 1
    assert "2 problem(s)" in result.stderr, result.stderr
    assert "[backends.jitsi] mode" in result.stderr
    assert "[meetings] allowed_backends: no installed plugin provides 'skype'" in result.stderr


def test_a_missing_config_file_is_an_error(tmp_path: Path) -> None:
    result = cli("-c", str(tmp_path / "absent.toml"), "check", cwd=tmp_path)
    assert result.returncode != 0
    assert f"{tmp_path / 'absent.toml'}: file not found" in result.stderr


# --- manifest -------------------------------------------------------------------------


def test_manifest_to_a_file(tmp_path: Path, config_file: Path) -> None:
    out = tmp_path / "out" / "manifest.json"
    out.parent.mkdir()
    result = cli("-c", str(config_file), "manifest", "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads(out.read_text())
    assert manifest_problems(manifest) == []
    assert manifest["version"] == VERSION == "v202049"
    assert manifest["clientId"] == "cli-test-client"
    endpoints = manifest["endpoints"]
    assert set(endpoints) == {"postMeeting", "patchUpdateMeeting", "deleteMeeting"}
    for url in endpoints.values():
        assert url.startswith("https://bridge.example.com/"), url
        assert ":linkId" in url
    for name in ("patchUpdateMeeting", "deleteMeeting"):
        assert endpoints[name].index(":linkId") < endpoints[name].index(":meetingId")
    assert ":meetingId" not in endpoints["postMeeting"]


def test_manifest_with_a_non_http_public_url_fails_at_config(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "bridge.toml", base_config(tmp_path, server={"public_url": "ftp://bridge.example.com"})
    )
    result = cli("-c", str(path), "manifest", "-o", str(tmp_path / "m.json"), cwd=tmp_path)
    assert result.returncode != 0
    assert "[server] public_url: " in result.stderr
    assert not (tmp_path / "m.json").exists()


def test_checked_in_manifest_matches_the_example_config(tmp_path: Path) -> None:
    checked_in, example = REPO / "manifest.json", REPO / "config.example.toml"
    if not checked_in.exists() or not example.exists():
        pytest.skip("manifest.json or config.example.toml is not written yet")
    result = cli("-c", str(example), "manifest", "-o", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == checked_in.read_text(encoding="utf-8"), (
        "manifest.json is stale: regenerate it with `pipedrive-video-bridge -c config.example.toml manifest`"
    )
    assert manifest_problems(json.loads(result.stdout)) == []


# --- links, keys, migrate ---------------------------------------------------------------


def test_links_create_and_list(tmp_path: Path, config_file: Path) -> None:
    created = cli("-c", str(config_file), "links", "create", "--user-id", "1", "--company-id", "2", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    link_id = created.stdout.strip()
    assert str(uuid.UUID(link_id)) == link_id
    listed = cli("-c", str(config_file), "links", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith(link_id))
    assert "user=1" in line and "company=2" in line and "status=active" in line


def test_keys_generate_prints_a_valid_key(tmp_path: Path) -> None:
    result = cli("keys", "generate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}=", key)
    Vault([key])
    assert list(tmp_path.iterdir()) == [], "generating a key must not touch files"


async def _put_secrets(config_path: Path, values: dict[str, str]) -> None:
    config = load_config(config_path, env={})
    store = open_store(config)
    try:
        await prepare_database(store, config)
        for name, value in values.items():
            await store.put_secret("link:cli:backend:jitsi", name, value)
    finally:
        store.close()


async def _get_secrets(database_url: str, keys: list[str], names: list[str]) -> dict[str, str | None]:
    store = Store(make_engine(database_url), Vault(keys))
    try:
        return {name: await store.get_secret("link:cli:backend:jitsi", name) for name in names}
    finally:
        store.close()


def test_keys_rotate_moves_rows_to_the_new_first_key(tmp_path: Path) -> None:
    key_a, key_b = generate_key(), generate_key()
    path = write_toml(tmp_path / "bridge.toml", base_config(tmp_path, keys=[key_a]))
    values = {"token": "tok-value-1", "refresh": "refresh-value-2"}
    anyio.run(_put_secrets, path, values)

    write_toml(path, base_config(tmp_path, keys=[key_b]))  # the old key dropped too early
    refused = cli("-c", str(path), "keys", "rotate", cwd=tmp_path)
    assert refused.returncode != 0
    assert key_id(key_a) in refused.stderr and key_b not in refused.stderr

    write_toml(path, base_config(tmp_path, keys=[key_b, key_a]))
    result = cli("-c", str(path), "keys", "rotate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 2 secret(s)" in result.stdout
    assert json.loads(result.stdout.split("rows per key id: ", 1)[1]) == {key_id(key_b): 2}
    assert key_a not in result.stdout + result.stderr and key_b not in result.stdout + result.stderr

    url = f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
    assert anyio.run(_get_secrets, url, [key_b], list(values)) == values
    again = cli("-c", str(path), "keys", "rotate", cwd=tmp_path)
    assert again.returncode == 0 and "re-encrypted 0 secret(s)" in again.stdout


def test_migrate_twice(tmp_path: Path, config_file: Path) -> None:
    first = cli("-c", str(config_file), "migrate", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied migrations ['0001', ")
    second = cli("-c", str(config_file), "migrate", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "schema is up to date" in second.stdout


# --- plugins --------------------------------------------------------------------------


def test_plugins_lists_jitsi(tmp_path: Path) -> None:
    result = cli("plugins", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("jitsi"))
    assert "backends: jitsi" in line


def test_plugins_json(tmp_path: Path) -> None:
    result = cli("plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    jitsi = next(row for row in rows if row["name"] == "jitsi")
    assert jitsi["backends"] == ["jitsi"] and jitsi["error"] is None
    assert jitsi["version"]
    assert all(set(row) == {"name", "version", "backends", "error"} for row in rows)


# --- the local trial and its key --------------------------------------------------------


def test_a_trial_on_sqlite_creates_its_key_beside_the_database(tmp_path: Path) -> None:
    first = cli("links", "create", "--user-id", "7", "--company-id", "8", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    key_file, database = tmp_path / "bridge.key", tmp_path / "bridge.sqlite3"
    assert database.exists() and key_file.exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keys = [line for line in key_file.read_text().splitlines() if line.strip()]
    assert len(keys) == 1
    Vault(keys)
    listed = cli("links", "list", cwd=tmp_path)  # the same key is reused
    assert listed.returncode == 0, listed.stderr
    assert first.stdout.strip() in listed.stdout
    assert [line for line in key_file.read_text().splitlines() if line.strip()] == keys


def test_postgresql_without_keys_is_a_config_error(tmp_path: Path) -> None:
    env = clean_env(PVB_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/postgres")
    result = cli("links", "list", cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "[vault] keys: are required with PostgreSQL" in result.stderr
    assert not (tmp_path / "bridge.key").exists()
