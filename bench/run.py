"""Benchmarks of the bridge, run as a user deploys it: uvicorn in its own process, on loopback.

    .venv/bin/python bench/run.py [--quick] [--only NAME] [--postgres-url URL] [--json FILE]

NAME is one of: overhead, slow_vendor, scale, tokens (repeat --only for several).

1. overhead     postMeeting through the Jitsi backend vs. a bare Starlette endpoint returning the same
                JSON (own uvicorn process, same settings): throughput ratio, p50/p99 at 1, 16 and 64
                connections, on SQLite and PostgreSQL.
2. slow_vendor  a backend whose vendor (a separate process on loopback) answers after 100 ms:
                throughput at 64 connections vs. the ideal 64 / 0.1 s.
3. scale        postMeeting p50 with 1,000 vs. 1,000,000 links and meetings in the database
                (--quick: 100,000).
4. tokens       10,000 concurrent TokenKeeper.fresh_tokens calls in 2 processes sharing PostgreSQL
                while the access token expires k times: Pipedrive must see exactly k refreshes;
                the same for the Zoom plugin's Server-to-Server token when it is installed.
5. peak RSS of every process started (VmHWM).

The load generator runs in this process: N asyncio workers, each on its own keep-alive
connection, a fixed request count and a time cap per run, after an unmeasured warm-up. By
default each connection is a minimal hand-written HTTP/1.1 client; --client httpx uses one
shared httpx.AsyncClient instead (about 0.7 ms of client CPU per request, and its pool slows
down sharply at 64 connections, so it caps the bare baseline well below what the server does;
the overhead table shows the bare endpoint through httpx too, for comparison). Server-side counts and the
latency histogram are read from the bridge's /metrics and checked against the client's.
These are measurements, not tests: nothing here fails a build. Only loopback is used;
every server, temporary file and PostgreSQL database this run creates is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from bridge.api.auth import basic_auth  # noqa: E402
from bridge.config import TRIAL_CLIENT_ID, TRIAL_CLIENT_SECRET, load_config  # noqa: E402
from bridge.storage.vault import Vault, generate_key  # noqa: E402

PY = sys.executable
HOST = "127.0.0.1"
BENCHMARKS = ("overhead", "slow_vendor", "scale", "tokens")
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
HEADERS = {**basic_auth(TRIAL_CLIENT_ID, TRIAL_CLIENT_SECRET), "Content-Type": "application/json"}
START_TIME = "2026-12-01 14:00"


# --- results ---------------------------------------------------------------------------

@dataclass
class Figure:
    bench: str
    what: str
    value: str
    goal: str
    passed: bool | None  # None: shown for context, no goal

    @property
    def verdict(self) -> str:
        return "-" if self.passed is None else ("PASS" if self.passed else "MISS")


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    rss: list[tuple[str, str, float | None]] = field(default_factory=list)  # (bench, process, MB)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, bench: str, what: str, value: str, goal: str = "", passed: bool | None = None) -> None:
        self.figures.append(Figure(bench, what, value, goal, passed))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)


REPORT = Report()


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def heading(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 72 - len(text)), flush=True)


# --- processes -------------------------------------------------------------------------

_LIVE: list[Server] = []
_CLEANUPS: list[Callable[[], None]] = []


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if this bench process dies, so no server outlives it."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a live process, in MB (psutil is not a dependency; /proc is enough on Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """One server process on a loopback port; its stderr goes to a log file in the run's temp dir."""

    def __init__(self, bench: str, name: str, argv: list[str], port: int, logdir: Path,
                 health: str = "/healthz", start_seconds: float = 120) -> None:
        self.bench, self.name, self.port = bench, name, port
        self.url = f"http://{HOST}:{port}"
        self.log_path = logdir / f"{bench}-{name}-{port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        _LIVE.append(self)
        self.peak_mb: float | None = None
        deadline = time.monotonic() + start_seconds
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{name} exited with {self.proc.returncode} on start:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + health, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not answer {health} within {start_seconds:g} s:\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.peak_mb = peak_rss_mb(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        if self in _LIVE:
            _LIVE.remove(self)
            REPORT.rss.append((self.bench, self.name, self.peak_mb))


def cleanup() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()
    while _CLEANUPS:
        with contextlib.suppress(Exception):
            _CLEANUPS.pop()()


# --- PostgreSQL ------------------------------------------------------------------------

class Postgres:
    """Creates the databases the run uses on the given server and drops them all at the end."""

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.admin_url = admin_url.replace("postgresql+psycopg://", "postgresql://")
        self.version = ""
        self.created: list[str] = []
        with psycopg.connect(self.admin_url, connect_timeout=3, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            self.version = str(row[0]) if row else "?"
        _CLEANUPS.append(self.drop_all)

    def url(self, dbname: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))

    def create(self, label: str) -> str:
        import psycopg

        name = f"pvb_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.url(name)

    def size_mb(self, url: str) -> float:
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return (row[0] if row else 0) / 1e6

    def drop_all(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def postgres_or_none(url: str) -> Postgres | None:
    try:
        return Postgres(url)
    except Exception as exc:
        REPORT.note(f"PostgreSQL at {urlsplit(url).netloc} is unreachable ({exc.__class__.__name__}): "
                    "its runs are skipped")
        return None


# --- config and data -------------------------------------------------------------------

def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_config(path: Path, *, db_url: str, port: int, key: str, **sections: dict[str, Any]) -> Path:
    """A deployment config: the given database, a vault key, the default (INFO, JSON) logging."""
    tables: dict[str, dict[str, Any]] = {
        "server": {"host": HOST, "port": port, "public_url": f"http://{HOST}:{port}"},
        "database": {"url": db_url},
        "vault": {"keys": [key]},
    }
    for name, values in sections.items():
        tables.setdefault(name.replace("__", "."), {}).update(values)
    text = "\n".join(f"[{name}]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in values.items())
                     for name, values in tables.items())
    path.write_text(text)
    return path


async def _create_links(config_path: Path, count: int) -> list[str]:
    from bridge.runtime import open_store, prepare_database

    config = load_config(config_path)
    store = open_store(config)
    try:
        await prepare_database(store, config)
        base = random.randrange(10**9)
        return [(await store.create_link(pipedrive_user_id=base + i, company_id=1, user_name=f"Bench user {i}",
                                         user_email=f"bench{i}@example.com")).id for i in range(count)]
    finally:
        store.close()


def create_links(config_path: Path, count: int) -> list[str]:
    return asyncio.run(_create_links(config_path, count))


def migrate(db_url: str) -> None:
    from bridge.storage import migrations
    from bridge.storage.store import make_engine

    engine = make_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        migrations.migrate(engine)
    finally:
        engine.dispose()


# --- the load generator ----------------------------------------------------------------

@dataclass
class Load:
    concurrency: int
    sent: int
    ok: int
    statuses: Counter[str]
    elapsed: float
    latencies: list[float]
    capped: bool

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        """The q-quantile of successful requests' latency, in ms (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))] * 1000


class RawConnection:
    """One keep-alive HTTP/1.1 connection, written by hand: a few tens of µs of client CPU per request.

    httpx.AsyncClient costs about 0.7 ms of CPU per request and its shared pool slows down
    sharply past a few dozen connections, so against a fast server it measures itself; this
    client keeps the load generator out of the figures. It speaks exactly what the servers
    here answer: a status line, headers, a Content-Length or chunked body.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n".encode()
                              + body)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            if "content-length" in fields:
                await self.reader.readexactly(int(fields["content-length"]))
            elif fields.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await self.reader.readexactly(size + 2)
                    if size == 0:
                        break
            if fields.get("connection", "").lower() == "close":
                await self.close()
            return status
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


CLIENT = {"kind": "raw"}  # set from --client


async def _load(base_url: str, request: Callable[[int], tuple[str, bytes]], concurrency: int, total: int,
                time_cap: float, warmup: int, expect: int, client_kind: str,
                measure_starts: Callable[[], None] | None) -> Load:
    """``concurrency`` workers, each on its own keep-alive connection, share one request counter."""
    parts = urlsplit(base_url)
    stack = contextlib.AsyncExitStack()
    async with stack:
        if client_kind == "httpx":
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            shared = await stack.enter_async_context(httpx.AsyncClient(
                base_url=base_url, headers=HEADERS, limits=limits, timeout=httpx.Timeout(30.0)))

            async def httpx_post(path: str, body: bytes) -> int:
                return (await shared.post(path, content=body)).status_code

            posts = [httpx_post] * concurrency
        else:
            connections = [RawConnection(parts.hostname or HOST, parts.port or 80, HEADERS)
                           for _ in range(concurrency)]
            for connection in connections:
                stack.push_async_callback(connection.close)
            posts = [connection.post for connection in connections]
        counter = 0

        async def worker(post: Callable[[str, bytes], Any], limit: int, deadline: float,
                         latencies: list[float] | None, statuses: Counter[str]) -> None:
            nonlocal counter
            while counter < limit and time.perf_counter() < deadline:
                i = counter
                counter += 1
                path, body = request(i)
                started = time.perf_counter()
                try:
                    status = await asyncio.wait_for(post(path, body), timeout=30)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError,
                        httpx.HTTPError) as exc:
                    statuses[exc.__class__.__name__] += 1
                    continue
                took = time.perf_counter() - started
                statuses[str(status)] += 1
                if status == expect and latencies is not None:
                    latencies.append(took)

        # warm-up: opens every connection and warms the server's caches; not measured
        warm: Counter[str] = Counter()
        deadline = time.perf_counter() + min(time_cap, 30)
        await asyncio.gather(*(worker(post, warmup, deadline, None, warm) for post in posts))
        if measure_starts is not None:
            measure_starts()
        start_index = counter
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        started = time.perf_counter()
        deadline = started + time_cap
        await asyncio.gather(*(worker(post, start_index + total, deadline, latencies, statuses) for post in posts))
        elapsed = time.perf_counter() - started
    sent = counter - start_index
    return Load(concurrency, sent, len(latencies), statuses, elapsed, latencies, capped=sent < total)


