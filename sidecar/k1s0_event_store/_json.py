"""JSON text that PostgreSQL's ``jsonb`` will store: one strict parser and one encoder for every path.

Appends share a group-commit transaction, so a value that ``jsonb`` refuses inside it would fail
every neighbour of the request that carried it. Everything ``jsonb`` (or Python on the way to it)
could refuse is therefore refused here, before a request joins a batch, with a ValidationError
naming the field; the REST body, gRPC ``payload_json``/``state_json``/``extra_json`` and values a
library caller passes all go through these two functions, so both protocols accept and refuse
exactly the same documents.

The limits:

- text is UTF-8 (a raw surrogate such as ``ED A0 80`` is not); one leading byte order mark is
  ignored (RFC 8259 allows a parser to), anywhere else it is a syntax error;
- nesting depth at most ``max_depth`` (default 512): checked on the text before parsing, because
  Python's parser recurses and fails with RecursionError long before ``jsonb`` would;
- numbers are finite doubles (within ±1.8e308, what every JSON client can read back; ``NaN`` and
  ``Infinity`` are not JSON) with at most 16383 digits after the decimal point (``jsonb``'s
  numeric scale); integers have at most Python's int-string limit of digits (4300 by default);
- strings and keys contain neither NUL (``\\u0000``) nor an unpaired surrogate (``\\ud800``).
"""

from __future__ import annotations

import json
import math
import sys
from decimal import Decimal
from itertools import accumulate
from typing import Any

from ._errors import ValidationError

#: Default greatest nesting depth of a JSON value (a scalar is 0, ``[]`` and ``{}`` are 1).
MAX_JSON_DEPTH = 512
#: The deepest any configuration may allow: Python's parser and encoder recurse (limit 1000).
MAX_JSON_DEPTH_LIMIT = 900
#: ``jsonb`` numbers are PostgreSQL numerics: at most this many digits after the decimal point.
MAX_NUMERIC_SCALE = 16383

# Every byte but the four brackets, and each bracket's step in depth (for deeper_than).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = [0] * 256
for _open in b"[{":
    _DEPTH_STEP[_open] = 1
for _close in b"]}":
    _DEPTH_STEP[_close] = -1


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _checked_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {_short(text)} is out of range (at most ±1.8e308)")
    if ("e" in text or "E" in text or len(text) > MAX_NUMERIC_SCALE) and _scale(text) > MAX_NUMERIC_SCALE:
        raise ValueError(
            f"the number {_short(text)} has more than {MAX_NUMERIC_SCALE} digits after the decimal point"
        )
    return value


def _scale(text: str) -> int:
    exponent = Decimal(text).as_tuple().exponent
    assert isinstance(exponent, int)  # finite: the parser only hands over number literals
    return max(0, -exponent)


def _short(text: str) -> str:
    return text if len(text) <= 24 else f"{text[:12]}…{text[-8:]}"


# Every float literal goes through _checked_float: a Python call per float costs less than any
# scan of the text for the few literals that need it.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_checked_float)


def deeper_than(text: str, limit: int) -> bool:
    """Whether JSON ``text`` nests more than ``limit`` levels deep.

    Two C-level counts decide the usual case (no more brackets in all than ``limit``); otherwise
    the strings are cut out (escaped backslashes and quotes first, then every other piece between
    quotes) and the running depth over the remaining brackets is taken. Each step runs in C: a
    regular expression or a Python loop over the text cost several times the parse itself."""
    if text.count("[") + text.count("{") <= limit:
        return False
    outside = "".join(text.replace("\\\\", "").replace('\\"', "").split('"')[::2])
    brackets = outside.encode("utf-8", "surrogatepass").translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > limit


def _too_deep(field_name: str, max_depth: int) -> ValidationError:
    return ValidationError(f"{field_name} is nested more than {max_depth} levels deep", field=field_name)


def decode_json_text(raw: bytes, field_name: str) -> str:
    """Bytes from the wire as JSON text: strict UTF-8, one leading byte order mark dropped."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{field_name} is not valid UTF-8: {exc}", field=field_name) from None
    return text[1:] if text.startswith("\ufeff") else text


def parse_json(text: str, field_name: str, max_depth: int = MAX_JSON_DEPTH, *, wrapping: int = 0) -> Any:
    """Strict JSON within the limits above, or a ValidationError naming the field.

    ``wrapping``: the document wraps the values ``max_depth`` applies to in that many levels (a
    REST body: ``{"events": [{"payload": …}]}``); it is too deep exactly when one of them is."""
    if deeper_than(text, max_depth + wrapping):
        if wrapping:
            raise ValidationError(
                f"a value in the {field_name} is nested more than {max_depth} levels deep", field=field_name
            )
        raise _too_deep(field_name, max_depth)
    try:
        return _DECODER.decode(text)
    except RecursionError:  # a max_depth configured beyond what Python's parser can nest
        raise _too_deep(field_name, max_depth) from None
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise ValidationError(
                f"{field_name} has an integer of more than {sys.get_int_max_str_digits()} digits", field=field_name
            ) from None
        raise ValidationError(f"{field_name} is not valid JSON: {exc}", field=field_name) from None


def encode_json(value: Any, field_name: str, max_depth: int = MAX_JSON_DEPTH) -> str:
    """JSON text PostgreSQL's ``jsonb`` will accept, or a ValidationError naming the field."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise _too_deep(field_name, max_depth) from None
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{field_name} cannot be serialised as JSON: {exc}", field=field_name) from exc
    # jsonb rejects the NUL character in strings (and keys); refuse it up front, not as a 500 later.
    if "\\u0000" in text:
        raise ValidationError(f"{field_name} must not contain the NUL character (\\u0000)", field=field_name)
    if not text.isascii():  # (isascii is a flag check) a lone surrogate cannot be sent as UTF-8
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValidationError(f"{field_name} contains an unpaired surrogate", field=field_name) from None
    # (numbers need no check here: Python writes finite floats with at most 17 significant digits)
    if deeper_than(text, max_depth):
        raise _too_deep(field_name, max_depth)
    return text
