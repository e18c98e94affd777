"""The outbox relay: every committed event, in sequence order, to Kafka, at least once.

Public: ``Forwarder`` (the component the runtime starts and stops; ``status()`` is the body of
``GET /api/v1/forwarder/status``), ``ForwarderSettings`` (its tuning) and ``disabled_status()``
(the body when ``kafka.brokers`` is empty). No public submodules; the private ones, by concern:
``_forwarder`` (the component: supervision and reconnects), ``_lease`` (the advisory-lock session),
``_outbox`` (the read after the checkpoint, the checkpoint write), ``_relay`` (rounds, retries,
backoff), ``_records`` (an outbox row as a Kafka message), ``_publisher`` (the Kafka protocol side),
``_lag`` (the lag monitor), ``_status``, ``_metrics``, ``_settings`` and ``_signals``.

How it stays correct
--------------------
* **Where it reads.** ``events`` is the outbox. The forwarder reads ``sequence > checkpoint`` in
  sequence order, and only up to ``safe_sequence()``, taken by a statement of its own before the
  read. Appenders commit in parallel, so sequence order is not commit order; but no event at or
  below the safe sequence can still commit, so the forwarder never moves past an event that
  appears later (``k1s0_event_store.schema``; docs/design.md, "Global order").
* **When it moves on.** A *round* is a contiguous range of sequences, encoded as exactly one record
  batch per (topic, partition) (``_publisher``). The checkpoint moves to the round's end only after
  every batch was acknowledged (``acks=all`` by default). A crash anywhere before that re-sends the
  round: duplicates, never a loss.
* **Order.** Key = ``stream_id``, Kafka's murmur2 partitioner: one partition per stream (per
  topic). The next round starts only after the previous one was acknowledged completely, so at most
  one batch per partition is ever in flight, and a retried batch is the same batch again. Whatever
  fails or repeats, a consumer meets version *n* of a stream for the first time only after it met
  version *n-1*: repeats go backwards (duplicates), never forwards (gaps filled later).
* **Who forwards.** One forwarder per schema is active: the one holding a session-level advisory
  lock (``schema.forwarder_lock_key``) on a dedicated connection. The others are standby and try
  the lock every ``lease_retry_interval``. A holder that dies loses its connection and with it the
  lock at once (``kill -9``: immediately; a vanished host: after the server's TCP keepalive, set
  here to about 20 s). The checkpoint is written on that same connection, so a forwarder that lost
  its lock can no longer move the checkpoint.
* **When it looks.** Right after this sidecar's own commits (``Forwarder.wake``), and every
  ``poll_interval`` for other sidecars' commits: appends send no notification.
* **When Kafka is away.** Appends do not depend on the forwarder; the backlog waits in PostgreSQL.
  The forwarder retries with capped exponential backoff and reports what is wrong (unreachable
  broker, missing topic, refused batch) in ``status()`` and the metrics. It never creates topics.
"""

from ._forwarder import Forwarder
from ._settings import ForwarderSettings
from ._status import disabled_status

__all__ = ["Forwarder", "ForwarderSettings", "disabled_status"]
