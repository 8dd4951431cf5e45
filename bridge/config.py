"""The configuration: one TOML file plus a few environment variables, parsed once.

``load_config`` reads the file, overlays the environment, checks every value and
returns a frozen :class:`Config`. Every problem is collected and reported as
``where: what`` (``[server] port: must be an integer between 1 and 65535``), so
``pipedrive-video-bridge check`` can list them all at once. Nothing else in the
code reads the environment or the TOML.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge.errors import ConfigError

ENV_PREFIX = "PVB_"
CONFIG_ENV = "PVB_CONFIG"
TRIAL_CLIENT_ID = "local-trial"
TRIAL_CLIENT_SECRET = "local-trial-secret"
BACKEND_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
JOIN_LINK_MODES = ("bridge", "vendor")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = "http://127.0.0.1:8000"
    max_body_bytes: int = 64 * 1024
    backend_timeout_seconds: float = 15.0
    vendor_attempts: int = 3
    vendor_max_retry_after_seconds: float = 10.0
    # connection limits (bridge/serving.py enforces them)
    max_header_bytes: int = 16 * 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 10.0
    keep_alive_timeout_seconds: float = 5.0
    max_connections: int = 1000


@dataclass(frozen=True)
class PipedriveConfig:
    client_id: str = TRIAL_CLIENT_ID
    client_secret: str = field(default=TRIAL_CLIENT_SECRET, repr=False)
    oauth_base: str = "https://oauth.pipedrive.com"
    # None: accept any https://<company>.pipedrive.com as api_domain; set: accept only this base
    api_base: str | None = None
    provider_links_path: str = "/api/v1/meetings/userProviderLinks"
    token_refresh_margin_seconds: int = 300
    refresh_idle_days: int = 30

    @property
    def trial(self) -> bool:
        """True while the app still uses the built-in credentials of a local trial."""
        return self.client_secret == TRIAL_CLIENT_SECRET


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = field(default="sqlite:///bridge.sqlite3", repr=False)
    auto_migrate: bool = True

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def sqlite_path(self) -> Path | None:
        if not self.is_sqlite:
            return None
        path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
        return Path(path) if path and path != ":memory:" else None


@dataclass(frozen=True)
class VaultConfig:
    keys: tuple[str, ...] = field(default=(), repr=False)
    key_file: Path | None = None


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    format: str = "json"


@dataclass(frozen=True)
class MeetingsConfig:
    default_backend: str = "jitsi"
    allowed_backends: tuple[str, ...] = ("jitsi",)
    retry_window_seconds: int = 120
    operation_lease_seconds: float = 30.0
    """How long a vendor call may hold its claim (or an outbox job); past that, another replica takes over."""
    job_retry_seconds: float = 5.0
    """The first wait before a failed outbox job runs again; it doubles each time, up to an hour."""
    job_max_attempts: int = 20
    job_poll_seconds: float = 5.0
    reconcile_interval_seconds: float = 300.0
    join_links: str = "bridge"
    """"bridge": Pipedrive gets ``<public_url>/j/<token>``, resolved at each click; "vendor": the vendor's URL."""
    backend_join_links: Mapping[str, str] = field(default_factory=dict)
    """Per backend, from ``join_links`` in its ``[backends.<name>]`` table: overrides ``join_links``."""
    join_open_hours: float = 24.0
    """How long after its scheduled end a meeting's join link still opens its room."""
    join_misses_per_minute: int = 30
    """Unknown join tokens one client may try per minute before its clicks are refused for a while."""

    def join_links_for(self, backend: str) -> str:
        return self.backend_join_links.get(backend, self.join_links)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = ServerConfig()
    pipedrive: PipedriveConfig = PipedriveConfig()
    database: DatabaseConfig = DatabaseConfig()
    vault: VaultConfig = VaultConfig()
    logging: LoggingConfig = LoggingConfig()
    meetings: MeetingsConfig = MeetingsConfig()
    backends: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    source: Path | None = None

    def backend_table(self, name: str) -> Mapping[str, Any]:
        return self.backends.get(name, {})

    def secret_values(self) -> list[str]:
        """Every configured secret, so the log redactor can scrub them."""
        values = [self.pipedrive.client_secret, *self.vault.keys]
        for table in self.backends.values():
            for key, value in table.items():
                if isinstance(value, str) and _looks_secret(key):
                    values.append(value)
        return [v for v in values if v and len(v) >= 6]


