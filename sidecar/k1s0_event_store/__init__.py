"""k1s0_event_store: append-only event streams with optimistic concurrency (seed 002).

The public API is this module; everything else is private. Typical use::

    store = PostgresEventStore(EventStoreConfig(dsn="postgresql://…", schema="orders"))
    version = await store.append(StreamId("order", "order-001"), [EventEnvelope("OrderPlaced", {...})],
                                 expected_version=0)
    events = await store.load(StreamId("order", "order-001"))
"""

from ._api import EventStore, SnapshotStore
from ._config import EventStoreConfig
from ._errors import (
    ConcurrencyError,
    EventIdConflictError,
    EventNotFoundError,
    EventStoreError,
    NotFoundError,
    PermissionDeniedError,
    SnapshotNotFoundError,
    StreamAlreadyExistsError,
    StreamNotFoundError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
)
from ._json import MAX_JSON_DEPTH, MAX_JSON_DEPTH_LIMIT, decode_json_text, encode_json, parse_json
from ._listing import StreamList, StreamSummary
from ._model import (
    NO_STREAM,
    AppendRequest,
    AppendResult,
    DocumentPage,
    EncodedEvent,
    EncodedPage,
    EventEnvelope,
    EventVersion,
    Snapshot,
    StreamId,
    StreamPage,
    encode_event,
    prepare_append,
)
from .aggregates import Aggregate, AggregateRepository
from .consumer import EventConsumer, PublishedEvent, ensure_consumer_tables
from .kafka_security import KafkaSecurity, KafkaSecurityError
from .stores.memory import InMemoryEventStore, InMemorySnapshotStore
from .stores.postgres import PostgresEventStore, PostgresSnapshotStore, create_pool
from .stores.remote import GrpcEventStore, GrpcSnapshotStore

__version__ = "0.1.0"

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_JSON_DEPTH_LIMIT",
    "NO_STREAM",
    "Aggregate",
    "AggregateRepository",
    "AppendRequest",
    "AppendResult",
    "ConcurrencyError",
    "DocumentPage",
    "EncodedEvent",
    "EncodedPage",
    "EventConsumer",
    "EventEnvelope",
    "EventIdConflictError",
    "EventNotFoundError",
    "EventStore",
    "EventStoreConfig",
    "EventStoreError",
    "EventVersion",
    "GrpcEventStore",
    "GrpcSnapshotStore",
    "InMemoryEventStore",
    "InMemorySnapshotStore",
    "KafkaSecurity",
    "KafkaSecurityError",
    "NotFoundError",
    "PermissionDeniedError",
    "PostgresEventStore",
    "PostgresSnapshotStore",
    "PublishedEvent",
    "Snapshot",
    "SnapshotNotFoundError",
    "SnapshotStore",
    "StreamAlreadyExistsError",
    "StreamId",
    "StreamList",
    "StreamNotFoundError",
    "StreamPage",
    "StreamSummary",
    "UnauthenticatedError",
    "UnavailableError",
    "ValidationError",
    "__version__",
    "create_pool",
    "decode_json_text",
    "encode_event",
    "encode_json",
    "ensure_consumer_tables",
    "parse_json",
    "prepare_append",
]
