"""The CRD and every manifest the operator writes, against real Kubernetes schemas; the examples and
bad specs against the CRD's own openAPIV3Schema (pruning, defaulting, validation as the API server
does them)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kopf
import kubernetes_validate
import pytest
import yaml

import k1s0_operator
from k1s0_operator._resources import config_map_body, secret_body, sidecar_config
from k1s0_operator._spec import parse_spec
from tests.operator.conftest import CRD_PATH, ROOT, load_crd, operator_config
from tests.support.kube import apply_defaults, prune, validation_errors

K8S_VERSION = "1.35.0"
EXAMPLES = sorted((ROOT / "crds" / "examples").glob("*.yaml"))


def schema() -> dict[str, Any]:
    version = load_crd()["spec"]["versions"][0]
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


def admitted(obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What the API server would store (pruned, defaulted), and its validation errors."""
    stored = copy.deepcopy(obj)
    prune(stored, schema(), root=True)
    apply_defaults(stored, schema())
    return stored, validation_errors({k: v for k, v in stored.items() if k != "metadata"}, schema())


def test_the_crd_is_a_valid_kubernetes_manifest_with_the_agreed_names() -> None:
    crd = yaml.safe_load(CRD_PATH.read_text())
    kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
    assert crd["metadata"]["name"] == f"{k1s0_operator.PLURAL}.{k1s0_operator.GROUP}"
    spec = crd["spec"]
    assert spec["group"] == "eventstore.k1s0.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "EventStream" and spec["names"]["shortNames"] == ["evs"]
    (version,) = spec["versions"]
    assert version["name"] == "v1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Schema", "Topic", "Cluster", "Phase", "Age"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    expected = {
        "conditions", "observedGeneration", "phase", "schema", "cluster", "topics", "secretName", "configMapName"
    }
    assert expected <= set(status)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_is_admitted_unchanged_and_accepted_by_the_operator(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    stored, errors = admitted(doc)
    assert errors == []
    pruned = copy.deepcopy(doc)
    prune(pruned, schema(), root=True)
    assert pruned == doc, "the example has fields the CRD does not know (the API server would drop them)"
    spec = parse_spec(stored["metadata"]["namespace"], stored["metadata"]["name"], stored["spec"])
    assert spec.deletion_policy in ("Retain", "Delete")


def test_defaults_are_the_seeds() -> None:
    stored, errors = admitted({"apiVersion": "eventstore.k1s0.io/v1", "kind": "EventStream",
                               "metadata": {"name": "a", "namespace": "b"}, "spec": {}})
    assert errors == []
    spec = stored["spec"]
    assert spec["kafka"]["topic"] == "k1s0.system.eventstore.event.published.v1"
    assert spec["snapshots"] == {"interval": 100, "retentionDays": 30}
    assert spec["limits"] == {"maxEventsPerAppend": 100, "maxPageSize": 200}
    assert spec["deletionPolicy"] == "Retain"
    assert parse_spec("b", "a", spec).schema == "b_a"


BAD_SPECS = [
    ("partitions below 1", {"kafka": {"partitions": 0}}),
    ("partitions not an integer", {"kafka": {"partitions": "3"}}),
    ("replication factor 0", {"kafka": {"replicationFactor": 0}}),
    ("topic with a space", {"kafka": {"topic": "bad topic"}}),
    ("topic too long", {"kafka": {"topic": "t" * 250}}),
    ("route to a bad topic", {"kafka": {"routes": {"OrderPlaced": "bad/topic"}}}),
    ("topic config not a string", {"kafka": {"config": {"retention.ms": 1000}}}),
    ("schema with upper case", {"database": {"schema": "Orders"}}),
    ("schema starting with a digit", {"database": {"schema": "1orders"}}),
    ("schema with a quote", {"database": {"schema": 'a"; DROP SCHEMA public; --'}}),
    ("schema too long for its role", {"database": {"schema": "s" * 60}}),
    ("negative snapshot interval", {"snapshots": {"interval": -1}}),
    ("negative retention", {"snapshots": {"retentionDays": -5}}),
    ("zero events per append", {"limits": {"maxEventsPerAppend": 0}}),
    ("page size a string", {"limits": {"maxPageSize": "200"}}),
    ("unknown deletion policy", {"deletionPolicy": "Orphan"}),
    ("empty sidecar image", {"sidecar": {"image": ""}}),
    ("spec not an object", "orders"),
]


@pytest.mark.parametrize(("why", "spec"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
def test_bad_specs_are_refused_by_the_schema(why: str, spec: Any) -> None:
    _, errors = admitted({"apiVersion": "eventstore.k1s0.io/v1", "kind": "EventStream",
                          "metadata": {"name": "a", "namespace": "b"}, "spec": spec})
    assert errors, why


def test_the_secret_and_configmap_the_operator_writes_are_valid_manifests() -> None:
    uid = "0b4e7a52-6a55-4d5e-9a3e-2f0d1c1e7a11"
    owner = kopf.Body({"apiVersion": "eventstore.k1s0.io/v1", "kind": "EventStream",
                       "metadata": {"name": "orders", "namespace": "shop", "uid": uid}})
    spec = parse_spec("shop", "orders", {"kafka": {"routes": {"OrderShipped": "k1s0.shop.shipped.v1"}}})
    config = operator_config("postgresql://admin:pw@db.example:5432/k1s0", "kafka-0:9092")
    secret = secret_body(spec, "postgresql://shop_orders_app:x@db.example:5432/k1s0", owner)
    cm = config_map_body(spec, sidecar_config(config, spec), owner)
    for manifest in (secret, cm):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        ref = manifest["metadata"]["ownerReferences"][0]
        assert ref["uid"] == owner["metadata"]["uid"] and ref["controller"] is True
    text = cm["data"]["config.yaml"]
    assert "pw@" not in text and "admin" not in text
    loaded = yaml.safe_load(text)
    assert loaded["kafka"]["routes"] == {"OrderShipped": "k1s0.shop.shipped.v1"}
    assert loaded["database"] == {**loaded["database"], "url": "", "schema": "shop_orders"}
    assert spec.topics[1].name == "k1s0.shop.shipped.v1"
