"""The fleet group (issue #16): N sidecars on one PostgreSQL and one schema, what each case means,
what it is compared with, its targets, and its part of the report. (``fleetrun.py`` runs it.)

Every case has 32 closed-loop clients in total, split evenly over its writer processes: 1 x 32,
4 x 8 and 16 x 2 (processes x clients each). Sidecar cases run N ``k1s0-eventstore serve``
processes on one schema (REST: one wrk whose threads are spread over the sidecars; gRPC: the Go
client with its connections spread over them). Database-side cases run N load-generator processes:
the raw no-lock INSERT (32 connections, one process), the raw one-message locked shape, and the
peers Message DB and Emmett (npm), each with the same layouts. The "via proxy" variant puts
``benchmarks/delayproxy.py`` (0.25 ms each way) between the sidecars (or the raw clients) and
PostgreSQL. ``--baseline-rev REV`` runs the sidecar cases with a second build too (``build`` =
"baseline"), side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .cases import Target
from .common import UNIFORM_STREAMS, ZIPF_EXPONENT, ZIPF_STREAMS

#: (writer processes, clients each): 32 clients in total.
LAYOUTS: tuple[tuple[int, int], ...] = ((1, 32), (4, 8), (16, 2))
TOTAL_CLIENTS = 32
#: The delay proxy's one-way delay (a 0.5 ms round trip added).
PROXY_DELAY_MS = 0.25
#: (events per append, stream distribution) of the sidecar cases.
WORKLOADS: tuple[tuple[int, str], ...] = ((1, "uniform"), (1, "zipf"), (100, "uniform"))
SIDECAR_TARGETS = ("rest", "grpc")
PEER_TARGETS = ("messagedb", "emmett")
TARGET_LABELS = {
    "rest": "sidecar REST",
    "grpc": "sidecar gRPC",
    "raw-insert": "raw INSERT, no lock",
    "raw-locked": "raw one-message locked insert",
    "messagedb": "Message DB write_message",
    "emmett": "Emmett appendToStream",
}
#: The load generator of each target, as the report names it.
LOAD_GENERATORS = {"rest": "wrk", "grpc": "grpc-go", "raw-insert": "asyncpg", "raw-locked": "asyncpg",
                   "messagedb": "asyncpg", "emmett": "node"}
CURRENT, BASELINE = "current", "baseline"


@dataclass(frozen=True)
class FleetCase:
    #: rest | grpc (N sidecars) | raw-insert | raw-locked | messagedb | emmett (N writer processes)
    target: str
    processes: int
    clients: int  # per process
    events: int = 1
    distribution: str = "uniform"
    proxy: bool = False
    #: current (the tree being run) | baseline (--baseline-rev; sidecar cases only)
    build: str = CURRENT

    @property
    def layout(self) -> str:
        return f"{self.processes} x {self.clients}"

    @property
    def sidecar(self) -> bool:
        return self.target in SIDECAR_TARGETS

    @property
    def name(self) -> str:
        what = f"{self.events}-event appends, " + ("distinct streams" if self.distribution == "uniform"
                                                    else "Zipf streams")
        name = f"fleet {TARGET_LABELS[self.target]}: {what}, {self.layout}"
        if self.proxy:
            name += f", via {PROXY_DELAY_MS} ms proxy"
        if self.build == BASELINE:
            name += ", baseline build"
        return name

    @property
    def group(self) -> str:
        return "fleet"

    def single(self) -> FleetCase | None:
        """The same case with one writer process of 32 clients (None for the raw INSERT: it has one layout)."""
        if self.target == "raw-insert":
            return None
        return replace(self, processes=1, clients=TOTAL_CLIENTS)

    def raw(self) -> FleetCase | None:
        """The raw no-lock INSERT at 32 connections with as many events per statement, through the same proxy."""
        if self.target == "raw-insert":
            return None
        return FleetCase("raw-insert", 1, TOTAL_CLIENTS, self.events, "uniform", self.proxy)

    def peer(self, target: str) -> FleetCase | None:
        """A peer with the same layout (peers run 1-event appends to distinct streams, without the proxy)."""
        if self.target in {"raw-insert", target} or self.events != 1 or self.distribution != "uniform" or self.proxy:
            return None
        return FleetCase(target, self.processes, self.clients)

    def other_build(self) -> FleetCase | None:
        """For a sidecar case of this build: the same case with the baseline build."""
        if not self.sidecar or self.build != CURRENT:
            return None
        return replace(self, build=BASELINE)


def fleet_cases(baseline: bool = False) -> list[FleetCase]:
    """Every fleet case, database-side first; sidecar cases by build, proxy, then fleet size (largest first)."""
    cases = [FleetCase("raw-insert", 1, TOTAL_CLIENTS, events) for events in (1, 100)]
    cases.append(FleetCase("raw-insert", 1, TOTAL_CLIENTS, proxy=True))
    for proxy in (False, True):
        cases += [FleetCase("raw-locked", p, k, proxy=proxy) for p, k in LAYOUTS]
    for target in PEER_TARGETS:
        cases += [FleetCase(target, p, k) for p, k in LAYOUTS]
    for build in (CURRENT, BASELINE) if baseline else (CURRENT,):
        for proxy in (False, True):
            for p, k in sorted(LAYOUTS, reverse=True):
                for events, distribution in WORKLOADS[:1] if proxy else WORKLOADS:
                    cases += [FleetCase(t, p, k, events, distribution, proxy, build) for t in SIDECAR_TARGETS]
    return cases


def fleet_targets() -> list[Target]:
    """The issue's targets for the fleet, on 1-event appends of this build (ratios within one run)."""
    def at(p: int, k: int, distributions: tuple[str, ...] = ("uniform", "zipf"), proxy: bool = False
           ) -> tuple[FleetCase, ...]:
        return tuple(FleetCase(t, p, k, 1, d, proxy) for d in distributions for t in SIDECAR_TARGETS)

    return [
        Target("fleet 16 x 2 >= 0.9 x 1 x 32 of the same build (1-event appends)", "min", 0.9, at(16, 2),
               "ratio_to_single"),
        Target("fleet 16 x 2 >= 0.5 x raw no-lock INSERT at 32 connections (1-event appends)", "min", 0.5,
               at(16, 2), "ratio_to_raw"),
        Target(f"fleet 16 x 2 through the {PROXY_DELAY_MS} ms proxy >= 0.3 x raw INSERT through the same proxy",
               "min", 0.3, at(16, 2, ("uniform",), True), "ratio_to_raw"),
        Target("fleet p99 at 16 x 2 <= 25 ms (1-event appends)", "max_ms", 25.0, at(16, 2), "p99_ms"),
    ]


