"""The vendor client's sockets on plain asyncio: an httpcore network backend without anyio's streams.

httpcore reaches the network through a *network backend* (``httpcore.AsyncNetworkBackend``,
part of its public API: ``AsyncConnectionPool(network_backend=...)``). The one it picks on
asyncio wraps anyio's socket streams, which cost a vendor call more than the call itself
needs: every read and write enters a cancel scope (``anyio.fail_after``) and yields to the
event loop once more before it starts, and the pool asks each idle connection whether its
socket is readable with a ``poll`` system call every time it hands out or takes back a
connection. Under a slow vendor at 64 calls in flight that was about an eighth of the
bridge's event loop.

``AsyncioBackend`` does the same work on an ``asyncio.Protocol``: a read waits on one future
with one timer for its timeout, a write waits only while the socket's buffer is full (and a
request's head and body, which httpcore writes one after the other, leave in one send), and a
connection knows it is readable (data or the end of the stream came in while it sat idle)
from what its protocol was handed, with no system call. It raises exactly the httpcore
errors the anyio backend raises for the same failures (``ConnectError``, ``ConnectTimeout``,
``ReadError``, ``ReadTimeout``, ``WriteError``, ``WriteTimeout``), so httpx maps them to the
same ``httpx`` errors and the retry policy (``bridge.vendors.http``) sees what it saw before.
A host with several addresses is tried as anyio tries it: IPv6 and IPv4 in turn, the next
attempt started when the one before has not connected within 0.25 s (RFC 8305).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore
import httpx

_READ_HIGH_WATER = 256 * 1024  # stop reading from the socket while this much is waiting to be read
_HAPPY_EYEBALLS_DELAY = 0.25
_COALESCE_LIMIT = 64 * 1024  # written bytes held back for one send at most

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]


class _Protocol(asyncio.Protocol):
    """One connection's incoming bytes, end of stream and write pressure, for ``AsyncioStream``.

    It keeps one waiter: HTTP/1.1, the only protocol the pools speak, writes a request and
    then reads its answer, so a read and a write never wait on one connection at once.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused_reading = False
        self.paused_writing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_HIGH_WATER and not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake()

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float | None, error: type[Exception]) -> None:
        """Until bytes, the end, a lost connection or room to write comes; ``error`` after ``timeout`` s."""
        waiter = self.loop.create_future()
        self.waiter = waiter
        timer = None if timeout is None else self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            raise error("timed out") from None
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def take(self, max_bytes: int) -> bytes:
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self.paused_reading and len(self.buffer) <= _READ_HIGH_WATER // 4 and self.transport is not None:
            self.paused_reading = False
            self.transport.resume_reading()
        return data


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection (plain or TLS) as httpcore sees it."""

    def __init__(self, protocol: _Protocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport
        self._closed = False
        self._pending: list[bytes] = []  # written, not yet handed to the socket (see write)
        self._pending_size = 0
        self._flush_soon: asyncio.Handle | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if self._closed:
            raise httpcore.ReadError("the connection is closed")
        if self._pending:
            self._flush()
        if not protocol.buffer and not protocol.eof and not protocol.lost:
            await protocol.wait(timeout, httpcore.ReadTimeout)
        if protocol.buffer:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
        return b""  # the vendor closed its end: httpcore decides what an early end means

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if self._closed or protocol.lost or self._transport.is_closing():
            raise httpcore.WriteError(str(protocol.error) if protocol.error else "the connection is closed")
        # httpcore writes a request's head and its body separately; both go out in one send when the
        # body follows within this pass of the event loop (it does: the response is read right after)
        self._pending.append(buffer)
        self._pending_size += len(buffer)
        if self._pending_size >= _COALESCE_LIMIT:
            self._flush()
        elif self._flush_soon is None:
            self._flush_soon = protocol.loop.call_soon(self._flush)
        while protocol.paused_writing and not protocol.lost:
            await protocol.wait(timeout, httpcore.WriteTimeout)
        if protocol.lost:
            raise httpcore.WriteError(str(protocol.error) if protocol.error else "the connection was closed")

    async def aclose(self) -> None:
        if not self._closed:
            self._flush()
            self._closed = True
            self._transport.close()

    def _flush(self) -> None:
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        if self._pending and not self._transport.is_closing():
            self._transport.write(self._pending[0] if len(self._pending) == 1 else b"".join(self._pending))
        self._pending.clear()
        self._pending_size = 0

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = self._protocol.loop
        self._flush()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            await self.aclose()
            raise httpcore.ConnectTimeout("timed out during the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:  # ssl.SSLError is an OSError; said for the reader
            await self.aclose()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        except BaseException:
            await self.aclose()
            raise
        if transport is None:  # the connection went away during the handshake
            await self.aclose()
            raise httpcore.ConnectError("the connection was closed during the TLS handshake")
        self._protocol.transport = transport
        return AsyncioStream(self._protocol, transport)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle connection that was sent bytes or closed by the vendor
            protocol = self._protocol
            return bool(protocol.buffer) or protocol.eof or protocol.lost
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on the running asyncio loop (uvloop's included)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await _connect(loop, host, port, local_address)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return _stream(transport, protocol, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[SocketOption] | None = None
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(lambda: _Protocol(loop), path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {path}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return _stream(transport, protocol, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _stream(
    transport: asyncio.BaseTransport, protocol: _Protocol, socket_options: Iterable[SocketOption] | None
) -> AsyncioStream:
    stream = AsyncioStream(protocol, cast(asyncio.Transport, transport))
    if socket_options:
        sock = transport.get_extra_info("socket")
        for option in socket_options:
            sock.setsockopt(*option)
    return stream


async def _connect(
    loop: asyncio.AbstractEventLoop, host: str, port: int, local_address: str | None
) -> tuple[asyncio.BaseTransport, _Protocol]:
    """A TCP connection to the first of ``host``'s addresses that answers, the next tried every 0.25 s."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise OSError(f"no address for {host}")
    addresses = _interleaved([(family, address) for family, _, _, _, address in infos])

    async def attempt(family: int, address: Any) -> tuple[asyncio.BaseTransport, _Protocol]:
        local = (local_address, 0) if local_address else None
        return await loop.create_connection(
            lambda: _Protocol(loop), host=address[0], port=address[1], family=family, local_addr=local
        )

    if len(addresses) == 1:
        return await attempt(*addresses[0])
    return await _race(loop, [(lambda f=family, a=address: attempt(f, a)) for family, address in addresses])


