"""1. overhead: postMeeting through the Jitsi backend vs. the plain same-work app, and a bare endpoint.

The yardstick is ``bench.plain``: the same work (auth, validation, the link and a retry looked
up, the meeting inserted with its room encrypted, a log line, the 201) written plainly, on its
own database of the same engine. The bare endpoint returns the same JSON doing nothing, for
context. Each is its own uvicorn process with the bridge's settings. Throughput and p50/p99 at
1, 16 and 64 connections, on SQLite and PostgreSQL; with the raw client the bare endpoint is also
measured through ``httpx.AsyncClient``, for comparison.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from bench.harness import Run, Server
from bench.load import Cores, cells, load, measured_load, meeting_requests, statuses
from bench.report import heading, ms, table
from bench.rows import create_links
from bridge.config import TRIAL_CLIENT_ID, TRIAL_CLIENT_SECRET
from bridge.devtools.processes import free_port

PLAIN_LINKS = [f"plain-{i}" for i in range(64)]


def start_plain(r: Run, db: str, url: str) -> Server:
    """``bench.plain`` on a database of its own (``url``), with the trial credentials the load sends."""
    port = free_port()
    args = ["-m", "bench.plain", "--port", str(port), "--database", url, "--key", os.urandom(32).hex()]
    args += ["--client-id", TRIAL_CLIENT_ID, "--client-secret", TRIAL_CLIENT_SECRET, "--links", str(len(PLAIN_LINKS))]
    return r.start("overhead", f"plain {db}", args, port)


def run(r: Run) -> None:
    heading("1. overhead: postMeeting (Jitsi) vs. the plain same-work app and a bare Starlette endpoint")
    levels = [1, 16, 64]
    counts = {1: r.n(1500, 300), 16: r.n(4000, 1000), 64: r.n(4000, 1000)}
    cap = 60.0 if not r.quick else 20.0
    bare_port = free_port()
    bare = r.start("overhead", "bare starlette", ["-m", "bench.servers", "bare", "--port", str(bare_port)], bare_port)
    bridges: dict[str, tuple[Server, list[str]]] = {}
    plains: dict[str, Server] = {}
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    try:
        for db, url in r.databases("overhead"):
            server, config = r.bridge("overhead", f"bridge {db}", url)
            bridges[db] = (server, create_links(config, 64))
        for db, url in r.databases("plain"):
            plains[db] = start_plain(r, db, url)
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
                    "",
                    str(bare_run.cores),
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
                    "cores": dataclasses.asdict(bare_run.cores),
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
                        "",
                        "",
                    ]
                )
                raw.append(
                    {"server": "bare-httpx", "c": c, "rps": other.rps, "p50": other.pct(0.5), "p99": other.pct(0.99)}
                )
            plain_runs = {}
            for db, plain in plains.items():
                p = measured_load(
                    plain,
                    None,
                    meeting_requests(PLAIN_LINKS, f"plain-{db}-{c}-{time.time_ns()}"),
                    c,
                    counts[c],
                    cap,
                    client=r.client,
                )
                plain_runs[db] = p.run
                rows.append(
                    [
                        f"plain {db}",
                        c,
                        p.run.sent,
                        statuses(p.run) or "ok",
                        f"{p.run.rps:.0f}",
                        ms(p.run.pct(0.5)),
                        ms(p.run.pct(0.99)),
                        f"{p.run.rps / base.rps:.2f}" if base.rps else "",
                        f"{p.cpu_ms:.2f}",
                        "1.00",
                        "",
                        "",
                        str(p.cores),
                    ]
                )
                raw.append(
                    {
                        "server": f"plain-{db}",
                        "c": c,
                        "rps": p.run.rps,
                        "p50": p.run.pct(0.5),
                        "p99": p.run.pct(0.99),
                        "cpu_ms": p.cpu_ms,
                        "cores": dataclasses.asdict(p.cores),
                        "statuses": dict(p.run.statuses),
                    }
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
                plain_run = plain_runs.get(db)
                vs_plain = one.rps / plain_run.rps if plain_run is not None and plain_run.rps else None
                p99_vs_plain = (
                    one.pct(0.99) / plain_run.pct(0.99) if plain_run is not None and plain_run.pct(0.99) else None
                )
                check = "=" if seen.count == one.ok else f"!= {seen.count}"
                rows.append(
                    [
                        f"bridge {db}",
                        c,
                        *cells(one),
                        f"{ratio:.2f}",
                        f"{m.cpu_ms:.2f}",
                        "" if vs_plain is None else f"{vs_plain:.2f}",
                        seen.latency(),
                        f"{seen.count} {check}",
                        str(m.cores),
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
                        "cores": dataclasses.asdict(m.cores),
                        "ratio": ratio,
                        "vs_plain": vs_plain,
                        "p99_vs_plain": p99_vs_plain,
                        "server_p50": seen.p50,
                        "server_p99": seen.p99,
                        "server_count": seen.count,
                        "client_ok": one.ok,
                        "capped": one.capped,
                        "statuses": dict(one.statuses),
                    }
                )
                if vs_plain is not None and p99_vs_plain is not None and plain_run is not None:
                    goal = 0.8 if c == 1 else 1.0
                    r.report.add(
                        "overhead",
                        f"{db}: throughput vs plain same-work, {c} conn",
                        f"{vs_plain:.2f} ({one.rps:.0f}/{plain_run.rps:.0f} req/s)",
                        f">= {goal:.1f}",
                        vs_plain >= goal,
                    )
                    r.report.add(
                        "overhead",
                        f"{db}: p99 vs plain same-work, {c} conn",
                        f"{p99_vs_plain:.2f}x ({one.pct(0.99):.1f}/{plain_run.pct(0.99):.1f} ms)",
                        "<= 1.5x",
                        p99_vs_plain <= 1.5,
                    )
                if one.capped:
                    r.report.note(f"overhead {db} at {c} connections hit the {cap:g} s cap after {one.sent} requests")
    finally:
        for server, _links in bridges.values():
            r.stop(server)
        for plain in plains.values():
            r.stop(plain)
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
                "vs plain",
                "server p50/p99 ms",
                "server 201s",
                Cores.HEADER,
            ],
            rows,
        ),
        flush=True,
    )
    print(
        "(ratio: throughput vs the bare endpoint; vs plain: vs the plain same-work app on the same database; "
        "p50/p99: client-side, successful requests; CPU ms/req: the server process's CPU time (all threads) "
        "per request; server p50/p99: /metrics' histogram, interpolated; '=': the server counted exactly "
        f"the client's 201s; {Cores.NOTE})"
    )
    r.report.raw["overhead"] = raw
