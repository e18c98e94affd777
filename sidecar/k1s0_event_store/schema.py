"""The event tables, their migrations and their privileges: one module for operator and sidecar.

Identifiers cannot be bound as query parameters, so every schema or role name that reaches SQL is
first validated against a strict pattern (lower-case PostgreSQL identifiers, at most 63 bytes) and
then double-quoted. Passwords and other values go through the server's own ``format('%L')`` or
bound parameters; nothing user-supplied is pasted into SQL unchecked.

Global order (why appends take a lock, and readers a watermark)
-------------------------------------------------------------------
``events.sequence`` is an identity column, and ``nextval`` is handed out at INSERT time, not at
COMMIT. Two concurrent transactions can therefore commit in the opposite order of their sequences:
T1 takes 10, T2 takes 11, T2 commits, a reader sees 11 and moves its cursor past 10, then T1
commits 10 and the reader never sees it. Marten, SQLStreamStore, Eventuous and Axon's JPA store
all shipped this bug.

Every appender takes an advisory lock private to its schema (``append_lock_key``) before it
inserts, so sequences are drawn one appender at a time, and marks itself in flight
(``mark_in_flight``: a shared advisory lock keyed by its first sequence, held until its commit is
visible). Readers of the global order read only up to ``safe_sequence()`` (the last drawn value,
below every mark), taken by a statement before the read. Appenders may then release the lock
before their commit (``parallel_commits()``, migration 4), so the commits of many sidecars overlap
and share WAL flushes; with it off the lock is held through the commit, as releases before this one
did. ``append_planned`` takes the lock inside one statement run in autocommit, never across a
client round trip. ``docs/design.md`` ("Global order", "Many sidecars, one schema") has the proof
sketch and the figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_RESERVED_PREFIXES = ("pg_",)
_RESERVED = frozenset({"public", "information_schema"})

#: Advisory-lock namespaces (the first key of the two-key form). "k1s0" and "k1s1" in ASCII.
APPEND_LOCK_NAMESPACE = 0x6B317330
MIGRATE_LOCK_NAMESPACE = 0x6B317331
#: The Kafka forwarder's session-level lock (one active forwarder per schema): "k1s2".
FORWARDER_LOCK_NAMESPACE = 0x6B317332


def validate_identifier(name: object, what: str = "identifier") -> str:
    """A safe, lower-case PostgreSQL identifier, or ValueError naming what was wrong."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} is not a valid PostgreSQL identifier: use 1-63 characters of a-z, 0-9 and _, "
            "not starting with a digit"
        )
    if name in _RESERVED or name.startswith(_RESERVED_PREFIXES):
        raise ValueError(f"{what} {name!r} is reserved by PostgreSQL")
    return name


def quote_ident(name: str, what: str = "identifier") -> str:
    """Validate, then double-quote (the pattern already excludes quotes; quoting keeps keywords safe)."""
    return '"' + validate_identifier(name, what).replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str

    def render(self, schema: str) -> str:
        # The validated name is also a safe SQL string literal: the pattern excludes quotes.
        return self.sql.replace("{s}", quote_ident(schema, "schema")).replace(
            "{schema_literal}", validate_identifier(schema, "schema")
        )


