"""Prometheus metrics (one registry per runtime, so several sidecars can live in one test process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _PoolCollector(Collector):
    def __init__(self, stats: Callable[[], tuple[int, int, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size, idle, max_size = self._stats()
        yield GaugeMetricFamily("eventstore_db_pool_connections", "Open database connections", value=size)
        yield GaugeMetricFamily("eventstore_db_pool_in_use", "Database connections in use", value=size - idle)
        yield GaugeMetricFamily("eventstore_db_pool_max", "Database pool capacity", value=max_size)


class _AppendPathCollector(Collector):
    """How the store wrote its batches: plans found stale (another sidecar wrote one of the streams
    first) and batches decided under the lock after repeated races (a stream hot across sidecars)."""

    def __init__(self, stats: Callable[[], tuple[int, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily]:
        replanned, locked = self._stats()
        yield CounterMetricFamily(
            "eventstore_append_replans", "Append plans found stale and made again", value=replanned
        )
        yield CounterMetricFamily(
            "eventstore_append_locked_batches", "Batches decided under the append lock after repeated races",
            value=locked,
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events_appended = Counter("eventstore_events_appended", "Events appended", registry=r)
        self.append_latency = Histogram(
            "eventstore_append_duration_seconds", "Append latency (queue + commit)", buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.appends_pending = Gauge(
            "eventstore_appends_pending", "Appends validated and waiting for their commit (queued or in a batch)",
            registry=r,
        )
        self.append_conflicts = Counter(
            "eventstore_append_conflicts", "Appends refused by optimistic concurrency", registry=r
        )
        self.reads = Counter("eventstore_reads", "Read operations", ["kind"], registry=r)
        self.streams_created = Counter("eventstore_streams_created", "Streams created by appends", registry=r)
        self.streams_deleted = Counter("eventstore_streams_deleted", "Streams deleted", registry=r)
        self.streams = Gauge("eventstore_streams", "Streams in the schema (refreshed periodically)", registry=r)
        self.snapshots_created = Counter("eventstore_snapshots_created", "Snapshots created", registry=r)
        self.batch_size = Histogram(
            "eventstore_group_commit_batch_size", "Append requests per group-commit transaction",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r,
        )
        self.subscriptions_active = Gauge(
            "eventstore_subscriptions_active", "Live subscribers fed by the shared reader", registry=r
        )
        self.subscriptions_lagged = Counter(
            "eventstore_subscriptions_lagged", "Subscribers sent back to catch-up reads for falling behind", registry=r
        )
        self.subscriptions_queued = Gauge(
            "eventstore_subscriptions_queued_max",
            "Events queued for the live subscriber furthest behind (at eventstore_subscriptions_buffer it falls"
            " back to catch-up reads)", registry=r,
        )
        self.subscriptions_buffer = Gauge(
            "eventstore_subscriptions_buffer", "Events a live subscriber may have queued before it falls back",
            registry=r,
        )
        self.database_up = Gauge(
            "eventstore_database_up", "1 if the last readiness check reached the database, else 0", registry=r
        )
        self.http_requests = Counter(
            "eventstore_http_requests", "REST requests", ["route", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "eventstore_http_request_duration_seconds", "REST latency", ["route", "method"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.grpc_requests = Counter("eventstore_grpc_requests", "gRPC requests", ["method", "code"], registry=r)
        self.grpc_latency = Histogram(
            "eventstore_grpc_request_duration_seconds", "gRPC latency", ["method"], buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def watch_pool(self, stats: Callable[[], tuple[int, int, int]]) -> None:
        self.registry.register(_PoolCollector(stats))

    def watch_append_path(self, stats: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_AppendPathCollector(stats))
