"""4. tokens: 10,000 concurrent token look-ups in 2 processes sharing PostgreSQL while the access token expires k times.

Pipedrive's fake token server must see exactly k refreshes (``PipedriveTokens.fresh_tokens``);
the same for the Zoom plugin's Server-to-Server token when the plugin is installed. Each
process is a ``python -m bench.token_worker``.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import PY, ROOT, Run
from bench.report import heading, table
from bench.rows import install_link
from bridge.config import TRIAL_CLIENT_ID, TRIAL_CLIENT_SECRET
from bridge.devtools.processes import free_port, parent_death_signal

TOKEN_CALLS, TOKEN_PROCESSES, TOKEN_LIFETIME = 10_000, 2, 5.0


@dataclass
class TokenRun:
    """What one token run saw: issued = (token, issued at) in order, from the fake's own records."""

    kind: str
    lifetimes: int
    requests: int  # token requests the fake server counted
    refused: int
    outputs: list[dict[str, Any]]
    issued: list[tuple[str, float]]
    t0: float
    duration: float


def _token_run(
    kind: str,
    config: Path,
    link_id: str,
    lifetimes: int,
    counted: Callable[[], tuple[int, int]],
    issued_at: Callable[[str], float | None],
) -> TokenRun:
    """Both processes: all calls start as tasks; a tenth at t0 at once, the rest spread over the run.

    The run lasts ``lifetimes - 0.5`` token lifetimes from a token that is already
    stale at t0 (Pipedrive) or absent (Zoom), so a correct bridge asks for exactly
    ``lifetimes`` tokens: one at t0 and one right after each expiry.
    """
    duration = (lifetimes - 0.5) * TOKEN_LIFETIME
    per_process = TOKEN_CALLS // TOKEN_PROCESSES
    t0 = time.time() + 6  # time for both processes to start and open the bridge
    argv = [
        PY,
        "-m",
        "bench.token_worker",
        "--kind",
        kind,
        "--config",
        str(config),
        "--link",
        link_id,
        "--calls",
        str(per_process),
        "--burst",
        str(per_process // 10),
        "--t0",
        repr(t0),
        "--duration",
        str(duration),
    ]
    workers = [
        subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=parent_death_signal
        )
        for _ in range(TOKEN_PROCESSES)
    ]
    outputs = []
    try:
        for worker in workers:
            out, err = worker.communicate(timeout=max(1.0, t0 - time.time()) + duration + 180)
            if worker.returncode != 0:
                raise RuntimeError(f"{kind} token worker failed ({worker.returncode}):\n{err[-3000:]}")
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
    requests, refused = counted()
    seen: set[str] = set().union(*(o["tokens"] for o in outputs))
    issued = sorted(((t, at) for t in seen if (at := issued_at(t)) is not None), key=lambda pair: pair[1])
    return TokenRun(kind, lifetimes, requests, refused, outputs, issued, t0, duration)


def _report_token_run(r: Run, run: TokenRun, label: str) -> None:
    calls = sum(o["calls"] for o in run.outputs)
    ok = sum(o["ok"] for o in run.outputs)
    errors: Counter[str] = Counter()
    for o in run.outputs:
        errors.update(o["errors"])
    per_token: Counter[str] = Counter()
    for o in run.outputs:
        for token, info in o["tokens"].items():
            per_token[token] += info["calls"]
    gaps = [b[1] - a[1] for a, b in zip(run.issued, run.issued[1:], strict=False)]
    rows = [
        [i + 1, f"{at - run.t0:+.2f}", per_token[token], f"{gap:.2f}" if gap is not None else ""]
        for i, ((token, at), gap) in enumerate(zip(run.issued, [None, *gaps], strict=True))
    ]
    print(
        f"\n{label}: {calls:,} calls in {len(run.outputs)} processes over {run.duration:g} s "
        f"({TOKEN_CALLS // TOKEN_PROCESSES // 10} per process at once at t0); token lifetime "
        f"{TOKEN_LIFETIME:g} s, {run.lifetimes} lifetimes begin during the run"
    )
    print(table(["token", "issued at s (t0 = 0)", "calls answered with it", "s since previous"], rows))
    latency = " / ".join(f"{max(o[k] for o in run.outputs):.0f}" for k in ("p50_ms", "p99_ms", "max_ms"))
    extra = (
        f", refreshes counted by the workers: {'+'.join(str(o['refreshes']) for o in run.outputs)}"
        if run.kind == "pipedrive"
        else ""
    )
    print(
        f"token requests at the fake server: {run.requests} (expected {run.lifetimes}); refused: {run.refused}; "
        f"calls ok: {ok:,}/{calls:,}{extra}; call latency p50/p99/max (worst process): {latency} ms"
    )
    for message, count in errors.most_common(5):
        print(f"  error x{count}: {message}")
    early = [g for g in gaps if g < TOKEN_LIFETIME - 0.25]
    if early:
        r.report.note(f"{label}: {len(early)} token(s) were fetched before the previous one's lifetime ended")
    late = max(o["last_end"] for o in run.outputs) - run.t0
    if late > run.lifetimes * TOKEN_LIFETIME:
        r.report.note(
            f"{label}: the last call ended {late:.1f} s after t0, past the run's {run.lifetimes} "
            "lifetimes; one more token request would then be correct"
        )
    passed = run.requests == run.lifetimes and run.refused == 0 and ok == calls and not early
    r.report.add(
        "tokens",
        f"{label}: token requests for {calls:,} calls, {len(run.outputs)} processes",
        f"{run.requests} (k={run.lifetimes}, refused {run.refused}, errors {calls - ok})",
        "== k",
        passed,
    )
    for i, o in enumerate(run.outputs):
        r.report.rss.append(("tokens", f"{run.kind} token worker {i + 1}", (o.get("peak_rss_kb") or 0) / 1024 or None))
    r.report.raw.setdefault("tokens", {})[run.kind] = {
        "requests": run.requests,
        "expected": run.lifetimes,
        "refused": run.refused,
        "calls": calls,
        "ok": ok,
        "gaps": gaps,
        "errors": dict(errors),
        "latency_ms": {k: [o[k] for o in run.outputs] for k in ("p50_ms", "p99_ms", "max_ms")},
    }


