"""The ``pipedrive-video-bridge`` command: serve, check, manifest, openapi, links, plugins, keys, migrate, simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.api.manifest import build_manifest, manifest_problems, render_manifest, write_manifest
from bridge.api.openapi import build_openapi, render_openapi, write_openapi
from bridge.config import Config, load_config
from bridge.devtools.fake_pipedrive import FakePipedriveState, running_fake_pipedrive
from bridge.devtools.simulator import DEFAULT_HOST as SIMULATOR_HOST
from bridge.devtools.simulator import DEFAULT_PORT as SIMULATOR_PORT
from bridge.devtools.simulator import Simulator
from bridge.errors import ConfigError
from bridge.logs import configure_logging
from bridge.runtime import StartupError, build_backends, open_bridge, open_store, prepare_database
from bridge.serving import connection_cap, freeze_startup_heap, raise_open_files_limit, uvicorn_settings
from bridge.storage import migrations
from bridge.storage.vault import generate_key
from bridge.vendors.registry import load_plugins

EXIT_PROBLEM = 2


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_PROBLEM


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    return serve(config, args.host or config.server.host, args.port or config.server.port)


def serve(config: Config, host: str, port: int, plugins: Iterable[object] = ()) -> int:
    """Check the start-up, then serve until stopped; ``plugins`` are registered beside the installed ones
    (the benchmarks' own backend)."""
    import uvicorn

    from bridge.app import create_app

    configure_logging(config.logging.level, config.logging.format, config.secret_values())
    try:
        asyncio.run(_preflight(config, plugins))
    except StartupError as exc:
        return _fail(str(exc))
    if config.pipedrive.trial:
        print(
            "local trial: the reverse API accepts the built-in trial credentials (see README); "
            "set [pipedrive] client_id and client_secret before connecting Pipedrive",
            file=sys.stderr,
        )
    open_files = raise_open_files_limit()
    settings = uvicorn_settings(config.server, max_connections=connection_cap(config.server, open_files))
    app = create_app(config, load_plugins(plugins))
    freeze_startup_heap()
    uvicorn.run(app, host=host, port=port, **settings)
    return 0


async def _preflight(config: Config, plugins: Iterable[object] = ()) -> None:
    async with open_bridge(config, load_plugins(plugins)):
        pass


def cmd_check(config: Config, _args: argparse.Namespace) -> int:
    registry = load_plugins()
    _backends, problems = build_backends(registry, config)
    problems += registry.problems()
    problems += [
        f"[meetings] allowed_backends: no installed plugin provides {name!r}"
        for name in config.meetings.allowed_backends
        if name not in registry.backends
    ]
    problems += [f"manifest {p}" for p in manifest_problems(build_manifest(config))]
    where = config.source or "built-in defaults"
    if problems:
        print(f"{where}: {len(problems)} problem(s)", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"{where}: OK (backends: {', '.join(sorted(registry.backends))}; default: {config.meetings.default_backend})")
    return 0


def cmd_manifest(config: Config, args: argparse.Namespace) -> int:
    if args.output == "-":
        manifest = build_manifest(config)
        problems = manifest_problems(manifest)
        if problems:
            return _fail("the manifest would be invalid:\n" + "\n".join(problems))
        sys.stdout.write(render_manifest(manifest))
        return 0
    try:
        write_manifest(config, Path(args.output))
    except (ValueError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote {args.output}")
    return 0


def cmd_openapi(_config: Config, args: argparse.Namespace) -> int:
    if args.output == "-":
        sys.stdout.write(render_openapi(build_openapi()))
        return 0
    try:
        write_openapi(Path(args.output))
    except OSError as exc:
        return _fail(str(exc))
    print(f"wrote {args.output}")
    return 0


def cmd_links_create(config: Config, args: argparse.Namespace) -> int:
    if args.backend and args.backend not in config.meetings.allowed_backends:
        return _fail(f"backend {args.backend!r} is not in [meetings] allowed_backends")

    async def run() -> str:
        async with open_bridge(config) as bridge:
            existing = await bridge.store.find_active_link(args.company_id, args.user_id)
            if existing is not None:
                raise StartupError(
                    f"user {args.user_id} of company {args.company_id} already has the active link {existing.id}"
                )
            link = await bridge.store.create_link(
                pipedrive_user_id=args.user_id,
                company_id=args.company_id,
                user_name=args.name,
                user_email=args.email,
                backend=args.backend,
            )
            return link.id

    try:
        print(asyncio.run(run()))
    except StartupError as exc:
        return _fail(str(exc))
    return 0


def cmd_links_list(config: Config, _args: argparse.Namespace) -> int:
    async def run() -> list[Any]:
        async with open_bridge(config) as bridge:
            return await bridge.store.list_links()

    try:
        links = asyncio.run(run())
    except StartupError as exc:
        return _fail(str(exc))
    for link in links:
        print(
            f"{link.id}  user={link.pipedrive_user_id} company={link.company_id} "
            f"backend={link.backend or '(default)'} status={link.status}"
        )
    return 0


def cmd_plugins(_config: Config, args: argparse.Namespace) -> int:
    registry = load_plugins()
    rows: list[dict[str, Any]] = [
        {"name": p.name, "version": p.version, "backends": p.backends, "error": p.error} for p in registry.plugins
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no plugins installed (pip install a plugin, e.g. plugins/jitsi)")
    for row in rows if not args.json else []:
        status = f"ERROR: {row['error']}" if row["error"] else f"backends: {', '.join(row['backends']) or '-'}"
        print(f"{row['name']} {row['version'] or ''}  {status}")
    return 1 if registry.problems() else 0


def cmd_keys_generate(_config: Config, _args: argparse.Namespace) -> int:
    print(generate_key())
    return 0


def cmd_keys_rotate(config: Config, _args: argparse.Namespace) -> int:
    async def run() -> tuple[int, dict[str, int]]:
        store = open_store(config)
        try:
            await prepare_database(store, config)
            moved = await store.rotate()
            return moved, await store.count_by_key()
        finally:
            store.close()

    try:
        moved, counts = asyncio.run(run())
    except StartupError as exc:
        return _fail(str(exc))
    print(f"re-encrypted {moved} secret(s); rows per key id: {json.dumps(counts)}")
    return 0


def cmd_migrate(config: Config, _args: argparse.Namespace) -> int:
    store = open_store(config)
    try:
        applied = migrations.migrate(store.engine)
    except Exception as exc:
        return _fail(f"migration failed: {exc.__class__.__name__}: {exc}")
    finally:
        store.close()
    print(f"applied migrations {applied}" if applied else f"schema is up to date (revision {migrations.head()})")
    return 0


def cmd_reconcile(config: Config, args: argparse.Namespace) -> int:
    """Show (and, without --dry-run, resolve) what crashes and outages left: exit 1 while anything is unresolved."""
    from bridge.api import reconcile  # the reverse API's modules load only for the commands that use them

    async def run() -> int:
        async with open_bridge(config) as bridge:
            reports = await reconcile.survey(bridge)
            for line in reconcile.describe(reports):
                print(line)
            if args.dry_run:
                return 0 if all(entry.clean for entry in reports) else 1
            resolution = await reconcile.resolve(bridge, reports)
            for job, result in resolution.jobs:
                outcome = "held by another process" if result is None else result.outcome
                detail = f" ({result.error})" if result is not None and result.error else ""
                print(f"job {job.kind} {job.vendor_meeting_id or job.room_key}: {outcome}{detail}")
            for stray, result in resolution.rooms:
                detail = f" ({result.error})" if result.error else ""
                print(f"stray room {stray.room.vendor_meeting_id}: {result.outcome}{detail}")
            print(
                f"resolved: {resolution.claims_dropped} stale claim(s), {len(resolution.jobs)} job(s) run, "
                f"{len(resolution.rooms)} stray room(s); unresolved: {resolution.unresolved}"
            )
            return 1 if resolution.unresolved or any(entry.listing_error for entry in reports) else 0

    try:
        return asyncio.run(run())
    except StartupError as exc:
        return _fail(str(exc))


def cmd_simulate(config: Config, args: argparse.Namespace) -> int:
    client_id = args.client_id or config.pipedrive.client_id
    client_secret = args.client_secret or config.pipedrive.client_secret
    pipedrive = FakePipedriveState(client_id=client_id, client_secret=client_secret)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(running_fake_pipedrive(pipedrive, args.pipedrive_host, args.pipedrive_port))
        except (OSError, RuntimeError) as exc:
            return _fail(f"the Pipedrive simulator cannot listen on {args.pipedrive_host}:{args.pipedrive_port}: {exc}")
        try:
            simulator = Simulator(args.bridge_url, client_id, client_secret, pipedrive)
        except ValueError as exc:
            return _fail(str(exc))
        print(
            f"Pipedrive simulator on {pipedrive.api_domain}: the bridge under test needs [pipedrive] "
            f'oauth_base = "{pipedrive.api_domain}" and api_base = "{pipedrive.api_domain}"',
            flush=True,
        )
        ok = asyncio.run(simulator.run())
    print("all steps passed" if ok else "some steps failed")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipedrive-video-bridge", description="Pipedrive's video calling app extension on your own vendor."
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "-c", "--config", type=Path, help="TOML config file (default: $PVB_CONFIG, else built-in local-trial defaults)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, handler: Callable[[Config, argparse.Namespace], int], help: str, parent: Any = sub
    ) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help)
        command.set_defaults(handler=handler)
        return command

    serve = add("serve", cmd_serve, "start the service")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    add("check", cmd_check, "validate the config, plugins and manifest; list every problem")
    manifest = add("manifest", cmd_manifest, "write the manifest to upload to Pipedrive")
    manifest.add_argument("-o", "--output", default="manifest.json", help="file to write, or - for stdout")
    openapi = add("openapi", cmd_openapi, "write the OpenAPI document of the reverse API")
    openapi.add_argument("-o", "--output", default="openapi.json", help="file to write, or - for stdout")
    links = sub.add_parser("links", help="manage links (Pipedrive user connections)").add_subparsers(
        dest="links_command", required=True
    )
    create = add("create", cmd_links_create, "create a link for a Pipedrive user and print its linkId", links)
    create.add_argument("--user-id", type=int, required=True)
    create.add_argument("--company-id", type=int, required=True)
    create.add_argument("--name", default="")
    create.add_argument("--email", default="")
    create.add_argument("--backend")
    add("list", cmd_links_list, "list links", links)
    plugins = add("plugins", cmd_plugins, "list installed plugins and their backends")
    plugins.add_argument("--json", action="store_true")
    keys = sub.add_parser("keys", help="vault keys").add_subparsers(dest="keys_command", required=True)
    add("generate", cmd_keys_generate, "print a new random vault key", keys)
    add("rotate", cmd_keys_rotate, "re-encrypt every stored secret with the first configured key", keys)
    add("migrate", cmd_migrate, "apply pending database migrations")
    reconcile = add(
        "reconcile",
        cmd_reconcile,
        "show and resolve what crashes and vendor outages left: stale claims, outbox jobs, rooms nobody holds",
    )
    reconcile.add_argument("--dry-run", action="store_true", help="only show; change nothing")
    simulate = add(
        "simulate",
        cmd_simulate,
        "play Pipedrive against a running bridge: install, the reverse API, uninstall; one PASS/FAIL line per step",
    )
    simulate.epilog = (
        f"The bridge under test must use the simulator as Pipedrive: [pipedrive] oauth_base and "
        f'api_base = "http://HOST:PORT" of --pipedrive-host/--pipedrive-port (default '
        f"http://{SIMULATOR_HOST}:{SIMULATOR_PORT}), and the same client id and secret. Exit "
        "status 0 when every step passes, 1 when one fails."
    )
    simulate.add_argument("--bridge-url", required=True, help="the bridge's base URL, e.g. http://127.0.0.1:8000")
    simulate.add_argument(
        "--pipedrive-host",
        default=SIMULATOR_HOST,
        help="address the simulated Pipedrive listens on (default: %(default)s)",
    )
    simulate.add_argument(
        "--pipedrive-port",
        type=int,
        default=SIMULATOR_PORT,
        help="port the simulated Pipedrive listens on (default: %(default)s)",
    )
    simulate.add_argument("--client-id", help="the app's client id (default: the config's)")
    simulate.add_argument("--client-secret", help="the app's client secret (default: the config's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("error: the configuration is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_PROBLEM
    if args.handler is not cmd_serve:
        configure_logging("WARNING", "text", config.secret_values())
    return int(args.handler(config, args))


if __name__ == "__main__":
    sys.exit(main())
