"""The sidecar-injection webhook: a Kopf mutating admission handler at ``/inject-sidecar``.

Only pods labelled ``eventstore.k1s0.io/stream`` reach it: the label filter below is what Kopf
turns into the webhook's ``objectSelector``, and the chart's MutatingWebhookConfiguration carries
the same selector (a test compares the two). An annotation filter could not do that: every pod
in the cluster would be sent to the webhook. Because no other pod is ever sent here, the
configuration's ``failurePolicy`` can be ``Fail``: a labelled pod whose sidecar cannot be
injected is refused (its controller retries) instead of starting without its event store, which
is what Dapr's default ``Ignore`` would do.

The EventStream is read from the API server at admission time (one GET per pod CREATE), not from
an in-memory index: every replica serving the webhook answers from the current state, whether or
not it is the one reconciling.

Settings come from the environment (the chart sets them):

* ``EVENTSTORE_WEBHOOK_PORT`` (9443), ``EVENTSTORE_WEBHOOK_ADDRESS`` (``0.0.0.0``);
* ``EVENTSTORE_WEBHOOK_INSECURE=true``: plain HTTP, for development and tests only;
* ``EVENTSTORE_WEBHOOK_TLS``: ``self-signed`` (the operator keeps a CA and serving certificate in
  the Secret ``EVENTSTORE_WEBHOOK_SECRET``, rotates them and patches the ``caBundle`` of
  ``EVENTSTORE_WEBHOOK_CONFIGURATION``), ``files`` (cert-manager or any mounted ``tls.crt``/
  ``tls.key`` in ``EVENTSTORE_WEBHOOK_CERT_DIR``; Kopf reloads them when they change), or
  ``ephemeral`` (the default outside the chart: a certificate generated in memory at start-up,
  nothing stored or patched);
* ``EVENTSTORE_SIDECAR_*``: the injected container's defaults (``injection.InjectionSettings``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from . import _health, certs
from ._login import kubernetes_client
from .injection import (
    GROUP,
    STREAM_LABEL,
    InjectionRefused,
    InjectionSettings,
    StreamTarget,
    inject,
    is_injected,
    stream_name,
)

logger = logging.getLogger("k1s0_operator.webhook")

HANDLER_ID = "inject-sidecar"
VERSION = "v1"
PLURAL = "eventstreams"

#: The EventStream GET's (connect, read) timeouts, and a deadline over the whole lookup (the client's
#: urllib3 retries a timed-out read, so the per-request timeouts alone could add up to 12 s): well
#: under the webhook's ``timeoutSeconds`` (10 by default), so a slow API server gets the pod a clear
#: 503 from us instead of the API server's own timeout.
LOOKUP_TIMEOUT_SECONDS = (2.0, 3.0)
LOOKUP_DEADLINE_SECONDS = 5.0

#: ``await lookup(namespace, name)``: the EventStream object, or None if it does not exist.
StreamLookup = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


class LookupFailed(Exception):
    """The API server could not be asked; the pod is refused (and its controller retries)."""


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    port: int = 9443
    address: str = "0.0.0.0"
    insecure: bool = False
    tls: str = "ephemeral"
    cert_dir: str = ""
    namespace: str = ""
    service: str = ""
    secret: str = ""
    configuration: str = ""
    #: How often the self-signed certificates are checked for renewal.
    rotation_check_seconds: float = 3600.0
    #: How often Kopf's server re-reads the certificate files (and restarts its listener on change).
    file_check_seconds: float = 30.0
    extra_names: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WebhookSettings:
        insecure = env.get("EVENTSTORE_WEBHOOK_INSECURE", "false").strip().lower()
        if insecure not in {"true", "false"}:
            raise ValueError(f"EVENTSTORE_WEBHOOK_INSECURE: must be true or false (got {insecure!r})")
        tls = env.get("EVENTSTORE_WEBHOOK_TLS", "ephemeral").strip().lower()
        if tls not in {"ephemeral", "self-signed", "files"}:
            raise ValueError(f"EVENTSTORE_WEBHOOK_TLS: must be ephemeral, self-signed or files (got {tls!r})")
        raw_port = env.get("EVENTSTORE_WEBHOOK_PORT", "9443")
        if not raw_port.isdigit() or not 1 <= int(raw_port) <= 65535:
            raise ValueError(f"EVENTSTORE_WEBHOOK_PORT: must be a port number (got {raw_port!r})")
        settings = cls(
            port=int(raw_port),
            address=env.get("EVENTSTORE_WEBHOOK_ADDRESS", "0.0.0.0"),
            insecure=insecure == "true",
            tls=tls,
            cert_dir=env.get("EVENTSTORE_WEBHOOK_CERT_DIR", ""),
            namespace=env.get("EVENTSTORE_NAMESPACE", ""),
            service=env.get("EVENTSTORE_WEBHOOK_SERVICE", ""),
            secret=env.get("EVENTSTORE_WEBHOOK_SECRET", ""),
            configuration=env.get("EVENTSTORE_WEBHOOK_CONFIGURATION", ""),
            rotation_check_seconds=float(env.get("EVENTSTORE_WEBHOOK_ROTATION_CHECK_SECONDS", "3600")),
        )
        if not settings.insecure and tls == "self-signed":
            missing = [
                k for k, v in (
                    ("EVENTSTORE_NAMESPACE", settings.namespace), ("EVENTSTORE_WEBHOOK_SERVICE", settings.service),
                    ("EVENTSTORE_WEBHOOK_SECRET", settings.secret),
                    ("EVENTSTORE_WEBHOOK_CONFIGURATION", settings.configuration),
                ) if not v
            ]
            if missing:
                raise ValueError(f"EVENTSTORE_WEBHOOK_TLS=self-signed needs {', '.join(missing)}")
        if not settings.insecure and tls == "files" and not settings.cert_dir:
            raise ValueError("EVENTSTORE_WEBHOOK_TLS=files needs EVENTSTORE_WEBHOOK_CERT_DIR (tls.crt, tls.key)")
        return settings

    @property
    def names(self) -> list[str]:
        if self.service and self.namespace:
            return [*certs.service_names(self.service, self.namespace), *self.extra_names]
        return ["localhost", "127.0.0.1", *self.extra_names]


# -- the admission handler ------------------------------------------------------------------------


def _refuse(message: str) -> kopf.AdmissionError:
    return kopf.AdmissionError(message, code=403)


async def admit(
    pod: Mapping[str, Any], namespace: str, lookup: StreamLookup, settings: InjectionSettings
) -> dict[str, Any] | None:
    """The pod as it should be created (None: leave it as it is), or ``kopf.AdmissionError``."""
    if is_injected(pod):
        return None
    try:
        name = stream_name(pod)
    except InjectionRefused as exc:
        raise _refuse(str(exc)) from None
    if not namespace:
        raise _refuse(f"the pod has no namespace; cannot find EventStream {name!r} for label {STREAM_LABEL}")
    try:
        found = await lookup(namespace, name)
    except LookupFailed as exc:
        raise kopf.AdmissionError(
            f'cannot read EventStream "{name}" in namespace "{namespace}": {exc}', code=503
        ) from None
    if found is None:
        raise _refuse(
            f'EventStream "{name}" does not exist in namespace "{namespace}" '
            f"(named by the pod's label {STREAM_LABEL}); create it first"
        )
    target = StreamTarget.from_eventstream(found)
    if not target.namespace:
        target = dataclasses.replace(target, namespace=namespace)
    try:
        return inject(pod, target, settings)
    except InjectionRefused as exc:
        raise _refuse(str(exc)) from None


@kopf.on.mutate(
    "", "v1", "pods",
    id=HANDLER_ID,
    operations=["CREATE"],
    labels={STREAM_LABEL: kopf.PRESENT},
    persistent=True,
    side_effects=False,
)
async def inject_sidecar(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, namespace: str | None, **kwargs: Any
) -> None:
    if kwargs.get("operation") != "CREATE":  # Kopf dispatches by handler id, not by the configured operations
        return
    lookup: StreamLookup | None = memo.get("stream_lookup")
    settings: InjectionSettings | None = memo.get("injection_settings")
    if lookup is None or settings is None:  # pragma: no cover - the startup handler sets both
        raise kopf.AdmissionError("the event-store webhook is not configured yet", code=503)
    start = time.monotonic()
    outcome = "unavailable"
    try:
        new = await admit(dict(body), namespace or "", lookup, settings)
        outcome = "unchanged" if new is None else "injected"
    except kopf.AdmissionError as exc:
        outcome = "refused" if exc.code == 403 else "unavailable"
        raise
    finally:
        _health.ADMISSIONS.labels(outcome).inc()
        _health.ADMISSION_SECONDS.observe(time.monotonic() - start)
    if new is None:
        return

    def replace(target: Any) -> None:
        target["metadata"] = new["metadata"]
        target["spec"] = new["spec"]

    patch.fns.append(replace)


# -- looking EventStreams up ----------------------------------------------------------------------


def kubernetes_lookup(api_client: Any | None = None) -> StreamLookup:
    """A lookup through the API server (GET the EventStream, 404 -> None), via the kubernetes client.

    Without ``api_client`` the credentials are loaded at the first lookup (in-cluster, else
    ``KUBECONFIG`` as it is then), so registering the webhook never needs a cluster.
    """
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    apis: list[Any] = []

    def get(namespace: str, name: str) -> Any:
        if not apis:
            apis.append(k8s.CustomObjectsApi(api_client or kubernetes_client()))
        return apis[0].get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=LOOKUP_TIMEOUT_SECONDS
        )

    async def lookup(namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            async with asyncio.timeout(LOOKUP_DEADLINE_SECONDS):
                obj = await asyncio.to_thread(get, namespace, name)
        except TimeoutError:
            raise LookupFailed(f"no answer from the API server within {LOOKUP_DEADLINE_SECONDS:g}s") from None
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise LookupFailed(f"HTTP {exc.status} {exc.reason}") from None
        except Exception as exc:  # connection refused, DNS, TLS, no credentials: all mean "cannot ask"
            raise LookupFailed(f"{type(exc).__name__}: {exc}") from None
        return obj if isinstance(obj, Mapping) else None

    return lookup


# -- TLS: the server Kopf runs, and the self-signed certificates --------------------------------------


class CertificateStore:
    """The self-signed bundle in a Secret, the files Kopf serves, and the caBundle it must match."""

    def __init__(self, settings: WebhookSettings, api_client: Any) -> None:
        from kubernetes import client as k8s

        self.settings = settings
        self.core = k8s.CoreV1Api(api_client)
        self.admission = k8s.AdmissionregistrationV1Api(api_client)
        self.files = certs.CertFiles(Path(settings.cert_dir or tempfile.mkdtemp(prefix="k1s0-webhook-")))

    async def sync(self, now: dt.datetime | None = None) -> certs.CertBundle:
        """Ensure a valid bundle is stored, written to the files, and trusted by the configuration."""
        bundle = await asyncio.to_thread(self._sync_secret, now)
        if self.files.write(bundle):
            logger.info("webhook certificate files written to %s", self.files.directory)
        await asyncio.to_thread(self._patch_ca_bundle, bundle.ca_bundle)
        return bundle

    def _sync_secret(self, now: dt.datetime | None) -> certs.CertBundle:
        import base64

        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        s = self.settings
        for _attempt in range(5):
            try:
                secret = self.core.read_namespaced_secret(s.secret, s.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                secret = None
            data = {k: base64.b64decode(v).decode() for k, v in ((secret.data if secret else None) or {}).items()}
            current = certs.CertBundle.from_secret_data(data)
            bundle, changed = certs.ensure_bundle(current, s.names, now=now)
            if not changed:
                return bundle
            body = k8s.V1Secret(
                metadata=k8s.V1ObjectMeta(
                    name=s.secret, namespace=s.namespace,
                    labels={"app.kubernetes.io/managed-by": "k1s0-eventstore-operator"},
                    resource_version=secret.metadata.resource_version if secret and secret.metadata else None,
                ),
                type="Opaque",
                string_data=bundle.as_secret_data(),
            )
            try:
                if secret is None:
                    self.core.create_namespaced_secret(s.namespace, body)
                else:
                    self.core.replace_namespaced_secret(s.secret, s.namespace, body)
            except ApiException as exc:
                if exc.status in (409, 422):  # another replica won the race: read theirs and use it
                    continue
                raise
            logger.info("webhook certificates %s in Secret %s/%s", "renewed" if current else "created",
                        s.namespace, s.secret)
            return bundle
        raise RuntimeError(f"could not settle the webhook certificates in Secret {s.namespace}/{s.secret}")

    def _patch_ca_bundle(self, ca_bundle: str) -> None:
        import base64

        name = self.settings.configuration
        config = self.admission.read_mutating_webhook_configuration(name)
        encoded = base64.b64encode(ca_bundle.encode()).decode()
        ops = [
            {"op": "replace" if hook.client_config.ca_bundle else "add",
             "path": f"/webhooks/{i}/clientConfig/caBundle", "value": encoded}
            for i, hook in enumerate(config.webhooks or [])
            if hook.client_config.ca_bundle != encoded
        ]
        if ops:
            self.admission.patch_mutating_webhook_configuration(name, ops)
            logger.info("caBundle of MutatingWebhookConfiguration %s updated", name)


def ephemeral_files(names: list[str]) -> certs.CertFiles:
    """A CA and a serving certificate generated now, in a private temporary folder."""
    bundle, _ = certs.ensure_bundle(None, names)
    files = certs.CertFiles(Path(tempfile.mkdtemp(prefix="k1s0-webhook-")))
    files.write(bundle)
    return files


class _Server(kopf.WebhookServer):
    """Kopf's server, plus the request's namespace on the object when the object lacks one.

    Kopf hands handlers the object only; the AdmissionReview carries the namespace separately
    (``request.namespace``). Current API servers also set it on the object, but the lookup of the
    EventStream must not depend on that.
    """

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async def with_namespace(request: Any, **kwargs: Any) -> Any:
            payload = request.get("request") if isinstance(request, dict) else None
            obj = payload.get("object") if isinstance(payload, dict) else None
            namespace = payload.get("namespace") if isinstance(payload, dict) else None
            if isinstance(obj, dict) and isinstance(namespace, str) and namespace:
                meta = obj.setdefault("metadata", {})
                if isinstance(meta, dict) and not meta.get("namespace"):
                    meta["namespace"] = namespace
            return await fn(request, **kwargs)

        async for client_config in super().__call__(with_namespace):
            yield client_config


def build_server(settings: WebhookSettings, files: certs.CertFiles | None) -> kopf.WebhookServer:
    """Kopf's aiohttp webhook server: plain HTTP when insecure, else TLS from ``files``."""
    if settings.insecure:
        return _Server(addr=settings.address, port=settings.port, insecure=True)
    if files is None:
        raise ValueError("TLS needs certificate files")
    return _Server(
        addr=settings.address,
        port=settings.port,
        certfile=str(files.certfile),
        pkeyfile=str(files.keyfile),
        cafile=str(files.cafile),
        file_check_interval=settings.file_check_seconds,
    )


