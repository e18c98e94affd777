"""``BENCH_TRACING=1``: the sidecars of the run export every span (OTLP/HTTP, all sampled) to a
local sink that accepts and drops them, so a case measures what tracing costs when it is on.

Run the 1-event append case both ways and compare (the second run writes elsewhere)::

    make bench BENCH_ARGS="--only 'append 1 event, 1 client'"
    BENCH_TRACING=1 make bench BENCH_ARGS="--only 'append 1 event, 1 client' --results /tmp/otel.json --docs /tmp/otel"

The sink runs as its own process (``python -m benchmarks.otelsink PORT``): decoding nothing, it
answers each export at once, like a collector that keeps up.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

from aiohttp import web

from tests.support.postgres import free_port


def enabled() -> bool:
    return os.environ.get("BENCH_TRACING", "") not in {"", "0", "false"}


@contextlib.contextmanager
def sink() -> Iterator[dict[str, str]]:
    """A running sink, and the sidecar variables that turn tracing on towards it ({} when off)."""
    if not enabled():
        yield {}
        return
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.otelsink", str(port)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/v1/traces", b"",
                                                              method="POST"), timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the OTLP sink did not start") from None
                time.sleep(0.05)
        yield {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_SERVICE_NAME": "k1s0-bench",
               "OTEL_TRACES_SAMPLER": "always_on"}
    finally:
        proc.terminate()
        proc.wait(10)


async def _drop(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type="application/x-protobuf")  # an empty ExportTraceServiceResponse


if __name__ == "__main__":
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", _drop)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
