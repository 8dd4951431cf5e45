"""The configuration: defaults, the example file, every kind of error, the environment, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import TRIAL_CLIENT_ID, TRIAL_CLIENT_SECRET, Config, load_config, parse_config
from bridge.errors import ConfigError
from bridge.storage.vault import generate_key

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config.example.toml"

POSTGRES = "postgresql://bridge:pw-in-url@db.internal:5432/bridge"


def problems_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as excinfo:
        parse_config(raw, env or {})
    problems = excinfo.value.problems
    assert str(excinfo.value) == "\n".join(problems)
    for problem in problems:
        where, sep, what = problem.partition(": ")
        assert sep and where and what, f"not 'where: what': {problem!r}"
    return problems


def only_problem(raw: dict[str, Any], env: dict[str, str] | None = None) -> str:
    problems = problems_of(raw, env)
    assert len(problems) == 1, problems
    return problems[0]


def production(**sections: dict[str, Any]) -> dict[str, Any]:
    """A valid non-trial config to start from."""
    raw: dict[str, Any] = {
        "pipedrive": {"client_id": "abc123", "client_secret": "s3cr3t-value"},
        "server": {"host": "0.0.0.0", "public_url": "https://bridge.example.com"},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


# --- defaults and files ---------------------------------------------------------------


def test_defaults_without_a_file_are_a_local_trial() -> None:
    for config in (parse_config({}, {}), load_config(None, env={})):
        assert config.source is None
        assert config.pipedrive.trial
        assert config.pipedrive.client_id == TRIAL_CLIENT_ID
        assert config.pipedrive.client_secret == TRIAL_CLIENT_SECRET
        assert config.server.host == "127.0.0.1" and config.server.port == 8000
        assert config.server.public_url.startswith("http://127.0.0.1")
        assert config.database.is_sqlite and config.database.sqlite_path == Path("bridge.sqlite3")
        assert config.database.auto_migrate is True
        assert config.vault.keys == () and config.vault.key_file is None
        assert config.meetings.default_backend == "jitsi"
        assert config.meetings.allowed_backends == ("jitsi",)
        assert config.backends == {}
        assert config.logging.level == "INFO"


def test_a_production_config_parses() -> None:
    key = generate_key()
    config = parse_config(
        production(
            database={"url": POSTGRES},
            vault={"keys": [key]},
            logging={"level": "debug", "format": "text"},
            meetings={"default_backend": "zoom", "allowed_backends": ["jitsi", "zoom"]},
            backends={"jitsi": {"mode": "token", "app_secret": "jitsi-app-secret"}, "zoom": {}},
        ),
        {},
    )
    assert not config.pipedrive.trial
    assert config.server.host == "0.0.0.0"
    assert config.database.url == "postgresql+psycopg://bridge:pw-in-url@db.internal:5432/bridge"
    assert not config.database.is_sqlite and config.database.sqlite_path is None
    assert config.vault.keys == (key,)
    assert config.logging.level == "DEBUG" and config.logging.format == "text"
    assert config.meetings.allowed_backends == ("jitsi", "zoom")
    assert config.backend_table("jitsi") == {"mode": "token", "app_secret": "jitsi-app-secret"}
    assert config.backend_table("absent") == {}
    assert config.server.public_url == "https://bridge.example.com"


def test_public_url_loses_its_trailing_slash() -> None:
    assert (
        parse_config({"server": {"public_url": "https://b.example.com/bridge/"}}, {}).server.public_url
        == "https://b.example.com/bridge"
    )


def test_the_example_config_loads_cleanly() -> None:
    if not EXAMPLE.exists():
        pytest.skip("config.example.toml is not written yet")
    config = load_config(EXAMPLE, env={})
    assert isinstance(config, Config)
    assert config.source == EXAMPLE
    assert config.meetings.default_backend in config.meetings.allowed_backends


def test_a_file_is_read_and_relative_key_files_resolve_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "bridge.toml"
    path.parent.mkdir()
    path.write_text('[server]\nport = 9001\n\n[vault]\nkey_file = "keys/bridge.key"\n')
    config = load_config(path, env={})
    assert config.source == path
    assert config.server.port == 9001
    assert config.vault.key_file == tmp_path / "conf" / "keys" / "bridge.key"


def test_pvb_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text("[server]\nport = 9002\n")
    assert load_config(None, env={"PVB_CONFIG": str(path)}).server.port == 9002


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    assert len(excinfo.value.problems) == 1
    assert excinfo.value.problems[0].startswith(f"{path}: not valid TOML")


def test_a_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as excinfo:
        load_config(path, env={})
    assert excinfo.value.problems == [f"{path}: file not found"]


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "where", "says"),
    [
        ({"bogus": {"x": 1}}, "[bogus]", "unknown section"),
        ({"server": {"bogus": 1}}, "[server] bogus", "unknown setting"),
        ({"server": {"port": "8000"}}, "[server] port", "integer between 1 and 65535"),
        ({"server": {"port": 0}}, "[server] port", "integer between 1 and 65535"),
        ({"server": {"port": 70000}}, "[server] port", "integer between 1 and 65535"),
        ({"server": {"port": True}}, "[server] port", "integer between 1 and 65535"),
        ({"server": {"host": "bad host!"}}, "[server] host", "host name or IP address"),
        ({"server": {"public_url": "ftp://bridge.example.com"}}, "[server] public_url", "http(s) URL"),
        ({"server": {"public_url": "bridge.example.com"}}, "[server] public_url", "http(s) URL"),
        ({"server": {"public_url": "https://b.example.com/?x=1"}}, "[server] public_url", "http(s) URL"),
        ({"server": {"public_url": 42}}, "[server] public_url", "http(s) URL"),
        ({"server": {"max_body_bytes": -1}}, "[server] max_body_bytes", "positive integer"),
        ({"server": {"max_body_bytes": "64k"}}, "[server] max_body_bytes", "positive integer"),
        ({"server": {"backend_timeout_seconds": 0}}, "[server] backend_timeout_seconds", "positive number"),
        ({"logging": {"level": "LOUD"}}, "[logging] level", "DEBUG, INFO, WARNING, ERROR"),
        ({"logging": {"level": 10}}, "[logging] level", "DEBUG, INFO, WARNING, ERROR"),
        ({"logging": {"format": "xml"}}, "[logging] format", '"json" or "text"'),
        ({"database": {"url": "mysql://u@h/db"}}, "[database] url", "sqlite:///PATH or postgresql://"),
        ({"database": {"url": 5}}, "[database] url", "sqlite:///PATH or postgresql://"),
        ({"database": {"auto_migrate": "yes"}}, "[database] auto_migrate", "true or false"),
        ({"vault": {"keys": []}}, "[vault] keys", "list of keys"),
        ({"vault": {"keys": [1]}}, "[vault] keys", "list of keys"),
        ({"meetings": {"default_backend": "zoom"}}, "[meetings] default_backend", "not in allowed_backends"),
        ({"meetings": {"default_backend": "Zoom!"}}, "[meetings] default_backend", "backend name"),
        ({"meetings": {"allowed_backends": []}}, "[meetings] allowed_backends", "non-empty list"),
        ({"meetings": {"allowed_backends": "jitsi"}}, "[meetings] allowed_backends", "non-empty list"),
        ({"pipedrive": {"client_id": "abc123"}}, "[pipedrive] client_secret", "required once client_id is set"),
        ({"pipedrive": {"client_id": ""}}, "[pipedrive] client_id", "non-empty string"),
        ({"database": {"url": "postgresql://u@h/db"}}, "[vault] keys", "required with PostgreSQL"),
        ({"server": {"host": "0.0.0.0"}}, "[server] host", "not a loopback address"),
        ({"backends": {"Bad Name": {}}}, "[backends.Bad Name]", "a-z, 0-9"),
        ({"backends": {"jitsi": "meet.jit.si"}}, "[backends.jitsi]", "must be a table"),
        ({"backends": []}, "[backends]", "table of tables"),
    ],
)
def test_each_problem_says_where_and_what(raw: dict[str, Any], where: str, says: str) -> None:
    problem = only_problem(raw)
    assert problem.startswith(f"{where}: "), problem
    assert says in problem


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_trial_credentials_are_fine_on_loopback(host: str) -> None:
    assert parse_config({"server": {"host": host}}, {}).pipedrive.trial


def test_a_section_that_is_not_a_table_is_reported() -> None:
    problem = only_problem({"server": 5})
    assert "server" in problem.partition(": ")[0] and "must be a table" in problem


def test_every_problem_is_reported_at_once() -> None:
    raw = {
        "bogus": {},
        "server": {"port": "eighty", "public_url": "ftp://x", "max_body_bytes": 0, "host": "0.0.0.0", "colour": "blue"},
        "pipedrive": {"client_id": "abc123"},
        "logging": {"level": "LOUD"},
        "database": {"url": "mysql://root@db/bridge"},
        "meetings": {"default_backend": "zoom", "allowed_backends": ["jitsi"]},
    }
    problems = problems_of(raw)
    wheres = [p.partition(": ")[0] for p in problems]
    expected = [
        "[bogus]",
        "[server] port",
        "[server] public_url",
        "[server] max_body_bytes",
        "[server] colour",
        "[logging] level",
        "[database] url",
        "[meetings] default_backend",
        "[pipedrive] client_secret",
        "[server] host",
    ]
    for where in expected:
        assert where in wheres, f"{where} missing from {problems}"
    assert len(problems) == len(expected), problems


def test_postgresql_url_without_keys_is_reported_with_other_problems() -> None:
    problems = problems_of({"database": {"url": "postgres://u@h/db"}, "server": {"port": -5}})
    assert {p.partition(": ")[0] for p in problems} == {"[vault] keys", "[server] port"}


def test_a_key_file_is_enough_for_postgresql(tmp_path: Path) -> None:
    config = parse_config({"database": {"url": "postgresql://u@h/db"}, "vault": {"key_file": str(tmp_path / "k")}}, {})
    assert config.vault.key_file == tmp_path / "k"


@pytest.mark.parametrize(
    ("raw", "env", "secret"),
    [
        ({"pipedrive": {"client_id": "abc", "client_secret": 1234567890}}, {}, "1234567890"),
        ({"pipedrive": {"client_id": "abc", "client_secret": ["hidden-in-a-list"]}}, {}, "hidden-in-a-list"),
        ({"database": {"url": "mysql://root:hunter2-pw@db/bridge"}}, {}, "hunter2-pw"),
        ({}, {"PVB_DATABASE_URL": "mysql://root:hunter2-pw@db/bridge"}, "hunter2-pw"),
        ({"vault": {"keys": [12345678901]}}, {}, "12345678901"),
    ],
)
def test_problems_never_echo_secret_values(raw: dict[str, Any], env: dict[str, str], secret: str) -> None:
    problems = problems_of(raw, env)
    assert problems
    for problem in problems:
        assert secret not in problem
    assert any("value hidden" in p for p in problems)


def test_non_secret_values_are_echoed_to_help() -> None:
    assert "'eighty'" in only_problem({"server": {"port": "eighty"}})


# --- the environment ------------------------------------------------------------------


def test_environment_overrides() -> None:
    key_a, key_b = generate_key(), generate_key()
    env = {
        "PVB_PIPEDRIVE_CLIENT_ID": "from-env",
        "PVB_PIPEDRIVE_CLIENT_SECRET": "env-client-secret",
        "PVB_DATABASE_URL": "postgres://bridge@db.internal:5432/bridge",
        "PVB_VAULT_KEYS": f" {key_a} , {key_b},",
        "PVB_BACKENDS_JITSI_APP_SECRET": "jitsi-env-secret",
        "PVB_SERVER_PORT": "9100",
        "PVB_SERVER_PUBLIC_URL": "https://env.example.com",
        "UNRELATED": "ignored",
    }
    raw = {"pipedrive": {"client_id": "from-file", "client_secret": "file-secret"}}
    config = parse_config(raw, env)
    assert config.pipedrive.client_id == "from-env"
    assert config.pipedrive.client_secret == "env-client-secret"
    assert config.database.url == "postgresql+psycopg://bridge@db.internal:5432/bridge"
    assert config.vault.keys == (key_a, key_b)
    assert config.backends["jitsi"]["app_secret"] == "jitsi-env-secret"
    assert config.server.port == 9100
    assert config.server.public_url == "https://env.example.com"


def test_environment_reaches_load_config(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text('[pipedrive]\nclient_id = "abc"\nclient_secret = "from-the-file"\n')
    config = load_config(path, env={"PVB_PIPEDRIVE_CLIENT_SECRET": "from-the-env"})
    assert config.pipedrive.client_secret == "from-the-env"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////var/lib/bridge/bridge.sqlite3", "sqlite:////var/lib/bridge/bridge.sqlite3"),
    ],
)
def test_database_urls_are_normalised(url: str, expected: str) -> None:
    config = parse_config({"vault": {"keys": [generate_key()]}}, {"PVB_DATABASE_URL": url})
    assert config.database.url == expected


def test_backend_settings_from_the_environment_merge_into_the_table() -> None:
    raw = {"backends": {"jitsi": {"mode": "token", "app_id": "bridge"}, "my-vendor": {"region": "eu"}}}
    env = {"PVB_BACKENDS_JITSI_APP_SECRET": "s1-secret", "PVB_BACKENDS_MY_VENDOR_API_KEY": "s2-secret"}
    config = parse_config(raw, env)
    assert config.backends["jitsi"] == {"mode": "token", "app_id": "bridge", "app_secret": "s1-secret"}
    assert config.backends["my-vendor"] == {"region": "eu", "api_key": "s2-secret"}


@pytest.mark.parametrize("var", ["PVB_BACKENDS_", "PVB_BACKENDS_JITSI", "PVB_BACKENDS_9X_KEY"])
def test_a_malformed_backend_variable_is_reported(var: str) -> None:
    problem = only_problem({}, {var: "value"})
    assert problem.startswith(f"environment {var}: ")
    assert "PVB_BACKENDS_<NAME>_<SETTING>" in problem


def test_a_bad_environment_value_names_the_variable() -> None:
    problem = only_problem({}, {"PVB_SERVER_PORT": "http"})
    assert problem.startswith("environment PVB_SERVER_PORT: ")


# --- secrets --------------------------------------------------------------------------


def test_secret_values_lists_every_configured_secret() -> None:
    key_a, key_b = generate_key(), generate_key()
    raw = production(
        vault={"keys": [key_a, key_b]},
        backends={
            "jitsi": {
                "mode": "token",
                "app_id": "bridge-app",
                "domain": "meet.example.com",
                "app_secret": "jitsi-app-secret",
            },
            "zoom": {
                "client_secret": "zoom-client-secret",
                "api_key": "zoom-api-key",
                "token": "zoom-token-1",
                "password": "zoom-password",
                "short": "abc",
                "port": 443,
            },
        },
    )
    values = parse_config(raw, {"PVB_BACKENDS_OTHER_ACCESS_TOKEN": "other-access-token"}).secret_values()
    for secret in [
        "s3cr3t-value",
        key_a,
        key_b,
        "jitsi-app-secret",
        "zoom-client-secret",
        "zoom-api-key",
        "zoom-token-1",
        "zoom-password",
        "other-access-token",
    ]:
        assert secret in values
    for not_secret in ["bridge-app", "meet.example.com", "token", "abc123"]:
        assert not_secret not in values


def test_config_repr_shows_no_secret() -> None:
    key = generate_key()
    config = parse_config(
        production(
            database={"url": POSTGRES}, vault={"keys": [key]}, backends={"jitsi": {"app_secret": "jitsi-app-secret"}}
        ),
        {},
    )
    text = repr(config)
    for secret in ["s3cr3t-value", key, "pw-in-url", "jitsi-app-secret"]:
        assert secret not in text


def test_a_client_id_with_a_colon_is_rejected() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"pipedrive": {"client_id": "a:b", "client_secret": "s3cret-value"}}, env={})
    assert any(p.startswith("[pipedrive] client_id:") and "':'" in p for p in caught.value.problems)
