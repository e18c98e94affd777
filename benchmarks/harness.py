"""Running one case: start its load-generator processes on a common window, watch the server, collect.

The harness process itself only orchestrates: it sleeps while the load generators work, and a
``Monitor`` thread samples the server's CPU and RSS (the sidecar, and PostgreSQL's processes) at
the edges of the measured window.
"""

from __future__ import annotations

import json
import math
import os
import resource
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

from .common import WorkerResult, latency_summary
from .profile import Sampler

REPO = Path(__file__).resolve().parent.parent
WRK_DIR = Path(__file__).resolve().parent / "wrk"
#: Seconds between sending the window to the (ready) load generators and its start.
START_MARGIN = 0.2
#: How long a load generator may take to connect and say READY.
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Timing:
    warmup: float
    duration: float


@dataclass
class Measurement:
    """What one case measured (latencies in ms, CPU as % of one core over the window)."""

    ops: int
    events: int
    errors: int
    conflicts: int
    duration_s: float
    latency: dict[str, float]
    loadgen_cpu_pct: float
    server_cpu_pct: float | None = None
    server_rss_mib: float | None = None
    postgres_cpu_pct: float | None = None
    first_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def events_per_s(self) -> float:
        return self.events / self.duration_s if self.duration_s else 0.0

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.duration_s if self.duration_s else 0.0


#: The server under test: one process, several (a fleet of sidecars: their CPU is summed, the RSS
#: is the largest one's), or None (cases straight to PostgreSQL).
ServerPids = int | Sequence[int] | None


class Monitor(threading.Thread):
    """Samples CPU time of the server (and PostgreSQL) at the window's edges, and the server's peak RSS.

    ``others`` names further processes whose CPU is sampled the same way and reported in the
    measurement's ``extra`` as ``<name>_cpu_pct`` (the fleet's delay proxy)."""

    def __init__(
        self, server_pid: ServerPids, postgres_pid: int | None, start_at: float, until: float,
        profile: Path | None = None, others: dict[str, Sequence[int]] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        pids = [] if server_pid is None else [server_pid] if isinstance(server_pid, int) else list(server_pid)
        self.sampler = (
            Sampler(pids[0], start_at, until - start_at, profile) if profile is not None and pids else None
        )
        self.servers = [psutil.Process(pid) for pid in pids]
        self.server = self.servers[0] if self.servers else None
        self.others = {name: [psutil.Process(pid) for pid in group] for name, group in (others or {}).items()}
        self.others_cpu: list[dict[str, float]] = []
        self.postgres_pid = postgres_pid
        # the last sample is taken a little before the window ends: at its end the load generators
        # finish and close their connections, and backends that exit drop out of the sum
        self.start_at, self.until = start_at, until - min(0.1, 0.05 * (until - start_at))
        self.server_cpu: list[float] = []
        self.pg_cpu: list[dict[int, float]] = []
        self.sampled_at: list[float] = []
        self.rss_peak = 0

    def _pg_cpu(self) -> dict[int, float]:
        """CPU seconds of the postmaster and each backend, by pid.

        From ``/proc/PID/schedstat`` (nanoseconds): ``/proc/PID/stat`` counts in 10 ms ticks, and 128
        backends that each work a few milliseconds in a window would all round down to nothing.
        """
        if not self.postgres_pid:
            return {}
        procs: list[psutil.Process] = []
        for _ in range(5):  # a backend exiting while the process table is read makes children() fail
            try:
                parent = psutil.Process(self.postgres_pid)
                procs = [parent, *parent.children(recursive=True)]
                break
            except psutil.Error:
                time.sleep(0.005)
        times: dict[int, float] = {}
        for p in procs:
            try:
                with open(f"/proc/{p.pid}/schedstat") as f:
                    times[p.pid] = int(f.read().split()[0]) / 1e9
            except (OSError, ValueError, IndexError):
                pass
        return times

    @staticmethod
    def _cpu(procs: Sequence[psutil.Process]) -> float:
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += float(t.user + t.system)
            except psutil.Error:
                pass
        return total

    def _server_cpu(self) -> float:
        return self._cpu(self.servers)

    def _sample(self) -> None:
        self.server_cpu.append(self._server_cpu())
        self.pg_cpu.append(self._pg_cpu())
        self.others_cpu.append({name: self._cpu(group) for name, group in self.others.items()})
        self.sampled_at.append(time.time())

    def run(self) -> None:
        if self.sampler is not None:
            self.sampler.start()
        time.sleep(max(0.0, self.start_at - time.time()))
        self._sample()
        while time.time() < self.until:
            for server in self.servers:
                try:
                    self.rss_peak = max(self.rss_peak, server.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(min(0.2, max(0.0, self.until - time.time())))
        self._sample()
        if self.sampler is not None:
            self.sampler.join()

    def fill(self, m: Measurement) -> None:
        # the interval between the two samples as taken (on a busy machine they can be late)
        span = self.sampled_at[1] - self.sampled_at[0] if len(self.sampled_at) == 2 else self.until - self.start_at
        if self.server is not None and len(self.server_cpu) == 2:
            m.server_cpu_pct = 100.0 * (self.server_cpu[1] - self.server_cpu[0]) / span
            m.server_rss_mib = self.rss_peak / (1024 * 1024)
        if self.postgres_pid and len(self.pg_cpu) == 2:
            # per process: backends that started in the window count whole; those that ended in it
            # are missed (a lower bound; the load generators keep their connections for the window)
            before, after = self.pg_cpu
            used = sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())
            m.postgres_cpu_pct = 100.0 * used / span
        if len(self.others_cpu) == 2:
            for name in self.others:
                m.extra[f"{name}_cpu_pct"] = 100.0 * (self.others_cpu[1][name] - self.others_cpu[0][name]) / span


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "sidecar"), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    return env


