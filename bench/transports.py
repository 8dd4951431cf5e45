"""6. transports: the bridge's vendor client on each candidate inner transport, against a vendor answering in 100 ms.

The bridge calls vendors through one shared ``httpx.AsyncClient(transport=RetryTransport(inner),
timeout=...)``; ``bridge.vendors.http.shared_client`` builds it here as it does for
``bridge.runtime.open_bridge`` (the default ``[server]`` timeout, attempts and Retry-After
cap); only ``inner`` changes here. Each candidate runs in
a fresh process of its own (``python -m bench.transports``), so the CPU time measured is its
own: after a warm-up that opens the connections, C asyncio tasks POST a small JSON body to
the vendor's ``/rooms`` in a loop until N calls are done (or a time cap). Reported: calls/s
against the ideal ``C / 0.1 s``, p50/p99 latency, the process's CPU time per call (user +
system, ``getrusage`` around the timed part only), the retries RetryTransport made, and the
TCP connections the vendor saw opened during the timed part, with the vendor's own CPU time
per call (on a small machine the vendor and the client share the cores: a ratio well under 1
with little client CPU points at the machine, not the transport).

The candidates for ``inner`` (at most 200 connections each, all kept alive):

- ``httpx``          ``httpx.AsyncHTTPTransport``: one httpcore pool, httpx as shipped;
- ``pooled-anyio``   8 such pools of 25, taken in turn by ``bridge.vendors.http.PooledTransport``, each on
                     httpcore's own network backend (anyio's socket streams): the bridge before
                     ``bridge.vendors.network``;
- ``pooled``         ``PooledTransport`` as the bridge builds it: the same 8 pools, each on plain asyncio sockets
                     (``bridge.vendors.network.AsyncioBackend``);
- ``pooled32``       the same with 32 pools of 6: httpx's own pool tuned. httpx has no setting that changes
                     the pool's bookkeeping (``AsyncHTTPTransport`` takes http1/http2 (HTTP/1.1 only is already
                     the default), limits, retries, socket options, uds, local address), so only more pools help;
- ``aiohttp``        ``httpx_aiohttp.AiohttpTransport`` (package httpx-aiohttp): aiohttp's connector under httpx;
- ``httpcore2``      ``bench.httpcore2_transport.Httpcore2Transport``: httpx2's rewritten pool under httpx
                     (``httpx2.AsyncHTTPTransport`` itself is not an httpx transport; see that module);
- ``httpx2-client``  for comparison only, not an inner transport under httpx: the process calls
                     ``httpx2.alias_httpx()`` first, so every ``import httpx`` (the bridge's too) is httpx2 and
                     ``RetryTransport`` wraps ``httpx2.AsyncHTTPTransport`` inside ``httpx2.AsyncClient``.

A candidate whose package is missing is a "not installed" row. The packages are the ``bench`` extra:

    .venv/bin/pip install -e '.[bench]'

One measurement, in this process, printed as one JSON object (the benchmark runs this for each row):

    python -m bench.transports CANDIDATE --url URL [--vendor-pid PID] [--concurrency 64] [--count N]
                               [--warmup N] [--cap SECONDS]

Nothing at the top of this module imports httpx: the ``httpx2-client`` process must alias it first.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from typing import TYPE_CHECKING, Any

from bench.report import heading, ms, table

if TYPE_CHECKING:
    import httpx

    from bench.harness import Run, Server

DELAY = 0.1  # the fake vendor's answer time
CANDIDATES = ("httpx", "pooled-anyio", "pooled", "pooled32", "aiohttp", "httpcore2", "httpx2-client")
PACKAGES = {"aiohttp": "httpx-aiohttp", "httpcore2": "httpx2", "httpx2-client": "httpx2"}  # beyond the bridge's own
MAX_CONNECTIONS = 200  # as bridge.runtime builds PooledTransport


class NotInstalled(Exception):
    pass


def inner_transport(candidate: str) -> httpx.AsyncBaseTransport:
    """The candidate's transport under RetryTransport; NotInstalled if its package is missing."""
    import httpx

    from bridge.vendors.http import PooledTransport

    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
    if candidate in ("httpx", "httpx2-client"):  # for httpx2-client, ``httpx`` is httpx2 here
        return httpx.AsyncHTTPTransport(limits=limits)
    if candidate == "pooled":
        return PooledTransport(max_connections=MAX_CONNECTIONS)
    if candidate == "pooled-anyio":
        return PooledTransport(max_connections=MAX_CONNECTIONS, pool=lambda per: httpx.AsyncHTTPTransport(limits=per))
    if candidate == "pooled32":
        return PooledTransport(max_connections=MAX_CONNECTIONS, pools=32)
    try:
        if candidate == "aiohttp":
            from httpx_aiohttp import AiohttpTransport  # type: ignore[import-not-found, unused-ignore]

            return AiohttpTransport(limits=limits)  # type: ignore[no-any-return, unused-ignore]
        if candidate == "httpcore2":
            from bench.httpcore2_transport import Httpcore2Transport

            return Httpcore2Transport(limits)
    except ModuleNotFoundError as exc:
        raise NotInstalled(PACKAGES[candidate]) from exc
    raise ValueError(f"unknown candidate {candidate!r}")


