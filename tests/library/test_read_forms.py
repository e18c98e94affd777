"""Every store serves every read form (envelopes, encoded events, JSON documents), and they agree.

The edges serve the encoded and document forms: PostgreSQL renders them in SQL (text casts,
to_char, and for documents a concatenated JSON object), the in-memory store encodes the envelopes
it holds, and the gRPC client store converts the sidecar's messages. Events with text that JSON
must escape show whether each rendering escapes it exactly as JSON requires.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from k1s0_event_store import EncodedEvent, EventEnvelope, ReadForm, event_document, prepare_append, rfc3339

from .conftest import Stores

TRICKY: list[tuple[str, Any, dict[str, Any]]] = [
    ("Plain", {"n": 1}, {}),
    ('Quote"And\\Backslash', {"s": 'a"b\\c', "nl": "line\nbreak\ttab\u0001"}, {"k": "v\u2028w"}),
    ("Unicode.日本語", {"emoji": "\U0001f600", "ja": "イベント", "nested": [1, 2.5, None, True, {"x": []}]},
     {"correlation_id": "c-1", "deep": {"a": [1, {"b": "\u00e9"}]}}),
    ("Empty", {}, {}),
    ("Array", [1, "two", {"three": 3}], {}),
]
STREAM = "Order-\u00e9\"x"
_TEXT_FIELDS = ("stream_id", "sequence", "event_type", "version", "occurred_at", "stored_at", "event_id")


def _expected(e: EventEnvelope) -> dict[str, Any]:
    return {
        "stream_id": str(e.stream_id), "sequence": e.sequence, "event_type": e.event_type,
        "version": e.version, "payload": e.payload, "metadata": dict(e.metadata or {}),
        "occurred_at": rfc3339(e.occurred_at), "stored_at": rfc3339(e.stored_at), "event_id": str(e.event_id),
    }


def _as_document(e: EncodedEvent) -> dict[str, Any]:
    """An encoded event read as the document it stands for (its JSON text parsed)."""
    fields = dict(zip(_TEXT_FIELDS, (getattr(e, f) for f in _TEXT_FIELDS), strict=True))
    return {**fields, "payload": json.loads(e.payload_json), "metadata": json.loads(e.metadata_json)}


async def test_every_form_of_read_all_and_read_stream_agrees(stores: Stores) -> None:
    store = stores.events
    occurred = datetime(2026, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)
    events = [EventEnvelope(t, p, metadata=m, occurred_at=occurred) for t, p, m in TRICKY]
    await store.append_batch([prepare_append(STREAM, events)])
    await store.append_batch([prepare_append("plain-2", [EventEnvelope("Plain", {"n": 2})])])

    envelopes = await store.read_all(0, 100)
    encoded = await store.read_all(0, 100, form=ReadForm.ENCODED)
    documents = await store.read_all(0, 100, form=ReadForm.DOCUMENTS)
    assert len(envelopes) == len(TRICKY) + 1
    expected = [_expected(e) for e in envelopes]
    assert [json.loads(d) for d in documents] == expected
    assert [_as_document(e) for e in encoded] == expected
    assert all(isinstance(e, EncodedEvent) for e in encoded)
    # Python's renderer of the document agrees with the store's (PostgreSQL's own, for that store).
    assert [json.loads(event_document(e)) for e in encoded] == expected
    assert expected[1]["occurred_at"] == "2026-01-02T03:04:05.678+00:00"

    # filters and bounds apply alike in every form
    only = {"stream_prefixes": ["plain-"], "event_types": ["Plain"]}
    assert [json.loads(d) for d in await store.read_all(0, 100, form=ReadForm.DOCUMENTS, **only)] == expected[-1:]
    bounded = await store.read_all(expected[0]["sequence"], 2, form=ReadForm.ENCODED)
    assert [_as_document(e) for e in bounded] == expected[1:3]

    # stream pages: the whole stream, a type filter, and offset/limit paging, in every form
    in_stream = expected[: len(TRICKY)]
    for kw, want in [
        ({"limit": 100}, in_stream),
        ({"event_type": "Unicode.日本語"}, [x for x in in_stream if x["event_type"] == "Unicode.日本語"]),
        ({"from_version": 2, "offset": 1, "limit": 2}, in_stream[2:4]),
    ]:
        plain = await store.read_stream(STREAM, **kw)  # type: ignore[arg-type]
        page = await store.read_stream(STREAM, form=ReadForm.ENCODED, **kw)  # type: ignore[arg-type]
        docs = await store.read_stream(STREAM, form=ReadForm.DOCUMENTS, **kw)  # type: ignore[arg-type]
        assert [_expected(e) for e in plain.events] == want, kw
        assert [_as_document(e) for e in page.events] == want, kw
        assert [json.loads(d) for d in docs.events] == want, kw
        totals = {(p.stream_id, p.current_version, p.total_count) for p in (plain, page, docs)}
        assert totals == {(plain.stream_id, len(TRICKY), plain.total_count)}, kw


def test_each_form_picks_the_value_of_the_converter_it_chooses() -> None:
    """``pick`` (values of one type, e.g. PostgreSQL's columns) and ``choose`` (typed converters)
    name the same form: a store that selects a form's columns gets that form's converter."""

    def named(name: str) -> Any:
        return lambda rows: [name]

    forms = (ReadForm.ENVELOPES, ReadForm.ENCODED, ReadForm.DOCUMENTS)
    for form in forms:
        chosen = form.choose(named("envelopes"), named("encoded"), named("documents"))(None)
        assert chosen == [form.pick("envelopes", "encoded", "documents")] == [form.name.lower()]
