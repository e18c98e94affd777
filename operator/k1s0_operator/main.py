"""The operator process: configuration, Kubernetes login, and Kopf's loop.

Importing this module registers every handler of the operator in Kopf's default registry (Kopf
registers on import); an extra feature registers by adding one import line below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence

import kopf
from kopf._core.engines.peering import Identity  # kopf 1.45's type of the identity argument

from . import _handlers  # noqa: F401 - registers the EventStream handlers
from ._health import liveness_endpoint  # importing registers the liveness probe, /readyz and /metrics
from ._login import kubernetes_client
from ._peering import Peering, ensure_objects, peering_from_env
from ._resources import Kube
from ._runtime import Runtime, backoff_base, load_operator
from .webhook import inject_sidecar  # noqa: F401 - registers the sidecar-injection webhook (/inject-sidecar)

logger = logging.getLogger("k1s0_operator")

__all__ = ["Kube", "Peering", "Runtime", "build_runtime", "kubernetes_client", "operate", "peering_from_env", "run"]


def build_runtime(config_path: str | None = None) -> Runtime:
    config, clusters = load_operator(config_path)
    return Runtime(config=config, kube=Kube(kubernetes_client()), backoff_base=backoff_base(), clusters=clusters)


async def operate(
    runtime: Runtime,
    *,
    namespaces: Sequence[str] = (),
    clusterwide: bool = False,
    stop_flag: asyncio.Future[None] | threading.Event | None = None,
    ready_flag: asyncio.Future[None] | threading.Event | None = None,
    peering: Peering | None = None,
) -> None:
    """Run Kopf until ``stop_flag`` is set (or a signal arrives when it is None).

    ``peering`` None: standalone, no peering CRD needed, and exactly one replica may run. With a
    ``Peering``: mandatory Kopf peering (``_peering.py``); replicas with lower priority pause.
    """
    if not clusterwide and not namespaces:
        raise ValueError("give --namespace at least once, or --all-namespaces")
    if peering is None:
        await kopf.operator(
            namespaces=list(namespaces),
            clusterwide=clusterwide,
            standalone=True,  # one replica; no peering CRD needed
            memo=kopf.Memo(runtime=runtime),
            liveness_endpoint=liveness_endpoint(),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
        return
    settings = kopf.OperatorSettings()
    peering.apply(settings)
    logger.info(
        "peering %r as %r with priority %d (lifetime %ds)",
        peering.name, peering.identity, peering.priority, peering.lifetime,
    )
    # Started before Kopf, so Kopf's exit leaves it alone; cancelled here once Kopf is done.
    joining = asyncio.create_task(
        ensure_objects(runtime.kube.custom, peering, namespaces=namespaces, clusterwide=clusterwide),
        name="peering object",
    )
    try:
        await kopf.operator(
            namespaces=list(namespaces),
            clusterwide=clusterwide,  # ClusterKopfPeering if cluster-wide, else a KopfPeering per namespace
            settings=settings,
            standalone=False,
            peering_name=peering.name,
            priority=peering.priority,
            identity=Identity(peering.identity),
            memo=kopf.Memo(runtime=runtime),
            liveness_endpoint=liveness_endpoint(),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        joining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await joining


def run(
    *,
    namespaces: Sequence[str] = (),
    clusterwide: bool = False,
    config_path: str | None = None,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
) -> None:
    """The blocking entry point of ``k1s0-eventstore operator``."""
    peering = peering_from_env()  # before any connection: a bad value is a configuration error
    runtime = build_runtime(config_path)
    asyncio.run(
        operate(
            runtime, namespaces=namespaces, clusterwide=clusterwide, stop_flag=stop_flag, ready_flag=ready_flag,
            peering=peering,
        )
    )
