"""What an operator watches: Prometheus metrics, served at ``/metrics``.

One registry per running app (not the library's global one), so several apps in
one process, as in the tests, count separately.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bridge.errors import BridgeError

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass
class Observation:
    """Filled in by a reverse-API handler while ``Metrics.observe`` times it."""

    backend: str = "-"
    status: int = 500


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pvb_reverse_api_requests",
            "Reverse-API requests by operation, backend and status",
            ["operation", "backend", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "pvb_reverse_api_request_seconds",
            "Reverse-API request latency",
            ["operation", "backend"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.vendor_calls = Counter(
            "pvb_vendor_calls",
            "Backend operations by outcome",
            ["backend", "operation", "outcome"],
            registry=self.registry,
        )
        self.vendor_retries = Counter(
            "pvb_vendor_retries",
            "Vendor HTTP calls retried, by host and reason",
            ["host", "reason"],
            registry=self.registry,
        )
        self.token_refreshes = Counter(
            "pvb_token_refreshes", "Token refreshes made by this process", ["kind", "outcome"], registry=self.registry
        )
        self.jobs = Counter(
            "pvb_outbox_job_runs",
            "Outbox job attempts made by this process, by kind and outcome (done, retry, failed, deferred)",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.rooms_removed = Counter(
            "pvb_reconciled_rooms",
            "Rooms removed at a vendor that no live meeting held, by backend and reason",
            ["backend", "reason"],
            registry=self.registry,
        )
        self.stale_claims = Counter(
            "pvb_reconciled_claims",
            "postMeeting claims whose process died, resolved by this process",
            registry=self.registry,
        )
        self.join_clicks = Counter(
            "pvb_join_clicks",
            "Join links opened, by backend, role (host, guest, -) and outcome "
            "(redirected, cancelled, ended, unknown, limited, failed)",
            ["backend", "role", "outcome"],
            registry=self.registry,
        )
        self.outbox_jobs = Gauge(
            "pvb_outbox_jobs",
            "Outbox jobs in the database, by state (pending, failed)",
            ["state"],
            registry=self.registry,
        )
        self.outbox_oldest = Gauge(
            "pvb_outbox_oldest_job_age_seconds",
            "Age of the oldest pending outbox job in the database (0 when none)",
            registry=self.registry,
        )
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def labelled(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once: prometheus_client checks and locks on every call
        (three of them on each reverse-API request cost about 1 % of its CPU)."""
        child = self._children.get((metric, values))
        if child is None:
            child = self._children[(metric, values)] = metric.labels(*values)
        return child

    @contextmanager
    def observe(self, operation: str) -> Iterator[Observation]:
        """Time one reverse-API call and count it with its final status (from a BridgeError if one ends it)."""
        seen = Observation()
        started = time.perf_counter()
        try:
            yield seen
        except BridgeError as exc:
            seen.status = exc.status
            raise
        finally:
            self.labelled(self.requests, operation, seen.backend, str(seen.status)).inc()
            self.labelled(self.latency, operation, seen.backend).observe(time.perf_counter() - started)

    def retried(self, host: str, reason: str) -> None:
        self.labelled(self.vendor_retries, host, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
