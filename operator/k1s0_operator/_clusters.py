"""The PostgreSQL clusters the operator places EventStreams on, by name, and how each is reached.

``database.url`` is the cluster named ``default``; ``database.clusters`` names more of them (and
may give ``default`` itself as a reference instead of ``database.url``). An entry is one of:

- a DSN string, or ``{url: <dsn>}``: an admin DSN written in the configuration;
- ``{secretRef: {name, key, namespace}}``: a Secret holding an admin DSN under ``key`` (default
  ``uri``) in ``namespace`` (default: the operator's own namespace, ``EVENTSTORE_NAMESPACE``);
- ``{cnpg: {cluster, namespace, database}}``: a CloudNativePG ``Cluster``. CloudNativePG's
  "Connecting from an application" page: the superuser's credentials are in the ``basic-auth``
  Secret ``<cluster>-superuser`` (only with ``spec.enableSuperuserAccess: true``, off by default
  since 1.21) with keys ``username`` and ``password``; applications reach the primary through
  the Service ``<cluster>-rw``. The Secret's own ``host``/``uri`` name that Service by its short
  name, which resolves only inside the Cluster's namespace, so the address is taken from the
  Service object instead: its cluster IP (the virtual IP the same page describes) and its port;
  a headless Service falls back to ``<cluster>-rw.<namespace>.svc``. ``database`` defaults to
  ``app``, the database CloudNativePG's ``initdb`` bootstrap creates.

In the environment, ``EVENTSTORE_DATABASE_CLUSTERS`` replaces ``database.clusters``: either
``east=postgresql://…,west=postgresql://…`` (inline DSNs; a comma starts a new entry only when
``name=`` follows it, so multi-host DSNs survive) or the whole map as JSON (what the chart sets).

References are resolved at every reconciliation, so a rotated password or a CloudNativePG
switchover reaches the next drift check. A reference that cannot be resolved (Secret or Service
missing) is ``DatabaseUnavailable`` for the EventStreams on that cluster only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from k1s0_event_store.sidecar_config import ConfigError, read_config_file

from ._postgres import DatabaseUnavailable
from ._resources import KubernetesUnavailable
from ._spec import DEFAULT_CLUSTER

CLUSTERS_ENV = "EVENTSTORE_DATABASE_CLUSTERS"
NAMESPACE_ENV = "EVENTSTORE_NAMESPACE"
#: CloudNativePG's names: ``<cluster>-superuser`` (Secret) and ``<cluster>-rw`` (Service).
CNPG_SUPERUSER_SUFFIX = "-superuser"
CNPG_RW_SUFFIX = "-rw"
CNPG_DEFAULT_DATABASE = "app"
CNPG_PORT = 5432

#: A DNS label: safe in status, printer columns, metric labels and log lines.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_K8S_NAME = re.compile(r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")
_ENTRY_START = re.compile(r",(?=\s*[a-z0-9][-a-z0-9]*\s*=)")


class UnknownCluster(Exception):
    """The EventStream names a cluster the operator was not configured with."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"spec.database.cluster {name!r} is not a cluster of this operator; known clusters: {', '.join(known)}"
        )
        self.name = name
        self.known = known


@dataclass(frozen=True, slots=True)
class SecretRef:
    name: str
    namespace: str
    key: str = "uri"


@dataclass(frozen=True, slots=True)
class CnpgRef:
    cluster: str
    namespace: str
    database: str = CNPG_DEFAULT_DATABASE


@dataclass(frozen=True, slots=True)
class ClusterSource:
    """One cluster's admin connection: exactly one of ``dsn``, ``secret``, ``cnpg``."""

    name: str
    dsn: str | None = None
    secret: SecretRef | None = None
    cnpg: CnpgRef | None = None

    def describe(self) -> str:
        """Where the connection comes from, without credentials."""
        if self.secret is not None:
            return f"Secret {self.secret.namespace}/{self.secret.name} key {self.secret.key}"
        if self.cnpg is not None:
            return f"CloudNativePG cluster {self.cnpg.namespace}/{self.cnpg.cluster} database {self.cnpg.database}"
        return "inline DSN"


