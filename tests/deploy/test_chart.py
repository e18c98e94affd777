"""The Helm chart, linted and rendered by the real helm (v4) binary; every manifest validated
against the Kubernetes 1.35 schemas, and the rendered wiring checked against the code it feeds.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from k1s0_operator import webhook
from k1s0_operator.injection import SIDECAR_NAME, InjectionSettings, StreamTarget, inject
from tests.deploy.conftest import app_pod, eventstream
from tests.deploy.tools import ROOT, KubeTools, ensure_kube_tools

CHART = ROOT / "charts" / "k1s0-eventstore"
K8S_VERSION = "1.35.0"
CERT_MANAGER = "cert-manager.io/v1"
PROMETHEUS_OPERATOR = "monitoring.coreos.com/v1"

#: Non-trivial values: a registry and digest, two watched namespaces, Kafka, cert-manager with a
#: ClusterIssuer, a plain-container sidecar bound to all interfaces, Vault, Ignore, scheduling.
RICH_VALUES: dict[str, Any] = {
    "image": {"registry": "harbor.internal.example.com", "repository": "k1s0-system/event-store",
              "digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": [{"name": "harbor"}],
    "fullnameOverride": "evstore",
    "operator": {"watchNamespaces": ["shop", "billing"], "logLevel": "DEBUG",
                 "nodeSelector": {"kubernetes.io/os": "linux"},
                 "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform",
                                  "effect": "NoSchedule"}],
                 "extraEnv": [{"name": "EXTRA", "value": "1"}], "podAnnotations": {"team": "platform"}},
    "kafka": {"enabled": True, "brokers": ["kafka-0.messaging.svc.cluster.local:9092", "kafka-1.messaging:9092"],
              "securityProtocol": "SASL_SSL"},
    "auth": {"jwksUrl": "https://auth.example.com/jwks.json", "issuer": "https://auth.example.com",
             "audience": "k1s0", "clientId": "event-store"},
    "sidecar": {"image": {"tag": "0.1.0-debug"}, "native": False, "bindAddress": "0.0.0.0",
                "ports": {"rest": 18080, "grpc": 19090},
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "1", "memory": "512Mi"}}},
    "webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 5,
                # Helm merges maps with the defaults: null removes the default matchExpressions.
                "namespaceSelector": {"matchLabels": {"eventstore.k1s0.io/injection": "enabled"},
                                      "matchExpressions": None},
                "certManager": {"enabled": True, "issuerRef": {"name": "platform-ca", "kind": "ClusterIssuer",
                                                                "group": "cert-manager.io"}}},
    "vault": {"enabled": True, "role": "system"},
}


@pytest.fixture(scope="module")
def tools() -> KubeTools:
    return ensure_kube_tools()


def helm(tools: KubeTools, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(tools.helm), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT / ".tools"),
                               "HELM_CACHE_HOME": str(ROOT / ".tools" / "helm-cache"),
                               "HELM_CONFIG_HOME": str(ROOT / ".tools" / "helm-config"),
                               "HELM_DATA_HOME": str(ROOT / ".tools" / "helm-data")})
    if check and done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stderr}")
    return done


def render(
    tools: KubeTools, values: dict[str, Any] | None = None, *extra: str, tmp: Path | None = None
) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "k1s0-system", "--include-crds", *extra]
    if values is not None:
        assert tmp is not None
        path = tmp / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["--values", str(path)]
    out = helm(tools, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0]


def validate_all(docs: list[dict[str, Any]], version: str = K8S_VERSION) -> Iterator[str]:
    for doc in docs:
        if doc["apiVersion"] in (CERT_MANAGER, PROMETHEUS_OPERATOR):  # not Kubernetes APIs: no schemas here
            yield f"skipped {doc['kind']}"
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        yield f"{doc['kind']}/{doc['metadata']['name']}"


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_helm_is_v4(tools: KubeTools) -> None:
    assert helm(tools, "version", "--short").stdout.startswith("v4.")


def test_lint_is_clean(tools: KubeTools) -> None:
    done = helm(tools, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


def test_lint_is_clean_with_rich_values(tools: KubeTools, tmp_path: Path) -> None:
    path = tmp_path / "rich.yaml"
    path.write_text(yaml.safe_dump(RICH_VALUES))
    done = helm(tools, "lint", "--strict", str(CHART), "--values", str(path))
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


def test_default_render_is_valid_and_wired(tools: KubeTools) -> None:
    docs = render(tools)
    validated = list(validate_all(docs))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted([
        "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRoleBinding",
        "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Service", "Deployment",
        "MutatingWebhookConfiguration", "PodDisruptionBudget",
        # HA by default: Kopf peering (its two CRDs, the peering ClusterRole and binding).
        "CustomResourceDefinition", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
        # The pre-delete hook (uninstall check) and its own account.
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job",
    ]), kinds
    assert len(validated) == len(docs)

    deployment = one(docs, "Deployment")
    [service] = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-webhook")]
    config = one(docs, "MutatingWebhookConfiguration")
    pod_spec = deployment["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    env = env_of(deployment)
    # The Service reaches the operator pods on the webhook port.
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
    assert {"name": "webhook", "containerPort": int(env["EVENTSTORE_WEBHOOK_PORT"]), "protocol": "TCP"} \
        in container["ports"]
    # The webhook configuration calls that Service at the handler's path, only for opted-in pods.
    [hook] = config["webhooks"]
    assert hook["clientConfig"]["service"] == {"name": service["metadata"]["name"], "namespace": "k1s0-system",
                                               "path": f"/{webhook.HANDLER_ID}", "port": 443}
    assert "caBundle" not in hook["clientConfig"], "the operator patches it in"
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                              "operations": ["CREATE"], "scope": "Namespaced"}]
    assert hook["objectSelector"] == kopf_object_selector()
    assert {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "kube-node-lease"]} \
        in hook["namespaceSelector"]["matchExpressions"]
    # The operator is told the names the chart gave things, and may touch only those.
    assert env["EVENTSTORE_WEBHOOK_SERVICE"] == service["metadata"]["name"]
    assert env["EVENTSTORE_WEBHOOK_CONFIGURATION"] == config["metadata"]["name"]
    cluster_rules = [r for role in by_kind(docs, "ClusterRole") for r in role["rules"]]
    [webhook_rule] = [r for r in cluster_rules if "mutatingwebhookconfigurations" in r["resources"]]
    assert webhook_rule["resourceNames"] == [config["metadata"]["name"]]
    assert set(webhook_rule["verbs"]) == {"get", "patch"}
    # Where OwnerReferencesPermissionEnforcement runs, blockOwnerDeletion needs this.
    assert {"apiGroups": ["eventstore.k1s0.io"], "resources": ["eventstreams/finalizers"], "verbs": ["update"]} \
        in cluster_rules
    role = one(docs, "Role")
    assert env["EVENTSTORE_WEBHOOK_SECRET"] in [n for r in role["rules"] for n in r.get("resourceNames", [])]
    assert env["EVENTSTORE_WEBHOOK_TLS"] == "self-signed"
    # No wildcard anywhere in RBAC.
    for r in cluster_rules + role["rules"]:
        assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"]
    # Highly available by default (the webhook fails closed): two replicas with peering, rolled
    # one at a time, spread over nodes, and a drain evicts one at a time.
    assert deployment["spec"]["replicas"] == 2 and env["EVENTSTORE_OPERATOR_PEERING_PRIORITY"] == "auto"
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    anti = pod_spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 1, "selector": deployment["spec"]["selector"]}
    # Liveness from Kopf's endpoint, readiness from the webhook listener (via /readyz), metrics.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert int(env["EVENTSTORE_OPERATOR_LIVENESS_PORT"]) == ports["liveness"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert int(env["EVENTSTORE_OPERATOR_METRICS_PORT"]) == ports["metrics"]
    [metrics] = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert metrics["spec"]["ports"][0]["targetPort"] == "metrics"
    # The operator runs non-root on a read-only root filesystem.
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["args"] == ["operator", "--all-namespaces"]
    assert env["EVENTSTORE_DATABASE_URL"] == {"secretKeyRef": {"name": "k1s0-eventstore-postgres-admin", "key": "url"}}
    assert container["image"] == "k1s0-eventstore:0.1.0"
    # The sidecar image is the slim one (no operator dependencies).
    assert env["EVENTSTORE_SIDECAR_IMAGE"] == "k1s0-eventstore-sidecar:0.1.0"


@pytest.mark.parametrize(("version", "extra"), [("1.25.0", ("--set", "sidecar.native=false")), ("1.29.0", ())])
def test_render_is_valid_on_older_kubernetes(tools: KubeTools, version: str, extra: tuple[str, ...]) -> None:
    """Everything the chart renders (HA defaults, PDB, hook, CRD with CEL rules) on 1.25 and 1.29."""
    docs = render(tools, None, "--kube-version", version, *extra)
    assert {"PodDisruptionBudget", "Job", "CustomResourceDefinition"} <= {d["kind"] for d in docs}
    assert all(not v.startswith("skipped") for v in validate_all(docs, version))


def test_service_monitor_and_standalone_options(tools: KubeTools, tmp_path: Path) -> None:
    docs = render(tools, {"operator": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "kp"}}},
                                       "podAntiAffinity": "hard"}}, tmp=tmp_path)
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kp"
    [metrics] = [s for s in by_kind(docs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    affinity = one(docs, "Deployment")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in affinity
    # Standalone (one replica, no peering): Recreate and no PodDisruptionBudget (it would block drains).
    docs = render(tools, {"operator": {"replicas": 1, "peering": {"enabled": False}}}, tmp=tmp_path)
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert by_kind(docs, "PodDisruptionBudget") == []


def kopf_object_selector() -> dict[str, Any]:
    from kopf._core.engines.admission import build_webhooks
    from kopf._core.intents import registries

    from tests.deploy.kopf_webhook import PODS

    handlers = [h for h in registries.get_default_registry()._webhooks.get_all_handlers()
                if h.id == webhook.HANDLER_ID]
    [hook] = build_webhooks(handlers, resources=[PODS], name_suffix="x", client_config={"url": "https://x"})
    selector: dict[str, Any] = hook["objectSelector"]
    return selector


def test_rendered_settings_drive_the_injection(tools: KubeTools, tmp_path: Path) -> None:
    """The env the chart gives the operator parses into the settings the values asked for, and the
    pod those settings produce is a valid Pod."""
    for values, expected in (
        (None, InjectionSettings(image="k1s0-eventstore-sidecar:0.1.0")),
        (RICH_VALUES, InjectionSettings(
            image="harbor.internal.example.com/k1s0-system/event-store-sidecar:0.1.0-debug", native_sidecar=False,
            bind_address="0.0.0.0", rest_port=18080, grpc_port=19090,
            resources={"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})),
    ):
        env = {k: v for k, v in env_of(one(render(tools, values, tmp=tmp_path), "Deployment")).items()
               if isinstance(v, str)}
        settings = InjectionSettings.from_env(env)
        assert settings == expected
        hook = webhook.WebhookSettings.from_env({**env, "EVENTSTORE_NAMESPACE": "k1s0-system"})
        assert hook.port == 9443 and not hook.insecure
        assert hook.names[0] == f"{env['EVENTSTORE_WEBHOOK_SERVICE']}.k1s0-system.svc"
        pod = inject(app_pod(), StreamTarget.from_eventstream(eventstream()), settings)
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        containers = pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
        assert [c["image"] for c in containers if c["name"] == SIDECAR_NAME] == [settings.image]


def test_rich_values_render_valid_and_as_asked(tools: KubeTools, tmp_path: Path) -> None:
    docs = render(tools, RICH_VALUES, tmp=tmp_path)
    assert sum(1 for v in validate_all(docs) if v.startswith("skipped")) == 1  # the leaf Certificate
    deployment = one(docs, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    [container] = pod_spec["containers"]
    env = env_of(deployment)
    assert container["image"] == "harbor.internal.example.com/k1s0-system/event-store@sha256:" + "ab" * 32
    assert container["args"] == ["operator", "--namespace=shop", "--namespace=billing",
                                 "--config=/vault/secrets/operator.yaml"]
    assert pod_spec["imagePullSecrets"] == [{"name": "harbor"}]
    # Only the watched namespaces get the namespaced permissions.
    bindings = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"].endswith("-streams")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["billing", "shop"]
    assert [b["metadata"]["name"] for b in by_kind(docs, "ClusterRoleBinding")] == [
        "evstore-k1s0-system-cluster", "evstore-k1s0-system-uninstall-check"]
    assert by_kind(docs, "Role") == [], "cert-manager owns the TLS Secret"
    # cert-manager: a Certificate from the given ClusterIssuer, mounted, and its CA injected.
    cert = one(docs, "Certificate")
    assert cert["spec"]["issuerRef"]["kind"] == "ClusterIssuer" and by_kind(docs, "Issuer") == []
    assert "evstore-webhook.k1s0-system.svc" in cert["spec"]["dnsNames"]
    config = one(docs, "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "k1s0-system/evstore-webhook"
    assert {"name": "webhook-tls", "secret": {"secretName": cert["spec"]["secretName"]}} in pod_spec["volumes"]
    assert env["EVENTSTORE_WEBHOOK_TLS"] == "files" and "EVENTSTORE_WEBHOOK_SECRET" not in env
    [hook] = config["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 5
    assert hook["namespaceSelector"] == {
        "matchLabels": {"eventstore.k1s0.io/injection": "enabled"},
        # Only the watched namespaces' pods: elsewhere no EventStream would ever become Ready.
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop", "billing"]}],
    }
    # Kafka, auth, Vault.
    assert env["EVENTSTORE_KAFKA_BROKERS"] == "kafka-0.messaging.svc.cluster.local:9092,kafka-1.messaging:9092"
    assert env["EVENTSTORE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["EVENTSTORE_AUTH_JWKS_URL"] == "https://auth.example.com/jwks.json"
    assert "EVENTSTORE_DATABASE_URL" not in env, "with Vault the DSN comes from the agent's file"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["vault.hashicorp.com/agent-inject"] == "true"
    assert annotations["vault.hashicorp.com/role"] == "system"
    assert 'secret "secret/data/k1s0/system/event-store/database"' in \
        annotations["vault.hashicorp.com/agent-inject-template-operator.yaml"]
    assert annotations["team"] == "platform" and env["EXTRA"] == "1"
    assert pod_spec["tolerations"][0]["key"] == "dedicated"


def test_cert_manager_without_issuer_bootstraps_a_ca(tools: KubeTools, tmp_path: Path) -> None:
    """SelfSigned -> a CA Certificate -> a CA Issuer -> the serving certificate: a renewal of the
    serving certificate keeps the CA the API server trusts (cert-manager injects the CA's)."""
    docs = render(tools, {"webhook": {"certManager": {"enabled": True}}}, tmp=tmp_path)
    issuers = {i["metadata"]["name"]: i["spec"] for i in by_kind(docs, "Issuer")}
    certificates = {c["metadata"]["name"]: c["spec"] for c in by_kind(docs, "Certificate")}
    [self_signed] = [n for n, spec in issuers.items() if spec == {"selfSigned": {}}]
    [ca_issuer] = [n for n, spec in issuers.items() if "ca" in spec]
    [ca_cert] = [n for n, spec in certificates.items() if spec.get("isCA")]
    [leaf] = [n for n, spec in certificates.items() if not spec.get("isCA")]
    assert certificates[ca_cert]["issuerRef"]["name"] == self_signed
    assert issuers[ca_issuer]["ca"]["secretName"] == certificates[ca_cert]["secretName"]
    assert certificates[leaf]["issuerRef"]["name"] == ca_issuer
    assert certificates[leaf]["privateKey"]["rotationPolicy"] == "Always"
    assert "server auth" in certificates[leaf]["usages"]
    # The CA lives much longer than the leaf it signs; the webhook trusts the CA, injected by cert-manager.
    assert certificates[ca_cert]["duration"] == "87600h"
    config = one(docs, "MutatingWebhookConfiguration")
    namespace = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].split("/")[0]
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{namespace}/{leaf}"
    assert sum(1 for v in validate_all(docs) if v.startswith("skipped")) == 4


