"""Fixtures for the deployment tests: EventStream and pod bodies as the API server sends them."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kmock import Server

from k1s0_operator.injection import STREAM_LABEL
from tests.support.kube import ApiServer, kubeconfig_for

NAMESPACE = "shop"
CRD = Path(__file__).resolve().parents[2] / "crds" / "eventstreams.eventstore.k1s0.io.yaml"


def eventstream(
    name: str = "orders", *, ready: bool = True, provisioned: bool | None = None, **sidecar: Any
) -> dict[str, Any]:
    """An EventStream as the operator leaves it once reconciled (or not yet Ready).

    ``provisioned`` (default: ``ready``): whether it has a ``Provisioned`` condition, True, and the
    Secret/ConfigMap names, as after a first successful provisioning.
    """
    provisioned = ready if provisioned is None else provisioned
    status: dict[str, Any] = {
        "phase": "Ready" if ready else "Provisioning",
        "conditions": [
            {
                "type": "Ready", "status": "True" if ready else "False",
                "reason": "Ready" if ready else "SchemaPending",
                "message": "schema and topic ready" if ready else "database unreachable: connection refused",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1,
            }
        ],
    }
    if provisioned:
        status["conditions"].append({
            "type": "Provisioned", "status": "True", "reason": "Provisioned", "message": "pods can get the sidecar",
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1,
        })
        status.update(schema=f"{NAMESPACE}_{name}", secretName=f"{name}-eventstore-db",
                      configMapName=f"{name}-eventstore-config")
    return {
        "apiVersion": "eventstore.k1s0.io/v1",
        "kind": "EventStream",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                     "generation": 1},
        "spec": {"sidecar": sidecar} if sidecar else {},
        "status": status,
    }


def app_pod(stream: str | None = "orders", **annotations: str) -> dict[str, Any]:
    """A pod as a ReplicaSet creates it: generateName, namespace set by the API server, no name."""
    labels = {"app": "orders-api"}
    if stream is not None:
        labels[STREAM_LABEL] = stream
    meta: dict[str, Any] = {"generateName": "orders-api-7d9c-", "namespace": NAMESPACE, "labels": labels}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "registry.example.com/shop/orders-api:1.4.2",
                    "ports": [{"containerPort": 3000, "name": "http"}],
                    "env": [{"name": "EVENTSTORE_GRPC", "value": "localhost:9090"}],
                }
            ],
            "serviceAccountName": "orders-api",
        },
    }


@pytest.fixture
def pod() -> dict[str, Any]:
    return copy.deepcopy(app_pod())


@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ApiServer]:
    """An API server (the kmock-based emulator) over HTTP, with the CRD; KUBECONFIG points at it."""
    server_api = ApiServer()
    server_api.register_crd(yaml.safe_load(CRD.read_text()))
    async with server_api, Server(server_api) as server:
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig_for(server)))
        monkeypatch.setenv("KUBECONFIG", str(path))
        yield server_api
