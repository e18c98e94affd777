"""The operator's own health and metrics: Kopf's liveness probe, ``/readyz`` and ``/metrics``.

* Liveness is Kopf's endpoint (``EVENTSTORE_OPERATOR_LIVENESS_PORT``, ``/healthz``): it answers
  only while the event loop runs, and the probe handler below makes it fail (HTTP 500) when a
  reconcile has been running longer than ``EVENTSTORE_OPERATOR_STALLED_AFTER_SECONDS`` (a handler
  stuck on a hung connection), so the kubelet restarts the pod.
* ``/readyz`` and ``/metrics`` share one plain-HTTP listener (``EVENTSTORE_OPERATOR_METRICS_PORT``;
  unset or 0: none). Ready means the webhook listener completes a handshake (TLS unless insecure):
  the webhook Service only sends admissions to replicas that can answer them.
* Metrics live in a registry of their own (not the process-global one): reconciles by handler and
  outcome, their durations, errors by reason, admissions by outcome and their latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import kopf
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from ._runtime import env_seconds

LIVENESS_PORT_ENV = "EVENTSTORE_OPERATOR_LIVENESS_PORT"
STALLED_ENV = "EVENTSTORE_OPERATOR_STALLED_AFTER_SECONDS"
METRICS_PORT_ENV = "EVENTSTORE_OPERATOR_METRICS_PORT"

REGISTRY = CollectorRegistry()
RECONCILES = Counter(
    "k1s0_operator_reconciles", "EventStream handler runs by handler and outcome (ok, retry, failed).",
    ["handler", "outcome"], registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "k1s0_operator_reconcile_duration_seconds", "Duration of EventStream handler runs.", ["handler"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "k1s0_operator_reconcile_errors", "Failed EventStream handler runs by the reason they reported.",
    ["handler", "reason"], registry=REGISTRY,
)
CLUSTER_RECONCILES = Counter(
    "k1s0_operator_cluster_reconciles",
    "EventStream handler runs by the PostgreSQL cluster the stream is placed on, and outcome.",
    ["cluster", "outcome"], registry=REGISTRY,
)
CLUSTER_RECONCILE_ERRORS = Counter(
    "k1s0_operator_cluster_reconcile_errors",
    "Failed EventStream handler runs by cluster and the reason they reported (DatabaseUnavailable: that"
    " cluster is unreachable).", ["cluster", "reason"], registry=REGISTRY,
)
ADMISSIONS = Counter(
    "k1s0_operator_admissions",
    "Pod admissions by outcome (injected, unchanged, refused, unavailable).", ["outcome"], registry=REGISTRY,
)
ADMISSION_SECONDS = Histogram(
    "k1s0_operator_admission_duration_seconds", "Latency of pod admissions, EventStream lookup included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=REGISTRY,
)

#: Reconciles in flight: token -> start (monotonic). Read by the liveness probe.
_running: dict[object, float] = {}


def _port(env: Mapping[str, str], key: str) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or not 0 <= int(raw) <= 65535:
        raise ValueError(f"{key}: must be a port number (got {raw!r})")
    return int(raw)


def liveness_endpoint(env: Mapping[str, str] | None = None) -> str | None:
    """Kopf's ``liveness_endpoint`` from the environment (None: no liveness server)."""
    port = _port(os.environ if env is None else env, LIVENESS_PORT_ENV)
    return f"http://0.0.0.0:{port}/healthz" if port else None


def stalled_after(env: Mapping[str, str] | None = None) -> float:
    return env_seconds(STALLED_ENV, 600.0, 1.0, env)


def _failure_reason(patch: kopf.Patch | None) -> str:
    status: Any = patch.status if patch is not None else {}
    conditions = status.get("conditions") or []
    for c in conditions:
        if isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") != "True":
            return str(c.get("reason") or "Unknown")
    return "Unknown"


@contextlib.asynccontextmanager
async def tracked(handler: str, patch: kopf.Patch | None = None, cluster: str | None = None) -> AsyncIterator[None]:
    """Counts and times one handler run; a failure is counted by the reason it wrote to Ready, and,
    with ``cluster`` (the stream's PostgreSQL cluster), per cluster as well."""
    token = object()
    start = _running[token] = time.monotonic()

    def count(outcome: str, failed: bool) -> None:
        RECONCILES.labels(handler, outcome).inc()
        reason = _failure_reason(patch) if failed else ""
        if failed:
            RECONCILE_ERRORS.labels(handler, reason).inc()
        if cluster is not None:
            CLUSTER_RECONCILES.labels(cluster, outcome).inc()
            if failed:
                CLUSTER_RECONCILE_ERRORS.labels(cluster, reason).inc()

    try:
        yield
    except kopf.TemporaryError:
        count("retry", True)
        raise
    except Exception:
        count("failed", True)
        raise
    else:
        count("ok", False)
    finally:
        _running.pop(token, None)
        RECONCILE_SECONDS.labels(handler).observe(time.monotonic() - start)


def stalled(limit: float, now: float | None = None) -> float:
    """Seconds the oldest reconcile has been running, if longer than ``limit``; else 0."""
    now = time.monotonic() if now is None else now
    oldest = min(_running.values(), default=now)
    return now - oldest if now - oldest > limit else 0.0


@kopf.on.probe(id="reconciler")
def reconciler_probe(**_: Any) -> str:
    stuck = stalled(stalled_after())
    if stuck:
        # Permanent: Kopf would retry any other error until it passed, and answer late and 200.
        raise kopf.PermanentError(f"a reconcile has been running for {stuck:.0f}s: the reconciler is stalled")
    return "ok"


async def webhook_answers(host: str, port: int, tls: bool, timeout: float = 2.0) -> bool:
    """The webhook listener accepts a connection (and completes a TLS handshake when TLS)."""
    context: ssl.SSLContext | None = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False  # only "does it serve": the API server checks the names
        context.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=context)
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


def application(webhook_host: str, webhook_port: int, webhook_tls: bool) -> aiohttp.web.Application:
    async def metrics(_: aiohttp.web.Request) -> aiohttp.web.Response:
        response = aiohttp.web.Response(body=generate_latest(REGISTRY))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def readyz(_: aiohttp.web.Request) -> aiohttp.web.Response:
        if await webhook_answers(webhook_host, webhook_port, webhook_tls):
            return aiohttp.web.json_response({"status": "ready"})
        return aiohttp.web.json_response(
            {"status": "not_ready", "webhook": f"no answer on {webhook_host}:{webhook_port}"}, status=503
        )

    app = aiohttp.web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", readyz)
    return app


@kopf.on.startup(id="health-server")
async def start_health_server(memo: kopf.Memo, **_: Any) -> None:
    port = _port(os.environ, METRICS_PORT_ENV)
    if not port:
        return
    from .webhook import WebhookSettings

    hook = WebhookSettings.from_env(os.environ)
    host = "127.0.0.1" if hook.address in ("0.0.0.0", "", "::") else hook.address
    runner = aiohttp.web.AppRunner(application(host, hook.port, not hook.insecure), access_log=None)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, None, port).start()
    memo.health_runner = runner


@kopf.on.cleanup(id="health-server-cleanup")
async def stop_health_server(memo: kopf.Memo, **_: Any) -> None:
    runner = memo.get("health_runner")
    if isinstance(runner, aiohttp.web.AppRunner):
        await runner.cleanup()
