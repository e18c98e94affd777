"""k1s0_event_store: append-only event streams with optimistic concurrency.

The public API is this module and the public submodules below; modules and folders whose name
starts with ``_`` are private to this package (other packages import the names re-exported here).
Typical use::

    store = PostgresEventStore(EventStoreConfig(dsn="postgresql://…", schema="orders"))
    version = await store.append(StreamId("order", "order-001"), [EventEnvelope("OrderPlaced", {...})],
                                 expected_version=0)
    events = await store.load(StreamId("order", "order-001"))

Reads return envelopes unless asked for another form: ``store.read_all(0, 100, form=ReadForm.DOCUMENTS)``
gives each event as its JSON document (``event_document``), ``ReadForm.ENCODED`` as ``EncodedEvent``.

Besides the store API this module exports what the sidecar's edges share with the stores: append
preparation from wire input (``prepare_json_event``, ``prepared_append``), the input rules
(``validate_*``, ``MAX_*``) and the text forms (``rfc3339``, ``encode_event``, ``event_document``;
``event_json``, ``snapshot_json``, ``stream_summary_json`` as JSON objects).

Public submodules:

- ``protocol``: the gRPC protocol: generated messages and stubs (``event_store_pb2``,
  ``event_store_pb2_grpc``) and event metadata <-> protobuf (``metadata_to_pb``, ``metadata_from_pb``);
- ``error_map``: every error code with its HTTP status, gRPC status, category and exception class
  (the sidecar renders errors, the gRPC client decodes them and the CLI picks exit codes from it);
- ``schema``: the PostgreSQL schema, its migrations, identifier quoting and lock keys;
- ``sidecar_config``: the sidecar's configuration document (``config.yaml`` and ``EVENTSTORE_*``
  variables): the sidecar reads it, the operator writes it into each stream's ConfigMap;
- ``aggregates``, ``consumer``, ``kafka_security``: aggregates on a store, the Kafka consumer;
- ``stores.memory``, ``stores.postgres``, ``stores.remote``: the stores (also exported here).
"""

from ._api import EventStore, SnapshotStore
from ._appending import prepare_append, prepare_json_event, prepared_append
from ._config import EventStoreConfig
from ._encoding import (
    EncodedEvent,
    encode_event,
    event_document,
    event_json,
    rfc3339,
    snapshot_json,
    stream_summary_json,
)
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
from ._forms import ReadForm
from ._json import MAX_JSON_DEPTH, MAX_JSON_DEPTH_LIMIT, decode_json_text, encode_json, parse_json
from ._listing import StreamList, StreamSummary
from ._model import (
    AppendRequest,
    AppendResult,
    EventEnvelope,
    EventVersion,
    PreparedEvent,
    Snapshot,
    StreamId,
    StreamPage,
)
from ._validation import (
    MAX_EVENT_TYPE_LENGTH,
    MAX_INT64,
    MAX_STREAM_ID_LENGTH,
    NO_STREAM,
    validate_filters,
    validate_timestamp,
    validate_version_bound,
)
from .aggregates import Aggregate, AggregateRepository
from .consumer import EventConsumer, PublishedEvent, ensure_consumer_tables
from .kafka_security import KafkaSecurity, KafkaSecurityError
from .stores.memory import InMemoryEventStore, InMemorySnapshotStore
from .stores.postgres import PostgresEventStore, PostgresSnapshotStore, create_pool
from .stores.remote import GrpcEventStore, GrpcSnapshotStore

__version__ = "0.1.0"

__all__ = [
    "MAX_EVENT_TYPE_LENGTH",
    "MAX_INT64",
    "MAX_JSON_DEPTH",
    "MAX_JSON_DEPTH_LIMIT",
    "MAX_STREAM_ID_LENGTH",
    "NO_STREAM",
    "Aggregate",
    "AggregateRepository",
    "AppendRequest",
    "AppendResult",
    "ConcurrencyError",
    "EncodedEvent",
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
    "PreparedEvent",
    "PublishedEvent",
    "ReadForm",
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
    "event_document",
    "event_json",
    "parse_json",
    "prepare_append",
    "prepare_json_event",
    "prepared_append",
    "rfc3339",
    "snapshot_json",
    "stream_summary_json",
    "validate_filters",
    "validate_timestamp",
    "validate_version_bound",
]