def load(base_url: str, request: Callable[[int], tuple[str, bytes]], concurrency: int, total: int,
         time_cap: float, warmup: int | None = None, expect: int = 201, client: str | None = None,
         measure_starts: Callable[[], None] | None = None) -> Load:
    """One bounded run: a warm-up (not measured), then ``total`` requests or ``time_cap`` seconds."""
    warm = warmup if warmup is not None else max(4 * concurrency, 50)
    return asyncio.run(_load(base_url, request, concurrency, total, time_cap, warm, expect,
                             client or CLIENT["kind"], measure_starts))


def meeting_requests(links: list[str], tag: str) -> Callable[[int], tuple[str, bytes]]:
    """postMeeting on the links in turn; a new topic every time so no call is taken for a retry."""

    def request(i: int) -> tuple[str, bytes]:
        body = json.dumps({"topic": f"Bench {tag} {i}", "start_time": START_TIME, "duration": 30})
        return f"/api/v1/links/{links[i % len(links)]}/meetings", body.encode()

    return request


# --- /metrics --------------------------------------------------------------------------

@dataclass
class Scrape:
    counts: dict[str, float]  # status -> postMeeting requests
    buckets: list[tuple[float, float]]  # (le, cumulative count) of postMeeting latency


def scrape(base_url: str, backend: str) -> Scrape:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url + "/metrics", timeout=10).text
    counts: dict[str, float] = {}
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("operation") != "postMeeting" or labels.get("backend") != backend:
                continue
            if sample.name == "pvb_reverse_api_requests_total":
                counts[labels["status"]] = counts.get(labels["status"], 0) + sample.value
            elif sample.name == "pvb_reverse_api_request_seconds_bucket":
                buckets[float(labels["le"])] = sample.value
    return Scrape(counts, sorted(buckets.items()))


