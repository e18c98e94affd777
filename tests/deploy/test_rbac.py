"""The chart's RBAC, proven: the operator runs its whole lifecycle under exactly the rendered rules.

The real ``k1s0-eventstore operator`` command, with the environment and arguments of the chart's
default Deployment (peering on, cluster-wide, self-signed webhook TLS), talks to the API-server
emulator with a token that the emulator holds to the ClusterRoles/Roles the chart binds to the
operator's ServiceAccount (``tests/support/rbac.py``): every request outside them is answered 403
and recorded. The lifecycle covers what the operator and the webhook do in a cluster: peering,
the webhook certificate Secret and caBundle, an EventStream provisioned (with owner references
that need ``eventstreams/finalizers``), a pod admitted over TLS, the EventStream deleted. A verb
the chart forgets fails this test.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from k1s0_operator import webhook
from tests.deploy.conftest import NAMESPACE, app_pod
from tests.deploy.test_chart import render
from tests.deploy.test_webhook import review
from tests.deploy.tools import KubeTools, ensure_kube_tools
from tests.operator.conftest import EVS, condition, event_stream, eventually
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiServer
from tests.support.postgres import LocalPostgres, free_port
from tests.support.rbac import Attributes, Authorizer

RELEASE_NS = "k1s0-system"
TOKEN = "operator-serviceaccount-token"
MWC = ("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations")
SECRETS = ("", "v1", "secrets")


@pytest.fixture(scope="module")
def tools() -> KubeTools:
    return ensure_kube_tools()


def chart_env(deployment: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: str(e["value"]) for e in container["env"] if "value" in e}
    return list(container["args"]), env


async def served(api: ApiServer, docs: list[dict[str, Any]]) -> None:
    """The chart's CRDs and webhook configuration in the emulator, as `helm install` leaves them."""
    for crd in (d for d in docs if d["kind"] == "CustomResourceDefinition"):
        api.register_crd(crd)
    [config] = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    await api.put_object(MWC, "", config)
    for ns in (RELEASE_NS, NAMESPACE):
        await api.create_namespace(ns)


#: The chart's two RBAC layouts: cluster-wide (ClusterRoleBindings, a ClusterKopfPeering), and
#: operator.watchNamespaces (RoleBindings in the watched namespace, a KopfPeering there).
LAYOUTS = {"cluster-wide": None, "watched-namespace": {"operator": {"watchNamespaces": [NAMESPACE]}}}