def _delete_stream(then: str = "") -> str:
    """The SQL of ``delete_stream()``: migration 1 creates it, migration 2 adds ``then`` (a
    notification) before it returns. The text is formatted with the schema later, like every
    migration's."""
    return f"""CREATE OR REPLACE FUNCTION {{s}}.delete_stream(p_stream_id TEXT) RETURNS BIGINT
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    removed BIGINT;
BEGIN
    PERFORM 1 FROM {{s}}.event_streams WHERE id = p_stream_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('k1s0.stream_delete', 'on', true);
    DELETE FROM {{s}}.events WHERE stream_id = p_stream_id;
    GET DIAGNOSTICS removed = ROW_COUNT;
    PERFORM set_config('k1s0.stream_delete', 'off', true);
    DELETE FROM {{s}}.snapshots WHERE stream_id = p_stream_id;
    DELETE FROM {{s}}.event_streams WHERE id = p_stream_id;
{then}    RETURN removed;
END;
$$;
REVOKE ALL ON FUNCTION {{s}}.delete_stream(TEXT) FROM PUBLIC;
"""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "event streams, append-only events, snapshots, stream deletion",
        """
CREATE TABLE {s}.event_streams (
    id              TEXT        NOT NULL PRIMARY KEY,
    aggregate_type  TEXT        NOT NULL,
    current_version BIGINT      NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- The seed's events table, plus event_id for idempotent retries. The seed's extra index on
-- (stream_id, version) is left out: the UNIQUE constraint already creates exactly that index.
CREATE TABLE {s}.events (
    sequence        BIGINT      NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    stream_id       TEXT        NOT NULL REFERENCES {s}.event_streams(id),
    version         BIGINT      NOT NULL CHECK (version >= 1),
    event_type      TEXT        NOT NULL,
    payload         JSONB       NOT NULL,
    metadata        JSONB       NOT NULL DEFAULT '{}',
    occurred_at     TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    stored_at       TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    UNIQUE (stream_id, version)
);

CREATE TABLE {s}.snapshots (
    id                TEXT        NOT NULL PRIMARY KEY,
    stream_id         TEXT        NOT NULL REFERENCES {s}.event_streams(id),
    snapshot_version  BIGINT      NOT NULL,
    aggregate_type    TEXT        NOT NULL,
    state             JSONB       NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_snapshots_stream_id ON {s}.snapshots (stream_id, snapshot_version DESC);

-- Append-only in the database itself, whoever connects: UPDATE and TRUNCATE always fail, DELETE
-- fails unless it runs inside delete_stream() below (which sets a transaction-local flag). The
-- application role additionally has no UPDATE/DELETE privilege on the table at all.
CREATE FUNCTION {s}.forbid_event_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('k1s0.stream_delete', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events are append-only: % on %.% is not allowed', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'delete a whole stream with delete_stream(stream_id)';
END;
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON {s}.events
    FOR EACH ROW EXECUTE FUNCTION {s}.forbid_event_changes();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON {s}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.forbid_event_changes();

-- The one way to remove events: a whole stream with its snapshots. SECURITY DEFINER so that the
-- application role needs only EXECUTE on it, never DELETE on the events table. Returns the
-- number of events removed, or NULL when the stream does not exist.
"""
        + _delete_stream(),
    ),
    Migration(
        2,
        "notifications for subscriptions: on append and on stream deletion",
        """
-- One notification per appending transaction (identical notifications in one transaction are
-- collapsed by PostgreSQL), delivered at commit: subscribers wake up instead of polling.
-- Channel k1s0_events, payload the schema name.
CREATE FUNCTION {s}.notify_appended() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('k1s0_events', TG_TABLE_SCHEMA);
    RETURN NULL;
END;
$$;
CREATE TRIGGER events_notify AFTER INSERT ON {s}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.notify_appended();

-- delete_stream() also tells subscribers: channel k1s0_stream_deleted, payload schema || '/' || stream.
"""
        + _delete_stream(
            then="    PERFORM pg_notify('k1s0_stream_deleted', '{schema_literal}' || '/' || p_stream_id);\n"
        ),
    ),
    Migration(
        3,
        "Kafka forwarder checkpoint (one row per schema)",
        """
-- The outbox relay's position: every event with sequence <= position was acknowledged by Kafka.
-- Only the forwarder holding the schema's advisory lock (see forwarder_lock_key) writes it, on the
-- connection that holds the lock. holder/epoch/acquired_at say who is active and since when.
CREATE TABLE {s}.forwarder_checkpoint (
    id          BOOLEAN     NOT NULL PRIMARY KEY DEFAULT TRUE CHECK (id),
    position    BIGINT      NOT NULL DEFAULT 0 CHECK (position >= 0),
    holder      TEXT,
    epoch       BIGINT      NOT NULL DEFAULT 0,
    acquired_at TIMESTAMPTZ,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
INSERT INTO {s}.forwarder_checkpoint (id) VALUES (TRUE);
""",
    ),
    Migration(
        4,
        "fleet appends: one-statement appends that commit in parallel behind a safe-sequence watermark;"
        " no NOTIFY per append",
        """
-- Every sidecar of an app appends to this schema. A notification per appending commit woke every
-- sidecar's listener (each then queried the head) and serialised notifying commits database-wide,
-- so that cost grew with the number of sidecars. Sidecars now wake their own subscription reader
-- and forwarder after their own commits and look for other sidecars' commits by polling.
DROP TRIGGER IF EXISTS events_notify ON {s}.events;
DROP FUNCTION IF EXISTS {s}.notify_appended();

-- Parallel commits. The append lock orders the drawing of sequences; with parallel commits on, an
-- appender releases it as soon as its rows are inserted, before its commit and WAL flush, so the
-- commits of many sidecars overlap and share flushes. Sequence order then no longer equals commit
-- order, so every reader of the global order reads only up to safe_sequence(): the highest
-- sequence below which nothing can still commit. Each appender marks itself in flight with a
-- shared advisory lock keyed by its first sequence, taken under the append lock before it draws
-- and held until its commit is visible; safe_sequence() reads the sequence's last value, then the
-- marks. Off for a schema that already has events (sidecars of the previous release may still be
-- running; they read without the watermark): `k1s0-eventstore migrate --parallel-commits` turns it
-- on once every sidecar of the schema runs this release. On for a new schema.
CREATE FUNCTION {s}.parallel_commits() RETURNS BOOLEAN LANGUAGE sql IMMUTABLE AS 'SELECT true';
DO $do$
BEGIN
    IF EXISTS (SELECT 1 FROM {s}.events) THEN
        CREATE OR REPLACE FUNCTION {s}.parallel_commits() RETURNS BOOLEAN LANGUAGE sql IMMUTABLE AS 'SELECT false';
    END IF;
END
$do$;

-- The in-flight mark: (classid = the schema's OID, objid = the low 32 bits of the first sequence
-- this transaction will draw). Call it holding the append lock, right before inserting events.
CREATE FUNCTION {s}.mark_in_flight() RETURNS VOID LANGUAGE plpgsql AS $$
DECLARE
    next_sequence BIGINT;
    schema_key BIGINT := '{schema_literal}'::regnamespace::oid::bigint;
    low BIGINT;
BEGIN
    SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END INTO next_sequence
        FROM {s}.events_sequence_seq;
    low := next_sequence & 4294967295;
    PERFORM pg_advisory_xact_lock_shared(
        (CASE WHEN schema_key > 2147483647 THEN schema_key - 4294967296 ELSE schema_key END)::int4,
        (CASE WHEN low > 2147483647 THEN low - 4294967296 ELSE low END)::int4);
END;
$$;

-- Every sequence at or below this is final: committed, rolled back or deleted, never to appear
-- later. A reader must take it in one statement and read in a later one (a later snapshot).
CREATE FUNCTION {s}.safe_sequence() RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    drawn BIGINT;
    lowest BIGINT;
BEGIN
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO drawn FROM {s}.events_sequence_seq;
    -- Marks hold 32 bits: place each within 2^31 of what has been drawn.
    SELECT min(CASE WHEN m.v > drawn + 2147483648 THEN m.v - 4294967296
                    WHEN m.v <= drawn - 2147483648 THEN m.v + 4294967296 ELSE m.v END) INTO lowest
    FROM (SELECT ((drawn >> 32) << 32) | l.objid::bigint AS v FROM pg_catalog.pg_locks l
          WHERE l.locktype = 'advisory' AND l.objsubid = 2
            AND l.classid = '{schema_literal}'::regnamespace::oid
            AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())) m;
    RETURN least(drawn, coalesce(lowest - 1, drawn));
END;
$$;

-- An append planned by the client on the stream versions it believes current (p_check_*), done in
-- one statement, run in autocommit so that the commit travels in the same message. It takes the
-- append lock here, after the client's round trips. If a checked stream is not at the planned
-- version, or an event id the plan took as new is stored, or an appender still in flight wrote
-- the same stream version or event id (unique violation), nothing is written and no row is
-- returned: the client reads the real state and plans again. With parallel commits the lock is
-- released when the rows are in, before the commit; otherwise it is held through the commit.
-- Lock key: (append namespace "k1s0" << 32) | the schema's OID, as schema.append_lock_key computes.
CREATE FUNCTION {s}.append_planned(
    p_check_streams TEXT[], p_check_versions BIGINT[], p_check_ids UUID[],
    p_streams TEXT[], p_aggregate_types TEXT[], p_stream_versions BIGINT[],
    p_ids UUID[], p_stream_ids TEXT[], p_versions BIGINT[], p_types TEXT[],
    p_payloads TEXT[], p_metadata TEXT[], p_occurred TIMESTAMPTZ[]
) RETURNS TABLE (r_event_id UUID, r_sequence BIGINT, r_stored_at TIMESTAMPTZ)
LANGUAGE plpgsql AS $$
DECLARE
    lock_key CONSTANT BIGINT := (1798402864::bigint << 32) | '{schema_literal}'::regnamespace::oid::bigint;
    parallel CONSTANT BOOLEAN := {s}.parallel_commits();
    ids UUID[];
    sequences BIGINT[];
    stored TIMESTAMPTZ[];
BEGIN
    IF parallel THEN
        PERFORM pg_advisory_lock(lock_key);
    ELSE
        PERFORM pg_advisory_xact_lock(lock_key);
    END IF;
    BEGIN
        IF EXISTS (SELECT 1 FROM unnest(p_check_streams, p_check_versions) AS c(id, v)
                   LEFT JOIN {s}.event_streams es ON es.id = c.id
                   WHERE coalesce(es.current_version, 0) <> c.v)
           OR (cardinality(p_check_ids) > 0
               AND EXISTS (SELECT 1 FROM {s}.events ev WHERE ev.event_id = ANY(p_check_ids))) THEN
            IF parallel THEN
                PERFORM pg_advisory_unlock(lock_key);
            END IF;
            RETURN;
        END IF;
        PERFORM {s}.mark_in_flight();
        WITH streams AS (
            INSERT INTO {s}.event_streams AS es (id, aggregate_type, current_version)
            SELECT * FROM unnest(p_streams, p_aggregate_types, p_stream_versions)
            ON CONFLICT (id) DO UPDATE SET current_version = EXCLUDED.current_version, updated_at = NOW()),
        ins AS (
            INSERT INTO {s}.events AS ev (event_id, stream_id, version, event_type, payload, metadata, occurred_at)
            SELECT u.e, u.sid, u.v, u.t, u.p::jsonb, u.m::jsonb, u.o
            FROM unnest(p_ids, p_stream_ids, p_versions, p_types, p_payloads, p_metadata, p_occurred)
                AS u(e, sid, v, t, p, m, o)
            RETURNING ev.event_id, ev.sequence, ev.stored_at)
        SELECT array_agg(ins.event_id), array_agg(ins.sequence), array_agg(ins.stored_at)
            INTO ids, sequences, stored FROM ins;
    EXCEPTION
        WHEN unique_violation THEN
            -- An appender still in flight took this stream version or event id: a stale plan.
            IF parallel THEN
                PERFORM pg_advisory_unlock(lock_key);
            END IF;
            RETURN;
        WHEN OTHERS OR query_canceled THEN
            IF parallel THEN
                PERFORM pg_advisory_unlock(lock_key);
            END IF;
            RAISE;
    END;
    IF parallel THEN
        PERFORM pg_advisory_unlock(lock_key);
    END IF;
    RETURN QUERY SELECT * FROM unnest(ids, sequences, stored);
END;
$$;
""",
    ),
)