@dataclass
class ServerSide:
    count: int
    p50: float
    p99: float

    def latency(self) -> str:
        return f"{_ms(self.p50)}/{_ms(self.p99)}"


def server_side(before: Scrape, after: Scrape) -> ServerSide:
    """postMeeting 201s counted by the server in a run, and p50/p99 interpolated in its histogram."""
    count = int(after.counts.get("201", 0) - before.counts.get("201", 0))
    old = dict(before.buckets)
    deltas = [(le, cum - old.get(le, 0)) for le, cum in after.buckets]
    total = deltas[-1][1] if deltas else 0

    def quantile(q: float) -> float:
        if not total:
            return float("nan")
        rank, lower, below = q * total, 0.0, 0.0
        for le, cum in deltas:
            if cum >= rank:
                if le == float("inf"):
                    return lower * 1000
                inside = cum - below
                return (lower + (le - lower) * ((rank - below) / inside if inside else 1)) * 1000
            lower, below = le, cum
        return float("nan")

    return ServerSide(count, quantile(0.5), quantile(0.99))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    run: Load
    seen: ServerSide | None  # from /metrics (None for servers without it)
    cpu_ms: float  # the server process's CPU time per request sent in the measured part
    also: Any = None


def measured_load(server: Server, backend: str | None, request: Callable[[int], tuple[str, bytes]],
                  concurrency: int, total: int, time_cap: float, also: Callable[[], Any] | None = None,
                  **kwargs: Any) -> Measured:
    """``load`` with /metrics and the server's CPU time read when the measured part starts and ends."""
    box: dict[str, Any] = {}

    def starts() -> None:
        box["before"] = scrape(server.url, backend) if backend else None
        box["also"] = also() if also else None
        box["cpu"] = cpu_seconds(server.pid)

    run = load(server.url, request, concurrency, total, time_cap, measure_starts=starts, **kwargs)
    cpu = cpu_seconds(server.pid) - box["cpu"]
    seen = server_side(box["before"], scrape(server.url, backend)) if backend else None
    return Measured(run, seen, cpu / run.sent * 1000 if run.sent else float("nan"), box["also"])


def _ms(value: float) -> str:
    return "n/a" if value != value else (f"{value:.1f}" if value < 100 else f"{value:.0f}")


def _statuses(load: Load, expect: int = 201) -> str:
    other = {k: v for k, v in load.statuses.items() if k != str(expect)}
    return "" if not other else " ".join(f"{k}x{v}" for k, v in sorted(other.items()))


# --- 1. overhead -----------------------------------------------------------------------

@dataclass
class Settings:
    quick: bool
    pg: Postgres | None
    tmp: Path
    key: str

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def bridge_server(s: Settings, bench: str, name: str, db_url: str, **sections: dict[str, Any]) -> Server:
    port = free_port()
    config = write_config(s.tmp / f"{bench}-{name}.toml", db_url=db_url, port=port, key=s.key, **sections)
    return Server(bench, name, [PY, "-m", "bridge.cli", "--config", str(config), "serve", "--port", str(port)],
                  port, s.tmp)


def databases(s: Settings, label: str) -> list[tuple[str, str]]:
    dbs = [("sqlite", f"sqlite:///{s.tmp / (label + '.sqlite3')}")]
    if s.pg is not None:
        dbs.append(("postgresql", s.pg.create(label)))
    return dbs


