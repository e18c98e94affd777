"""Conditions in the ``metav1.Condition`` shape and the status block built from them.

A condition keeps its ``lastTransitionTime`` while its status stays the same (only reason,
message or observedGeneration change), as ``meta.SetStatusCondition`` does in Go.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

SCHEMA_READY = "SchemaReady"
TOPIC_READY = "TopicReady"
READY = "Ready"
#: True once the schema, role, Secret and ConfigMap have existed together: pods may get the sidecar
#: from then on, whatever Ready says now (the sidecar needs neither Kafka nor the operator to serve).
#: It stays True through later outages; the webhook refuses only streams that never got there.
PROVISIONED = "Provisioned"
CONDITION_TYPES = (SCHEMA_READY, TOPIC_READY, READY, PROVISIONED)

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True, slots=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None, updates: Sequence[Condition], generation: int | None
) -> list[dict[str, Any]]:
    """The full condition list: ``updates`` applied over ``previous``, in the canonical order."""
    by_type: dict[str, dict[str, Any]] = {}
    for c in previous or ():
        if isinstance(c, Mapping) and isinstance(c.get("type"), str):
            by_type[c["type"]] = dict(c)
    stamp = now()
    for u in updates:
        old = by_type.get(u.type)
        changed = old is None or old.get("status") != u.status
        entry: dict[str, Any] = {
            "type": u.type,
            "status": u.status,
            "reason": u.reason,
            "message": u.message[:32768],
            "lastTransitionTime": stamp if changed or old is None else old.get("lastTransitionTime", stamp),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        by_type[u.type] = entry
    ordered = [by_type.pop(t) for t in CONDITION_TYPES if t in by_type]
    return ordered + [by_type[t] for t in sorted(by_type)]


def ready_from(schema: Condition, topic: Condition) -> Condition:
    if schema.status == "True" and topic.status == "True":
        return Condition(READY, "True", "Reconciled", "schema, role, Secret, ConfigMap and topics are in place")
    failing = schema if schema.status != "True" else topic
    return Condition(READY, "False" if failing.status == "False" else "Unknown", failing.reason, failing.message)


def phase_of(ready: Condition) -> str:
    if ready.status == "True":
        return "Ready"
    if ready.reason in ("Conflict", "InvalidSpec", "SchemaImmutable", "ClusterImmutable", "UnknownCluster"):
        return "Failed"
    if ready.status == "Unknown":
        return "Pending"
    return "Degraded"
