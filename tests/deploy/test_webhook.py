"""The injection webhook over real HTTP: Kopf's admission server, real AdmissionReview v1 bodies.

Every allowed response's JSONPatch is applied to the pod with ``jsonpatch`` and the result
validated as a Pod against the Kubernetes 1.35 schemas (``kubernetes-validate``, strict).
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonpatch
import kubernetes_validate
import pytest

from k1s0_operator import webhook
from k1s0_operator.injection import (
    IMAGE_ANNOTATION,
    INJECTED_ANNOTATION,
    RESOURCES_ANNOTATION,
    SIDECAR_NAME,
    STREAM_LABEL,
    InjectionSettings,
)
from tests.deploy.conftest import NAMESPACE, app_pod, eventstream
from tests.deploy.kopf_webhook import Streams, served_webhook
from tests.support.postgres import free_port

K8S_VERSION = "1.35.0"
DEFAULT_IMAGE = "registry.example.com/k1s0/k1s0-eventstore:0.1.0"


def review(pod: dict[str, Any], *, operation: str = "CREATE", dry_run: bool = False) -> dict[str, Any]:
    """An AdmissionReview v1 request as kube-apiserver sends it for a pod."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NAMESPACE,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "5c1f", "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


class Client:
    def __init__(self, session: aiohttp.ClientSession, url: str, streams: Streams) -> None:
        self.session, self.url, self.streams = session, url, streams

    async def post(self, body: Any) -> aiohttp.ClientResponse:
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        return await self.session.post(self.url, data=data, headers={"Content-Type": "application/json"})

    async def admit(self, pod: dict[str, Any], **kw: Any) -> dict[str, Any]:
        request = review(pod, **kw)
        resp = await self.post(request)
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
        assert answer["response"]["uid"] == request["request"]["uid"]
        result: dict[str, Any] = answer["response"]
        return result


