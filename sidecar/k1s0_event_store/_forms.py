"""The forms a read returns its events in: envelopes, encoded events, or JSON documents.

One read per kind (``read_stream``, ``read_all``) takes a ``ReadForm``; the form fixes the type of
the events it returns. Every store serves every form, each in its own way: PostgreSQL selects other
columns (it builds the encoded text and the documents itself, so nothing is decoded on the way
through), the in-memory store encodes the envelopes it holds, the gRPC client converts what the
sidecar sends. A store hands ``ReadForm.choose`` its converter for each of the three forms and gets
back the one for the form asked for, typed: mypy checks that a store names all three and that each
returns what its form promises.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Generic, TypeVar

from ._encoding import EncodedEvent
from ._model import EventEnvelope

T = TypeVar("T")
#: What a store converts from (its rows, its envelopes, the messages it received).
R = TypeVar("R")
X = TypeVar("X")
V = TypeVar("V")
#: A store's converter of what it read into events of one form.
Convert = Callable[[R], list[X]]


class ReadForm(ABC, Generic[T]):
    """The form of the events a read returns: ``ReadForm.ENVELOPES`` (``EventEnvelope``, the
    default), ``ReadForm.ENCODED`` (``EncodedEvent``: JSON and times already text, what the gRPC
    edge sends) or ``ReadForm.DOCUMENTS`` (``str``: each event as its JSON document, what REST
    sends). No other forms exist."""

    ENVELOPES: ClassVar[ReadForm[EventEnvelope]]
    ENCODED: ClassVar[ReadForm[EncodedEvent]]
    DOCUMENTS: ClassVar[ReadForm[str]]

    name: ClassVar[str]
    #: The position of this form among the three (``pick``); ``choose`` names it in its types.
    _index: ClassVar[int]

    @abstractmethod
    def choose(self, envelopes: Convert[R, EventEnvelope], encoded: Convert[R, EncodedEvent],
               documents: Convert[R, str]) -> Convert[R, T]:
        """The converter for this form, out of a store's converters for all three."""

    def pick(self, envelopes: V, encoded: V, documents: V) -> V:
        """This form's value out of three of one type (e.g. the SQL columns each form selects)."""
        return (envelopes, encoded, documents)[self._index]

    def __repr__(self) -> str:
        return f"ReadForm.{self.name}"


class _Envelopes(ReadForm[EventEnvelope]):
    name, _index = "ENVELOPES", 0

    def choose(self, envelopes: Convert[R, EventEnvelope], encoded: Convert[R, EncodedEvent],
               documents: Convert[R, str]) -> Convert[R, EventEnvelope]:
        return envelopes


class _Encoded(ReadForm[EncodedEvent]):
    name, _index = "ENCODED", 1

    def choose(self, envelopes: Convert[R, EventEnvelope], encoded: Convert[R, EncodedEvent],
               documents: Convert[R, str]) -> Convert[R, EncodedEvent]:
        return encoded


class _Documents(ReadForm[str]):
    name, _index = "DOCUMENTS", 2

    def choose(self, envelopes: Convert[R, EventEnvelope], encoded: Convert[R, EncodedEvent],
               documents: Convert[R, str]) -> Convert[R, str]:
        return documents


ReadForm.ENVELOPES = _Envelopes()
ReadForm.ENCODED = _Encoded()
ReadForm.DOCUMENTS = _Documents()
