"""What every load generator shares: the event, stream choice, the timing window, the result.

A load generator is a separate process started by the harness with one JSON argument (its spec).
It connects, prints ``READY``, reads the case's wall-clock ``Window`` (one JSON line on stdin, the
same for every process of the case), runs ``warmup`` seconds unmeasured, records every operation
that completes inside the next ``duration`` seconds (as wrk does), and prints one JSON line (its
``WorkerResult``). Loops are closed (each client
has one request in flight), like the eventstore-benchmarks suite and ``wrk``.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: Size of one event's payload as JSON text (the issue's "300-byte event").
PAYLOAD_BYTES = 300
EVENT_TYPE = "BenchEvent"
#: Stream choice (the eventstore-benchmarks method: many small streams, and hot streams).
UNIFORM_STREAMS = 100_000
ZIPF_STREAMS = 10_000
ZIPF_EXPONENT = 1.1
SEED = 42

def payload(n: int, t: float = 0.0) -> dict[str, Any]:
    """An event payload whose compact JSON is ``PAYLOAD_BYTES`` long (``t``: a send timestamp)."""
    body: dict[str, Any] = {"n": n, "t": t, "pad": ""}
    used = len(json.dumps(body, separators=(",", ":")))
    body["pad"] = "x" * max(0, PAYLOAD_BYTES - used)
    return body


def payload_json(n: int, t: float = 0.0) -> str:
    return json.dumps(payload(n, t), separators=(",", ":"))


class StreamChooser:
    """Picks the stream of the next append: ``uniform`` over many, ``zipf`` (hot streams), or ``hot`` (one)."""

    def __init__(self, distribution: str, seed: int, prefix: str = "bench") -> None:
        self.distribution = distribution
        self.prefix = prefix
        self._rng = random.Random(seed)
        self._cdf: list[float] = []
        if distribution == "zipf":
            weights = [1.0 / math.pow(k, ZIPF_EXPONENT) for k in range(1, ZIPF_STREAMS + 1)]
            total = sum(weights)
            acc = 0.0
            for w in weights:
                acc += w / total
                self._cdf.append(acc)
        elif distribution not in {"uniform", "hot"}:
            raise ValueError(f"unknown stream distribution {distribution!r}")

    def next(self) -> str:
        if self.distribution == "uniform":
            return f"{self.prefix}-u{self._rng.randrange(UNIFORM_STREAMS)}"
        if self.distribution == "zipf":
            k = min(bisect.bisect_left(self._cdf, self._rng.random()), ZIPF_STREAMS - 1)
            return f"{self.prefix}-z{k}"
        return f"{self.prefix}-hot"


@dataclass(frozen=True)
class Window:
    """One wall-clock window shared by every process of a case (``time.time()`` seconds)."""

    begin_at: float
    warmup: float
    duration: float

    @property
    def measure_from(self) -> float:
        return self.begin_at + self.warmup

    @property
    def until(self) -> float:
        return self.begin_at + self.warmup + self.duration

    @classmethod
    def from_json(cls, text: str) -> Window:
        data = json.loads(text)
        return cls(float(data["begin_at"]), float(data["warmup"]), float(data["duration"]))


def await_window() -> Window:
    """Say ``READY`` (connections are open) and wait for the harness to send the common window."""
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("the harness went away before sending the window")
    return Window.from_json(line)


@dataclass
class WorkerResult:
    ops: int = 0
    events: int = 0
    errors: int = 0
    conflicts: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    #: CPU seconds this process used inside the measured window (all its threads).
    cpu_s: float = 0.0
    duration_s: float = 0.0
    first_error: str = ""

    def merge(self, other: WorkerResult) -> None:
        self.ops += other.ops
        self.events += other.events
        self.errors += other.errors
        self.conflicts += other.conflicts
        self.latencies_ms.extend(other.latencies_ms)
        self.cpu_s += other.cpu_s
        self.duration_s = max(self.duration_s, other.duration_s)
        self.first_error = self.first_error or other.first_error

    def count(self, window: Window, started_wall: float, elapsed: float, events: int, outcome: str) -> None:
        """Count one finished operation (``outcome``: "ok", "conflict" or an error description) if it
        ended inside the measured window."""
        ended_wall = started_wall + elapsed
        if ended_wall < window.measure_from or ended_wall > window.until:
            return
        self.ops += 1
        self.latencies_ms.append(elapsed * 1000.0)
        if outcome == "ok":
            self.events += events
        elif outcome == "conflict":
            self.conflicts += 1
        else:
            self.errors += 1
            self.first_error = self.first_error or outcome[:300]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerResult:
        return cls(**json.loads(text))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values) / 100.0 - 1e-9))  # (1e-9: 99.9 % of 1000 is 999)
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    values = sorted(latencies_ms)
    return {
        "p50_ms": percentile(values, 50),
        "p95_ms": percentile(values, 95),
        "p99_ms": percentile(values, 99),
        "p999_ms": percentile(values, 99.9),
        "max_ms": values[-1] if values else math.nan,
    }


#: One operation of a closed loop: given the client index, do one request; return
#: (events it carried, outcome) with outcome "ok", "conflict" or an error description.
Operation = Callable[[int], Awaitable[tuple[int, str]]]


async def closed_loop(clients: int, op: Operation, window: Window) -> WorkerResult:
    """Run ``clients`` concurrent loops of ``op`` through ``window``; measure inside it."""
    result = WorkerResult(duration_s=window.duration)
    cpu: dict[str, float] = {}

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, window.measure_from - time.time()))
        cpu["from"] = time.process_time()
        await asyncio.sleep(max(0.0, window.until - time.time()))
        cpu["until"] = time.process_time()

    async def client(i: int) -> None:
        while True:
            started_wall = time.time()
            if started_wall >= window.until:
                return
            t0 = time.perf_counter()
            try:
                events, outcome = await op(i)
            except Exception as exc:  # a failed request counts as an error, the loop goes on
                events, outcome = 0, f"{type(exc).__name__}: {exc}"
            result.count(window, started_wall, time.perf_counter() - t0, events, outcome)

    await asyncio.sleep(max(0.0, window.begin_at - time.time()))
    sampler = asyncio.create_task(sample_cpu())
    await asyncio.gather(*(client(i) for i in range(clients)))
    await sampler
    result.cpu_s = cpu.get("until", 0.0) - cpu.get("from", 0.0)
    return result


#: How long a load generator keeps its database connections after the window: the harness samples
#: PostgreSQL's backends at the window's end, and a backend that has exited by then is not counted.
LINGER_S = 0.5


async def linger(window: Window) -> None:
    """Wait until ``LINGER_S`` past the window before closing connections (see ``LINGER_S``)."""
    await asyncio.sleep(max(0.0, window.until + LINGER_S - time.time()))


async def measured(clients: int, op: Operation, close: Callable[[], Awaitable[Any]], *,
                   keep_connections: bool = False) -> WorkerResult:
    """A worker's measurement: say READY, run ``clients`` loops of ``op`` through the harness's window,
    then ``close`` (the connections); ``keep_connections``: not before ``linger``."""
    window = await_window()
    try:
        result = await closed_loop(clients, op, window)
        if keep_connections:
            await linger(window)
        return result
    finally:
        await close()


def read_spec() -> dict[str, Any]:
    """The spec a worker was started with (its one command-line argument, JSON)."""
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python -m {sys.argv[0]} '<json spec>'")
    spec: dict[str, Any] = json.loads(sys.argv[1])
    return spec


def emit(result: WorkerResult) -> None:
    sys.stdout.write(result.to_json() + "\n")
    sys.stdout.flush()