def patched(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """The pod after the API server applied the response's JSONPatch, validated as a Pod."""
    assert response["allowed"] is True, response
    assert response.get("patchType") == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    kubernetes_validate.validate(result, K8S_VERSION, strict=True)
    return result


@pytest.fixture
def streams() -> Streams:
    s = Streams()
    for body in (eventstream("orders"), eventstream("billing", ready=False),
                 eventstream("audit", image="registry.example.com/k1s0/k1s0-eventstore:0.2.0-rc1",
                             resources={"requests": {"cpu": "200m"}, "limits": {"memory": "512Mi"}})):
        s[(NAMESPACE, body["metadata"]["name"])] = body
    return s


async def _client(settings: InjectionSettings, streams: Streams) -> AsyncIterator[Client]:
    server = webhook.build_server(
        webhook.WebhookSettings(address="127.0.0.1", port=free_port(), insecure=True), files=None
    )
    async with served_webhook(server, streams, settings) as url, aiohttp.ClientSession() as session:
        yield Client(session, url, streams)


@pytest.fixture
async def client(streams: Streams) -> AsyncIterator[Client]:
    async for c in _client(InjectionSettings(image=DEFAULT_IMAGE), streams):
        yield c


def sidecar_of(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == SIDECAR_NAME]
    assert len(found) == 1, found
    return found[0]


async def test_labelled_pod_gets_a_native_sidecar(client: Client, pod: dict[str, Any]) -> None:
    response = await client.admit(pod)
    result = patched(pod, response)
    assert result["spec"]["containers"] == pod["spec"]["containers"], "the app container is untouched"
    init = result["spec"]["initContainers"]
    assert [c["name"] for c in init] == [SIDECAR_NAME]
    sidecar = init[0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == DEFAULT_IMAGE
    assert sidecar["args"] == ["serve", "--config", "/etc/k1s0-eventstore/config.yaml"]
    assert {p["containerPort"] for p in sidecar["ports"]} == {8080, 9090}
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["EVENTSTORE_SERVER_HOST"] == "127.0.0.1"
    assert (env["EVENTSTORE_SERVER_PORT"], env["EVENTSTORE_SERVER_GRPC_PORT"]) == ("8080", "9090")
    assert sidecar["envFrom"] == [{"secretRef": {"name": "orders-eventstore-db"}}]
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    assert volumes["k1s0-eventstore-config"]["configMap"]["name"] == "orders-eventstore-config"
    assert "emptyDir" in volumes["k1s0-eventstore-tmp"]
    # Bound to loopback: the kubelet cannot reach it over the pod IP, so the probes run inside.
    for probe, path in (("startupProbe", "/readyz"), ("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        command = sidecar[probe]["exec"]["command"]
        assert command[:2] == ["python", "-c"] and f"http://127.0.0.1:8080{path}" in command[2]
    sc = sidecar["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sidecar["resources"] == {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}}
    assert result["metadata"]["annotations"][INJECTED_ANNOTATION] == "orders"
    assert "env" not in sidecar or all("valueFrom" not in e and "PASSWORD" not in e["name"] for e in sidecar["env"])


async def test_existing_init_containers_come_after_the_sidecar(client: Client, pod: dict[str, Any]) -> None:
    pod["spec"]["initContainers"] = [{"name": "wait-for-config", "image": "busybox:1.36", "command": ["true"]}]
    result = patched(pod, await client.admit(pod))
    assert [c["name"] for c in result["spec"]["initContainers"]] == [SIDECAR_NAME, "wait-for-config"]


async def test_image_and_resources_precedence(client: Client) -> None:
    # EventStream spec.sidecar over the defaults, key by key.
    pod = app_pod("audit")
    sidecar = sidecar_of(patched(pod, await client.admit(pod)))
    assert sidecar["image"] == "registry.example.com/k1s0/k1s0-eventstore:0.2.0-rc1"
    assert sidecar["resources"] == {"requests": {"cpu": "200m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}}
    # The pod's annotations over both.
    pod = app_pod("audit", **{IMAGE_ANNOTATION: "registry.example.com/k1s0/k1s0-eventstore:debug",
                              RESOURCES_ANNOTATION: '{"limits": {"memory": "1Gi", "cpu": "1"}}'})
    sidecar = sidecar_of(patched(pod, await client.admit(pod)))
    assert sidecar["image"] == "registry.example.com/k1s0/k1s0-eventstore:debug"
    assert sidecar["resources"] == {"requests": {"cpu": "200m", "memory": "96Mi"},
                                    "limits": {"memory": "1Gi", "cpu": "1"}}


async def test_unlabelled_pod_is_left_alone(client: Client) -> None:
    # The object selector keeps such pods away; if one is sent anyway, it is allowed untouched.
    response = await client.admit(app_pod(None))
    assert response["allowed"] is True
    assert "patch" not in response


async def test_already_injected_pod_is_left_as_it_is(client: Client, pod: dict[str, Any]) -> None:
    once = patched(pod, await client.admit(pod))
    response = await client.admit(copy.deepcopy(once))
    assert response["allowed"] is True and "patch" not in response
    # Also when the sidecar was added by hand as a plain container (nothing is duplicated).
    manual = copy.deepcopy(pod)
    manual["spec"]["containers"].append({"name": SIDECAR_NAME, "image": "custom:1"})
    response = await client.admit(manual)
    assert response["allowed"] is True and "patch" not in response


async def test_missing_eventstream_refuses_the_pod_by_name(client: Client) -> None:
    response = await client.admit(app_pod("payments"))
    assert response["allowed"] is False
    assert "patch" not in response
    message = response["status"]["message"]
    assert 'EventStream "payments"' in message and f'namespace "{NAMESPACE}"' in message
    assert response["status"]["code"] == 403


async def test_eventstream_in_another_namespace_does_not_count(client: Client, streams: Streams) -> None:
    streams[("other", "payments")] = eventstream("payments")
    response = await client.admit(app_pod("payments"))
    assert response["allowed"] is False and 'EventStream "payments"' in response["status"]["message"]


async def test_not_ready_eventstream_refuses_the_pod_with_its_reason(client: Client) -> None:
    response = await client.admit(app_pod("billing"))
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert 'EventStream "billing"' in message and "not Ready" in message
    assert "database unreachable" in message, "the Ready condition's message tells the user why"


async def test_eventstream_without_status_yet_is_not_ready(client: Client, streams: Streams) -> None:
    fresh = eventstream("fresh")
    del fresh["status"]
    streams[(NAMESPACE, "fresh")] = fresh
    response = await client.admit(app_pod("fresh"))
    assert response["allowed"] is False and 'EventStream "fresh"' in response["status"]["message"]


async def test_unreachable_api_refuses_with_503(client: Client, streams: Streams) -> None:
    streams.fail = "connection refused"
    response = await client.admit(app_pod("orders"))
    assert response["allowed"] is False
    assert response["status"]["code"] == 503 and "connection refused" in response["status"]["message"]


@pytest.mark.parametrize(
    ("label", "annotations", "expected"),
    [
        ("", {}, "must name an EventStream"),
        ("Orders_Bad", {}, "not a valid EventStream name"),
        ("orders", {RESOURCES_ANNOTATION: "{not json"}, "not valid JSON"),
        ("orders", {RESOURCES_ANNOTATION: '{"limits": {"memory": true}}'}, "quantities"),
        ("orders", {RESOURCES_ANNOTATION: '{"requets": {}}'}, "requests"),
    ],
)
async def test_bad_labels_and_annotations_are_refused(
    client: Client, label: str, annotations: dict[str, str], expected: str
) -> None:
    response = await client.admit(app_pod(label, **annotations))
    assert response["allowed"] is False
    assert expected in response["status"]["message"]


async def test_port_conflict_is_refused(client: Client, pod: dict[str, Any]) -> None:
    pod["spec"]["containers"][0]["ports"].append({"containerPort": 9090, "name": "grpc"})
    response = await client.admit(pod)
    assert response["allowed"] is False and "9090" in response["status"]["message"]


async def test_host_network_pod_is_refused(client: Client, pod: dict[str, Any]) -> None:
    pod["spec"]["hostNetwork"] = True
    response = await client.admit(pod)
    assert response["allowed"] is False and "hostNetwork" in response["status"]["message"]


async def test_dry_run_gets_the_same_answer(client: Client, pod: dict[str, Any]) -> None:
    wet = patched(pod, await client.admit(pod))
    dry = patched(pod, await client.admit(pod, dry_run=True))
    assert wet == dry


async def test_malformed_requests_are_http_errors(client: Client, pod: dict[str, Any]) -> None:
    resp = await client.post("{this is not json")
    assert resp.status == 400
    no_user = review(pod)
    del no_user["request"]["userInfo"]
    assert (await client.post(no_user)).status == 400
    no_object = review(pod)
    no_object["request"]["object"] = None
    assert (await client.post(no_object)).status == 400
    services = review(pod)
    services["request"]["resource"] = {"group": "", "version": "v1", "resource": "services"}
    assert (await client.post(services)).status == 404
    # None of these broke the server.
    assert (await client.admit(pod))["allowed"] is True


async def test_namespace_comes_from_the_request_when_the_object_lacks_it(client: Client) -> None:
    pod = app_pod("orders")
    del pod["metadata"]["namespace"]
    result = patched(pod, await client.admit(pod))
    assert result["metadata"]["annotations"][INJECTED_ANNOTATION] == "orders"
    missing = app_pod("payments")
    del missing["metadata"]["namespace"]
    response = await client.admit(missing)
    assert response["allowed"] is False and f'namespace "{NAMESPACE}"' in response["status"]["message"]


async def test_only_create_is_handled(client: Client, pod: dict[str, Any]) -> None:
    response = await client.admit(pod, operation="UPDATE")
    assert response["allowed"] is True and "patch" not in response


@pytest.mark.parametrize("native", [True, False])
async def test_settings_switches(streams: Streams, pod: dict[str, Any], native: bool) -> None:
    settings = InjectionSettings(image=DEFAULT_IMAGE, native_sidecar=native, bind_address="0.0.0.0")
    async for c in _client(settings, streams):
        result = patched(pod, await c.admit(pod))
    if native:
        assert result["spec"]["initContainers"][0]["name"] == SIDECAR_NAME
    else:
        # Older clusters: a plain container after the app's, no restartPolicy on it.
        assert "initContainers" not in result["spec"]
        assert [c["name"] for c in result["spec"]["containers"]] == ["app", SIDECAR_NAME]
        assert "restartPolicy" not in result["spec"]["containers"][1]
    sidecar = sidecar_of(result)
    # Bound to all interfaces: plain HTTP probes from the kubelet.
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8080}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8080}


def test_label_filter_is_an_object_selector() -> None:
    """Kopf turns the handler's label filter into the webhook's objectSelector (not annotations)."""
    from kopf._core.engines.admission import build_webhooks
    from kopf._core.intents import registries

    from tests.deploy.kopf_webhook import PODS

    handlers = [h for h in registries.get_default_registry()._webhooks.get_all_handlers()
                if h.id == webhook.HANDLER_ID]
    assert len(handlers) == 1
    [hook] = build_webhooks(handlers, resources=[PODS], name_suffix="k1s0", client_config={"url": "https://x"})
    assert hook["objectSelector"] == {"matchExpressions": [{"key": STREAM_LABEL, "operator": "Exists"}]}
    assert hook["clientConfig"]["url"] == "https://x/inject-sidecar"
    assert hook["rules"][0]["operations"] == ["CREATE"] and hook["rules"][0]["resources"] == ["pods"]
    assert hook["sideEffects"] == "None" and hook["failurePolicy"] == "Fail"


async def test_kafka_credentials_are_mounted_from_the_eventstreams_secret(client: Client, streams: Streams) -> None:
    """spec.kafka.credentials: the named keys of the Secret as read-only files plus EVENTSTORE_KAFKA_*
    variables naming them; the user name by reference; no credential value in the pod spec."""
    body = eventstream("payments")
    body["spec"]["kafka"] = {"credentials": {
        "secretName": "payments-kafka", "usernameKey": "user", "passwordKey": "password", "caKey": "ca.crt",
    }}
    streams[(NAMESPACE, "payments")] = body
    pod = app_pod("payments")
    result = patched(pod, await client.admit(pod))
    sidecar = sidecar_of(result)
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["EVENTSTORE_KAFKA_SASL_USERNAME"]["valueFrom"] == {
        "secretKeyRef": {"name": "payments-kafka", "key": "user"}
    }
    assert env["EVENTSTORE_KAFKA_SASL_PASSWORD_FILE"]["value"] == "/etc/k1s0-eventstore/kafka/password"
    assert env["EVENTSTORE_KAFKA_SSL_CA_FILE"]["value"] == "/etc/k1s0-eventstore/kafka/ca.crt"
    assert "EVENTSTORE_KAFKA_SSL_CERT_FILE" not in env and "EVENTSTORE_KAFKA_SASL_PASSWORD" not in env
    volumes = {v["name"]: v for v in result["spec"]["volumes"]}
    assert volumes["k1s0-eventstore-kafka"]["secret"] == {
        "secretName": "payments-kafka",
        "items": [{"key": "password", "path": "password"}, {"key": "ca.crt", "path": "ca.crt"}],
    }
    assert {"name": "k1s0-eventstore-kafka", "mountPath": "/etc/k1s0-eventstore/kafka", "readOnly": True} in (
        sidecar["volumeMounts"]
    )
    # Without credentials nothing of the kind is added (test_labelled_pod_gets_a_native_sidecar: "orders").
    plain = sidecar_of(patched(app_pod(), await client.admit(app_pod())))
    assert not any(e["name"].startswith("EVENTSTORE_KAFKA_") for e in plain["env"])

    body["spec"]["kafka"]["credentials"]["caKey"] = "../etc/passwd"
    response = await client.admit(app_pod("payments"))
    assert response["allowed"] is False
    assert "spec.kafka.credentials.caKey '../etc/passwd' is not a Secret key" in response["status"]["message"]
