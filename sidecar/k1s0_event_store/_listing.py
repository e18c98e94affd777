"""Listing streams: newest activity first, paged with an opaque cursor.

Every store orders the same way (``updated_at`` descending, then the stream id descending by code
point) and encodes the same cursor, so a cursor that one store handed out reads the next page of
any other store holding the same streams (the gRPC client passes the sidecar's cursor through).

The order is by last activity, which appends change: a stream appended to while someone pages
moves to the front, so it can be missed by pages already read or show up on a later page again. A
listing is a browsing aid, not a consistent snapshot; the global log (``read_all``) is.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ._errors import ValidationError
from ._model import StreamId
from ._validation import MAX_STREAM_ID_LENGTH, validate_version_bound

#: A prefix longer than any stream id matches nothing; refuse it instead of silently answering [].
MAX_PREFIX_LENGTH = MAX_STREAM_ID_LENGTH
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """One stream in a listing: its id, aggregate type, version and time of the last append."""

    stream_id: StreamId
    aggregate_type: str
    current_version: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class StreamList:
    """A page of streams; ``next_after`` reads the next page (``None``: this is the last one)."""

    streams: list[StreamSummary]
    next_after: str | None


def encode_cursor(updated_at: datetime, stream_id: str) -> str:
    """The position right after this stream: microseconds since the epoch and the id, base64url."""
    micros = (updated_at - _EPOCH) // _MICROSECOND
    raw = f"{micros}:{stream_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """``(updated_at, stream_id)`` of an ``encode_cursor`` value, or a ValidationError on ``after``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, sep, stream_id = raw.partition(":")
        if not sep or not stream_id or not micros.lstrip("-").isdigit():
            raise ValueError("malformed")
        return _EPOCH + int(micros) * _MICROSECOND, stream_id
    except (ValueError, UnicodeDecodeError, binascii.Error, OverflowError):
        raise ValidationError(
            "after must be a cursor returned by a previous listing (next_after)", field="after"
        ) from None


def validate_list_streams(prefix: str, after: str | None, limit: int) -> tuple[datetime, str] | None:
    """The arguments of ``list_streams``, checked the same way by every store; returns the position."""
    if not isinstance(prefix, str):
        raise ValidationError("prefix must be a string", field="prefix")
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ValidationError(f"prefix must be at most {MAX_PREFIX_LENGTH} characters", field="prefix")
    if "\x00" in prefix:
        raise ValidationError("prefix must not contain the NUL character", field="prefix")
    validate_version_bound(limit, "limit", 1)
    return decode_cursor(after) if after else None

