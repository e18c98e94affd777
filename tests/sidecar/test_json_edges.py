"""Property: JSON at PostgreSQL's edges is either stored and read back equal, or refused with a 4xx
and the error body, and REST and gRPC decide the same way for the same document.

Hypothesis builds JSON *text* (not Python values) so that it can reach what only text can carry:
numbers beyond a double or beyond numeric's scale, integers past Python's digit limit, escaped and
raw lone surrogates, escaped NUL, a byte order mark, nesting around the depth limit. Each fragment
knows whether the documented limits allow it; the sidecar must agree on both protocols.
"""

from __future__ import annotations

import json
import uuid
from typing import NamedTuple

import grpc
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc
from k1s0_sidecar._errors import error_info_from_call
from tests.support.bursts import raw_append_request, raw_event
from tests.support.sidecar import ServedSidecar

MAX_DEPTH = 512
BOM = "\ufeff".encode()


class Fragment(NamedTuple):
    text: str  # may hold lone surrogates: sent as raw bytes with "surrogatepass"
    ok: bool  # whether the documented limits allow it
    depth: int


# -- leaves ------------------------------------------------------------------------------------

EDGE_NUMBERS = [
    ("0", True), ("-0", True), ("-0.0", True), ("1e308", True), ("1.5e308", True), ("-1.7976931348623157e308", True),
    ("1e309", False), ("-2e309", False), ("9.99e308", False), ("1e131071", False), ("1e200000", False),
    ("1e-307", True), ("5e-324", True), ("1e-400", True), ("1e-16383", True), ("1.5e-16383", False),
    ("1e-16384", False), ("1E+5", True), ("12345678901234567890.123456789", True),
    ("0." + "0" * 16382 + "1", True), ("0." + "0" * 16383 + "1", False),  # scale 16383, 16384
    ("9" * 4300, True), ("-" + "9" * 4300, True), ("9" * 4301, False), ("1" * 5000, False),
    ("9223372036854775808", True), ("1" * 400 + ".5", False),  # the last one overflows a double
]
# (drawn by index: a strategy holding these 16 kB literals would print them in every repr)
edge_numbers = st.integers(0, len(EDGE_NUMBERS) - 1).map(lambda i: Fragment(EDGE_NUMBERS[i][0], EDGE_NUMBERS[i][1], 0))
numbers = st.one_of(
    edge_numbers,
    st.integers(-(10**30), 10**30).map(lambda i: Fragment(str(i), True, 0)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: Fragment(repr(f), True, 0)),
)

# Pieces of a string literal: (text inside the quotes, allowed?)
STRING_PIECES = [
    ("\\u0000", False), ("\\ud800", False), ("\\udfff", False), ("\\ud83d\\ude00", True), ("\ud800", False),
    ("\\ud83d", False), ("\ufeff", True), ("\\ufeff", True), ("\u0001", False), ("\\n", True), ("\\\\", True),
    ("é", True), ("😀", True), ("\\u00e9", True),
]
plain_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8).map(
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1])
string_piece = st.one_of(plain_text.map(lambda t: (t, True)), st.sampled_from(STRING_PIECES))
strings = st.lists(string_piece, max_size=3).map(
    lambda parts: Fragment('"' + "".join(p for p, _ in parts) + '"', all(ok for _, ok in parts), 0))
literals = st.sampled_from(["true", "false", "null"]).map(lambda t: Fragment(t, True, 0))
leaves = st.one_of(numbers, strings, literals)


def _array(items: list[Fragment]) -> Fragment:
    return Fragment("[" + ",".join(i.text for i in items) + "]", all(i.ok for i in items),
                    1 + max((i.depth for i in items), default=0))


def _object(pairs: list[tuple[Fragment, Fragment]]) -> Fragment:
    return Fragment("{" + ",".join(f"{k.text}:{v.text}" for k, v in pairs) + "}",
                    all(k.ok and v.ok for k, v in pairs), 1 + max((v.depth for _, v in pairs), default=0))


def _key(pair: tuple[Fragment, Fragment]) -> object:
    try:
        return json.loads(pair[0].text)
    except ValueError:  # a raw control character: not JSON, and unique as it is
        return pair[0].text


values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(_array),
        # unique keys: with a repeated key the parser keeps the last value, hiding an earlier one
        st.lists(st.tuples(strings, inner), max_size=3, unique_by=_key).map(_object),
    ),
    max_leaves=6,
)


