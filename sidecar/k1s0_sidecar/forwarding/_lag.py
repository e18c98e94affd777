"""Lag (events not yet acknowledged by Kafka, and the age of the oldest), measured every second."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from k1s0_event_store.schema import quote_ident

from ._lease import close
from ._metrics import ForwarderMetrics
from ._publisher import describe
from ._settings import ForwarderSettings
from ._status import ForwarderStatus

log = logging.getLogger("k1s0_sidecar.forwarder")


class LagMonitor:
    """On its own connection: a round stuck on a frozen broker must not freeze the numbers that say
    so. The active forwarder's position is its own; standby forwarders read it from the table."""

    def __init__(self, dsn: str, schema: str, settings: ForwarderSettings, status: ForwarderStatus,
                 metrics: ForwarderMetrics) -> None:
        self.dsn = dsn
        self.status = status
        self.metrics = metrics
        self.connect_timeout = settings.connect_timeout
        self.timeout = settings.query_timeout
        s = quote_ident(schema, "schema")
        self._position_sql = f"SELECT position FROM {s}.forwarder_checkpoint"
        self._oldest_sql = (
            f"SELECT extract(epoch FROM clock_timestamp() - stored_at)::float8 AS age FROM {s}.events"
            " WHERE sequence > $1 ORDER BY sequence LIMIT 1"
        )
        self._count_sql = f"SELECT count(*) FROM {s}.events WHERE sequence > $1"

    async def run(self) -> None:
        """Until cancelled."""
        conn: asyncpg.Connection | None = None
        try:
            while True:
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(
                            self.dsn, timeout=self.connect_timeout,
                            server_settings={"application_name": "k1s0-forwarder-lag"},
                        )
                    position = self.status.checkpoint if self.status.state == "active" else None
                    if position is None:
                        position = await conn.fetchval(self._position_sql, timeout=self.timeout)
                    if position is not None:
                        await self._measure(conn, position)
                except Exception as exc:
                    log.debug("forwarder lag not measured: %s", describe(exc))
                    if conn is not None:
                        conn.terminate()
                    conn = None
                await asyncio.sleep(1.0)
        finally:
            if conn is not None:
                await close(conn)

    async def _measure(self, conn: asyncpg.Connection, position: int) -> None:
        row = await conn.fetchrow(self._oldest_sql, position, timeout=self.timeout)
        count = await conn.fetchval(self._count_sql, position, timeout=self.timeout)
        events, seconds = int(count), max(0.0, row["age"]) if row else 0.0
        self.status.lag_events = events
        self.status.lag_seconds = seconds
        self.metrics.lag_events.set(events)
        self.metrics.lag_seconds.set(seconds)
