"""One run of the benchmarks: its settings, the servers it starts, the PostgreSQL databases it creates.

``main`` makes one ``Run`` and hands it to every benchmark; ``Run.close`` stops
every server still running and drops every database the run created, whatever
happened before (an exception, Ctrl-C, SIGTERM). Each server is started with
``die_with_parent`` as well, so none outlives a bench process that is killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.report import Report
from bridge.devtools.processes import BridgeProcess, free_port, serve_args, write_toml

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent  # the checkout: `python -m bench.servers` runs from here
PY = sys.executable


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a live process, in MB (psutil is not a dependency; /proc is enough on Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """One server process of a benchmark on a loopback port; its output goes to a log in the run's temp dir."""

    def __init__(self, bench: str, name: str, process: BridgeProcess) -> None:
        self.bench, self.name, self.process = bench, name, process
        self.port, self.url = process.port, process.url

    @property
    def pid(self) -> int:
        return self.process.process.pid

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.process.log().splitlines()[-lines:])
        return ""

    def stop(self) -> float | None:
        """SIGTERM (SIGKILL after 15 s); returns the peak RSS in MB it had reached, if it was still running."""
        peak = peak_rss_mb(self.pid) if self.process.process.poll() is None else None
        self.process.stop(timeout=15)
        return peak


class Postgres:
    """Creates the databases a run uses on the given server; ``drop_all`` drops every one of them."""

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.admin_url = admin_url.replace("postgresql+psycopg://", "postgresql://")
        self.created: list[str] = []
        with psycopg.connect(self.admin_url, connect_timeout=3, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            self.version = str(row[0]) if row else "?"

    def url(self, dbname: str) -> str:
        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))

    def create(self, label: str) -> str:
        import psycopg

        name = f"pvb_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.url(name)

    def size_mb(self, url: str) -> float:
        import psycopg

        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return (row[0] if row else 0) / 1e6

    def drop_all(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def postgres_or_none(url: str, report: Report) -> Postgres | None:
    """The server at ``url``, or None (with a note) if it cannot be reached: its runs are then skipped."""
    try:
        return Postgres(url)
    except Exception as exc:
        report.note(
            f"PostgreSQL at {urlsplit(url).netloc} is unreachable ({exc.__class__.__name__}): its runs are skipped"
        )
        return None


@dataclass
class Run:
    """The settings of one run and everything it has started: servers, temporary files, databases."""

    quick: bool
    client: str  # the load generator's client: "raw" or "httpx"
    key: str  # the vault key of every bridge in the run
    tmp: Path  # configs, SQLite files and server logs
    report: Report
    pg: Postgres | None
    servers: list[Server] = field(default_factory=list)

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def start(
        self, bench: str, name: str, args: list[str], port: int, health: str = "/healthz", seconds: float = 120
    ) -> Server:
        """``python ARGS`` (from the checkout), once it answers 200 at ``health``; it is stopped if it does not."""
        process = BridgeProcess(
            args, self.tmp / f"{bench}-{name}-{port}.log", port=port, cwd=ROOT, name=name, die_with_parent=True
        )
        server = Server(bench, name, process)
        self.servers.append(server)
        try:
            process.wait_ready(health, seconds)
        except AssertionError as exc:  # its message ends with the whole log; the last lines are enough here
            self.stop(server)
            raise RuntimeError(f"{str(exc).splitlines()[0]}\n{server.log_tail()}") from None
        except BaseException:
            self.stop(server)
            raise
        return server

    def start_vendor(self, bench: str, delay: float) -> Server:
        """The fake video vendor (``python -m bench.servers vendor``), answering every call after ``delay`` s."""
        port = free_port()
        args = ["-m", "bench.servers", "vendor", "--port", str(port), "--delay", str(delay)]
        return self.start(bench, "fake vendor", args, port)

    def stop(self, server: Server) -> None:
        """Stop ``server`` (once) and record its peak RSS."""
        if server in self.servers:
            self.servers.remove(server)
            peak = None
            try:
                peak = server.stop()
            finally:
                self.report.rss.append((server.bench, server.name, peak))

    def stop_servers(self) -> None:
        for server in list(self.servers):
            with contextlib.suppress(Exception):
                self.stop(server)

    def write_config(self, name: str, *, db_url: str, port: int, **sections: dict[str, Any]) -> Path:
        """A deployment config in the temp dir: the given database, the run's vault key, default (INFO, JSON) logs.

        A keyword's ``__`` is a dot in the table name: ``backends__zoom`` is ``[backends.zoom]``.
        """
        tables: dict[str, dict[str, Any]] = {
            "server": {"host": HOST, "port": port, "public_url": f"http://{HOST}:{port}"},
            "database": {"url": db_url},
            "vault": {"keys": [self.key]},
        }
        for table, values in sections.items():
            tables.setdefault(table.replace("__", "."), {}).update(values)
        return write_toml(self.tmp / f"{name}.toml", tables)

    def bridge(self, bench: str, name: str, db_url: str, **sections: dict[str, Any]) -> tuple[Server, Path]:
        """``pipedrive-video-bridge serve`` on a config of its own; returns the server and its config's path."""
        port = free_port()
        config = self.write_config(f"{bench}-{name}", db_url=db_url, port=port, **sections)
        return self.start(bench, name, serve_args(config, port), port), config

    def databases(self, label: str) -> list[tuple[str, str]]:
        """A new SQLite file and, when PostgreSQL is reachable, a new PostgreSQL database: (engine, URL)."""
        dbs = [("sqlite", f"sqlite:///{self.tmp / (label + '.sqlite3')}")]
        if self.pg is not None:
            dbs.append(("postgresql", self.pg.create(label)))
        return dbs

    def close(self) -> None:
        """Stop every server still running and drop every database created; the temp dir stays (see ``remove``)."""
        self.stop_servers()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.drop_all()

    def remove(self) -> None:
        """Remove the temp dir: configs, SQLite files, logs."""
        shutil.rmtree(self.tmp, ignore_errors=True)
