"""The fleet benchmark group's pieces (issue #16), without running the whole fleet.

- the delay proxy forwards every byte, both ways, in order, and adds its delay to each round trip;
- the Zipf stream choice follows its law (rank k drawn in proportion to 1 / k^s);
- the fleet's records, ratios, targets and tables in the report, from measurements made up here;
- the raw one-message locked shape is one message that PostgreSQL runs as lock + insert + commit;
- one tiny end-to-end run of the 4 x 8 cases through the proxy (raw locked shape, and the sidecars
  over REST and gRPC where wrk and Go are here), in a temporary folder (about 20-40 s).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from benchmarks import delayproxy, fleet, report
from benchmarks.common import ZIPF_EXPONENT, ZIPF_STREAMS, StreamChooser, latency_summary
from benchmarks.dbload import RAW_TABLE, raw_table_ddl
from benchmarks.fleetload import locked_message
from benchmarks.fleetrun import proxied_dsn
from benchmarks.harness import Measurement
from tests.support.postgres import LocalPostgres

REPO = Path(__file__).resolve().parents[2]


# -- the delay proxy ---------------------------------------------------------------------------------


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _round_trips(port: int, n: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    times = []
    for i in range(n):
        message = i.to_bytes(4, "big") * 25
        t0 = time.perf_counter()
        writer.write(message)
        await writer.drain()
        assert await reader.readexactly(len(message)) == message
        times.append(time.perf_counter() - t0)
    writer.close()
    return times


def test_proxy_forwards_bytes_and_adds_delay() -> None:
    delay_ms = 5.0  # large enough to stand out from a loaded machine's scheduling noise

    async def main() -> None:
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        echo_port = echo.sockets[0].getsockname()[1]
        proxy = await delayproxy.serve("127.0.0.1", echo_port, delay_ms)
        port = proxy.sockets[0].getsockname()[1]
        direct = statistics.median(await _round_trips(echo_port, 20))
        proxied = await _round_trips(port, 20)
        # every round trip crosses the proxy twice: at least 2 x the delay, never less
        assert min(proxied) >= 2 * delay_ms / 1000
        assert statistics.median(proxied) >= direct + 2 * delay_ms / 1000
        # 4 MB each way, written in pieces on two connections at once: every byte, in order
        blob = os.urandom(4 * 1024 * 1024)

        async def bulk() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)

            async def send() -> None:
                for i in range(0, len(blob), 100_000):
                    writer.write(blob[i:i + 100_000])
                    await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            got = await reader.read(-1)  # until the proxy closes: our EOF went through, then the echo's
            await sender
            writer.close()
            return got

        results = await asyncio.wait_for(asyncio.gather(bulk(), bulk()), 60)
        assert all(r == blob for r in results)
        proxy.close()
        echo.close()

    loop = delayproxy.new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_proxy_process_speaks_its_protocol() -> None:
    """``python -m benchmarks.delayproxy``: READY with its port, forwards, stops on SIGTERM."""
    async def echo_server() -> tuple[asyncio.Server, int]:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]

    loop = asyncio.new_event_loop()
    server, echo_port = loop.run_until_complete(echo_server())
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.delayproxy",
         json.dumps({"upstream_host": "127.0.0.1", "upstream_port": echo_port, "delay_ms": 0.25})],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        ready, port = proc.stdout.readline().split()
        assert ready == "READY"
        times = loop.run_until_complete(_round_trips(int(port), 10))
        assert min(times) >= 0.0005
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
        loop.close()


def test_proxied_dsn() -> None:
    assert proxied_dsn("postgresql://postgres@127.0.0.1:5432/postgres", 6000) == \
        "postgresql://postgres@127.0.0.1:6000/postgres"
    assert proxied_dsn("postgresql://u:p@127.0.0.1:5432/db?sslmode=disable", 7) == \
        "postgresql://u:p@127.0.0.1:7/db?sslmode=disable"


# -- the Zipf streams ------------------------------------------------------------------------------------


def test_zipf_streams_follow_their_law() -> None:
    draws = 200_000
    chooser = StreamChooser("zipf", 3, "z")
    counts = Counter(int(chooser.next().removeprefix("z-z")) for _ in range(draws))
    assert max(counts) < ZIPF_STREAMS and min(counts) >= 0
    norm = sum(1 / k ** ZIPF_EXPONENT for k in range(1, ZIPF_STREAMS + 1))
    for rank in (0, 1, 2, 9, 99):
        expected = draws / (rank + 1) ** ZIPF_EXPONENT / norm
        # within 5 standard deviations of a binomial count
        assert abs(counts[rank] - expected) < 5 * math.sqrt(expected), (rank, counts[rank], expected)
    top10 = sum(counts[k] for k in range(10)) / draws
    expected_top10 = sum(1 / k ** ZIPF_EXPONENT for k in range(1, 11)) / norm
    assert abs(top10 - expected_top10) < 0.01
    # the tail is reached too: many distinct streams, not only the hot ones
    assert len(counts) > ZIPF_STREAMS / 3


# -- records, ratios, targets and the report -----------------------------------------------------------


def _measurement(rate: float, p99: float = 10.0, events: int = 1, sidecar_cpu: float | None = None) -> Measurement:
    ops = int(rate * 2)
    return Measurement(
        ops=ops, events=ops * events, errors=0, conflicts=0, duration_s=2.0,
        latency={**latency_summary([p99 / 2] * 98 + [p99] * 2)},
        loadgen_cpu_pct=10.0, server_cpu_pct=sidecar_cpu, postgres_cpu_pct=50.0,
    )


def test_fleet_records_ratios_and_report(tmp_path: Path) -> None:
    F = fleet.FleetCase
    results = {
        F("raw-insert", 1, 32): _measurement(8000),
        F("raw-insert", 1, 32, proxy=True): _measurement(4000),
        F("raw-locked", 16, 2): _measurement(3600),
        F("messagedb", 1, 32): _measurement(2700),
        F("messagedb", 16, 2): _measurement(2000),
        F("emmett", 16, 2): _measurement(1600),
        F("rest", 1, 32): _measurement(4000, sidecar_cpu=100.0),
        F("rest", 16, 2): _measurement(3800, p99=20.0, sidecar_cpu=120.0),
        F("rest", 16, 2, build=fleet.BASELINE): _measurement(200, p99=400.0),
        F("grpc", 1, 32): _measurement(5000),
        F("grpc", 16, 2): _measurement(2500, p99=30.0),
        F("grpc", 16, 2, proxy=True): _measurement(1000),
        F("grpc", 16, 2, 100): _measurement(100, events=100),
    }
    results[F("rest", 16, 2)].extra["sidecar_share_min"] = 0.97
    results[F("grpc", 16, 2, proxy=True)].extra["proxy_cpu_pct"] = 35.0
    failed = {F("emmett", 1, 32): "RuntimeError: npm is not installed"}
    info = {"started": "s", "finished": "f", "quick": True, "warmup_s": 0.5, "duration_s": 1.0,
            "machine": {k: "x" for k in ("cpu_model", "cpu_cores", "virtualisation", "ram_gib", "os", "kernel",
                                          "postgresql", "postgresql_settings", "postgresql_filesystem", "python",
                                          "wrk", "grpc_go", "git_commit")} | {"load_average_at_start": [1.0]},
            "fleet_baseline": {"rev": "main~3", "commit": "abcdef1234567890"},
            "fleet_proxy_check": {"direct_ms": 0.081, "proxied_ms": 0.652}}
    data = report.build({}, {}, info, results, failed)
    by_name = {r["name"]: r for r in data["cases"]}
    rest16 = by_name[F("rest", 16, 2).name]
    assert rest16["group"] == "fleet" and rest16["layout"] == "16 x 2" and rest16["concurrency"] == 32
    assert rest16["ratio_to_single"] == pytest.approx(3800 / 4000, abs=1e-3)
    assert rest16["ratio_to_raw"] == rest16["ratio"] == pytest.approx(3800 / 8000, abs=1e-3)
    assert rest16["ratio_to_messagedb"] == pytest.approx(3800 / 2000, abs=1e-3)
    assert rest16["ratio_to_emmett"] == pytest.approx(3800 / 1600, abs=1e-3)
    assert rest16["ratio_to_baseline_build"] == pytest.approx(3800 / 200, abs=1e-3)
    assert rest16["server_cpu_us_per_request"] == pytest.approx(120.0 / 100 * 2.0 / 7600 * 1e6, abs=0.1)
    # proxied cases divide by the raw INSERT through the proxy; 100-event ones by the 100-row raw (not run here)
    assert by_name[F("grpc", 16, 2, proxy=True).name]["ratio_to_raw"] == pytest.approx(0.25, abs=1e-3)
    assert by_name[F("grpc", 16, 2, proxy=True).name]["ratio_to_messagedb"] is None
    assert by_name[F("grpc", 16, 2, 100).name]["events_per_s"] == pytest.approx(10_000, abs=1)
    assert by_name[F("grpc", 16, 2, 100).name]["ratio_to_raw"] is None
    assert by_name[F("messagedb", 16, 2).name]["ratio_to_single"] == pytest.approx(2000 / 2700, abs=1e-3)
    assert data["failed_cases"] == {F("emmett", 1, 32).name: "RuntimeError: npm is not installed"}

    targets = {t["target"]: t for t in data["targets"] if t["target"].startswith("fleet")}
    assert len(targets) == 4
    single = next(t for text, t in targets.items() if "1 x 32" in text)
    assert single["worst"] is None and not single["met"]  # the Zipf cases were not measured
    assert single["values"][F("rest", 16, 2).name] == pytest.approx(0.95, abs=1e-3)
    proxy_target = next(t for text, t in targets.items() if "proxy" in text)
    assert proxy_target["values"][F("grpc", 16, 2, proxy=True).name] == pytest.approx(0.25, abs=1e-3)
    assert not proxy_target["met"]  # 0.25 < 0.3 and REST through the proxy was not measured

    md = report.markdown(data, [], tmp_path)
    assert "### Fleet: N sidecars on one PostgreSQL and one schema" in md
    assert "`main~3 (abcdef123456)`" in md
    assert "took 0.081 ms straight to PostgreSQL and 0.652 ms through the proxy" in md
    for title in ("1-event appends, distinct streams |", "100-event appends", "via the 0.25 ms proxy"):
        assert any(line.startswith("#### Fleet:") and title.rstrip(" |") in line for line in md.splitlines()), title
    row = next(line for line in md.splitlines() if line.startswith("| sidecar REST, 16 x 2 | this |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "3,800" and cells[7] == "0.95" and cells[8] == "0.47" and cells[9] == "1.90"
    assert cells[11] == "19.00" and cells[16] == "0.97"
    assert "| sidecar REST, 16 x 2 | base |" in md
    assert "Fleet (`--only fleet`)" in md  # the method section explains the group
    if importlib.util.find_spec("matplotlib") is not None:
        made = report.plots(data, tmp_path / "img")
        assert (tmp_path / "img" / "bench-fleet.png") in made
        assert (tmp_path / "img" / "bench-fleet.png").stat().st_size > 1000


def test_fleet_cases() -> None:
    cases = fleet.fleet_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)) and all(n.startswith("fleet ") for n in names)
    assert {c.processes * c.clients for c in cases} == {fleet.TOTAL_CLIENTS}
    sidecar = [c for c in cases if c.sidecar]
    assert len(sidecar) == 2 * 3 * 3 + 2 * 3  # targets x layouts x workloads, and the proxy variant
    assert not any(c.build == fleet.BASELINE for c in cases)
    with_base = fleet.fleet_cases(baseline=True)
    assert len([c for c in with_base if c.build == fleet.BASELINE]) == len(sidecar)
    # every ratio and target names a case of the run
    every = {c.name for c in with_base}
    for c in with_base:
        for other in (c.single(), c.raw(), c.peer("messagedb"), c.peer("emmett"), c.other_build()):
            assert other is None or other.name in every, (c, other)
    for t in fleet.fleet_targets():
        assert all(c.name in every for c in t.cases), t.text
    # no other group's --only text selects a fleet case
    assert not any("append 1 event, 8 clients" in n or "alone), 32 clients" in n for n in names)


# -- the raw one-message locked shape, on a real PostgreSQL ---------------------------------------------


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    pg = LocalPostgres()
    try:
        yield pg.start()
    finally:
        pg.destroy()


def test_locked_message_is_one_transaction(pg_dsn: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(pg_dsn)
        other = await asyncpg.connect(pg_dsn)
        try:
            for statement in raw_table_ddl("lockt"):
                await conn.execute(statement)
            await conn.execute(locked_message("lockt", "s-1", 1, '{"it\'s": "x"}', uuid.uuid4()))
            row = await conn.fetchrow(f"SELECT stream_id, version, payload FROM lockt.{RAW_TABLE}")
            assert (row["stream_id"], row["version"], json.loads(row["payload"])) == ("s-1", 1, {"it's": "x"})
            # the lock is the transaction's: while another session holds it, the message waits
            async with other.transaction():
                await other.execute("SELECT pg_advisory_xact_lock($1)", 160_016)
                waiting = asyncio.create_task(conn.execute(
                    locked_message("lockt", "s-2", 1, "{}", uuid.uuid4())))
                await asyncio.sleep(0.3)
                assert not waiting.done()
            await asyncio.wait_for(waiting, 10)
            assert await conn.fetchval(f"SELECT count(*) FROM lockt.{RAW_TABLE}") == 2
            assert not conn.is_in_transaction()  # COMMIT was part of the message
        finally:
            await conn.close()
            await other.close()

    asyncio.run(main())


# -- a tiny end-to-end run ---------------------------------------------------------------------------------


def test_tiny_fleet_run(tmp_path: Path) -> None:
    results, docs = tmp_path / "results.json", tmp_path / "docs"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "distinct streams, 4 x 8, via 0.25 ms proxy", "--warmup", "0.3",
         "--duration", "1", "--allow-missing", "--no-plots", "--results", str(results), "--docs", str(docs)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(results.read_text())
    measured = {r["target"]: r for r in data["cases"]}
    skipped = data["run"]["skipped_cases"]
    assert "raw-locked" in measured and all(r["group"] == "fleet" for r in measured.values())
    assert len(measured) + len(skipped) == 3  # raw locked, REST and gRPC at 4 x 8 through the proxy
    for r in measured.values():
        assert r["layout"] == "4 x 8" and r["proxy_delay_ms"] == 0.25 and r["errors"] == 0, r
        assert r["requests_per_s"] > 0 and r["p50_ms"] <= r["p99_ms"]
        assert r["proxy_cpu_pct"] > 0 and r["postgres_cpu_pct"] is not None
    # the proxy's calibration: every round trip through it waits its delay twice
    check = data["run"]["fleet_proxy_check"]
    assert check["proxied_ms"] >= 0.5 and check["proxied_ms"] > check["direct_ms"]
    for target in ("rest", "grpc"):
        if target in measured:
            r = measured[target]
            assert r["server_cpu_pct"] > 0 and r["server_rss_mib"] > 0
            # one load generator spread over the 4 sidecars: each appended a fair share
            assert r["sidecar_share_min"] > 0.5, r
    md = (docs / "benchmarks.md").read_text()
    assert "#### Fleet: 1-event appends, distinct streams, via the 0.25 ms proxy" in md
