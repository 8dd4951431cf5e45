"""The vendor client's sockets (``bridge.vendors.network.AsyncioBackend``), on real loopback sockets.

Every failure a vendor can put on the wire is played by a small TCP server, and the
same call is made through httpx with httpcore's own anyio backend and with ours: both
must end the same way (the same answer, or the same httpx error), since the retry
policy decides on the error's class. Each runs on asyncio's own loop and on uvloop's,
which ``serve`` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.vendors import network
from bridge.vendors.http import PooledTransport
from bridge.vendors.network import asyncio_transport

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
with contextlib.suppress(ImportError):  # uvloop is installed wherever it builds (not on Windows)
    import uvloop

    LOOPS["uvloop"] = uvloop.new_event_loop
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


def run(loop: str, main: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(main())  # type: ignore[arg-type]


class Vendor:
    """A TCP server on loopback playing ``handler`` for each connection; counts connections."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Vendor:
        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connection, "127.0.0.1", 0, ssl=self.ssl_context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    def url(self, path: str = "/rooms", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        await read_request(reader)
        writer.write(ANSWER)
        await writer.drain()


async def closes_before_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)


async def resets_before_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST


async def never_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    await asyncio.sleep(10)


async def half_a_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
    await writer.drain()


async def big_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    body = bytes(range(256)) * 8192  # 2 MiB: the reader pauses the socket and resumes it
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()


async def reads_nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(10)


async def answers_then_closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request(reader)
    writer.write(ANSWER)  # keep-alive as far as the client knows, then the vendor drops the idle connection
    await writer.drain()


def anyio_transport() -> httpx.AsyncHTTPTransport:
    return httpx.AsyncHTTPTransport()


def bridge_transport() -> PooledTransport:
    return PooledTransport(max_connections=8, pools=1)


TRANSPORTS = {"anyio": anyio_transport, "asyncio": bridge_transport}


async def outcome(
    transport: httpx.AsyncBaseTransport, url: str, *, timeout: httpx.Timeout, content: bytes = b"{}"
) -> tuple[str, bytes]:
    """What one POST ends with: ("200", the body) or (the httpx error's class name, b"")."""
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
        try:
            response = await client.post(url, content=content)
        except httpx.HTTPError as exc:
            return type(exc).__name__, b""
        return str(response.status_code), response.content


SCENARIOS: dict[str, tuple[Handler | None, str]] = {
    "answers": (answers, "200"),
    "refused": (None, "ConnectError"),
    "closes before answering": (closes_before_answering, "RemoteProtocolError"),
    "resets before answering": (resets_before_answering, "ReadError"),
    "never answers": (never_answers, "ReadTimeout"),
    "half a body": (half_a_body, "RemoteProtocolError"),
    "a 2 MiB body": (big_body, "200"),
}


def refused_url() -> str:
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/rooms"


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_way_a_call_ends_is_the_same_as_on_httpcores_own_backend(scenario: str, loop: str) -> None:
    handler, expected = SCENARIOS[scenario]

    async def main() -> dict[str, tuple[str, bytes]]:
        timeout = httpx.Timeout(5.0, read=0.3)
        seen = {}
        for name, make in TRANSPORTS.items():
            if handler is None:
                seen[name] = await outcome(make(), refused_url(), timeout=timeout)
                continue
            async with Vendor(handler) as vendor:
                seen[name] = await outcome(make(), vendor.url(), timeout=timeout)
        return seen

    seen = run(loop, main)
    assert seen["asyncio"][0] == expected, seen["asyncio"][0]
    assert seen["asyncio"] == seen["anyio"]
    if scenario == "answers":
        assert seen["asyncio"][1] == b"hello"
    if scenario == "a 2 MiB body":
        assert seen["asyncio"][1] == bytes(range(256)) * 8192


@pytest.mark.parametrize("loop", LOOPS)
def test_a_vendor_that_reads_nothing_gives_the_same_write_timeout(loop: str) -> None:
    big = b"x" * (32 * 1024 * 1024)  # more than the sockets' buffers hold

    async def main() -> dict[str, tuple[str, bytes]]:
        seen = {}
        for name, make in TRANSPORTS.items():
            async with Vendor(reads_nothing) as vendor:
                seen[name] = await outcome(make(), vendor.url(), timeout=httpx.Timeout(5.0, write=0.3), content=big)
        return seen

    seen = run(loop, main)
    assert seen["asyncio"] == seen["anyio"] == ("WriteTimeout", b"")


