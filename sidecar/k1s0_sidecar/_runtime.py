"""Start-up and shutdown in one place: pool, stores, group commit, REST, gRPC, background parts.

Order matters and is kept here only. Start: database (embedded if no URL), migrations if asked,
pool, stores, group commit, background components, then the listeners. Stop (SIGTERM): become
not-ready, stop accepting, let in-flight requests finish (up to the grace period), drain the
group-commit queue so every acknowledged append is committed, stop components, close the pool.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Protocol

import asyncpg
import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from k1s0_event_store import EventStoreConfig, PostgresEventStore, PostgresSnapshotStore, create_pool
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from k1s0_event_store.schema import migrate, quote_ident
from k1s0_event_store.sidecar_config import Config

from . import _audit as audit
from . import _tracing as tracing
from ._authz import Authenticator, NoAuthenticator
from ._group_commit import GroupCommitter
from ._grpc_api import SERVICE_NAME, EdgeInterceptor, EventStoreServicer
from ._metrics import Metrics
from ._rest import RestApi
from ._service import EventStoreService
from ._subscriptions import SubscriptionHub
from .forwarding import Forwarder, ForwarderSettings

log = logging.getLogger("k1s0_sidecar")


class Component(Protocol):
    """A background part (forwarder, subscription reader, maintenance) the runtime starts and stops.

    Parts with ``stop_before_servers`` (the subscription reader: its streams never end on their
    own) are stopped before the listeners close, so that they do not hold the grace period; the
    others after the in-flight requests have finished, in reverse start order."""

    @property
    def stop_before_servers(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def make_authenticator(config: Config) -> Authenticator:
    if config.auth.mode == "none":
        return NoAuthenticator()
    # The JWT verifier (issue #7) is imported only when used, so auth.mode none needs none of it.
    auth = importlib.import_module("k1s0_sidecar._auth")
    factory: Any = auth.make_authenticator
    result: Authenticator = factory(config.auth)
    return result


class PortInUseError(RuntimeError):
    """A listening port is taken; ``setting`` is the variable that moves it."""

    def __init__(self, port: int, setting: str) -> None:
        super().__init__(f"port {port} is in use; set {setting}")
        self.port = port
        self.setting = setting


def check_ports_free(host: str, ports: dict[int, str]) -> None:
    """Fail fast, before the (slow) database start, when a fixed port is already taken."""
    for port, setting in ports.items():
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # as the servers bind: a port left in TIME_WAIT by a previous run is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise PortInUseError(port, setting) from None
                raise


class EmbeddedPostgres:
    """A local PostgreSQL for development (``serve`` with no database URL), via PyPI's pgserver."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    def start(self) -> str:
        try:
            pgserver: Any = importlib.import_module("pgserver")
        except ImportError as exc:  # pragma: no cover - the dev extra installs it
            raise RuntimeError(
                "no database.url given and the embedded PostgreSQL is not installed: "
                "pip install 'k1s0-eventstore[embedded]' or set EVENTSTORE_DATABASE_URL"
            ) from exc
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@dataclass
class Maintenance:
    """Snapshot retention (seed 001: 30 days, newest kept) and the streams gauge."""

    pool: asyncpg.Pool
    service: EventStoreService
    metrics: Metrics
    schema: str
    #: Snapshots older than this many days are pruned (0: kept forever).
    retention_days: int
    interval_seconds: float = 60.0
    stop_before_servers: ClassVar[bool] = False
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="maintenance")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        last_prune = 0.0
        schema = quote_ident(self.schema, "schema")
        while True:
            try:
                async with self.pool.acquire() as conn:
                    count = await conn.fetchval(f"SELECT count(*) FROM {schema}.event_streams")
                self.metrics.streams.set(count)
                days = self.retention_days
                if days and time.monotonic() - last_prune > 3600:
                    with audit.system_write("prune_snapshots", "snapshot-retention"):
                        removed = await self.service.prune_snapshots(datetime.now(UTC) - timedelta(days=days))
                    last_prune = time.monotonic()
                    if removed:
                        log.info("pruned %d snapshots older than %d days", removed, days)
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("maintenance skipped: %s", exc)
            await asyncio.sleep(self.interval_seconds)


@dataclass(frozen=True)
class Parts:
    """What one sidecar is made of. Each part is built with everything it needs (``assemble``);
    nothing is set on a part after it was made."""

    store_config: EventStoreConfig
    pool: asyncpg.Pool
    store: PostgresEventStore
    snapshots: PostgresSnapshotStore
    subscriptions: SubscriptionHub
    forwarder: Forwarder | None
    committer: GroupCommitter
    service: EventStoreService
    authenticator: Authenticator
    rest: RestApi
    servicer: EventStoreServicer
    #: The background parts in start order.
    components: tuple[Component, ...]


