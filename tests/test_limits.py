"""Connection limits of a real ``serve``: header size, slow and idle clients, the connection cap, open files;
and the startup heap ``serve`` keeps from the cycle collector."""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from bridge.api.auth import basic_auth
from bridge.config import Config, parse_config
from bridge.errors import ConfigError
from bridge.serving import HeadWithBody
from bridge.testing import BridgeProcess, make_config, running, write_config_toml

START_SECONDS = 60
HEADER_BYTES = 4096
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
KEEP_ALIVE = 1.0
MAX_CONNECTIONS = 20
LIMITS = {
    "max_header_bytes": HEADER_BYTES,
    "header_timeout_seconds": HEADER_TIMEOUT,
    "body_timeout_seconds": BODY_TIMEOUT,
    "keep_alive_timeout_seconds": KEEP_ALIVE,
    "max_connections": MAX_CONNECTIONS,
}


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


def start(tmp_path: Path, config: Config, **limits: float) -> BridgeProcess:
    path = write_config_toml(tmp_path / "bridge.toml", config, {"server": {**LIMITS, **limits}})
    return BridgeProcess.serve(path, tmp_path / "bridge.log")


@pytest.fixture
def server(tmp_path: Path, config: Config) -> Iterator[BridgeProcess]:
    with running(start(tmp_path, config), "/healthz", START_SECONDS) as process:
        yield process


