"""PostgreSQL stores on asyncpg (pooled).

Every append runs the shared decision (``_batch.plan``) under the schema's append lock; see
``k1s0_event_store.schema`` (the advisory lock and ``safe_sequence``) for why sequence order equals
commit order. Reads never lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from .._api import EventStore, SnapshotStore
from .._batch import Decision, Write, plan, results
from .._config import EventStoreConfig
from .._encoding import STORED_EVENT, EncodedEvent, Written
from .._errors import (
    EventNotFoundError,
    EventStoreError,
    StreamNotFoundError,
    UnavailableError,
    ValidationError,
)
from .._forms import ReadForm
from .._json import encode_json
from .._listing import StreamList, StreamSummary, encode_cursor, validate_list_streams
from .._model import AppendRequest, AppendResult, EventEnvelope, Snapshot, StreamId, StreamPage
from .._validation import MAX_EVENT_TYPE_LENGTH, validate_name, validate_read_all, validate_version_bound
from ..schema import append_lock_key, quote_ident
from ._shared import envelope_from_prepared, validate_load
from .memory import new_snapshot_id

T = TypeVar("T")

_EVENT_COLUMNS = "sequence, event_id, stream_id, version, event_type, payload, metadata, occurred_at, stored_at"
# Times as the API's RFC 3339 with milliseconds (to_char's MS truncates, like Python's
# isoformat(timespec="milliseconds")).
_TEXT_TS = """to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"+00:00"')"""
# Each value of the stored-event document (``STORED_EVENT``) as text: JSON as jsonb's own text,
# times formatted, uuids as text.
_TEXT = {
    Written.STRING: "{0}", Written.NUMBER: "{0}", Written.JSON: "{0}::text", Written.TIME: _TEXT_TS,
    Written.UUID: "{0}::text",
}
# In EncodedEvent's field order (it follows STORED_EVENT): a row becomes one with
# ``EncodedEvent._make`` (see ``_encoded``).
_ENCODED_COLUMNS = ", ".join(
    f.key if _TEXT[f.written] == "{0}" else f"{_TEXT[f.written].format(f.key)} AS {f.key}" for f in STORED_EVENT
)
# Inside the document: strings through to_json for escaping, the rest spliced in as text; times and
# uuids need no escaping, so only their quotes are added.
_IN_DOCUMENT = {**_TEXT, Written.STRING: "to_json({0})", Written.JSON: "{0}", Written.UUID: "{0}"}


def _document_columns() -> str:
    """Each event as its JSON document (``STORED_EVENT``), built by PostgreSQL: for REST bodies.

    Concatenated rather than json_build_object'ed: the same JSON, about 40 % more rows per second
    on a read-all page (json_build_object re-parses every argument's output). Every column is NOT
    NULL (concat would drop a NULL). ``sequence`` comes first, outside the document: stream pages
    tell a missing row by it."""
    parts: list[str] = []
    text = "{"
    for i, f in enumerate(STORED_EVENT):
        quote = '"' if f.written in (Written.TIME, Written.UUID) else ""
        text += ("," if i else "") + f'"{f.key}":' + quote
        parts += ["'" + text.replace("'", "''") + "'", _IN_DOCUMENT[f.written].format(f.key)]
        text = quote
    parts.append("'" + (text + "}").replace("'", "''") + "'")
    return f"sequence, concat({', '.join(parts)}) AS doc"


_DOCUMENT_COLUMNS = _document_columns()
# A lost connection, a server shutting down or starting (57P0x), a refused or timed-out connect:
# the request may succeed later, so it is UNAVAILABLE (503), never an internal error.
_CONNECTION_ERRORS = (OSError, asyncpg.exceptions.ConnectionDoesNotExistError,
                      asyncpg.exceptions.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
                      asyncpg.exceptions.TooManyConnectionsError, asyncio.TimeoutError)
