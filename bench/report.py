"""What a run reports: figures with their goals, peak RSS, notes, the tables they print in, the machine, JSON."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    bench: str
    what: str
    value: str
    goal: str
    passed: bool | None  # None: shown for context, no goal

    @property
    def verdict(self) -> str:
        return "-" if self.passed is None else ("PASS" if self.passed else "MISS")


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    rss: list[tuple[str, str, float | None]] = field(default_factory=list)  # (bench, process, MB)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, bench: str, what: str, value: str, goal: str = "", passed: bool | None = None) -> None:
        self.figures.append(Figure(bench, what, value, goal, passed))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def summary(self, seconds: float, quick: bool) -> None:
        """Every figure with its goal and verdict, every process's peak RSS, then the notes again."""
        heading("summary")
        print(
            table(
                ["benchmark", "figure", "value", "goal", ""],
                [[f.bench, f.what, f.value, f.goal, f.verdict] for f in self.figures],
            )
        )
        print("\npeak RSS (VmHWM) of each process started:")
        print(
            table(
                ["benchmark", "process", "peak RSS MB"],
                [[b, n, "n/a" if mb is None else f"{mb:.0f}"] for b, n, mb in self.rss],
            )
        )
        missed = [f for f in self.figures if f.passed is False]
        passed = [f for f in self.figures if f.passed]
        print(
            f"\n{len(passed)} goal(s) met, {len(missed)} missed; {'--quick' if quick else 'full'} run took "
            f"{seconds:.0f} s"
        )
        for note in self.notes:
            print(f"note: {note}")

    def write_json(self, path: Path, machine: dict[str, str], quick: bool) -> None:
        path.write_text(
            json.dumps(
                {
                    "machine": machine,
                    "quick": quick,
                    "figures": [f.__dict__ | {"verdict": f.verdict} for f in self.figures],
                    "rss": self.rss,
                    "notes": self.notes,
                    "raw": self.raw,
                },
                indent=2,
                default=str,
            )
        )


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def heading(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 72 - len(text)), flush=True)


def ms(value: float) -> str:
    """Milliseconds for a table: one decimal below 100, none above; ``n/a`` for NaN."""
    return "n/a" if value != value else (f"{value:.1f}" if value < 100 else f"{value:.0f}")


def machine() -> dict[str, str]:
    """What the figures were measured on: cores, CPU, memory, Python, SQLite, the libraries, uvicorn's loop."""
    mem = next(
        (line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")),
        "0",
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    versions = {
        name: importlib.metadata.version(name) for name in ("uvicorn", "starlette", "httpx", "SQLAlchemy", "psycopg")
    }
    extras = [name for name in ("uvloop", "httptools") if importlib.util.find_spec(name)]
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": f"{int(mem) / 1024 / 1024:.1f} GiB",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "os": f"{platform.system()} {platform.release()}",
        "libraries": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "uvicorn loop/http": ("asyncio/h11" if not extras else "+".join(extras)),
    }
