"""The cases of issue #4, what each is compared with, and the targets.

Every case has a raw baseline measured in the same run (``baseline``): appends against asyncpg
INSERTs at the same concurrency and events per transaction, reads against an asyncpg SELECT of the
same rows in the same page size. Appends of the library and the sidecar are also compared with the
``eventsourcing`` peer at the same concurrency (``peer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: 1-event appends are measured at these client counts (the issue's 1, 8, 32, 128).
CONCURRENCY = (1, 8, 32, 128)
#: The 10,000-event stream the read cases page through, and its page sizes.
READ_STREAM = "read-stream"
READ_STREAM_LENGTH = 10_000
STREAM_PAGE = 200
ALL_PAGE = 1000
READ_CONCURRENCY = (1, 8)
#: Subscription delivery and Kafka forwarding are measured at this fixed append rate.
LAG_RATE = 2000.0
#: ... as 2,000 1-event appends/s, and as 200 10-event appends/s (delivery without a saturated edge).
LAG_EVENTS_PER_APPEND = (1, 10)

APPEND_TARGETS = ("raw", "library", "peer", "grpc", "rest")
#: The edge floors: each edge framework answering appends with a fixed response, no event store
#: behind it (``benchmarks/floor.py``), at these client counts.
FLOOR_TARGETS = {
    "floor-grpc": "gRPC empty AppendEvents handler (grpcio alone)",
    "floor-rest": "REST empty append handler (aiohttp alone)",
}
FLOOR_CONCURRENCY = (1, 32, 128)


@dataclass(frozen=True)
class Case:
    #: raw (asyncpg), library (PostgresEventStore), peer (eventsourcing), grpc, rest (the sidecar),
    #: lag (paced appends, measured at a subscriber and a Kafka consumer), floor-grpc, floor-rest
    #: (the edge frameworks alone, see ``FLOOR_TARGETS``)
    target: str
    #: append | read-stream | read-all | lag
    operation: str
    concurrency: int
    events: int = 1
    #: uniform | zipf | hot (hot: one stream, expected_version, conflicts counted)
    distribution: str = "uniform"
    page_size: int = 0

    @property
    def name(self) -> str:
        clients = f"{self.concurrency} client{'s' if self.concurrency > 1 else ''}"
        if self.target in FLOOR_TARGETS:
            return f"floor: {FLOOR_TARGETS[self.target]}, {clients}"
        if self.operation == "append":
            what = f"append {self.events} event{'s' if self.events > 1 else ''}"
            if self.distribution != "uniform":
                what += f", {self.distribution} stream" + ("" if self.distribution == "zipf" else " + expected_version")
        elif self.operation == "lag":
            return f"lag: {self.events}-event appends at {LAG_RATE:.0f} events/s"
        else:
            what = f"{self.operation} (pages of {self.page_size})"
        return f"{self.target}: {what}, {clients}"

    @property
    def group(self) -> str:
        if self.target in FLOOR_TARGETS:
            return "floor"
        if self.operation == "append":
            if self.distribution == "hot":
                return "append-hot"
            if self.distribution == "zipf":
                return "append-zipf"
            return f"append-{self.events}"
        return self.operation

    def baseline(self) -> Case | None:
        """The raw case this one is divided by (None for raw cases and the lag cases)."""
        if self.target == "raw" or self.operation == "lag":
            return None
        if self.operation == "append":
            dist = "uniform" if self.distribution == "hot" else self.distribution
            return Case("raw", "append", self.concurrency, self.events, dist)
        return Case("raw", self.operation, self.concurrency, page_size=self.page_size)

    def peer(self) -> Case | None:
        """The eventsourcing case at the same concurrency (appends to uniform streams only)."""
        if (self.operation != "append" or self.distribution != "uniform"
                or self.target in {"raw", "peer", *FLOOR_TARGETS}):
            return None
        return Case("peer", "append", self.concurrency, self.events)


def all_cases() -> list[Case]:
    """Every case, in the order the harness runs them (the database-only ones first)."""
    cases: list[Case] = []
    for target in APPEND_TARGETS:
        for c in CONCURRENCY:
            cases.append(Case(target, "append", c))
        cases.append(Case(target, "append", 8, events=100))
        if target != "peer":
            cases.append(Case(target, "append", 32, distribution="zipf"))
        if target in {"library", "grpc", "rest"}:
            cases.append(Case(target, "append", 32, distribution="hot"))
    for target in ("raw", "library", "grpc", "rest"):
        for c in READ_CONCURRENCY:
            cases.append(Case(target, "read-stream", c, page_size=STREAM_PAGE))
    for target in ("raw", "grpc", "rest"):
        for c in READ_CONCURRENCY:
            cases.append(Case(target, "read-all", c, page_size=ALL_PAGE))
    for target in FLOOR_TARGETS:
        for c in FLOOR_CONCURRENCY:
            cases.append(Case(target, "append", c))
    for events in LAG_EVENTS_PER_APPEND:
        cases.append(Case("lag", "lag", 1, events=events))
    return cases


class Named(Protocol):
    """A case of any group (``Case``, the fleet's ``FleetCase``): targets find its record by name."""

    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Target:
    """One line of the issue's targets: ``check`` names the cases; ``kind`` how they are judged."""

    text: str
    #: ratio: case / baseline >= threshold; peer: case / peer >= threshold; max_ms / max_mib: value <= threshold;
    #: min: the record's ``metric`` >= threshold (a ratio the fleet group computes)
    kind: str
    threshold: float
    cases: tuple[Named, ...]
    metric: str = ""


def targets() -> list[Target]:
    grpc32 = Case("grpc", "append", 32)
    hundred = (Case("grpc", "append", 8, 100), Case("rest", "append", 8, 100))
    vs_peer = tuple(Case(t, "append", c) for t in ("grpc", "rest") for c in CONCURRENCY) + hundred
    reads = tuple(
        Case(t, op, c, page_size=STREAM_PAGE if op == "read-stream" else ALL_PAGE)
        for t in ("grpc", "rest") for op in ("read-stream", "read-all") for c in READ_CONCURRENCY
    )
    lag = tuple(Case("lag", "lag", 1, events=e) for e in LAG_EVENTS_PER_APPEND)
    sidecar = tuple(c for c in all_cases() if c.target in {"grpc", "rest", "lag"})
    return [
        Target("gRPC 1-event appends at 32 clients >= 1.0 x raw one-event-per-transaction at 32 tasks",
               "ratio", 1.0, (grpc32,)),
        Target("100-event appends >= 0.7 x raw multi-row insert (8 clients)", "ratio", 0.7, hundred),
        Target("sidecar appends >= 2 x the eventsourcing library at the same concurrency", "peer", 2.0, vs_peer),
        Target("stream and read-all reads >= 0.5 x the raw SELECT of the same rows", "ratio", 0.5, reads),
        Target("subscription delivery p99 <= 100 ms at 2,000 events/s", "max_ms", 100.0, lag, "subscription_p99_ms"),
        Target("Kafka forwarding lag p99 <= 250 ms at 2,000 events/s", "max_ms", 250.0, lag, "forwarding_p99_ms"),
        Target("sidecar RSS <= 150 MiB under load", "max_mib", 150.0, sidecar, "server_rss_mib"),
    ]