def run(r: Run) -> None:
    heading("4. token upkeep: concurrent token look-ups in 2 processes sharing PostgreSQL")
    lifetimes = r.n(5, 3)
    if r.pg is None:
        r.report.note("tokens: skipped, it needs PostgreSQL")
        r.report.add("tokens", "pipedrive refreshes", "skipped (no PostgreSQL)", "== k", None)
        return
    from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
    from bridge.pipedrive.client import TokenSet
    from bridge.pipedrive.tokens import dump_tokens

    margin = 1  # [pipedrive] token_refresh_margin_seconds: a token is used until 1 s before it expires
    state = FakePipedriveState(
        client_id=TRIAL_CLIENT_ID, client_secret=TRIAL_CLIENT_SECRET, access_ttl=int(margin + TOKEN_LIFETIME)
    )
    with running_fake_pipedrive(state) as pipedrive:
        config = r.write_config(
            "tokens",
            db_url=r.pg.create("tokens"),
            port=free_port(),
            pipedrive={
                "oauth_base": pipedrive.api_domain,
                "api_base": pipedrive.api_domain,
                "token_refresh_margin_seconds": margin,
            },
        )
        answer = state.issue_tokens()
        stale = TokenSet(
            access_token=answer["access_token"],
            refresh_token=answer["refresh_token"],
            expires_at=time.time() - 1,
            scope=answer["scope"],
            api_domain=answer["api_domain"],
        )
        link_id = install_link(
            config,
            dump_tokens(stale),
            pipedrive_user_id=state.user.id,
            company_id=state.user.company_id,
            api_domain=pipedrive.api_domain,
        )
        result = _token_run(
            "pipedrive",
            config,
            link_id,
            lifetimes,
            lambda: (state.token_requests["refresh_token"], state.invalid_grants),
            lambda token: (state.access_tokens[token] - state.access_ttl) if token in state.access_tokens else None,
        )
    _report_token_run(r, result, "pipedrive (PipedriveTokens.fresh_tokens)")
    _zoom_tokens(r, lifetimes)


def _zoom_tokens(r: Run, lifetimes: int) -> None:
    installed = any(ep.name == "zoom" for ep in importlib.metadata.entry_points(group="pipedrive_video_bridge"))
    if not installed:
        print("\nzoom: not installed")
        r.report.add("tokens", "zoom S2S token requests", "not installed", "", None)
        return
    assert r.pg is not None
    try:  # an optional plugin (mypy does not see it through an editable install's import hook)
        from pipedrive_video_bridge_zoom.fake_zoom import (  # type: ignore[import-not-found, unused-ignore]
            FakeZoomState,
            running_fake_zoom,
        )
        from pipedrive_video_bridge_zoom.oauth import (  # type: ignore[import-not-found, unused-ignore]
            REFRESH_MARGIN_SECONDS,
        )
    except ImportError as exc:
        print(f"\nzoom: installed, but its fake Zoom cannot be imported ({exc}); not measured")
        r.report.add("tokens", "zoom S2S token requests", "not measured", "", None)
        return
    state = FakeZoomState(
        client_id="bench-zoom-client",
        client_secret="bench-zoom-secret-" + uuid.uuid4().hex[:8],
        access_ttl=int(REFRESH_MARGIN_SECONDS + TOKEN_LIFETIME),
    )
    with running_fake_zoom(state) as zoom:
        config = r.write_config(
            "tokens-zoom",
            db_url=r.pg.create("zoomtokens"),
            port=free_port(),
            backends__zoom=zoom.backend_config("account"),
        )
        link_id = install_link(
            config, None, pipedrive_user_id=1, company_id=1, user_name="Ada Lovelace", user_email="ada@example.com"
        )
        result = _token_run(
            "zoom",
            config,
            link_id,
            lifetimes,
            lambda: (zoom.token_requests["account_credentials"], 0),
            lambda token: (zoom.access_tokens[token][1] - zoom.access_ttl) if token in zoom.access_tokens else None,
        )
    _report_token_run(r, result, "zoom S2S (AccountTokens via ctx.shared)")
