"""The ``[backends.teams]`` table: every mistake an admin can make is refused at start-up with the setting's name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pipedrive_video_bridge_teams import TeamsBackend, TeamsUserBackend
from pipedrive_video_bridge_teams.fake_teams import write_certificate
from pipedrive_video_bridge_teams.settings import KNOWN_SETTINGS

from bridge.plugin import Backend
from bridge.testing import generate_key, write_toml

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "11111111-2222-4333-8444-555555555555"
BASE = {"tenant_id": TENANT_ID, "client_id": CLIENT_ID, "client_secret": "s3cret-value"}


def test_company_mode_is_the_default() -> None:
    backend = TeamsBackend.from_config(BASE)
    assert type(backend) is TeamsBackend and not backend.needs_user_account and backend.finds_rooms
    assert backend.settings.graph_base == "https://graph.microsoft.com/v1.0"
    assert backend.login.token_url == f"https://login.microsoftonline.com/{TENANT_ID}/oauth2/v2.0/token"
    assert "s3cret-value" not in repr(backend.settings)


def test_user_mode_needs_no_tenant_and_lets_any_work_account_sign_in() -> None:
    backend = TeamsBackend.from_config({"auth": "user", "client_id": CLIENT_ID, "client_secret": "x"})
    assert isinstance(backend, TeamsUserBackend) and backend.needs_user_account
    assert "/organizations/oauth2/v2.0/authorize" in backend.login.authorize_base


def test_a_domain_names_the_tenant_too() -> None:
    assert TeamsBackend.from_config({**BASE, "tenant_id": "contoso.onmicrosoft.com"}).settings.tenant_id


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({**BASE, "colour": "blue"}, "colour: unknown setting"),
        ({**BASE, "auth": "app"}, "auth: must be one of company, user"),
        ({k: v for k, v in BASE.items() if k != "tenant_id"}, "tenant_id: required"),
        ({**BASE, "tenant_id": "not a tenant"}, "tenant_id: a GUID or a domain"),
        ({k: v for k, v in BASE.items() if k != "client_id"}, "client_id: required"),
        ({**BASE, "client_id": "my-app"}, "client_id: the Application (client) ID, a GUID"),
        ({k: v for k, v in BASE.items() if k != "client_secret"}, "client_secret or certificate_file: required"),
        ({**BASE, "certificate_file": "/x.pem"}, "set either client_secret or certificate_file"),
        ({**BASE, "client_secret": "  "}, "client_secret: must be a non-empty string"),
        ({**BASE, "fallback_organizer": "frontdesk"}, "fallback_organizer: a user principal name"),
        ({**BASE, "auth": "user", "fallback_organizer": "a@b.example"}, "fallback_organizer: only used with"),
        ({**BASE, "graph_base": "ftp://graph"}, "graph_base: must be an http(s) URL"),
        ({**BASE, "login_base": "https://login.example/?x=1"}, "login_base: must be an http(s) URL"),
    ],
)
def test_a_bad_setting_is_refused_by_name(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        TeamsBackend.from_config(config)
    assert message in str(raised.value)


def _without_secret() -> dict[str, Any]:
    return {k: v for k, v in BASE.items() if k != "client_secret"}


def test_a_certificate_file_is_read_once_at_start_up(tmp_path: Path) -> None:
    path = write_certificate(tmp_path / "app.pem")
    backend: Backend = TeamsBackend.from_config({**_without_secret(), "certificate_file": str(path)})
    assert isinstance(backend, TeamsBackend) and backend.settings.certificate is not None
    path.unlink()  # the key is in memory: the file may go
    assert backend.settings.certificate.x5t and "PRIVATE" not in repr(backend.settings)


def test_unusable_certificate_files_are_refused_without_showing_their_contents(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match="certificate_file: cannot read"):
        TeamsBackend.from_config({**_without_secret(), "certificate_file": str(missing)})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate at all: hunter2")
    with pytest.raises(ValueError, match="holds no PEM certificate") as raised:
        TeamsBackend.from_config({**_without_secret(), "certificate_file": str(garbage)})
    assert "hunter2" not in str(raised.value)
    only_cert = tmp_path / "only-cert.pem"
    pem = write_certificate(tmp_path / "both.pem").read_bytes()
    only_cert.write_bytes(pem[pem.index(b"-----BEGIN CERTIFICATE-----") :])
    with pytest.raises(ValueError, match="no unencrypted PEM private key"):
        TeamsBackend.from_config({**_without_secret(), "certificate_file": str(only_cert)})
    mismatched = tmp_path / "mismatched.pem"
    other = write_certificate(tmp_path / "other.pem").read_bytes()
    mismatched.write_bytes(pem[: pem.index(b"-----BEGIN CERTIFICATE-----")] + other[other.index(b"-----BEGIN CERT") :])
    with pytest.raises(ValueError, match="does not belong to its certificate"):
        TeamsBackend.from_config({**_without_secret(), "certificate_file": str(mismatched)})


def test_every_setting_is_documented_in_the_example_config(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[3] / "config.example.toml"
    if not example.exists():
        pytest.skip("not in a checkout of the bridge")
    block = re.split(r"^#? ?\[backends\.", example.read_text().split("# [backends.teams]", 1)[1], flags=re.M)[0]
    documented = dict(re.findall(r"^# (\w+) = (.+)$", block, flags=re.M))
    assert set(documented) == KNOWN_SETTINGS
    values = tomllib.loads("\n".join(f"{key} = {value}" for key, value in documented.items()))
    values["certificate_file"] = str(write_certificate(tmp_path / "teams.pem"))
    del values["client_secret"]  # one credential at a time
    TeamsBackend.from_config(values)  # the documented values are valid


def test_check_reads_the_table_and_the_certificate_and_names_each_problem(tmp_path: Path) -> None:
    """``pipedrive-video-bridge check``, as an admin runs it, with the plugin installed."""
    missing = tmp_path / "nowhere.pem"
    tables = {
        "server": {"public_url": "https://bridge.example.com"},
        "pipedrive": {"client_id": "check-client", "client_secret": "check-secret-value"},
        "database": {"url": f"sqlite:///{tmp_path / 'bridge.sqlite3'}"},
        "vault": {"keys": [generate_key()]},
        "meetings": {"default_backend": "teams", "allowed_backends": ["teams"]},
        "backends.teams": {"tenant_id": TENANT_ID, "client_id": CLIENT_ID, "certificate_file": str(missing)},
    }
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}

    def check() -> subprocess.CompletedProcess[str]:
        path = write_toml(tmp_path / "bridge.toml", tables)
        command = [sys.executable, "-m", "bridge.cli", "-c", str(path), "check"]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    refused = check()
    assert refused.returncode == 1, refused.stdout
    assert f"[backends.teams] certificate_file: cannot read '{missing}'" in refused.stderr
    write_certificate(missing)
    accepted = check()
    assert accepted.returncode == 0, accepted.stderr
    assert "teams" in accepted.stdout
