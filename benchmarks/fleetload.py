"""Load generator (a process of its own) for the fleet group's database-side cases, with asyncpg.

The fleet cases run N of these processes with k connections each (1 x 32, 4 x 8, 16 x 2), as N
sidecars would be N writers. Kinds (``spec["kind"]``):

- ``raw_locked``: the lower bound of a write path that serialises appends per schema with an
  advisory lock but keeps no client round trip inside it: ``BEGIN; SELECT pg_advisory_xact_lock(k);
  INSERT ...; COMMIT`` sent as ONE simple-query message (one round trip; the lock is held for the
  insert and the commit's WAL flush only). The rows go to the raw table (``dbload.raw_table_ddl``).
- ``messagedb``: Message DB's ``write_message`` function (its own SQL from npm
  ``@eventide/message-db``, in its own database): one call per append, autocommit, every stream in
  one category, so its category advisory lock is held through the commit, like ours per schema.

The no-lock INSERT baseline is ``dbload``'s ``raw_append``. 1-event appends only, streams uniform
among many (in effect a new stream per append).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from k1s0_event_store.schema import quote_ident

from .common import EVENT_TYPE, StreamChooser, WorkerResult, emit, measured, payload_json, read_spec
from .dbload import RAW_TABLE

#: The advisory lock key of the raw locked shape (any constant: one lock per "schema").
RAW_LOCK_KEY = 160_016
#: Message DB's category of every stream the fleet writes ("category-id" stream names).
MESSAGEDB_CATEGORY = "benchFleet"


def literal(text: str) -> str:
    """A SQL string literal (standard_conforming_strings is on: only quotes are doubled)."""
    return "'" + text.replace("'", "''") + "'"


def locked_message(schema: str, stream: str, version: int, payload: str, event_id: uuid.UUID) -> str:
    """The one simple-query message of the raw locked shape: lock, insert, commit."""
    return (
        f"BEGIN; SELECT pg_advisory_xact_lock({RAW_LOCK_KEY}); "
        f"INSERT INTO {quote_ident(schema)}.{RAW_TABLE} (event_id, stream_id, version, event_type, payload) "
        f"VALUES ({literal(str(event_id))}, {literal(stream)}, {version}, {literal(EVENT_TYPE)}, "
        f"{literal(payload)}::jsonb); COMMIT"
    )


async def _run(spec: dict[str, Any]) -> WorkerResult:
    kind, clients = spec["kind"], int(spec["clients"])
    settings = {"search_path": "message_store,public"} if kind == "messagedb" else None
    conns = await asyncio.gather(*(asyncpg.connect(spec["dsn"], server_settings=settings) for _ in range(clients)))
    chooser = StreamChooser("uniform", int(spec["seed"]), spec.get("prefix", "fleet"))
    counter = [0]

    async def op(i: int) -> tuple[int, str]:
        counter[0] += 1
        n = counter[0]
        stream = chooser.next()
        if kind == "raw_locked":
            # no arguments: asyncpg sends a simple query, the four statements in one message
            await conns[i].execute(locked_message(spec["schema"], stream, n, payload_json(n), uuid.uuid4()))
        else:
            await conns[i].fetchval(
                "SELECT message_store.write_message($1, $2, $3, $4::jsonb)",
                str(uuid.uuid4()), f"{MESSAGEDB_CATEGORY}-{stream.replace('-', '')}", EVENT_TYPE, payload_json(n),
            )
        return 1, "ok"

    return await measured(clients, op, lambda: asyncio.gather(*(c.close() for c in conns)), keep_connections=True)


def main() -> None:
    emit(asyncio.run(_run(read_spec())))


if __name__ == "__main__":
    main()