# Errors that only the values of a request can cause (SQLSTATE classes 22 and 23).
_DATA_ERRORS = (asyncpg.exceptions.DataError, asyncpg.exceptions.IntegrityConstraintViolationError)
#: Optimistic plans tried before a batch is decided under the lock (see _append_planned).
_OPTIMISTIC_ATTEMPTS = 3
#: Plans made again under the lock when an appender still committing wrote the same row first.
_IN_FLIGHT_RETRIES = 20
_KNOWN_VERSIONS_LIMIT = 50_000


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Decode jsonb to Python values on the way out; writes pass JSON text and cast in SQL.
    await conn.set_type_codec("jsonb", encoder=lambda v: v, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook. asyncpg's default sends RESET ALL/UNLISTEN/unlock on every release, one more
    round trip per operation; the stores keep no session state (no SET, LISTEN, cursors or session
    locks), and asyncpg itself still rolls back a transaction left open before calling this."""


async def create_pool(config: EventStoreConfig) -> asyncpg.Pool:
    """A pool configured the way the stores expect (jsonb decoded, timeouts from the config)."""
    try:
        pool = await asyncpg.create_pool(
            config.dsn,
            min_size=config.min_connections,
            max_size=config.max_connections,
            timeout=config.connect_timeout_seconds,
            init=_init_connection,
            reset=_keep_session,
        )
    except _CONNECTION_ERRORS as exc:
        raise UnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
    assert pool is not None
    return pool


class _PoolOwner:
    """Lazily creates (or borrows) a pool, so ``PostgresEventStore(config)`` needs no await."""

    def __init__(self, config: EventStoreConfig, pool: asyncpg.Pool | None) -> None:
        self.config = config
        self._pool = pool
        self._owns_pool = pool is None
        self._pool_lock = asyncio.Lock()
        self._s = quote_ident(config.schema, "schema")

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await create_pool(self.config)
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        pool = await self.pool()
        try:
            async with pool.acquire() as conn:
                yield conn
        except _CONNECTION_ERRORS as exc:
            raise UnavailableError(f"PostgreSQL is unavailable: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None and self._owns_pool:
            await self._pool.close()
        self._pool = None


def envelope_from_row(row: asyncpg.Record, streams: dict[str, StreamId]) -> EventEnvelope:
    """An ``events`` row (the columns of ``_EVENT_COLUMNS``, jsonb decoded) as an EventEnvelope,
    with a cache of parsed stream ids: the one mapping, also for the sidecar's Kafka forwarder."""
    name = row["stream_id"]
    sid = streams.get(name)
    if sid is None:
        sid = streams[name] = StreamId.parse(name)
    return EventEnvelope(
        event_type=row["event_type"],
        payload=row["payload"],
        metadata=row["metadata"],
        stream_id=sid,
        event_id=row["event_id"],
        occurred_at=row["occurred_at"],
        version=row["version"],
        sequence=row["sequence"],
        stored_at=row["stored_at"],
    )


def _envelopes(rows: list[asyncpg.Record], streams: dict[str, StreamId]) -> list[EventEnvelope]:
    return [envelope_from_row(r, streams) for r in rows]


#: A row of ``_ENCODED_COLUMNS`` as an EncodedEvent: the columns are in the tuple's field order, so
#: the record is copied in C (``tuple.__new__``), a third of the cost of passing nine fields by name
#: or position; this is the hot loop of every read the edges serve.
_encoded: Callable[[asyncpg.Record], EncodedEvent] = EncodedEvent._make


def _encoded_rows(rows: list[asyncpg.Record]) -> list[EncodedEvent]:
    return [_encoded(r) for r in rows]


def _documents(rows: list[asyncpg.Record]) -> list[str]:
    return [r["doc"] for r in rows]


@dataclass(slots=True)
class AppendStats:
    """How batches were written (see ``PostgresEventStore._append_planned``): counters for metrics
    and tests. ``replanned`` counts plans found stale, ``locked`` batches decided under the lock."""

    replanned: int = 0
    locked: int = 0


class PostgresEventStore(_PoolOwner, EventStore):
    """The event store on PostgreSQL. ``pool`` lets several stores share one asyncpg pool."""

    def __init__(self, config: EventStoreConfig, *, pool: asyncpg.Pool | None = None) -> None:
        super().__init__(config, pool)
        self.max_events_per_append = config.max_events_per_append
        self._lock_key: int | None = None
        s = self._s
        self._sql_versions = f"SELECT id, current_version FROM {s}.event_streams WHERE id = ANY($1::text[])"
        self._sql_by_ids = f"SELECT {_EVENT_COLUMNS} FROM {s}.events WHERE event_id = ANY($1::uuid[])"
        self._sql_append_planned = f"SELECT * FROM {s}.append_planned({', '.join(f'${i}' for i in range(1, 14))})"
        self._sql_safe = f"SELECT {s}.safe_sequence()"
        self._sql_head = (
            f"SELECT coalesce(max(sequence), 0) FROM {s}.events WHERE sequence <= (SELECT {s}.safe_sequence())"
        )
        # Stream versions this store last read or wrote: the first guess of every plan.
        self._known_versions: dict[str, int] = {}
        self.append_stats = AppendStats()

    async def _append_lock_key(self, conn: asyncpg.Connection) -> int:
        if self._lock_key is None:
            oid = await conn.fetchval("SELECT oid::bigint FROM pg_namespace WHERE nspname = $1", self.config.schema)
            if oid is None:
                raise UnavailableError(
                    f"schema {self.config.schema} does not exist: run `k1s0-eventstore migrate` (or let the "
                    "operator provision the EventStream)"
                )
            self._lock_key = append_lock_key(int(oid))
        return self._lock_key

    async def append_batch(
        self, requests: Sequence[AppendRequest], *, connection: asyncpg.Connection | None = None
    ) -> list[AppendResult | EventStoreError]:
        """Apply ``requests`` in one transaction (one commit, one WAL flush for all of them).

        Each request keeps its own outcome (``_batch.plan``). If PostgreSQL refuses the data of the
        batch (SQLSTATE classes 22 and 23: something only a request's own values can cause), the
        batch is split and re-run until the guilty request fails alone with a ``ValidationError``;
        every other request commits as if it had been sent alone.

        With ``connection`` the append joins the caller's open transaction (a transactional outbox:
        the caller's own rows and the events commit together). The append lock is then held until
        the caller commits, stalling every other appender of the schema meanwhile: keep it short.
        """
        if not requests:
            return []
        if connection is not None:
            key = await self._append_lock_key(connection)
            await connection.execute(f"SELECT pg_advisory_xact_lock({int(key)}); SELECT {self._s}.mark_in_flight()")
            return await self._append_in(connection, requests)
        try:
            async with self.connection() as conn:
                return await self._append_planned(conn, requests)
        except _DATA_ERRORS as exc:
            if len(requests) == 1:
                return [ValidationError(f"PostgreSQL refused the events of this append: {exc}")]
            # Nothing of the batch was stored. Halves run in order, so a later request still sees
            # what an earlier one of the batch wrote (its expected_version may count on it).
            middle = len(requests) // 2
            return [*await self.append_batch(requests[:middle]), *await self.append_batch(requests[middle:])]

    async def _append_planned(
        self, conn: asyncpg.Connection, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | EventStoreError]:
        """Plan in Python, write in one round trip that holds the append lock only while it runs.

        The first plan uses the versions this store last saw (or, for a stream it does not know,
        what the request expects): the usual case, a sidecar appending to streams it appends to or
        new streams, takes one round trip. A plan that would refuse or replay a request is never
        answered from a guess: the real state is read first. ``append_planned`` writes only if
        every stream it writes is still at the planned version; otherwise the state is read and the
        batch planned again. After ``_OPTIMISTIC_ATTEMPTS`` such races (a stream hot across
        sidecars), the batch is decided under the lock instead, which always completes.
        """
        stats = self.append_stats
        versions = self._guess_versions(requests)
        stored_by_id: dict[uuid.UUID, EventEnvelope] = {}
        guessed, stale = True, 0
        while True:
            decisions = plan(requests, versions, stored_by_id)
            # never refuse or replay on a guess
            if not guessed or all(isinstance(d, Write) for d in decisions):
                done = await self._write_plan(conn, decisions, versions)
                if done is not None:
                    return done
                stats.replanned += 1
                stale += 1
                if stale >= _OPTIMISTIC_ATTEMPTS:
                    stats.locked += 1
                    return await self._append_locked(conn, requests)
            versions, stored_by_id = await self._read_state(conn, requests)
            guessed = False

    async def _write_plan(
        self, conn: asyncpg.Connection, decisions: list[Decision], versions: dict[str, int]
    ) -> list[AppendResult | EventStoreError] | None:
        """The outcomes of a plan, its appends written by one ``append_planned``; None when that
        wrote nothing because a stream was no longer at its planned version (plan again)."""
        writes = [d for d in decisions if isinstance(d, Write)]
        if not writes:
            return self._results(decisions, {})
        args, finals = self._write_args(writes, versions)
        rows = await conn.fetch(self._sql_append_planned, *args)
        if not rows:
            return None
        self._remember(finals)
        return self._results(decisions, {r[0]: (r[1], r[2]) for r in rows})

    def _guess_versions(self, requests: Sequence[AppendRequest]) -> dict[str, int]:
        guesses: dict[str, int] = {}
        known = self._known_versions
        for r in requests:
            sid = str(r.stream_id)
            if sid not in guesses:
                expected = r.expected_version
                guesses[sid] = known.get(sid, expected if expected is not None and expected > 0 else 0)
        return guesses

    def _remember(self, finals: dict[str, tuple[str, int]]) -> None:
        known = self._known_versions
        if len(known) > _KNOWN_VERSIONS_LIMIT:
            known.clear()  # a wrong or missing guess costs one read, never a wrong answer
        for sid, (_, version) in finals.items():
            known[sid] = version

    async def _read_state(
        self, conn: asyncpg.Connection, requests: Sequence[AppendRequest]
    ) -> tuple[dict[str, int], dict[uuid.UUID, EventEnvelope]]:
        """The streams' current versions and the stored events whose ids the requests give."""
        streams = list({str(r.stream_id) for r in requests})
        versions = {r["id"]: r["current_version"] for r in await conn.fetch(self._sql_versions, streams)}
        self._known_versions.update(versions)
        given = [p.event_id for r in requests for p in r.events if p.id_given]
        stored_by_id: dict[uuid.UUID, EventEnvelope] = {}
        if given:
            cache: dict[str, StreamId] = {}
            for row in await conn.fetch(self._sql_by_ids, given):
                stored_by_id[row["event_id"]] = envelope_from_row(row, cache)
        return versions, stored_by_id

    @staticmethod
    def _write_args(
        writes: Sequence[Write], versions: dict[str, int]
    ) -> tuple[list[list[Any]], dict[str, tuple[str, int]]]:
        """``append_planned``'s arguments: the three checks (streams at their planned versions, the
        given event ids not stored), then the stream rows and the event columns."""
        final: dict[str, tuple[str, int]] = {}
        check_ids: list[uuid.UUID] = []
        ids: list[uuid.UUID] = []
        sids: list[str] = []
        numbers: list[int] = []
        types: list[str] = []
        payloads: list[str] = []
        metas: list[str] = []
        times: list[datetime] = []
        for w in writes:
            events, first = w.request.events, w.first_version
            sid, n = str(w.request.stream_id), len(events)
            final[sid] = (w.request.stream_id.aggregate_type, first + n - 1)
            sids += [sid] * n
            numbers += range(first, first + n)
            for p in events:
                ids.append(p.event_id)
                if p.id_given:
                    check_ids.append(p.event_id)
                types.append(p.event_type)
                payloads.append(p.payload_json)
                metas.append(p.metadata_json)
                times.append(p.occurred_at)
        streams = list(final)
        args: list[list[Any]] = [
            streams, [versions.get(sid, 0) for sid in streams], check_ids,
            streams, [v[0] for v in final.values()], [v[1] for v in final.values()],
            ids, sids, numbers, types, payloads, metas, times,
        ]
        return args, final

    async def _append_locked(
        self, conn: asyncpg.Connection, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | EventStoreError]:
        """Decide and write while holding the append lock across the round trips (no race with
        another plan; only an appender still committing can make it plan again, see _append_in)."""
        key = await self._append_lock_key(conn)
        # One round trip opens the transaction and takes the lock (simple-query protocol; the key
        # is an integer we computed). The lock must come before the reads in _append_in: under
        # READ COMMITTED each statement sees what had committed when it started.
        # The in-flight mark keeps readers below this append's sequences until it commits (see
        # safe_sequence: appenders of other sidecars may still be committing in parallel).
        await conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({int(key)}); SELECT {self._s}.mark_in_flight()")
        try:
            results = await self._append_in(conn, requests)
        except BaseException:
            # The connection may be gone (the pool then refuses even is_closed()): nothing to undo.
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")
        return results

    async def _append_in(
        self, conn: asyncpg.Connection, requests: Sequence[AppendRequest]
    ) -> list[AppendResult | EventStoreError]:
        """Decide and write, inside a transaction that already holds the append lock and its mark.

        With parallel commits, an appender that released the lock may still be committing a
        version of a stream this batch writes, or an event id it gives, which this transaction's
        reads cannot see yet: the insert then waits for that commit and fails on the unique index.
        The write is undone and planned again on what is now committed."""
        for _ in range(_IN_FLIGHT_RETRIES):
            versions, stored_by_id = await self._read_state(conn, requests)
            # The same statement as the optimistic path (its locks are re-entrant for this
            # transaction, its checks pass under the lock, and a collision with an appender still
            # committing is undone inside it and answered with no rows).
            done = await self._write_plan(conn, plan(requests, versions, stored_by_id), versions)
            if done is not None:
                return done
            self.append_stats.replanned += 1
        raise UnavailableError("appenders still committing kept taking this batch's rows: try again")

    @staticmethod
    def _results(
        decisions: Sequence[Decision], inserted: dict[uuid.UUID, tuple[int, datetime]]
    ) -> list[AppendResult | EventStoreError]:
        """The outcomes, each written event with the sequence and time ``append_planned`` gave it."""

        def stored(d: Write) -> list[EventEnvelope]:
            sid, first = d.request.stream_id, d.first_version
            return [
                envelope_from_prepared(p, sid, first + i, *inserted[p.event_id]) for i, p in enumerate(d.request.events)
            ]

        return results(decisions, stored)

    async def load(
        self, stream_id: StreamId | str, from_version: int = 0, to_version: int | None = None
    ) -> list[EventEnvelope]:
        sid = validate_load(stream_id, from_version, to_version)
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT {_EVENT_COLUMNS} FROM {self._s}.events WHERE stream_id = $1 AND version >= $2"
                " AND ($3::bigint IS NULL OR version <= $3) ORDER BY version",
                str(sid), from_version, to_version,
            )
        cache = {str(sid): sid}
        return _envelopes(rows, cache)

    async def _read_stream(
        self, form: ReadForm[T], stream_id: StreamId | str, from_version: int, to_version: int | None,
        event_type: str | None, offset: int, limit: int | None,
    ) -> StreamPage[T]:
        sid = StreamId.of(stream_id)
        columns = form.pick(_EVENT_COLUMNS, _ENCODED_COLUMNS, _DOCUMENT_COLUMNS)
        rows, current, total = await self._page(sid, columns, from_version, to_version, event_type, offset, limit)
        # Each row starts with the stream's current version (see _page).
        convert = form.choose(
            lambda rs: _envelopes(rs, {str(sid): sid}), lambda rs: [_encoded(r[1:]) for r in rs], _documents
        )
        return StreamPage(sid, convert(rows), current, total)

    async def _page(
        self, sid: StreamId, columns: str, from_version: int, to_version: int | None, event_type: str | None,
        offset: int, limit: int | None,
    ) -> tuple[list[asyncpg.Record], int, int]:
        """A page of a stream's events: each row is the stream's current version, then ``columns``."""
        validate_version_bound(from_version, "from_version")
        validate_version_bound(offset, "offset")
        if to_version is not None:
            validate_version_bound(to_version, "to_version")
        if limit is not None:
            validate_version_bound(limit, "limit", 1)
        if event_type is not None:
            validate_name(event_type, "event_type", MAX_EVENT_TYPE_LENGTH)
        first = max(from_version, 1)
        s = self._s
        async with self.connection() as conn:
            if event_type is None:
                # Versions are dense (1..current): a page is a version range, read straight off the
                # (stream_id, version) index, and the count needs no scan. One round trip returns the
                # stream's version with its page, and the page never runs past that version.
                rows = await conn.fetch(
                    f"SELECT s.current_version, e.* FROM {s}.event_streams s LEFT JOIN LATERAL ("
                    f" SELECT {columns} FROM {s}.events ev WHERE ev.stream_id = s.id AND ev.version >= $2"
                    " AND ev.version <= least(s.current_version, coalesce($3::bigint, s.current_version))"
                    " ORDER BY ev.version LIMIT $4) e ON true WHERE s.id = $1",
                    str(sid), first + offset, to_version, limit,
                )
                if not rows:
                    raise StreamNotFoundError(str(sid))
                current = int(rows[0]["current_version"])
                high = current if to_version is None else min(to_version, current)
                return [r for r in rows if r["sequence"] is not None], current, max(0, high - first + 1)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                current = await conn.fetchval(f"SELECT current_version FROM {s}.event_streams WHERE id = $1",
                                              str(sid))
                if not current:
                    raise StreamNotFoundError(str(sid))
                total = await conn.fetchval(
                    f"SELECT count(*) FROM {s}.events WHERE stream_id = $1 AND version >= $2"
                    " AND ($3::bigint IS NULL OR version <= $3) AND event_type = $4",
                    str(sid), first, to_version, event_type,
                )
                rows = await conn.fetch(
                    f"SELECT $7::bigint AS current_version, {columns} FROM {s}.events WHERE stream_id = $1"
                    " AND version >= $2 AND ($3::bigint IS NULL OR version <= $3) AND event_type = $4"
                    " ORDER BY version OFFSET $5 LIMIT $6",
                    str(sid), first, to_version, event_type, offset, limit, current,
                )
            return list(rows), int(current), int(total)

    async def get_event(self, stream_id: StreamId | str, sequence: int) -> EventEnvelope:
        sid = StreamId.of(stream_id)
        validate_version_bound(sequence, "sequence", 1)
        async with self.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_EVENT_COLUMNS} FROM {self._s}.events WHERE sequence = $1 AND stream_id = $2",
                sequence, str(sid),
            )
        if row is None:
            raise EventNotFoundError(str(sid), sequence)
        return envelope_from_row(row, {str(sid): sid})

    async def _read_all(
        self, form: ReadForm[T], after_sequence: int, limit: int, stream_prefixes: Sequence[str],
        event_types: Sequence[str], until_sequence: int | None,
    ) -> list[T]:
        columns = form.pick(_EVENT_COLUMNS, _ENCODED_COLUMNS, _DOCUMENT_COLUMNS)
        rows = await self._all(columns, after_sequence, limit, stream_prefixes, event_types, until_sequence)
        return form.choose(lambda rs: _envelopes(rs, {}), _encoded_rows, _documents)(rows)

    async def _all(
        self, columns: str, after_sequence: int, limit: int, stream_prefixes: Sequence[str],
        event_types: Sequence[str], until_sequence: int | None,
    ) -> list[asyncpg.Record]:
        prefixes, types = validate_read_all(after_sequence, limit, stream_prefixes, event_types, until_sequence)
        async with self.connection() as conn:
            # Only up to the safe sequence: appenders commit in parallel, so a lower sequence may
            # still be committing; it must not be skipped. A separate statement: the read's own
            # snapshot is taken after the bound.
            safe = await conn.fetchval(self._sql_safe)
            until_sequence = safe if until_sequence is None else min(until_sequence, safe)
            if until_sequence <= after_sequence:
                return []
            rows: list[asyncpg.Record] = await conn.fetch(
                f"SELECT {columns} FROM {self._s}.events WHERE sequence > $1"
                " AND ($5::bigint IS NULL OR sequence <= $5)"
                " AND (cardinality($2::text[]) = 0 OR stream_id ^@ ANY($2::text[]))"
                " AND (cardinality($3::text[]) = 0 OR event_type = ANY($3::text[]))"
                " ORDER BY sequence LIMIT $4",
                after_sequence, prefixes, types, limit, until_sequence,
            )
        return rows

    async def head_sequence(self) -> int:
        """The highest sequence of a stored event at or below the safe sequence.

        One statement: its snapshot is taken before the bound, so an event committed in between
        may be left out, which makes the head lower, never too high (a head is where a reader
        starts or stops: a low one only means more to read)."""
        async with self.connection() as conn:
            return int(await conn.fetchval(self._sql_head))

    async def exists(self, stream_id: StreamId | str) -> bool:
        return await self.current_version(stream_id) > 0

    async def current_version(self, stream_id: StreamId | str) -> int:
        sid = StreamId.of(stream_id)
        async with self.connection() as conn:
            v = await conn.fetchval(f"SELECT current_version FROM {self._s}.event_streams WHERE id = $1", str(sid))
        return int(v or 0)

    async def list_streams(self, *, prefix: str = "", after: str | None = None, limit: int = 50) -> StreamList:
        position = validate_list_streams(prefix, after, limit)
        since, last = position if position is not None else (None, None)
        # Ids compare by code point (COLLATE "C"), as in every other store, so cursors are portable.
        # One row more than asked says whether there is a next page.
        async with self.connection() as conn:
            rows = await conn.fetch(
                f"SELECT id, aggregate_type, current_version, updated_at FROM {self._s}.event_streams"
                " WHERE id ^@ $1"
                ' AND ($2::timestamptz IS NULL OR (updated_at, id COLLATE "C") < ($2::timestamptz, $3::text))'
                ' ORDER BY updated_at DESC, id COLLATE "C" DESC LIMIT $4',
                prefix, since, last, limit + 1,
            )
        streams = [
            StreamSummary(StreamId.parse(r["id"]), r["aggregate_type"], int(r["current_version"]), r["updated_at"])
            for r in rows[:limit]
        ]
        last_row = rows[limit - 1] if len(rows) > limit else None
        return StreamList(streams, encode_cursor(last_row["updated_at"], last_row["id"]) if last_row else None)

    async def delete_stream(self, stream_id: StreamId | str) -> int:
        sid = StreamId.of(stream_id)
        async with self.connection() as conn:
            removed = await conn.fetchval(f"SELECT {self._s}.delete_stream($1)", str(sid))
        if removed is None:
            raise StreamNotFoundError(str(sid))
        return int(removed)


