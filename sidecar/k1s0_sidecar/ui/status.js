// Status: health and readiness, the Kafka forwarder (state and lag), and rates computed from two
// /metrics samples (appended events, append requests, group commits), refreshed every 2 s.

import { getJson, getJsonAnyStatus, getText } from "./api.js";
import { h, mount, pretty } from "./dom.js";

const EVERY_MS = 2000;

/** Prometheus text format: "name{labels} value" lines, summed per name (labels dropped). */
export function parseMetrics(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const value = Number(m[3]);
    if (Number.isFinite(value)) out[m[1]] = (out[m[1]] || 0) + value;
  }
  return out;
}

function row(label, value, id) {
  return h("tr", {}, h("th", {}, label), h("td", { id }, value));
}

function rate(now, before, name, seconds) {
  if (!before || !(name in now) || !(name in before) || seconds <= 0) return "…";
  return `${((now[name] - before[name]) / seconds).toFixed(1)} /s`;
}

export function statusView({ main, report }) {
  const health = h("tbody", {});
  const forwarder = h("div", {});
  const rates = h("tbody", {});
  mount(main, h("h1", {}, "Status"),
    h("h2", {}, "Health"), h("table", { class: "kv", id: "health" }, health),
    h("h2", {}, "Rates (from /metrics)"), h("table", { class: "kv", id: "rates" }, rates),
    h("h2", {}, "Kafka forwarder"), forwarder);

  let previous = null;
  let previousAt = 0;
  let timer = null;
  let alive = true;

  async function refresh() {
    try {
      const [live, ready, fwd, metricsText] = await Promise.all([
        getJsonAnyStatus("/healthz"), getJsonAnyStatus("/readyz"), getJson("/api/v1/forwarder/status"),
        getText("/metrics"),
      ]);
      if (!alive) return;
      report(null);
      const checks = ready.body.checks || {};
      mount(health,
        row("liveness", live.body.status, "liveness"),
        row("readiness", `${ready.body.status} (HTTP ${ready.status})`, "readiness"),
        ...Object.entries(checks).map(([k, v]) => row(`check: ${k}`, String(v))),
        row("auth mode", ready.body.auth_mode || "?", "auth-mode"),
        ...(ready.body.warnings || []).map((w) => row("warning", w)));
      const now = parseMetrics(metricsText);
      const at = performance.now();
      const seconds = (at - previousAt) / 1000;
      const commits = previous ? now.eventstore_group_commit_batch_size_count - previous.eventstore_group_commit_batch_size_count : 0;
      const requests = previous ? now.eventstore_group_commit_batch_size_sum - previous.eventstore_group_commit_batch_size_sum : 0;
      mount(rates,
        row("events appended", rate(now, previous, "eventstore_events_appended_total", seconds), "rate-events"),
        row("append requests", rate(now, previous, "eventstore_append_duration_seconds_count", seconds), "rate-appends"),
        row("group commits", rate(now, previous, "eventstore_group_commit_batch_size_count", seconds), "rate-commits"),
        row("appends per commit", commits > 0 ? (requests / commits).toFixed(1) : "—", "batch"),
        row("events appended (total)", String(now.eventstore_events_appended_total ?? "?"), "events-total"),
        row("streams", String(now.eventstore_streams ?? "?")),
        row("live subscribers", String(now.eventstore_subscriptions_active ?? "?")),
        row("database connections in use", `${now.eventstore_db_pool_in_use ?? "?"} of ${now.eventstore_db_pool_max ?? "?"}`));
      previous = now;
      previousAt = at;
      if (fwd.enabled) {
        mount(forwarder, h("table", { class: "kv", id: "forwarder" }, h("tbody", {},
          row("state", fwd.state, "forwarder-state"),
          row("lag (events)", String(fwd.lag_events ?? "?"), "forwarder-lag"),
          row("lag (seconds)", String(fwd.lag_seconds ?? "?")),
          row("checkpoint", String(fwd.checkpoint ?? "?")),
          row("events published", String(fwd.events_published ?? "?"), "forwarder-published"),
          row("last error", fwd.last_error || "none"))),
        h("details", {}, h("summary", {}, "full status"), pretty(fwd)));
      } else {
        mount(forwarder, h("p", { id: "forwarder-state" }, `disabled: ${fwd.reason || fwd.state}`));
      }
    } catch (err) {
      if (alive) report(err);
    }
    if (alive) timer = setTimeout(refresh, EVERY_MS);
  }
  refresh();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
