"""One bad append never costs its neighbours their writes: 30 good appends and 1 bad one, made to
share a group-commit transaction, on REST and on gRPC, against a served sidecar on real PostgreSQL.

Each bad input here passed validation once and was refused only by PostgreSQL (or by asyncpg)
inside the shared transaction, failing every request in it; or crashed the parser (500). Now each
is refused up front with 400 / INVALID_ARGUMENT and the 30 good appends are all stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import pytest

from tests.support.bursts import (
    Outcome,
    burst,
    good_grpc_request,
    good_rest_body,
    grpc_append_raw,
    raw_append_request,
    raw_event,
    rest_append,
)
from tests.support.sidecar import ServedSidecar

DEEP = b"[" * 1000 + b"]" * 1000
HUGE_INTEGER = b"1" * 5000


@dataclass(frozen=True)
class Poison:
    name: str
    event_type: bytes = b"Bad"
    payload: bytes = b"{}"
    occurred_at: str = ""
    metadata: bytes | None = None  # a JSON object: REST's "metadata", gRPC's extra_json

    def rest_body(self) -> bytes:
        event = b'{"event_type":"' + self.event_type + b'","payload":' + self.payload
        if self.occurred_at:
            event += b',"occurred_at":"' + self.occurred_at.encode() + b'"'
        if self.metadata is not None:
            event += b',"metadata":' + self.metadata
        return b'{"events":[' + event + b"}]}"

    def grpc_request(self, stream: str) -> bytes:
        return raw_append_request(stream, raw_event(
            self.event_type, self.payload, occurred_at=self.occurred_at, extra_json=self.metadata))


POISONS = [
    Poison("occurred_at_before_year_1_in_utc", occurred_at="0001-01-01T00:00:00+14:00"),
    Poison("occurred_at_after_year_9999_in_utc", occurred_at="9999-12-31T23:59:59-14:00"),
    Poison("event_type_raw_lone_surrogate", event_type=b"Bad\xed\xa0\x80"),
    Poison("metadata_escaped_lone_surrogate", metadata=b'{"note":"\\ud800"}'),
    Poison("payload_escaped_lone_surrogate", payload=b'{"s":"x\\udc00"}'),
    Poison("payload_escaped_nul", payload=b'{"s":"x\\u0000"}'),
    Poison("payload_number_1e200000", payload=b"[1e200000]"),
    Poison("payload_number_scale_16384", payload=b"1.5e-16383"),
    Poison("payload_nested_1000_deep", payload=DEEP),
    Poison("metadata_nested_1000_deep", metadata=b'{"x":' + DEEP + b"}"),
    Poison("payload_integer_of_5000_digits", payload=HUGE_INTEGER),
]
# REST only: a JSON escape in a JSON string field (gRPC's event_type is a protobuf string).
REST_ONLY = [Poison("event_type_escaped_lone_surrogate", event_type=b"Bad\\ud800")]


@pytest.fixture
async def channel(sidecar: ServedSidecar) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(sidecar.grpc_target) as ch:
        yield ch


def _check(result_summary: str, good: list[Outcome], bad: Outcome, stored: int, bad_status: int | str) -> None:
    print(result_summary)  # the figures of the closing note (pytest -s shows them)
    assert [o.status for o in good if not o.ok] == [], result_summary
    assert stored == len(good), result_summary
    assert bad.status == bad_status and bad.code == "SYS_EVSTORE_VALIDATION_ERROR", result_summary


@pytest.mark.parametrize("poison", POISONS + REST_ONLY, ids=lambda p: p.name)
async def test_rest_burst_with_one_poisoned_append(
    poison: Poison, sidecar: ServedSidecar, http: aiohttp.ClientSession
) -> None:
    async def good(stream: str, event_id: str, n: int) -> Outcome:
        return await rest_append(http, stream, good_rest_body(event_id, n))

    async def bad(stream: str) -> Outcome:
        return await rest_append(http, stream, poison.rest_body())

    result = await burst(http, sidecar.dsn, sidecar.schema, good, bad)
    _check(f"REST {poison.name}: {result.summary()}", result.good, result.bad, result.stored, 400)
    assert result.batches <= 2, "the good appends shared a transaction"


@pytest.mark.parametrize("poison", POISONS, ids=lambda p: p.name)
async def test_grpc_burst_with_one_poisoned_append(
    poison: Poison, sidecar: ServedSidecar, http: aiohttp.ClientSession, channel: grpc.aio.Channel
) -> None:
    async def good(stream: str, event_id: str, n: int) -> Outcome:
        return await grpc_append_raw(channel, good_grpc_request(stream, event_id, n))

    async def bad(stream: str) -> Outcome:
        return await grpc_append_raw(channel, poison.grpc_request(stream))

    result = await burst(http, sidecar.dsn, sidecar.schema, good, bad)
    _check(f"gRPC {poison.name}: {result.summary()}", result.good, result.bad, result.stored, "INVALID_ARGUMENT")
    assert result.batches <= 2, "the good appends shared a transaction"