def bench_overhead(s: Settings) -> None:
    heading("1. overhead: postMeeting (Jitsi) vs. a bare Starlette endpoint")
    levels = [1, 16, 64]
    counts = {1: s.n(1500, 300), 16: s.n(4000, 1000), 64: s.n(4000, 1000)}
    cap = 60.0 if not s.quick else 20.0
    bare_port = free_port()
    bare = Server("overhead", "bare starlette", [PY, str(BENCH / "servers.py"), "bare", "--port", str(bare_port)],
                  bare_port, s.tmp)
    bridges: dict[str, tuple[Server, list[str]]] = {}
    for db, url in databases(s, "overhead"):
        server = bridge_server(s, "overhead", f"bridge {db}", url)
        config = s.tmp / f"overhead-bridge {db}.toml"
        bridges[db] = (server, create_links(config, 64))
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    try:
        for c in levels:
            bare_run = measured_load(bare, None, meeting_requests(["bare"], f"bare-{c}"), c, counts[c], cap)
            base = bare_run.run
            rows.append(["bare starlette", c, base.sent, _statuses(base) or "ok", f"{base.rps:.0f}",
                         _ms(base.pct(0.5)), _ms(base.pct(0.99)), "1.00", f"{bare_run.cpu_ms:.2f}", "", ""])
            raw.append({"server": "bare", "c": c, "rps": base.rps, "p50": base.pct(0.5), "p99": base.pct(0.99),
                        "cpu_ms": bare_run.cpu_ms})
            if CLIENT["kind"] != "httpx":  # what the baseline looks like through httpx.AsyncClient, for context
                other = load(bare.url, meeting_requests(["bare"], f"bare-httpx-{c}"), c, counts[c], cap,
                             client="httpx")
                rows.append(["bare, httpx client", c, other.sent, _statuses(other) or "ok", f"{other.rps:.0f}",
                             _ms(other.pct(0.5)), _ms(other.pct(0.99)), "", "", "", ""])
                raw.append({"server": "bare-httpx", "c": c, "rps": other.rps, "p50": other.pct(0.5),
                            "p99": other.pct(0.99)})
            for db, (server, links) in bridges.items():
                m = measured_load(server, "jitsi", meeting_requests(links, f"{db}-{c}-{time.time_ns()}"), c,
                                  counts[c], cap)
                run, seen = m.run, m.seen
                assert seen is not None
                ratio = run.rps / base.rps if base.rps else 0.0
                check = "=" if seen.count == run.ok else f"!= {seen.count}"
                rows.append([f"bridge {db}", c, run.sent, _statuses(run) or "ok", f"{run.rps:.0f}",
                             _ms(run.pct(0.5)), _ms(run.pct(0.99)), f"{ratio:.2f}", f"{m.cpu_ms:.2f}",
                             seen.latency(), f"{seen.count} {check}"])
                raw.append({"server": db, "c": c, "rps": run.rps, "p50": run.pct(0.5), "p99": run.pct(0.99),
                            "cpu_ms": m.cpu_ms, "ratio": ratio, "server_p50": seen.p50, "server_p99": seen.p99,
                            "server_count": seen.count, "client_ok": run.ok, "capped": run.capped,
                            "statuses": dict(run.statuses)})
                REPORT.add("overhead", f"{db}: throughput vs bare, {c} conn", f"{ratio:.2f} ({run.rps:.0f}/"
                           f"{base.rps:.0f} req/s)", ">= 0.5", ratio >= 0.5)
                if c == 16:
                    REPORT.add("overhead", f"{db}: p99 at 16 conn", f"{run.pct(0.99):.1f} ms", "<= 20 ms",
                               run.pct(0.99) <= 20)
                if run.capped:
                    REPORT.note(f"overhead {db} at {c} connections hit the {cap:g} s cap after {run.sent} requests")
    finally:
        for server, _links in bridges.values():
            server.stop()
        bare.stop()
    print(table(["server", "conn", "requests", "status", "req/s", "p50 ms", "p99 ms", "ratio", "CPU ms/req",
                 "server p50/p99 ms", "server 201s"], rows), flush=True)
    print("(p50/p99: client-side, successful requests; CPU ms/req: the server process's CPU time (all threads) "
          "per request; server p50/p99: /metrics' histogram, interpolated; '=': the server counted exactly "
          "the client's 201s)")
    REPORT.raw["overhead"] = raw


# --- 2. slow vendor --------------------------------------------------------------------

