"""The benchmark harness works (issue #4): its pieces, and one tiny run end to end.

Benchmarks themselves never run in ``make test``; this runs the 8-client 1-event append of every
target (raw asyncpg, the library, the peer, the sidecar over gRPC and REST) for half a second each,
writes the results and the report to a temporary folder, and checks their shape. Cases whose tool
is missing here (wrk, the eventsourcing library) are skipped by the harness and listed as such.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from benchmarks.cases import Case, all_cases, targets
from benchmarks.common import PAYLOAD_BYTES, StreamChooser, latency_summary, payload_json, percentile

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
    assert data["run"]["machine"]["cpu_cores"] and "PostgreSQL" in data["run"]["machine"]["postgresql"]
    report = (docs / "benchmarks.md").read_text()
    assert "## Targets" in report and "| raw: append 1 event, 8 clients |" in report
    if plots:
        assert (docs / "img" / "bench-append-throughput.png").stat().st_size > 1000
