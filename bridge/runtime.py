"""The running bridge: everything with a lifetime, built once and closed once.

``open_bridge`` is used by the app's lifespan and by the CLI commands that touch
the database, so both start the same way: keys, database (migrated), plugins,
backends built from their TOML tables, one shared HTTP client.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
from starlette.requests import Request

from bridge.config import Config
from bridge.errors import ConfigError, ServiceUnavailable
from bridge.limits import MissLimiter
from bridge.metrics import Metrics
from bridge.pipedrive.client import PipedriveClient
from bridge.pipedrive.tokens import PipedriveTokens
from bridge.signing import Signer
from bridge.storage import migrations
from bridge.storage.store import Store, make_engine
from bridge.storage.vault import Vault, VaultError, load_or_create_key_file
from bridge.vendors.http import PooledTransport, RetryPolicy, shared_client
from bridge.vendors.interface import Backend
from bridge.vendors.registry import PluginRegistry, load_plugins

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The bridge cannot start; the message says what to fix."""


@dataclass
class Backends:
    """The backend objects built from config, and why the others are missing."""

    available: dict[str, Backend] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Backend:
        backend = self.available.get(name)
        if backend is None:
            reason = self.missing.get(name, "no installed plugin provides it")
            raise ServiceUnavailable(f"the video backend {name!r} is not available: {reason}")
        return backend


def build_backends(registry: PluginRegistry, config: Config) -> tuple[Backends, list[str]]:
    """Build every installed backend; a problem with an allowed one is a config problem.

    Backends that are installed but no longer allowed are built too (when their
    config is fine) so meetings they made can still be moved and deleted.
    """
    backends = Backends()
    problems: list[str] = []
    allowed = config.meetings.allowed_backends
    for name in allowed:
        if name not in registry.backends:
            plugin_errors = "; ".join(registry.problems())
            reason = "no installed plugin provides it" + (f" ({plugin_errors})" if plugin_errors else "")
            backends.missing[name] = reason
    for name, cls in registry.backends.items():
        try:
            if cls.creates_on_join and config.meetings.join_links_for(name) != "bridge":
                raise ValueError(
                    f'join_links: {cls.title} makes its rooms at the first click, so it needs join_links = "bridge"'
                )
            backends.available[name] = cls.from_config(config.backend_table(name))
        except (ValueError, TypeError, KeyError) as exc:
            backends.missing[name] = f"its configuration is invalid: {exc}"
            if name in allowed:
                problems.append(f"[backends.{name}] {exc}")
    for name in config.backends:
        if name not in registry.backends and name not in allowed:
            problems.append(f"[backends.{name}]: no installed plugin provides a backend named {name!r}")
    return backends, problems


def vault_keys(config: Config) -> list[str]:
    """The configured keys; a local trial on SQLite gets a key file beside its database."""
    if config.vault.keys:
        return list(config.vault.keys)
    path = config.vault.key_file
    if path is None:
        db_path = config.database.sqlite_path
        if db_path is None:
            raise VaultError(
                "no vault key is configured: set [vault] keys or PVB_VAULT_KEYS "
                "(make one with `pipedrive-video-bridge keys generate`)"
            )
        path = db_path.parent / "bridge.key"
    return load_or_create_key_file(Path(path))


@dataclass
class Bridge:
    config: Config
    store: Store
    registry: PluginRegistry
    backends: Backends
    http: httpx.AsyncClient
    pipedrive: PipedriveClient
    tokens: PipedriveTokens
    signer: Signer
    metrics: Metrics
    join_misses: MissLimiter
    """Unknown join links tried, per client (this process's memory)."""
    holder: str = field(default_factory=lambda: new_holder())
    """This process's name on the claims, jobs and leases it holds."""


def new_holder() -> str:
    """A name no other process (on any replica, before or after a restart) has: host, pid, random."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"


def bridge_of(request: Request) -> Bridge:
    """The running bridge, as the app's lifespan handed it to every request."""
    return request.state.bridge  # type: ignore[no-any-return]


def open_store(config: Config) -> Store:
    try:
        vault = Vault(vault_keys(config))
    except (VaultError, OSError) as exc:
        raise StartupError(f"vault: {exc}") from exc
    return Store(make_engine(config.database.url), vault)


async def prepare_database(store: Store, config: Config) -> None:
    """Migrate (or check the schema) and prove the keys can read what is stored."""
    try:
        if config.database.auto_migrate:
            applied = await anyio.to_thread.run_sync(migrations.migrate, store.engine)
            if applied:
                log.info("database migrated", extra={"versions": applied})
        else:
            version = await anyio.to_thread.run_sync(migrations.current_version, store.engine)
            if version != migrations.head():
                raise StartupError(
                    f"the database schema is at revision {version or 'none (empty)'}, this "
                    f"release needs {migrations.head()}: run `pipedrive-video-bridge migrate`"
                )
        unknown = await store.unknown_key_ids()
        if unknown:
            raise StartupError(
                f"vault: stored secrets use key id(s) {', '.join(unknown)}, which are not "
                "configured; put the old key back in [vault] keys (the first key encrypts, "
                "every key decrypts)"
            )
        await store.verify_one_secret()
    except VaultError as exc:
        raise StartupError(f"vault: {exc}") from exc
    except StartupError:
        raise
    except Exception as exc:
        raise StartupError(
            f"database: cannot open {store.engine.url.render_as_string(hide_password=True)}: "
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc


@asynccontextmanager
async def open_bridge(
    config: Config, registry: PluginRegistry | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[Bridge]:
    registry = registry if registry is not None else load_plugins()
    backends, problems = build_backends(registry, config)
    if problems:
        raise StartupError(str(ConfigError(problems)))
    store = open_store(config)
    try:
        await prepare_database(store, config)
        timeout = httpx.Timeout(config.server.backend_timeout_seconds, connect=5.0)
        inner = transport or PooledTransport(max_connections=200)
        policy = RetryPolicy(
            attempts=config.server.vendor_attempts, max_retry_after=config.server.vendor_max_retry_after_seconds
        )
        metrics = Metrics()
        async with shared_client(timeout, inner, policy, on_retry=metrics.retried) as http:
            for name, reason in backends.missing.items():
                if name in config.meetings.allowed_backends:  # an installed, unused plugin is no news
                    log.warning("backend unavailable", extra={"backend": name, "reason": reason})
            pipedrive = PipedriveClient(config.pipedrive, http)
            assert store.vault is not None
            yield Bridge(
                config=config,
                store=store,
                registry=registry,
                backends=backends,
                http=http,
                pipedrive=pipedrive,
                tokens=PipedriveTokens(store, pipedrive, config.pipedrive.token_refresh_margin_seconds, metrics),
                signer=Signer(store.vault.derive("signing")),
                metrics=metrics,
                join_misses=MissLimiter(config.meetings.join_misses_per_minute),
            )
    finally:
        store.close()