def bench_slow_vendor(s: Settings) -> None:
    heading("2. concurrency with a vendor that answers after 100 ms")
    delay = 0.1
    levels = [16, 64]
    counts = {16: s.n(800, 320), 64: s.n(3200, 1280)}
    cap = 30.0
    vport = free_port()
    vendor = Server("slow_vendor", "fake vendor", [PY, str(BENCH / "servers.py"), "vendor", "--port", str(vport),
                                                   "--delay", str(delay)], vport, s.tmp)
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    try:
        def vendor_stats() -> dict[str, int]:
            return httpx.get(vendor.url + "/stats", timeout=5).json()  # type: ignore[no-any-return]

        def direct(i: int) -> tuple[str, bytes]:
            return "/rooms", json.dumps({"title": f"direct {i}", "minutes": 30}).encode()

        base = load(vendor.url, direct, 64, counts[64], cap)
        rows.append(["vendor directly (baseline)", 64, base.sent, _statuses(base) or "ok", f"{base.rps:.0f}",
                     f"{64 / delay:.0f}", f"{base.rps / (64 / delay):.2f}", _ms(base.pct(0.5)), _ms(base.pct(0.99)),
                     "", "", ""])
        raw.append({"server": "vendor", "c": 64, "rps": base.rps})
        # the bridge reaches the vendor through one shared httpx.AsyncClient; the same, without the bridge:
        other = load(vendor.url, direct, 64, counts[64] // 2, cap, client="httpx")
        rows.append(["vendor directly, httpx client", 64, other.sent, _statuses(other) or "ok", f"{other.rps:.0f}",
                     f"{64 / delay:.0f}", f"{other.rps / (64 / delay):.2f}", _ms(other.pct(0.5)),
                     _ms(other.pct(0.99)), "", "", ""])
        raw.append({"server": "vendor-httpx", "c": 64, "rps": other.rps, "p50": other.pct(0.5),
                    "p99": other.pct(0.99)})
        for db, url in databases(s, "slowvendor"):
            port = free_port()
            config = write_config(s.tmp / f"slow-{db}.toml", db_url=url, port=port, key=s.key,
                                  meetings={"default_backend": "slowvendor", "allowed_backends": ["slowvendor"]},
                                  backends__slowvendor={"url": vendor.url})
            server = Server("slow_vendor", f"bridge+plugin {db}",
                            [PY, str(BENCH / "servers.py"), "bridge", "--config", str(config), "--port", str(port)],
                            port, s.tmp)
            try:
                links = create_links(config, 64)
                for c in levels:
                    ideal = c / delay
                    m = measured_load(server, "slowvendor", meeting_requests(links, f"slow-{db}-{c}-{time.time_ns()}"),
                                      c, counts[c], cap, also=vendor_stats, warmup=2 * c)
                    run, seen, vbefore, vafter = m.run, m.seen, m.also, vendor_stats()
                    assert seen is not None
                    conns = vafter["connections"] - vbefore["connections"]
                    ratio = run.rps / ideal
                    rows.append([f"bridge {db}", c, run.sent, _statuses(run) or "ok", f"{run.rps:.0f}",
                                 f"{ideal:.0f}", f"{ratio:.2f}", _ms(run.pct(0.5)), _ms(run.pct(0.99)),
                                 f"{m.cpu_ms:.2f}", seen.latency(), conns])
                    raw.append({"server": db, "c": c, "rps": run.rps, "ideal": ideal, "ratio": ratio,
                                "p50": run.pct(0.5), "p99": run.pct(0.99), "cpu_ms": m.cpu_ms,
                                "server_count": seen.count,
                                "client_ok": run.ok, "vendor_new_connections": conns,
                                "vendor_requests": vafter["requests"] - vbefore["requests"]})
                    if seen.count != run.ok:
                        REPORT.note(f"slow_vendor {db} {c}: server counted {seen.count} 201s, client {run.ok}")
                    if run.capped:
                        REPORT.note(f"slow_vendor {db} at {c} connections hit the {cap:g} s cap after {run.sent} "
                                    "requests (the rate is still over the whole measured run)")
                    REPORT.add("slow_vendor", f"{db}: throughput vs ideal, {c} conn",
                               f"{ratio:.2f} ({run.rps:.0f}/{ideal:.0f} req/s)", ">= 0.8" if c == 64 else "",
                               ratio >= 0.8 if c == 64 else None)
            finally:
                server.stop()
    finally:
        vendor.stop()
    print(table(["server", "conn", "requests", "status", "req/s", "ideal", "ratio", "p50 ms", "p99 ms",
                 "CPU ms/req", "server p50/p99 ms", "new vendor conns"], rows), flush=True)
    print("(ideal = connections / 0.1 s; 'new vendor conns' = TCP connections the vendor saw opened during "
          "the measured run, warm-up excluded)")
    REPORT.raw["slow_vendor"] = raw


# --- 3. scale --------------------------------------------------------------------------

class Seeder:
    """Links, their meetings and the meetings' encrypted rooms, written straight into the bridge's tables."""

    def __init__(self, key: str, seed: int = 7) -> None:
        self.vault = Vault([key])
        self.rng = random.Random(seed)
        self.created = datetime.now(UTC) - timedelta(days=1)  # older than any retry window
        self.start = datetime(2026, 12, 1, 14, 0, tzinfo=UTC)

    def rows(self, index: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        from bridge.storage.meetings import StoredRoom, room_text
        from bridge.storage.secrets import meeting_scope, secret_context

        rng = self.rng
        link_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        meeting_id = base64.urlsafe_b64encode(rng.randbytes(18)).decode()
        room = base64.b32encode(rng.randbytes(16)).decode().rstrip("=").lower()
        url = f"https://meet.jit.si/{room}"
        text = room_text(StoredRoom(join_url=url, invitation=(
            f"User {index} is inviting you to a video meeting.\n\nTopic: Seeded meeting {index}\n"
            f"Time: Tuesday, 01 December 2026, 14:00 UTC (30 minutes)\n\nJoin: {url}")))
        scope = meeting_scope(meeting_id)
        kid, ciphertext = self.vault.encrypt(text, secret_context(scope, "room"))
        now = self.created
        link = {"id": link_id, "pipedrive_user_id": 10_000_000 + index, "company_id": 1 + index // 1000,
                "user_name": f"User {index}", "user_email": f"user{index}@example.com", "api_domain": None,
                "backend": None, "status": "active", "tokens_refreshed_at": None, "created_at": now,
                "updated_at": now}
        meeting = {"id": meeting_id, "link_id": link_id, "backend": "jitsi", "vendor_meeting_id": room,
                   "start_time": self.start, "duration": 30, "state": "active", "created_at": now,
                   "updated_at": now, "request_hash": rng.randbytes(32).hex()}
        secret = {"scope": scope, "name": "room", "key_id": kid, "ciphertext": ciphertext, "version": 1,
                  "updated_at": now}
        return link, meeting, secret


def seed(db_url: str, seeder: Seeder, first: int, count: int, want: set[int], chunk: int = 50_000) -> dict[int, str]:
    """Insert links ``first .. first+count-1`` (one meeting and room each); returns the ids of indexes in ``want``.

    The rows go in through the storage layer's own tables (SQLAlchemy Core, many rows per statement)."""
    from sqlalchemy import insert

    from bridge.storage.schema import LINKS, MEETINGS, SECRETS
    from bridge.storage.store import make_engine

    picked: dict[int, str] = {}
    engine = make_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.begin() as conn:
            for lo in range(first, first + count, chunk):
                batch = [seeder.rows(i) for i in range(lo, min(lo + chunk, first + count))]
                picked.update({lo + j: rows[0]["id"] for j, rows in enumerate(batch) if lo + j in want})
                for position, table in enumerate((LINKS, MEETINGS, SECRETS)):
                    conn.execute(insert(table), [rows[position] for rows in batch])
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for table in (LINKS, MEETINGS, SECRETS):  # what autovacuum would soon do after a bulk load
                    conn.exec_driver_sql(f"VACUUM ANALYZE {table.name}")
    finally:
        engine.dispose()
    return picked


def _merge(loads: list[Load]) -> Load:
    statuses: Counter[str] = Counter()
    for one in loads:
        statuses.update(one.statuses)
    return Load(loads[0].concurrency, sum(x.sent for x in loads), sum(x.ok for x in loads), statuses,
                sum(x.elapsed for x in loads), [t for x in loads for t in x.latencies], any(x.capped for x in loads))


def bench_scale(s: Settings) -> None:
    """Two databases per engine, one with ``small`` and one with ``big`` rows, each behind its own bridge;
    the runs alternate small, big, small, big so drift on the machine hits both alike."""
    small, big = 1_000, s.n(1_000_000, 100_000)
    heading(f"3. scale: postMeeting with {small:,} vs {big:,} links and meetings")
    counts = {1: s.n(1000, 300), 16: s.n(2000, 800)}
    rounds = 2
    cap = 60.0 if not s.quick else 20.0
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    for (db, small_url), (_db, big_url) in zip(databases(s, "scale_small"), databases(s, "scale_big")):
        rng = random.Random(11)
        samples: dict[int, list[str]] = {}
        for size, url in ((small, small_url), (big, big_url)):
            migrate(url)
            want = set(rng.sample(range(size), min(1000, size)))
            started = time.perf_counter()
            samples[size] = list(seed(url, Seeder(s.key, seed=size), 0, size, want).values())
            rng.shuffle(samples[size])
            took = time.perf_counter() - started
            db_size = (Path(url.split(":///", 1)[1]).stat().st_size / 1e6 if db == "sqlite"
                       else s.pg.size_mb(url) if s.pg else 0.0)
            print(f"{db}: seeded {size:,} links, meetings and encrypted rooms in {took:.1f} s "
                  f"(database {db_size:,.0f} MB)", flush=True)
            raw.append({"db": db, "rows": size, "seed_seconds": took, "db_mb": db_size})
        servers = {size: bridge_server(s, "scale", f"bridge {db} {size:,}", url)
                   for size, url in ((small, small_url), (big, big_url))}
        results: dict[int, dict[int, Load]] = {small: {}, big: {}}
        try:
            for c in (1, 16):
                parts: dict[int, list[Measured]] = {small: [], big: []}
                for r in range(rounds):
                    for size in (small, big):
                        parts[size].append(measured_load(
                            servers[size], "jitsi", meeting_requests(samples[size], f"scale-{db}-{c}-{r}-{time.time_ns()}"),
                            c, counts[c] // rounds, cap / rounds))
                for size in (small, big):
                    run = results[size][c] = _merge([m.run for m in parts[size]])
                    cpu = sum(m.cpu_ms * m.run.sent for m in parts[size]) / max(1, run.sent)
                    counted = sum(m.seen.count for m in parts[size] if m.seen)
                    rows.append([f"bridge {db}", f"{size:,}", c, run.sent, _statuses(run) or "ok", f"{run.rps:.0f}",
                                 _ms(run.pct(0.5)), _ms(run.pct(0.99)), f"{cpu:.2f}",
                                 "=" if counted == run.ok else f"!= {counted}"])
                    raw.append({"db": db, "size": size, "c": c, "rps": run.rps, "p50": run.pct(0.5),
                                "p99": run.pct(0.99), "cpu_ms": cpu, "server_count": counted, "client_ok": run.ok})
        finally:
            for server in servers.values():
                server.stop()
        for c in (1, 16):
            ratio = results[big][c].pct(0.5) / results[small][c].pct(0.5)
            REPORT.add("scale", f"{db}: p50 {big:,} / {small:,} rows, {c} conn",
                       f"{ratio:.2f} ({results[big][c].pct(0.5):.1f} / {results[small][c].pct(0.5):.1f} ms)",
                       "<= 1.2" if c == 1 else "", ratio <= 1.2 if c == 1 else None)
    print(table(["server", "rows", "conn", "requests", "status", "req/s", "p50 ms", "p99 ms", "CPU ms/req",
                 "server 201s"], rows), flush=True)
    print(f"(each row: {rounds} alternating rounds merged; requests go to 1,000 links picked at random among all; "
          "'=': /metrics counted exactly the client's 201s)")
    REPORT.raw["scale"] = raw


# --- 4. tokens -------------------------------------------------------------------------

TOKEN_CALLS, TOKEN_PROCESSES, TOKEN_LIFETIME = 10_000, 2, 5.0


@dataclass
class TokenRun:
    """What one token run saw: issued = (token, issued at) in order, from the fake's own records."""

    kind: str
    lifetimes: int
    requests: int  # token requests the fake server counted
    refused: int
    outputs: list[dict[str, Any]]
    issued: list[tuple[str, float]]
    t0: float
    duration: float


def _token_run(kind: str, s: Settings, config: Path, link_id: str, lifetimes: int,
               counted: Callable[[], tuple[int, int]], issued_at: Callable[[str], float | None]) -> TokenRun:
    """Both processes: all calls start as tasks; a tenth at t0 at once, the rest spread over the run.

    The run lasts ``lifetimes - 0.5`` token lifetimes from a token that is already
    stale at t0 (Pipedrive) or absent (Zoom), so a correct bridge asks for exactly
    ``lifetimes`` tokens: one at t0 and one right after each expiry.
    """
    duration = (lifetimes - 0.5) * TOKEN_LIFETIME
    per_process = TOKEN_CALLS // TOKEN_PROCESSES
    t0 = time.time() + 6  # time for both processes to start and open the bridge
    argv = [PY, str(BENCH / "token_worker.py"), "--kind", kind, "--config", str(config), "--link", link_id,
            "--calls", str(per_process), "--burst", str(per_process // 10), "--t0", repr(t0),
            "--duration", str(duration)]
    workers = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=_die_with_parent) for _ in range(TOKEN_PROCESSES)]
    outputs = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=max(1.0, t0 - time.time()) + duration + 180)
            if worker.returncode != 0:
                raise RuntimeError(f"{kind} token worker failed ({worker.returncode}):\n{err[-3000:]}")
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
    requests, refused = counted()
    seen = set().union(*(o["tokens"] for o in outputs))
    issued = sorted(((t, at) for t in seen if (at := issued_at(t)) is not None), key=lambda pair: pair[1])
    return TokenRun(kind, lifetimes, requests, refused, outputs, issued, t0, duration)


def _report_token_run(run: TokenRun, label: str) -> None:
    calls = sum(o["calls"] for o in run.outputs)
    ok = sum(o["ok"] for o in run.outputs)
    errors: Counter[str] = Counter()
    for o in run.outputs:
        errors.update(o["errors"])
    per_token: Counter[str] = Counter()
    for o in run.outputs:
        for token, info in o["tokens"].items():
            per_token[token] += info["calls"]
    gaps = [b[1] - a[1] for a, b in zip(run.issued, run.issued[1:])]
    rows = [[i + 1, f"{at - run.t0:+.2f}", per_token[token], f"{gap:.2f}" if gap is not None else ""]
            for i, ((token, at), gap) in enumerate(zip(run.issued, [None, *gaps]))]
    print(f"\n{label}: {calls:,} calls in {len(run.outputs)} processes over {run.duration:g} s "
          f"({TOKEN_CALLS // TOKEN_PROCESSES // 10} per process at once at t0); token lifetime "
          f"{TOKEN_LIFETIME:g} s, {run.lifetimes} lifetimes begin during the run")
    print(table(["token", "issued at s (t0 = 0)", "calls answered with it", "s since previous"], rows))
    latency = " / ".join(f"{max(o[k] for o in run.outputs):.0f}" for k in ("p50_ms", "p99_ms", "max_ms"))
    extra = f", refreshes counted by the workers: {'+'.join(str(o['refreshes']) for o in run.outputs)}" \
        if run.kind == "pipedrive" else ""
    print(f"token requests at the fake server: {run.requests} (expected {run.lifetimes}); refused: {run.refused}; "
          f"calls ok: {ok:,}/{calls:,}{extra}; call latency p50/p99/max (worst process): {latency} ms")
    for message, count in errors.most_common(5):
        print(f"  error x{count}: {message}")
    early = [g for g in gaps if g < TOKEN_LIFETIME - 0.25]
    if early:
        REPORT.note(f"{label}: {len(early)} token(s) were fetched before the previous one's lifetime ended")
    late = max(o["last_end"] for o in run.outputs) - run.t0
    if late > run.lifetimes * TOKEN_LIFETIME:
        REPORT.note(f"{label}: the last call ended {late:.1f} s after t0, past the run's {run.lifetimes} "
                    "lifetimes; one more token request would then be correct")
    passed = run.requests == run.lifetimes and run.refused == 0 and ok == calls and not early
    REPORT.add("tokens", f"{label}: token requests for {calls:,} calls, {len(run.outputs)} processes",
               f"{run.requests} (k={run.lifetimes}, refused {run.refused}, errors {calls - ok})", "== k", passed)
    for i, o in enumerate(run.outputs):
        REPORT.rss.append(("tokens", f"{run.kind} token worker {i + 1}", (o.get("peak_rss_kb") or 0) / 1024 or None))
    REPORT.raw.setdefault("tokens", {})[run.kind] = {
        "requests": run.requests, "expected": run.lifetimes, "refused": run.refused, "calls": calls, "ok": ok,
        "gaps": gaps, "errors": dict(errors), "latency_ms": {k: [o[k] for o in run.outputs]
                                                             for k in ("p50_ms", "p99_ms", "max_ms")}}


async def _install_link(config: Path, tokens: str | None, **fields: Any) -> str:
    from bridge.runtime import open_store, prepare_database

    cfg = load_config(config)
    store = open_store(cfg)
    try:
        await prepare_database(store, cfg)
        link = await store.create_link(**fields)
        if tokens is not None:
            await store.save_install(link, tokens)
        return link.id
    finally:
        store.close()


def bench_tokens(s: Settings) -> None:
    heading("4. token upkeep: concurrent token look-ups in 2 processes sharing PostgreSQL")
    lifetimes = s.n(5, 3)
    if s.pg is None:
        REPORT.note("tokens: skipped, it needs PostgreSQL")
        REPORT.add("tokens", "pipedrive refreshes", "skipped (no PostgreSQL)", "== k", None)
        return
    from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
    from bridge.pipedrive.client import TokenSet
    from bridge.pipedrive.tokens import dump_tokens

    margin = 1  # [pipedrive] token_refresh_margin_seconds: a token is used until 1 s before it expires
    state = FakePipedriveState(client_id=TRIAL_CLIENT_ID, client_secret=TRIAL_CLIENT_SECRET,
                               access_ttl=int(margin + TOKEN_LIFETIME))
    with running_fake_pipedrive(state) as pipedrive:
        config = write_config(s.tmp / "tokens.toml", db_url=s.pg.create("tokens"), port=free_port(), key=s.key,
                              pipedrive={"oauth_base": pipedrive.api_domain, "api_base": pipedrive.api_domain,
                                         "token_refresh_margin_seconds": margin})
        answer = state.issue_tokens()
        stale = TokenSet(access_token=answer["access_token"], refresh_token=answer["refresh_token"],
                         expires_at=time.time() - 1, scope=answer["scope"], api_domain=answer["api_domain"])
        link_id = asyncio.run(_install_link(config, dump_tokens(stale), pipedrive_user_id=state.user.id,
                                            company_id=state.user.company_id, api_domain=pipedrive.api_domain))
        run = _token_run("pipedrive", s, config, link_id, lifetimes,
                         lambda: (state.token_requests["refresh_token"], state.invalid_grants),
                         lambda token: (state.access_tokens[token] - state.access_ttl)
                         if token in state.access_tokens else None)
    _report_token_run(run, "pipedrive (TokenKeeper.fresh_tokens)")
    _zoom_tokens(s, lifetimes)


def _zoom_tokens(s: Settings, lifetimes: int) -> None:
    installed = any(ep.name == "zoom" for ep in importlib.metadata.entry_points(group="pipedrive_video_bridge"))
    if not installed:
        print("\nzoom: not installed")
        REPORT.add("tokens", "zoom S2S token requests", "not installed", "", None)
        return
    assert s.pg is not None
    try:
        from pipedrive_video_bridge_zoom.fake_zoom import FakeZoomState, running_fake_zoom
        from pipedrive_video_bridge_zoom.oauth import REFRESH_MARGIN_SECONDS
    except ImportError as exc:
        print(f"\nzoom: installed, but its fake Zoom cannot be imported ({exc}); not measured")
        REPORT.add("tokens", "zoom S2S token requests", "not measured", "", None)
        return
    state = FakeZoomState(client_id="bench-zoom-client", client_secret="bench-zoom-secret-" + uuid.uuid4().hex[:8],
                          access_ttl=int(REFRESH_MARGIN_SECONDS + TOKEN_LIFETIME))
    with running_fake_zoom(state) as zoom:
        config = write_config(s.tmp / "tokens-zoom.toml", db_url=s.pg.create("zoomtokens"), port=free_port(),
                              key=s.key, backends__zoom=zoom.backend_config("account"))
        link_id = asyncio.run(_install_link(config, None, pipedrive_user_id=1, company_id=1,
                                            user_name="Ada Lovelace", user_email="ada@example.com"))
        run = _token_run("zoom", s, config, link_id, lifetimes,
                         lambda: (zoom.token_requests["account_credentials"], 0),
                         lambda token: (zoom.access_tokens[token][1] - zoom.access_ttl)
                         if token in zoom.access_tokens else None)
    _report_token_run(run, "zoom S2S (AccountTokens via ctx.shared)")


# --- main ------------------------------------------------------------------------------

def machine() -> dict[str, str]:
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), "0")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    versions = {name: importlib.metadata.version(name) for name in ("uvicorn", "starlette", "httpx", "SQLAlchemy",
                                                                    "psycopg")}
    extras = [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name)]
    return {"cores": str(os.cpu_count()), "cpu": cpu, "memory": f"{int(mem) / 1024 / 1024:.1f} GiB",
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "os": f"{platform.system()} {platform.release()}",
            "libraries": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "uvicorn loop/http": ("asyncio/h11" if not extras else "+".join(extras))}


