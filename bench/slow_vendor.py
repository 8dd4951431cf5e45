"""2. slow_vendor: a backend whose vendor (a separate process on loopback) answers after 100 ms.

Throughput at 16 and 64 connections against the ideal ``connections / 0.1 s``. The
bridge runs with the bench's plugin (``bench.slow_backend``, started by
``python -m bench.servers bridge``); the vendor alone, through this process's
client and through ``httpx.AsyncClient``, is the baseline.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import httpx

from bench.harness import Run
from bench.load import Cores, cells, load, measured_load, meeting_requests, statuses
from bench.report import heading, ms, table
from bench.rows import create_links
from bridge.devtools.processes import free_port


def run(r: Run) -> None:
    heading("2. concurrency with a vendor that answers after 100 ms")
    delay = 0.1
    levels = [16, 64]
    counts = {16: r.n(800, 320), 64: r.n(3200, 1280)}
    cap = 30.0
    vendor = r.start_vendor("slow_vendor", delay)
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    try:

        def vendor_stats() -> dict[str, int]:
            return httpx.get(vendor.url + "/stats", timeout=5).json()  # type: ignore[no-any-return]

        def direct(i: int) -> tuple[str, bytes]:
            return "/rooms", json.dumps({"title": f"direct {i}", "minutes": 30}).encode()

        base = load(vendor.url, direct, 64, counts[64], cap, client=r.client)
        rows.append(
            [
                "vendor directly (baseline)",
                64,
                base.sent,
                statuses(base) or "ok",
                f"{base.rps:.0f}",
                f"{64 / delay:.0f}",
                f"{base.rps / (64 / delay):.2f}",
                ms(base.pct(0.5)),
                ms(base.pct(0.99)),
                "",
                "",
                "",
                "",
            ]
        )
        raw.append({"server": "vendor", "c": 64, "rps": base.rps})
        # the bridge reaches the vendor through one shared httpx.AsyncClient; the same, without the bridge:
        other = load(vendor.url, direct, 64, counts[64] // 2, cap, client="httpx")
        rows.append(
            [
                "vendor directly, httpx client",
                64,
                other.sent,
                statuses(other) or "ok",
                f"{other.rps:.0f}",
                f"{64 / delay:.0f}",
                f"{other.rps / (64 / delay):.2f}",
                ms(other.pct(0.5)),
                ms(other.pct(0.99)),
                "",
                "",
                "",
                "",
            ]
        )
        raw.append({"server": "vendor-httpx", "c": 64, "rps": other.rps, "p50": other.pct(0.5), "p99": other.pct(0.99)})
        for db, url in r.databases("slowvendor"):
            port = free_port()
            config = r.write_config(
                f"slow-{db}",
                db_url=url,
                port=port,
                meetings={"default_backend": "slowvendor", "allowed_backends": ["slowvendor"]},
                backends__slowvendor={"url": vendor.url},
            )
            server = r.start(
                "slow_vendor",
                f"bridge+plugin {db}",
                ["-m", "bench.servers", "bridge", "--config", str(config), "--port", str(port)],
                port,
            )
            try:
                links = create_links(config, 64)
                for c in levels:
                    ideal = c / delay
                    m = measured_load(
                        server,
                        "slowvendor",
                        meeting_requests(links, f"slow-{db}-{c}-{time.time_ns()}"),
                        c,
                        counts[c],
                        cap,
                        client=r.client,
                        also=vendor_stats,
                        warmup=2 * c,
                    )
                    one, seen, vbefore, vafter = m.run, m.seen, m.also, vendor_stats()
                    assert seen is not None
                    conns = vafter["connections"] - vbefore["connections"]
                    ratio = one.rps / ideal
                    rows.append(
                        [
                            f"bridge {db}",
                            c,
                            *cells(one)[:3],
                            f"{ideal:.0f}",
                            f"{ratio:.2f}",
                            ms(one.pct(0.5)),
                            ms(one.pct(0.99)),
                            f"{m.cpu_ms:.2f}",
                            seen.latency(),
                            conns,
                            str(m.cores),
                        ]
                    )
                    raw.append(
                        {
                            "server": db,
                            "c": c,
                            "rps": one.rps,
                            "ideal": ideal,
                            "ratio": ratio,
                            "p50": one.pct(0.5),
                            "p99": one.pct(0.99),
                            "cpu_ms": m.cpu_ms,
                            "cores": dataclasses.asdict(m.cores),
                            "server_count": seen.count,
                            "client_ok": one.ok,
                            "vendor_new_connections": conns,
                            "vendor_requests": vafter["requests"] - vbefore["requests"],
                        }
                    )
                    if seen.count != one.ok:
                        r.report.note(f"slow_vendor {db} {c}: server counted {seen.count} 201s, client {one.ok}")
                    if one.capped:
                        r.report.note(
                            f"slow_vendor {db} at {c} connections hit the {cap:g} s cap after "
                            f"{one.sent} requests (the rate is still over the whole measured run)"
                        )
                    r.report.add(
                        "slow_vendor",
                        f"{db}: throughput vs ideal, {c} conn",
                        f"{ratio:.2f} ({one.rps:.0f}/{ideal:.0f} req/s)",
                        ">= 0.8" if c == 64 else "",
                        ratio >= 0.8 if c == 64 else None,
                    )
            finally:
                r.stop(server)
    finally:
        r.stop(vendor)
    print(
        table(
            [
                "server",
                "conn",
                "requests",
                "status",
                "req/s",
                "ideal",
                "ratio",
                "p50 ms",
                "p99 ms",
                "CPU ms/req",
                "server p50/p99 ms",
                "new vendor conns",
                Cores.HEADER,
            ],
            rows,
        ),
        flush=True,
    )
    print(
        "(ideal = connections / 0.1 s; 'new vendor conns' = TCP connections the vendor saw opened during "
        f"the measured run, warm-up excluded; {Cores.NOTE})"
    )
    r.report.raw["slow_vendor"] = raw
