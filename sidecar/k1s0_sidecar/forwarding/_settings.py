"""How the forwarder is tuned (the Kafka side is configured by ``config.KafkaSection``)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field


def _this_process() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ForwarderSettings:
    #: Who this forwarder is in the checkpoint row and the status (default: host/pid).
    holder: str = field(default_factory=_this_process)
    #: A round reads at most this many events, and about this many bytes of payload and metadata.
    batch_events: int = 2000
    read_budget_bytes: int = 4_000_000
    #: How often the active forwarder looks for other sidecars' commits (its own wake it at once).
    poll_interval: float = 1.0
    #: How often a standby forwarder tries the lease.
    lease_retry_interval: float = 1.0
    #: Retries (of a round, a partition batch, a lost connection): capped exponential backoff.
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    request_timeout_ms: int = 10_000
    connect_timeout: float = 5.0
    #: How long ``stop`` lets the round in progress finish.
    stop_grace: float = 5.0

    @property
    def query_timeout(self) -> float:
        return max(5.0, self.connect_timeout)