def summary(started: float, quick: bool) -> None:
    heading("summary")
    print(table(["benchmark", "figure", "value", "goal", ""],
                [[f.bench, f.what, f.value, f.goal, f.verdict] for f in REPORT.figures]))
    print("\npeak RSS (VmHWM) of each process started:")
    print(table(["benchmark", "process", "peak RSS MB"],
                [[b, n, "n/a" if mb is None else f"{mb:.0f}"] for b, n, mb in REPORT.rss]))
    missed = [f for f in REPORT.figures if f.passed is False]
    passed = [f for f in REPORT.figures if f.passed]
    print(f"\n{len(passed)} goal(s) met, {len(missed)} missed; {'--quick' if quick else 'full'} run took "
          f"{time.perf_counter() - started:.0f} s")
    for note in REPORT.notes:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests; 100,000 rows for the scale run")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="run only this benchmark (repeatable)")
    parser.add_argument("--postgres-url", default=os.environ.get("PVB_BENCH_POSTGRES_URL", DEFAULT_PG),
                        help="an admin URL; the bench creates and drops its own databases (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this file")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="load generator: a minimal keep-alive HTTP/1.1 client (default) or one shared "
                        "httpx.AsyncClient")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (printed path)")
    args = parser.parse_args(argv)
    chosen = args.only or list(BENCHMARKS)
    CLIENT["kind"] = args.client
    started = time.perf_counter()

    def on_term(_signum: int, _frame: Any) -> None:
        raise SystemExit(130)

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix="pvb-bench-"))
    info = machine()
    pg = postgres_or_none(args.postgres_url)
    info["postgresql"] = pg.version if pg else "unreachable"
    heading("machine")
    for k, v in info.items():
        print(f"{k:>18}: {v}")
    print(f"{'mode':>18}: {'--quick' if args.quick else 'full'}; benchmarks: {', '.join(chosen)}; "
          f"load generator: {args.client}")
    s = Settings(quick=args.quick, pg=pg, tmp=tmp, key=generate_key())
    runs = {"overhead": bench_overhead, "slow_vendor": bench_slow_vendor, "scale": bench_scale,
            "tokens": bench_tokens}
    failed = False
    try:
        for name in chosen:
            try:
                runs[name](s)
            except Exception as exc:  # one broken benchmark does not hide the others' figures
                failed = True
                REPORT.note(f"{name} failed: {exc.__class__.__name__}: {exc}")
                cleanup_servers()
    finally:
        cleanup()
        summary(started, args.quick)
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "quick": args.quick,
                                             "figures": [f.__dict__ | {"verdict": f.verdict} for f in REPORT.figures],
                                             "rss": REPORT.rss, "notes": REPORT.notes, "raw": REPORT.raw},
                                            indent=2, default=str))
        if args.keep_logs:
            print(f"server logs kept in {tmp}")
        else:
            _remove_tree(tmp)
    return 1 if failed else 0


def cleanup_servers() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
