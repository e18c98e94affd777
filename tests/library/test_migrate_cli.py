"""`k1s0-eventstore migrate` and `version` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg

from k1s0_event_store.schema import LATEST_VERSION, applied_version
from tests.conftest import drop_schema, new_schema_name


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    return subprocess.run([sys.executable, "-m", "k1s0_cli", *args], capture_output=True, text=True,
                          timeout=60, env=env)


async def test_migrate_creates_then_reports_up_to_date(pg_dsn: str) -> None:
    schema = new_schema_name("cli")
    try:
        first = run("migrate", "--database-url", pg_dsn, "--schema", schema)
        assert first.returncode == 0, first.stderr
        assert f"applied migrations {', '.join(str(v) for v in range(1, LATEST_VERSION + 1))}" in first.stdout
        again = run("migrate", "--database-url", pg_dsn, "--schema", schema)
        assert again.returncode == 0 and "up to date" in again.stdout
        conn = await asyncpg.connect(pg_dsn)
        try:
            assert await applied_version(conn, schema) == LATEST_VERSION
        finally:
            await conn.close()
    finally:
        await drop_schema(pg_dsn, schema)


def test_migrate_refuses_bad_input() -> None:
    bad = run("migrate", "--database-url", "postgresql://x@127.0.0.1:1/x", "--schema", 'x"; drop table y')
    assert bad.returncode == 2 and "not a valid PostgreSQL identifier" in bad.stderr
    missing = run("migrate", "--schema", "ok")
    assert missing.returncode == 2 and "--database-url" in missing.stderr
    down = run("migrate", "--database-url", "postgresql://x@127.0.0.1:1/x", "--schema", "ok")
    assert down.returncode == 1 and "migration failed" in down.stderr


def test_version() -> None:
    out = run("version")
    assert out.returncode == 0 and out.stdout.startswith("k1s0-eventstore 0.1.0")


async def test_an_upgraded_schema_with_events_gets_parallel_commits_only_when_asked(pg_dsn: str) -> None:
    """A schema that had events before migration 4 keeps appends serial (sidecars of the previous
    release may still read it) until `migrate --parallel-commits`."""
    from k1s0_event_store.schema import MIGRATIONS, parallel_commits

    schema = new_schema_name("up")
    conn = await asyncpg.connect(pg_dsn)
    try:
        # The schema as the previous release left it: migrations 1-3 and an event.
        async with conn.transaction():
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(
                f'CREATE TABLE "{schema}".schema_migrations (version INTEGER PRIMARY KEY,'
                " description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW())"
            )
            for m in MIGRATIONS[:3]:
                await conn.execute(m.render(schema))
                await conn.execute(
                    f'INSERT INTO "{schema}".schema_migrations (version, description) VALUES ($1, $2)',
                    m.version,
                    m.description,
                )
            await conn.execute(
                f"INSERT INTO \"{schema}\".event_streams (id, aggregate_type, current_version) VALUES ('a-1', 'a', 1)"
            )
            await conn.execute(
                f'INSERT INTO "{schema}".events (event_id, stream_id, version, event_type, payload)'
                " VALUES (gen_random_uuid(), 'a-1', 1, 'Old', '{}')"
            )
        upgraded = run("migrate", "--database-url", pg_dsn, "--schema", schema)
        assert upgraded.returncode == 0, upgraded.stderr
        assert "applied migrations 4" in upgraded.stdout and "parallel commits off" in upgraded.stdout
        assert not await parallel_commits(conn, schema)
        turned_on = run("migrate", "--database-url", pg_dsn, "--schema", schema, "--parallel-commits")
        assert turned_on.returncode == 0 and "parallel commits on" in turned_on.stdout
        assert await parallel_commits(conn, schema)
        fresh = new_schema_name("fresh")
        created = run("migrate", "--database-url", pg_dsn, "--schema", fresh)
        assert "parallel commits on" in created.stdout
        await drop_schema(pg_dsn, fresh)
    finally:
        await conn.close()
        await drop_schema(pg_dsn, schema)
