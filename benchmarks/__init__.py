"""The benchmark harness (issue #4): ``make bench`` / ``python -m benchmarks``.

One run starts its own PostgreSQL (fsync on) and, for the forwarding case, its own Kafka-protocol
broker, measures every case against that one server, and writes ``benchmarks/results.json`` and
``docs/benchmarks.md`` with plots. Load generators run as separate processes from the server under
test and report their own CPU cost:

- ``benchmarks.dbload``: asyncpg raw inserts/selects and the library (``PostgresEventStore``);
- ``benchmarks.peerload``: the ``eventsourcing`` library's PostgreSQL recorder, in threads;
- ``benchmarks.grpcload``: a multi-process grpc.aio client for the sidecar's gRPC edge;
- ``benchmarks/wrk/*.lua``: Debian's ``wrk`` (C) for the sidecar's REST edge;
- ``benchmarks.lagload``: paced appends with a subscriber or a Kafka consumer measuring delivery.
"""