def versions(candidate: str) -> str:
    """The packages the candidate's calls go through, with their versions."""
    names = {
        "aiohttp": ["httpx", "httpx-aiohttp", "aiohttp"],
        "httpcore2": ["httpx", "httpcore2"],
        "httpx2-client": ["httpx2", "httpcore2"],
    }.get(candidate, ["httpx", "httpcore"])
    return ", ".join(f"{name} {importlib.metadata.version(name)}" for name in names)


def vendor_stats(url: str) -> dict[str, int]:
    """The vendor's request and connection counts (urllib: not through the client measured)."""
    with urllib.request.urlopen(url + "/stats", timeout=5) as answer:
        return json.loads(answer.read())  # type: ignore[no-any-return]


def cpu_seconds() -> float:
    """User + system CPU time this process (all its threads) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One candidate: a warm-up, then ``count`` calls from ``concurrency`` tasks, or ``cap`` seconds."""
    result: dict[str, Any] = {"candidate": args.candidate, "c": args.concurrency}
    if args.candidate == "httpx2-client":
        try:
            import httpx2  # type: ignore[import-not-found, unused-ignore]
        except ModuleNotFoundError:
            return result | {"missing": PACKAGES[args.candidate]}
        httpx2.alias_httpx()  # before anything imports httpx
    import httpx

    from bench.harness import peak_rss_mb
    from bench.load import cpu_seconds as process_cpu_seconds
    from bridge.config import ServerConfig
    from bridge.vendors.http import RetryPolicy, shared_client

    def vendor_cpu() -> float:
        return process_cpu_seconds(args.vendor_pid) if args.vendor_pid else float("nan")

    try:
        inner = inner_transport(args.candidate)
    except NotInstalled as exc:
        return result | {"missing": str(exc)}
    server = ServerConfig()
    timeout = httpx.Timeout(server.backend_timeout_seconds, connect=5.0)
    policy = RetryPolicy(attempts=server.vendor_attempts, max_retry_after=server.vendor_max_retry_after_seconds)
    retries: Counter[str] = Counter()

    def retried(_host: str, reason: str) -> None:
        retries[reason] += 1

    url = args.url + "/rooms"
    counter = 0

    async def worker(
        client: httpx.AsyncClient, limit: int, deadline: float, latencies: list[float], outcomes: Counter[str]
    ) -> None:
        nonlocal counter
        while counter < limit and time.perf_counter() < deadline:
            i = counter
            counter += 1
            started = time.perf_counter()
            try:
                response = await client.post(url, json={"title": f"call {i}", "minutes": 30})
            except httpx.HTTPError as exc:
                outcomes[exc.__class__.__name__] += 1
                continue
            outcomes[str(response.status_code)] += 1
            if response.status_code == 201:
                latencies.append(time.perf_counter() - started)

    async with shared_client(timeout, inner, policy, on_retry=retried) as client:
        deadline = time.perf_counter() + args.cap
        warm: Counter[str] = Counter()
        await asyncio.gather(*(worker(client, args.warmup, deadline, [], warm) for _ in range(args.concurrency)))
        retries.clear()
        before = vendor_stats(args.url)
        start_index = counter
        latencies: list[float] = []
        outcomes: Counter[str] = Counter()
        vendor_cpu_before, cpu_before, started = vendor_cpu(), cpu_seconds(), time.perf_counter()
        deadline = started + args.cap
        limit = start_index + args.count
        await asyncio.gather(*(worker(client, limit, deadline, latencies, outcomes) for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
        cpu, vendor_cpu_used = cpu_seconds() - cpu_before, vendor_cpu() - vendor_cpu_before
        after = vendor_stats(args.url)
    sent = counter - start_index
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000 if ordered else float("nan")

    return result | {
        "packages": versions(args.candidate),
        "client": f"{httpx.AsyncClient.__module__.split('.')[0]}.AsyncClient",  # httpx2's under the alias
        "sent": sent,
        "ok": len(latencies),
        "outcomes": dict(outcomes),
        "warmup_outcomes": dict(warm),
        "elapsed": elapsed,
        "rps": len(latencies) / elapsed if elapsed else 0.0,
        "p50": pct(0.5),
        "p99": pct(0.99),
        "cpu_ms": cpu / sent * 1000 if sent else float("nan"),
        "vendor_cpu_ms": vendor_cpu_used / sent * 1000 if sent else float("nan"),
        "retries": dict(retries),
        "vendor_new_connections": after["connections"] - before["connections"],
        "vendor_requests": after["requests"] - before["requests"],
        "capped": sent < args.count,
        "peak_rss_mb": peak_rss_mb(os.getpid()),  # not ru_maxrss: Linux carries that over from before exec
    }


def one(candidate: str, vendor: Server, concurrency: int, count: int, cap: float) -> dict[str, Any]:
    """``python -m bench.transports CANDIDATE ...`` in a fresh process; its JSON, or ``{"failed": why}``."""
    from bench.harness import PY, ROOT  # here, not at the top: bench.harness imports httpx

    args = [PY, "-m", "bench.transports", candidate, "--url", vendor.url, "--vendor-pid", str(vendor.pid)]
    args += ["--concurrency", str(concurrency)]
    args += ["--count", str(count), "--warmup", str(2 * concurrency), "--cap", str(cap)]
    try:
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=cap * 2 + 60, check=False)
    except subprocess.TimeoutExpired:
        return {"candidate": candidate, "c": concurrency, "failed": "timed out"}
    if done.returncode != 0 or not done.stdout.strip():
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return {"candidate": candidate, "c": concurrency, "failed": last}
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(r: Run) -> None:
    heading("6. the vendor client's inner transport, against a vendor that answers after 100 ms")
    levels = [16, 64]
    counts = {16: r.n(800, 160), 64: r.n(3200, 640)}
    cap = float(r.n(30, 10))
    vendor = r.start_vendor("transports", DELAY)
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    first_load = os.getloadavg()[0]
    try:
        for c in levels:
            ideal = c / DELAY
            for candidate in CANDIDATES:
                load = os.getloadavg()[0]
                m = one(candidate, vendor, c, counts[c], cap) | {"load_average_before": load}
                raw.append(m)
                label = candidate + (" (its own client)" if candidate == "httpx2-client" else "")
                if "missing" in m or "failed" in m:
                    why = f"not installed ({m['missing']})" if "missing" in m else f"failed: {m['failed']}"
                    rows.append([label, "", c, "", why, "", f"{ideal:.0f}", "", "", "", "", "", "", ""])
                    r.report.add("transports", f"{label}: calls/s vs ideal, {c} conn", why)
                    if "failed" in m:
                        r.report.note(f"transports {candidate} at {c} connections failed: {m['failed']}")
                    continue
                ratio = m["rps"] / ideal
                m["ideal"], m["ratio"] = ideal, ratio
                other = {k: v for k, v in m["outcomes"].items() if k != "201"}
                rows.append(
                    [
                        label,
                        m["packages"],
                        c,
                        m["sent"],
                        " ".join(f"{k}x{v}" for k, v in sorted(other.items())) or "ok",
                        f"{m['rps']:.0f}",
                        f"{ideal:.0f}",
                        f"{ratio:.2f}",
                        ms(m["p50"]),
                        ms(m["p99"]),
                        f"{m['cpu_ms']:.2f}",
                        f"{m['vendor_cpu_ms']:.2f}",
                        sum(m["retries"].values()),
                        m["vendor_new_connections"],
                    ]
                )
                if m["capped"]:
                    r.report.note(
                        f"transports {candidate} at {c} connections hit the {cap:g} s cap after {m['sent']} calls "
                        "(the rate is still over the whole measured run)"
                    )
                r.report.add(
                    "transports",
                    f"{label}: calls/s vs ideal, {c} conn",
                    f"{ratio:.2f} ({m['rps']:.0f}/{ideal:.0f} calls/s, {m['cpu_ms']:.2f} ms CPU/call)",
                    ">= 0.8" if c == 64 else "",
                    ratio >= 0.8 if c == 64 else None,
                )
    finally:
        r.stop(vendor)
    print(
        table(
            [
                "transport",
                "packages",
                "conn",
                "calls",
                "status",
                "calls/s",
                "ideal",
                "ratio",
                "p50 ms",
                "p99 ms",
                "CPU ms/call",
                "vendor CPU ms/call",
                "retries",
                "new vendor conns",
            ],
            rows,
        ),
        flush=True,
    )
    print(
        "(ideal = connections / 0.1 s; CPU = the client process's, per call, measured part only; 'new vendor "
        "conns' = TCP connections the vendor saw opened during the measured run, warm-up excluded; "
        f"{os.cpu_count()} cores, 1-minute load average {first_load:.2f} before the first run)"
    )
    r.report.raw["transports"] = raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.transports", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("candidate", choices=CANDIDATES)
    parser.add_argument("--url", required=True, help="the fake vendor (python -m bench.servers vendor)")
    parser.add_argument("--vendor-pid", type=int, help="its process, for its CPU time")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--count", type=int, default=3200, help="calls in the measured part")
    parser.add_argument("--warmup", type=int, default=128, help="calls before it, not measured")
    parser.add_argument("--cap", type=float, default=30.0, help="seconds the measured part may take at most")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(measure(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
