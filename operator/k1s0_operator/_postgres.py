"""The EventStream's footprint in the shared PostgreSQL: its schema, its claim, its role.

All DDL for the event tables comes from the library's schema module (the same code the sidecar's
``--migrate`` runs); this module adds only the claim and the connection handling.

The claim: which EventStream owns a schema is recorded in the database itself, as the schema's
comment ``k1s0-eventstream:<namespace>/<name>``, set in the same transaction that creates the
schema. A second EventStream asking for that schema sees another owner and is refused
(``Conflict``); nothing is merged. The owner is namespace/name, not the UID, so an EventStream
deleted with ``deletionPolicy: Retain`` and applied again re-attaches to its events.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg

from k1s0_event_store import schema as schema_module

CLAIM_PREFIX = "k1s0-eventstream:"
CONNECT_TIMEOUT = 5.0
#: Advisory-lock class (two-int form) serialising deprovisioning within one database.
DEPROVISION_LOCK = schema_module.MIGRATE_LOCK_NAMESPACE + 2


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached or refused the admin login (retry later)."""


class SchemaConflict(Exception):
    """The schema belongs to another EventStream (or was not created by the operator)."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    exists: bool
    owner: str | None
    version: int
    role_exists: bool


def new_password() -> str:
    return secrets.token_urlsafe(24)


def role_dsn(admin_dsn: str, role: str, password: str) -> str:
    """The admin DSN's host, port, database and options with the role's credentials instead."""
    parts = urlsplit(admin_dsn)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def password_from_dsn(dsn: str) -> str | None:
    try:
        password = urlsplit(dsn).password
        return unquote(password) if password else None
    except ValueError:
        return None


async def connect(admin_dsn: str) -> asyncpg.Connection:
    """An admin connection, or DatabaseUnavailable with a message that never contains the DSN."""
    try:
        return await asyncpg.connect(admin_dsn, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise DatabaseUnavailable(f"PostgreSQL is unavailable: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    # asyncpg's messages name host, port, user and database, never the password.
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


async def inspect(conn: asyncpg.Connection, schema: str, role: str) -> SchemaState:
    schema_module.validate_identifier(schema, "schema")
    row = await conn.fetchrow(
        "SELECT obj_description(oid, 'pg_namespace') AS comment FROM pg_namespace WHERE nspname = $1", schema
    )
    owner = None
    if row is not None and row["comment"] and str(row["comment"]).startswith(CLAIM_PREFIX):
        owner = str(row["comment"])[len(CLAIM_PREFIX):]
    version = await schema_module.applied_version(conn, schema) if row is not None else 0
    role_exists = bool(await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role))
    return SchemaState(exists=row is not None, owner=owner, version=version, role_exists=role_exists)


async def provision(conn: asyncpg.Connection, schema: str, role: str, password: str, owner: str) -> list[int]:
    """Claim, migrate and grant, idempotently; return the migrations applied now.

    A schema that exists with another claim raises SchemaConflict. A schema that exists with no
    claim at all (e.g. made by ``k1s0-eventstore migrate``) is adopted: that is the documented way
    to put an existing event store under the operator.
    """
    q = schema_module.quote_ident(schema, "schema")
    # Shared with other provisionings, exclusive against a deprovisioning (see deprovision).
    await conn.execute("SELECT pg_advisory_lock_shared($1, 0)", DEPROVISION_LOCK)
    try:
        return await _provision(conn, schema, q, role, password, owner)
    finally:
        await conn.execute("SELECT pg_advisory_unlock_shared($1, 0)", DEPROVISION_LOCK)


async def _provision(conn: asyncpg.Connection, schema: str, q: str, role: str, password: str, owner: str) -> list[int]:
    async with conn.transaction():
        # Serialise concurrent claims of one schema name (two EventStreams created together).
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext($2))", schema_module.MIGRATE_LOCK_NAMESPACE + 1, schema
        )
        state = await inspect(conn, schema, role)
        if state.owner is not None and state.owner != owner:
            raise SchemaConflict(f"schema {schema!r} is owned by EventStream {state.owner}")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
        # The comment is a string literal; format('%L') has the server quote it.
        stmt = await conn.fetchval(f"SELECT format('COMMENT ON SCHEMA {q} IS %L', $1::text)", CLAIM_PREFIX + owner)
        await conn.execute(stmt)
    applied = await schema_module.migrate(conn, schema)
    await schema_module.ensure_app_role(conn, schema, role, password)
    return applied


async def deprovision(conn: asyncpg.Connection, schema: str, role: str, owner: str) -> bool:
    """Drop the schema and the role if this EventStream owns them; False when it did not own it."""
    # A deprovisioning runs alone in its database: DROP SCHEMA … CASCADE / DROP OWNED next to
    # another one, or next to a provisioning's GRANTs, deadlock on the catalog rows they both
    # update (seen with two Delete-policy streams deleted while the drift timer ran), and Kopf
    # would only retry a minute later.
    await conn.execute("SELECT pg_advisory_lock($1, 0)", DEPROVISION_LOCK)
    try:
        state = await inspect(conn, schema, role)
        if state.exists and state.owner != owner:
            return False
        await schema_module.drop_schema(conn, schema)
        await schema_module.drop_app_role(conn, role)
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, 0)", DEPROVISION_LOCK)
