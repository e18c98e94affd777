"""The sidecar a labelled pod gets: pure functions from (pod, EventStream, settings) to a new pod.

No I/O here: the admission webhook (``webhook.py``) looks the EventStream up and hands this
module plain dictionaries; tests call it directly. What is injected, and why:

* A native sidecar (an init container with ``restartPolicy: Always``, Kubernetes >= 1.29): it is
  started, and its startup probe (``/readyz``) passed, before the application's containers start,
  and it is stopped after them. ``native_sidecar=False`` appends a plain container instead, for
  older clusters (then the application may start before the event store answers).
* REST (8080) and gRPC (9090) bound to ``127.0.0.1`` by default: only the pod's own containers
  reach them. The kubelet probes the pod IP, so with a loopback bind the probes run inside the
  container (``exec``); with ``bind_address: 0.0.0.0`` they are plain HTTP probes.
* The EventStream's Secret (``EVENTSTORE_DATABASE_URL``, the stream's least-privilege role) as
  ``envFrom`` and its ConfigMap's ``config.yaml`` mounted read-only; no credentials in the pod spec.
* Kafka credentials (``spec.kafka.credentials``): the keys the EventStream names of a Secret in the
  pod's namespace, mounted read-only at ``/etc/k1s0-eventstore/kafka`` with ``EVENTSTORE_KAFKA_*``
  variables pointing at them (the user name comes from the Secret as a variable). A named key
  missing from the Secret keeps the pod from starting, and the kubelet says which.
* Image and resources: settings (chart values) < ``spec.sidecar`` of the EventStream < the pod's
  annotations ``eventstore.k1s0.io/sidecar-image`` / ``eventstore.k1s0.io/sidecar-resources`` (JSON).
* Non-root, no privilege escalation, all capabilities dropped, read-only root filesystem (an
  ``emptyDir`` at ``/tmp`` is the only writable path).

Idempotent: a pod that already has a container named ``k1s0-eventstore`` is returned unchanged.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

GROUP = "eventstore.k1s0.io"
#: The opt-in label; its value names an EventStream in the pod's namespace.
STREAM_LABEL = f"{GROUP}/stream"
IMAGE_ANNOTATION = f"{GROUP}/sidecar-image"
RESOURCES_ANNOTATION = f"{GROUP}/sidecar-resources"
#: Set on injected pods (value: the EventStream's name), for people and tooling.
INJECTED_ANNOTATION = f"{GROUP}/injected"

SIDECAR_NAME = "k1s0-eventstore"
CONFIG_VOLUME = "k1s0-eventstore-config"
TMP_VOLUME = "k1s0-eventstore-tmp"
CONFIG_DIR = "/etc/k1s0-eventstore"
CONFIG_KEY = "config.yaml"
KAFKA_VOLUME = "k1s0-eventstore-kafka"
KAFKA_DIR = "/etc/k1s0-eventstore/kafka"
#: spec.kafka.credentials key -> the sidecar setting it feeds, as a file in KAFKA_DIR.
KAFKA_FILE_KEYS = {
    "passwordKey": "EVENTSTORE_KAFKA_SASL_PASSWORD_FILE",
    "caKey": "EVENTSTORE_KAFKA_SSL_CA_FILE",
    "certKey": "EVENTSTORE_KAFKA_SSL_CERT_FILE",
    "keyKey": "EVENTSTORE_KAFKA_SSL_KEY_FILE",
}
REST_PORT_NAME = "es-http"
GRPC_PORT_NAME = "es-grpc"

#: What the sidecar asks for when neither the EventStream nor the pod says otherwise.
DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "50m", "memory": "96Mi"},
    "limits": {"memory": "256Mi"},
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class InjectionRefused(Exception):
    """The pod must not be admitted as it is; the message says why and names the EventStream."""


@dataclass(frozen=True, slots=True)
class InjectionSettings:
    """Operator-wide defaults (chart values ``sidecar.*``, passed as ``EVENTSTORE_SIDECAR_*``)."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    native_sidecar: bool = True
    bind_address: str = "127.0.0.1"
    rest_port: int = 8080
    grpc_port: int = 9090
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_RESOURCES))
    run_as_user: int = 10001
    #: How long the startup probe waits for ``/readyz`` (the database) before the kubelet restarts it.
    startup_timeout_seconds: int = 120
    #: The sidecar's ``OTEL_*`` variables (tracing), from the operator's ``EVENTSTORE_SIDECAR_OTEL_*``.
    otel_env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> InjectionSettings:
        """``EVENTSTORE_SIDECAR_{IMAGE,IMAGE_PULL_POLICY,NATIVE,BIND_ADDRESS,REST_PORT,GRPC_PORT,RESOURCES}``."""
        image = env.get("EVENTSTORE_SIDECAR_IMAGE", "").strip()
        if not image:
            raise ValueError("EVENTSTORE_SIDECAR_IMAGE: the default sidecar image is required")
        native = env.get("EVENTSTORE_SIDECAR_NATIVE", "true").strip().lower()
        if native not in {"true", "false"}:
            raise ValueError(f"EVENTSTORE_SIDECAR_NATIVE: must be true or false (got {native!r})")
        resources: Mapping[str, Mapping[str, str]] = copy.deepcopy(DEFAULT_RESOURCES)
        if env.get("EVENTSTORE_SIDECAR_RESOURCES", "").strip():
            resources = parse_resources(env["EVENTSTORE_SIDECAR_RESOURCES"], "EVENTSTORE_SIDECAR_RESOURCES")
        return cls(
            image=image,
            image_pull_policy=env.get("EVENTSTORE_SIDECAR_IMAGE_PULL_POLICY", "IfNotPresent"),
            native_sidecar=native == "true",
            bind_address=env.get("EVENTSTORE_SIDECAR_BIND_ADDRESS", "127.0.0.1"),
            rest_port=_port(env, "EVENTSTORE_SIDECAR_REST_PORT", 8080),
            grpc_port=_port(env, "EVENTSTORE_SIDECAR_GRPC_PORT", 9090),
            resources=resources,
            otel_env=tuple(sorted(
                (key.removeprefix("EVENTSTORE_SIDECAR_"), value) for key, value in env.items()
                if key.startswith("EVENTSTORE_SIDECAR_OTEL_") and value
            )),
        )


