"""3. scale: postMeeting p50 with 1,000 vs. 1,000,000 links and meetings in the database (--quick: 100,000).

Two databases per engine, one with ``small`` and one with ``big`` rows (links, their
meetings and encrypted rooms, bulk-loaded by ``bench.rows.seed``), each behind its
own bridge; the runs alternate small, big, small, big so drift on the machine hits
both alike. Requests go to 1,000 links picked at random among all.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from bench.harness import Run, Server
from bench.load import Load, Measured, cells, measured_load, meeting_requests, merge
from bench.report import heading, table
from bench.rows import Seeder, migrate, seed


def run(r: Run) -> None:
    small, big = 1_000, r.n(1_000_000, 100_000)
    heading(f"3. scale: postMeeting with {small:,} vs {big:,} links and meetings")
    counts = {1: r.n(1000, 300), 16: r.n(2000, 800)}
    rounds = 2
    cap = 60.0 if not r.quick else 20.0
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    for (db, small_url), (_db, big_url) in zip(r.databases("scale_small"), r.databases("scale_big"), strict=True):
        rng = random.Random(11)
        samples: dict[int, list[str]] = {}
        for size, url in ((small, small_url), (big, big_url)):
            migrate(url)
            want = set(rng.sample(range(size), min(1000, size)))
            started = time.perf_counter()
            samples[size] = list(seed(url, Seeder(r.key, seed=size), 0, size, want).values())
            rng.shuffle(samples[size])
            took = time.perf_counter() - started
            db_size = (
                Path(url.split(":///", 1)[1]).stat().st_size / 1e6
                if db == "sqlite"
                else r.pg.size_mb(url)
                if r.pg
                else 0.0
            )
            print(
                f"{db}: seeded {size:,} links, meetings and encrypted rooms in {took:.1f} s "
                f"(database {db_size:,.0f} MB)",
                flush=True,
            )
            raw.append({"db": db, "rows": size, "seed_seconds": took, "db_mb": db_size})
        servers: dict[int, Server] = {}
        results: dict[int, dict[int, Load]] = {small: {}, big: {}}
        try:
            for size, url in ((small, small_url), (big, big_url)):
                servers[size], _config = r.bridge("scale", f"bridge {db} {size:,}", url)
            for c in (1, 16):
                parts: dict[int, list[Measured]] = {small: [], big: []}
                for n in range(rounds):
                    for size in (small, big):
                        parts[size].append(
                            measured_load(
                                servers[size],
                                "jitsi",
                                meeting_requests(samples[size], f"scale-{db}-{c}-{n}-{time.time_ns()}"),
                                c,
                                counts[c] // rounds,
                                cap / rounds,
                                client=r.client,
                            )
                        )
                for size in (small, big):
                    one = results[size][c] = merge([m.run for m in parts[size]])
                    cpu = sum(m.cpu_ms * m.run.sent for m in parts[size]) / max(1, one.sent)
                    counted = sum(m.seen.count for m in parts[size] if m.seen)
                    rows.append(
                        [
                            f"bridge {db}",
                            f"{size:,}",
                            c,
                            *cells(one),
                            f"{cpu:.2f}",
                            "=" if counted == one.ok else f"!= {counted}",
                        ]
                    )
                    raw.append(
                        {
                            "db": db,
                            "size": size,
                            "c": c,
                            "rps": one.rps,
                            "p50": one.pct(0.5),
                            "p99": one.pct(0.99),
                            "cpu_ms": cpu,
                            "server_count": counted,
                            "client_ok": one.ok,
                        }
                    )
        finally:
            for server in servers.values():
                r.stop(server)
        for c in (1, 16):
            ratio = results[big][c].pct(0.5) / results[small][c].pct(0.5)
            r.report.add(
                "scale",
                f"{db}: p50 {big:,} / {small:,} rows, {c} conn",
                f"{ratio:.2f} ({results[big][c].pct(0.5):.1f} / {results[small][c].pct(0.5):.1f} ms)",
                "<= 1.2" if c == 1 else "",
                ratio <= 1.2 if c == 1 else None,
            )
    print(
        table(
            ["server", "rows", "conn", "requests", "status", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "server 201s"],
            rows,
        ),
        flush=True,
    )
    print(
        f"(each row: {rounds} alternating rounds merged; requests go to 1,000 links picked at random among all; "
        "'=': /metrics counted exactly the client's 201s)"
    )
    r.report.raw["scale"] = raw
