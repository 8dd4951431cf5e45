"""The server processes the benchmarks start (one per process, on loopback, under uvicorn).

    python -m bench.servers bare   --port N                 a bare Starlette endpoint answering postMeeting's JSON,
                                                            and a bare join link redirecting to a fixed room
    python -m bench.servers vendor --port N [--delay 0.1]   a fake video vendor that answers after ``delay`` seconds
    python -m bench.servers bridge --config FILE --port N   the bridge exactly as ``pipedrive-video-bridge serve``
                                                            runs it, plus the bench's slow-vendor plugin

The bridge itself is usually started with ``python -m bridge.cli --config FILE serve --port N``;
the ``bridge`` runner here only exists because a plugin object has to be handed to it: it
runs ``bridge.cli.serve``, as ``serve`` does (the same start-up check, uvicorn settings and
heap frozen before the first request). Every other server uses the same uvicorn settings.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from bridge.config import ServerConfig
from bridge.serving import uvicorn_settings

HOST = "127.0.0.1"
# the settings bridge.cli.cmd_serve passes to uvicorn.run (host and port aside), with the default limits
UVICORN_SETTINGS: Mapping[str, Any] = uvicorn_settings(ServerConfig())

# the shape of a postMeeting answer (a Jitsi room), so both sides send the same bytes
BARE_ANSWER = {
    "success": True,
    "data": {
        "meeting_id": "x" * 24,
        "join_url": "https://meet.jit.si/" + "a" * 26,
        "invitation": "Ada is inviting you to a video meeting.\n\nTopic: Bench 1\nTime: Tuesday, 01 December 2026, "
        "14:00 UTC (30 minutes)\n\nJoin: https://meet.jit.si/" + "a" * 26,
    },
}


def bare_app() -> Starlette:
    async def post_meeting(_request: Request) -> Response:
        return JSONResponse(BARE_ANSWER, status_code=201)

    async def join(_request: Request) -> Response:
        return RedirectResponse(BARE_ANSWER["data"]["join_url"], status_code=303)  # type: ignore[index]

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/api/v1/links/{link_id}/meetings", post_meeting, methods=["POST"]),
            Route("/j/{token}", join, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def vendor_app(delay: float) -> Starlette:
    """A vendor API: ``POST /rooms`` answers 201 with a room after ``delay`` seconds; ``/stats`` counts."""
    stats: dict[str, Any] = {"requests": 0, "connections": set()}

    async def rooms(request: Request) -> Response:
        body = await request.json()
        stats["requests"] += 1
        if request.client:
            stats["connections"].add((request.client.host, request.client.port))
        await asyncio.sleep(delay)
        n = stats["requests"]
        return JSONResponse(
            {"id": f"room-{n}", "url": f"https://video.example.test/room-{n}", "title": body.get("title", "")},
            status_code=201,
        )

    async def stats_view(_request: Request) -> Response:
        return JSONResponse({"requests": stats["requests"], "connections": len(stats["connections"])})

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/rooms", rooms, methods=["POST"]),
            Route("/stats", stats_view, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def serve_bridge_with_plugin(config_path: Path, port: int) -> int:
    """``pipedrive-video-bridge serve`` with the bench's slow-vendor plugin registered next to the installed ones."""
    from bench import slow_backend
    from bridge.cli import serve
    from bridge.config import load_config

    return serve(load_config(config_path), HOST, port, [slow_backend])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["bare", "vendor", "bridge"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--config", type=Path)
    args = parser.parse_args(argv)
    if args.kind == "bare":
        uvicorn.run(bare_app(), host=HOST, port=args.port, **UVICORN_SETTINGS)
    elif args.kind == "vendor":
        uvicorn.run(vendor_app(args.delay), host=HOST, port=args.port, **UVICORN_SETTINGS)
    else:
        if args.config is None:
            parser.error("bridge needs --config")
        return serve_bridge_with_plugin(args.config, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
