"""Kopf handlers for EventStream; registered in Kopf's default registry when this module is imported.

Every path that changes the world runs ``_reconcile.reconcile`` (idempotent): create, resume
(operator restart), update, and a timer that re-checks each EventStream for drift. A resource
annotated ``eventstore.k1s0.io/paused: "true"`` is left alone by all of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from . import _health, _reconcile
from ._login import connection_info
from ._runtime import Runtime, drift_interval
from ._spec import DEFAULT_CLUSTER, GROUP, PAUSE_ANNOTATION, PLURAL, VERSION

FINALIZER = f"{GROUP}/finalizer"
KOPF_PREFIX = f"kopf.{GROUP}"
RESOURCE = (GROUP, VERSION, PLURAL)


def _paused(annotations: Mapping[str, str], **_: Any) -> bool:
    return str(annotations.get(PAUSE_ANNOTATION, "")).lower() == "true"


def _active(annotations: Mapping[str, str], **_: Any) -> bool:
    return not _paused(annotations)


def _cluster(body: kopf.Body) -> str:
    """The PostgreSQL cluster a stream is on (as provisioned, else as asked), for the metrics."""
    recorded = (body.get("status") or {}).get("cluster")
    asked = ((body.get("spec") or {}).get("database") or {}).get("cluster")
    return str(recorded or asked or DEFAULT_CLUSTER)


def _runtime(memo: kopf.Memo) -> Runtime:
    runtime = memo.get("runtime")
    if not isinstance(runtime, Runtime):  # pragma: no cover - run() always sets it
        raise kopf.PermanentError("the operator was started without its runtime (use k1s0_operator.run)")
    return runtime


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Kopf's own bookkeeping goes to annotations, so the status holds only ours. Its prefix must not
    # be our group's: Kopf leaves every annotation under its storage prefix out of the diff, and
    # then removing the pause annotation would not count as a change.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
    settings.persistence.finalizer = FINALIZER
    # A deletion waits for a drift check that is running to finish; Kopf looks again only after
    # this many seconds (default 60), which held finalizers for a minute after the clean-up was done.
    settings.background.cancellation_polling = 5
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    return connection_info(settings)


@kopf.on.resume(*RESOURCE, when=_active)
@kopf.on.create(*RESOURCE, when=_active)
@kopf.on.update(*RESOURCE, when=_active)
async def reconcile(
    body: kopf.Body, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, retry: int, **_: Any
) -> None:
    async with _health.tracked("reconcile", patch, _cluster(body)):
        await _reconcile.reconcile(body=body, status=status, patch=patch, runtime=_runtime(memo), retry=retry)


@kopf.timer(*RESOURCE, interval=drift_interval(), initial_delay=drift_interval(), when=_active)
async def check_drift(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    if body.get("metadata", {}).get("deletionTimestamp"):
        return  # being deleted: re-provisioning now would race the finalizer's clean-up
    generation = body.get("metadata", {}).get("generation")
    if status.get("observedGeneration") != generation:
        return  # a spec change is not handled yet: that is the change handlers' job, not drift
    async with _health.tracked("drift", patch, _cluster(body)):
        await _reconcile.reconcile(body=body, status=status, patch=patch, runtime=_runtime(memo), retry=0)


@kopf.on.resume(*RESOURCE, when=_paused)
@kopf.on.create(*RESOURCE, when=_paused)
@kopf.on.update(*RESOURCE, when=_paused)
def report_paused(status: kopf.Status, patch: kopf.Patch, **_: Any) -> None:
    if status.get("phase") != "Paused":
        patch.status["phase"] = "Paused"


@kopf.on.delete(*RESOURCE, when=_active)
async def delete(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    async with _health.tracked("delete", cluster=_cluster(body)):
        await _reconcile.delete(body=body, runtime=_runtime(memo), retry=retry)