@dataclass(frozen=True)
class Clusters:
    sources: Mapping[str, ClusterSource] = field(default_factory=dict)

    @classmethod
    def single(cls, default_url: str) -> Clusters:
        return cls({DEFAULT_CLUSTER: ClusterSource(DEFAULT_CLUSTER, dsn=default_url)})

    def names(self) -> list[str]:
        return sorted(self.sources)

    def source(self, name: str) -> ClusterSource:
        try:
            return self.sources[name]
        except KeyError:
            raise UnknownCluster(name, self.names()) from None

    async def admin_dsn(self, name: str, core: k8s.CoreV1Api) -> str:
        """The admin DSN of cluster ``name``, resolving references through the API server.

        UnknownCluster for a name not configured; DatabaseUnavailable when a referenced Secret or
        Service is missing or incomplete; KubernetesUnavailable when the API server fails.
        """
        source = self.source(name)
        if source.dsn is not None:
            return source.dsn
        if source.secret is not None:
            ref = source.secret
            data = await _read_secret(core, ref.namespace, ref.name, f"cluster {name}")
            dsn = data.get(ref.key)
            if not dsn:
                raise DatabaseUnavailable(
                    f"cluster {name}: Secret {ref.namespace}/{ref.name} has no key {ref.key!r} with an admin DSN"
                )
            return dsn
        assert source.cnpg is not None
        return await _cnpg_dsn(core, name, source.cnpg)