@st.composite
def documents(draw: st.DrawFn) -> tuple[Fragment, bool]:
    """A payload (nested to around the depth limit now and then) and whether it starts with a BOM."""
    # A third each: any value, one edge number beside one, one string with an edge piece beside one
    # (so that each edge is met often within few examples, not hidden behind another refusal).
    value = draw(values)
    kind = draw(st.sampled_from(["value", "number", "string"]))
    if kind == "number":
        value = _array([draw(edge_numbers), value])
    elif kind == "string":
        piece, ok = draw(st.sampled_from(STRING_PIECES))
        key, other = Fragment('"k"', True, 0), Fragment('"v"', True, 0)
        value = _object([(key, Fragment(f'"a{piece}b"', ok, 0)), (other, value)])
    target = draw(st.sampled_from([None] * 6 + [MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 1000]))
    if target is not None and target > value.depth:
        wrap = target - value.depth
        value = Fragment("[" * wrap + value.text + "]" * wrap, value.ok, target)
    return Fragment(value.text, value.ok and value.depth <= MAX_DEPTH, value.depth), draw(st.booleans())


event_types = st.sampled_from([
    *[("Placed", True)] * 5, ("Placed\ufeff", True), ("Plac\u00e9d", True), ("Bad\ud800", False), ("Bad\udc00x", False),
    ("Bad\x00", False), ("Ba\u2028d", True), ("Bad\u2028", False),  # (trailing white space)
])


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _same_json(a: object, b: object) -> bool:
    """Equal as JSON: a number is a number (jsonb writes 7.0e16 as 70000000000000000, which Python
    reads as an int), compared as the double it denotes when either side is a float."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b if isinstance(a, int) and isinstance(b, int) else float(a) == float(b)
    return a == b


class Answer(NamedTuple):
    ok: bool
    payload: object = None


def _rest(sidecar: ServedSidecar, stream: str, event_type: str, raw_et: bool, doc: Fragment, bom: bool) -> Answer:
    et = _bytes(json.dumps(event_type, ensure_ascii=not raw_et)) if raw_et else json.dumps(event_type).encode()
    body = (BOM if bom else b"") + b'{"events":[{"event_type":' + et + b',"payload":' + _bytes(doc.text) + b"}]}"
    r = requests.post(f"{sidecar.base_url}/api/v1/streams/{stream}/events", data=body,
                      headers={"Content-Type": "application/json"}, timeout=30)
    if r.status_code != 201:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:500])
        error = r.json()["error"]
        assert error["code"].startswith("SYS_EVSTORE_") and error["request_id"] == r.headers["X-Request-Id"]
        return Answer(False)
    sequence = r.json()["events"][0]["sequence"]
    read = requests.get(f"{sidecar.base_url}/api/v1/streams/{stream}/events/{sequence}", timeout=30)
    assert read.status_code == 200, read.text[:500]
    return Answer(True, read.json()["payload"])


def _grpc(stub: pb_grpc.EventStoreServiceStub, channel: grpc.Channel, stream: str, event_type: str,
          doc: Fragment, bom: bool) -> Answer:
    request = raw_append_request(stream, raw_event(_bytes(event_type), (BOM if bom else b"") + _bytes(doc.text)))
    call = channel.unary_unary("/k1s0.system.eventstore.v1.EventStoreService/AppendEvents",
                               request_serializer=None, response_deserializer=pb.AppendEventsResponse.FromString)
    try:
        response = call(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc  # type: ignore[attr-defined]
        info = error_info_from_call(exc)
        assert info is not None and info.reason == "SYS_EVSTORE_VALIDATION_ERROR" and info.metadata["request_id"]
        return Answer(False)
    read = stub.ReadEventBySequence(pb.ReadEventBySequenceRequest(stream_id=stream,
                                                                  sequence=response.events[0].sequence))
    return Answer(True, json.loads(read.event.payload_json))


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(document=documents(), event_type=event_types, raw_event_type=st.booleans())
def test_json_at_postgresql_edges_is_stored_equal_or_refused_alike(
    sidecar: ServedSidecar, document: tuple[Fragment, bool], event_type: tuple[str, bool], raw_event_type: bool
) -> None:
    doc, bom = document
    name, name_ok = event_type
    stream = f"edge-{uuid.uuid4().hex[:12]}"
    rest = _rest(sidecar, stream, name, raw_event_type, doc, bom)
    with grpc.insecure_channel(sidecar.grpc_target) as channel:
        answer = _grpc(pb_grpc.EventStoreServiceStub(channel), channel, stream + "g", name, doc, bom)
    allowed = doc.ok and name_ok
    assert (rest.ok, answer.ok) == (allowed, allowed), (doc.text[:200], name, bom)
    if allowed:
        expected = json.loads(doc.text)
        assert _same_json(rest.payload, expected), (rest.payload, doc.text[:200])
        assert _same_json(answer.payload, expected), (answer.payload, doc.text[:200])
