"""Running the fleet group (``fleet.py`` says what its cases are) on the run's PostgreSQL.

Order: the database-side cases (raw INSERT, raw locked shape, Message DB, Emmett), then for each
build and each of "direct" and "via the delay proxy": 16 sidecars are started on one schema of
their own (the first alone, so that it migrates the schema, then the other 15 at once), the 16 x 2
cases run, 12 sidecars are stopped, the 4 x 8 cases run, 3 more are stopped, the 1 x 32 cases run.
Each (build, proxy) pair gets a fresh schema, so one build never migrates another's tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.support.postgres import free_ports
from tests.support.process import stop_process
from tests.support.sidecar import ServedSidecar

from . import baseline, grpcgo, npmpeers
from .common import SEED, payload
from .dbload import raw_table_ddl
from .fleet import BASELINE, CURRENT, PROXY_DELAY_MS, FleetCase, fleet_cases
from .harness import REPO, Measurement, run_workers, run_wrk, wrk_binary

if TYPE_CHECKING:
    from .run import Run

RAW_SCHEMA = "fleet_raw"
#: Distinct gRPC requests the Go client cycles through in a quick run (a full run: grpcgo.MAX_REQUESTS).
QUICK_GRPC_REQUESTS = 10_000
#: How long N sidecars started at once may take to be ready (they share 2 cores while importing).
FLEET_READY_TIMEOUT = 180.0


def schema_for(build: str, proxy: bool) -> str:
    return "fleet" + ("_base" if build == BASELINE else "") + ("_proxy" if proxy else "")


def proxied_dsn(dsn: str, port: int) -> str:
    """The same DSN with the delay proxy's port."""
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit(":", 1)[0] if ":" in parts.netloc.rsplit("@", 1)[-1] else parts.netloc
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