# -- records and the report --------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> float | None:
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return round(float(value), digits)


def _ratio(record: dict[str, Any], other: dict[str, Any] | None) -> float | None:
    if other is None or not other.get("events_per_s") or record.get("events_per_s") is None:
        return None
    return _num(record["events_per_s"] / other["events_per_s"])


def add_ratios(records: list[dict[str, Any]], cases: dict[str, FleetCase]) -> None:
    """Fill each fleet record's ratios from the others of the run (``cases``: record name -> case)."""
    by_name = {r["name"]: r for r in records}

    def find(case: FleetCase | None) -> dict[str, Any] | None:
        return by_name.get(case.name) if case is not None else None

    for r in records:
        case = cases[r["name"]]
        r["ratio_to_single"] = _ratio(r, find(case.single()))
        raw = case.raw()
        r["baseline"] = raw.name if raw else None
        r["ratio_to_raw"] = r["ratio"] = _ratio(r, find(raw))
        for peer in PEER_TARGETS:
            r[f"ratio_to_{peer}"] = _ratio(r, find(case.peer(peer)))
        r["ratio_to_baseline_build"] = _ratio(r, find(case.other_build()))


def record(case: FleetCase, m: Any) -> dict[str, Any]:
    """A fleet case's record (``m``: its ``harness.Measurement``); ratios come from ``add_ratios``."""
    per_request = (m.server_cpu_pct / 100.0 * m.duration_s / m.ops * 1e6
                   if m.server_cpu_pct is not None and m.ops else None)
    r: dict[str, Any] = {
        "name": case.name, "group": case.group, "target": case.target, "operation": "append",
        "build": case.build, "proxy_delay_ms": PROXY_DELAY_MS if case.proxy else None,
        "processes": case.processes, "clients_per_process": case.clients, "layout": case.layout,
        "concurrency": case.processes * case.clients, "events_per_request": case.events,
        "distribution": case.distribution, "page_size": None,
        "events_per_s": _num(m.events_per_s, 1), "requests_per_s": _num(m.ops_per_s, 1),
        "p50_ms": _num(m.latency["p50_ms"]), "p95_ms": _num(m.latency["p95_ms"]),
        "p99_ms": _num(m.latency["p99_ms"]), "p999_ms": _num(m.latency["p999_ms"]),
        "max_ms": _num(m.latency["max_ms"]),
        "requests": m.ops, "conflicts": m.conflicts, "errors": m.errors, "first_error": m.first_error or None,
        "duration_s": _num(m.duration_s, 2), "loadgen_cpu_pct": _num(m.loadgen_cpu_pct, 1),
        # summed over the sidecar processes (RSS: the largest one's)
        "server_cpu_pct": _num(m.server_cpu_pct, 1), "server_rss_mib": _num(m.server_rss_mib, 1),
        "postgres_cpu_pct": _num(m.postgres_cpu_pct, 1),
        "server_cpu_us_per_request": _num(per_request, 1),
        "load_generator": LOAD_GENERATORS[case.target],
        "peer": None, "ratio_to_peer": None,
    }
    r.update({k: _num(v) if isinstance(v, float) else v for k, v in m.extra.items()})
    return r


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.{digits}f}"
    return str(value)


