"""Processes and config files for tests and benchmarks: free ports, TOML files, a bridge server, workers.

The core's tests and ``bench/`` both start real servers on loopback; this is the
one place that knows how.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bridge.config import Config


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    """``value`` (a bool, number, string or list of them) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def toml_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """TOML text with one table per section (a dotted name such as ``backends.zoom`` is a sub-table)."""
    lines = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def write_toml(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``toml_text(sections)`` to ``path``; returns ``path``."""
    path.write_text(toml_text(sections), encoding="utf-8")
    return path


def config_sections(config: Config, *, pipedrive_urls: bool = False) -> dict[str, dict[str, Any]]:
    """The parts of ``config`` a subprocess needs to share its database: the Pipedrive client, database, vault keys.

    ``pipedrive_urls`` adds ``oauth_base`` and ``api_base`` (a fake Pipedrive's).
    """
    pipedrive: dict[str, Any] = {
        "client_id": config.pipedrive.client_id,
        "client_secret": config.pipedrive.client_secret,
    }
    if pipedrive_urls:
        pipedrive |= {"oauth_base": config.pipedrive.oauth_base, "api_base": config.pipedrive.api_base or ""}
    return {
        "pipedrive": pipedrive,
        "database": {"url": config.database.url},
        "vault": {"keys": list(config.vault.keys)},
    }


def write_config_toml(
    path: Path, config: Config, sections: Mapping[str, Mapping[str, Any]] | None = None, *, pipedrive_urls: bool = False
) -> Path:
    """Write ``config_sections(config)`` plus ``sections`` (merged table by table) as a TOML file for a subprocess."""
    raw = config_sections(config, pipedrive_urls=pipedrive_urls)
    for section, values in (sections or {}).items():
        raw[section] = {**raw.get(section, {}), **values}
    return write_toml(path, raw)


def parent_death_signal() -> None:
    """A ``preexec_fn``: the child gets SIGTERM when the thread that started it ends, so no server outlives it.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); elsewhere it does nothing.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve_args(config_path: Path, port: int | None = None) -> list[str]:
    """Arguments after ``python`` for ``pipedrive-video-bridge --config PATH serve [--port PORT]``."""
    return ["-m", "bridge.cli", "--config", str(config_path), "serve", *(["--port", str(port)] if port else [])]


class BridgeProcess:
    """A server in a subprocess (``python ARGS``) on ``port``, its output appended to ``log_path``.

    ``wait_ready`` polls a health path until it answers 200; ``stop`` terminates (then kills after a
    timeout); ``kill`` is SIGKILL (kill -9). As a context manager it stops on exit. With
    ``die_with_parent`` the process also gets SIGTERM if its starter dies (``parent_death_signal``).
    """

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        port: int,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str = "the bridge",
        die_with_parent: bool = False,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.name = name
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            preexec_fn=parent_death_signal if die_with_parent else None,
        )

    @classmethod
    def serve(
        cls, config_path: Path, log_path: Path, *, port: int | None = None, port_arg: bool = True, **kwargs: Any
    ) -> BridgeProcess:
        """``pipedrive-video-bridge serve`` on ``port`` (a free one if None; ``--port`` unless not ``port_arg``)."""
        port = port or free_port()
        return cls(serve_args(config_path, port if port_arg else None), log_path, port=port, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, path: str = "/readyz", seconds: float = 30) -> None:
        """Until GET ``path`` answers 200; fails (showing the log) if the process exits or ``seconds`` pass."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"{self.name} exited with {self.process.returncode}:\n{self.log()}"
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not answer 200 at {path} within {seconds}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no clean-up, no flush."""
        self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM if still running, SIGKILL if it has not exited after ``timeout`` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> BridgeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running(process: BridgeProcess, path: str = "/readyz", seconds: float = 30) -> Iterator[BridgeProcess]:
    """``process`` once ready at ``path``; stopped on exit (also when it never got ready)."""
    with process:
        process.wait_ready(path, seconds)
        yield process


def run_ready_go_workers(commands: Sequence[Sequence[str]], timeout: float = 60) -> list[Any]:
    """Start one process per command; each prints ``ready``, then all get ``go`` on stdin at once.

    Returns each one's last stdout line as JSON (each must exit 0 within ``timeout``); kills leftovers.
    """
    workers = [
        subprocess.Popen(
            list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for command in commands
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line.strip() == "ready", (line, worker.stderr.read() if worker.stderr else "")
        for worker in workers:  # the start signal, to all at once
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = []
        for worker in workers:
            out, err = worker.communicate(timeout=timeout)
            assert worker.returncode == 0, err
            outputs.append(json.loads(out.strip().splitlines()[-1]))
        return outputs
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
