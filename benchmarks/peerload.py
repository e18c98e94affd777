"""Load generator (a process of its own): the peer, the ``eventsourcing`` library from PyPI.

Its PostgreSQL persistence (``PostgresApplicationRecorder``, psycopg 3, a connection pool) is
synchronous, so clients are threads, each with one append in flight, like our clients' tasks. Each
append stores the same 300-byte event(s) as the other cases as one ``StoredEvent`` per event, in
one ``insert_events`` call (one transaction; the recorder locks its table so that insert order is
commit order, as our library's advisory lock does). Each thread appends to streams of its own,
chosen uniformly, and keeps their versions, so no append conflicts.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any
from urllib.parse import urlparse

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

from .common import UNIFORM_STREAMS, WorkerResult, await_window, emit, payload_json, read_spec

TABLE = "bench_stored_events"
TOPIC = "benchmarks:BenchEvent"


def datastore(dsn: str, schema: str, clients: int) -> PostgresDatastore:
    url = urlparse(dsn)
    return PostgresDatastore(
        dbname=(url.path or "/postgres").lstrip("/"),
        host=url.hostname or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password or "",
        pool_size=clients,
        max_overflow=0,
        schema=schema,
    )


def create_table(dsn: str, schema: str) -> None:
    store = datastore(dsn, schema, 1)
    try:
        PostgresApplicationRecorder(store, events_table_name=TABLE).create_table()
    finally:
        store.close()


def run(spec: dict[str, Any]) -> WorkerResult:
    clients, per, seed = int(spec["clients"]), int(spec["events"]), int(spec["seed"])
    store = datastore(spec["dsn"], spec["schema"], clients)
    recorder = PostgresApplicationRecorder(store, events_table_name=TABLE)
    # open the pool's connections before the window (the pool fills in the background)
    with store.transaction(commit=False) as curs:
        curs.execute("SELECT 1")
    window = await_window()
    results = [WorkerResult(duration_s=window.duration) for _ in range(clients)]
    cpu: dict[str, float] = {}
    # a fresh id space per process: earlier cases' streams are never appended to again
    base = uuid.uuid4().int & ~((1 << 40) - 1)

    def client(i: int) -> None:
        import random

        rng = random.Random(seed * 1000 + i)
        versions: dict[uuid.UUID, int] = {}
        result = results[i]
        streams = max(1, UNIFORM_STREAMS // clients)
        n = 0
        time.sleep(max(0.0, window.begin_at - time.time()))
        while True:
            started_wall = time.time()
            if started_wall >= window.until:
                return
            originator = uuid.UUID(int=base + i * streams + rng.randrange(streams))
            first = versions.get(originator, 0) + 1
            events = [StoredEvent(originator, first + k, TOPIC, payload_json(n + k).encode()) for k in range(per)]
            n += per
            t0 = time.perf_counter()
            outcome = "ok"
            try:
                recorder.insert_events(events)
                versions[originator] = first + per - 1
            except Exception as exc:
                outcome = f"{type(exc).__name__}: {exc}"
            result.count(window, started_wall, time.perf_counter() - t0, per, outcome)

    def sample_cpu() -> None:
        time.sleep(max(0.0, window.measure_from - time.time()))
        cpu["from"] = time.process_time()
        time.sleep(max(0.0, window.until - time.time()))
        cpu["until"] = time.process_time()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=sample_cpu))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    total = WorkerResult(duration_s=window.duration)
    for r in results:
        total.merge(r)
    total.cpu_s = cpu.get("until", 0.0) - cpu.get("from", 0.0)
    return total


def main() -> None:
    emit(run(read_spec()))


if __name__ == "__main__":
    main()
