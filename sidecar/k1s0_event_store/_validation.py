"""The input rules every store and both protocol edges share: names, times, versions, read filters.

They live here, not in the stores, so that the in-memory store, PostgreSQL and the sidecar reject
exactly the same inputs with exactly the same messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from ._errors import ValidationError

#: ``expected_version=-1``: the stream must not exist yet.
NO_STREAM = -1

#: Versions and sequences are BIGINT in PostgreSQL; larger inputs are refused, not overflowed.
MAX_INT64 = 2**63 - 1
MAX_STREAM_ID_LENGTH = 255
MAX_EVENT_TYPE_LENGTH = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_name(value: object, field_name: str, max_length: int) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{field_name} must be a string", field=field_name)
    if not value:
        raise ValidationError(f"{field_name} must not be empty", field=field_name)
    if len(value) > max_length:
        raise ValidationError(f"{field_name} must be at most {max_length} characters", field=field_name)
    if _CONTROL.search(value):
        raise ValidationError(f"{field_name} must not contain control characters", field=field_name)
    if not value.isascii() and not _encodable(value):
        raise ValidationError(f"{field_name} contains an unpaired surrogate", field=field_name)
    if value != value.strip():
        raise ValidationError(f"{field_name} must not start or end with white space", field=field_name)
    return value


def _encodable(value: str) -> bool:
    """Whether ``value`` can be sent as UTF-8 (a lone surrogate, e.g. from ``"\\ud800"``, cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_timestamp(value: datetime, field_name: str) -> datetime:
    """A time with an offset that is still a time in UTC (``0001-01-01T00:00:00+14:00`` is not):
    PostgreSQL stores ``timestamptz`` in UTC, and Python cannot hand over one before year 1 or
    after 9999."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{field_name} must carry a time zone", field=field_name)
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(
            f"{field_name} is out of range: in UTC it must fall within years 1 to 9999", field=field_name
        ) from None
    return value


def validate_filters(values: Sequence[str], field_name: str, max_length: int = MAX_STREAM_ID_LENGTH) -> list[str]:
    """Read filters (stream prefixes, event types): the same rules as the names they match."""
    if isinstance(values, str):
        raise ValidationError(f"{field_name} must be a list of strings", field=field_name)
    return [validate_name(v, field_name, max_length) for v in values]


def validate_read_all(
    after_sequence: int, limit: int, stream_prefixes: Sequence[str], event_types: Sequence[str],
    until_sequence: int | None,
) -> tuple[list[str], list[str]]:
    """The arguments of ``read_all``, checked the same way by every store; returns the filters."""
    validate_version_bound(after_sequence, "after_sequence")
    validate_version_bound(limit, "limit", 1)
    if until_sequence is not None:
        validate_version_bound(until_sequence, "until_sequence")
    return (
        validate_filters(stream_prefixes, "stream_prefixes"),
        validate_filters(event_types, "event_types", MAX_EVENT_TYPE_LENGTH),
    )


def validate_expected_version(expected_version: object) -> int | None:
    if expected_version is None:
        return None
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise ValidationError("expected_version must be an integer", field="expected_version")
    if not NO_STREAM <= expected_version <= MAX_INT64:
        raise ValidationError(
            "expected_version must be -1 (no stream), 0 or a positive 64-bit version", field="expected_version"
        )
    return expected_version


def validate_version_bound(value: object, field_name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field_name} must be an integer", field=field_name)
    if value < minimum:
        raise ValidationError(f"{field_name} must be >= {minimum}", field=field_name)
    if value > MAX_INT64:
        raise ValidationError(f"{field_name} must fit in 64 bits (<= {MAX_INT64})", field=field_name)
    return value

