"""The webhook inside the whole operator process, and the self-signed certificates against an API
server (the kmock-based emulator in tests/support/kube.py, served over HTTP).

* ``operate()`` (what ``k1s0-eventstore operator`` runs) with ``EVENTSTORE_WEBHOOK_INSECURE=true``:
  Kopf discovers pods, the startup handler configures the server from the environment, and the
  EventStream is looked up with a GET through the kubernetes client.
* ``CertificateStore.sync``: the Secret is created, the files written, and the caBundle of the
  MutatingWebhookConfiguration rendered by the chart patched; renewals and races converge.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import itertools
import json
import os
import ssl
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import kubernetes_validate
import pytest
from kubernetes import config as k8s_config

from k1s0_event_store.sidecar_config import load_config
from k1s0_operator import certs, webhook
from k1s0_operator._runtime import Runtime
from k1s0_operator.main import Kube, operate
from tests.deploy.conftest import NAMESPACE, app_pod, eventstream
from tests.deploy.test_chart import render
from tests.deploy.test_webhook import review
from tests.deploy.tools import KubeTools, ensure_kube_tools
from tests.support.kube import ApiServer
from tests.support.postgres import free_port

EVS = ("eventstore.k1s0.io", "v1", "eventstreams")
SECRETS = ("", "v1", "secrets")
MWC = ("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations")
_dirs = itertools.count()
CRD = Path(__file__).resolve().parents[2] / "crds" / "eventstreams.eventstore.k1s0.io.yaml"


async def ready_eventstream(api: ApiServer, name: str) -> None:
    body = eventstream(name)
    status = body.pop("status")
    del body["metadata"]["uid"], body["metadata"]["generation"]
    await api.create_namespace(NAMESPACE)
    await api.put_object(EVS, NAMESPACE, body)
    api._update(EVS, NAMESPACE, name, "application/merge-patch+json", {"status": status}, None, True)


@contextlib.asynccontextmanager
async def running_operator() -> AsyncIterator[None]:
    """``operate()`` in its own thread (as the operator tests run it), watching a namespace
    without EventStreams: nothing is reconciled, only admitted. The environment configures it."""
    config = load_config(None, env={"EVENTSTORE_DATABASE_URL": "postgresql://unused@127.0.0.1:1/none",
                                    "EVENTSTORE_AUTH_MODE": "none"})
    client = k8s_config.new_client_from_config(config_file=os.environ["KUBECONFIG"])  # type: ignore[no-untyped-call]
    runtime = Runtime(config=config, kube=Kube(client), backoff_base=0.5)
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(operate(runtime, namespaces=["quiet"], stop_flag=stop, ready_flag=ready))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=main, name="kopf-webhook", daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(ready.wait, 30) and not errors, errors
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
    assert not thread.is_alive() and not errors, errors


async def first_answer(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    """POST until the listener is up (it opens once Kopf has scanned the API's resources)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            async with session.post(url, json=body, **kw) as resp:
                assert resp.status == 200, await resp.text()
                answer: dict[str, Any] = (await resp.json())["response"]
                return answer
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc, aiohttp.ClientConnectorCertificateError):
                raise
            assert asyncio.get_running_loop().time() < deadline, "the webhook never listened"
            await asyncio.sleep(0.1)


