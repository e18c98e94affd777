"""The ``k1s0-eventstore`` subcommands that run or prepare a server, and the parser for all of them.

Subcommands import what they need lazily, so ``k1s0-eventstore version`` stays instant and the
sidecar image does not need the operator's dependencies loaded to serve.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import k1s0_event_store

Handler = Callable[[argparse.Namespace], int]


def _cmd_version(args: argparse.Namespace) -> int:
    from k1s0_event_store.schema import LATEST_VERSION

    print(f"k1s0-eventstore {k1s0_event_store.__version__} (schema migrations: {LATEST_VERSION})")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    import asyncpg

    from k1s0_event_store.schema import (
        LATEST_VERSION,
        enable_parallel_commits,
        migrate,
        parallel_commits,
        validate_identifier,
    )

    dsn = args.database_url or os.environ.get("EVENTSTORE_DATABASE_URL")
    schema = args.schema or os.environ.get("EVENTSTORE_DATABASE_SCHEMA") or "event_store"
    if not dsn:
        print("error: --database-url (or EVENTSTORE_DATABASE_URL) is required", file=sys.stderr)
        return 2
    try:
        validate_identifier(schema, "schema")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def run() -> tuple[list[int], bool]:
        conn = await asyncpg.connect(dsn)
        try:
            applied = await migrate(conn, schema)
            if args.parallel_commits:
                await enable_parallel_commits(conn, schema)
            return applied, await parallel_commits(conn, schema)
        finally:
            await conn.close()

    try:
        applied, parallel = asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"error: migration failed: {exc}", file=sys.stderr)
        return 1
    if applied:
        print(f"schema {schema}: applied migrations {', '.join(map(str, applied))} (now at {LATEST_VERSION})")
    else:
        print(f"schema {schema}: up to date (migration {LATEST_VERSION})")
    print(f"schema {schema}: parallel commits {'on' if parallel else 'off (see --parallel-commits)'}")
    return 0


#: The variables the README's Python example reads: where ``make run``'s database is.
DSN_VARIABLE = "EVENTSTORE_DSN"
SCHEMA_VARIABLE = "EVENTSTORE_SCHEMA"


def ready_banner(sidecar: Any) -> str:
    """What ``serve`` with an embedded database (``make run``) prints once it serves: where
    everything is, and how to point the library at the same database and schema."""
    import shlex

    cfg = sidecar.config
    host = "localhost" if cfg.server.host in ("0.0.0.0", "::", "") else cfg.server.host
    schema = cfg.database.schema
    return "\n".join([
        f"k1s0 event store is ready (authentication: {cfg.auth.mode})",
        f"  REST      http://{host}:{sidecar.rest_port}/api/v1/",
        f"  gRPC      {host}:{sidecar.grpc_port}",
        f"  console   http://{host}:{sidecar.rest_port}/ui/",
        f"  database  {sidecar.dsn}",
        f"  schema    {schema}",
        "Use the same database from the library (the README's Python example):",
        f"  export {DSN_VARIABLE}={shlex.quote(sidecar.dsn)} {SCHEMA_VARIABLE}={shlex.quote(schema)}",
    ])


def _print_ready(sidecar: Any) -> None:
    # Only for the embedded database: a deployed sidecar's database URL may carry a password.
    if sidecar.embedded:
        print(ready_banner(sidecar), flush=True)


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from k1s0_event_store.sidecar_config import ConfigError, load_config
    from k1s0_sidecar import PortInUseError, configure_logging, serve, setup_tracing, shutdown_tracing

    overrides = {"database": {"migrate": True}} if args.migrate else None
    try:
        config = load_config(args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.app.log_format, os.environ.get("EVENTSTORE_LOG_LEVEL", "INFO"))
    # The embedded PostgreSQL's launcher narrates every command at INFO; keep its warnings only.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    setup_tracing()  # only if OTEL_* variables ask for it; before the servers are built
    try:
        asyncio.run(serve(config, on_ready=_print_ready))
    except KeyboardInterrupt:  # pragma: no cover - the signal handler normally wins
        pass
    except PortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown_tracing()  # export the last spans
    return 0


def _cmd_operator(args: argparse.Namespace) -> int:
    import logging

    from k1s0_event_store.sidecar_config import ConfigError

    if not args.all_namespaces and not args.namespace:
        print("error: give --namespace NAME (repeatable) or --all-namespaces", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=os.environ.get("EVENTSTORE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        from k1s0_operator.main import run
    except ModuleNotFoundError as exc:  # the slim sidecar image has no kopf/kubernetes client
        print(f"error: the operator's dependencies are not installed ({exc.name}); this is the sidecar "
              "image: run the operator from the k1s0-eventstore image", file=sys.stderr)
        return 2

    try:
        run(namespaces=args.namespace, clusterwide=args.all_namespaces, config_path=args.config)
    except ConfigError as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="k1s0-eventstore", description="The k1s0 event store.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("version", help="print the version and the schema migration level")
    p.set_defaults(handler=_cmd_version)

    p = sub.add_parser("migrate", help="create or upgrade the event tables in a schema")
    p.add_argument("--database-url", help="PostgreSQL URL (default: $EVENTSTORE_DATABASE_URL)")
    p.add_argument("--schema", help="schema name (default: $EVENTSTORE_DATABASE_SCHEMA or event_store)")
    p.add_argument(
        "--parallel-commits", action="store_true",
        help="let appenders of this schema commit in parallel (on for new schemas; for a schema upgraded "
        "from an older release, only once every sidecar of it runs this release)",
    )
    p.set_defaults(handler=_cmd_migrate)

    p = sub.add_parser(
        "serve", help="run the sidecar (REST and the web console /ui/ on :8080, gRPC on :9090)",
        description="Run the sidecar. Without a database URL it starts an embedded PostgreSQL (development) and "
        "prints where everything is once ready. Ports: EVENTSTORE_SERVER_PORT (REST, default 8080) and "
        "EVENTSTORE_SERVER_GRPC_PORT (gRPC, default 9090).",
    )
    p.add_argument("--config", help="config.yaml (the layout of docs/api.md); EVENTSTORE_* variables override it")
    p.add_argument("--migrate", action="store_true", help="apply schema migrations at start-up")
    p.set_defaults(handler=_cmd_serve)

    from ._client import register

    register(sub)

    p = sub.add_parser("operator", help="run the Kubernetes operator and its admission webhook")
    p.add_argument("--namespace", action="append", default=[], help="watch this namespace (repeatable)")
    p.add_argument("--all-namespaces", action="store_true", help="watch EventStreams in every namespace")
    p.add_argument("--config", help="config.yaml (the layout of docs/api.md); EVENTSTORE_* variables override it")
    p.set_defaults(handler=_cmd_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)