def test_crd_is_the_repository_crd_templated_to_be_upgraded(tools: KubeTools, tmp_path: Path) -> None:
    link = CHART / "files" / "eventstreams.eventstore.k1s0.io.yaml"
    assert link.is_symlink(), "one source of truth: the chart links to crds/, it does not copy"
    assert not (CHART / "crds").exists(), "crds/ is installed once and never upgraded by Helm"
    source = yaml.safe_load((ROOT / "crds" / "eventstreams.eventstore.k1s0.io.yaml").read_text())
    [crd] = [d for d in render(tools) if d["kind"] == "CustomResourceDefinition"
             and d["metadata"]["name"] == source["metadata"]["name"]]
    # A template (so `helm upgrade` updates it), kept by `helm uninstall` (it would take every
    # EventStream with it), otherwise the repository's file.
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert crd["spec"] == source["spec"]
    for version in ("1.25.0", "1.29.0", K8S_VERSION):
        kubernetes_validate.validate(crd, version, strict=True)
    # Managed elsewhere: not rendered.
    docs = render(tools, {"crds": {"install": False}}, tmp=tmp_path)
    assert not [d for d in docs if d["metadata"]["name"] == source["metadata"]["name"]]


def test_package_carries_the_crd_file(tools: KubeTools, tmp_path: Path) -> None:
    import tarfile

    helm(tools, "package", str(CHART), "--destination", str(tmp_path))
    [archive] = tmp_path.glob("k1s0-eventstore-*.tgz")
    with tarfile.open(archive) as tar:
        member = tar.getmember("k1s0-eventstore/files/eventstreams.eventstore.k1s0.io.yaml")
        assert member.isfile()
        data = tar.extractfile(member)
        assert data is not None
        assert data.read() == (ROOT / "crds" / "eventstreams.eventstore.k1s0.io.yaml").read_bytes()


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"operator": {"replicas": 2, "peering": {"enabled": False}}}, "/operator/replicas"),
        ({"webhook": {"failurePolicy": "Maybe"}}, "/webhook/failurePolicy"),
        ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
        ({"kafka": {"enabled": True}}, "/kafka/brokers"),
        ({"kafka": {"enabled": True, "brokers": ["no-port"]}}, "/kafka/brokers/0"),
        ({"auth": {"mode": "jwt", "jwksUrl": ""}}, "/auth/jwksUrl"),
        ({"auth": {"mode": "oauth"}}, "/auth/mode"),
        ({"sidecar": {"bindAddress": "10.0.0.1"}}, "/sidecar/bindAddress"),
        ({"sidecar": {"ports": {"rest": 70000, "grpc": 9090}}}, "/sidecar/ports/rest"),
        ({"sidecar": {"resources": {"limits": {"memory": "lots"}}}}, "/sidecar/resources/limits/memory"),
        ({"sidecar": {"native": "yes"}}, "/sidecar/native"),
        ({"image": {"digest": "sha256:short"}}, "/image/digest"),
        ({"database": {"adminSecret": {"name": ""}}}, "/database/adminSecret/name"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "/operator/watchNamespaces/0"),
        ({"replicaCount": 2}, "replicaCount"),
    ],
)
def test_schema_refuses_bad_values(tools: KubeTools, tmp_path: Path, values: dict[str, Any], complaint: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(values))
    done = helm(tools, "template", "rel", str(CHART), "--values", str(path), check=False)
    assert done.returncode != 0, f"accepted {values}"
    assert "schema" in done.stderr and complaint in done.stderr, done.stderr


