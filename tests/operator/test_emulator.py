"""The test API server behaves like a real one where Kopf and the kubernetes client depend on it."""

from __future__ import annotations

import json
from typing import Any

from tests.operator.conftest import event_stream
from tests.support.kube import ApiServer

BASE = "/apis/eventstore.k1s0.io/v1/namespaces/{ns}/eventstreams"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


async def call(api: ApiServer, method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with api.request(method, url, **kwargs) as response:
        return response.status, await response.json()


async def test_create_fills_metadata_and_answers_201_then_409(api: ApiServer) -> None:
    await api.create_namespace("emu")
    body = event_stream("a", "emu")
    del body["metadata"]["namespace"]  # taken from the URL
    status, created = await call(api, "POST", BASE.format(ns="emu"), json=body)
    assert status == 201
    meta = created["metadata"]
    assert meta["namespace"] == "emu" and meta["uid"] and meta["creationTimestamp"]
    assert meta["generation"] == 1 and int(meta["resourceVersion"]) > 0
    status, conflict = await call(api, "POST", BASE.format(ns="emu"), json=body)
    assert (status, conflict["reason"]) == (409, "AlreadyExists")
    status, _ = await call(api, "POST", BASE.format(ns="emu"), json=event_stream("b", "other"))
    assert status == 400
    status, _ = await call(api, "POST", BASE.format(ns="nowhere"), json=event_stream("b", "nowhere"))
    assert status == 404


async def test_patches_resource_versions_generation_and_the_status_split(api: ApiServer) -> None:
    await api.create_namespace("emu")
    _, obj = await call(api, "POST", BASE.format(ns="emu"), json=event_stream("a", "emu"))
    url = BASE.format(ns="emu") + "/a"
    rv0 = obj["metadata"]["resourceVersion"]

    # Status through the main endpoint is ignored; metadata-only changes keep the generation.
    _, obj = await call(api, "PATCH", url, json={"status": {"phase": "X"}, "metadata": {"labels": {"l": "1"}}},
                        headers=MERGE)
    assert "status" not in obj and obj["metadata"]["labels"] == {"l": "1"}
    assert obj["metadata"]["generation"] == 1 and obj["metadata"]["resourceVersion"] != rv0

    # The status subresource changes only the status, and does not bump the generation.
    _, obj = await call(api, "PATCH", url + "/status", json={"status": {"phase": "Ready"}, "spec": {"x": 1}},
                        headers=MERGE)
    assert obj["status"] == {"phase": "Ready"} and "x" not in obj["spec"]
    assert obj["metadata"]["generation"] == 1

    # A spec change bumps the generation; a no-op patch changes nothing at all.
    _, obj = await call(api, "PATCH", url, json={"spec": {"kafka": {"partitions": 7}}}, headers=MERGE)
    assert obj["metadata"]["generation"] == 2
    rv = obj["metadata"]["resourceVersion"]
    _, same = await call(api, "PATCH", url, json={"spec": {"kafka": {"partitions": 7}}}, headers=MERGE)
    assert same["metadata"]["resourceVersion"] == rv

    # JSON patch with a stale resourceVersion test: 422 (what Kopf's finalizer patch expects).
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv0},
           {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]
    status, err = await call(api, "PATCH", url, json=ops, headers=JSON_PATCH)
    assert (status, err["reason"]) == (422, "Invalid")
    ops[0]["value"] = rv
    status, obj = await call(api, "PATCH", url, json=ops, headers=JSON_PATCH)
    assert status == 200 and obj["metadata"]["finalizers"] == ["f"]

    # A merge patch carrying a stale resourceVersion: 409.
    status, err = await call(api, "PATCH", url, json={"metadata": {"resourceVersion": rv0}}, headers=MERGE)
    assert (status, err["reason"]) == (409, "Conflict")

    # Schema violations: 422, and unknown fields are pruned rather than stored.
    status, err = await call(api, "PATCH", url, json={"spec": {"kafka": {"partitions": 0}}}, headers=MERGE)
    assert status == 422 and "partitions" in err["message"]
    _, obj = await call(api, "PATCH", url, json={"spec": {"surprise": True}}, headers=MERGE)
    assert "surprise" not in obj["spec"]


async def test_finalizers_hold_deletion_and_owners_collect_dependents(api: ApiServer) -> None:
    await api.create_namespace("emu")
    _, owner = await call(api, "POST", BASE.format(ns="emu"), json=event_stream("a", "emu", finalizers=["f"]))
    ref = {"apiVersion": "eventstore.k1s0.io/v1", "kind": "EventStream", "name": "a",
           "uid": owner["metadata"]["uid"], "controller": True}
    status, _ = await call(api, "POST", "/api/v1/namespaces/emu/configmaps",
                           json={"metadata": {"name": "dep", "ownerReferences": [ref]}, "data": {"k": "v"}})
    assert status == 201
    url = BASE.format(ns="emu") + "/a"
    status, marked = await call(api, "DELETE", url)
    assert status == 200 and marked["metadata"]["deletionTimestamp"]
    status, _ = await call(api, "GET", url)
    assert status == 200  # held by the finalizer
    await call(api, "PATCH", url, json={"metadata": {"finalizers": None}}, headers=MERGE)
    status, _ = await call(api, "GET", url)
    assert status == 404
    status, _ = await call(api, "GET", "/api/v1/namespaces/emu/configmaps/dep")
    assert status == 404  # garbage-collected with its owner


async def test_watch_replays_from_a_resource_version(api: ApiServer) -> None:
    await api.create_namespace("emu")
    status, listing = await call(api, "GET", BASE.format(ns="emu"))
    assert status == 200 and listing["items"] == [] and listing["kind"] == "EventStreamList"
    since = listing["metadata"]["resourceVersion"]
    await call(api, "POST", BASE.format(ns="emu"), json=event_stream("a", "emu"))
    await call(api, "PATCH", BASE.format(ns="emu") + "/a", json={"spec": {"deletionPolicy": "Delete"}}, headers=MERGE)
    params = {"watch": "true", "resourceVersion": since, "timeoutSeconds": "1"}
    async with api.get(BASE.format(ns="emu"), params=params) as response:
        lines = [line async for line in response.content if line.strip()]
    types = [json.loads(line)["type"] for line in lines]
    assert types == ["ADDED", "MODIFIED"]
