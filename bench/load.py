"""The load generator: N asyncio workers on keep-alive connections, then what the server says it saw.

Each worker has its own connection: by default a minimal hand-written HTTP/1.1
client (``RawConnection``), with ``client="httpx"`` one shared ``httpx.AsyncClient``.
A run is a fixed request count and a time cap after an unmeasured warm-up.
``measured_load`` also reads the bridge's ``/metrics``, the server process's CPU
time, and what the machine's cores did (the server, PostgreSQL, the load generator,
idle) when the measured part starts and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from bench.harness import HOST, Server
from bench.report import ms
from bridge.api.auth import basic_auth
from bridge.config import TRIAL_CLIENT_ID, TRIAL_CLIENT_SECRET

HEADERS = {**basic_auth(TRIAL_CLIENT_ID, TRIAL_CLIENT_SECRET), "Content-Type": "application/json"}
START_TIME = "2026-12-01 14:00"
CLIENTS = ("raw", "httpx")

Request = Callable[[int], tuple[str, bytes | None]]  # request number -> (path, body): a POST, or a GET for None
Post = Callable[[str, bytes | None], Awaitable[int]]  # (path, body) -> status


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
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000


def merge(loads: list[Load]) -> Load:
    """Several runs of the same shape as one."""
    statuses: Counter[str] = Counter()
    for one in loads:
        statuses.update(one.statuses)
    return Load(
        loads[0].concurrency,
        sum(x.sent for x in loads),
        sum(x.ok for x in loads),
        statuses,
        sum(x.elapsed for x in loads),
        [t for x in loads for t in x.latencies],
        any(x.capped for x in loads),
    )


def cells(load: Load) -> list[Any]:
    """A run's common table cells: requests sent, statuses, req/s, p50 and p99 (ms)."""
    return [load.sent, statuses(load) or "ok", f"{load.rps:.0f}", ms(load.pct(0.5)), ms(load.pct(0.99))]


