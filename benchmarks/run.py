"""One benchmark run: its own PostgreSQL (fsync on), the sidecar, a broker; every case; the results.

Schemas on the one server: ``raw`` (the asyncpg baseline's table), ``lib`` (the library), ``peer``
(the eventsourcing table), ``bench`` (the sidecar's; it also holds the 10,000-event stream that the
read cases page through, seeded first so that it is sequences 1..10,000) and ``lag`` (a second
sidecar with the Kafka forwarder on, so it forwards only the lag case's events).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from k1s0_event_store import AppendRequest, EventEnvelope, EventStoreConfig, PostgresEventStore, prepare_append
from k1s0_event_store.schema import migrate
from tests.support.postgres import LocalPostgres, free_port
from tests.support.process import stop_process
from tests.support.sidecar import ServedSidecar

from . import grpcgo, otelsink
from .cases import FLOOR_TARGETS, LAG_RATE, READ_STREAM, READ_STREAM_LENGTH, Case, all_cases
from .common import EVENT_TYPE, SEED, latency_summary, payload
from .dbload import raw_table_ddl
from .harness import Measurement, Timing, measurement, run_processes, run_workers, run_wrk, wrk_binary

SIDECAR_SCHEMA = "bench"
LAG_SCHEMA = "lag"
#: Load-generator processes for the Python gRPC client (2 cores: more would only add scheduling).
GRPC_PROCESSES = 2
#: The load generators, as the report names them.
GO_CLIENT = "grpc-go"
PY_CLIENT = "grpc.aio"
WRK = "wrk"


@dataclass(frozen=True)
class Settings:
    quick: bool
    timing: Timing
    wrk_timing: Timing
    only: str = ""
    #: skip (and list) the cases whose tool is missing instead of failing them (the smoke test)
    allow_missing: bool = False
    #: a folder: sample the sidecar with py-spy during each sidecar case and write its profile there
    profile_dir: Path | None = None
    #: a git revision: the fleet's sidecar cases also run with the sidecar built from it (before/after)
    baseline_rev: str = ""

    @classmethod
    def from_env(cls, quick: bool | None = None, only: str = "") -> Settings:
        if quick is None:
            quick = os.environ.get("BENCH_QUICK", "") not in {"", "0", "false"}
        if quick:
            return cls(True, Timing(0.5, 1.0), Timing(1.0, 1.0), only)
        return cls(False, Timing(1.5, 6.0), Timing(2.0, 6.0), only)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def missing_tool(case: Case) -> str | None:
    """Why a case cannot run here (a tool or package it needs is absent), or None."""
    if case.target == "peer" and importlib.util.find_spec("eventsourcing") is None:
        return "the eventsourcing library is not installed (pip install -e '.[bench]')"
    if case.target in {"rest", "floor-rest"} and wrk_binary() is None:
        return "Debian's wrk is not installed (apt-get install wrk)"
    return None


class Run:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pg = LocalPostgres(fsync=True)
        self.dsn = ""
        self.sidecar: ServedSidecar | None = None
        self.results: dict[Case, Measurement] = {}
        self.failures: dict[Case, str] = {}
        self.skipped: dict[Case, str] = {}
        #: the Go gRPC client (built on first use), or why the Python client stands in for it
        self._go_client: Path | None = None
        self.floor: tuple[subprocess.Popen[str], str, str] | None = None
        self.go_missing: str | None = None
        from .fleetrun import FleetRun

        #: the fleet group (issue #16): its cases, results and failures are its own
        self.fleet = FleetRun(self)

    def go_client(self) -> Path | None:
        """The compiled gRPC load generator; None (the Python client is used) when Go is missing here
        and the run allows missing tools. Otherwise a missing or broken build fails the gRPC cases."""
        if self._go_client is None and self.go_missing is None:
            try:
                log("building the Go gRPC load generator (benchmarks/grpcgo) if its source changed")
                self._go_client = grpcgo.ensure_binary()
            except RuntimeError as exc:
                self.go_missing = str(exc)  # tried once per run
                if self.settings.allow_missing:
                    log(f"  the Python gRPC client stands in: {exc}")
        if self.go_missing is not None and not self.settings.allow_missing:
            raise RuntimeError(self.go_missing)
        return self._go_client

    # -- the environment ---------------------------------------------------------------------

    async def _setup(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            for statement in raw_table_ddl("raw"):
                await conn.execute(statement)
            for schema in ("lib", SIDECAR_SCHEMA, LAG_SCHEMA):
                await migrate(conn, schema)
            await conn.execute("CREATE SCHEMA IF NOT EXISTS peer")
        finally:
            await conn.close()
        if importlib.util.find_spec("eventsourcing") is not None:
            # Imported here: the peer library is the bench extra, absent where only `make test` ran.
            from . import peerload

            peerload.create_table(self.dsn, "peer")
        # the read cases' stream: 10,000 events, the first of the sidecar's schema (sequences 1..10,000)
        store = PostgresEventStore(EventStoreConfig(dsn=self.dsn, schema=SIDECAR_SCHEMA))
        try:
            for start in range(0, READ_STREAM_LENGTH, 1000):
                requests: list[AppendRequest] = [
                    prepare_append(
                        READ_STREAM,
                        [EventEnvelope(EVENT_TYPE, payload(n)) for n in range(start + k * 100, start + k * 100 + 100)],
                        start + k * 100,
                    )
                    for k in range(10)
                ]
                await store.append_batch(requests)
        finally:
            await store.close()

    @contextlib.contextmanager
    def database(self) -> Iterator[None]:
        log("starting PostgreSQL (fsync on)")
        self.dsn = self.pg.start()
        try:
            asyncio.run(self._setup())
            yield
        finally:
            self.pg.destroy()

    @contextlib.contextmanager
    def served(self, schema: str, env: dict[str, str] | None = None) -> Iterator[ServedSidecar]:
        with otelsink.sink() as tracing:  # BENCH_TRACING=1: spans exported to a local sink
            if tracing:
                log("tracing on (BENCH_TRACING=1): every span exported over OTLP/HTTP")
            with self._served(schema, {**tracing, **(env or {})}) as sidecar:
                yield sidecar

    @contextlib.contextmanager
    def _served(self, schema: str, env: dict[str, str] | None = None) -> Iterator[ServedSidecar]:
        sidecar = ServedSidecar(
            self.dsn, schema,
            env={"EVENTSTORE_LOG_LEVEL": "WARNING", "EVENTSTORE_DATABASE_MIN_CONNECTIONS": "5", **(env or {})},
        )
        sidecar.log_path = Path(tempfile.mkstemp(prefix=f"k1s0-bench-sidecar-{schema}-", suffix=".log")[1])
        log(f"starting the sidecar (schema {schema}, log {sidecar.log_path})")
        sidecar.start()
        self.sidecar = sidecar
        try:
            yield sidecar
        finally:
            self.sidecar = None
            sidecar.stop()

    @property
    def server_pid(self) -> int | None:
        if self.sidecar is not None and self.sidecar.proc is not None:
            return self.sidecar.proc.pid
        return None

    # -- cases ---------------------------------------------------------------------------------

    def wanted(self, case: Case) -> bool:
        if self.settings.only and self.settings.only not in case.name:
            return False
        missing = missing_tool(case)
        if missing and self.settings.allow_missing:
            self.skipped[case] = missing
            return False
        return True

    def measure(self, case: Case) -> None:
        if not self.wanted(case):
            return
        log(f"case: {case.name}")
        try:
            m = self._measure(case)
        except Exception as exc:  # one broken case must not lose the rest of the run
            log(f"  FAILED: {exc}")
            self.failures[case] = f"{type(exc).__name__}: {exc}"[:500]
            return
        self.results[case] = m
        log(f"  {m.events_per_s:,.0f} events/s, p50 {m.latency['p50_ms']:.2f} ms, p99 {m.latency['p99_ms']:.2f} ms"
            + (f", {m.conflicts} conflicts" if m.conflicts else "") + (f", {m.errors} errors" if m.errors else ""))

    def _measure(self, case: Case) -> Measurement:
        t = self.settings.timing
        pg = self.pg.pid()
        base: dict[str, Any] = {"dsn": self.dsn, "seed": SEED, "clients": case.concurrency}
        if case.target in {"raw", "library"} and case.operation == "append":
            spec = {**base, "kind": "raw_append" if case.target == "raw" else "lib_append",
                    "schema": "raw" if case.target == "raw" else "lib", "events": case.events,
                    "distribution": case.distribution, "expected": case.distribution == "hot"}
            return run_workers("dbload", [spec], t, server_pid=None, postgres_pid=pg)
        if case.target == "peer":
            spec = {**base, "schema": "peer", "events": case.events}
            return run_workers("peerload", [spec], t, server_pid=None, postgres_pid=pg)
        if case.target in {"raw", "library"}:
            kind = {"raw": "raw_", "library": "lib_"}[case.target] + case.operation.replace("-", "_")
            spec = {**base, "kind": kind, "schema": SIDECAR_SCHEMA, "page_size": case.page_size,
                    "stream": READ_STREAM, "length": READ_STREAM_LENGTH, "first_sequence": 1}
            return run_workers("dbload", [spec], t, server_pid=None, postgres_pid=pg)
        if case.target in FLOOR_TARGETS:
            return self._floor(case)
        assert self.sidecar is not None, "sidecar cases need a running sidecar"
        before = self.batches()
        if case.target == "grpc":
            m = self._grpc(case, self.sidecar.grpc_target, self.server_pid)
        elif case.target == "rest":
            m = self._rest(case)
        else:
            raise ValueError(f"no runner for {case}")
        after = self.batches()
        if case.operation == "append" and after[1] > before[1]:
            # requests per group-commit transaction over the case (warm-up included)
            m.extra["requests_per_transaction"] = (after[0] - before[0]) / (after[1] - before[1])
        return m

    def batches(self) -> tuple[float, float]:
        """The sidecar's group-commit histogram: (requests, transactions) so far."""
        assert self.sidecar is not None
        values = {"sum": 0.0, "count": 0.0}
        try:
            with urllib.request.urlopen(f"{self.sidecar.base_url}/metrics", timeout=5) as r:
                for line in r.read().decode().splitlines():
                    for key in values:
                        if line.startswith(f"eventstore_group_commit_batch_size_{key} "):
                            values[key] = float(line.split()[-1])
        except OSError:
            pass
        return values["sum"], values["count"]

    def profile_path(self, case: Case) -> Path | None:
        if self.settings.profile_dir is None:
            return None
        slug = re.sub(r"[^a-z0-9]+", "-", case.name.lower()).strip("-")
        return self.settings.profile_dir / f"{slug}.collapsed.txt"

    def _grpc(self, case: Case, target: str, server_pid: int | None) -> Measurement:
        """A gRPC case: the Go client, except for expected_version appends (it sends fixed requests;
        those must track each stream's version) and where Go is missing under ``--allow-missing``."""
        def spec(clients: int, seed: int) -> dict[str, Any]:
            s: dict[str, Any] = {"target": target, "clients": clients, "seed": seed}
            if case.operation == "append":
                s.update(kind="append", events=case.events, distribution=case.distribution,
                         expected=case.distribution == "hot", prefix="grpc")
            else:
                s.update(kind=case.operation.replace("-", "_"), page_size=case.page_size, stream=READ_STREAM,
                         length=READ_STREAM_LENGTH, first_sequence=1)
            return s

        go = self.go_client() if case.distribution != "hot" else None
        if go is not None:  # one process: it is multi-threaded
            m = run_workers("grpcgo", [{**spec(case.concurrency, SEED * 10), "binary": str(go)}],
                            self.settings.timing, server_pid=server_pid, postgres_pid=self.pg.pid(),
                            profile=self.profile_path(case))
            m.extra["load_generator"] = GO_CLIENT
            return m
        processes = max(1, min(GRPC_PROCESSES, case.concurrency))
        specs = [
            spec(case.concurrency // processes + (1 if p < case.concurrency % processes else 0), SEED * 10 + p)
            for p in range(processes)
        ]
        m = run_workers("grpcload", specs, self.settings.timing, server_pid=server_pid,
                        postgres_pid=self.pg.pid(), profile=self.profile_path(case))
        m.extra["load_generator"] = PY_CLIENT
        return m

    def _rest(self, case: Case, base_url: str | None = None, server_pid: int | None = None) -> Measurement:
        if base_url is None:
            assert self.sidecar is not None
            base_url, server_pid = self.sidecar.base_url, self.server_pid
        if case.operation == "append":
            body = json.dumps(payload(0), separators=(",", ":"))
            args = [case.distribution, str(case.events), "1" if case.distribution == "hot" else "0", str(SEED),
                    "rest", body]
            script, per_ok = "append.lua", case.events
        else:
            mode = "stream" if case.operation == "read-stream" else "all"
            args = [mode, READ_STREAM if mode == "stream" else "1", str(READ_STREAM_LENGTH), str(case.page_size)]
            script, per_ok = "read.lua", case.page_size  # every page of the range is full
        m = run_wrk(script, base_url, case.concurrency, self.settings.wrk_timing, args,
                    events_per_ok=per_ok, server_pid=server_pid, postgres_pid=self.pg.pid(),
                    profile=self.profile_path(case))
        m.extra["load_generator"] = WRK
        return m

    # -- the edge floors -----------------------------------------------------------------------

    @contextlib.contextmanager
    def floor_server(self) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
        """``benchmarks/floor.py``: the gRPC and REST edges with a fixed answer and no store behind."""
        grpc_port, http_port = free_port(), free_port()
        spec = json.dumps({"grpc_port": grpc_port, "http_port": http_port})
        log("starting the edge-floor server (benchmarks/floor.py)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                             os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.floor", spec], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
                                env=env)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "READY":
                proc.kill()
                raise RuntimeError(f"the floor server did not start: {line!r} {proc.communicate()[1][-1500:]}")
            yield proc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
        finally:
            stop_process(proc)

    def _floor(self, case: Case) -> Measurement:
        assert self.floor is not None, "floor cases need the floor server"
        proc, grpc_target, base_url = self.floor
        if case.target == "floor-grpc":
            return self._grpc(case, grpc_target, proc.pid)
        return self._rest(case, base_url, proc.pid)

    def measure_lag(self, case: Case) -> None:
        """Subscription delivery and Kafka forwarding, one window, on a sidecar with the forwarder on."""
        if not self.wanted(case):
            return
        log(f"case: {case.name}")
        try:
            self.results[case] = self._lag(case)
        except Exception as exc:
            log(f"  FAILED: {exc}")
            self.failures[case] = f"{type(exc).__name__}: {exc}"[:500]
            return
        m = self.results[case]
        log(f"  appended {m.events_per_s:,.0f} events/s; subscription p99 {m.extra.get('subscription_p99_ms')} ms, "
            f"forwarding p99 {m.extra.get('forwarding_p99_ms')} ms")

    def _lag(self, case: Case) -> Measurement:
        from k1s0_event_store.sidecar_config import DEFAULT_TOPIC
        from tests.forwarding.support import create_topics
        from tests.support.kafka import LocalKafka

        kafka = LocalKafka()
        kafka.start()
        try:
            asyncio.run(create_topics(kafka.bootstrap, DEFAULT_TOPIC))
            env = {"EVENTSTORE_KAFKA_BROKERS": kafka.bootstrap, "EVENTSTORE_KAFKA_ENABLE_IDEMPOTENCE": "false"}
            with self.served(LAG_SCHEMA, env) as sidecar:
                t = self.settings.timing
                timing = Timing(t.warmup + 1.0, max(t.duration, 3.0))
                grace = 3.0
                jobs: list[tuple[str, dict[str, Any]]] = [
                    ("lagload", {"kind": "subscribe", "target": sidecar.grpc_target, "grace": grace}),
                    ("lagload", {"kind": "consume", "bootstrap": kafka.bootstrap, "topic": DEFAULT_TOPIC,
                                 "grace": grace}),
                    ("lagload", {"kind": "pace", "target": sidecar.grpc_target, "rate": LAG_RATE, "seed": SEED,
                                 "events": case.events}),
                ]
                results, monitor, failures = run_processes(jobs, timing, server_pid=self.server_pid,
                                                           postgres_pid=self.pg.pid(), profile=self.profile_path(case))
        finally:
            kafka.stop()
        m = measurement([results[2]], timing, monitor, failures)
        m.extra = {"rate": LAG_RATE}
        for name, got in (("subscription", results[0]), ("forwarding", results[1])):
            # an event appended in the window but not received within the grace period counts as
            # infinitely late, so a receiver that falls behind cannot show a good p99
            missing = max(0, m.events - got.events)
            summary = latency_summary(got.latencies_ms + [math.inf] * missing)
            m.extra.update({
                f"{name}_events": got.events,
                f"{name}_undelivered": missing,
                f"{name}_p50_ms": summary["p50_ms"],
                f"{name}_p99_ms": summary["p99_ms"],
                f"{name}_p999_ms": summary["p999_ms"],
            })
        m.extra["loadgen_cpu_pct_receivers"] = 100.0 * (results[0].cpu_s + results[1].cpu_s) / timing.duration
        return m

    def run(self) -> None:
        cases = all_cases()
        with self.database():
            for case in cases:
                if case.target in {"raw", "library", "peer"}:
                    self.measure(case)
            sidecar_cases = [c for c in cases if c.target in {"grpc", "rest"}]
            if any(self.wanted(c) for c in sidecar_cases):
                with self.served(SIDECAR_SCHEMA):
                    # reads first, while the sidecar's schema holds only the read stream
                    for case in sorted(sidecar_cases, key=lambda c: c.operation == "append"):
                        self.measure(case)
            floor_cases = [c for c in cases if c.target in FLOOR_TARGETS]
            if any(self.wanted(c) for c in floor_cases):
                with self.floor_server() as self.floor:
                    for case in floor_cases:
                        self.measure(case)
                self.floor = None
            for case in cases:
                if case.target == "lag":
                    self.measure_lag(case)
            self.fleet.run_all()



