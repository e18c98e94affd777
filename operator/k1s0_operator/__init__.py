"""The k1s0 event-store operator (Kopf): EventStream reconciliation and sidecar injection.

Public surface: the resource's names, the spec parser, and ``run``; the public modules ``main``
(the operator process), ``webhook`` and ``injection`` (the sidecar-injection webhook), ``certs``
(its serving certificate) and ``uninstall_check`` (the chart's pre-delete hook). Modules whose
names start with ``_`` are private.
Importing ``k1s0_operator.main`` registers the Kopf handlers; this package does not, so that the
names below can be used (e.g. by the injection webhook) without pulling Kopf's registry in.
"""

from ._spec import (
    DEFAULT_TOPIC,
    GROUP,
    KIND,
    PAUSE_ANNOTATION,
    PLURAL,
    SHORT_NAME,
    STREAM_LABEL,
    VERSION,
    SpecError,
    StreamSpec,
    default_schema,
    parse_spec,
)

__all__ = [
    "DEFAULT_TOPIC",
    "GROUP",
    "KIND",
    "PAUSE_ANNOTATION",
    "PLURAL",
    "SHORT_NAME",
    "STREAM_LABEL",
    "VERSION",
    "SpecError",
    "StreamSpec",
    "default_schema",
    "parse_spec",
    "run",
]


def run(**kwargs: object) -> None:
    """``k1s0_operator.main.run`` (imported lazily: it registers the Kopf handlers)."""
    from .main import run as _run

    _run(**kwargs)  # type: ignore[arg-type]