_APPEND_PLANNED_ARGS = (
    "TEXT[], BIGINT[], UUID[], TEXT[], TEXT[], BIGINT[], UUID[], TEXT[], BIGINT[], TEXT[], TEXT[], TEXT[],"
    " TIMESTAMPTZ[]"
)

#: LISTEN channels (payloads: the schema name; ``schema/stream_id`` for deletions). Since migration 4
#: appends no longer notify; ``NOTIFY_APPENDED`` stays for sidecars of older releases during an upgrade.
NOTIFY_APPENDED = "k1s0_events"
NOTIFY_STREAM_DELETED = "k1s0_stream_deleted"

LATEST_VERSION = MIGRATIONS[-1].version


async def migrate(conn: Any, schema: str) -> list[int]:
    """Create the schema if needed and apply every migration it lacks; return those applied.

    Idempotent and safe to run from several processes at once: a transaction-scoped advisory lock
    keyed on the schema name serialises concurrent runs, and each migration is recorded in
    ``schema_migrations`` in the same transaction that applies it.
    """
    q = quote_ident(schema, "schema")
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", MIGRATE_LOCK_NAMESPACE, schema
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {q}.schema_migrations ("
            " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW())"
        )
        done = {r[0] for r in await conn.fetch(f"SELECT version FROM {q}.schema_migrations")}
        for m in MIGRATIONS:
            if m.version in done:
                continue
            await conn.execute(m.render(schema))
            await conn.execute(
                f"INSERT INTO {q}.schema_migrations (version, description) VALUES ($1, $2)",
                m.version,
                m.description,
            )
            applied.append(m.version)
    return applied