def run_processes(
    jobs: list[tuple[str, dict[str, Any]]],
    timing: Timing,
    *,
    server_pid: ServerPids,
    postgres_pid: int | None,
    profile: Path | None = None,
    others: dict[str, Sequence[int]] | None = None,
) -> tuple[list[WorkerResult], Monitor, list[str]]:
    """Start one ``python -m benchmarks.<module>`` per job; once all say READY, send them one common
    window; wait; return their results (a failed process gives an empty result and a message)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.{module}", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env=_python_env(),
        )
        for module, spec in jobs
    ]
    deadline = time.monotonic() + READY_TIMEOUT
    for p in procs:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = p.stdout.readline() if ready else ""  # READY, or EOF if the process died
        if line.strip() != "READY":
            for q in procs:
                q.kill()
            _, err = p.communicate()
            raise RuntimeError(f"load generator did not get ready: {line.strip()!r} {err[-1500:]}")
    begin_at = time.time() + START_MARGIN
    window = json.dumps({"begin_at": begin_at, "warmup": timing.warmup, "duration": timing.duration})
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(window + "\n")
        p.stdin.flush()
    monitor = Monitor(server_pid, postgres_pid, begin_at + timing.warmup, begin_at + timing.warmup + timing.duration,
                      profile, others)
    monitor.start()
    limit = START_MARGIN + timing.warmup + timing.duration + 90
    results: list[WorkerResult] = []
    failures: list[str] = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=limit)  # (stdin is closed here)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            failures.append(f"load generator timed out: {err[-500:]}")
            results.append(WorkerResult(duration_s=timing.duration))
            continue
        line = out.strip().splitlines()[-1] if out.strip() else ""
        if p.returncode != 0 or not line.startswith("{"):
            failures.append(f"load generator exited {p.returncode}: {err[-1500:]}")
            results.append(WorkerResult(duration_s=timing.duration))
            continue
        results.append(WorkerResult.from_json(line))
    monitor.join()
    return results, monitor, failures


def measurement(
    results: list[WorkerResult], timing: Timing, monitor: Monitor | None, failures: list[str]
) -> Measurement:
    total = WorkerResult(duration_s=timing.duration)
    for r in results:
        total.merge(r)
    if failures and total.ops == 0:
        raise RuntimeError("; ".join(failures))
    m = Measurement(
        ops=total.ops, events=total.events, errors=total.errors, conflicts=total.conflicts,
        duration_s=timing.duration, latency=latency_summary(total.latencies_ms),
        loadgen_cpu_pct=100.0 * total.cpu_s / timing.duration,
        first_error=total.first_error or "; ".join(failures)[:300],
    )
    if monitor is not None:
        monitor.fill(m)
    return m


def run_workers(
    module: str, specs: list[dict[str, Any]], timing: Timing, *, server_pid: ServerPids, postgres_pid: int | None,
    profile: Path | None = None, others: dict[str, Sequence[int]] | None = None,
) -> Measurement:
    """One case whose processes all run the same load generator: their results merged."""
    results, monitor, failures = run_processes(
        [(module, s) for s in specs], timing, server_pid=server_pid, postgres_pid=postgres_pid, profile=profile,
        others=others,
    )
    return measurement(results, timing, monitor, failures)


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def run_wrk(
    script: str,
    url: str,
    connections: int,
    timing: Timing,
    args: list[str],
    *,
    events_per_ok: int,
    server_pid: ServerPids,
    postgres_pid: int | None,
    profile: Path | None = None,
    threads: int | None = None,
    env: dict[str, str] | None = None,
    others: dict[str, Sequence[int]] | None = None,
) -> Measurement:
    """Debian's wrk (C, LuaJIT) against the REST edge: a warm-up run, then the measured run.

    ``threads`` overrides the thread count (2, or 1 for one connection); ``env`` is added to wrk's
    environment (``K1S0_WRK_TARGETS`` spreads the threads over several servers, see ``append.lua``)."""
    wrk = wrk_binary()
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    threads = threads or max(1, min(2, connections))
    wrk_env = {**os.environ, **env} if env else None

    def command(seconds: float) -> list[str]:
        return [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, math.ceil(seconds))}s",
                "--timeout", "30s", "-s", str(WRK_DIR / script), url, "--", *args]

    if timing.warmup > 0:
        subprocess.run(command(timing.warmup), capture_output=True, text=True, check=False, env=wrk_env)
    duration = max(1, math.ceil(timing.duration))
    start = time.time() + 0.3
    monitor = Monitor(server_pid, postgres_pid, start, start + duration, profile, others)
    monitor.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command(duration), capture_output=True, text=True, check=False, env=wrk_env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    monitor.join()
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-800:]} {done.stderr[-800:]}")
    data = json.loads(line.removeprefix("BENCHJSON "))
    seconds = data["duration_us"] / 1e6
    events = data["ok"] * events_per_ok
    errors = data["failures"] + data["socket_errors"]
    m = Measurement(
        ops=data["requests"], events=events, errors=errors, conflicts=data["conflicts"], duration_s=seconds,
        latency={k: data[k] for k in ("p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms")},
        loadgen_cpu_pct=100.0 * ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / seconds,
        first_error=f"{errors} failed requests" if errors else "",
    )
    monitor.fill(m)
    return m