def _otel_env(settings: InjectionSettings) -> list[dict[str, Any]]:
    """The tracing variables of the sidecar: the configured ``OTEL_*``, with the pod and namespace
    added to the resource attributes (Kubernetes expands ``$(VAR)`` from earlier entries)."""
    if not settings.otel_env:
        return []
    configured = dict(settings.otel_env)
    extra = configured.pop("OTEL_RESOURCE_ATTRIBUTES", "")
    attributes = "k8s.namespace.name=$(K1S0_POD_NAMESPACE),k8s.pod.name=$(K1S0_POD_NAME)"
    return [
        {"name": "K1S0_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "K1S0_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        *({"name": k, "value": v} for k, v in configured.items()),
        {"name": "OTEL_RESOURCE_ATTRIBUTES", "value": f"{attributes},{extra}" if extra else attributes},
    ]


def _port(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{key}: must be a port number (got {raw!r})") from None
    if not 1 <= value <= 65535:
        raise ValueError(f"{key}: must be a port number (got {raw!r})")
    return value


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """What the webhook needs to know about one EventStream (from its spec and status)."""

    namespace: str
    name: str
    ready: bool
    #: The Ready condition's reason and message (or why there is none yet).
    reason: str
    secret_name: str
    config_map_name: str
    image: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    #: ``spec.kafka.credentials``: secretName and the named keys (usernameKey, passwordKey, ...).
    kafka_credentials: Mapping[str, str] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f'EventStream "{self.name}" in namespace "{self.namespace}"'

    @classmethod
    def from_eventstream(cls, body: Mapping[str, Any]) -> StreamTarget:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        sidecar = spec.get("sidecar") or {}
        ready_condition = next(
            (c for c in status.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") == "Ready"),
            None,
        )
        if ready_condition is None:
            ready, reason = False, "no Ready condition yet (the operator has not reconciled it)"
        else:
            ready = ready_condition.get("status") == "True"
            reason = f"{ready_condition.get('reason') or 'Unknown'}: {ready_condition.get('message') or ''}".rstrip(
                ": "
            )
        secret_name = str(status.get("secretName") or "")
        config_map_name = str(status.get("configMapName") or "")
        if ready and not (secret_name and config_map_name):
            ready, reason = False, "Ready, but status.secretName/status.configMapName are not set"
        image = sidecar.get("image")
        resources = sidecar.get("resources") or {}
        credentials = (spec.get("kafka") or {}).get("credentials") or {}
        return cls(
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name") or ""),
            ready=ready,
            reason=reason,
            secret_name=secret_name,
            config_map_name=config_map_name,
            image=str(image) if image else None,
            resources=resources if isinstance(resources, Mapping) else {},
            kafka_credentials=(
                {str(k): str(v) for k, v in credentials.items() if v} if isinstance(credentials, Mapping) else {}
            ),
        )


def _kafka_credentials(stream: StreamTarget) -> Mapping[str, str]:
    """The EventStream's Kafka Secret reference, checked (the CRD's schema says the same)."""
    creds = stream.kafka_credentials
    if not creds:
        return {}
    name = creds.get("secretName", "")
    if not name or len(name) > 253 or not all(_DNS_LABEL.match(part) for part in name.split(".")):
        raise InjectionRefused(f"{stream.ref}: spec.kafka.credentials.secretName {name!r} is not a Secret name")
    for key, value in creds.items():
        if key != "secretName" and (not _SECRET_KEY.match(value) or value in {".", ".."}):
            raise InjectionRefused(f"{stream.ref}: spec.kafka.credentials.{key} {value!r} is not a Secret key")
    return creds


def _kafka_env(creds: Mapping[str, str]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if creds.get("usernameKey"):
        env.append({
            "name": "EVENTSTORE_KAFKA_SASL_USERNAME",
            "valueFrom": {"secretKeyRef": {"name": creds["secretName"], "key": creds["usernameKey"]}},
        })
    for key, variable in KAFKA_FILE_KEYS.items():
        if creds.get(key):
            env.append({"name": variable, "value": f"{KAFKA_DIR}/{creds[key]}"})
    return env


def _kafka_files(creds: Mapping[str, str]) -> list[str]:
    return list(dict.fromkeys(creds[k] for k in KAFKA_FILE_KEYS if creds.get(k)))


def stream_name(pod: Mapping[str, Any]) -> str:
    """The EventStream the pod asks for (the label's value), or InjectionRefused."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    name = labels.get(STREAM_LABEL)
    if not isinstance(name, str) or not name:
        raise InjectionRefused(f"label {STREAM_LABEL} must name an EventStream in the pod's namespace")
    if len(name) > 253 or not all(_DNS_LABEL.match(part) for part in name.split(".")):
        raise InjectionRefused(f"label {STREAM_LABEL}={name!r} is not a valid EventStream name")
    return name


def is_injected(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    containers = list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
    return any(isinstance(c, Mapping) and c.get("name") == SIDECAR_NAME for c in containers)


def parse_resources(text: str, where: str) -> dict[str, dict[str, str]]:
    """A ``{"requests": {...}, "limits": {...}}`` JSON object of quantity strings."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InjectionRefused(f"{where}: not valid JSON ({exc.msg})") from None
    return _check_resources(value, where)


def _check_resources(value: object, where: str) -> dict[str, dict[str, str]]:
    if not isinstance(value, Mapping) or not set(value) <= {"requests", "limits"}:
        raise InjectionRefused(f'{where}: must be an object with "requests" and/or "limits"')
    out: dict[str, dict[str, str]] = {}
    for kind, quantities in value.items():
        if not isinstance(quantities, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str | int | float) and not isinstance(v, bool)
            for k, v in quantities.items()
        ):
            raise InjectionRefused(f'{where}: "{kind}" must map resource names to quantities')
        out[kind] = {k: str(v) for k, v in quantities.items()}
    return out


def merged_resources(
    settings: InjectionSettings, stream: StreamTarget, annotations: Mapping[str, str]
) -> dict[str, dict[str, str]]:
    """Defaults < EventStream < pod annotation, key by key within requests and limits."""
    layers = [
        _check_resources(settings.resources, "sidecar resources"),
        _check_resources(stream.resources, f"{stream.ref}: spec.sidecar.resources") if stream.resources else {},
    ]
    if RESOURCES_ANNOTATION in annotations:
        layers.append(parse_resources(annotations[RESOURCES_ANNOTATION], f"annotation {RESOURCES_ANNOTATION}"))
    out: dict[str, dict[str, str]] = {}
    for layer in layers:
        for kind, quantities in layer.items():
            out.setdefault(kind, {}).update(quantities)
    return {k: v for k, v in out.items() if v}


def _probe(settings: InjectionSettings, path: str, **timing: int) -> dict[str, Any]:
    if settings.bind_address in _LOOPBACK:
        host = "[::1]" if settings.bind_address == "::1" else "127.0.0.1"
        url = f"http://{host}:{settings.rest_port}{path}"
        # urlopen raises on any non-2xx answer or refused connection: exit status 1.
        code = f"import urllib.request; urllib.request.urlopen({url!r}, timeout=2)"
        handler: dict[str, Any] = {"exec": {"command": ["python", "-c", code]}}
    else:
        handler = {"httpGet": {"path": path, "port": settings.rest_port}}
    return {**handler, "timeoutSeconds": 3, **timing}


def sidecar_container(
    pod: Mapping[str, Any], stream: StreamTarget, settings: InjectionSettings
) -> dict[str, Any]:
    """The container spec injected into ``pod`` for ``stream``."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    image = annotations.get(IMAGE_ANNOTATION) or stream.image or settings.image
    kafka = _kafka_credentials(stream)
    period = 2
    container: dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["serve", "--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "ports": [
            {"name": REST_PORT_NAME, "containerPort": settings.rest_port, "protocol": "TCP"},
            {"name": GRPC_PORT_NAME, "containerPort": settings.grpc_port, "protocol": "TCP"},
        ],
        "envFrom": [{"secretRef": {"name": stream.secret_name}}],
        "env": [
            {"name": "EVENTSTORE_SERVER_HOST", "value": settings.bind_address},
            {"name": "EVENTSTORE_SERVER_PORT", "value": str(settings.rest_port)},
            {"name": "EVENTSTORE_SERVER_GRPC_PORT", "value": str(settings.grpc_port)},
            {"name": "EVENTSTORE_DATABASE_MIGRATE", "value": "false"},
            *_kafka_env(kafka),
            *_otel_env(settings),
        ],
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            *([{"name": KAFKA_VOLUME, "mountPath": KAFKA_DIR, "readOnly": True}] if _kafka_files(kafka) else []),
        ],
        "resources": merged_resources(settings, stream, annotations),
        "startupProbe": _probe(
            settings, "/readyz", periodSeconds=period,
            failureThreshold=max(1, settings.startup_timeout_seconds // period),
        ),
        "livenessProbe": _probe(settings, "/healthz", periodSeconds=10, failureThreshold=3),
        "readinessProbe": _probe(settings, "/readyz", periodSeconds=5, failureThreshold=2),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if settings.native_sidecar:
        container["restartPolicy"] = "Always"
    return container


def _volumes(stream: StreamTarget) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": CONFIG_VOLUME,
            "configMap": {"name": stream.config_map_name, "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}]},
        },
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    kafka = _kafka_credentials(stream)
    files = _kafka_files(kafka)
    if files:
        # Only the named keys: nothing else of the Secret lands in the sidecar's filesystem.
        items = [{"key": f, "path": f} for f in files]
        volumes.append({"name": KAFKA_VOLUME, "secret": {"secretName": kafka["secretName"], "items": items}})
    return volumes


def _check_conflicts(spec: Mapping[str, Any], settings: InjectionSettings, stream: StreamTarget) -> None:
    if spec.get("hostNetwork"):
        # The sidecar's ports would be the node's: two such pods on one node would collide, and a
        # loopback bind would be reachable by everything else on the node.
        raise InjectionRefused(f"pods with hostNetwork cannot get the event-store sidecar for {stream.ref}")
    ours = {settings.rest_port, settings.grpc_port}
    for c in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        for port in c.get("ports") or []:
            if port.get("containerPort") in ours and (port.get("protocol") or "TCP") == "TCP":
                raise InjectionRefused(
                    f"container {c.get('name')!r} declares port {port['containerPort']}, which the event-store "
                    f"sidecar for {stream.ref} listens on"
                )
            if port.get("name") in {REST_PORT_NAME, GRPC_PORT_NAME}:
                raise InjectionRefused(f"container {c.get('name')!r} uses the port name {port['name']!r}")
    names = {v.get("name") for v in spec.get("volumes") or []}
    for volume in (CONFIG_VOLUME, TMP_VOLUME, KAFKA_VOLUME):
        if volume in names:
            raise InjectionRefused(f"the pod already has a volume named {volume!r}")


def inject(pod: Mapping[str, Any], stream: StreamTarget, settings: InjectionSettings) -> dict[str, Any]:
    """A copy of ``pod`` with the sidecar; the pod itself unchanged if it already has one."""
    out: dict[str, Any] = copy.deepcopy(dict(pod))
    if is_injected(out):
        return out
    if not stream.ready:
        raise InjectionRefused(f"{stream.ref} is not Ready ({stream.reason}); the pod cannot get its sidecar yet")
    spec = out.setdefault("spec", {})
    _check_conflicts(spec, settings, stream)
    container = sidecar_container(out, stream, settings)
    if settings.native_sidecar:
        spec["initContainers"] = [container, *(spec.get("initContainers") or [])]
    else:
        spec["containers"] = [*(spec.get("containers") or []), container]
    spec["volumes"] = [*(spec.get("volumes") or []), *_volumes(stream)]
    meta = out.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), INJECTED_ANNOTATION: stream.name}
    return out


def build_patch(pod: Mapping[str, Any], stream: StreamTarget, settings: InjectionSettings) -> list[dict[str, Any]]:
    """The RFC 6902 JSON Patch that turns ``pod`` into ``inject(pod, ...)`` (empty: nothing to do)."""
    ops: list[dict[str, Any]] = jsonpatch.JsonPatch.from_diff(dict(pod), inject(pod, stream, settings)).patch
    return ops
