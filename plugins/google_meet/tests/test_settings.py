"""``[backends.google_meet]``: every bad setting is a ValueError naming it; the auth mode picks the backend class;
the service account's key file is read once, at start-up."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pipedrive_video_bridge_google_meet import GoogleMeetBackend, GoogleMeetUserBackend
from pipedrive_video_bridge_google_meet.fake_google import FakeGoogleState
from pipedrive_video_bridge_google_meet.settings import KNOWN_SETTINGS

USER = {"auth": "user", "client_id": "id.apps.googleusercontent.com", "client_secret": "GOCSPX-secret"}


@pytest.fixture
def key_path(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    return FakeGoogleState().new_service_account(tmp_path, key=rsa_key)


def company(key_path: Path, **more: Any) -> dict[str, Any]:
    return {"service_account_file": str(key_path), **more}


def test_defaults_are_google_itself_with_the_service_account(key_path: Path) -> None:
    backend = GoogleMeetBackend.from_config(company(key_path))
    assert type(backend) is GoogleMeetBackend and not backend.needs_user_account
    settings = backend.settings
    assert settings.auth == "company" and settings.calendar_id == "primary"
    assert settings.api_base == "https://www.googleapis.com/calendar/v3"
    assert settings.token_uri == "https://oauth2.googleapis.com/token"
    assert settings.auth_base == "https://accounts.google.com"
    record = json.loads(key_path.read_text())
    assert settings.service_account is not None
    assert settings.service_account.client_email == record["client_email"]
    assert settings.service_account.private_key_id == record["private_key_id"]


def test_user_auth_is_the_backend_with_a_connect_flow() -> None:
    backend = GoogleMeetBackend.from_config(USER)
    assert isinstance(backend, GoogleMeetUserBackend) and backend.needs_user_account
    assert backend.name == "google_meet" and backend.title == "Google Meet"


def test_the_key_file_is_read_once_at_start_up(key_path: Path) -> None:
    backend = GoogleMeetBackend.from_config(company(key_path))
    key_path.unlink()  # gone afterwards: the backend already holds the parsed key
    assert backend.settings.service_account is not None


def test_no_secret_is_in_the_settings_repr(key_path: Path) -> None:
    record = json.loads(key_path.read_text())
    shown = repr(GoogleMeetBackend.from_config(company(key_path)).settings)
    body = "".join(line for line in record["private_key"].splitlines() if "PRIVATE KEY" not in line)
    assert body[:40] not in shown and "PRIVATE" not in shown
    assert "GOCSPX-secret" not in repr(GoogleMeetBackend.from_config(USER).settings)


def write(path: Path, content: Any) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("{not json", "is not JSON"),
        ({"type": "authorized_user", "client_id": "x"}, "is not a service account key"),
        (["a list"], "is not a service account key"),
        ({"type": "service_account", "client_email": "a@b.c", "private_key_id": "k"}, "lacks private_key"),
        (
            {"type": "service_account", "client_email": "a@b.c", "private_key_id": "k", "private_key": "garbage"},
            "not a readable RSA private key",
        ),
    ],
)
def test_a_bad_key_file_is_a_value_error_naming_the_setting_not_the_key(
    tmp_path: Path, content: Any, says: str
) -> None:
    path = write(tmp_path / "key.json", content)
    with pytest.raises(ValueError) as raised:
        GoogleMeetBackend.from_config(company(path))
    message = str(raised.value)
    assert message.startswith(f"service_account_file: {path}") and says in message
    assert "garbage" not in message


def test_a_missing_key_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^service_account_file: .*nope\.json cannot be read"):
        GoogleMeetBackend.from_config(company(tmp_path / "nope.json"))


def test_a_key_whose_private_key_is_damaged_is_refused(key_path: Path, tmp_path: Path) -> None:
    record = json.loads(key_path.read_text())
    record["private_key"] = record["private_key"].replace("\n", "\n\n", 3)[:200] + "\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ValueError, match="not a readable RSA private key"):
        GoogleMeetBackend.from_config(company(write(tmp_path / "cut.json", record)))


@pytest.mark.parametrize(
    ("config", "setting"),
    [
        ({"nope": 1}, "nope"),
        ({"auth": "account"}, "auth"),
        ({}, "service_account_file"),
        ({"service_account_file": " "}, "service_account_file"),
        ({**USER, "service_account_file": "x.json"}, "service_account_file"),
        ({"auth": "user", "client_secret": "s"}, "client_id"),
        ({"auth": "user", "client_id": "i"}, "client_secret"),
        ({**USER, "api_base": "www.googleapis.com/calendar/v3"}, "api_base"),
        ({**USER, "token_uri": "ftp://oauth2.googleapis.com/token"}, "token_uri"),
        ({**USER, "auth_base": "https://accounts.google.com?x=1"}, "auth_base"),
        ({**USER, "calendar_id": 7}, "calendar_id"),
    ],
)
def test_bad_settings_name_the_setting(config: dict[str, Any], setting: str) -> None:
    with pytest.raises(ValueError) as raised:
        GoogleMeetBackend.from_config(config)
    assert str(raised.value).startswith(setting + ":")


@pytest.mark.parametrize("setting", ["client_id", "client_secret"])
def test_user_mode_settings_are_refused_in_company_mode(key_path: Path, setting: str) -> None:
    with pytest.raises(ValueError, match=f"^{setting}: only used with auth = 'user'"):
        GoogleMeetBackend.from_config(company(key_path, **{setting: "x"}))


def test_every_setting_is_documented_in_the_example_config(key_path: Path) -> None:
    example = Path(__file__).resolve().parents[3] / "config.example.toml"
    if not example.exists():
        pytest.skip("not in a checkout of the bridge")
    block = re.split(
        r"^#? ?\[backends\.|^# Microsoft Teams", example.read_text().split("# [backends.google_meet]", 1)[1], flags=re.M
    )[0]
    documented = dict(re.findall(r"^# (\w+) = (.+)$", block, flags=re.M))
    assert set(documented) == KNOWN_SETTINGS
    values = tomllib.loads("\n".join(f"{key} = {value}" for key, value in documented.items()))
    user = {k: v for k, v in values.items() if k != "service_account_file"}
    GoogleMeetBackend.from_config({**user, "auth": "user"})  # the documented values are valid
    company_values = {k: v for k, v in values.items() if k not in ("client_id", "client_secret")}
    GoogleMeetBackend.from_config({**company_values, "auth": "company", "service_account_file": str(key_path)})