def _looks_secret(key: str) -> bool:
    return any(word in key.lower() for word in ("secret", "key", "token", "password"))


# --- parsing -------------------------------------------------------------------------


class _Problems(list[str]):
    def add(self, where: str, what: str) -> None:
        self.append(f"{where}: {what}")


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _check_host(value: Any) -> str | None:
    return value if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9.:_-]+", value) else None


def _check_port(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
    return value if ok else None


def _check_positive_int(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return value if ok else None


def _check_non_negative_int(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def _check_header_bytes(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1024
    return value if ok else None


def _check_positive_number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def _check_http_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        return None
    return value.rstrip("/")


def _check_path(value: Any) -> str | None:
    ok = isinstance(value, str) and re.fullmatch(r"(/[A-Za-z0-9._-]+)+", value)
    return value if ok else None


def _check_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _check_level(value: Any) -> str | None:
    levels = ("DEBUG", "INFO", "WARNING", "ERROR")
    return value.upper() if isinstance(value, str) and value.upper() in levels else None


def _check_join_links(value: Any) -> str | None:
    return value if value in JOIN_LINK_MODES else None


def _check_format(value: Any) -> str | None:
    return value if value in ("json", "text") else None


def _check_db_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    if value.startswith("sqlite:///"):
        return value
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg://"):
        if value.startswith(prefix):
            return "postgresql+psycopg://" + value[len(prefix) :]
    return None


def _check_keys(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and value and all(isinstance(k, str) and k for k in value):
        return tuple(value)
    return None


def _check_backend_name(value: Any) -> str | None:
    return value if isinstance(value, str) and BACKEND_NAME.match(value) else None


def _check_backend_names(value: Any) -> tuple[str, ...] | None:
    if isinstance(value, list) and value and all(_check_backend_name(v) for v in value):
        return tuple(dict.fromkeys(value))
    return None


# section -> key -> (checker, what a valid value is)
_Checker = Callable[[Any], Any]
_SCHEMA: dict[str, dict[str, tuple[_Checker, str]]] = {
    "server": {
        "host": (_check_host, "a host name or IP address"),
        "port": (_check_port, "an integer between 1 and 65535"),
        "public_url": (_check_http_url, "an http(s) URL without query, e.g. https://bridge.example.com"),
        "max_body_bytes": (_check_positive_int, "a positive integer"),
        "backend_timeout_seconds": (_check_positive_number, "a positive number of seconds"),
        "vendor_attempts": (_check_positive_int, "a positive integer (1 = no retries)"),
        "vendor_max_retry_after_seconds": (_check_positive_number, "a positive number of seconds"),
        "max_header_bytes": (_check_header_bytes, "a whole number of bytes, at least 1024"),
        "header_timeout_seconds": (_check_positive_number, "a positive number of seconds"),
        "body_timeout_seconds": (_check_positive_number, "a positive number of seconds"),
        "keep_alive_timeout_seconds": (_check_positive_number, "a positive number of seconds"),
        "max_connections": (_check_positive_int, "a positive integer"),
    },
    "pipedrive": {
        "client_id": (_string, "a non-empty string (Developer Hub > OAuth & access scopes)"),
        "client_secret": (_string, "a non-empty string"),
        "oauth_base": (_check_http_url, "an http(s) URL, e.g. https://oauth.pipedrive.com"),
        "api_base": (_check_http_url, "an http(s) URL (only for tests and staging)"),
        "provider_links_path": (_check_path, "an absolute URL path such as /api/v1/meetings/userProviderLinks"),
        "token_refresh_margin_seconds": (_check_positive_int, "a positive integer"),
        "refresh_idle_days": (_check_positive_int, "a positive number of days below 60"),
    },
    "database": {
        "url": (_check_db_url, "sqlite:///PATH or postgresql://USER@HOST:PORT/DB"),
        "auto_migrate": (_check_bool, "true or false"),
    },
    "vault": {
        "keys": (_check_keys, "a list of keys made by `pipedrive-video-bridge keys generate`"),
        "key_file": (_string, "a file path"),
    },
    "logging": {
        "level": (_check_level, "one of DEBUG, INFO, WARNING, ERROR"),
        "format": (_check_format, '"json" or "text"'),
    },
    "meetings": {
        "default_backend": (_check_backend_name, 'a backend name such as "jitsi"'),
        "allowed_backends": (_check_backend_names, "a non-empty list of backend names"),
        "retry_window_seconds": (_check_non_negative_int, "a whole number of seconds (0 turns it off)"),
        "operation_lease_seconds": (_check_positive_number, "a positive number of seconds"),
        "job_retry_seconds": (_check_positive_number, "a positive number of seconds"),
        "job_max_attempts": (_check_positive_int, "a positive integer"),
        "job_poll_seconds": (_check_positive_number, "a positive number of seconds"),
        "reconcile_interval_seconds": (_check_positive_number, "a positive number of seconds"),
        "join_links": (_check_join_links, '"bridge" or "vendor"'),
        "join_open_hours": (_check_positive_number, "a positive number of hours"),
        "join_misses_per_minute": (_check_positive_int, "a positive integer"),
    },
}

# settings that may come from the environment instead of the file (secrets, mostly)
_ENV: dict[str, tuple[str, str]] = {
    "PVB_PIPEDRIVE_CLIENT_ID": ("pipedrive", "client_id"),
    "PVB_PIPEDRIVE_CLIENT_SECRET": ("pipedrive", "client_secret"),
    "PVB_PIPEDRIVE_OAUTH_BASE": ("pipedrive", "oauth_base"),
    "PVB_PIPEDRIVE_API_BASE": ("pipedrive", "api_base"),
    "PVB_DATABASE_URL": ("database", "url"),
    "PVB_VAULT_KEYS": ("vault", "keys"),
    "PVB_SERVER_PUBLIC_URL": ("server", "public_url"),
    "PVB_SERVER_HOST": ("server", "host"),
    "PVB_SERVER_PORT": ("server", "port"),
}


def default_config_path(env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return None


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, overlay and validate the configuration; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    path = path or default_config_path(env)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"{path}: file not found"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: cannot be read: {exc}"]) from None
    return parse_config(raw, env, source=Path(path) if path else None)


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str], source: Path | None = None) -> Config:
    problems = _Problems()
    values: dict[str, dict[str, Any]] = {section: {} for section in _SCHEMA}

    for section, table in raw.items():
        if section == "backends":
            continue
        if section not in _SCHEMA:
            problems.add(f"[{section}]", f"unknown section (known: {', '.join([*_SCHEMA, 'backends'])})")
            continue
        if not isinstance(table, dict):
            problems.add(section, "must be a table, e.g. [" + section + "]")
            continue
        for key, value in table.items():
            _take(section, key, value, values, problems)

    for name, (section, key) in _ENV.items():
        if name in env:
            given: Any = env[name]
            if key == "port":
                given = int(given) if given.isdigit() else given
            _take(section, key, given, values, problems, where=f"environment {name}")

    backends = _parse_backends(raw.get("backends", {}), env, problems)
    join_links = _backend_join_links(backends, problems)
    config = Config(
        server=ServerConfig(**values["server"]),
        pipedrive=PipedriveConfig(**values["pipedrive"]),
        database=DatabaseConfig(**values["database"]),
        vault=_vault_config(values["vault"], source),
        logging=LoggingConfig(**values["logging"]),
        meetings=MeetingsConfig(**values["meetings"], backend_join_links=join_links),
        backends=backends,
        source=source,
    )
    _cross_checks(config, problems)
    if problems:
        raise ConfigError(list(problems))
    return config


def _take(
    section: str, key: str, value: Any, values: dict[str, dict[str, Any]], problems: _Problems, where: str | None = None
) -> None:
    where = where or f"[{section}] {key}"
    if key not in _SCHEMA[section]:
        problems.add(where, f"unknown setting (known: {', '.join(_SCHEMA[section])})")
        return
    checker, expected = _SCHEMA[section][key]
    checked = checker(value)
    if checked is None:
        problems.add(where, f"must be {expected}, got {_describe(key, value)}")
        return
    values[section][key] = checked


def _describe(key: str, value: Any) -> str:
    if _looks_secret(key) or key == "url":
        return f"a {type(value).__name__} (value hidden)"
    return repr(value)


def _vault_config(values: dict[str, Any], source: Path | None) -> VaultConfig:
    key_file = values.get("key_file")
    path = Path(key_file) if key_file else None
    if path is not None and not path.is_absolute() and source is not None:
        path = source.parent / path
    return VaultConfig(keys=values.get("keys", ()), key_file=path)


def _parse_backends(raw: Any, env: Mapping[str, str], problems: _Problems) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        problems.add("[backends]", "must be a table of tables, e.g. [backends.jitsi]")
        return {}
    backends: dict[str, dict[str, Any]] = {}
    for name, table in raw.items():
        if not BACKEND_NAME.match(name):
            problems.add(f"[backends.{name}]", "backend names use a-z, 0-9, - and _ only")
            continue
        if not isinstance(table, dict):
            problems.add(f"[backends.{name}]", "must be a table")
            continue
        backends[name] = dict(table)
    # PVB_BACKENDS_<NAME>_<KEY>=value sets one string setting of one backend (for its secrets)
    prefix = ENV_PREFIX + "BACKENDS_"
    for var, value in env.items():
        if not var.startswith(prefix):
            continue
        rest = var[len(prefix) :].lower()
        for name in sorted(backends, key=len, reverse=True):
            token = name.replace("-", "_") + "_"
            if rest.startswith(token) and len(rest) > len(token):
                backends[name][rest[len(token) :]] = value
                break
        else:
            name = rest.split("_", 1)[0]
            if "_" in rest and BACKEND_NAME.match(name):
                backends.setdefault(name, {})[rest.split("_", 1)[1]] = value
            else:
                problems.add(f"environment {var}", "expected PVB_BACKENDS_<NAME>_<SETTING>")
    return backends


def _backend_join_links(backends: dict[str, dict[str, Any]], problems: _Problems) -> dict[str, str]:
    """``join_links`` in a backend's table is the core's setting, not the plugin's: taken out here."""
    modes: dict[str, str] = {}
    for name, table in backends.items():
        if "join_links" not in table:
            continue
        value = table.pop("join_links")
        if _check_join_links(value) is None:
            problems.add(f"[backends.{name}] join_links", f'must be "bridge" or "vendor", got {value!r}')
        else:
            modes[name] = value
    return modes


def _cross_checks(config: Config, problems: _Problems) -> None:
    meetings = config.meetings
    if meetings.operation_lease_seconds <= config.server.backend_timeout_seconds:
        problems.add(
            "[meetings] operation_lease_seconds",
            f"must be longer than [server] backend_timeout_seconds ({config.server.backend_timeout_seconds:g}): "
            "a vendor call must end before another replica may take its work over",
        )
    if meetings.default_backend not in meetings.allowed_backends:
        problems.add(
            "[meetings] default_backend",
            f"{meetings.default_backend!r} is not in allowed_backends {list(meetings.allowed_backends)}",
        )
    if config.pipedrive.trial and config.pipedrive.client_id != TRIAL_CLIENT_ID:
        problems.add(
            "[pipedrive] client_secret", "is required once client_id is set (or set PVB_PIPEDRIVE_CLIENT_SECRET)"
        )
    if not config.database.is_sqlite and not config.vault.keys and config.vault.key_file is None:
        problems.add(
            "[vault] keys",
            "are required with PostgreSQL: every replica must share them "
            "(set PVB_VAULT_KEYS; make one with `pipedrive-video-bridge keys generate`)",
        )
    if ":" in config.pipedrive.client_id:
        problems.add("[pipedrive] client_id", "must not contain ':' (HTTP Basic auth splits on it)")
    if config.pipedrive.refresh_idle_days >= 60:
        problems.add(
            "[pipedrive] refresh_idle_days", "must be below 60: Pipedrive refresh tokens lapse after 60 days unused"
        )
    if config.pipedrive.trial and not is_loopback(config.server.host):
        problems.add(
            "[server] host",
            f"{config.server.host!r} is not a loopback address, but the app still uses "
            "the local-trial credentials; set [pipedrive] client_id and client_secret first",
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
