"""Benchmarks of the bridge, run as a user deploys it: uvicorn in its own process, on loopback.

    .venv/bin/python -m bench [--quick] [--only NAME] [--postgres-url URL] [--json FILE] [--client raw|httpx]

NAME is one of: overhead, slow_vendor, scale, tokens, join, transports, workers (repeat --only for several).

1. overhead     postMeeting through the Jitsi backend vs. the plain same-work app (``bench.plain``: the
                same steps written plainly, on its own database of the same engine) and a bare Starlette
                endpoint returning the same JSON (each its own uvicorn process, same settings):
                throughput ratios, p50/p99 at 1, 16 and 64 connections, on SQLite and PostgreSQL.
2. slow_vendor  a backend whose vendor (a separate process on loopback) answers after 100 ms:
                throughput at 64 connections vs. the ideal 64 / 0.1 s.
3. scale        postMeeting p50 with 1,000 vs. 1,000,000 links and meetings in the database
                (--quick: 100,000).
4. tokens       10,000 concurrent PipedriveTokens.fresh_tokens calls in 2 processes sharing PostgreSQL
                while the access token expires k times: Pipedrive must see exactly k refreshes;
                the same for the Zoom plugin's Server-to-Server token when it is installed.
5. join         a join link's 303 (token looked up, room decrypted, Jitsi public and token modes) vs. a
                bare Starlette redirect: p50/p99 and throughput at 16 connections, SQLite and PostgreSQL.
6. transports   the bridge's vendor client (httpx.AsyncClient over RetryTransport) on each candidate
                inner transport (httpx's pool, PooledTransport, aiohttp, httpx2's pool), each in a fresh
                process, against a vendor answering after 100 ms: calls/s vs. ideal, p50/p99, client CPU
                per call, new vendor connections, at 16 and 64 concurrent calls (the optional packages:
                .venv/bin/pip install -e '.[bench]'; missing ones are reported as not installed).
7. workers      postMeeting on PostgreSQL: two bridge processes on one database (the load's connections
                dealt out over both) vs. one, at 16 and 64 connections.
8. peak RSS of every process started (VmHWM).

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
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench import join, overhead, scale, slow_vendor, tokens, transports, workers
from bench.harness import Run, postgres_or_none
from bench.load import CLIENTS
from bench.report import Report, heading, machine
from bridge.storage.vault import generate_key

BENCHMARKS: dict[str, Callable[[Run], None]] = {
    "overhead": overhead.run,
    "slow_vendor": slow_vendor.run,
    "scale": scale.run,
    "tokens": tokens.run,
    "join": join.run,
    "transports": transports.run,
    "workers": workers.run,
}
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests; 100,000 rows for the scale run")
    parser.add_argument(
        "--only", action="append", choices=list(BENCHMARKS), help="run only this benchmark (repeatable)"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("PVB_BENCH_POSTGRES_URL", DEFAULT_PG),
        help="an admin URL; the bench creates and drops its own databases (default: %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to this file")
    parser.add_argument(
        "--client",
        choices=CLIENTS,
        default="raw",
        help="load generator: a minimal keep-alive HTTP/1.1 client (default) or one shared httpx.AsyncClient",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (printed path)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen: list[str] = args.only or list(BENCHMARKS)
    started = time.perf_counter()

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(130)  # so the clean-up below runs

    signal.signal(signal.SIGTERM, on_term)
    report = Report()
    info = machine()
    pg = postgres_or_none(args.postgres_url, report)
    info["postgresql"] = pg.version if pg else "unreachable"
    heading("machine")
    for k, v in info.items():
        print(f"{k:>18}: {v}")
    print(
        f"{'mode':>18}: {'--quick' if args.quick else 'full'}; benchmarks: {', '.join(chosen)}; "
        f"load generator: {args.client}"
    )
    run = Run(
        quick=args.quick,
        client=args.client,
        key=generate_key(),
        tmp=Path(tempfile.mkdtemp(prefix="pvb-bench-")),
        report=report,
        pg=pg,
    )
    failed = False
    try:
        for name in chosen:
            try:
                BENCHMARKS[name](run)
            except Exception as exc:  # one broken benchmark does not hide the others' figures
                failed = True
                report.note(f"{name} failed: {exc.__class__.__name__}: {exc}")
                run.stop_servers()
    finally:
        run.close()
        report.summary(time.perf_counter() - started, args.quick)
        if args.json:
            report.write_json(args.json, info, args.quick)
        if args.keep_logs:
            print(f"server logs kept in {run.tmp}")
        else:
            run.remove()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