async def _rotate_forever(store: CertificateStore, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await store.sync()
        except Exception:  # keep serving with the current files; the next round retries
            logger.exception("webhook certificate rotation failed; retrying in %.0fs", interval)


@kopf.on.startup(id="webhook-configure")
async def configure_webhook(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    env = os.environ
    hook = WebhookSettings.from_env(env)
    memo.injection_settings = InjectionSettings.from_env(
        {"EVENTSTORE_SIDECAR_IMAGE": default_image(), **env}
    )
    if memo.get("stream_lookup") is None:
        memo.stream_lookup = kubernetes_lookup()
    files: certs.CertFiles | None = None
    if not hook.insecure:
        if hook.tls == "files":
            files = certs.CertFiles(Path(hook.cert_dir), mounted=True)
        elif hook.tls == "self-signed":
            store = CertificateStore(hook, kubernetes_client())
            await store.sync()
            files = store.files
            memo.webhook_rotation = asyncio.create_task(_rotate_forever(store, hook.rotation_check_seconds))
        else:
            files = ephemeral_files(hook.names)
            memo.webhook_ephemeral_dir = str(files.directory)
    settings.admission.server = build_server(hook, files)
    settings.admission.managed = None  # the chart owns the MutatingWebhookConfiguration


@kopf.on.cleanup(id="webhook-cleanup")
async def stop_rotation(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("webhook_rotation")
    if isinstance(task, asyncio.Task):
        task.cancel()
    ephemeral = memo.get("webhook_ephemeral_dir")
    if isinstance(ephemeral, str):
        shutil.rmtree(ephemeral, ignore_errors=True)


def default_image() -> str:
    from k1s0_event_store import __version__

    return f"k1s0-eventstore:{__version__}"
