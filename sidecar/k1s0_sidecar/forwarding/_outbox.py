"""The ``events`` table read as an outbox: the next rows after the checkpoint, and the checkpoint write."""

from __future__ import annotations

import asyncpg

from k1s0_event_store.schema import quote_ident


class Outbox:
    """Reads run on the lease's connection, so that only the lock holder moves the checkpoint."""

    def __init__(self, schema: str, query_timeout: float) -> None:
        s = quote_ident(schema, "schema")
        self.timeout = query_timeout
        # At most ``limit`` rows and about ``budget`` bytes of (stored, possibly compressed) payload
        # and metadata: the first row always, then rows while the running size before them is under
        # budget. Rows left out are not detoasted (the filter needs only their sizes).
        self._read_sql = (
            "SELECT sequence, event_id, stream_id, version, event_type, payload, metadata, occurred_at, stored_at"
            " FROM (SELECT *, sum(pg_column_size(payload) + pg_column_size(metadata)) OVER (ORDER BY sequence)"
            " - (pg_column_size(payload) + pg_column_size(metadata)) AS before"
            f" FROM {s}.events WHERE sequence > $1 AND sequence <= $4 ORDER BY sequence LIMIT $2) e"
            " WHERE before < $3 ORDER BY sequence"
        )
        self._safe_sql = f"SELECT {s}.safe_sequence()"
        self._advance_sql = (
            f"UPDATE {s}.forwarder_checkpoint SET position = GREATEST(position, $1), updated_at = NOW()"
        )

    async def read(self, conn: asyncpg.Connection, position: int, limit: int, budget: int) -> list[asyncpg.Record]:
        """The rows after ``position``, in sequence order. Appenders commit in parallel: read only up
        to the safe sequence (taken by a statement of its own, before the read's snapshot), or a late
        commit below the checkpoint is never sent."""
        safe = await conn.fetchval(self._safe_sql, timeout=self.timeout)
        if safe <= position:
            return []
        rows: list[asyncpg.Record] = await conn.fetch(self._read_sql, position, limit, budget, safe,
                                                      timeout=self.timeout)
        return rows

    async def advance(self, conn: asyncpg.Connection, end: int) -> None:
        """Move the checkpoint to ``end``, never backwards: only the lock holder writes, but a write
        sent by a holder that died while the statement waited can still commit after it (see
        docs/forwarding.md)."""
        await conn.execute(self._advance_sql, end, timeout=self.timeout)
