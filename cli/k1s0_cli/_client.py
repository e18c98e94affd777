"""The people-facing subcommands: read, append, inspect and tail a sidecar over gRPC.

Output is a readable table (rich) or ``--output json`` for scripts. Exit codes scripts can rely
on: 0 ok, 1 other error, 2 usage, 3 not found, 4 conflict, 5 unauthenticated/forbidden,
6 unavailable, 130 interrupted. Errors are one line: ``error: SYS_EVSTORE_… message``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from k1s0_event_store import (
    EventEnvelope,
    EventStoreError,
    GrpcEventStore,
    GrpcSnapshotStore,
    SnapshotNotFoundError,
    ValidationError,
    event_json,
    rfc3339,
    snapshot_json,
    stream_summary_json,
)
from k1s0_event_store.error_map import ErrorCategory, kind_of

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_AUTH, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130
#: The exit code of each category of the library's error map (the numbers are documented: keep them).
EXIT_CODES: dict[ErrorCategory, int] = {
    ErrorCategory.INVALID: EXIT_USAGE,
    ErrorCategory.NOT_FOUND: EXIT_NOT_FOUND,
    ErrorCategory.CONFLICT: EXIT_CONFLICT,
    ErrorCategory.DENIED: EXIT_AUTH,
    ErrorCategory.UNAVAILABLE: EXIT_UNAVAILABLE,
    ErrorCategory.INTERNAL: EXIT_ERROR,
}

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def exit_code(exc: EventStoreError) -> int:
    return EXIT_CODES[kind_of(exc.code).category]


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("EVENTSTORE_SERVER", "localhost:9090"),
                   help="sidecar gRPC address (default: $EVENTSTORE_SERVER or localhost:9090)")
    p.add_argument("--token", default=None, help="bearer token (default: $EVENTSTORE_TOKEN)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-call deadline in seconds")
    p.add_argument("--output", "-o", choices=("table", "json"), default="table")


def _events_table(events: list[EventEnvelope], title: str | None = None) -> Table:
    table = Table(title=title)
    for col in ("seq", "version", "type", "stored at", "payload"):
        table.add_column(col, overflow="fold")
    for e in events:
        table.add_row(str(e.sequence), str(e.version), e.event_type, rfc3339(e.stored_at),
                      json.dumps(e.payload, ensure_ascii=False)[:200])
    return table


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


async def _streams_list(args: argparse.Namespace, store: GrpcEventStore) -> int:
    listed = await store.list_streams(prefix=args.prefix, after=args.after, limit=args.limit)
    if args.output == "json":
        _print_json({"streams": [stream_summary_json(s) for s in listed.streams], "next_after": listed.next_after})
        return EXIT_OK
    table = Table(title=f"streams{f' starting with {args.prefix}' if args.prefix else ''}, newest activity first")
    for col in ("stream", "aggregate type", "version", "last append"):
        table.add_column(col, overflow="fold")
    for s in listed.streams:
        table.add_row(str(s.stream_id), s.aggregate_type, str(s.current_version), rfc3339(s.updated_at))
    out.print(table)
    if listed.next_after:
        err.print(f"more: --after {listed.next_after}", highlight=False, markup=False)
    return EXIT_OK


async def _streams_read(args: argparse.Namespace, store: GrpcEventStore) -> int:
    page = await store.read_stream(args.stream, from_version=args.from_version, to_version=args.to_version,
                                   event_type=args.type, limit=1)
    total = page.total_count
    events: list[EventEnvelope] = []
    with Progress(console=err, transient=True, disable=total < 1000 or args.output == "json") as progress:
        task = progress.add_task(f"reading {args.stream}", total=total)
        while len(events) < total:
            chunk = await store.read_stream(args.stream, from_version=args.from_version, to_version=args.to_version,
                                            event_type=args.type, offset=len(events), limit=1000)
            if not chunk.events:
                break
            events.extend(chunk.events)
            progress.update(task, completed=len(events))
    if args.output == "json":
        _print_json({"stream_id": args.stream, "current_version": page.current_version,
                     "events": [event_json(e) for e in events]})
    else:
        out.print(_events_table(events, f"{args.stream} (version {page.current_version}, {len(events)} events)"))
    return EXIT_OK


async def _streams_append(args: argparse.Namespace, store: GrpcEventStore) -> int:
    try:
        payload = json.loads(args.payload)
        metadata = json.loads(args.metadata) if args.metadata else {}
    except json.JSONDecodeError as exc:
        raise ValidationError(f"--payload/--metadata must be JSON: {exc}", field="payload") from None
    result = await store.append_events(args.stream, [EventEnvelope(args.type, payload, metadata)],
                                       expected_version=args.expected_version)
    if args.output == "json":
        _print_json({"stream_id": str(result.stream_id), "current_version": result.current_version,
                     "events": [event_json(e) for e in result.events]})
    else:
        out.print(_events_table(result.events, f"appended to {result.stream_id}: version {result.current_version}"))
    return EXIT_OK


async def _streams_delete(args: argparse.Namespace, store: GrpcEventStore) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            err.print("error: refusing to delete without --yes (no terminal to confirm on)")
            return EXIT_USAGE
        prompt = f"Delete stream {args.stream} with all its events and snapshots? Type its id to confirm: "
        answer = await asyncio.to_thread(input, prompt)
        if answer.strip() != args.stream:
            err.print("aborted")
            return EXIT_ERROR
    removed = await store.delete_stream(args.stream)
    if args.output == "json":
        _print_json({"success": True, "stream_id": args.stream, "deleted_events": removed})
    else:
        out.print(f"deleted stream {args.stream} ({removed} events)")
    return EXIT_OK


async def _events_get(args: argparse.Namespace, store: GrpcEventStore) -> int:
    event = await store.get_event(args.stream, args.sequence)
    if args.output == "json":
        _print_json(event_json(event))
    else:
        out.print_json(json.dumps(event_json(event), ensure_ascii=False))
    return EXIT_OK


async def _snapshots_latest(args: argparse.Namespace, snapshots: GrpcSnapshotStore) -> int:
    snap = await snapshots.load_latest(args.stream)
    if snap is None:
        raise SnapshotNotFoundError(args.stream)
    body = snapshot_json(snap, with_state=True)
    if args.output == "json":
        _print_json(body)
    else:
        out.print_json(json.dumps(body, ensure_ascii=False))
    return EXIT_OK


async def _subscribe(args: argparse.Namespace, store: GrpcEventStore) -> int:
    if args.stream:
        events = store.subscribe_to_stream(args.stream, args.after, from_end=args.from_end)
    else:
        events = store.subscribe_to_all(args.after, stream_prefixes=[args.prefix] if args.prefix else [],
                                        from_end=args.from_end)
    count = 0
    async for event in events:
        if args.output == "json":
            print(json.dumps(event_json(event), ensure_ascii=False), flush=True)
        else:
            out.print(f"[bold]{event.sequence}[/bold] {event.stream} v{event.version} [cyan]{event.event_type}[/cyan] "
                      f"{json.dumps(event.payload, ensure_ascii=False)[:200]}", highlight=False)
        count += 1
        if args.limit and count >= args.limit:
            break
    return EXIT_OK


def register(sub: Any) -> None:
    """Add the people-facing subcommands to the ``k1s0-eventstore`` parser."""
    streams = sub.add_parser("streams", help="list, read, append to or delete streams on a sidecar")
    ssub = streams.add_subparsers(dest="action", required=True)
    p = ssub.add_parser("list", help="streams, most recently appended to first")
    p.add_argument("--prefix", default="", help="only stream ids starting with this")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--after", help="continue after this cursor (printed as 'more: --after …')")
    add_connection_args(p)
    p.set_defaults(handler=_run(_streams_list))
    p = ssub.add_parser("read", help="read a stream")
    p.add_argument("stream")
    p.add_argument("--from-version", type=int, default=1)
    p.add_argument("--to-version", type=int)
    p.add_argument("--type", help="only events of this type")
    add_connection_args(p)
    p.set_defaults(handler=_run(_streams_read))
    p = ssub.add_parser("append", help="append one event")
    p.add_argument("stream")
    p.add_argument("--type", required=True)
    p.add_argument("--payload", required=True, help="JSON")
    p.add_argument("--metadata", help="JSON object")
    p.add_argument("--expected-version", type=int,
                   help="the stream must be at this version (0: new or empty, -1: must not exist); "
                        "omitted: any version")
    add_connection_args(p)
    p.set_defaults(handler=_run(_streams_append))
    p = ssub.add_parser("delete", help="delete a stream with its events and snapshots (sys_admin)")
    p.add_argument("stream")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_connection_args(p)
    p.set_defaults(handler=_run(_streams_delete))

    events = sub.add_parser("events", help="look up single events")
    esub = events.add_subparsers(dest="action", required=True)
    p = esub.add_parser("get", help="one event by global sequence")
    p.add_argument("stream")
    p.add_argument("sequence", type=int)
    add_connection_args(p)
    p.set_defaults(handler=_run(_events_get))

    snaps = sub.add_parser("snapshots", help="look at snapshots")
    nsub = snaps.add_subparsers(dest="action", required=True)
    p = nsub.add_parser("latest", help="the latest snapshot of a stream")
    p.add_argument("stream")
    add_connection_args(p)
    p.set_defaults(handler=_run(_snapshots_latest, snapshots=True))

    p = sub.add_parser("subscribe", help="tail events live (catch-up first)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--stream", help="one stream (positions are versions)")
    group.add_argument("--prefix", help="streams whose id starts with this (positions are sequences)")
    p.add_argument("--after", type=int, default=0, help="start after this version/sequence")
    p.add_argument("--from-end", action="store_true", help="only events appended from now on")
    p.add_argument("--limit", type=int, default=0, help="stop after this many events")
    add_connection_args(p)
    p.set_defaults(handler=_run(_subscribe))


def _run(fn: Callable[..., Awaitable[int]], *, snapshots: bool = False) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        token = args.token or os.environ.get("EVENTSTORE_TOKEN") or None

        async def main() -> int:
            kind = GrpcSnapshotStore if snapshots else GrpcEventStore
            client = kind(args.server, token=token, timeout=args.timeout)
            try:
                return await fn(args, client)
            finally:
                await client.close()

        try:
            return asyncio.run(main())
        except EventStoreError as exc:
            err.print(f"error: {exc.code}: {exc.message}", highlight=False, markup=False)
            return exit_code(exc)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED

    return handler
