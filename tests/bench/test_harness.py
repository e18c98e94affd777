"""The benchmark harness works (issue #4): its pieces, and one tiny run end to end.

Benchmarks themselves never run in ``make test``; this runs the 8-client 1-event append of every
target (raw asyncpg, the library, the peer, the sidecar over gRPC and REST) for half a second each,
and the 32-client edge floors, writes the results and the report to a temporary folder, and checks
their shape. Cases whose tool is missing here (wrk, the eventsourcing library) are skipped by the
harness and listed as such; without Go the Python gRPC client stands in for the compiled one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks import grpcgo
from benchmarks.cases import FLOOR_TARGETS, Case, all_cases, targets
from benchmarks.common import PAYLOAD_BYTES, StreamChooser, latency_summary, payload_json, percentile
from k1s0_event_store.protocol import event_store_pb2 as pb

REPO = Path(__file__).resolve().parents[2]


def test_payload_is_300_bytes() -> None:
    assert len(payload_json(0)) == PAYLOAD_BYTES
    assert len(payload_json(123456, 1763812345.123456)) == PAYLOAD_BYTES


def test_stream_choice() -> None:
    zipf_chooser, uniform_chooser = StreamChooser("zipf", 1), StreamChooser("uniform", 1)
    zipf = Counter(zipf_chooser.next() for _ in range(20_000))
    top, count = zipf.most_common(1)[0]
    assert top == "bench-z0" and count > 0.1 * 20_000  # hot streams
    uniform = Counter(uniform_chooser.next() for _ in range(20_000))
    assert uniform.most_common(1)[0][1] < 5
    assert StreamChooser("hot", 1).next() == "bench-hot"
    a, b = StreamChooser("zipf", 7), StreamChooser("zipf", 7)  # deterministic (fixed seeds)
    assert [a.next() for _ in range(5)] == [b.next() for _ in range(5)]


def test_percentiles() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert percentile(values, 50) == 500.0
    assert percentile(values, 99) == 990.0
    assert percentile(values, 99.9) == 999.0
    summary = latency_summary(list(reversed(values)))
    assert summary["p95_ms"] == 950.0 and summary["max_ms"] == 1000.0


def test_every_target_names_measured_cases() -> None:
    names = {c.name for c in all_cases()}
    assert len(names) == len(all_cases())
    for t in targets():
        assert t.cases and all(c.name in names for c in t.cases), t.text
    # baselines and peers are cases of the run
    for c in all_cases():
        for other in (c.baseline(), c.peer()):
            assert other is None or other in all_cases(), (c, other)
    assert Case("grpc", "append", 32).baseline() == Case("raw", "append", 32)


def test_go_client_requests() -> None:
    """The requests the Go client sends: our protobuf messages, the same streams as the Python client."""
    spec = {"kind": "append", "events": 3, "distribution": "zipf", "seed": 420, "prefix": "grpc"}
    requests, method, per, field = grpcgo.requests(spec)
    assert method.endswith("EventStoreService/AppendEvents") and per == 3 and field == 0
    assert 1000 <= len(requests) <= grpcgo.MAX_REQUESTS
    first = pb.AppendEventsRequest.FromString(requests[0])
    assert len(first.events) == 3 and len(first.events[0].payload_json) == PAYLOAD_BYTES
    assert first.expected_version == pb.EXPECTED_VERSION_ANY  # unset would mean "version 0"
    chooser = StreamChooser("zipf", 420 * 1000, "grpc")
    streams = [pb.AppendEventsRequest.FromString(r).stream_id for r in requests[:50]]
    assert streams == [chooser.next() for _ in range(50)]
    reads, method, per, field = grpcgo.requests(
        {"kind": "read_all", "page_size": 1000, "length": 10_000, "first_sequence": 1})
    assert method.endswith("/ReadAll") and per == 0 and field == pb.ReadAllResponse.EVENTS_FIELD_NUMBER
    assert [pb.ReadAllRequest.FromString(r).after_sequence for r in reads] == list(range(0, 10_000, 1000))


def test_tiny_run(tmp_path: Path) -> None:
    results, docs = tmp_path / "results.json", tmp_path / "docs"
    plots = importlib.util.find_spec("matplotlib") is not None
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "append 1 event, 8 clients", "--warmup", "0.2",
         "--duration", "0.5", "--allow-missing", "--results", str(results), "--docs", str(docs),
         *([] if plots else ["--no-plots"])],
        cwd=REPO, capture_output=True, text=True, timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(results.read_text())
    measured = {r["target"]: r for r in data["cases"]}
    skipped = data["run"]["skipped_cases"]
    assert set(measured) | {name.split(":")[0] for name in skipped} == {"raw", "library", "peer", "grpc", "rest"}
    assert {"raw", "library", "grpc"} <= set(measured)
    for r in measured.values():
        assert r["concurrency"] == 8 and r["events_per_s"] > 0 and r["errors"] == 0, r
        assert r["p50_ms"] <= r["p99_ms"] <= r["p999_ms"]
        assert r["loadgen_cpu_pct"] is not None
    assert measured["library"]["ratio"] is not None  # divided by raw at 8 clients
    assert measured["grpc"]["server_cpu_pct"] is not None and measured["grpc"]["server_rss_mib"] > 0
    # the compiled gRPC client where Go is here (or was built), the Python one standing in otherwise
    go_here = grpcgo.missing() is None
    assert measured["grpc"]["load_generator"] == ("grpc-go" if go_here else "grpc.aio")
    assert (data["run"]["grpc_go_missing"] is None) == go_here
    assert measured["grpc"]["loadgen_cpu_us_per_request"] > 0
    assert data["run"]["machine"]["cpu_cores"] and "PostgreSQL" in data["run"]["machine"]["postgresql"]
    report = (docs / "benchmarks.md").read_text()
    assert "## Targets" in report and "| raw: append 1 event, 8 clients |" in report
    if plots:
        assert (docs / "img" / "bench-append-throughput.png").stat().st_size > 1000


def test_edge_floors(tmp_path: Path) -> None:
    """The edge frameworks alone (benchmarks/floor.py) at 32 clients, and their table in the report;
    with the Go client turned off, as where Go is missing: the Python client stands in, and says so."""
    results, docs = tmp_path / "results.json", tmp_path / "docs"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "alone), 32 clients", "--warmup", "0.2", "--duration", "0.5",
         "--allow-missing", "--no-plots", "--results", str(results), "--docs", str(docs)],
        cwd=REPO, capture_output=True, text=True, timeout=150, env={**os.environ, "BENCH_GO": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(results.read_text())
    measured = {r["target"]: r for r in data["cases"]}
    assert set(measured) <= set(FLOOR_TARGETS) and "floor-grpc" in measured
    assert "floor-rest" in measured or any("aiohttp alone" in name for name in data["run"]["skipped_cases"])
    for r in measured.values():
        assert r["group"] == "floor" and r["concurrency"] == 32 and r["errors"] == 0, r
        assert r["requests_per_s"] > 0 and r["server_cpu_pct"] is not None and r["load_generator"]
    assert measured["floor-grpc"]["load_generator"] == "grpc.aio"
    report = (docs / "benchmarks.md").read_text()
    assert "### Edge floors" in report and "the Go gRPC client was not available" in report
