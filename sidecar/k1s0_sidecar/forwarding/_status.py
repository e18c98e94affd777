"""What the forwarder reports: one record its parts update, rendered by ``GET /api/v1/forwarder/status``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from k1s0_event_store.sidecar_config import KafkaSection

log = logging.getLogger("k1s0_sidecar.forwarder")

State = Literal["starting", "active", "standby", "stopped"]
#: Which side the last error came from: "kafka", "postgresql", or None for a bug in the forwarder.
Source = Literal["kafka", "postgresql"] | None


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class ForwarderStatus:
    """The forwarder's state and counters. Mutable on purpose: the relay loop, the lease and the lag
    monitor each update their fields as things happen, and ``to_json`` renders them on request."""

    schema: str
    holder: str
    kafka: KafkaSection
    state: State = "stopped"
    checkpoint: int | None = None
    active_holder: str | None = None
    active_since: str | None = None
    lag_events: int | None = None
    lag_seconds: float | None = None
    events_published: int = 0
    publish_failures: int = 0
    events_resent: int = 0
    rounds: int = 0
    takeovers: int = 0
    last_error: str | None = None
    last_error_source: Source = None
    last_error_at: str | None = None
    last_published_at: str | None = None
    missing_topics: list[str] = field(default_factory=list)

    def fail(self, message: str, source: Source = "kafka") -> None:
        """Record an error (logged once while it stays the same)."""
        if message != self.last_error:
            log.warning("forwarder (schema %s): %s", self.schema, message)
        self.last_error = message
        self.last_error_source = source
        self.last_error_at = now()

    def clear_error(self) -> None:
        self.last_error = None
        self.last_error_source = None

    def to_json(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "schema": self.schema,
            "state": self.state,
            "holder": self.holder,
            "active_holder": self.active_holder,
            "active_since": self.active_since,
            "checkpoint": self.checkpoint,
            "lag_events": self.lag_events,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "events_published": self.events_published,
            "publish_failures": self.publish_failures,
            "events_resent": self.events_resent,
            "rounds": self.rounds,
            "last_published_at": self.last_published_at,
            "last_error": self.last_error,
            "last_error_source": self.last_error_source,
            "last_error_at": self.last_error_at,
            "missing_topics": self.missing_topics,
            "brokers": list(self.kafka.brokers),
            "security_protocol": self.kafka.security_protocol,
            "topic": self.kafka.topic_published,
            "routes": dict(self.kafka.routes),
        }


def disabled_status() -> dict[str, Any]:
    """The status when ``kafka.brokers`` is empty (no forwarder)."""
    return {"enabled": False, "state": "disabled", "reason": "kafka.brokers is empty"}
