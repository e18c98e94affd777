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
    return subprocess.run([sys.executable, "-m", "k1s0_sidecar.cli", *args], capture_output=True, text=True,
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