@pytest.mark.parametrize("loop", LOOPS)
def test_calls_share_one_connection_and_one_the_vendor_closed_while_idle_is_not_used_again(loop: str) -> None:
    async def main() -> tuple[list[str], int, list[str], int]:
        transport = bridge_transport()
        async with httpx.AsyncClient(transport=transport, timeout=5.0) as client:
            async with Vendor(answers) as kept:
                statuses = [str((await client.post(kept.url(), content=b"{}")).status_code) for _ in range(5)]
            async with Vendor(answers_then_closes) as dropping:
                again = []
                for _ in range(3):
                    again.append(str((await client.post(dropping.url(), content=b"{}")).status_code))
                    await asyncio.sleep(0.05)  # the vendor's close arrives while the connection sits idle
        return statuses, kept.connections, again, dropping.connections

    statuses, kept, again, dropping = run(loop, main)
    assert statuses == ["200"] * 5 and kept == 1
    assert again == ["200"] * 3 and dropping == 3  # each closed connection noticed without a failed call


@pytest.mark.parametrize("loop", LOOPS)
def test_a_cancelled_call_leaves_the_client_usable(loop: str) -> None:
    async def main() -> tuple[bool, str]:
        async with httpx.AsyncClient(transport=bridge_transport(), timeout=5.0) as client:
            async with Vendor(never_answers) as silent:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await client.post(silent.url(), content=b"{}")
            async with Vendor(answers) as vendor:
                response = await client.post(vendor.url(), content=b"{}")
        return True, str(response.status_code)

    assert run(loop, main) == (True, "200")


