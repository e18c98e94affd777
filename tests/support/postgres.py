"""A real PostgreSQL server for tests and benchmarks, started from Debian's binaries.

PostgreSQL refuses to run as root, so when we are root the server runs as the ``postgres`` system
user, with its data, socket and log in a temporary folder that user owns. It listens on 127.0.0.1
on a free port; ``stop()``, ``kill()`` and ``start()`` let failure tests take it away for real.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg

from k1s0_event_store.schema import migrate
from tests.support.process import Started

DEBIAN_BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15)]


def find_bin_dir() -> Path:
    env = os.environ.get("K1S0_PG_BIN_DIR")
    candidates = [Path(env)] if env else DEBIAN_BIN_DIRS
    for d in candidates:
        if (d / "postgres").exists() and (d / "initdb").exists():
            return d
    raise RuntimeError(
        "no PostgreSQL server binaries found (looked in "
        + ", ".join(str(d) for d in candidates)
        + "); install Debian's postgresql package (`.ci/run` does) or set K1S0_PG_BIN_DIR"
    )


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are chosen (ports picked one
    at a time can repeat, since a closed port is free again)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


class LocalPostgres(Started):
    """One throw-away PostgreSQL cluster."""

    def __init__(self, *, fsync: bool = False, port: int | None = None, extra: dict[str, str] | None = None) -> None:
        self.bin_dir = find_bin_dir()
        self.port = port or free_port()
        self.fsync = fsync
        self.extra = extra or {}
        self.root = Path(tempfile.mkdtemp(prefix="k1s0-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.user = "postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, user: str, password: str | None = None, database: str = "postgres") -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as_user, *args], check=True, capture_output=True, cwd=self.root)

    def init(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
            "--locale=C", "--auth-local=trust", "--auth-host=md5", "--no-sync",
        )
        # Superuser over TCP without a password (tests); other roles use their passwords (md5),
        # so a test can show that the least-privilege role really is what the sidecar connects as.
        hba = self.data / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 md5\n")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "300",
            "shared_buffers": "256MB",
            "logging_collector": "off",
        }
        settings.update(self.extra)
        with (self.data / "postgresql.conf").open("a") as f:
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")

    def start(self) -> str:
        if not (self.data / "PG_VERSION").exists():
            self.init()
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return None
        return int(pidfile.read_text().split()[0])

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash, not a shutdown); children exit when it is gone."""
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def version(self) -> str:
        out = subprocess.run([str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True)
        return out.stdout.strip()

    def __exit__(self, *exc: object) -> None:
        self.destroy()  # a throw-away cluster: its files go too

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


_schema_counter = itertools.count(1)


def new_schema_name(prefix: str = "t") -> str:
    return f"{prefix}_{os.getpid()}_{next(_schema_counter)}"


async def create_schema(dsn: str, prefix: str = "t") -> str:
    """A freshly migrated schema of a name no other test (or test process) uses."""
    name = new_schema_name(prefix)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn, name)
    finally:
        await conn.close()
    return name


async def drop_schema(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()
