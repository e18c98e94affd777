"""The chart with Kopf peering (operator.peering.enabled): several replicas, Kopf's CRDs, RBAC.

Rendered by the real helm (v4), every manifest validated against the Kubernetes 1.35 schemas (the
kopf.dev CRDs as CustomResourceDefinitions), and the rendered wiring checked against the code it
feeds: the operator's peering settings parse from the rendered environment, and the CRDs name the
resources Kopf looks for.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kopf._cogs.structs import references

from k1s0_operator._peering import CLUSTER_PLURAL, GROUP, NAMESPACED_PLURAL, derived_priority, peering_from_env
from tests.deploy.test_chart import CHART, by_kind, env_of, helm, one, render, validate_all
from tests.deploy.tools import KubeTools, ensure_kube_tools

HA: dict[str, Any] = {"operator": {"replicas": 2, "peering": {"enabled": True}}}
STANDALONE: dict[str, Any] = {"operator": {"replicas": 1, "peering": {"enabled": False}}}
PEERING_FILES = CHART / "files" / "crds"


@pytest.fixture(scope="module")
def tools() -> KubeTools:
    return ensure_kube_tools()


def peering_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for role in by_kind(docs, "ClusterRole") for r in role["rules"] if "kopf.dev" in r["apiGroups"]]


def template(tools: KubeTools, tmp_path: Path, values: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return helm(tools, "template", "rel", str(CHART), "--values", str(path), *extra, check=False)


def test_two_replicas_with_peering_render_valid(tools: KubeTools, tmp_path: Path) -> None:
    docs = render(tools, HA, tmp=tmp_path)
    assert all(not v.startswith("skipped") for v in validate_all(docs))  # every document, CRDs included

    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    env = env_of(deployment)
    assert env["EVENTSTORE_OPERATOR_PEERING_NAME"] == "rel-k1s0-eventstore"
    assert env["EVENTSTORE_OPERATOR_PEERING_PRIORITY"] == "auto"
    assert env["EVENTSTORE_OPERATOR_PEERING_LIFETIME_SECONDS"] == "30"
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}

    # What the operator makes of that environment in two pods of the Deployment.
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    a = peering_from_env({**plain, "POD_ID": "rel-k1s0-eventstore-operator-5c9d7-abcde"})
    b = peering_from_env({**plain, "POD_ID": "rel-k1s0-eventstore-operator-5c9d7-fghij"})
    assert a is not None and b is not None
    assert a.name == b.name == "rel-k1s0-eventstore" and a.lifetime == 30
    assert a.priority == derived_priority(a.identity) != b.priority

    # Kopf's two peering CRDs, as the files hold them, kept on uninstall, naming what Kopf looks for.
    crds = {d["metadata"]["name"]: d for d in by_kind(docs, "CustomResourceDefinition")}
    for path in PEERING_FILES.glob("*.yaml"):
        source = yaml.safe_load(path.read_text())
        assert crds[source["metadata"]["name"]] == source
        assert source["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        [version] = source["spec"]["versions"]
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        assert "subresources" not in version, "Kopf patches .status through the main endpoint"
    served = [references.Resource(group=d["spec"]["group"], version=d["spec"]["versions"][0]["name"],
                                  plural=d["spec"]["names"]["plural"], kind=d["spec"]["names"]["kind"],
                                  namespaced=d["spec"]["scope"] == "Namespaced")
              for d in crds.values() if d["spec"]["group"] == GROUP]
    for selector in (references.CLUSTER_PEERINGS_K, references.NAMESPACED_PEERINGS_K):
        assert [r for r in served if selector.check(r)], f"no CRD serves {selector}"

    # Cluster-wide: the ClusterKopfPeering, listed/watched/created, only its own object patched
    # (Kopf reads peers through its watch; tests/deploy/test_rbac.py runs it under these rules).
    rules = peering_rules(docs)
    assert rules == [
        {"apiGroups": ["kopf.dev"], "resources": [CLUSTER_PLURAL], "verbs": ["list", "watch", "create"]},
        {"apiGroups": ["kopf.dev"], "resources": [CLUSTER_PLURAL], "resourceNames": ["rel-k1s0-eventstore"],
         "verbs": ["patch"]},
    ]
    binding = [b for b in by_kind(docs, "ClusterRoleBinding") if b["metadata"]["name"].endswith("-peering")]
    assert [b["roleRef"]["name"] for b in binding] == ["rel-k1s0-eventstore-k1s0-system-peering"]
    assert binding[0]["subjects"][0]["name"] == deployment["spec"]["template"]["spec"]["serviceAccountName"]


def test_lint_is_clean_with_peering(tools: KubeTools, tmp_path: Path) -> None:
    path = tmp_path / "ha.yaml"
    path.write_text(yaml.safe_dump(HA))
    done = helm(tools, "lint", "--strict", str(CHART), "--values", str(path))
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


def test_namespaced_peering_is_granted_in_the_watched_namespaces_only(tools: KubeTools, tmp_path: Path) -> None:
    values = {"operator": {"replicas": 3, "watchNamespaces": ["shop", "billing"],
                           "peering": {"enabled": True, "name": "evs-peers", "lifetimeSeconds": 15}}}
    docs = render(tools, values, tmp=tmp_path)
    list(validate_all(docs))
    env = env_of(one(docs, "Deployment"))
    assert env["EVENTSTORE_OPERATOR_PEERING_NAME"] == "evs-peers"
    assert env["EVENTSTORE_OPERATOR_PEERING_LIFETIME_SECONDS"] == "15"
    rules = peering_rules(docs)
    assert {r["resources"][0] for r in rules} == {NAMESPACED_PLURAL}
    assert [r.get("resourceNames") for r in rules] == [None, ["evs-peers"]]
    bindings = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"].endswith("-peering")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["billing", "shop"]
    assert not [b for b in by_kind(docs, "ClusterRoleBinding") if b["metadata"]["name"].endswith("-peering")]


def test_peering_crds_can_be_left_to_the_cluster(tools: KubeTools, tmp_path: Path) -> None:
    docs = render(tools, {"operator": {"peering": {"enabled": True, "installCRDs": False}}}, tmp=tmp_path)
    assert [d["metadata"]["name"] for d in by_kind(docs, "CustomResourceDefinition")] == \
        ["eventstreams.eventstore.k1s0.io"]
    assert peering_rules(docs), "the permissions are still needed"
    # One replica with peering may still roll: peering, not the strategy, keeps reconcilers apart.
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"


def test_without_peering_nothing_of_it_is_rendered(tools: KubeTools, tmp_path: Path) -> None:
    docs = render(tools, STANDALONE, tmp=tmp_path)
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert not peering_rules(docs)
    env = env_of(one(docs, "Deployment"))
    assert not any(k.startswith("EVENTSTORE_OPERATOR_PEERING") or k == "POD_ID" for k in env)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"operator": {"replicas": 2, "peering": {"enabled": False}}}, "/operator/replicas"),
        ({"operator": {"replicas": 2, "peering": {"enabled": True, "priority": 5}}}, "/operator/peering/priority"),
        ({"operator": {"peering": {"enabled": True, "priority": "high"}}}, "/operator/peering/priority"),
        ({"operator": {"peering": {"enabled": True, "lifetimeSeconds": 3}}}, "/operator/peering/lifetimeSeconds"),
        ({"operator": {"peering": {"enabled": True, "name": "Not_A_Name"}}}, "/operator/peering/name"),
        ({"operator": {"peering": {"enabled": True, "leaderElection": True}}}, "leaderElection"),
    ],
)
def test_schema_refuses_bad_peering_values(
    tools: KubeTools, tmp_path: Path, values: dict[str, Any], complaint: str
) -> None:
    done = template(tools, tmp_path, values)
    assert done.returncode != 0, f"accepted {values}"
    assert "schema" in done.stderr and complaint in done.stderr, done.stderr


def test_template_refuses_replicas_without_peering_even_without_the_schema(tools: KubeTools, tmp_path: Path) -> None:
    done = template(tools, tmp_path, {"operator": {"replicas": 2, "peering": {"enabled": False}}},
                    "--skip-schema-validation")
    assert done.returncode != 0 and "operator.replicas > 1 needs operator.peering.enabled=true" in done.stderr
    done = template(tools, tmp_path, {"operator": {"replicas": 2, "peering": {"enabled": True, "priority": 5}}},
                    "--skip-schema-validation")
    assert done.returncode != 0 and "priority must be auto" in done.stderr
    # An explicit priority is fine for a single replica (e.g. a fixed in-cluster operator).
    assert template(tools, tmp_path, {"operator": {"replicas": 1, "peering": {"enabled": True, "priority": 5}}}
                    ).returncode == 0


def test_notes_say_which_mode(tools: KubeTools, tmp_path: Path) -> None:
    path = tmp_path / "ha.yaml"
    path.write_text(yaml.safe_dump(HA))
    done = helm(tools, "install", "rel", str(CHART), "--dry-run=client", "--namespace", "k1s0-system",
                "--values", str(path))
    notes = done.stdout.split("NOTES:", 1)[1]
    assert 'Kopf peering "rel-k1s0-eventstore" is on: 2 replica(s)' in notes
    assert "kubectl get clusterkopfpeering rel-k1s0-eventstore" in notes
    path.write_text(yaml.safe_dump(STANDALONE))
    standalone = helm(tools, "install", "rel", str(CHART), "--dry-run=client", "--namespace", "k1s0-system",
                      "--values", str(path))
    assert "Kopf runs standalone" in standalone.stdout.split("NOTES:", 1)[1]
