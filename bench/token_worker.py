"""One process of the token-upkeep benchmark: many concurrent token look-ups for one link.

    python -m bench.token_worker --kind pipedrive|zoom --config FILE --link ID --calls N --burst B
                                 --t0 EPOCH --duration SECONDS

The bridge is opened exactly as the service opens it (``open_bridge``: store,
Pipedrive client, PipedriveTokens, backends built from the config). All ``N`` calls
are started at once as tasks: ``B`` of them call at ``t0`` together, the others
at evenly spaced moments until ``t0 + duration``. Each call is

- ``pipedrive``: ``PipedriveTokens.fresh_tokens(link)``, the link's Pipedrive tokens;
- ``zoom``: the Zoom backend's ``tokens.access_token(ctx)``, the company's
  Server-to-Server token kept in ``ctx.shared``.

Two such processes share one PostgreSQL database and one fake token server.
Prints one JSON object: the tokens this process was handed and how long calls took.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from bridge.api.vendor_calls import backend_context
    from bridge.config import load_config
    from bridge.logs import configure_logging
    from bridge.runtime import open_bridge

    config = load_config(args.config)
    configure_logging("WARNING", "text", config.secret_values())
    spread = args.calls - args.burst
    moments = [args.t0] * args.burst + [args.t0 + args.duration * i / max(1, spread - 1) for i in range(spread)]
    tokens: Counter[str] = Counter()
    first_seen: dict[str, float] = {}
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    last_end = 0.0

    async with open_bridge(config) as bridge:
        if args.kind == "pipedrive":

            async def get_token() -> str:
                return (await bridge.tokens.fresh_tokens(args.link)).access_token
        else:
            link = await bridge.store.get_link(args.link)
            assert link is not None, "the link is missing"
            backend = bridge.backends.get("zoom")
            ctx = backend_context(bridge, link, "zoom")

            async def get_token() -> str:
                return await backend.tokens.access_token(ctx)  # type: ignore[attr-defined, no-any-return]

        async def call(at: float) -> None:
            nonlocal last_end
            await asyncio.sleep(max(0.0, at - time.time()))
            started = time.time()
            try:
                token = await get_token()
            except Exception as exc:  # counted, not raised: the bench reports it
                errors[f"{exc.__class__.__name__}: {exc}"[:300]] += 1
                return
            ended = time.time()
            last_end = max(last_end, ended)
            latencies.append(ended - started)
            tokens[token] += 1
            first_seen.setdefault(token, started)

        tasks = [asyncio.create_task(call(at)) for at in moments]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.t0 + args.duration + 120 - time.time())
        refreshes = bridge.tokens.refreshes if args.kind == "pipedrive" else None

    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    return {
        "calls": len(moments),
        "ok": len(latencies),
        "errors": dict(errors),
        "refreshes": refreshes,
        "tokens": {t: {"calls": n, "first_seen": first_seen[t]} for t, n in tokens.items()},
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "last_end": last_end,
        "peak_rss_kb": _peak_rss_kb(),
    }


def _peak_rss_kb() -> int | None:
    """This process's peak resident set (VmHWM), in kB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["pipedrive", "zoom"], required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--link", required=True)
    parser.add_argument("--calls", type=int, required=True)
    parser.add_argument("--burst", type=int, default=0)
    parser.add_argument("--t0", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