@pytest.fixture(params=sorted(LAYOUTS))
async def operator_process(
    request: pytest.FixtureRequest, api: ApiServer, tools: KubeTools, pg: LocalPostgres, kafka: LocalKafka,
    tmp_path: Path,
) -> AsyncIterator[dict[str, Any]]:
    docs = render(tools, LAYOUTS[request.param], tmp=tmp_path)
    await served(api, docs)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    api.authorizers[TOKEN] = Authorizer.from_manifests(docs, RELEASE_NS, account)
    kubeconfig = kubeconfig_for_token(TOKEN, tmp_path)
    args, env = chart_env(deployment)
    ports = {"EVENTSTORE_WEBHOOK_PORT": free_port(), "EVENTSTORE_OPERATOR_LIVENESS_PORT": free_port(),
             "EVENTSTORE_OPERATOR_METRICS_PORT": free_port()}
    env.update({k: str(v) for k, v in ports.items()})
    env.update({
        "PATH": os.environ["PATH"], "KUBECONFIG": str(kubeconfig), "EVENTSTORE_DATABASE_URL": pg.dsn,
        "EVENTSTORE_KAFKA_BROKERS": kafka.bootstrap, "EVENTSTORE_NAMESPACE": RELEASE_NS,
        "POD_ID": "rel-k1s0-eventstore-operator-7d9c-x1", "EVENTSTORE_WEBHOOK_ADDRESS": "127.0.0.1",
        "EVENTSTORE_WEBHOOK_CERT_DIR": str(tmp_path / "tls"), "EVENTSTORE_OPERATOR_BACKOFF_SECONDS": "0.5",
        "EVENTSTORE_OPERATOR_DRIFT_INTERVAL_SECONDS": "2",
    })
    log = tmp_path / "operator.log"
    command = Path(sys.executable).with_name("k1s0-eventstore")
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(str(command), *args, env=env, stdout=out, stderr=out)
    try:
        yield {"ports": ports, "log": log, "docs": docs, "proc": proc, "args": args}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def kubeconfig_for_token(token: str, tmp_path: Path) -> Path:
    """The test's kubeconfig (the ``api`` fixture's server) with a service account's token."""
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    config["users"][0]["user"]["token"] = token
    path = tmp_path / f"kubeconfig-{token}"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_operator_lifecycle_within_the_charts_rbac(api: ApiServer, operator_process: dict[str, Any]) -> None:
    ports, log = operator_process["ports"], operator_process["log"]
    docs = operator_process["docs"]
    [config] = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    config_name = config["metadata"]["name"]

    def fail(what: str) -> str:
        return f"{what}; denied: {api.denied}\n{log.read_text(errors='replace')[-4000:]}"

    async def ca_bundle() -> str | None:
        hooks = (api.obj(MWC, "", config_name) or {}).get("webhooks") or [{}]
        bundle = hooks[0].get("clientConfig", {}).get("caBundle")
        return base64.b64decode(bundle).decode() if bundle else None

    try:
        bundle = await eventually(ca_bundle, 60, "the caBundle to be patched")
    except AssertionError:
        raise AssertionError(fail("no caBundle")) from None

    await api.put_object(EVS, NAMESPACE, event_stream(
        "orders", NAMESPACE, {"kafka": {"topic": f"{NAMESPACE}.orders"}, "deletionPolicy": "Delete"}))

    async def ready() -> dict[str, Any] | None:
        obj = api.obj(EVS, NAMESPACE, "orders")
        return obj if condition(obj, "Ready").get("status") == "True" else None

    try:
        obj = await eventually(ready, 60, "the EventStream to be Ready")
    except AssertionError:
        raise AssertionError(fail("never Ready")) from None
    assert condition(obj, "Provisioned")["status"] == "True"
    secret = api.obj(SECRETS, NAMESPACE, "orders-eventstore-db")
    assert secret is not None and secret["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True

    context = ssl.create_default_context(cadata=bundle)
    context.check_hostname = False  # the certificate names the Service; the test calls 127.0.0.1
    async with aiohttp.ClientSession() as session:
        url = f"https://127.0.0.1:{ports['EVENTSTORE_WEBHOOK_PORT']}/{webhook.HANDLER_ID}"
        async with session.post(url, json=review(app_pod("orders")), ssl=context) as resp:
            answer = (await resp.json())["response"]
        assert answer["allowed"] is True, answer
        metrics_url = f"http://127.0.0.1:{ports['EVENTSTORE_OPERATOR_METRICS_PORT']}"
        async with session.get(f"{metrics_url}/readyz") as resp:
            assert resp.status == 200, await resp.text()
        async with session.get(f"{metrics_url}/metrics") as resp:
            text = await resp.text()
        assert 'k1s0_operator_admissions_total{outcome="injected"} 1.0' in text
        assert 'k1s0_operator_reconciles_total{handler="reconcile",outcome="ok"}' in text
        async with session.get(f"http://127.0.0.1:{ports['EVENTSTORE_OPERATOR_LIVENESS_PORT']}/healthz") as resp:
            assert resp.status == 200, await resp.text()

    await api.delete_object(EVS, NAMESPACE, "orders")

    async def gone() -> bool:
        return api.obj(EVS, NAMESPACE, "orders") is None and api.obj(SECRETS, NAMESPACE,
                                                                         "orders-eventstore-db") is None

    try:
        await eventually(gone, 60, "the EventStream and its Secret to be gone")
    except AssertionError:
        raise AssertionError(fail("not deleted")) from None

    assert api.denied == [], fail("requests outside the chart's RBAC")
    checked = {(a.verb, a.resource, a.subresource) for a in api.authorized}
    # The lifecycle did exercise the rules that are easy to forget.
    for needed in (("update", "eventstreams", "finalizers"), ("patch", "eventstreams", "status"),
                   ("patch", "eventstreams", ""), ("get", "eventstreams", ""), ("create", "secrets", ""),
                   ("delete", "secrets", ""), ("create", "events", ""),
                   ("patch", "kopfpeerings" if "--all-namespaces" not in operator_process["args"] else
                    "clusterkopfpeerings", ""),
                   ("patch", "mutatingwebhookconfigurations", ""), ("watch", "customresourcedefinitions", "")):
        assert needed in checked, (needed, " ".join(map(str, sorted(checked))))


def test_authorizer_matches_like_kubernetes(tools: KubeTools) -> None:
    docs = render(tools)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    authz = Authorizer.from_manifests(docs, RELEASE_NS, deployment["spec"]["template"]["spec"]["serviceAccountName"])
    [config] = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
    allowed = [
        Attributes("update", "eventstore.k1s0.io", "eventstreams", "finalizers", "shop", "orders"),
        Attributes("patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "",
                   config["metadata"]["name"]),
        Attributes("create", "", "secrets", "", "any-namespace", ""),
    ]
    refused = [
        # What the chart no longer grants: never used by the operator.
        Attributes("get", "apiextensions.k8s.io", "customresourcedefinitions", "", "", "eventstreams.k1s0.io"),
        Attributes("get", "", "namespaces", "", "shop", "shop"),
        Attributes("watch", "", "namespaces", "", "", ""),
        Attributes("update", "eventstore.k1s0.io", "eventstreams", "", "shop", "orders"),
        Attributes("update", "eventstore.k1s0.io", "eventstreams", "status", "shop", "orders"),
        Attributes("patch", "", "secrets", "", "shop", "orders-eventstore-db"),
        Attributes("patch", "", "events", "", "shop", "x"),
        Attributes("create", "events.k8s.io", "events", "", "shop", ""),
        # resourceNames: another webhook configuration is out of reach.
        Attributes("patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "", "someone-else"),
        Attributes("list", "", "pods", "", "shop", ""),
    ]
    assert [a for a in allowed if not authz.allows(a)] == []
    assert [a for a in refused if authz.allows(a)] == []
