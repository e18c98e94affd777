"""What the EventStream owns in Kubernetes: the Secret with the role's DSN and the ConfigMap.

The Secret carries ``EVENTSTORE_DATABASE_URL`` (usable with ``envFrom``); the ConfigMap carries
the sidecar's ``config.yaml`` in the seed 000 layout with no credentials in it (``database.url``
is empty there; the Secret's variable overrides it). Both are owned by the EventStream, so the
garbage collector removes them with it even if the operator is gone.

The official ``kubernetes`` client is synchronous; every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from k1s0_event_store.sidecar_config import Config, to_yaml, with_section

from ._spec import GROUP, PLURAL, STREAM_LABEL, VERSION, StreamSpec

DSN_KEY = "EVENTSTORE_DATABASE_URL"
CONFIG_KEY = "config.yaml"
MANAGED_BY = {"app.kubernetes.io/managed-by": "k1s0-eventstore-operator"}


class KubernetesUnavailable(Exception):
    """The API server failed a call the operator needs (retry later)."""


def _labels(spec: StreamSpec) -> dict[str, str]:
    return {STREAM_LABEL: spec.name, **MANAGED_BY}


def sidecar_config(base: Config, spec: StreamSpec) -> Config:
    """The sidecar's configuration for one EventStream: the operator's defaults plus the spec."""
    c = with_section(base, "app", name=spec.name)
    c = with_section(c, "database", url="", schema=spec.schema, migrate=False)
    # The operator's own Kafka credentials and file paths never reach a sidecar: each gets the
    # EventStream's (spec.kafka.credentials, injected by the webhook as EVENTSTORE_KAFKA_*).
    c = with_section(
        c, "kafka", topic_published=spec.topic, routes=dict(spec.routes), sasl_username="", sasl_password="",
        sasl_password_file="", ssl_ca_file="", ssl_cert_file="", ssl_key_file="",
    )
    return with_section(
        c,
        "event_store",
        snapshot_interval=spec.snapshot_interval,
        snapshot_retention_days=spec.snapshot_retention_days,
        max_events_per_append=spec.max_events_per_append,
        max_page_size=spec.max_page_size,
        default_page_size=min(base.event_store.default_page_size, spec.max_page_size),
    )


def secret_body(spec: StreamSpec, dsn: str, owner: kopf.Body) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": spec.secret_name, "namespace": spec.namespace, "labels": _labels(spec)},
        "data": {DSN_KEY: base64.b64encode(dsn.encode()).decode()},
    }
    kopf.append_owner_reference(body, owner=owner)
    return body


def config_map_body(spec: StreamSpec, config: Config, owner: kopf.Body) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": spec.config_map_name, "namespace": spec.namespace, "labels": _labels(spec)},
        "data": {CONFIG_KEY: to_yaml(config)},
    }
    kopf.append_owner_reference(body, owner=owner)
    return body


def _why(exc: ApiException) -> str:
    return f"Kubernetes API answered {exc.status} {exc.reason}"


class Kube:
    """The few API calls the reconciler makes, each off the event loop."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.core = k8s.CoreV1Api(api_client)
        self.custom = k8s.CustomObjectsApi(api_client)

    async def read_secret_dsn(self, namespace: str, name: str) -> str | None:
        try:
            secret = await asyncio.to_thread(self.core.read_namespaced_secret, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KubernetesUnavailable(_why(exc)) from None
        raw = (secret.data or {}).get(DSN_KEY)
        if not raw:
            return None
        try:
            return base64.b64decode(raw).decode()
        except ValueError:
            return None

    async def apply(self, body: dict[str, Any]) -> str:
        """Create, or replace when different; returns "created", "updated" or "unchanged"."""
        kind = body["kind"]
        ns = body["metadata"]["namespace"]
        name = body["metadata"]["name"]
        suffix = "secret" if kind == "Secret" else "config_map"
        read: Callable[..., Any] = getattr(self.core, f"read_namespaced_{suffix}")
        create: Callable[..., Any] = getattr(self.core, f"create_namespaced_{suffix}")
        replace: Callable[..., Any] = getattr(self.core, f"replace_namespaced_{suffix}")
        try:
            try:
                current: Any = await asyncio.to_thread(read, name, ns)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                await asyncio.to_thread(create, ns, body)
                return "created"
            meta = current.metadata
            owners = [r.uid for r in (meta.owner_references or [])]
            same = (
                (current.data or {}) == body["data"]
                and (meta.labels or {}) == body["metadata"]["labels"]
                and owners == [r["uid"] for r in body["metadata"]["ownerReferences"]]
            )
            if same:
                return "unchanged"
            replacement = {**body, "metadata": {**body["metadata"], "resourceVersion": meta.resource_version}}
            await asyncio.to_thread(replace, name, ns, replacement)
            return "updated"
        except ApiException as exc:
            raise KubernetesUnavailable(f"{kind} {ns}/{name}: {_why(exc)}") from None

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        call: Callable[..., Any] = (
            self.core.delete_namespaced_secret if kind == "Secret" else self.core.delete_namespaced_config_map
        )
        try:
            await asyncio.to_thread(call, name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise KubernetesUnavailable(f"{kind} {namespace}/{name}: {_why(exc)}") from None
        return True

    async def eventstreams(self) -> list[dict[str, Any]]:
        """Every EventStream in the cluster (to know whether a topic is still in use)."""
        try:
            result: Any = await asyncio.to_thread(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        except ApiException as exc:
            raise KubernetesUnavailable(f"listing EventStreams: {_why(exc)}") from None
        items: list[dict[str, Any]] = result.get("items", [])
        return items