def _interleaved(addresses: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """The resolver's order, alternating families from the first one's (RFC 8305, section 4)."""
    first = addresses[0][0]
    ours = [a for a in addresses if a[0] == first]
    others = [a for a in addresses if a[0] != first]
    mixed: list[tuple[int, Any]] = []
    for i in range(max(len(ours), len(others))):
        mixed.extend(group[i] for group in (ours, others) if i < len(group))
    return mixed


async def _race(loop: asyncio.AbstractEventLoop, attempts: list[Any]) -> tuple[asyncio.BaseTransport, _Protocol]:
    """Start the attempts 0.25 s apart (at once when one fails); the first connection wins, the rest are closed."""
    pending: set[asyncio.Task[tuple[asyncio.BaseTransport, _Protocol]]] = set()
    errors: list[OSError] = []
    winner: tuple[asyncio.BaseTransport, _Protocol] | None = None
    queue = list(attempts)
    try:
        while winner is None and (queue or pending):
            if queue:
                pending.add(loop.create_task(queue.pop(0)()))
            done, pending = await asyncio.wait(
                pending, timeout=_HAPPY_EYEBALLS_DELAY if queue else None, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                exc = task.exception()
                if exc is None and winner is None:
                    winner = task.result()
                elif exc is None:
                    task.result()[0].close()
                elif isinstance(exc, OSError):
                    errors.append(exc)
                else:
                    raise exc
    finally:
        for task in pending:
            task.cancel()
        if pending:
            for task in (await asyncio.wait(pending))[0]:
                if not task.cancelled() and task.exception() is None:
                    task.result()[0].close()
    if winner is None:
        raise OSError(f"could not connect to any address ({'; '.join(str(e) for e in errors)})")
    return winner


def asyncio_transport(limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> httpx.AsyncHTTPTransport:
    """httpx's transport as shipped (its errors, its response streams), its pool's sockets on ``AsyncioBackend``.

    httpx builds its httpcore pool itself and takes no network backend, so the pool it
    built is replaced by one with the same settings (and the same TLS context) on ours.
    """
    transport = httpx.AsyncHTTPTransport(limits=limits, verify=verify)
    built = transport._pool
    if not isinstance(built, httpcore.AsyncConnectionPool):  # pragma: no cover - httpx changed its insides
        raise TypeError(f"httpx's transport holds a {type(built).__name__}, not an httpcore connection pool")
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=built._ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )
    return transport