def test_template_checks_refuse_what_the_schema_cannot(tools: KubeTools) -> None:
    same = helm(tools, "template", "rel", str(CHART), "--set", "sidecar.ports.rest=9090", check=False)
    assert same.returncode != 0 and "must differ" in same.stderr
    old = helm(tools, "template", "rel", str(CHART), "--kube-version", "1.28.0", check=False)
    assert old.returncode != 0 and "sidecar.native needs Kubernetes >= 1.29" in old.stderr
    helm(tools, "template", "rel", str(CHART), "--kube-version", "1.28.0", "--set", "sidecar.native=false")


def test_notes_give_next_steps(tools: KubeTools, tmp_path: Path) -> None:
    done = helm(tools, "install", "rel", str(CHART), "--dry-run=client", "--namespace", "k1s0-system",
                "--set", "auth.mode=none")
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "create secret generic k1s0-eventstore-postgres-admin" in notes
    assert "eventstore.k1s0.io/stream: orders" in notes
    assert "auth.mode is none" in notes and "Kafka is disabled" in notes


def test_readme_documents_every_value_and_seed_000s() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    passthrough = {"podSecurityContext", "securityContext", "imagePullSecrets", "nameOverride", "fullnameOverride"}
    missing = []
    for top, value in values.items():
        if top in passthrough or not isinstance(value, dict):
            if f"`{top}" not in readme:
                missing.append(top)
            continue
        missing += [f"{top}.{k}" for k in value if f"{top}.{k}" not in readme]
    assert not missing, f"values without documentation in the chart README: {missing}"
    for seed_key in ("replicaCount", "container.port", "container.grpcPort", "service.type", "autoscaling",
                     "kafka.enabled", "kafka.brokers", "vault.enabled", "vault.role", "image.registry"):
        assert seed_key in readme, seed_key