async def parallel_commits(conn: Any, schema: str) -> bool:
    """Whether appenders of ``schema`` commit in parallel (migration 4; see its comments)."""
    q = quote_ident(schema, "schema")
    return bool(await conn.fetchval(f"SELECT {q}.parallel_commits()"))


async def enable_parallel_commits(conn: Any, schema: str) -> None:
    """Let appenders release the append lock before their commit. Only once every sidecar of the
    schema runs a release that reads the global order up to ``safe_sequence()`` (this one):
    an older sidecar's subscriptions and forwarder could otherwise skip a late commit."""
    q = quote_ident(schema, "schema")
    await conn.execute(
        f"CREATE OR REPLACE FUNCTION {q}.parallel_commits() RETURNS BOOLEAN LANGUAGE sql IMMUTABLE AS 'SELECT true'"
    )


async def applied_version(conn: Any, schema: str) -> int:
    """The highest applied migration (0: schema or migrations table missing)."""
    exists = await conn.fetchval(
        "SELECT to_regclass(format('%I.schema_migrations', $1::text)) IS NOT NULL", schema
    )
    if not exists:
        return 0
    q = quote_ident(schema, "schema")
    return int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {q}.schema_migrations"))


def app_role_grants(schema: str, role: str) -> list[str]:
    """What the sidecar's role needs, and nothing more (no UPDATE/DELETE on events)."""
    s = quote_ident(schema, "schema")
    r = quote_ident(role, "role")
    return [
        f"GRANT USAGE ON SCHEMA {s} TO {r}",
        f"GRANT SELECT, INSERT ON {s}.events TO {r}",
        f"GRANT SELECT, INSERT, UPDATE ON {s}.event_streams TO {r}",
        f"GRANT SELECT, INSERT, DELETE ON {s}.snapshots TO {r}",
        f"GRANT SELECT ON {s}.schema_migrations TO {r}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
        f"GRANT EXECUTE ON FUNCTION {s}.delete_stream(TEXT) TO {r}",
        f"GRANT EXECUTE ON FUNCTION {s}.append_planned({_APPEND_PLANNED_ARGS}) TO {r}",
        f"GRANT EXECUTE ON FUNCTION {s}.mark_in_flight(), {s}.safe_sequence(), {s}.parallel_commits() TO {r}",
        f"GRANT SELECT, UPDATE ON {s}.forwarder_checkpoint TO {r}",
    ]