def method_lines() -> list[str]:
    """What the fleet cases are, for the report's method section."""
    return [
        f"- Fleet (`--only fleet`): {TOTAL_CLIENTS} closed-loop clients in total split evenly over N writer",
        "  processes, as `N x k` (1 x 32, 4 x 8, 16 x 2). Sidecar cases run N `k1s0-eventstore serve`",
        "  processes on one schema (REST: one wrk whose threads are spread over the sidecars, k connections",
        "  each; gRPC: the Go client, its connections spread over the sidecars, k clients each). Streams:",
        f"  distinct (uniform among {UNIFORM_STREAMS:,}) or Zipf (s = {ZIPF_EXPONENT} over {ZIPF_STREAMS:,}, the same",
        "  hot streams for every sidecar); 1-event and 100-event appends. `appends/s` counts requests,",
        "  `events/s` events; `sidecar CPU` is summed over the N sidecars (% of one core).",
        "- Fleet baselines, same run: `raw INSERT, no lock` is asyncpg, one INSERT per transaction at 32",
        "  connections (one process; 100 rows per statement for the 100-event row); `raw one-message",
        "  locked insert` is N processes x k connections each sending `BEGIN; SELECT",
        "  pg_advisory_xact_lock(k); INSERT ...; COMMIT` as one simple-query message (one round trip, the",
        "  lock held for the insert and the commit's WAL flush): the floor of any design that serialises",
        "  a schema's appends with a lock held through COMMIT.",
        "- Fleet peers (npm, installed by `make bench` into `benchmarks/.build/node`), same layouts,",
        "  1-event appends to distinct streams of one category/store: Message DB (`@eventide/message-db`,",
        "  its SQL in a database of its own; N asyncpg processes calling `write_message`, whose category",
        "  advisory lock is held through the commit) and Emmett (`@event-driven-io/emmett-postgresql` on",
        "  Node; N Node processes of `benchmarks/node/emmettload.mjs` calling `appendToStream`).",
        f"- Fleet via proxy: `benchmarks/delayproxy.py` (asyncio, {PROXY_DELAY_MS} ms each way, so every round",
        "  trip costs 0.5 ms more) between the sidecars and PostgreSQL, and between the raw clients and",
        "  PostgreSQL for the raw rows marked `via proxy`. One Python process carries every proxied",
        "  connection: its CPU (`proxy CPU`) is part of what these rows measure.",
        "- `min share`: the events appended by the least busy sidecar as a fraction of an even split",
        "  (1.00: every sidecar appended 1/N of the events; from each sidecar's `/metrics`, warm-up",
        "  included; `-` where a build does not export the counter): it shows that the load was spread.",
        "- Fleet ratios: `x 1x32` divides by the same target, build, workload and proxy at 1 x 32; `x raw`",
        "  by the raw no-lock INSERT at 32 connections with as many events per statement (through the",
        "  proxy for proxied rows); `x MDB` / `x Emmett` by that peer at the same layout; `x base` (with",
        "  `--baseline-rev REV`) by the same case with the sidecar built from REV.",
    ]


