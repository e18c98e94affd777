"""The compiled gRPC load generator: Python serialises the requests, a grpc-go program sends them.

``benchmarks/grpcgo/main.go`` (grpc-go from Debian's ``golang-google-grpc-dev``, built offline in
GOPATH mode by :func:`ensure_binary`) costs tens of microseconds of CPU per unary call, where the
grpc.aio client (``grpcload.py``) costs about 200: on a 2-core machine the Python client takes the
sidecar's CPU. Run by the harness as ``python -m benchmarks.grpcgo '<spec>'`` like every load
generator: this module writes the case's requests (our real protobuf messages, the same streams and
payloads as ``grpcload.py``) to a temporary file of 4-byte big-endian length + bytes records, then
``exec``s the Go program, which speaks the harness's protocol (READY, the window, one
``WorkerResult`` line) and reuses the requests round-robin.

Kinds: ``append`` (``expected_version`` -2, any version: requests are independent, so a stream may repeat),
``read_stream`` and ``read_all`` (the events of each page are counted from the response).

Build by hand: ``GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE=/tmp/gocache go build -o
benchmarks/.build/k1s0-grpcload ./benchmarks/grpcgo``. ``K1S0_GRPCLOAD_CPUPROFILE=FILE`` makes the Go
program write a pprof CPU profile of its run (``go tool pprof -top BINARY FILE``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .common import EVENT_TYPE, StreamChooser, payload_json, read_spec

HERE = Path(__file__).resolve().parent
SOURCE_DIR = HERE / "grpcgo"
BUILD_DIR = HERE / ".build"
BINARY = BUILD_DIR / "k1s0-grpcload"
#: Debian's Go packages (golang-google-grpc-dev and its dependencies) live in this GOPATH.
DEBIAN_GOPATH = Path("/usr/share/gocode")
GRPC_SOURCE = DEBIAN_GOPATH / "src" / "google.golang.org" / "grpc"
#: Requests reused round-robin: enough distinct ones for the streams' spread, bounded in bytes.
MAX_REQUESTS = 50_000
MAX_REQUEST_BYTES = 32 * 1024 * 1024
#: Clients per HTTP/2 connection (the sidecar may serve one port from several processes).
CLIENTS_PER_CONNECTION = 4
SERVICE = "k1s0.system.eventstore.v1.EventStoreService"


def missing() -> str | None:
    """Why the Go client cannot be used here (turned off, Go or grpc-go absent and no current build), or None."""
    if os.environ.get("BENCH_GO", "") in {"0", "false", "no"}:
        return "turned off with BENCH_GO=0"
    if not _stale():
        return None
    if shutil.which("go") is None:
        return "Go is not installed (apt-get install golang-go golang-google-grpc-dev)"
    if not (GRPC_SOURCE / "clientconn.go").exists():
        return f"grpc-go is not in {GRPC_SOURCE} (apt-get install golang-google-grpc-dev)"
    return None


def _stale() -> bool:
    if not BINARY.exists():
        return True
    built = BINARY.stat().st_mtime
    return any(p.stat().st_mtime > built for p in SOURCE_DIR.glob("*.go"))


def ensure_binary() -> Path:
    """The Go client, built (or rebuilt when its source is newer) into ``benchmarks/.build``."""
    why = missing()
    if why:
        raise RuntimeError(why)
    if not _stale():
        return BINARY
    BUILD_DIR.mkdir(exist_ok=True)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": str(DEBIAN_GOPATH), "GOCACHE": str(BUILD_DIR / "gocache"),
           "GOFLAGS": ""}
    done = subprocess.run(["go", "build", "-o", str(BINARY), "./benchmarks/grpcgo"], cwd=HERE.parent, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building the Go gRPC client failed: {done.stderr[-1500:]}")
    return BINARY


def requests(spec: dict[str, Any]) -> tuple[list[bytes], str, int, int]:
    """The serialised requests of a spec, the method, events per call (0: count them), the counted field."""
    from k1s0_event_store.protocol import event_store_pb2 as pb

    kind = spec["kind"]
    out: list[bytes] = []
    if kind == "append":
        if spec.get("expected"):
            raise SystemExit("the Go client sends fixed requests: expected_version needs the Python client")
        per = int(spec["events"])
        chooser = StreamChooser(spec["distribution"], int(spec["seed"]) * 1000, spec.get("prefix", "grpc"))
        n, size = 0, 0
        limit = int(spec.get("max_requests", MAX_REQUESTS))  # (fewer: quicker to prepare, for short runs)
        while len(out) < limit and size < MAX_REQUEST_BYTES:
            request = pb.AppendEventsRequest(
                stream_id=chooser.next(),
                events=[pb.EventData(event_type=EVENT_TYPE, payload_json=payload_json(n + k).encode())
                        for k in range(per)],
            )
            if not spec.get("any_version_unset"):  # (an older sidecar, see fleetrun)
                request.expected_version = pb.EXPECTED_VERSION_ANY  # unset would mean "version 0"
            n += per
            out.append(request.SerializeToString())
            size += len(out[-1])
        return out, f"/{SERVICE}/AppendEvents", per, 0
    size, pages = int(spec["page_size"]), max(1, int(spec["length"]) // int(spec["page_size"]))
    if kind == "read_stream":
        for page in range(1, pages + 1):
            out.append(pb.ReadEventsRequest(stream_id=spec["stream"], page=page, page_size=size).SerializeToString())
        return out, f"/{SERVICE}/ReadEvents", 0, pb.ReadEventsResponse.EVENTS_FIELD_NUMBER
    if kind == "read_all":
        first = int(spec["first_sequence"])
        for p in range(pages):
            out.append(pb.ReadAllRequest(after_sequence=first - 1 + p * size, limit=size).SerializeToString())
        return out, f"/{SERVICE}/ReadAll", 0, pb.ReadAllResponse.EVENTS_FIELD_NUMBER
    raise SystemExit(f"unknown kind {kind!r}")


def main() -> None:
    spec = read_spec()
    out, method, per, field = requests(spec)
    fd, path = tempfile.mkstemp(prefix="k1s0-grpcload-", suffix=".bin")
    with os.fdopen(fd, "wb") as f:
        for r in out:
            f.write(struct.pack(">I", len(r)))
            f.write(r)
    go_spec = {
        "target": spec["target"], "targets": spec.get("targets", []), "method": method, "clients": int(spec["clients"]),
        "per_connection": int(spec.get("per_connection", CLIENTS_PER_CONNECTION)), "requests": path,
        "delete_requests": True, "events_per_call": per, "count_field": field,
    }
    binary = str(spec.get("binary") or BINARY)
    os.execv(binary, [binary, json.dumps(go_spec)])


if __name__ == "__main__":
    main()
