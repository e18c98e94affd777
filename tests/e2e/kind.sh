#!/usr/bin/env bash
# End-to-end on a throw-away kind cluster (`make e2e-kind`):
#   kind cluster -> build and load the image -> PostgreSQL and Kafka in the cluster -> helm install
#   -> EventStream Ready -> a labelled app pod gets the native sidecar (unlabelled pods untouched,
#   a pod naming a missing EventStream refused) -> append and read back through localhost:9090
#   from inside the app pod -> the events consumed from Kafka -> everything deleted.
# Where kind or a Docker engine is absent it says so and exits 0 WITHOUT having run anything.
# KEEP_CLUSTER=1 leaves the cluster for inspection; KIND_NODE_IMAGE picks the node (>= 1.29).
set -euo pipefail
cd "$(dirname "$0")/../.."

skip() { echo "make e2e-kind: SKIPPED, nothing was run: $*"; exit 0; }
command -v kind >/dev/null 2>&1 || skip "kind is not installed (https://kind.sigs.k8s.io)"
command -v docker >/dev/null 2>&1 || skip "the docker CLI is not installed"
docker info >/dev/null 2>&1 || skip "no Docker engine answers ('docker info' failed)"

CLUSTER=${KIND_CLUSTER:-k1s0-e2e}
IMAGE=k1s0-eventstore:e2e
SIDECAR_IMAGE=k1s0-eventstore-sidecar:e2e
RELEASE=k1s0-eventstore
NS=k1s0-system
TOPIC=k1s0.shop.orders.event.published.v1
step() { printf '\n== %s\n' "$*"; }

make -s venv
TOOLS=$(.venv/bin/python -c 'from tests.deploy.tools import ensure_kube_tools as e; t = e(); print(t.helm.parent)')
export PATH="$TOOLS:$PATH"
export KUBECONFIG
KUBECONFIG=$(mktemp -t k1s0-e2e-kubeconfig.XXXXXX)

cleanup() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "-- failed (exit $rc); operator log:"
    kubectl -n "$NS" logs deploy/"$RELEASE"-operator --tail=80 2>/dev/null || true
    kubectl -n shop get pods,eventstreams -o wide 2>/dev/null || true
  fi
  if [[ "${KEEP_CLUSTER:-}" == 1 ]]; then
    echo "KEEP_CLUSTER=1: cluster $CLUSTER kept (KUBECONFIG=$KUBECONFIG)"
  else
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
    rm -f "$KUBECONFIG"
  fi
  exit $rc
}
trap cleanup EXIT

step "kind cluster $CLUSTER"
kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --wait 180s ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
kubectl version

step "images $IMAGE $SIDECAR_IMAGE"
docker build --target operator -t "$IMAGE" .
docker build --target sidecar -t "$SIDECAR_IMAGE" .
kind load docker-image "$IMAGE" "$SIDECAR_IMAGE" --name "$CLUSTER"

step "PostgreSQL and Kafka"
kubectl apply -f tests/e2e/manifests/postgres.yaml -f tests/e2e/manifests/kafka.yaml
kubectl -n "$NS" rollout status deploy/postgres --timeout=300s
kubectl -n messaging rollout status deploy/kafka --timeout=300s
kubectl -n "$NS" create secret generic k1s0-eventstore-postgres-admin \
  --from-literal=url='postgresql://postgres:e2e-admin-password@postgres.k1s0-system.svc.cluster.local:5432/k1s0_system'

step "helm install"
helm install "$RELEASE" charts/k1s0-eventstore --namespace "$NS" --wait --timeout 300s \
  --set image.repository=k1s0-eventstore --set image.tag=e2e --set image.pullPolicy=Never \
  --set sidecar.pullPolicy=Never \
  --set kafka.enabled=true --set 'kafka.brokers[0]=kafka.messaging.svc.cluster.local:9092' \
  --set auth.mode=none