def assemble(
    config: Config,
    metrics: Metrics,
    store_config: EventStoreConfig,
    pool: asyncpg.Pool,
    readiness: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]],
) -> Parts:
    """Build the parts over an open pool, in dependency order: stores; the readers of what is
    committed (subscriptions, forwarder); the group commit, which wakes them; the service; the
    edges. Nothing is started here."""
    es = config.event_store
    metrics.watch_pool(lambda: (pool.get_size(), pool.get_idle_size(), pool.get_max_size()))
    store = PostgresEventStore(store_config, pool=pool)
    snapshots = PostgresSnapshotStore(store_config, pool=pool)
    stats = store.append_stats
    metrics.watch_append_path(lambda: (stats.replanned, stats.locked))
    dsn = store_config.dsn
    subscriptions = SubscriptionHub(
        store,
        dsn,
        config.database.schema,
        buffer=es.subscription_buffer,
        poll_interval=es.subscription_poll_interval_ms / 1000,
        keepalive=es.subscription_keepalive_seconds,
        on_lag=metrics.subscriptions_lagged.inc,
    )
    metrics.subscriptions_active.set_function(lambda: subscriptions.live_subscribers)
    metrics.subscriptions_queued.set_function(lambda: subscriptions.max_queued)
    metrics.subscriptions_buffer.set(es.subscription_buffer)
    # The Kafka forwarder: on when kafka.brokers is set (its status route says so when off).
    forwarder: Forwarder | None = None
    if config.kafka.brokers:
        forwarder = Forwarder(
            dsn, config.database.schema, config.kafka,
            ForwarderSettings(poll_interval=es.subscription_poll_interval_ms / 1000),
            registry=metrics.registry,
        )

    def committed(sequence: int) -> None:
        """This sidecar stored events up to ``sequence``: wake its own readers (other sidecars find
        them by polling)."""
        subscriptions.wake(sequence)
        if forwarder is not None:
            forwarder.wake(sequence)

    committer = GroupCommitter(
        store.append_batch,
        max_batch=es.group_commit_max_batch,
        linger_seconds=es.group_commit_linger_ms / 1000,
        on_batch=metrics.batch_size.observe,
        on_commit=committed,
    )
    service = EventStoreService(store, snapshots, es, metrics, committer, subscriptions)
    authenticator = make_authenticator(config)
    rest = RestApi(
        service, authenticator, metrics, readiness, max_body_bytes=config.server.max_body_bytes,
        body_timeout=config.server.body_timeout_seconds,
        forwarder=forwarder,
    )
    maintenance = Maintenance(pool, service, metrics, config.database.schema, es.snapshot_retention_days)
    return Parts(
        store_config=store_config, pool=pool, store=store, snapshots=snapshots, subscriptions=subscriptions,
        forwarder=forwarder, committer=committer, service=service, authenticator=authenticator, rest=rest,
        servicer=EventStoreServicer(service),
        components=(subscriptions, maintenance, *([forwarder] if forwarder is not None else [])),
    )