async def _read_secret(core: k8s.CoreV1Api, namespace: str, name: str, what: str) -> dict[str, str]:
    try:
        secret: Any = await asyncio.to_thread(core.read_namespaced_secret, name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise DatabaseUnavailable(f"{what}: Secret {namespace}/{name} not found") from None
        raise KubernetesUnavailable(
            f"{what}: Secret {namespace}/{name}: Kubernetes API answered {exc.status}"
        ) from None
    decoded: dict[str, str] = {}
    for key, value in (secret.data or {}).items():
        try:
            decoded[key] = base64.b64decode(value).decode()
        except ValueError:
            continue
    return decoded


async def _cnpg_dsn(core: k8s.CoreV1Api, name: str, ref: CnpgRef) -> str:
    what = f"cluster {name} (CloudNativePG {ref.namespace}/{ref.cluster})"
    secret_name = ref.cluster + CNPG_SUPERUSER_SUFFIX
    try:
        data = await _read_secret(core, ref.namespace, secret_name, what)
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(
            f"{exc}; CloudNativePG creates it only with spec.enableSuperuserAccess: true on the Cluster"
        ) from None
    user, password = data.get("username"), data.get("password")
    if not user or not password:
        raise DatabaseUnavailable(f"{what}: Secret {ref.namespace}/{secret_name} lacks username or password")
    service_name = ref.cluster + CNPG_RW_SUFFIX
    try:
        service: Any = await asyncio.to_thread(core.read_namespaced_service, service_name, ref.namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise DatabaseUnavailable(
                f"{what}: Service {ref.namespace}/{service_name} not found (is the Cluster running?)"
            ) from None
        raise KubernetesUnavailable(
            f"{what}: Service {ref.namespace}/{service_name}: Kubernetes API answered {exc.status}"
        ) from None
    spec = service.spec
    ip = getattr(spec, "cluster_ip", None)
    host = ip if ip and ip != "None" else f"{service_name}.{ref.namespace}.svc"
    if ":" in host:
        host = f"[{host}]"
    ports = list(getattr(spec, "ports", None) or [])
    named = [p for p in ports if getattr(p, "name", None) == "postgres"]
    port = int((named or ports)[0].port) if (named or ports) else CNPG_PORT
    return (
        f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(ref.database, safe='')}"
    )


# --- configuration ---------------------------------------------------------------------------


def read_document(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The operator's YAML file parsed (None without a file), read as the sidecar's loader reads it."""
    return None if path is None else read_config_file(path)


def take_clusters(document: dict[str, Any] | None) -> tuple[dict[str, Any] | None, Any]:
    """``document`` without ``database.clusters`` (which the sidecar's loader does not know), and that value."""
    if document is None:
        return None, None
    database = document.get("database")
    if not isinstance(database, dict) or "clusters" not in database:
        return document, None
    rest = {k: v for k, v in database.items() if k != "clusters"}
    return {**document, "database": rest}, database["clusters"]


def parse_env(value: str) -> dict[str, Any]:
    """``EVENTSTORE_DATABASE_CLUSTERS``: JSON for the full form, else ``name=dsn`` pairs."""
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"database.clusters: not valid JSON (from {CLUSTERS_ENV}): {exc.msg}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"database.clusters: must be a JSON object (from {CLUSTERS_ENV})")
        return loaded
    pairs: dict[str, Any] = {}
    for part in _ENTRY_START.split(text):
        name, sep, dsn = part.partition("=")
        if not sep or not name.strip() or not dsn.strip():
            raise ConfigError(
                f"database.clusters: must be name=postgresql://… pairs separated by commas (from {CLUSTERS_ENV})"
            )
        pairs[name.strip()] = dsn.strip()
    return pairs


def _str(entry: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: must be a non-empty string")
    return value


def _only(entry: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(entry) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")


def _dsn(value: str, where: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{where}: must be a postgresql:// DSN")
    return value


def _entry(name: str, value: Any, operator_namespace: str) -> ClusterSource:
    where = f"database.clusters.{name}"
    if isinstance(value, str):
        return ClusterSource(name, dsn=_dsn(value, where))
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a DSN or an object with url, secretRef or cnpg")
    _only(value, {"url", "secretRef", "cnpg"}, where)
    if len(value) != 1:
        raise ConfigError(f"{where}: give exactly one of url, secretRef, cnpg")
    if "url" in value:
        return ClusterSource(name, dsn=_dsn(_str(value, "url", where), f"{where}.url"))
    if "secretRef" in value:
        ref = value["secretRef"]
        sub = f"{where}.secretRef"
        if not isinstance(ref, Mapping):
            raise ConfigError(f"{sub}: must be an object with name, key, namespace")
        _only(ref, {"name", "key", "namespace"}, sub)
        namespace = ref.get("namespace") or operator_namespace
        if not isinstance(namespace, str) or not namespace:
            raise ConfigError(f"{sub}.namespace: required when the operator's namespace is unknown ({NAMESPACE_ENV})")
        secret = SecretRef(_str(ref, "name", sub), namespace, _str(ref, "key", sub, "uri"))
        for key, text in (("name", secret.name), ("namespace", secret.namespace)):
            if not _K8S_NAME.fullmatch(text):
                raise ConfigError(f"{sub}.{key}: {text!r} is not a Kubernetes object name")
        return ClusterSource(name, secret=secret)
    ref = value["cnpg"]
    sub = f"{where}.cnpg"
    if not isinstance(ref, Mapping):
        raise ConfigError(f"{sub}: must be an object with cluster, namespace, database")
    _only(ref, {"cluster", "namespace", "database"}, sub)
    cnpg = CnpgRef(_str(ref, "cluster", sub), _str(ref, "namespace", sub), _str(ref, "database", sub, "app"))
    for key, text in (("cluster", cnpg.cluster), ("namespace", cnpg.namespace)):
        if not _K8S_NAME.fullmatch(text):
            raise ConfigError(f"{sub}.{key}: {text!r} is not a Kubernetes object name")
    return ClusterSource(name, cnpg=cnpg)


def parse_clusters(
    raw: Any, default_url: str, env: Mapping[str, str] | None = None
) -> Clusters:
    """The cluster map from the YAML value (or the environment variable, which wins) and ``database.url``."""
    env = os.environ if env is None else env
    if CLUSTERS_ENV in env:
        raw = parse_env(env[CLUSTERS_ENV])
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("database.clusters: must be a mapping of cluster name to connection")
    operator_namespace = env.get(NAMESPACE_ENV, "")
    sources: dict[str, ClusterSource] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"database.clusters: {name!r} is not a valid cluster name (lower-case letters, digits, '-'; "
                "at most 63 characters)"
            )
        sources[name] = _entry(name, value, operator_namespace)
    if DEFAULT_CLUSTER in sources and default_url:
        raise ConfigError(
            "database.clusters.default: the default cluster is database.url; give one of them, not both"
        )
    if default_url:
        sources[DEFAULT_CLUSTER] = ClusterSource(DEFAULT_CLUSTER, dsn=default_url)
    if DEFAULT_CLUSTER not in sources:
        raise ConfigError(
            "database.url: the admin DSN of the default PostgreSQL cluster is required "
            "(EVENTSTORE_DATABASE_URL, or database.clusters.default as a reference)"
        )
    return Clusters(sources)