def connect(server: BridgeProcess, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or the socket's timeout passes)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError, TimeoutError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def healthz(server: BridgeProcess) -> int:
    return httpx.get(server.url + "/healthz", timeout=5).status_code


def seconds_until_closed(sock: socket.socket, trickle: bytes, every: float, bound: float = 15) -> float:
    """Send ``trickle`` every ``every`` seconds until the server closes the socket; the seconds that took."""
    began = time.monotonic()
    sock.settimeout(every)
    while time.monotonic() - began < bound:
        try:
            if trickle:
                sock.sendall(trickle)
            if sock.recv(65536) == b"":
                return time.monotonic() - began
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - began
    raise AssertionError(f"the server still held the connection after {bound}s")


# --- header size ------------------------------------------------------------------------


def test_a_header_over_the_cap_is_answered_431(server: BridgeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (2 * HEADER_BYTES) + b"\r\n\r\n")
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in answer.lower()
    assert healthz(server) == 200


def test_an_unfinished_header_over_the_cap_is_answered_431_on_the_reverse_api(server: BridgeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/v1/links/x/meetings HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (2 * HEADER_BYTES)
        )
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["success"] is False and str(HEADER_BYTES) in body["error"]


def test_huge_unfinished_headers_do_not_grow_the_server(server: BridgeProcess) -> None:
    before = rss_kib(server.process.pid)
    chunk = b"a" * (1 << 20)
    held = [connect(server) for _ in range(4)]
    try:
        for sock in held:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: ")
                for _ in range(16):  # 16 MiB, never finished
                    sock.sendall(chunk)
        time.sleep(0.5)
        grown = rss_kib(server.process.pid) - before  # measured while the clients still hold their sockets
    finally:
        for sock in held:
            sock.close()
    assert grown < 8 * 1024, f"the server grew by {grown} KiB"
    assert healthz(server) == 200


def test_a_body_larger_than_the_header_cap_still_arrives(server: BridgeProcess, config: Config) -> None:
    body = json.dumps({"topic": "x" * (3 * HEADER_BYTES), "start_time": "2026-12-01 10:00", "duration": 30})
    answer = httpx.post(
        server.url + "/api/v1/links/no-such-link/meetings",
        content=body,
        headers={
            "content-type": "application/json",
            **basic_auth(config.pipedrive.client_id, config.pipedrive.client_secret),
        },
        timeout=10,
    )
    assert answer.status_code == 404, answer.text


# --- slow and idle clients --------------------------------------------------------------


def test_a_client_trickling_headers_is_cut_off(server: BridgeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        took = seconds_until_closed(sock, b"X-Slow: 1\r\n", every=0.25)
    assert HEADER_TIMEOUT * 0.5 < took < HEADER_TIMEOUT * 3 + 1, took


def test_a_trickled_header_is_answered_408(server: BridgeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"<!doctype html>" in answer


def test_an_idle_socket_is_closed_within_the_header_timeout(server: BridgeProcess) -> None:
    with connect(server) as sock:
        took = seconds_until_closed(sock, b"", every=0.25)
    assert took < HEADER_TIMEOUT * 3 + 1, took


def test_a_client_trickling_its_body_is_cut_off(tmp_path: Path, config: Config) -> None:
    auth = basic_auth(config.pipedrive.client_id, config.pipedrive.client_secret)["Authorization"]
    with running(start(tmp_path, config, header_timeout_seconds=60), "/healthz", START_SECONDS) as server:
        with connect(server) as sock:
            sock.sendall(
                b"POST /api/v1/links/no-such-link/meetings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
                b"Authorization: " + auth.encode() + b"\r\n\r\n{"
            )
            took = seconds_until_closed(sock, b" ", every=BODY_TIMEOUT * 2)
        assert took < BODY_TIMEOUT * 2 * 3 + 1, took
        assert healthz(server) == 200
        # a client cut off (or gone) mid-body is no error of the bridge's: no traceback in its log
        log = server.log()
        assert "Traceback" not in log and "unhandled error" not in log, log[-2000:]


def test_an_idle_keep_alive_connection_is_closed(server: BridgeProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        took = seconds_until_closed(sock, b"", every=0.25)
    assert took < KEEP_ALIVE * 3 + 1, took


# --- one write per answer ---------------------------------------------------------------

_TCP_INFO_DATA_SEGS_IN = 152  # struct tcp_info: the u32 tcpi_data_segs_in (Linux 4.6 and later)


def data_segments_received(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if len(info) < _TCP_INFO_DATA_SEGS_IN + 4:
        pytest.skip("this kernel's TCP_INFO has no count of data segments")
    return int.from_bytes(info[_TCP_INFO_DATA_SEGS_IN : _TCP_INFO_DATA_SEGS_IN + 4], sys.byteorder)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts segments with Linux's TCP_INFO")
def test_an_answer_arrives_in_one_segment_head_and_body_together(server: BridgeProcess) -> None:
    """uvicorn writes the head and the body apart; served, they leave in one write (one segment here)."""
    with connect(server) as sock:
        for path in ("/healthz", "/no-such-page", "/healthz"):
            before = data_segments_received(sock)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            answer = b""
            while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _content_length(answer):
                answer += sock.recv(65536)
            assert data_segments_received(sock) - before == 1, (path, answer[:200])
    assert answer.startswith(b"HTTP/1.1 200 ")


class _Recorded:
    """A transport that records what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


@pytest.mark.anyio
async def test_a_head_waits_for_no_more_than_the_current_pass_of_the_loop() -> None:
    cycle, transport = SimpleNamespace(response_started=False), _Recorded()
    out = HeadWithBody(cycle, transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response starts: at once
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    cycle.response_started = True
    out.write(b"HEAD")
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]  # held ...
    await asyncio.sleep(0)
    assert transport.writes[1:] == [b"HEAD"]  # ... until the loop's next pass: a streamed body's head
    out.write(b"chunk 1")
    out.write(b"chunk 2")
    await asyncio.sleep(0)
    assert transport.writes[1:] == [b"HEAD", b"chunk 1", b"chunk 2"]


@pytest.mark.anyio
async def test_a_head_with_no_body_bytes_still_goes_out_before_a_close() -> None:
    transport = _Recorded()
    out = HeadWithBody(SimpleNamespace(response_started=True), transport, asyncio.get_running_loop())  # type: ignore[arg-type]
    out.write(b"HEAD")
    out.close()
    assert transport.writes == [b"HEAD"] and transport.closed
    await asyncio.sleep(0)
    assert transport.writes == [b"HEAD"]  # sent once


def _content_length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30  # not yet known: read on


# --- the connection cap -----------------------------------------------------------------


def test_idle_sockets_over_the_cap_leave_healthz_answering(server: BridgeProcess) -> None:
    # the server may hold 256 files: without a cap, 300 idle sockets would take every one
    resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (256, 256))
    idle = [connect(server) for _ in range(300)]
    try:
        for n in range(5):
            assert healthz(server) == 200, n
    finally:
        for sock in idle:
            sock.close()


def test_busy_connections_over_the_cap_are_refused_with_503(tmp_path: Path, config: Config) -> None:
    auth = basic_auth(config.pipedrive.client_id, config.pipedrive.client_secret)["Authorization"]
    limits = {"header_timeout_seconds": 60, "body_timeout_seconds": 60}
    with running(start(tmp_path, config, **limits), "/healthz", START_SECONDS) as server:
        busy = [connect(server) for _ in range(MAX_CONNECTIONS)]
        try:
            for sock in busy:  # requests the app is reading, their bodies unfinished
                sock.sendall(
                    b"POST /api/v1/links/no-such-link/meetings HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n"
                    b"Authorization: " + auth.encode() + b"\r\n\r\n{"
                )
            time.sleep(0.5)
            answer = httpx.post(server.url + "/api/v1/links/x/meetings", timeout=5)
            assert answer.status_code == 503
            assert answer.headers["retry-after"] == "1"
            assert answer.json() == {"success": False, "error": "the server is busy, try again shortly"}
            page = httpx.get(server.url + "/healthz", timeout=5)
            assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
        finally:
            for sock in busy:
                sock.close()
        deadline = time.monotonic() + 10
        while healthz(server) != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_serve_raises_its_open_files_limit(tmp_path: Path, config: Config) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard open-files limit above 256")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        process = start(tmp_path, config)  # it inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    with running(process, "/healthz", START_SECONDS):
        limits = Path(f"/proc/{process.process.pid}/limits").read_text()
    row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert row.split()[3:5] == [str(hard), str(hard)], row


def test_bad_limits_are_config_problems() -> None:
    raw = {"server": {"max_header_bytes": 100, "header_timeout_seconds": 0, "max_connections": "many"}}
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, {})
    problems = caught.value.problems
    assert any(
        p.startswith("[server] max_header_bytes: must be a whole number of bytes, at least 1024") for p in problems
    )
    assert any(p.startswith("[server] header_timeout_seconds: must be a positive number") for p in problems)
    assert any(p.startswith("[server] max_connections: must be a positive integer") for p in problems)


def test_what_serve_built_before_its_first_request_is_kept_from_the_cycle_collector() -> None:
    """``freeze_startup_heap`` (called by ``serve`` once the app is built): a full collection then walks
    only what was made after it, instead of every module, plugin and statement of the process."""
    script = (
        "import gc, json\n"
        "from bridge.app import create_app\n"
        "from bridge.config import Config\n"
        "from bridge.serving import freeze_startup_heap\n"
        "app = create_app(Config())\n"
        "before = len(gc.get_objects())\n"
        "frozen = freeze_startup_heap()\n"
        "print(json.dumps({'before': before, 'frozen': frozen, 'walked': len(gc.get_objects())}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout)
    assert seen["frozen"] >= seen["before"] * 0.9 > 10_000
    assert seen["walked"] < 1_000
