"""A real ``k1s0-eventstore serve`` process for black-box tests (REST and gRPC on free ports)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from tests.support.postgres import create_schema, drop_schema, free_ports


class ServedSidecar:
    def __init__(self, dsn: str, schema: str, *, env: dict[str, str] | None = None, migrate: bool = True,
                 ports: tuple[int, int] | None = None) -> None:
        self.dsn = dsn
        self.schema = schema
        # Several sidecars started together take their ports from one free_ports() call: ports
        # picked one call at a time can repeat (a port closed after the pick is free again).
        self.rest_port, self.grpc_port = ports or free_ports(2)
        self.extra_env = env or {}
        self.migrate = migrate
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="k1s0-sidecar-", suffix=".log")[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
        env.update(
            {
                "EVENTSTORE_DATABASE_URL": self.dsn,
                "EVENTSTORE_DATABASE_SCHEMA": self.schema,
                "EVENTSTORE_DATABASE_MIGRATE": "true" if self.migrate else "false",
                "EVENTSTORE_DATABASE_MIN_CONNECTIONS": "1",
                "EVENTSTORE_SERVER_HOST": "127.0.0.1",
                "EVENTSTORE_SERVER_PORT": str(self.rest_port),
                "EVENTSTORE_SERVER_GRPC_PORT": str(self.grpc_port),
                "EVENTSTORE_AUTH_MODE": "none",
                "EVENTSTORE_KAFKA_BROKERS": "",
                "EVENTSTORE_SERVER_SHUTDOWN_GRACE_SECONDS": "10",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60) -> ServedSidecar:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "k1s0_cli", "serve"], env=self.environment(), stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"sidecar not ready in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the graceful path. Returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


@asynccontextmanager
async def served_schema(dsn: str, prefix: str, *, env: dict[str, str] | None = None,
                        prepare: Callable[[str], Awaitable[None]] | None = None) -> AsyncIterator[ServedSidecar]:
    """A sidecar process serving a freshly migrated schema of its own, dropped afterwards.

    ``prepare`` gets the schema's name before the sidecar starts. The process is started and
    stopped off the event loop: a key server the test runs on this loop must keep answering."""
    schema = await create_schema(dsn, prefix)
    try:
        if prepare is not None:
            await prepare(schema)
        served = ServedSidecar(dsn, schema, env=env)
        await asyncio.to_thread(served.start)
        try:
            yield served
        finally:
            await asyncio.to_thread(served.stop)
    finally:
        await drop_schema(dsn, schema)
