"""The chart's database.clusters: what the operator receives and the permissions it gets for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from k1s0_operator._clusters import CnpgRef, SecretRef, parse_clusters
from tests.deploy.test_chart import CHART, by_kind, env_of, helm, one, render, validate_all
from tests.deploy.tools import KubeTools, ensure_kube_tools

CLUSTERS: dict[str, Any] = {
    "east": {"secretRef": {"name": "pg-east-admin", "key": "uri"}},
    "west": {"secretRef": {"name": "pg-west-admin", "namespace": "platform-db"}},
    "main": {"cnpg": {"cluster": "pg-main", "namespace": "databases", "database": "events"}},
}


@pytest.fixture(scope="module")
def tools() -> KubeTools:
    return ensure_kube_tools()


def test_clusters_reach_the_operator_and_only_their_objects_are_readable(tools: KubeTools, tmp_path: Path) -> None:
    docs = render(tools, {"database": {"clusters": CLUSTERS}}, tmp=tmp_path)
    assert all(validate_all(docs))
    env = env_of(one(docs, "Deployment"))
    # What the operator parses from its environment (EVENTSTORE_NAMESPACE is the release namespace).
    clusters = parse_clusters(None, "postgresql://admin@shared/events", {
        "EVENTSTORE_DATABASE_CLUSTERS": env["EVENTSTORE_DATABASE_CLUSTERS"], "EVENTSTORE_NAMESPACE": "k1s0-system",
    })
    assert clusters.names() == ["default", "east", "main", "west"]
    assert clusters.source("east").secret == SecretRef("pg-east-admin", "k1s0-system", "uri")
    assert clusters.source("west").secret == SecretRef("pg-west-admin", "platform-db", "uri")
    assert clusters.source("main").cnpg == CnpgRef("pg-main", "databases", "events")

    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r["rules"] for r in by_kind(docs, "Role")}
    assert roles[("k1s0-system", "rel-k1s0-eventstore-pg-east")] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["pg-east-admin"], "verbs": ["get"]}]
    assert roles[("platform-db", "rel-k1s0-eventstore-pg-west")] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["pg-west-admin"], "verbs": ["get"]}]
    assert roles[("databases", "rel-k1s0-eventstore-pg-main")] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["pg-main-superuser"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["services"], "resourceNames": ["pg-main-rw"], "verbs": ["get"]},
    ]
    bindings = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in by_kind(docs, "RoleBinding")}
    for namespace, name in roles:
        binding = bindings[(namespace, name)]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
        assert binding["subjects"][0]["namespace"] == "k1s0-system"


def test_without_clusters_nothing_is_added(tools: KubeTools) -> None:
    docs = render(tools)
    assert "EVENTSTORE_DATABASE_CLUSTERS" not in env_of(one(docs, "Deployment"))
    assert not [r for r in by_kind(docs, "Role") if "-pg-" in r["metadata"]["name"]]


@pytest.mark.parametrize("clusters", [
    {"default": {"secretRef": {"name": "x"}}},              # the default cluster is adminSecret
    {"east": {"url": "postgresql://admin:pw@h/db"}},        # no credentials in values
    {"east": {"cnpg": {"cluster": "pg"}}},                  # a CloudNativePG namespace is required
    {"East": {"secretRef": {"name": "x"}}},                 # not a cluster name
])
def test_bad_clusters_are_refused_by_the_values_schema(tools: KubeTools, tmp_path: Path, clusters: Any) -> None:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"database": {"clusters": clusters}}))
    done = helm(tools, "template", "rel", str(CHART), "--values", str(path), check=False)
    assert done.returncode != 0 and "values don't meet the specifications of the schema" in done.stderr, done.stderr
