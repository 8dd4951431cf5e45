"""1. overhead: postMeeting through the Jitsi backend vs. a bare Starlette endpoint returning the same JSON.

The bare endpoint is its own uvicorn process with the same settings
(``python -m bench.servers bare``). Throughput ratio, p50/p99 at 1, 16 and 64
connections, on SQLite and PostgreSQL; with the raw client the bare endpoint is
also measured through ``httpx.AsyncClient``, for comparison.
"""

from __future__ import annotations

import time
from typing import Any

from bench.harness import Run, Server
from bench.load import load, measured_load, meeting_requests, statuses
from bench.report import heading, ms, table
from bench.rows import create_links
from bridge.devtools.processes import free_port


def run(r: Run) -> None:
    heading("1. overhead: postMeeting (Jitsi) vs. a bare Starlette endpoint")
    levels = [1, 16, 64]
    counts = {1: r.n(1500, 300), 16: r.n(4000, 1000), 64: r.n(4000, 1000)}
    cap = 60.0 if not r.quick else 20.0
    bare_port = free_port()
    bare = r.start("overhead", "bare starlette", ["-m", "bench.servers", "bare", "--port", str(bare_port)], bare_port)
    bridges: dict[str, tuple[Server, list[str]]] = {}
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    try:
        for db, url in r.databases("overhead"):
            server, config = r.bridge("overhead", f"bridge {db}", url)
            bridges[db] = (server, create_links(config, 64))
        for c in levels:
            bare_run = measured_load(
                bare, None, meeting_requests(["bare"], f"bare-{c}"), c, counts[c], cap, client=r.client
            )
            base = bare_run.run
            rows.append(
                [
                    "bare starlette",
                    c,
                    base.sent,
                    statuses(base) or "ok",
                    f"{base.rps:.0f}",
                    ms(base.pct(0.5)),
                    ms(base.pct(0.99)),
                    "1.00",
                    f"{bare_run.cpu_ms:.2f}",
                    "",
                    "",
                ]
            )
            raw.append(
                {
                    "server": "bare",
                    "c": c,
                    "rps": base.rps,
                    "p50": base.pct(0.5),
                    "p99": base.pct(0.99),
                    "cpu_ms": bare_run.cpu_ms,
                }
            )
            if r.client != "httpx":  # what the baseline looks like through httpx.AsyncClient, for context
                other = load(bare.url, meeting_requests(["bare"], f"bare-httpx-{c}"), c, counts[c], cap, client="httpx")
                rows.append(
                    [
                        "bare, httpx client",
                        c,
                        other.sent,
                        statuses(other) or "ok",
                        f"{other.rps:.0f}",
                        ms(other.pct(0.5)),
                        ms(other.pct(0.99)),
                        "",
                        "",
                        "",
                        "",
                    ]
                )
                raw.append(
                    {"server": "bare-httpx", "c": c, "rps": other.rps, "p50": other.pct(0.5), "p99": other.pct(0.99)}
                )
            for db, (server, links) in bridges.items():
                m = measured_load(
                    server,
                    "jitsi",
                    meeting_requests(links, f"{db}-{c}-{time.time_ns()}"),
                    c,
                    counts[c],
                    cap,
                    client=r.client,
                )
                one, seen = m.run, m.seen
                assert seen is not None
                ratio = one.rps / base.rps if base.rps else 0.0
                check = "=" if seen.count == one.ok else f"!= {seen.count}"
                rows.append(
                    [
                        f"bridge {db}",
                        c,
                        one.sent,
                        statuses(one) or "ok",
                        f"{one.rps:.0f}",
                        ms(one.pct(0.5)),
                        ms(one.pct(0.99)),
                        f"{ratio:.2f}",
                        f"{m.cpu_ms:.2f}",
                        seen.latency(),
                        f"{seen.count} {check}",
                    ]
                )
                raw.append(
                    {
                        "server": db,
                        "c": c,
                        "rps": one.rps,
                        "p50": one.pct(0.5),
                        "p99": one.pct(0.99),
                        "cpu_ms": m.cpu_ms,
                        "ratio": ratio,
                        "server_p50": seen.p50,
                        "server_p99": seen.p99,
                        "server_count": seen.count,
                        "client_ok": one.ok,
                        "capped": one.capped,
                        "statuses": dict(one.statuses),
                    }
                )
                r.report.add(
                    "overhead",
                    f"{db}: throughput vs bare, {c} conn",
                    f"{ratio:.2f} ({one.rps:.0f}/{base.rps:.0f} req/s)",
                    ">= 0.5",
                    ratio >= 0.5,
                )
                if c == 16:
                    r.report.add(
                        "overhead", f"{db}: p99 at 16 conn", f"{one.pct(0.99):.1f} ms", "<= 20 ms", one.pct(0.99) <= 20
                    )
                if one.capped:
                    r.report.note(f"overhead {db} at {c} connections hit the {cap:g} s cap after {one.sent} requests")
    finally:
        for server, _links in bridges.values():
            r.stop(server)
        r.stop(bare)
    print(
        table(
            [
                "server",
                "conn",
                "requests",
                "status",
                "req/s",
                "p50 ms",
                "p99 ms",
                "ratio",
                "CPU ms/req",
                "server p50/p99 ms",
                "server 201s",
            ],
            rows,
        ),
        flush=True,
    )
    print(
        "(p50/p99: client-side, successful requests; CPU ms/req: the server process's CPU time (all threads) "
        "per request; server p50/p99: /metrics' histogram, interpolated; '=': the server counted exactly "
        "the client's 201s)"
    )
    r.report.raw["overhead"] = raw
