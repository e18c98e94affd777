"""What every handler needs from the process: admin connections and the sidecar defaults.

Built once by ``run()`` and handed to handlers through Kopf's ``memo``. It holds connection
settings, never per-resource state (that lives in each EventStream's status).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from k1s0_event_store.sidecar_config import Config, load_config

from ._clusters import Clusters, parse_clusters, read_document, take_clusters
from ._resources import Kube

#: Seconds between drift checks of one EventStream (read when the handlers are registered).
DRIFT_INTERVAL_ENV = "EVENTSTORE_OPERATOR_DRIFT_INTERVAL_SECONDS"
#: First retry delay after PostgreSQL/Kafka/API failures; doubles per retry up to BACKOFF_MAX.
BACKOFF_BASE_ENV = "EVENTSTORE_OPERATOR_BACKOFF_SECONDS"
BACKOFF_MAX = 300.0


@dataclass(frozen=True)
class Runtime:
    config: Config
    kube: Kube
    backoff_base: float = 5.0
    #: The PostgreSQL clusters by name; None: only ``database.url``, as the cluster ``default``.
    clusters: Clusters | None = None

    @property
    def admin_dsn(self) -> str:
        return self.config.database.url

    @property
    def cluster_set(self) -> Clusters:
        return self.clusters if self.clusters is not None else Clusters.single(self.config.database.url)

    @property
    def brokers(self) -> list[str]:
        return list(self.config.kafka.brokers)

    def backoff(self, retry: int) -> float:
        return float(min(BACKOFF_MAX, self.backoff_base * (2 ** min(retry, 16))))


def load_operator_config(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """The operator's configuration through the sidecar's loader (the same keys and variables).

    ``database.url`` is the default PostgreSQL cluster's admin DSN and is required unless
    ``database.clusters.default`` names it (``_clusters.py``). The ``auth`` section is copied into
    every sidecar's ``config.yaml``, so it must be valid for the sidecars: set
    ``EVENTSTORE_AUTH_JWKS_URL`` (production) or ``EVENTSTORE_AUTH_MODE=none`` (development).
    """
    return load_operator(path, env)[0]


def load_operator(path: str | None, env: Mapping[str, str] | None = None) -> tuple[Config, Clusters]:
    """The configuration and the cluster map, from one YAML file and the environment.

    ``database.clusters`` is the operator's own key: it is taken out of the file before the
    sidecar's loader (which refuses keys it does not know) reads the rest.
    """
    document, raw_clusters = take_clusters(read_document(path))
    config = load_config(path, env, document=document)
    return config, parse_clusters(raw_clusters, config.database.url, env)


def env_seconds(name: str, default: float, minimum: float, env: Mapping[str, str] | None = None) -> float:
    """A duration from the environment: ``default`` when unset or not a number, never below ``minimum``."""
    env = os.environ if env is None else env
    try:
        return max(minimum, float(env.get(name, default)))
    except ValueError:
        return default


def drift_interval(env: Mapping[str, str] | None = None) -> float:
    return env_seconds(DRIFT_INTERVAL_ENV, 60.0, 1.0, env)


def backoff_base(env: Mapping[str, str] | None = None) -> float:
    return env_seconds(BACKOFF_BASE_ENV, 5.0, 0.1, env)
