"""The chart's dashboards and alerts: rendered by the real helm, every PromQL expression parsed by
a real PromQL parser, and every metric they use declared by a running sidecar's /metrics."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from k1s0_event_store import EventEnvelope, GrpcEventStore
from k1s0_operator.injection import SIDECAR_NAME, InjectionSettings, StreamTarget, sidecar_container
from tests.deploy.test_chart import CHART, helm, one, render
from tests.deploy.tools import KubeTools, ToolsUnavailable, ensure_kube_tools
from tests.support.sidecar import ServedSidecar

DASHBOARD = CHART / "files" / "dashboards" / "k1s0-eventstore.json"
ALL_ON: dict[str, Any] = {
    "monitoring": {"podMonitor": {"enabled": True}, "grafanaDashboard": {"enabled": True},
                   "prometheusRule": {"enabled": True, "forwarderLagSeconds": 120}},
    "tracing": {"enabled": True, "endpoint": "http://otel-collector.observability:4318",
                "resourceAttributes": "deployment.environment=prod"},
}
#: The sample names each metric type exposes (prometheus_client's text format).
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "summary": ("_sum", "_count", "_created", ""), "unknown": ("",)}


@pytest.fixture(scope="module")
def tools() -> KubeTools:
    try:
        return ensure_kube_tools()
    except ToolsUnavailable as exc:  # pragma: no cover - CI installs them
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def rendered(tools: KubeTools, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render(tools, ALL_ON, tmp=tmp_path_factory.mktemp("values"))


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):  # label_values(metric{...}, label): the metric part is PromQL
            inner = re.fullmatch(r"label_values\((.+), *\w+\)", query["query"])
            assert inner, query
            exprs.append(inner.group(1))
    # Grafana's variables, as Grafana substitutes them before the query reaches Prometheus
    return [e.replace("$__rate_interval", "5m") for e in exprs]


def rule_queries(rule: dict[str, Any]) -> list[str]:
    return [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]


def selectors(expr: str) -> list[Any]:
    """Every vector selector of ``expr``, parsed by a real PromQL parser (ValueError if invalid)."""
    found: list[Any] = []
    promql_parser.walk(promql_parser.parse(expr),
                       lambda node: found.append(node) if isinstance(node, promql_parser.VectorSelector) else None)
    return found


def exposed(text: str) -> tuple[set[str], dict[tuple[str, str], set[str]]]:
    """The sample names /metrics declares, and the label values its samples carry."""
    names: set[str] = set()
    values: dict[tuple[str, str], set[str]] = {}
    for family in text_string_to_metric_families(text):
        names.update(family.name + s for s in SUFFIXES[family.type])
        for sample in family.samples:
            for label, value in sample.labels.items():
                values.setdefault((sample.name, label), set()).add(value)
    return names, values


def test_the_chart_renders_dashboard_rules_and_scrape(rendered: list[dict[str, Any]]) -> None:
    dashboards = [d for d in rendered if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert len(dashboards) == 1 and dashboards[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboards[0]["data"]["k1s0-eventstore.json"]) == json.loads(DASHBOARD.read_text())
    rule = one(rendered, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"EventStoreForwarderLagging", "EventStoreForwarderFailing", "EventStoreServerErrors",
            "EventStoreGrpcUnavailable", "EventStoreSubscriberOverflow", "EventStoreDatabaseUnavailable"} <= set(alerts)
    assert alerts["EventStoreForwarderLagging"]["expr"].endswith("> 120")  # the value reaches the rule
    assert all(r["labels"]["severity"] in {"warning", "critical"} and r["annotations"]["summary"]
               for r in alerts.values())
    monitor = one(rendered, "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "es-http", "path": "/metrics", "interval": "30s"}]


def test_nothing_is_rendered_by_default(tools: KubeTools) -> None:
    kinds = {d["kind"] for d in render(tools)}
    assert not kinds & {"PrometheusRule", "PodMonitor"}


def test_tracing_values_reach_the_injected_sidecar(rendered: list[dict[str, Any]], tools: KubeTools,
                                                   tmp_path: Path) -> None:
    deployment = one(rendered, "Deployment")
    env = {e["name"]: e.get("value", "") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = InjectionSettings.from_env(env)
    stream = StreamTarget(namespace="shop", name="orders", ready=True, reason="Ready", secret_name="orders-es",
                          config_map_name="orders-es")
    container = sidecar_container({"metadata": {}}, stream, settings)
    assert container["name"] == SIDECAR_NAME
    got = {e["name"]: e.get("value") for e in container["env"]}
    assert got["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert got["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert got["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert got["OTEL_RESOURCE_ATTRIBUTES"] == (
        "k8s.namespace.name=$(K1S0_POD_NAMESPACE),k8s.pod.name=$(K1S0_POD_NAME),deployment.environment=prod"
    )
    names = [e["name"] for e in container["env"]]
    assert names.index("K1S0_POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")  # $(…) needs it first
    # Without tracing values the sidecar gets no OTEL_* at all (tracing off).
    plain = InjectionSettings.from_env({k: v for k, v in env.items() if "OTEL" not in k})
    assert not [e for e in sidecar_container({"metadata": {}}, stream, plain)["env"] if "OTEL" in e["name"]]
    # Tracing on without an endpoint is refused by the values schema.
    path = tmp_path / "v.yaml"
    path.write_text(json.dumps({"tracing": {"enabled": True}}))
    done = helm(tools, "template", "rel", str(CHART), "--values", str(path), check=False)
    assert done.returncode != 0 and "endpoint" in done.stderr


async def test_every_metric_of_the_dashboard_and_the_rules_exists(
    rendered: list[dict[str, Any]], traced: ServedSidecar
) -> None:
    # Traffic first, so the labelled series exist (route, method, code, status values are checked).
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{traced.base_url}/api/v1/streams/m-1/events",
                             json={"events": [{"event_type": "E", "payload": {}}]}) as r:
            assert r.status == 201
        store = GrpcEventStore(traced.grpc_target)
        try:
            await store.append("m-2", [EventEnvelope("E", {})])
        finally:
            await store.close()
        async with http.get(f"{traced.base_url}/metrics") as r:
            names, values = exposed(await r.text())
    queries = dashboard_queries(json.loads(DASHBOARD.read_text())) + rule_queries(one(rendered, "PrometheusRule"))
    assert len(queries) > 20
    used: set[str] = set()
    for query in queries:
        for selector in selectors(query):
            assert selector.name in names, f"{selector.name} (in {query}) is not in /metrics"
            used.add(selector.name)
            for m in selector.matchers.matchers:
                if m.op == promql_parser.MatchOp.Equal and m.name in {"route", "method", "code"}:
                    seen = values.get((selector.name, m.name), set())
                    assert m.value in seen, f"{selector.name}{{{m.name}={m.value!r}}} never seen: {sorted(seen)}"
    # The panels cover what operators asked for.
    for metric in ("eventstore_forwarder_lag_seconds", "eventstore_forwarder_publish_failures_total",
                   "eventstore_group_commit_batch_size_bucket", "eventstore_subscriptions_lagged_total",
                   "eventstore_db_pool_in_use", "eventstore_append_duration_seconds_bucket",
                   "eventstore_database_up"):
        assert metric in used, metric


def test_an_invalid_query_is_refused_by_the_parser() -> None:
    with pytest.raises(ValueError):
        selectors("sum by (pod) (rate(eventstore_events_appended_total[5m])")


def metric_value(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


async def test_database_up_follows_the_database() -> None:
    """``eventstore_database_up`` (EventStoreDatabaseUnavailable's metric) drops to 0 while
    PostgreSQL is down and returns to 1 when it is back; subscription buffer gauges are exported."""
    from tests.support.postgres import LocalPostgres

    pg = LocalPostgres(fsync=False)
    pg.start()
    sidecar = ServedSidecar(pg.dsn, "dbup", env={"EVENTSTORE_EVENT_STORE_SUBSCRIPTION_BUFFER": "321"}).start()
    try:
        async with aiohttp.ClientSession() as http:

            async def ready_and_up() -> tuple[int, float]:
                async with http.get(f"{sidecar.base_url}/readyz") as r:
                    status = r.status
                async with http.get(f"{sidecar.base_url}/metrics") as r:
                    text = await r.text()
                return status, metric_value(text, "eventstore_database_up")

            assert await ready_and_up() == (200, 1.0)
            async with http.get(f"{sidecar.base_url}/metrics") as r:
                text = await r.text()
            assert metric_value(text, "eventstore_subscriptions_buffer") == 321
            assert metric_value(text, "eventstore_subscriptions_queued_max") == 0
            pg.stop()
            assert await ready_and_up() == (503, 0.0)
            pg.start()
            deadline = asyncio.get_running_loop().time() + 30
            while (got := await ready_and_up()) != (200, 1.0):
                assert asyncio.get_running_loop().time() < deadline, got
                await asyncio.sleep(0.1)
    finally:
        sidecar.stop()
        pg.destroy()