def markdown(
    records: list[dict[str, Any]], baseline_rev: str | None, proxy_check: dict[str, float] | None = None
) -> list[str]:
    """The fleet's tables: one per workload (and one for the proxy variant)."""
    if not records:
        return []
    lines = [
        "### Fleet: N sidecars on one PostgreSQL and one schema", "",
        f"{TOTAL_CLIENTS} clients in total, split as processes x clients each. Sidecar CPU is summed over the",
        "sidecars; PostgreSQL CPU over its processes (both % of one core). See the method section.",
    ]
    if baseline_rev:
        lines.append(f"Rows marked `base` ran the sidecars built from `{baseline_rev}`; `x base` divides this "
                     "build's rate by that build's.")
    lines.append("")
    header = ("| case | build | loadgen | appends/s | events/s | p50 ms | p99 ms | x 1x32 | x raw | x MDB | x Emmett "
              "| x base | sidecar CPU % | sidecar µs/append | PostgreSQL CPU % | proxy CPU % | min share | errors |")
    sep = "| " + " | ".join(["---", "---", "---"] + ["---:"] * 15) + " |"
    order = {t: i for i, t in enumerate(TARGET_LABELS)}
    sections: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
        ("1-event appends, distinct streams", lambda r: r["events_per_request"] == 1
         and r["distribution"] == "uniform" and not r["proxy_delay_ms"]),
        (f"1-event appends, Zipf streams (s = {ZIPF_EXPONENT} over {ZIPF_STREAMS:,})",
         lambda r: r["distribution"] == "zipf" and not r["proxy_delay_ms"]),
        ("100-event appends, distinct streams (events/s counts events)",
         lambda r: r["events_per_request"] == 100 and not r["proxy_delay_ms"]),
        (f"1-event appends, distinct streams, via the {PROXY_DELAY_MS} ms proxy", lambda r: bool(r["proxy_delay_ms"])),
    ]
    for title, keep in sections:
        rows = sorted((r for r in records if keep(r)),
                      key=lambda r: (order[r["target"]], r["processes"], r["build"] != CURRENT))
        if not rows:
            continue
        lines += [f"#### Fleet: {title}", ""]
        if "proxy" in title and proxy_check:
            direct, proxied = proxy_check["direct_ms"], proxy_check["proxied_ms"]
            lines += [f"The proxy's calibration in this run: a `SELECT 1` round trip took {direct:.3f} ms straight to "
                      f"PostgreSQL and {proxied:.3f} ms through the proxy (medians of 200).", ""]
        lines += [header, sep]
        for r in rows:
            lines.append("| " + " | ".join([
                f"{TARGET_LABELS[r['target']]}, {r['layout']}", "base" if r["build"] == BASELINE else "this",
                r["load_generator"], _fmt(r["requests_per_s"], 0), _fmt(r["events_per_s"], 0),
                _fmt(r["p50_ms"], 2), _fmt(r["p99_ms"], 2), _fmt(r.get("ratio_to_single"), 2),
                _fmt(r.get("ratio_to_raw"), 2), _fmt(r.get("ratio_to_messagedb"), 2),
                _fmt(r.get("ratio_to_emmett"), 2), _fmt(r.get("ratio_to_baseline_build"), 2),
                _fmt(r["server_cpu_pct"]), _fmt(r["server_cpu_us_per_request"], 0), _fmt(r["postgres_cpu_pct"]),
                _fmt(r.get("proxy_cpu_pct")), _fmt(r.get("sidecar_share_min"), 2), str(r["errors"]),
            ]) + " |")
        lines.append("")
    return lines
