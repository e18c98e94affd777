"""The people-facing CLI end to end against a served sidecar: real processes, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support.sidecar import ServedSidecar


def cli(sidecar: ServedSidecar, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "k1s0_cli", *args, "--server", sidecar.grpc_target],
        capture_output=True, text=True, timeout=60, env=env, input=stdin,
    )


def test_append_read_get_snapshot_delete(sidecar: ServedSidecar, stream: str) -> None:
    r = cli(sidecar, "streams", "append", stream, "--type", "OrderPlaced", "--payload", '{"total": 3000}',
            "--expected-version", "0", "-o", "json")
    assert r.returncode == 0, r.stderr
    appended = json.loads(r.stdout)
    assert appended["current_version"] == 1 and appended["events"][0]["payload"] == {"total": 3000}
    r = cli(sidecar, "streams", "append", stream, "--type", "OrderPlaced", "--payload", "{}",
            "--expected-version", "0")
    assert r.returncode == 4 and r.stderr.startswith("error: SYS_EVSTORE_VERSION_CONFLICT")
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli(sidecar, "streams", "read", stream)
    assert r.returncode == 0 and "OrderPlaced" in r.stdout and "3000" in r.stdout
    r = cli(sidecar, "streams", "read", stream, "-o", "json")
    assert [e["version"] for e in json.loads(r.stdout)["events"]] == [1]
    seq = appended["events"][0]["sequence"]
    r = cli(sidecar, "events", "get", stream, str(seq), "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["sequence"] == seq
    r = cli(sidecar, "snapshots", "latest", stream)
    assert r.returncode == 3 and "SYS_EVSTORE_SNAPSHOT_NOT_FOUND" in r.stderr
    r = cli(sidecar, "streams", "read", stream + "-none")
    assert r.returncode == 3 and "SYS_EVSTORE_STREAM_NOT_FOUND" in r.stderr
    r = cli(sidecar, "streams", "delete", stream)  # no terminal, no --yes: refused
    assert r.returncode == 2
    r = cli(sidecar, "streams", "delete", stream, "--yes", "-o", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["deleted_events"] == 1
    r = cli(sidecar, "streams", "append", stream, "--type", "T", "--payload", "{not json")
    assert r.returncode == 2 and "SYS_EVSTORE_VALIDATION_ERROR" in r.stderr


def test_subscribe_tails_with_a_limit(sidecar: ServedSidecar, stream: str) -> None:
    for i in range(3):
        cli(sidecar, "streams", "append", stream, "--type", "E", "--payload", json.dumps({"i": i}))
    r = cli(sidecar, "subscribe", "--stream", stream, "--limit", "3", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["version"] for line in r.stdout.splitlines()] == [1, 2, 3]
    r = cli(sidecar, "subscribe", "--prefix", stream, "--after", "0", "--limit", "2")
    assert r.returncode == 0 and r.stdout.count(stream) == 2


def test_streams_list_pages_newest_first(sidecar: ServedSidecar, stream: str) -> None:
    for suffix in ("a", "b", "c"):
        r = cli(sidecar, "streams", "append", f"{stream}{suffix}", "--type", "E", "--payload", "{}")
        assert r.returncode == 0, r.stderr
    r = cli(sidecar, "streams", "list", "--prefix", stream, "--limit", "2", "-o", "json")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert [s["stream_id"] for s in first["streams"]] == [f"{stream}c", f"{stream}b"] and first["next_after"]
    r = cli(sidecar, "streams", "list", "--prefix", stream, "--after", first["next_after"])
    assert r.returncode == 0 and f"{stream}a" in r.stdout and f"{stream}b" not in r.stdout
    r = cli(sidecar, "streams", "list", "--prefix", stream, "--limit", "2")
    assert r.returncode == 0 and r.stderr.startswith("more: --after ")
    r = cli(sidecar, "streams", "list", "--after", "garbage!")
    assert r.returncode == 2 and "SYS_EVSTORE_VALIDATION_ERROR" in r.stderr


def test_unavailable_server_exit_code() -> None:
    r = subprocess.run([sys.executable, "-m", "k1s0_cli", "streams", "read", "x-y", "--server",
                        "127.0.0.1:1", "--timeout", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 6 and r.stderr.startswith("error: SYS_EVSTORE_UNAVAILABLE")