def test_kafka_tls_and_sasl_settings_reach_the_operator(tools: KubeTools, tmp_path: Path) -> None:
    """kafka.* security values: protocol, mechanism and hostname checking as variables; the operator's
    credentials Secret mounted (only the named keys) with variables naming the files; or, with Vault,
    the SASL user and password rendered into the agent's config file. Every variable is a loader key."""
    from dataclasses import fields

    from k1s0_event_store.sidecar_config import KafkaSection

    kafka = {"enabled": True, "brokers": ["kafka-0:9093"], "securityProtocol": "SASL_SSL",
             "saslMechanism": "SCRAM-SHA-512", "sslCheckHostname": True,
             "credentials": {"secretName": "kafka-admin", "usernameKey": "user", "passwordKey": "password",
                             "caKey": "ca.crt"}}
    docs = render(tools, {"kafka": kafka}, tmp=tmp_path)
    list(validate_all(docs))
    deployment = one(docs, "Deployment")
    env = env_of(deployment)
    assert env["EVENTSTORE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert env["EVENTSTORE_KAFKA_SSL_CHECK_HOSTNAME"] == "true"
    assert env["EVENTSTORE_KAFKA_SASL_USERNAME"] == {"secretKeyRef": {"name": "kafka-admin", "key": "user"}}
    assert env["EVENTSTORE_KAFKA_SASL_PASSWORD_FILE"] == "/etc/k1s0-eventstore/kafka/password"
    assert env["EVENTSTORE_KAFKA_SSL_CA_FILE"] == "/etc/k1s0-eventstore/kafka/ca.crt"
    assert "EVENTSTORE_KAFKA_SSL_CERT_FILE" not in env and "EVENTSTORE_KAFKA_SASL_PASSWORD" not in env
    keys = {f.name for f in fields(KafkaSection)}
    assert {n.removeprefix("EVENTSTORE_KAFKA_").lower() for n in env if n.startswith("EVENTSTORE_KAFKA_")} <= keys
    pod_spec = deployment["spec"]["template"]["spec"]
    assert {"name": "kafka-credentials", "secret": {"secretName": "kafka-admin", "items": [
        {"key": "password", "path": "password"}, {"key": "ca.crt", "path": "ca.crt"}]}} in pod_spec["volumes"]
    [container] = pod_spec["containers"]
    assert {"name": "kafka-credentials", "mountPath": "/etc/k1s0-eventstore/kafka", "readOnly": True} in (
        container["volumeMounts"]
    )

    # Vault: the design's Kafka SASL path, rendered into the same file as the admin DSN.
    kafka["credentials"] = {"secretName": ""}
    docs = render(tools, {"kafka": kafka, "vault": {"enabled": True}}, tmp=tmp_path)
    deployment = one(docs, "Deployment")
    env = env_of(deployment)
    assert not {"EVENTSTORE_KAFKA_SASL_USERNAME", "EVENTSTORE_KAFKA_SASL_PASSWORD_FILE"} & set(env)
    template = deployment["spec"]["template"]["metadata"]["annotations"][
        "vault.hashicorp.com/agent-inject-template-operator.yaml"]
    assert 'secret "secret/data/k1s0/system/kafka/sasl"' in template
    # What the agent writes, with the secrets' values in place of the lookups: the loader's layout.
    rendered = "\n".join(
        line for line in template.replace("{{ .Data.data.url | toJSON }}", '"postgresql://admin@pg/db"')
        .replace("{{ .Data.data.username | toJSON }}", '"event-store"')
        .replace("{{ .Data.data.password | toJSON }}", '"s3cret"').splitlines()
        if not line.strip().startswith("{{")
    )
    assert yaml.safe_load(rendered) == {
        "database": {"url": "postgresql://admin@pg/db"},
        "kafka": {"sasl_username": "event-store", "sasl_password": "s3cret"},
    }
    # Without a mechanism (or with a credentials Secret) nothing about Kafka is asked of Vault.
    docs = render(tools, {"kafka": {**kafka, "saslMechanism": "", "securityProtocol": "SSL"},
                          "vault": {"enabled": True}}, tmp=tmp_path)
    assert "kafka" not in one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"][
        "vault.hashicorp.com/agent-inject-template-operator.yaml"]