class Sidecar:
    """One sidecar process's worth of parts, and their start and stop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self.ready = False
        self.rest_port = 0
        self.grpc_port = 0
        self.health_port = 0
        self._parts: Parts | None = None
        self._embedded: EmbeddedPostgres | None = None
        self._runner: web.AppRunner | None = None
        self._health_runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health: health_aio.HealthServicer | None = None

    @property
    def parts(self) -> Parts:
        """What this sidecar is made of, once ``start`` has built it."""
        if self._parts is None:
            raise RuntimeError("the sidecar has not been started")
        return self._parts

    @property
    def dsn(self) -> str:
        """The database this sidecar uses (the embedded one's when it started one)."""
        return self.parts.store_config.dsn

    @property
    def rest(self) -> RestApi:
        return self.parts.rest

    @property
    def authenticator(self) -> Authenticator:
        return self.parts.authenticator

    @property
    def embedded(self) -> bool:
        """True when ``serve`` started its own PostgreSQL (no database.url: development)."""
        return self._embedded is not None

    async def start(self) -> None:
        cfg = self.config
        check_ports_free(cfg.server.host, {cfg.server.port: "EVENTSTORE_SERVER_PORT",
                                           cfg.server.grpc_port: "EVENTSTORE_SERVER_GRPC_PORT"})
        store_config = await self._database()
        pool = await create_pool(store_config)
        self.metrics.database_up.set(1)  # the pool connected; readiness checks keep it current
        parts = self._parts = assemble(cfg, self.metrics, store_config, pool, self.readiness)
        parts.committer.start()
        for component in parts.components:
            await component.start()
        await self._start_rest()
        await self._start_grpc()
        self.ready = True
        log.info("serving REST on %s:%d (web console at /ui/) and gRPC on %s:%d (schema %s, auth %s)",
                 cfg.server.host, self.rest_port, cfg.server.host, self.grpc_port, cfg.database.schema, cfg.auth.mode)

    async def _database(self) -> EventStoreConfig:
        """Where the stores connect: the configured database (migrated if asked), or an embedded one."""
        cfg = self.config
        dsn = cfg.database.url
        run_migrations = cfg.database.migrate
        if not dsn:
            self._embedded = EmbeddedPostgres(Path(cfg.database.embedded_data_dir or ".data/postgres"))
            dsn = await asyncio.to_thread(self._embedded.start)
            run_migrations = True
            log.warning("no database.url: using an embedded PostgreSQL with its data in %s (development only)",
                        self._embedded.data_dir)
        if run_migrations:
            conn = await asyncpg.connect(dsn, timeout=cfg.database.connect_timeout_seconds)
            try:
                applied = await migrate(conn, cfg.database.schema)
            finally:
                await conn.close()
            if applied:
                log.info("schema %s: applied migrations %s", cfg.database.schema, applied)
        return EventStoreConfig(
            dsn=dsn,
            schema=cfg.database.schema,
            snapshot_interval=cfg.event_store.snapshot_interval,
            min_connections=cfg.database.min_connections,
            max_connections=cfg.database.max_connections,
            connect_timeout_seconds=cfg.database.connect_timeout_seconds,
            max_events_per_append=cfg.event_store.max_events_per_append,
            max_json_depth=cfg.event_store.max_json_depth,
        )

    async def _start_rest(self) -> None:
        self._runner = web.AppRunner(
            self.rest.application(), shutdown_timeout=self.config.server.shutdown_grace_seconds, access_log=None,
            # aiohttp closes a connection still waiting for a request's headers when this runs out
            # (and an idle keep-alive one): the header timeout against slow-header clients.
            keepalive_timeout=self.config.server.header_timeout_seconds,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.server.host, self.config.server.port)
        await site.start()
        server: Any = site._server
        self.rest_port = int(server.sockets[0].getsockname()[1])
        if self.config.server.health_port:
            await self._start_health()

    async def _start_health(self) -> None:
        # Only the two probe endpoints, on all interfaces: the kubelet probes the pod IP, while the
        # API itself may listen on loopback only.
        app = web.Application()
        app.router.add_get("/healthz", self.rest.live)
        app.router.add_get("/readyz", self.rest.ready)
        self._health_runner = web.AppRunner(app, access_log=None)
        await self._health_runner.setup()
        site = web.TCPSite(self._health_runner, None, self.config.server.health_port)
        await site.start()
        server: Any = site._server
        self.health_port = int(server.sockets[0].getsockname()[1])

    async def _start_grpc(self) -> None:
        # The tracing interceptor (when on) comes first, so the edge's work runs inside its span.
        server = grpc.aio.server(
            interceptors=[*tracing.grpc_interceptors(), EdgeInterceptor(self.parts.authenticator, self.metrics)]
        )
        pb_grpc.add_EventStoreServiceServicer_to_server(self.parts.servicer, server)
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        self.grpc_port = server.add_insecure_port(f"{self.config.server.host}:{self.config.server.grpc_port}")
        await server.start()
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self._grpc = server

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        ok = self.ready
        if not self.ready:
            checks["lifecycle"] = "shutting down"
        try:
            async with asyncio.timeout(2):
                async with self.parts.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            checks["database"] = "ok"
            self.metrics.database_up.set(1)
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
            ok = False
            self.metrics.database_up.set(0)
        details: dict[str, Any] = {"checks": checks, "auth_mode": self.config.auth.mode}
        if self.config.auth.mode == "none":
            details["warnings"] = ["authentication is disabled (auth.mode: none): development only"]
        return ok, details

    async def stop(self) -> None:
        self.ready = False
        grace = self.config.server.shutdown_grace_seconds
        parts = self._parts
        components = parts.components if parts is not None else ()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        # Long-lived streams (subscriptions) end first, so they do not hold the grace period.
        for component in components:
            if component.stop_before_servers:
                await component.stop()
        stops = []
        if self._grpc is not None:
            stops.append(self._grpc.stop(grace))
        if self._runner is not None:
            stops.append(self._runner.cleanup())
        if self._health_runner is not None:
            stops.append(self._health_runner.cleanup())
        await asyncio.gather(*stops, return_exceptions=True)
        if parts is not None:
            await parts.committer.close()
            for component in reversed(components):
                if component.stop_before_servers:
                    continue
                try:
                    await component.stop()
                except Exception:
                    log.exception("stopping %s failed", type(component).__name__)
            await parts.authenticator.close()
            await parts.pool.close()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)


async def serve(config: Config, on_ready: Callable[[Sidecar], None] | None = None) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully; ``on_ready`` once it serves."""
    sidecar = Sidecar(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await sidecar.start()
    if on_ready is not None:
        on_ready(sidecar)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests")
    await sidecar.stop()
    log.info("stopped")
