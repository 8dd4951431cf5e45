"""How the bridge is served: uvicorn's settings, and an HTTP protocol that sheds abusive connections.

uvicorn with httptools caps nothing by itself: httptools buffers a header of any
size, a client may take forever to send its headers or its body, and idle sockets
are held until the process runs out of file descriptors. :class:`LimitedHttpTools`
is uvicorn's own httptools protocol with the ``[server]`` limits added where the
bytes arrive:

- the request line and headers may take ``max_header_bytes``, else 431;
- they must arrive within ``header_timeout_seconds`` of the connection (or of the
  first byte of a keep-alive request), else 408 (an idle socket is just closed);
- each body byte must follow the last within ``body_timeout_seconds``, else 408;
- at most ``max_connections`` sockets are held: a new one evicts the connection
  idle the longest (no request in the app), or is answered 503 if every one is busy.

It also sends a response's head and first body bytes in one write (:class:`HeadWithBody`).

``uvicorn_settings`` is the one place that turns a :class:`ServerConfig` into
``uvicorn.run`` arguments, for ``serve`` and for the benchmarks.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import resource
import time
from asyncio import TimerHandle, Transport
from html import escape
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from bridge.config import ServerConfig

log = logging.getLogger(__name__)

# files the process needs besides client sockets: database, vendor and Pipedrive connections, logs
RESERVED_FILES = 128


class HeadWithBody:
    """One response's view of the connection: its status line and headers go out with its first body bytes.

    uvicorn writes a response's head and its body separately: two ``send`` calls, two
    TCP segments, two wake-ups of the client, for the usual one-chunk answer (measured:
    the two writes were a fifth of the bridge's CPU samples at one connection). The head
    is held until the next write, and never past the current pass of the event loop, so
    a streamed body's head is not kept waiting for its first chunk.
    """

    __slots__ = ("_cycle", "_head", "_loop", "_transport")

    def __init__(self, cycle: Any, transport: Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._cycle = cycle
        self._transport = transport
        self._loop = loop  # the connection's (``get_running_loop`` per answer is a system call on 3.11)
        self._head: bytes | None = None  # held; b"": already sent

    def write(self, data: bytes) -> None:
        head = self._head
        if head is None and self._cycle.response_started:  # uvicorn's first write once started: the head
            self._head = data
            self._loop.call_soon(self.flush)
            return
        if head:
            self._head = b""
            data = head + data
        self._transport.write(data)

    def flush(self) -> None:
        """Send a head still held (a response with no body bytes, or one whose body comes later)."""
        head = self._head
        if head:
            self._head = b""
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class LimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header-size cap, header and body timeouts, a connection cap, and
    each response's head sent with its body."""

    limits: ClassVar[ServerConfig] = ServerConfig()
    max_connections: ClassVar[int] = ServerConfig().max_connections

    def connection_made(self, transport: Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_head = True  # waiting for a request line and headers
        self._head_bytes = 0
        self._in_body = False
        self._idle_since = time.monotonic()
        self._head_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._turned_away = len(self.connections) > self.max_connections and not self._evict_idle()
        if self._turned_away:
            # answered 503 at its first bytes (to pick JSON or HTML), or closed after a second of silence
            log.warning("connection refused: all %d connections are busy", self.max_connections)
            self._head_timer = self.loop.call_later(min(1.0, self.limits.header_timeout_seconds), self._turn_away)
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._turned_away:
            self.url = data.split(b" ", 2)[1] if data.count(b" ") >= 2 else b""
            self._turn_away()
            return
        if not self._in_head:
            self._feed(data)
            return
        self._arm_head_timer()
        allowed = self.limits.max_header_bytes - self._head_bytes
        self._head_bytes += len(data)
        if len(data) <= allowed:
            self._feed(data)
            return
        # feed no more than the cap allows; the rest only once the headers are complete
        self._feed(data[: max(allowed, 0)])
        if self._in_head and not self.transport.is_closing():
            self._refuse(431, f"the request line and headers exceed {self.limits.max_header_bytes} bytes")
        elif not self.transport.is_closing():
            self._feed(data[allowed:])

    def _feed(self, data: bytes) -> None:
        if data and not self.transport.is_closing():
            super().data_received(data)

    # parser callbacks

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._in_body = True
        self._cancel_timer("_head_timer")
        self._arm_body_timer()
        previous = self.cycle
        super().on_headers_complete()
        if self.cycle is not None and self.cycle is not previous:  # a new request's: its task has not started
            self.cycle.transport = HeadWithBody(self.cycle, self.transport, self.loop)  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        self._arm_body_timer()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._in_head = True
        self._cancel_timer("_body_timer")
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._idle_since = time.monotonic()
        super().on_response_complete()

    # timers

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_seconds, self._head_timed_out)

    def _arm_body_timer(self) -> None:
        self._cancel_timer("_body_timer")
        self._body_timer = self.loop.call_later(self.limits.body_timeout_seconds, self._body_timed_out)

    def _cancel_timer(self, name: str) -> None:
        timer = getattr(self, name)
        if timer is not None:
            timer.cancel()
            setattr(self, name, None)

    def _cancel_timers(self) -> None:
        self._cancel_timer("_head_timer")
        self._cancel_timer("_body_timer")

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._busy():  # a pipelined request waits for the one before it
            self._arm_head_timer()
        elif self._head_bytes:
            self._refuse(408, f"the request headers did not arrive within {self.limits.header_timeout_seconds:g}s")
        else:
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not self._in_body:
            return
        if self.flow.read_paused:  # the app has not read what it got yet: not the client's fault
            self._arm_body_timer()
            return
        log.warning("request body stalled for %gs: connection closed", self.limits.body_timeout_seconds)
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(408, f"the request body stalled for more than {self.limits.body_timeout_seconds:g}s")
        else:
            self.transport.close()

    # the connection cap

    def _busy(self) -> bool:
        """A request of this connection is in the app (its answer not yet complete)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _evict_idle(self) -> bool:
        """Close the connection idle the longest (no request in the app) to make room; False if none is."""
        idle = [c for c in self.connections if c is not self and isinstance(c, LimitedHttpTools) and not c._busy()]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._idle_since)
        oldest._cancel_timers()
        oldest.transport.close()
        self.connections.discard(oldest)
        return True

    def _turn_away(self) -> None:
        if not self.transport.is_closing():
            self._refuse(503, "the server is busy, try again shortly")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``message`` (JSON on the reverse API, HTML elsewhere) and close."""
        self._cancel_timers()
        path = (getattr(self, "url", b"") or b"").split(b"?", 1)[0]
        if path.startswith(b"/api/"):
            body = json.dumps({"success": False, "error": message}).encode()
            media_type = b"application/json"
        else:
            body = f"<!doctype html><title>{status}</title><p>{escape(message)}</p>\n".encode()
            media_type = b"text/html; charset=utf-8"
        head = [b"content-type: " + media_type, b"content-length: " + str(len(body)).encode(), b"connection: close"]
        if status == 503:
            head.append(b"retry-after: 1")
        self.transport.write(STATUS_LINE[status] + b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
        self.connections.discard(self)


def limited_protocol(server: ServerConfig, max_connections: int) -> type[LimitedHttpTools]:
    """A :class:`LimitedHttpTools` class bound to ``server``'s limits (uvicorn instantiates it per connection)."""
    return type("LimitedHttpTools", (LimitedHttpTools,), {"limits": server, "max_connections": max_connections})


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (so held sockets do not starve the process); the new soft one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20) if soft != resource.RLIM_INFINITY else soft
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_cap(server: ServerConfig, open_files: int) -> int:
    """``max_connections``, lowered (with a warning) so that sockets leave RESERVED_FILES descriptors free."""
    room = max(open_files - RESERVED_FILES, 1)
    if server.max_connections <= room:
        return server.max_connections
    log.warning(
        "[server] max_connections lowered from %d to %d: the open-files limit is %d (raise LimitNOFILE)",
        server.max_connections,
        room,
        open_files,
    )
    return room


def freeze_startup_heap() -> int:
    """Move every object alive now out of the cycle collector's reach; returns how many.

    What ``serve`` built before its first request (modules, the app, the plugins, the
    store's statements) lives as long as the process. Left to the collector, every full
    collection walked it all again: measured under load, a pause of 50–65 ms every
    second or two, which every request in flight waited for. Frozen, a collection walks
    only what requests have made since.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def uvicorn_settings(server: ServerConfig, *, max_connections: int | None = None) -> dict[str, Any]:
    """The ``uvicorn.run`` arguments (host and port aside) for ``server``'s limits."""
    return {
        "log_config": None,
        "access_log": False,
        "proxy_headers": True,
        "server_header": False,
        "http": limited_protocol(server, max_connections or server.max_connections),
        "timeout_keep_alive": server.keep_alive_timeout_seconds,
    }
