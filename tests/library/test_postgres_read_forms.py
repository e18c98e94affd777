"""PostgresEventStore's three read forms (envelopes, encoded events, JSON documents) say the same.

The edges serve the encoded and document forms, which PostgreSQL renders (text casts, to_char,
and for documents a concatenated JSON object); the envelope form is decoded by Python. Events with
text that JSON must escape show whether the rendering escapes it exactly as JSON requires.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from k1s0_event_store import EventEnvelope, EventStoreConfig, PostgresEventStore, prepare_append
from k1s0_event_store._model import rfc3339

TRICKY: list[tuple[str, Any, dict[str, Any]]] = [
    ("Plain", {"n": 1}, {}),
    ('Quote"And\\Backslash', {"s": 'a"b\\c', "nl": "line\nbreak\ttab\u0001"}, {"k": "v\u2028w"}),
    ("Unicode.日本語", {"emoji": "\U0001f600", "ja": "イベント", "nested": [1, 2.5, None, True, {"x": []}]},
     {"correlation_id": "c-1", "deep": {"a": [1, {"b": "\u00e9"}]}}),
    ("Empty", {}, {}),
    ("Array", [1, "two", {"three": 3}], {}),
]


def _expected(e: EventEnvelope) -> dict[str, Any]:
    return {
        "stream_id": str(e.stream_id), "sequence": e.sequence, "event_type": e.event_type,
        "version": e.version, "payload": e.payload, "metadata": dict(e.metadata or {}),
        "occurred_at": rfc3339(e.occurred_at), "stored_at": rfc3339(e.stored_at), "event_id": str(e.event_id),
    }


async def test_envelopes_encoded_events_and_documents_agree(config: EventStoreConfig) -> None:
    store = PostgresEventStore(config)
    try:
        occurred = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
        events = [EventEnvelope(t, p, metadata=m, occurred_at=occurred) for t, p, m in TRICKY]
        await store.append_batch([prepare_append("Order-\u00e9\"x", events)])
        await store.append_batch([prepare_append("plain-2", [EventEnvelope("Plain", {"n": 2})])])

        envelopes = await store.read_all(0, 100)
        encoded = await store.read_all_encoded(0, 100)
        documents = await store.read_all_documents(0, 100)
        assert len(envelopes) == len(encoded) == len(documents) == len(TRICKY) + 1

        expected = [_expected(e) for e in envelopes]
        assert [json.loads(d) for d in documents] == expected
        for x, e in zip(expected, encoded, strict=True):
            fields = ("stream_id", "sequence", "event_type", "version", "occurred_at", "stored_at", "event_id")
            assert tuple(getattr(e, f) for f in fields) == tuple(x[f] for f in fields)
            assert json.loads(e.payload_json) == x["payload"]
            assert json.loads(e.metadata_json) == x["metadata"]
        assert expected[1]["occurred_at"] == "2026-01-02T03:04:05.678+00:00"

        # stream pages: the fast path (no type filter) and the filtered one give the same rows
        sid = "Order-\u00e9\"x"
        page = await store.read_stream_encoded(sid, limit=100)
        filtered = await store.read_stream_encoded(sid, event_type="Unicode.日本語")
        docs = await store.read_stream_documents(sid, limit=100)
        assert page.current_version == filtered.current_version == docs.current_version == len(TRICKY)
        assert list(page.events) == list(encoded[: len(TRICKY)])
        assert list(filtered.events) == [e for e in encoded if e.event_type == "Unicode.日本語"]
        assert filtered.total_count == 1
        assert [json.loads(d) for d in docs.documents] == expected[: len(TRICKY)]
    finally:
        await store.close()