class PostgresSnapshotStore(_PoolOwner, SnapshotStore):
    """Snapshots in the same schema as the events."""

    def __init__(self, config: EventStoreConfig, *, pool: asyncpg.Pool | None = None) -> None:
        super().__init__(config, pool)

    async def save(
        self, stream_id: StreamId | str, version: int, state: Any, aggregate_type: str | None = None
    ) -> Snapshot:
        sid = StreamId.of(stream_id)
        validate_version_bound(version, "snapshot_version", 1)
        state_json = encode_json(state, "state", self.config.max_json_depth)
        kind = validate_name(aggregate_type or sid.aggregate_type, "aggregate_type", 255)
        snap_id = new_snapshot_id()
        async with self.connection() as conn:
            # One statement: the stream's version is checked by the same snapshot that inserts.
            row = await conn.fetchrow(
                f"WITH s AS (SELECT current_version FROM {self._s}.event_streams WHERE id = $2),"
                f" ins AS (INSERT INTO {self._s}.snapshots (id, stream_id, snapshot_version, aggregate_type, state)"
                " SELECT $1, $2, $3, $4, $5::jsonb FROM s WHERE s.current_version >= $3 RETURNING created_at)"
                " SELECT (SELECT current_version FROM s) AS current, (SELECT created_at FROM ins) AS created_at",
                snap_id, str(sid), version, kind, state_json,
            )
        assert row is not None
        if row["current"] is None:
            raise StreamNotFoundError(str(sid))
        if row["created_at"] is None:
            raise ValidationError(
                f"snapshot_version {version} is above the stream's current version {row['current']}",
                field="snapshot_version",
            )
        return Snapshot(sid, version, json.loads(state_json), kind, snap_id, row["created_at"])

    async def load_latest(self, stream_id: StreamId | str) -> Snapshot | None:
        sid = StreamId.of(stream_id)
        async with self.connection() as conn:
            row = await conn.fetchrow(
                f"SELECT id, snapshot_version, aggregate_type, state, created_at FROM {self._s}.snapshots"
                " WHERE stream_id = $1 ORDER BY snapshot_version DESC, created_at DESC LIMIT 1",
                str(sid),
            )
        if row is None:
            return None
        return Snapshot(sid, row["snapshot_version"], row["state"], row["aggregate_type"], row["id"],
                        row["created_at"])

    async def prune(self, older_than: datetime) -> int:
        async with self.connection() as conn:
            status = await conn.execute(
                f"DELETE FROM {self._s}.snapshots s WHERE s.created_at < $1 AND EXISTS ("
                f" SELECT 1 FROM {self._s}.snapshots n WHERE n.stream_id = s.stream_id"
                " AND (n.snapshot_version, n.created_at, n.id) > (s.snapshot_version, s.created_at, s.id))",
                older_than,
            )
        return int(status.split()[-1])
