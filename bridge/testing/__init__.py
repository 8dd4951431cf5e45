"""The test kit for the bridge and its plugins: it imports in a production install (pytest is only needed
for the conformance kit).

A plugin's tests subclass :class:`BackendConformance` and provide a ``backend``
fixture (and, where the backend talks to a vendor, a ``context`` fixture whose
``http`` client points at a fake vendor)::

    from bridge.testing import BackendConformance

    class TestMyVendor(BackendConformance):
        @pytest.fixture
        def backend(self):
            return MyVendorBackend.from_config({"api_key": "test"})

``bridge_client`` runs the whole app (lifespan included) behind an
``httpx.AsyncClient``, with exactly the plugins a test passes; ``make_context``
and ``InMemoryCredentials`` hand a backend what the core would.

For the install and connect flows in a browser's place: ``round_trip`` (a redirect to another
site and back), ``sign_in`` (install, then sign in to the settings page) and ``pipedrive_table``.

For tests that run the bridge in subprocesses (from ``bridge.devtools.processes``):
``write_config_toml`` (a ``Config``'s shared parts as a TOML file) and ``write_toml``;
``BridgeProcess`` (a server on a free port, ``wait_ready``, ``stop``, ``kill``) with
``running``; ``run_ready_go_workers`` (processes released together on one signal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bridge.api.auth import basic_auth
from bridge.app import create_app
from bridge.config import Config, parse_config
from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
from bridge.devtools.loopback import serve_on_loopback
from bridge.devtools.processes import (
    BridgeProcess,
    config_sections,
    free_port,
    run_ready_go_workers,
    running,
    serve_args,
    toml_text,
    toml_value,
    write_config_toml,
    write_toml,
)
from bridge.storage.schema import MEETING_ACTIVE
from bridge.storage.store import Store, StoreError
from bridge.storage.vault import generate_key
from bridge.testing.browsing import pipedrive_table, round_trip, sign_in
from bridge.testing.kit import (
    InMemoryCredentials,
    bridge_client,
    make_config,
    make_context,
    prepared_store,
    sample_joining,
    sample_meeting,
    sample_user,
    wait_for_empty_outbox,
    wait_until,
)
from bridge.vendors.http import RetryPolicy, RetryTransport
from bridge.vendors.registry import load_plugins

if TYPE_CHECKING:
    from bridge.testing.conformance import BackendConformance

__all__ = [
    "MEETING_ACTIVE",
    "BackendConformance",
    "BridgeProcess",
    "Config",
    "FakePipedriveState",
    "InMemoryCredentials",
    "RetryPolicy",
    "RetryTransport",
    "Store",
    "StoreError",
    "basic_auth",
    "bridge_client",
    "config_sections",
    "create_app",
    "free_port",
    "generate_key",
    "load_plugins",
    "make_config",
    "make_context",
    "parse_config",
    "pipedrive_table",
    "prepared_store",
    "round_trip",
    "run_ready_go_workers",
    "running",
    "running_fake_pipedrive",
    "sample_joining",
    "sample_meeting",
    "sample_user",
    "serve_args",
    "serve_on_loopback",
    "sign_in",
    "toml_text",
    "toml_value",
    "wait_for_empty_outbox",
    "wait_until",
    "write_config_toml",
    "write_toml",
]


def __getattr__(name: str) -> Any:
    """``BackendConformance`` is imported on first use: it needs pytest, which a production install lacks."""
    if name == "BackendConformance":
        from bridge.testing.conformance import BackendConformance

        return BackendConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