async def drop_schema(conn: Any, schema: str) -> None:
    """Drop the schema and everything in it (the operator's ``deletionPolicy: Delete``)."""
    await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema, 'schema')} CASCADE")


def append_lock_key(schema_oid: int) -> int:
    """The 64-bit advisory-lock key private to one schema (namespace << 32 | the schema's OID)."""
    return (APPEND_LOCK_NAMESPACE << 32) | (schema_oid & 0xFFFFFFFF)


def forwarder_lock_key(schema_oid: int) -> int:
    """The session-level advisory-lock key whose holder is the schema's one active Kafka forwarder."""
    return (FORWARDER_LOCK_NAMESPACE << 32) | (schema_oid & 0xFFFFFFFF)



async def ensure_app_role(conn: Any, schema: str, role: str, password: str) -> bool:
    """Create (or update the password of) the least-privilege login role for ``schema``.

    Returns True when the role was created. The statements are built by the server's own
    ``format()`` with ``%I``/``%L``, so the password is quoted by PostgreSQL, not by us.
    """
    validate_identifier(role, "role")
    async with conn.transaction():
        exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        verb = "ALTER" if exists else "CREATE"
        stmt = await conn.fetchval(
            f"SELECT format('{verb} ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',"
            " $1::text, $2::text)",
            role,
            password,
        )
        await conn.execute(stmt)
        for grant in app_role_grants(schema, role):
            await conn.execute(grant)
    return not exists


async def drop_app_role(conn: Any, role: str) -> None:
    """Drop the role (after its schema is gone or its privileges are revoked)."""
    r = quote_ident(role, "role")
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if exists:
        async with conn.transaction():
            await conn.execute(f"DROP OWNED BY {r}")
            await conn.execute(f"DROP ROLE {r}")
