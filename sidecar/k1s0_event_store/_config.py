"""The library's configuration (seed 002's EventStoreConfig)."""

from __future__ import annotations

from dataclasses import dataclass

from ._json import MAX_JSON_DEPTH
from .schema import validate_identifier


@dataclass(frozen=True, slots=True)
class EventStoreConfig:
    """Where the event tables live and how the store uses them.

    ``dsn`` is any libpq URL asyncpg accepts (``postgresql://user:pass@host/db`` or a unix socket
    via ``?host=/path``). ``schema`` is validated as a PostgreSQL identifier on construction.
    """

    dsn: str
    schema: str = "event_store"
    snapshot_interval: int = 100
    min_connections: int = 1
    max_connections: int = 10
    connect_timeout_seconds: float = 5.0
    max_events_per_append: int | None = None
    #: Deepest nesting accepted in a payload, metadata or snapshot state.
    max_json_depth: int = MAX_JSON_DEPTH

    def __post_init__(self) -> None:
        validate_identifier(self.schema, "schema")
        if self.snapshot_interval < 0:
            raise ValueError("snapshot_interval must be >= 0")
        if not 0 <= self.min_connections <= self.max_connections or self.max_connections < 1:
            raise ValueError("need 0 <= min_connections <= max_connections and max_connections >= 1")