kubectl get crd eventstreams.eventstore.k1s0.io
# The operator patched the caBundle of the webhook configuration with its own CA.
for _ in $(seq 60); do
  ca=$(kubectl get mutatingwebhookconfiguration "$RELEASE-$NS" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')
  [[ -n "$ca" ]] && break; sleep 2
done
[[ -n "$ca" ]] || { echo "caBundle was never patched"; exit 1; }

step "RBAC of the operator's ServiceAccount (the real authorizer)"
SA="system:serviceaccount:$NS:$RELEASE"
WEBHOOK_CONFIG="$RELEASE-$NS"
can() { [[ "$(kubectl auth can-i --as="$SA" "$@")" == yes ]] || { echo "the operator cannot: $*"; exit 1; }; }
cannot() { if kubectl auth can-i --as="$SA" "$@" >/dev/null 2>&1; then echo "the operator should not: $*"; exit 1; fi; }
for verb in list watch; do can "$verb" customresourcedefinitions.apiextensions.k8s.io; done
for verb in get list watch patch; do can "$verb" eventstreams.eventstore.k1s0.io -n shop; done
can patch eventstreams.eventstore.k1s0.io --subresource=status -n shop
can update eventstreams.eventstore.k1s0.io --subresource=finalizers -n shop
for verb in get create update delete; do
  can "$verb" secrets -n shop; can "$verb" configmaps -n shop
done
can create events -n shop
for verb in get patch; do can "$verb" "mutatingwebhookconfigurations.admissionregistration.k8s.io/$WEBHOOK_CONFIG"; done
can create secrets -n "$NS"
for verb in get update; do can "$verb" "secrets/$RELEASE-webhook-tls" -n "$NS"; done
for verb in list watch create; do can "$verb" clusterkopfpeerings.kopf.dev; done
can patch "clusterkopfpeerings.kopf.dev/$RELEASE"
# What it was given before and never used, and what it must not have.
cannot get customresourcedefinitions.apiextensions.k8s.io
cannot get namespaces
cannot update eventstreams.eventstore.k1s0.io -n shop
cannot patch secrets -n shop
cannot patch events -n shop
cannot create events.events.k8s.io -n shop
cannot patch mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-else
cannot list pods -n shop
cannot get clusterkopfpeerings.kopf.dev/"$RELEASE"

step "EventStream and the labelled app"
kubectl apply -f tests/e2e/manifests/shop-stream.yaml
kubectl -n shop wait --for=condition=Ready eventstream/orders --timeout=300s
sed "s|IMAGE_PLACEHOLDER|$IMAGE|" tests/e2e/manifests/shop-app.yaml | kubectl apply -f -
kubectl -n shop rollout status deploy/orders-app --timeout=300s
pod=$(kubectl -n shop get pod -l app=orders-app -o jsonpath='{.items[0].metadata.name}')
init=$(kubectl -n shop get pod "$pod" -o jsonpath='{.spec.initContainers[0].name}/{.spec.initContainers[0].restartPolicy}')
[[ "$init" == "k1s0-eventstore/Always" ]] || { echo "no native sidecar in $pod: $init"; exit 1; }
echo "sidecar injected into $pod as a native sidecar"

step "unlabelled pods are untouched; a missing EventStream is refused by name"
kubectl -n shop run plain --image="$IMAGE" --image-pull-policy=Never --restart=Never \
  --command -- python -c 'print(1)'
[[ -z "$(kubectl -n shop get pod plain -o jsonpath='{.spec.initContainers}')" ]] || { echo "plain pod was modified"; exit 1; }
if out=$(kubectl -n shop run ghost --image="$IMAGE" --image-pull-policy=Never --restart=Never \
    --labels=eventstore.k1s0.io/stream=ghost --command -- true 2>&1); then
  echo "a pod naming a missing EventStream was admitted"; exit 1
fi
grep -q 'EventStream "ghost"' <<<"$out" || { echo "refusal does not name the EventStream: $out"; exit 1; }
echo "refused: $out"

step "append and read back through localhost:9090 from inside the app pod"
result=$(kubectl -n shop exec -i "$pod" -c app -- python - < tests/e2e/app_client.py)
echo "$result"
grep -q '"ok": true' <<<"$result"

step "consume the events from Kafka"
ids=$(python3 -c 'import json,sys; print(" ".join(json.loads(sys.argv[1])["event_ids"]))' "$result")
consumed=$(kubectl -n messaging exec deploy/kafka -- /opt/kafka/bin/kafka-console-consumer.sh \
  --bootstrap-server localhost:9092 --topic "$TOPIC" --from-beginning --timeout-ms 60000 \
  --property print.key=true --property print.headers=true 2>/dev/null || true)
for id in $ids; do
  grep -q "$id" <<<"$consumed" || { echo "event $id not found on $TOPIC"; echo "$consumed"; exit 1; }
done
echo "all $(wc -w <<<"$ids") events consumed from $TOPIC"

step "delete everything"
kubectl -n shop delete deploy/orders-app pod/plain --ignore-not-found --wait=true --timeout=180s
kubectl -n shop delete eventstream/orders --wait=true --timeout=180s   # the operator's finalizer runs
kubectl delete namespace shop --wait=true --timeout=180s
# The pre-delete hook passes now that no EventStream is left; the CRD stays (resource-policy keep).
helm uninstall "$RELEASE" --namespace "$NS" --wait
kubectl get crd eventstreams.eventstore.k1s0.io
echo
echo "make e2e-kind: PASSED"