@contextmanager
def tls_contexts(tmp_path: Path) -> Iterator[tuple[ssl.SSLContext, ssl.SSLContext]]:
    """A server context for 127.0.0.1 signed by a new CA, and a client context that trusts that CA."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test vendor CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "vendor.pem", tmp_path / "vendor.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    yield server, client


def tls_transport(verify: ssl.SSLContext | bool, backend: str) -> httpx.AsyncHTTPTransport:
    """httpx's transport trusting ``verify``, on httpcore's backend or on ours (as the bridge builds it)."""
    if backend == "anyio":
        return httpx.AsyncHTTPTransport(verify=verify)
    return asyncio_transport(httpx.Limits(), verify=verify)


@pytest.mark.parametrize("loop", LOOPS)
def test_tls_is_verified_and_refused_alike(loop: str, tmp_path: Path) -> None:
    with tls_contexts(tmp_path) as (server_context, client_context):

        async def main() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            async with Vendor(answers, ssl_context=server_context) as vendor:
                url = vendor.url(scheme="https")
                timeout = httpx.Timeout(5.0)
                for backend in ("anyio", "asyncio"):
                    trusting, default = tls_transport(client_context, backend), tls_transport(True, backend)
                    seen[backend, "trusted"] = await outcome(trusting, url, timeout=timeout)
                    seen[backend, "untrusted"] = await outcome(default, url, timeout=timeout)
                async with httpx.AsyncClient(transport=tls_transport(client_context, "asyncio")) as client:
                    response = await client.get(url)
                    stream = response.extensions["network_stream"]
                    seen["version"] = stream.get_extra_info("ssl_object").version()
                    seen["peer"] = stream.get_extra_info("server_addr")
            return seen

        seen = run(loop, main)
    assert seen["asyncio", "trusted"] == seen["anyio", "trusted"] == ("200", b"hello")
    assert seen["asyncio", "untrusted"] == seen["anyio", "untrusted"] == ("ConnectError", b"")
    assert seen["version"] in ("TLSv1.2", "TLSv1.3")
    assert tuple(seen["peer"][:2]) == ("127.0.0.1", seen["peer"][1])


# --- several addresses for one host (RFC 8305) ---------------------------------------------


class FakeTransport:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def attempt(log: list[str], name: str, *, after: float, fails: bool = False) -> Callable[[], Awaitable[Any]]:
    async def connect() -> Any:
        log.append(f"start {name}")
        await asyncio.sleep(after)
        if fails:
            raise ConnectionRefusedError(f"{name} refused")
        return FakeTransport(name), None

    return connect


def test_a_silent_address_gets_company_after_a_quarter_second_and_the_first_to_connect_wins() -> None:
    async def main() -> tuple[str, float, list[str]]:
        log: list[str] = []
        started = time.perf_counter()
        transport, _ = await network._race(
            asyncio.get_running_loop(), [attempt(log, "v6", after=30), attempt(log, "v4", after=0.01)]
        )
        return transport.name, time.perf_counter() - started, log

    name, took, log = asyncio.run(main())
    assert name == "v4" and log == ["start v6", "start v4"]
    assert 0.25 <= took < 1.0


def test_a_refused_address_is_followed_at_once_and_all_refused_is_one_error_naming_each() -> None:
    async def main() -> tuple[str, float]:
        log: list[str] = []
        started = time.perf_counter()
        transport, _ = await network._race(
            asyncio.get_running_loop(), [attempt(log, "v6", after=0, fails=True), attempt(log, "v4", after=0)]
        )
        return transport.name, time.perf_counter() - started

    name, took = asyncio.run(main())
    assert name == "v4" and took < 0.2

    async def none() -> None:
        await network._race(
            asyncio.get_running_loop(),
            [attempt([], "v6", after=0, fails=True), attempt([], "v4", after=0.01, fails=True)],
        )

    with pytest.raises(OSError, match=r"v6 refused.*v4 refused"):
        asyncio.run(none())


def test_a_connection_made_after_the_winner_is_closed() -> None:
    late = FakeTransport("late")

    async def main() -> str:
        async def slow() -> Any:
            with contextlib.suppress(asyncio.CancelledError):  # connected anyway as it was cancelled
                await asyncio.sleep(30)
            return late, None

        transport, _ = await network._race(asyncio.get_running_loop(), [slow, attempt([], "v4", after=0.01)])
        return str(transport.name)

    assert asyncio.run(main()) == "v4"
    assert late.closed


def test_addresses_alternate_families_from_the_resolvers_first() -> None:
    v6, v4 = socket.AF_INET6, socket.AF_INET
    given = [(v6, "a"), (v6, "b"), (v6, "c"), (v4, "1"), (v4, "2")]
    assert network._interleaved(given) == [(v6, "a"), (v4, "1"), (v6, "b"), (v4, "2"), (v6, "c")]
    assert network._interleaved([(v4, "1")]) == [(v4, "1")]


def test_a_host_with_a_refused_ipv6_address_is_reached_over_ipv4_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    resolve = socket.getaddrinfo

    async def main() -> tuple[str, float]:
        async with Vendor(answers) as vendor:  # listens on 127.0.0.1 only: ::1 is refused (or has no route)
            port = vendor.port

            def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
                if host != "vendor.test":
                    return resolve(host, *args, **kwargs)
                stream = socket.SOCK_STREAM
                return [
                    (socket.AF_INET6, stream, 6, "", ("::1", port, 0, 0)),
                    (socket.AF_INET, stream, 6, "", ("127.0.0.1", port)),
                ]

            monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)  # asyncio's loop resolves through it
            started = time.perf_counter()
            url = f"http://vendor.test:{port}/rooms"
            status, _ = await outcome(bridge_transport(), url, timeout=httpx.Timeout(5.0))
            return status, time.perf_counter() - started

    status, took = asyncio.run(main())
    assert status == "200"
    assert took < 0.25  # the refused address did not hold the next one back


def test_connecting_past_the_timeout_is_a_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def hangs(*args: Any) -> Any:
        await asyncio.sleep(30)

    monkeypatch.setattr(network, "_connect", hangs)

    async def main() -> str:
        url, timeout = "http://vendor.example/rooms", httpx.Timeout(5.0, connect=0.1)
        return (await outcome(bridge_transport(), url, timeout=timeout))[0]

    assert asyncio.run(main()) == "ConnectTimeout"
