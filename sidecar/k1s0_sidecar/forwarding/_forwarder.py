"""The forwarder as a component the sidecar runtime starts and stops: it supervises the lease
session (reconnecting with backoff) and the lag monitor, and renders the status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from k1s0_event_store.sidecar_config import KafkaSection

from ._lag import LagMonitor
from ._lease import Lease, SchemaNotReady, close, connect
from ._metrics import ForwarderMetrics
from ._outbox import Outbox
from ._publisher import describe
from ._relay import Backoff, Relay
from ._settings import ForwarderSettings
from ._signals import Signals
from ._status import ForwarderStatus

log = logging.getLogger("k1s0_sidecar.forwarder")

#: A failure of the PostgreSQL side (the status then says "PostgreSQL: ..."); anything else is a bug.
_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError, SchemaNotReady)


class Forwarder:
    """The schema's Kafka relay. ``kafka.brokers`` must not be empty (empty: no forwarder at all)."""

    #: Stopped after the servers (only the subscription reader stops before them).
    stop_before_servers = False

    def __init__(self, dsn: str, schema: str, kafka: KafkaSection, settings: ForwarderSettings | None = None, *,
                 registry: CollectorRegistry | None = None) -> None:
        if not kafka.brokers:
            raise ValueError("the forwarder needs kafka.brokers (empty disables it: do not create one)")
        self.dsn = dsn
        self.schema = schema
        self.settings = settings = settings or ForwarderSettings()
        self.metrics = ForwarderMetrics(registry or CollectorRegistry())
        self._status = ForwarderStatus(schema, settings.holder, kafka)
        self._signals = Signals()
        self._lease = Lease(schema, settings, self._status, self._signals)
        self._relay = Relay(schema, kafka, settings, outbox=Outbox(schema, settings.query_timeout),
                            status=self._status, metrics=self.metrics, signals=self._signals)
        self._lag = LagMonitor(dsn, schema, settings, self._status, self.metrics)
        self._task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._signals.stopping.clear()
            self._status.state = "starting"
            self._task = asyncio.create_task(self._run(), name=f"forwarder:{self.schema}")
            self._monitor_task = asyncio.create_task(self._lag.run(), name=f"forwarder-lag:{self.schema}")

    async def stop(self) -> None:
        """Finish the round in progress (up to ``stop_grace``), release the lease, close."""
        task, self._task = self._task, None
        if task is None:
            return
        self._signals.stop()
        if self._monitor_task is not None:
            await _cancel(self._monitor_task)
            self._monitor_task = None
        try:
            await asyncio.wait_for(asyncio.shield(task), self.settings.stop_grace)
        except TimeoutError:
            await _cancel(task)
        self._status.state = "stopped"
        self.metrics.active.set(0)

    def status(self) -> dict[str, Any]:
        """The body of ``GET /api/v1/forwarder/status``."""
        return self._status.to_json()

    def wake(self, sequence: int = 0) -> None:
        """This sidecar committed events: look for them now rather than at the next poll. The
        active forwarder finds other sidecars' commits by polling (``poll_interval``): appends do
        not notify (a NOTIFY per commit woke every sidecar of the fleet)."""
        self._signals.committed(sequence)

    async def _run(self) -> None:
        settings = self.settings
        backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        while not self._signals.stopping.is_set():
            conn: asyncpg.Connection | None = None
            began = time.monotonic()
            try:
                conn = await connect(self.dsn, settings.connect_timeout)
                await self._lease.hold(conn, self._relay.lead)
            except Exception as exc:
                if isinstance(exc, _DATABASE_ERRORS):
                    self._status.fail(f"PostgreSQL: {describe(exc)}", "postgresql")
                else:  # a bug, not an outage: say so rather than blame either side
                    self._status.fail(f"unexpected error: {describe(exc)}", None)
                    log.exception("forwarder for schema %s failed unexpectedly", self.schema)
            finally:
                self._relay.set_inactive()
                if conn is not None:
                    await close(conn)
            if time.monotonic() - began > 30:
                backoff.reset()  # a session that worked for a while starts the backoff afresh
            await self._signals.pause(backoff.next())


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
