"""The forwarder's Prometheus metrics (``eventstore_forwarder_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ForwarderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.active = Gauge("eventstore_forwarder_active", "1 while this sidecar is the schema's active forwarder",
                            registry=r)
        self.lag_events = Gauge("eventstore_forwarder_lag_events", "Committed events not yet acknowledged by Kafka",
                                registry=r)
        self.lag_seconds = Gauge(
            "eventstore_forwarder_lag_seconds", "Age of the oldest event not yet acknowledged by Kafka", registry=r
        )
        self.published = Counter(
            "eventstore_forwarder_events_published", "Events acknowledged by Kafka (re-sends included)", registry=r
        )
        self.failures = Counter(
            "eventstore_forwarder_publish_failures", "Failed publish attempts (a round or its partitions)",
            ["reason"], registry=r,
        )
        self.checkpoint = Gauge("eventstore_forwarder_checkpoint", "Last sequence acknowledged by Kafka", registry=r)
        self.resent = Counter(
            "eventstore_forwarder_events_resent",
            "Events Kafka had acknowledged and this forwarder sent again (a failed round is re-sent whole)",
            registry=r,
        )
