"""5. join: opening a meeting's join link (``GET /j/<token>`` -> 303 to the room) vs. a bare redirect.

The bridge looks the token's hash up, reads and decrypts the room, checks the
meeting is live and the browser's session, asks the backend (Jitsi: the stored
URL; with ``mode = "token"`` a JWT minted per click) and redirects. The baseline
is the bare Starlette process's ``/j/{token}``, a fixed 303, measured in the same
run: p50/p99 and throughput at 16 connections, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.harness import Run
from bench.load import HEADERS, Request, load, statuses
from bench.report import heading, ms, table
from bench.rows import create_links
from bridge.devtools.processes import free_port

CONNECTIONS = 16
MEETINGS = 200
FAR_START = "2031-05-14 09:30"  # join links of meetings long past their end show a page instead
TOKEN_MODE = {"mode": "token", "domain": "jitsi.example.com", "app_id": "bench", "app_secret": "bench-" + "s" * 32}


def seed_meetings(base_url: str, links: list[str], count: int) -> list[str]:
    """``count`` meetings made through postMeeting; the paths of their join links."""
    paths = []
    with httpx.Client(base_url=base_url, headers=HEADERS, timeout=30) as client:
        for i in range(count):
            body = {"topic": f"Join bench {i}", "start_time": FAR_START, "duration": 30}
            answer = client.post(f"/api/v1/links/{links[i % len(links)]}/meetings", content=json.dumps(body))
            answer.raise_for_status()
            paths.append(urlsplit(answer.json()["data"]["join_url"]).path)
    return paths


def clicks(paths: list[str]) -> Request:
    def request(i: int) -> tuple[str, bytes | None]:
        return paths[i % len(paths)], None

    return request


def run(r: Run) -> None:
    heading(f"5. join: a join link's redirect vs. a bare redirect, {CONNECTIONS} connections")
    total, cap = r.n(4000, 1000), 60.0 if not r.quick else 20.0
    bare_port = free_port()
    bare = r.start("join", "bare starlette", ["-m", "bench.servers", "bare", "--port", str(bare_port)], bare_port)
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    try:
        base = load(bare.url, clicks(["/j/" + "a" * 32]), CONNECTIONS, total, cap, client=r.client, expect=303)
        rows.append(
            [
                "bare redirect",
                base.sent,
                statuses(base, 303) or "ok",
                f"{base.rps:.0f}",
                ms(base.pct(0.5)),
                ms(base.pct(0.99)),
                "1.00",
            ]
        )
        raw.append({"server": "bare", "rps": base.rps, "p50": base.pct(0.5), "p99": base.pct(0.99)})
        for db, url in r.databases("join"):
            for mode, table_ in (("public", {}), ("token", TOKEN_MODE)):
                server, config = r.bridge("join", f"bridge {db} jitsi {mode}", url, backends__jitsi=table_)
                try:
                    paths = seed_meetings(server.url, create_links(config, 16), r.n(MEETINGS, 50))
                    one = load(server.url, clicks(paths), CONNECTIONS, total, cap, client=r.client, expect=303)
                finally:
                    r.stop(server)
                ratio = one.rps / base.rps if base.rps else 0.0
                name = f"bridge {db}, Jitsi {mode}"
                rows.append(
                    [
                        name,
                        one.sent,
                        statuses(one, 303) or "ok",
                        f"{one.rps:.0f}",
                        ms(one.pct(0.5)),
                        ms(one.pct(0.99)),
                        f"{ratio:.2f}",
                    ]
                )
                raw.append(
                    {
                        "server": f"{db}-{mode}",
                        "rps": one.rps,
                        "p50": one.pct(0.5),
                        "p99": one.pct(0.99),
                        "ratio": ratio,
                        "statuses": dict(one.statuses),
                    }
                )
                r.report.add(
                    "join",
                    f"{db}, Jitsi {mode}: join p99 at {CONNECTIONS} conn",
                    f"{one.pct(0.99):.1f} ms (p50 {one.pct(0.5):.1f})",
                    "<= 20 ms",
                    one.pct(0.99) <= 20,
                )
                if one.capped:
                    r.report.note(f"join {db} {mode} hit the {cap:g} s cap after {one.sent} requests")
    finally:
        r.stop(bare)
    print(table(["server", "requests", "status", "req/s", "p50 ms", "p99 ms", "ratio"], rows), flush=True)
    print("(client-side, answers 303 only; ratio: throughput against the bare redirect in this run)")
    r.report.raw["join"] = raw
