"""7. workers: postMeeting throughput of one bridge process vs. two on one PostgreSQL database.

Two ``pipedrive-video-bridge serve`` processes on the same config and database, each
on its own port, are the two workers; the load generator deals its connections out
over both, as a load balancer in front of replicas does (round robin by connection).
One process alone, with the same total number of connections, is the baseline.
The rounds alternate one, two, one, two so drift on the machine hits both alike.
SQLite is left out: its one writer per database file is shared by every process.
"""

from __future__ import annotations

import time
from typing import Any

from bench.harness import Run, Server
from bench.load import Load, cells, cpu_seconds, load, meeting_requests, merge
from bench.report import heading, table
from bench.rows import create_links
from bridge.devtools.processes import free_port, serve_args


def _spread_load(
    servers: list[Server], links: list[str], c: int, count: int, cap: float, tag: str
) -> tuple[Load, float]:
    """One run over ``servers``; returns it and the servers' CPU ms per request, all processes together."""
    cpu_before: list[float] = []

    def starts() -> None:
        cpu_before[:] = [cpu_seconds(server.pid) for server in servers]

    run = load(
        servers[0].url,
        meeting_requests(links, tag),
        c,
        count,
        cap,
        client="raw",
        measure_starts=starts,
        spread=[server.url for server in servers[1:]],
    )
    cpu = sum(cpu_seconds(server.pid) for server in servers) - sum(cpu_before)
    return run, cpu / run.sent * 1000 if run.sent else float("nan")


def run(r: Run) -> None:
    heading("7. workers: one bridge process vs two on one PostgreSQL database")
    if r.pg is None:
        r.report.note("workers: PostgreSQL is unreachable; skipped")
        return
    levels = [16, 64]
    count = r.n(4000, 1200)
    rounds = 2
    cap = 60.0 if not r.quick else 20.0
    url = r.pg.create("workers")
    first, config = r.bridge("workers", "bridge 1", url)
    port = free_port()
    second = r.start("workers", "bridge 2", serve_args(config, port), port)
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    try:
        links = create_links(config, 64)
        for c in levels:
            parts: dict[int, list[tuple[Load, float]]] = {1: [], 2: []}
            for n in range(rounds):
                for processes in (1, 2):
                    servers = [first, second][:processes]
                    tag = f"workers-{c}-{processes}-{n}-{time.time_ns()}"
                    parts[processes].append(_spread_load(servers, links, c, count // rounds, cap / rounds, tag))
            merged = {p: merge([one for one, _cpu in parts[p]]) for p in (1, 2)}
            for processes in (1, 2):
                one = merged[processes]
                cpu = sum(cpu * one_.sent for one_, cpu in parts[processes]) / max(1, one.sent)
                rows.append(
                    [
                        f"{processes} process{'es' if processes > 1 else ''}",
                        c,
                        *cells(one),
                        f"{cpu:.2f}",
                        f"{one.rps / merged[1].rps:.2f}" if merged[1].rps else "",
                    ]
                )
                raw.append(
                    {
                        "processes": processes,
                        "c": c,
                        "rps": one.rps,
                        "p50": one.pct(0.5),
                        "p99": one.pct(0.99),
                        "cpu_ms": cpu,
                    }
                )
            ratio = merged[2].rps / merged[1].rps if merged[1].rps else 0.0
            r.report.add(
                "workers",
                f"postgresql: 2 processes vs 1, {c} conn",
                f"{ratio:.2f} ({merged[2].rps:.0f}/{merged[1].rps:.0f} req/s)",
                ">= 1.6",
                ratio >= 1.6,
            )
    finally:
        r.stop(second)
        r.stop(first)
    print(
        table(["server", "conn", "requests", "status", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "vs 1"], rows),
        flush=True,
    )
    print(
        f"(each row: {rounds} alternating rounds merged; CPU ms/req: both processes' CPU time together; "
        "load generator, bridges and PostgreSQL share the machine's cores)"
    )
    r.report.raw["workers"] = raw
