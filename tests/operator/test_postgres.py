"""The operator's PostgreSQL side on its own: claims under concurrency, the role DSN, deprovisioning."""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

import asyncpg
import pytest

from k1s0_operator._postgres import SchemaConflict, deprovision, inspect, password_from_dsn, provision, role_dsn
from tests.support.postgres import LocalPostgres


def test_role_dsn_keeps_host_port_database_and_options_and_quotes_the_password() -> None:
    dsn = role_dsn("postgresql://admin:adm1n@db.example:6432/k1s0?sslmode=require", "shop_orders_app", "p@ss/w:rd%")
    parts = urlsplit(dsn)
    assert (parts.hostname, parts.port, parts.path, parts.query) == ("db.example", 6432, "/k1s0", "sslmode=require")
    assert parts.username == "shop_orders_app"
    assert password_from_dsn(dsn) == "p@ss/w:rd%"
    assert "adm1n" not in dsn and "admin" not in dsn
    v6 = role_dsn("postgresql://admin@[::1]:5432/db", "r", "x")
    assert urlsplit(v6).hostname == "::1"


async def test_two_concurrent_claims_of_one_schema_one_wins(pg: LocalPostgres) -> None:
    schema = f"claim_{os.getpid()}"
    conns = [await asyncpg.connect(pg.dsn) for _ in range(2)]
    try:
        results = await asyncio.gather(
            provision(conns[0], schema, f"{schema}_app", "pw-one", "ns/one"),
            provision(conns[1], schema, f"{schema}_app", "pw-two", "ns/two"),
            return_exceptions=True,
        )
        conflicts = [r for r in results if isinstance(r, SchemaConflict)]
        assert len(conflicts) == 1, results
        state = await inspect(conns[0], schema, f"{schema}_app")
        winner = "ns/one" if not isinstance(results[0], BaseException) else "ns/two"
        assert state.exists and state.role_exists and state.owner == winner
        # The loser cannot drop what it does not own; the owner can.
        loser = "ns/two" if winner == "ns/one" else "ns/one"
        assert await deprovision(conns[0], schema, f"{schema}_app", loser) is False
        assert (await inspect(conns[0], schema, f"{schema}_app")).exists
        assert await deprovision(conns[0], schema, f"{schema}_app", winner) is True
        state = await inspect(conns[0], schema, f"{schema}_app")
        assert not state.exists and not state.role_exists
    finally:
        for c in conns:
            await c.close()


async def test_an_unclaimed_schema_is_adopted(pg: LocalPostgres) -> None:
    from k1s0_event_store.schema import migrate

    schema = f"adopt_{os.getpid()}"
    conn = await asyncpg.connect(pg.dsn)
    try:
        await migrate(conn, schema)  # as `k1s0-eventstore migrate` would
        assert (await inspect(conn, schema, f"{schema}_app")).owner is None
        assert await provision(conn, schema, f"{schema}_app", "pw", "ns/adopter") == []
        assert (await inspect(conn, schema, f"{schema}_app")).owner == "ns/adopter"
        with pytest.raises(SchemaConflict):
            await provision(conn, schema, f"{schema}_app", "pw", "ns/other")
        await deprovision(conn, schema, f"{schema}_app", "ns/adopter")
    finally:
        await conn.close()
