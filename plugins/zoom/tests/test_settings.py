"""``[backends.zoom]``: every bad setting is a ValueError naming it; the auth mode picks the backend class."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pipedrive_video_bridge_zoom import ZoomBackend, ZoomUserBackend
from pipedrive_video_bridge_zoom.settings import KNOWN_SETTINGS

ACCOUNT = {"client_id": "id", "client_secret": "secret", "account_id": "acct"}
USER = {"auth": "user", "client_id": "id", "client_secret": "secret"}


def test_defaults_are_zoom_itself_with_server_to_server_auth() -> None:
    backend = ZoomBackend.from_config(ACCOUNT)
    assert type(backend) is ZoomBackend and not backend.needs_user_account
    assert backend.settings.api_base == "https://api.zoom.us/v2"
    assert backend.settings.oauth_base == "https://zoom.us"
    assert backend.settings.switches == {} and backend.settings.default_password is None


def test_user_auth_is_the_backend_with_a_connect_flow() -> None:
    backend = ZoomBackend.from_config(USER)
    assert isinstance(backend, ZoomUserBackend) and backend.needs_user_account
    assert backend.name == "zoom"


def test_meeting_settings_and_bases_are_read() -> None:
    backend = ZoomBackend.from_config(
        {
            **ACCOUNT,
            "api_base": "http://127.0.0.1:9/v2/",
            "waiting_room": True,
            "join_before_host": False,
            "passcode": "a1@-_*",
            "fallback_host": "x@y.z",
        }
    )
    assert backend.settings.api_base == "http://127.0.0.1:9/v2"
    assert backend.settings.switches == {"waiting_room": True, "join_before_host": False}
    assert backend.settings.passcode == "a1@-_*" and backend.settings.fallback_host == "x@y.z"


def test_the_client_secret_is_not_in_the_settings_repr() -> None:
    backend = ZoomBackend.from_config({**ACCOUNT, "client_secret": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(backend.settings)


@pytest.mark.parametrize(
    ("config", "setting"),
    [
        ({**ACCOUNT, "nope": 1}, "nope"),
        ({**ACCOUNT, "auth": "jwt"}, "auth"),
        ({k: v for k, v in ACCOUNT.items() if k != "client_id"}, "client_id"),
        ({**ACCOUNT, "client_secret": " "}, "client_secret"),
        ({k: v for k, v in ACCOUNT.items() if k != "account_id"}, "account_id"),
        ({**USER, "account_id": "acct"}, "account_id"),
        ({**USER, "fallback_host": "x@y.z"}, "fallback_host"),
        ({**ACCOUNT, "api_base": "api.zoom.us/v2"}, "api_base"),
        ({**ACCOUNT, "oauth_base": "ftp://zoom.us"}, "oauth_base"),
        ({**ACCOUNT, "waiting_room": "yes"}, "waiting_room"),
        ({**ACCOUNT, "default_password": 1}, "default_password"),
        ({**ACCOUNT, "passcode": "eleven-char"}, "passcode"),
        ({**ACCOUNT, "passcode": "white space"}, "passcode"),
        ({**ACCOUNT, "passcode": "abc", "default_password": True}, "passcode"),
    ],
)
def test_bad_settings_name_the_setting(config: dict[str, Any], setting: str) -> None:
    with pytest.raises(ValueError) as raised:
        ZoomBackend.from_config(config)
    assert str(raised.value).startswith(setting + ":")


def test_every_setting_is_documented_in_the_example_config() -> None:
    example = Path(__file__).resolve().parents[3] / "config.example.toml"
    if not example.exists():
        pytest.skip("not in a checkout of the bridge")
    block = re.split(r"^#? ?\[backends\.", example.read_text().split("# [backends.zoom]", 1)[1], flags=re.M)[0]
    documented = dict(re.findall(r"^# (\w+) = (.+)$", block, flags=re.M))
    assert set(documented) == KNOWN_SETTINGS
    values = tomllib.loads("\n".join(f"{key} = {value}" for key, value in documented.items()))
    del values["passcode"]  # a placeholder, and not allowed with default_password = true
    ZoomBackend.from_config(values)  # the documented values are valid
