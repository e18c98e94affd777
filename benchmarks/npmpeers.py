"""The fleet group's peers from the npm registry: Message DB's SQL and Emmett's PostgreSQL store.

``make bench`` installs the pinned packages of ``benchmarks/node/package.json`` (and its lock file)
with ``npm ci`` into ``benchmarks/.build/node`` (git-ignored; node_modules is never committed), once,
and again whenever the lock file changes. Each peer gets a database of its own on the run's
PostgreSQL:

- Message DB (``@eventide/message-db``): its SQL files, in the order its own install scripts run
  them (read from those scripts), into the database ``message_store``; writers call
  ``message_store.write_message`` (``benchmarks.fleetload``, kind ``messagedb``).
- Emmett (``@event-driven-io/emmett-postgresql``): its schema created once by
  ``benchmarks/node/emmettload.mjs --setup`` in the database ``emmett``; writers are Node processes
  of that script (started through ``benchmarks.emmettload``).
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import re
import shutil
import subprocess
from pathlib import Path

import asyncpg

HERE = Path(__file__).resolve().parent
SOURCE_DIR = HERE / "node"
NODE_DIR = HERE / ".build" / "node"
EMMETT_SCRIPT = "emmettload.mjs"
MESSAGE_DB = NODE_DIR / "node_modules" / "@eventide" / "message-db" / "database"
MESSAGE_DB_DATABASE = "message_store"
EMMETT_DATABASE = "emmett"


def missing() -> str | None:
    """Why the npm peers cannot run here (Node or npm absent), or None."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install nodejs npm): the Message DB and Emmett peers need it"
    return None


def ensure_installed() -> Path:
    """The peers' packages in ``benchmarks/.build/node`` (``npm ci`` when the lock file changed)."""
    why = missing()
    if why:
        raise RuntimeError(why)
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    lock = NODE_DIR / "package-lock.json"
    current = lock.exists() and filecmp.cmp(lock, SOURCE_DIR / "package-lock.json", shallow=False) and (
        NODE_DIR / "node_modules" / ".package-lock.json").exists()
    if not current:
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(SOURCE_DIR / name, NODE_DIR / name)
        done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"npm ci in {NODE_DIR} failed: {done.stderr[-1500:]}")
    # the script runs from here, beside node_modules, so that its imports resolve
    shutil.copyfile(SOURCE_DIR / EMMETT_SCRIPT, NODE_DIR / EMMETT_SCRIPT)
    return NODE_DIR


def message_db_files() -> list[Path]:
    """Message DB's SQL files in the order of its own install scripts."""
    files = [MESSAGE_DB / "roles" / "message-store.sql", MESSAGE_DB / "schema" / "message-store.sql",
             MESSAGE_DB / "tables" / "messages.sql"]
    for script in ("install-functions.sh", "install-indexes.sh"):
        text = (MESSAGE_DB / script).read_text()
        files += [MESSAGE_DB / rel for rel in re.findall(r"run_psql_file \$base/(\S+\.sql)", text)]
    return files


async def _create_database(admin_dsn: str, name: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')  # (a constant of this module)
    finally:
        await conn.close()
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


async def install_message_db(admin_dsn: str) -> str:
    """Message DB in its own database; returns that database's DSN."""
    dsn = await _create_database(admin_dsn, MESSAGE_DB_DATABASE)
    conn = await asyncpg.connect(dsn)
    try:
        for path in message_db_files():
            await conn.execute(path.read_text())  # (no arguments: simple query, several statements)
    finally:
        await conn.close()
    return dsn


def install_emmett(admin_dsn: str) -> str:
    """Emmett's schema in its own database; returns that database's DSN."""
    dsn = asyncio.run(_create_database(admin_dsn, EMMETT_DATABASE))
    done = subprocess.run(["node", EMMETT_SCRIPT, json.dumps({"dsn": dsn, "setup": True})], cwd=NODE_DIR,
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or "DONE" not in done.stdout:
        raise RuntimeError(f"creating Emmett's schema failed: {done.stdout[-500:]} {done.stderr[-1500:]}")
    return dsn