class FleetRun:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.settings = run.settings
        self.results: dict[FleetCase, Measurement] = {}
        self.failures: dict[FleetCase, str] = {}
        self.skipped: dict[FleetCase, str] = {}
        self.cases = fleet_cases(bool(self.settings.baseline_rev))
        self.proxy: subprocess.Popen[str] | None = None
        self.proxy_port = 0
        self.peer_dsn: dict[str, str] = {}
        self.peer_error: dict[str, str] = {}
        #: (commit, worktree) of --baseline-rev, or why it could not be made
        self.baseline: tuple[str, Path] | None = None
        self.baseline_error = ""
        #: median `SELECT 1` round trip to PostgreSQL, direct and through the proxy (ms): its calibration
        self.proxy_check: dict[str, float] = {}

    # -- which cases -------------------------------------------------------------------------------

    def missing_tool(self, case: FleetCase) -> str | None:
        if case.target == "rest" and wrk_binary() is None:
            return "Debian's wrk is not installed (apt-get install wrk)"
        if case.target in {"messagedb", "emmett"}:
            return npmpeers.missing()
        if case.target == "grpc":
            return grpcgo.missing()
        return None

    def wanted(self, case: FleetCase) -> bool:
        if self.settings.only and self.settings.only not in case.name:
            return False
        why = self.missing_tool(case)
        if why and self.settings.allow_missing:
            self.skipped[case] = why
            return False
        return True

    # -- helpers -------------------------------------------------------------------------------------

    @property
    def pg_pid(self) -> int | None:
        return self.run.pg.pid()

    def dsn(self, proxy: bool) -> str:
        return proxied_dsn(self.run.dsn, self.proxy_port) if proxy else self.run.dsn

    def others(self, proxy: bool) -> dict[str, Sequence[int]] | None:
        return {"proxy": [self.proxy.pid]} if proxy and self.proxy is not None else None

    def measure(self, case: FleetCase, how: Callable[[], Measurement]) -> None:
        from .run import log

        log(f"case: {case.name}")
        try:
            m = how()
        except Exception as exc:  # one broken case must not lose the rest of the run
            log(f"  FAILED: {exc}")
            self.failures[case] = f"{type(exc).__name__}: {exc}"[:500]
            return
        if m.ops == 0 and not m.first_error:  # (a window shorter than one request: say so, not just 0/s)
            m.first_error = "no request completed inside the measured window"
        self.results[case] = m
        proxy_cpu = m.extra.get("proxy_cpu_pct")
        log(f"  {m.ops_per_s:,.0f} appends/s ({m.events_per_s:,.0f} events/s), p50 {m.latency['p50_ms']:.2f} ms, "
            f"p99 {m.latency['p99_ms']:.2f} ms"
            + (f", sidecar CPU {m.server_cpu_pct:.0f} %" if m.server_cpu_pct is not None else "")
            + (f", PostgreSQL CPU {m.postgres_cpu_pct:.0f} %" if m.postgres_cpu_pct is not None else "")
            + (f", proxy CPU {proxy_cpu:.0f} %" if proxy_cpu is not None else "")
            + (f", {m.errors} errors: {m.first_error[:200]}" if m.errors else "")
            + (f" ({m.first_error})" if m.ops == 0 else ""))

    @contextlib.contextmanager
    def delay_proxy(self) -> Iterator[None]:
        from .run import log

        spec = {"upstream_host": "127.0.0.1", "upstream_port": self.run.pg.port, "delay_ms": PROXY_DELAY_MS}
        log(f"starting the delay proxy ({PROXY_DELAY_MS} ms each way) in front of PostgreSQL")
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.delayproxy", json.dumps(spec)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().split()
            if len(line) != 2 or line[0] != "READY":
                proc.kill()
                raise RuntimeError(f"the delay proxy did not start: {line} {proc.communicate()[1][-1500:]}")
            self.proxy, self.proxy_port = proc, int(line[1])
            self.proxy_check = asyncio.run(round_trips(self.run.dsn, self.dsn(True)))
            log(f"  SELECT 1 round trip: {self.proxy_check['direct_ms']:.3f} ms direct, "
                f"{self.proxy_check['proxied_ms']:.3f} ms through the proxy (medians)")
            yield
        finally:
            self.proxy = None
            stop_process(proc)

    # -- database-side cases ---------------------------------------------------------------------------

    def setup_database_side(self, wanted: list[FleetCase]) -> None:
        from .run import log

        async def raw() -> None:
            conn = await asyncpg.connect(self.run.dsn)
            try:
                for statement in raw_table_ddl(RAW_SCHEMA):
                    await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(raw())
        targets = {c.target for c in wanted}
        if targets & {"messagedb", "emmett"}:
            try:
                log("installing the npm peers (benchmarks/node/package.json) into benchmarks/.build/node")
                npmpeers.ensure_installed()
            except RuntimeError as exc:
                self.peer_error = {"messagedb": str(exc), "emmett": str(exc)}
                return
        if "messagedb" in targets:
            try:
                self.peer_dsn["messagedb"] = asyncio.run(npmpeers.install_message_db(self.run.dsn))
            except Exception as exc:
                self.peer_error["messagedb"] = f"installing Message DB's SQL failed: {exc}"
        if "emmett" in targets:
            try:
                self.peer_dsn["emmett"] = npmpeers.install_emmett(self.run.dsn)
            except Exception as exc:
                self.peer_error["emmett"] = str(exc)

    def database_case(self, case: FleetCase) -> Measurement:
        t = self.settings.timing
        if case.target in self.peer_error:
            raise RuntimeError(self.peer_error[case.target])
        if case.target == "raw-insert":
            spec = {"kind": "raw_append", "dsn": self.dsn(case.proxy), "schema": RAW_SCHEMA, "events": case.events,
                    "distribution": "uniform", "expected": False, "clients": case.clients, "seed": SEED}
            return run_workers("dbload", [spec], t, server_pid=None, postgres_pid=self.pg_pid,
                               others=self.others(case.proxy))
        module = "emmettload" if case.target == "emmett" else "fleetload"
        dsn = self.peer_dsn[case.target] if case.target in self.peer_dsn else self.dsn(case.proxy)
        specs: list[dict[str, Any]] = [
            {"kind": case.target.replace("raw-locked", "raw_locked"), "dsn": dsn, "schema": RAW_SCHEMA,
             "clients": case.clients, "seed": SEED * 100 + case.processes * 10 + i,
             "prefix": f"{case.target[:2]}{case.processes}p{i}"}
            for i in range(case.processes)
        ]
        return run_workers(module, specs, t, server_pid=None, postgres_pid=self.pg_pid, others=self.others(case.proxy))

    # -- sidecar cases -----------------------------------------------------------------------------------

    def sidecar_case(self, case: FleetCase, sidecars: list[ServedSidecar]) -> Measurement:
        before = [appended(s) for s in sidecars]
        m = self._sidecar_case(case, sidecars)
        after = [appended(s) for s in sidecars]
        shares = [a - b for a, b in zip(after, before, strict=True) if a is not None and b is not None]
        if len(shares) == len(sidecars) and sum(shares) > 0:
            # did every sidecar get its share? (events each appended over the case, warm-up included)
            m.extra["sidecar_share_min"] = min(shares) * len(shares) / sum(shares)
        return m

    def _sidecar_case(self, case: FleetCase, sidecars: list[ServedSidecar]) -> Measurement:
        pids = [s.proc.pid for s in sidecars if s.proc is not None]
        assert len(pids) == case.processes, (len(pids), case)
        prefix = f"f{case.build[0]}{'p' if case.proxy else ''}{case.processes}-{case.target}"
        if case.target == "rest":
            body = json.dumps(payload(0), separators=(",", ":"))
            args = [case.distribution, str(case.events), "0", str(SEED + case.processes), prefix, body]
            # one wrk; its threads (one per sidecar, two for a single sidecar) spread over the sidecars
            return run_wrk("append.lua", sidecars[0].base_url, case.processes * case.clients,
                           self.settings.wrk_timing, args, events_per_ok=case.events, server_pid=pids,
                           postgres_pid=self.pg_pid, threads=max(2, case.processes),
                           env={"K1S0_WRK_TARGETS": ",".join(f"127.0.0.1:{s.rest_port}" for s in sidecars)},
                           others=self.others(case.proxy))
        go = self.run.go_client()
        if go is None:
            raise RuntimeError(f"the Go gRPC client is not available: {self.run.go_missing}")
        spec = {"kind": "append", "target": sidecars[0].grpc_target, "targets": [s.grpc_target for s in sidecars],
                "clients": case.processes * case.clients, "per_connection": min(4, case.clients),
                "events": case.events, "distribution": case.distribution, "expected": False, "prefix": prefix,
                "seed": SEED * 10 + case.processes, "binary": str(go),
                # A sidecar before the seed-exact expected_version refuses -2; for it, unset meant "any".
                "any_version_unset": case.build == BASELINE,
                # a quick run's few seconds need fewer distinct requests (they take a while to prepare)
                "max_requests": QUICK_GRPC_REQUESTS if self.settings.quick else grpcgo.MAX_REQUESTS}
        return run_workers("grpcgo", [spec], self.settings.timing, server_pid=pids, postgres_pid=self.pg_pid,
                           others=self.others(case.proxy))

    def _spawn(self, sidecar: ServedSidecar, tree: Path) -> None:
        log_file = sidecar.log_path.open("ab")
        sidecar.proc = subprocess.Popen([sys.executable, *baseline.serve_command(tree)],
                                        env=sidecar.environment(), stdout=log_file, stderr=subprocess.STDOUT)

    @contextlib.contextmanager
    def sidecar_fleet(self, build: str, proxy: bool, count: int) -> Iterator[list[ServedSidecar]]:
        from .run import log

        if build == BASELINE:
            if self.baseline is None:
                raise RuntimeError(f"--baseline-rev: {self.baseline_error}")
            tree = self.baseline[1]
        else:
            tree = REPO
        schema = schema_for(build, proxy)
        env = {"EVENTSTORE_LOG_LEVEL": "WARNING", "EVENTSTORE_DATABASE_MIN_CONNECTIONS": "5",
               "PYTHONPATH": baseline.pythonpath(tree)}
        # every port distinct, from one pick (grpcio binds with SO_REUSEPORT, so two sidecars on one
        # gRPC port would even both start and share its connections)
        ports = free_ports(2 * count)
        sidecars = [ServedSidecar(self.dsn(proxy), schema, env=env, ports=(ports[2 * i], ports[2 * i + 1]))
                    for i in range(count)]
        log(f"starting {count} sidecars ({build} build{', via the delay proxy' if proxy else ''}, schema {schema}, "
            f"logs {sidecars[0].log_path.parent}/k1s0-sidecar-*.log)")
        try:
            self._spawn(sidecars[0], tree)  # alone first: it migrates the schema
            sidecars[0].wait_ready(FLEET_READY_TIMEOUT)
            for s in sidecars[1:]:
                self._spawn(s, tree)
            for s in sidecars[1:]:
                s.wait_ready(FLEET_READY_TIMEOUT)
            yield sidecars
        finally:
            stop(sidecars)

    def sidecar_group(self, build: str, proxy: bool, cases: list[FleetCase]) -> None:
        sizes = sorted({c.processes for c in cases}, reverse=True)
        try:
            with self.sidecar_fleet(build, proxy, sizes[0]) as sidecars:
                for size in sizes:
                    stop(sidecars[size:])
                    del sidecars[size:]
                    for case in cases:
                        if case.processes == size:
                            self.measure(case, functools.partial(self.sidecar_case, case, sidecars))
        except Exception as exc:  # the fleet did not start: its cases fail, the run goes on
            from .run import log

            log(f"  FAILED: {exc}")
            for case in cases:
                if case not in self.results:
                    self.failures.setdefault(case, f"{type(exc).__name__}: {exc}"[:500])

    # -- the group -------------------------------------------------------------------------------------

    def run_all(self) -> None:
        from .run import log

        wanted = [c for c in self.cases if self.wanted(c)]
        if not wanted:
            return
        if self.settings.baseline_rev and any(c.build == BASELINE for c in wanted):
            try:
                self.baseline = baseline.prepare(self.settings.baseline_rev)
                log(f"baseline build: {self.settings.baseline_rev} = {self.baseline[0][:12]} in {self.baseline[1]}")
            except RuntimeError as exc:
                self.baseline_error = str(exc)
        try:
            with contextlib.ExitStack() as stack:
                if any(c.proxy for c in wanted):
                    stack.enter_context(self.delay_proxy())
                database_side = [c for c in wanted if not c.sidecar]
                if database_side:
                    self.setup_database_side(database_side)
                    for case in database_side:
                        self.measure(case, functools.partial(self.database_case, case))
                for build in (CURRENT, BASELINE):
                    for proxy in (False, True):
                        group = [c for c in wanted if c.sidecar and c.build == build and c.proxy == proxy]
                        if group:
                            self.sidecar_group(build, proxy, group)
        except Exception as exc:  # (the proxy or the set-up failed) the other groups' results are kept
            log(f"  the fleet group FAILED: {exc}")
            for case in wanted:
                if case not in self.results:
                    self.failures.setdefault(case, f"{type(exc).__name__}: {exc}"[:500])


async def round_trips(direct: str, proxied: str, n: int = 200) -> dict[str, float]:
    """Median ``SELECT 1`` round trip (ms) on one connection straight to PostgreSQL and one through the proxy."""
    out: dict[str, float] = {}
    for name, dsn in (("direct_ms", direct), ("proxied_ms", proxied)):
        conn = await asyncpg.connect(dsn)
        try:
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                await conn.fetchval("SELECT 1")
                times.append((time.perf_counter() - t0) * 1000.0)
        finally:
            await conn.close()
        out[name] = statistics.median(times)
    return out


def appended(sidecar: ServedSidecar) -> float | None:
    """Events the sidecar appended so far (its ``/metrics``), or None where a build does not say."""
    try:
        with urllib.request.urlopen(f"{sidecar.base_url}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("eventstore_events_appended_total "):
                    return float(line.split()[-1])
    except OSError:
        pass
    return None


def stop(sidecars: Sequence[ServedSidecar]) -> None:
    """SIGTERM every sidecar at once, then wait for each (killed if it takes over its grace)."""
    for s in sidecars:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.send_signal(signal.SIGTERM)
    for s in sidecars:
        s.stop()
