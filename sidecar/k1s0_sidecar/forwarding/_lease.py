"""One active forwarder per schema: the holder of a session-level advisory lock on its own connection."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from k1s0_event_store.schema import forwarder_lock_key, quote_ident

from ._settings import ForwarderSettings
from ._signals import Signals
from ._status import ForwarderStatus

log = logging.getLogger("k1s0_sidecar.forwarder")


class SchemaNotReady(Exception):
    """The schema or its forwarder tables are missing in PostgreSQL (migrations not applied)."""


async def connect(dsn: str, timeout: float) -> asyncpg.Connection:
    """The lease's connection: the lock, the outbox reads and the checkpoint writes all run on it."""
    conn: asyncpg.Connection = await asyncpg.connect(
        dsn,
        timeout=timeout,
        server_settings={
            "application_name": "k1s0-forwarder",
            # The server notices a vanished holder (and frees its lock) within ~20 s.
            "tcp_keepalives_idle": "10",
            "tcp_keepalives_interval": "3",
            "tcp_keepalives_count": "3",
        },
    )
    await conn.set_type_codec("jsonb", encoder=lambda v: v, decoder=json.loads, schema="pg_catalog")
    return conn


async def close(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), 2)
    except Exception:
        conn.terminate()


class Lease:
    """Try the lock every ``retry_interval`` (standby, showing who is active) until it is ours; then
    lead on this connection until stopped or the connection fails, and release the lock. A holder
    that dies loses its connection and with it the lock (``kill -9``: at once; a vanished host:
    after the TCP keepalive above)."""

    def __init__(self, schema: str, settings: ForwarderSettings, status: ForwarderStatus, signals: Signals) -> None:
        self.schema = schema
        self.holder = settings.holder
        self.retry_interval = settings.lease_retry_interval
        self.timeout = settings.query_timeout
        self.status = status
        self.signals = signals
        s = quote_ident(schema, "schema")
        self._take_sql = (
            f"UPDATE {s}.forwarder_checkpoint SET holder = $1, epoch = epoch + 1, acquired_at = NOW(),"
            " updated_at = NOW() RETURNING position, epoch, acquired_at"
        )
        self._view_sql = f"SELECT position, holder, acquired_at FROM {s}.forwarder_checkpoint"

    async def hold(self, conn: asyncpg.Connection, lead: Callable[[asyncpg.Connection, int], Awaitable[None]]) -> None:
        """Wait for the lock on ``conn``, then ``lead(conn, checkpoint)`` while holding it."""
        status = self.status
        oid = await conn.fetchval("SELECT oid::bigint FROM pg_namespace WHERE nspname = $1", self.schema)
        if oid is None:
            raise SchemaNotReady(f"schema {self.schema} does not exist (migrations not applied)")
        key = forwarder_lock_key(int(oid))
        if status.last_error_source == "postgresql":
            log.info("forwarder (schema %s): PostgreSQL reachable again", self.schema)
            status.clear_error()
        while not self.signals.stopping.is_set():
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key, timeout=self.timeout):
                try:
                    await lead(conn, await self._take_over(conn))
                finally:
                    if not conn.is_closed():
                        try:
                            await conn.execute("SELECT pg_advisory_unlock($1)", key, timeout=2)
                        except Exception:
                            pass
                return
            status.state = "standby"
            row = await conn.fetchrow(self._view_sql, timeout=self.timeout)
            if row is not None:
                status.checkpoint = row["position"]
                status.active_holder = row["holder"]
                status.active_since = row["acquired_at"].isoformat() if row["acquired_at"] else None
            await self.signals.pause(self.retry_interval)

    async def _take_over(self, conn: asyncpg.Connection) -> int:
        """Sign the checkpoint row as its new holder (a new epoch); returns the checkpoint."""
        row = await conn.fetchrow(self._take_sql, self.holder, timeout=self.timeout)
        if row is None:
            raise SchemaNotReady(f"{self.schema}.forwarder_checkpoint has no row (migration 3 incomplete)")
        position: int = row["position"]
        self.status.active_holder = self.holder
        self.status.active_since = row["acquired_at"].isoformat()
        self.status.takeovers += 1
        log.info("forwarder active for schema %s from sequence %d (epoch %d)", self.schema, position, row["epoch"])
        return position