async def test_the_operator_process_serves_the_webhook(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("EVENTSTORE_WEBHOOK_INSECURE", "true")
    monkeypatch.setenv("EVENTSTORE_WEBHOOK_ADDRESS", "127.0.0.1")
    monkeypatch.setenv("EVENTSTORE_WEBHOOK_PORT", str(port))
    monkeypatch.setenv("EVENTSTORE_SIDECAR_IMAGE", "registry.example.com/k1s0-eventstore:it")
    await ready_eventstream(api, "orders")
    await api.create_namespace("quiet")
    url = f"http://127.0.0.1:{port}/{webhook.HANDLER_ID}"
    async with running_operator(), aiohttp.ClientSession() as session:
        answer = await first_answer(session, url, review(app_pod("orders")))
        assert answer["allowed"] is True, answer
        pod = jsonpatch.apply_patch(app_pod("orders"), json.loads(base64.b64decode(answer["patch"])))
        kubernetes_validate.validate(pod, "1.35.0", strict=True)
        sidecar = pod["spec"]["initContainers"][0]
        assert sidecar["image"] == "registry.example.com/k1s0-eventstore:it"
        assert sidecar["envFrom"] == [{"secretRef": {"name": "orders-eventstore-db"}}]
        async with session.post(url, json=review(app_pod("ghost"))) as resp:
            refused = (await resp.json())["response"]
        assert refused["allowed"] is False and 'EventStream "ghost"' in refused["status"]["message"]


async def test_the_operator_process_as_the_chart_runs_it(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch, tools: KubeTools, tmp_path: Path
) -> None:
    """Self-signed TLS with the chart's environment: the certificate the operator serves is trusted
    through the caBundle it patched into the chart's MutatingWebhookConfiguration."""
    [deployment] = [d for d in render(tools) if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    chart_env = {e["name"]: e["value"] for e in container["env"] if "value" in e and e["name"].startswith(
        ("EVENTSTORE_WEBHOOK_", "EVENTSTORE_SIDECAR_"))}
    assert chart_env["EVENTSTORE_WEBHOOK_TLS"] == "self-signed"
    port = free_port()
    for key, value in {**chart_env, "EVENTSTORE_NAMESPACE": "k1s0-system", "EVENTSTORE_WEBHOOK_PORT": str(port),
                       "EVENTSTORE_WEBHOOK_ADDRESS": "127.0.0.1",
                       "EVENTSTORE_WEBHOOK_CERT_DIR": str(tmp_path / "tls")}.items():
        monkeypatch.setenv(key, value)
    store = await store_for(api, tools, tmp_path)  # puts the chart's configuration into the API server
    await ready_eventstream(api, "orders")
    await api.create_namespace("quiet")
    async with running_operator():
        deadline = asyncio.get_running_loop().time() + 30
        while not (bundle := ca_bundles(api, store.settings.configuration)[0]):
            assert asyncio.get_running_loop().time() < deadline, "the caBundle was never patched"
            await asyncio.sleep(0.1)
        context = ssl.create_default_context(cadata=bundle)
        context.check_hostname = False  # the certificate names the Service, the test calls 127.0.0.1
        url = f"https://127.0.0.1:{port}/{webhook.HANDLER_ID}"
        async with aiohttp.ClientSession() as session:
            answer = await first_answer(session, url, review(app_pod("orders")), ssl=context)
        assert answer["allowed"] is True
        served = await asyncio.to_thread(ssl.get_server_certificate, ("127.0.0.1", port))
        assert served == stored(api).cert
        assert "rel-k1s0-eventstore-webhook.k1s0-system.svc" in certs.cert_names(certs.load_cert(served))


@pytest.fixture(scope="module")
def tools() -> KubeTools:
    return ensure_kube_tools()


async def store_for(api: ApiServer, tools: KubeTools, tmp_path: Path) -> webhook.CertificateStore:
    """The chart's MutatingWebhookConfiguration in the API server, and a store configured like the chart."""
    [config] = [d for d in render(tools) if d["kind"] == "MutatingWebhookConfiguration"]
    if api.obj(MWC, "", config["metadata"]["name"]) is None:
        await api.put_object(MWC, "", config)
    await api.create_namespace("k1s0-system")
    settings = webhook.WebhookSettings(
        namespace="k1s0-system", service="rel-k1s0-eventstore-webhook", secret="rel-k1s0-eventstore-webhook-tls",
        configuration=config["metadata"]["name"], tls="self-signed",
        cert_dir=str(tmp_path / f"tls-{next(_dirs)}"),
    )
    client = k8s_config.new_client_from_config(config_file=os.environ["KUBECONFIG"])  # type: ignore[no-untyped-call]
    return webhook.CertificateStore(settings, client)


def ca_bundles(api: ApiServer, name: str) -> list[str]:
    config = api.obj(MWC, "", name)
    assert config is not None
    return [base64.b64decode(h["clientConfig"].get("caBundle", "")).decode() for h in config["webhooks"]]


def rv(api: ApiServer, key: tuple[str, str, str], namespace: str, name: str) -> str:
    obj = api.obj(key, namespace, name)
    assert obj is not None
    return str(obj["metadata"]["resourceVersion"])


def stored(api: ApiServer) -> certs.CertBundle:
    secret = api.obj(SECRETS, "k1s0-system", "rel-k1s0-eventstore-webhook-tls")
    assert secret is not None
    bundle = certs.CertBundle.from_secret_data({k: base64.b64decode(v).decode() for k, v in secret["data"].items()})
    assert bundle is not None
    return bundle


async def test_self_signed_certificates_are_stored_served_and_trusted(
    api: ApiServer, tools: KubeTools, tmp_path: Path
) -> None:
    store = await store_for(api, tools, tmp_path)
    name = store.settings.configuration
    bundle = await store.sync()
    assert stored(api) == bundle
    assert store.files.read() == (bundle.cert, bundle.key, bundle.ca_bundle)
    assert ca_bundles(api, name) == [bundle.ca_bundle]
    assert "rel-k1s0-eventstore-webhook.k1s0-system.svc" in certs.cert_names(certs.load_cert(bundle.cert))
    # Nothing to do the second time: neither the Secret nor the configuration changes.
    versions = (rv(api, SECRETS, "k1s0-system", store.settings.secret), rv(api, MWC, "", name))
    assert await store.sync() == bundle
    assert (rv(api, SECRETS, "k1s0-system", store.settings.secret), rv(api, MWC, "", name)) == versions
    # Two months on: a new serving certificate from the same CA; the caBundle stays as it is.
    renewed = await store.sync(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=61))
    assert renewed.cert != bundle.cert and renewed.ca_cert == bundle.ca_cert
    assert stored(api) == renewed and ca_bundles(api, name) == [bundle.ca_bundle]
    assert store.files.read() == (renewed.cert, renewed.key, renewed.ca_bundle)
    # Seven years on: a new CA, trusted next to the old one until that expires.
    rotated = await store.sync(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=7 * 365))
    assert rotated.ca_cert != bundle.ca_cert
    assert ca_bundles(api, name) == [rotated.ca_cert + bundle.ca_cert]
    # A helm upgrade that blanked the caBundle is repaired by the next check.
    api._update(MWC, "", name, "application/json-patch+json",
                [{"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"}], None, False)
    assert ca_bundles(api, name) == [""]
    await store.sync(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=7 * 365))
    assert ca_bundles(api, name) == [rotated.ca_bundle]


async def test_replicas_racing_for_the_first_certificate_agree(
    api: ApiServer, tools: KubeTools, tmp_path: Path
) -> None:
    stores = [await store_for(api, tools, tmp_path) for _ in range(3)]
    bundles = await asyncio.gather(*(s.sync() for s in stores))
    winner = stored(api)
    assert all(b == winner for b in bundles), "every replica serves the stored certificate"
    assert ca_bundles(api, stores[0].settings.configuration) == [winner.ca_bundle]