def statuses(load: Load, expect: int = 201) -> str:
    """The answers other than ``expect``, as ``statusxcount`` (empty if none)."""
    other = {k: v for k, v in load.statuses.items() if k != str(expect)}
    return "" if not other else " ".join(f"{k}x{v}" for k, v in sorted(other.items()))


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

    async def post(self, path: str, body: bytes | None) -> int:
        """POST ``body`` to ``path`` (GET it when ``body`` is None); the answer's status, its body read and dropped."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            if body is None:
                self.writer.write(f"GET {path} HTTP/1.1\r\n{self.head}\r\n".encode())
            else:
                self.writer.write(
                    f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n".encode() + body
                )
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


async def _load(
    base_url: str,
    request: Request,
    concurrency: int,
    total: int,
    time_cap: float,
    warmup: int,
    expect: int,
    client: str,
    measure_starts: Callable[[], None] | None,
    spread: Sequence[str],
) -> Load:
    """``concurrency`` workers, each on its own keep-alive connection, share one request counter.

    With ``spread`` (more servers' URLs, raw client only), the connections are dealt out
    over ``base_url`` and those in turn, as a load balancer in front of replicas would.
    """
    urls = [urlsplit(url) for url in (base_url, *spread)]
    stack = contextlib.AsyncExitStack()
    async with stack:
        posts: list[Post]
        if client == "httpx":
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            shared = await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, headers=HEADERS, limits=limits, timeout=httpx.Timeout(30.0))
            )

            async def httpx_post(path: str, body: bytes | None) -> int:
                if body is None:
                    return (await shared.get(path)).status_code
                return (await shared.post(path, content=body)).status_code

            if spread:
                raise ValueError("only the raw client spreads its connections over several servers")
            posts = [httpx_post] * concurrency
        else:
            connections = [
                RawConnection(urls[i % len(urls)].hostname or HOST, urls[i % len(urls)].port or 80, HEADERS)
                for i in range(concurrency)
            ]
            for connection in connections:
                stack.push_async_callback(connection.close)
            posts = [connection.post for connection in connections]
        counter = 0

        async def worker(
            post: Post, limit: int, deadline: float, latencies: list[float] | None, statuses: Counter[str]
        ) -> None:
            nonlocal counter
            while counter < limit and time.perf_counter() < deadline:
                i = counter
                counter += 1
                path, body = request(i)
                started = time.perf_counter()
                try:
                    status = await asyncio.wait_for(post(path, body), timeout=30)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, httpx.HTTPError) as exc:
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


def load(
    base_url: str,
    request: Request,
    concurrency: int,
    total: int,
    time_cap: float,
    *,
    client: str,
    warmup: int | None = None,
    expect: int = 201,
    measure_starts: Callable[[], None] | None = None,
    spread: Sequence[str] = (),
) -> Load:
    """One bounded run: a warm-up (not measured), then ``total`` requests or ``time_cap`` seconds."""
    warm = warmup if warmup is not None else max(4 * concurrency, 50)
    return asyncio.run(
        _load(base_url, request, concurrency, total, time_cap, warm, expect, client, measure_starts, spread)
    )


def meeting_requests(links: list[str], tag: str) -> Request:
    """postMeeting on the links in turn; a new topic every time so no call is taken for a retry."""

    def request(i: int) -> tuple[str, bytes]:
        body = json.dumps({"topic": f"Bench {tag} {i}", "start_time": START_TIME, "duration": 30})
        return f"/api/v1/links/{links[i % len(links)]}/meetings", body.encode()

    return request


# --- what the server saw ---------------------------------------------------------------


@dataclass
class Scrape:
    counts: dict[str, float]  # status -> postMeeting requests
    buckets: list[tuple[float, float]]  # (le, cumulative count) of postMeeting latency


def scrape(base_url: str, backend: str) -> Scrape:
    """postMeeting's request counts and latency histogram for ``backend``, from the bridge's /metrics."""
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
        return f"{ms(self.p50)}/{ms(self.p99)}"


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


def postgres_cpu_seconds() -> float:
    """User + system CPU time every PostgreSQL server process on the machine has used so far."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                if (entry / "comm").read_text().startswith("postgres"):
                    total += cpu_seconds(int(entry.name))
    return total


def idle_seconds() -> float:
    """Time the machine's cores have spent idle (or waiting on I/O) so far, summed over the cores."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Cores:
    """What the machine's cores did during a measured run, in cores (CPU seconds per second)."""

    HEADER: ClassVar[str] = "cores: server / pg / bench / idle"
    NOTE: ClassVar[str] = (
        "cores: CPU seconds per second of the server process, every PostgreSQL process, the load generator, "
        "and the idle time of the machine's cores, during the measured part"
    )

    server: float
    postgres: float
    bench: float  # this process: the load generator
    idle: float

    def __str__(self) -> str:
        return f"{self.server:.2f} / {self.postgres:.2f} / {self.bench:.2f} / {self.idle:.2f}"


@dataclass
class Measured:
    run: Load
    seen: ServerSide | None  # from /metrics (None for servers without it)
    cpu_ms: float  # the server process's CPU time per request sent in the measured part
    cores: Cores
    also: Any = None


def measured_load(
    server: Server,
    backend: str | None,
    request: Request,
    concurrency: int,
    total: int,
    time_cap: float,
    *,
    client: str,
    also: Callable[[], Any] | None = None,
    warmup: int | None = None,
) -> Measured:
    """``load`` with /metrics (of ``backend``, if any), the server's CPU time and ``also()`` read as it starts."""
    url, pid = server.url, server.pid
    before: Scrape | None = None
    also_value: Any = None
    cpu_before = 0.0
    machine_before = (0.0, 0.0, 0.0)

    def machine() -> tuple[float, float, float]:
        return postgres_cpu_seconds(), cpu_seconds(os.getpid()), idle_seconds()

    def starts() -> None:
        nonlocal before, also_value, cpu_before, machine_before
        before = scrape(url, backend) if backend else None
        also_value = also() if also else None
        machine_before = machine()
        cpu_before = cpu_seconds(pid)

    run = load(url, request, concurrency, total, time_cap, client=client, warmup=warmup, measure_starts=starts)
    cpu = cpu_seconds(pid) - cpu_before
    postgres, bench, idle = (end - start for end, start in zip(machine(), machine_before, strict=True))
    seen = server_side(before, scrape(url, backend)) if backend and before else None
    wall = run.elapsed or float("nan")
    cores = Cores(cpu / wall, postgres / wall, bench / wall, idle / wall)
    return Measured(run, seen, cpu / run.sent * 1000 if run.sent else float("nan"), cores, also_value)
