"""The operator process: configuration, Kubernetes login, and Kopf's loop.

Importing this module registers every handler of the operator in Kopf's default registry (Kopf
registers on import); an extra feature registers by adding one import line below.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

import kopf

from . import _handlers  # noqa: F401 - registers the EventStream handlers
from ._login import kubernetes_client
from ._resources import Kube
from ._runtime import Runtime, backoff_base, load_operator_config
from .webhook import inject_sidecar  # noqa: F401 - registers the sidecar-injection webhook (/inject-sidecar)

logger = logging.getLogger("k1s0_operator")

__all__ = ["Kube", "Runtime", "build_runtime", "kubernetes_client", "operate", "run"]


def build_runtime(config_path: str | None = None) -> Runtime:
    config = load_operator_config(config_path)
    return Runtime(config=config, kube=Kube(kubernetes_client()), backoff_base=backoff_base())


async def operate(
    runtime: Runtime,
    *,
    namespaces: Sequence[str] = (),
    clusterwide: bool = False,
    stop_flag: asyncio.Future[None] | threading.Event | None = None,
    ready_flag: asyncio.Future[None] | threading.Event | None = None,
) -> None:
    """Run Kopf until ``stop_flag`` is set (or a signal arrives when it is None)."""
    if not clusterwide and not namespaces:
        raise ValueError("give --namespace at least once, or --all-namespaces")
    await kopf.operator(
        namespaces=list(namespaces),
        clusterwide=clusterwide,
        standalone=True,  # one replica; no peering CRD needed
        memo=kopf.Memo(runtime=runtime),
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def run(
    *,
    namespaces: Sequence[str] = (),
    clusterwide: bool = False,
    config_path: str | None = None,
    stop_flag: threading.Event | None = None,
    ready_flag: threading.Event | None = None,
) -> None:
    """The blocking entry point of ``k1s0-eventstore operator``."""
    runtime = build_runtime(config_path)
    asyncio.run(
        operate(runtime, namespaces=namespaces, clusterwide=clusterwide, stop_flag=stop_flag, ready_flag=ready_flag)
    )
