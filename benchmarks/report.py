"""Turning a run into ``benchmarks/results.json``, ``docs/benchmarks.md`` and the PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import fleet
from .cases import CONCURRENCY, FLOOR_CONCURRENCY, LAG_RATE, READ_STREAM_LENGTH, Case, Target, all_cases, targets
from .harness import Measurement

TARGET_LABELS = {
    "raw": "raw asyncpg",
    "library": "library (PostgresEventStore)",
    "peer": "eventsourcing (peer)",
    "grpc": "sidecar gRPC",
    "rest": "sidecar REST",
}


def _num(value: float | None, digits: int = 2) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), digits)


def _per_request_us(cpu_pct: float | None, m: Measurement) -> float | None:
    """CPU microseconds per request from a CPU % of one core over the measured window."""
    if cpu_pct is None or not m.ops:
        return None
    return cpu_pct / 100.0 * m.duration_s / m.ops * 1e6


def case_record(case: Case, m: Measurement, results: dict[Case, Measurement]) -> dict[str, Any]:
    baseline, peer = case.baseline(), case.peer()
    base_m = results.get(baseline) if baseline else None
    peer_m = results.get(peer) if peer else None
    record: dict[str, Any] = {
        "name": case.name,
        "group": case.group,
        "target": case.target,
        "operation": case.operation,
        "concurrency": case.concurrency,
        "events_per_request": case.events,
        "distribution": case.distribution,
        "page_size": case.page_size or None,
        "events_per_s": _num(m.events_per_s, 1),
        "requests_per_s": _num(m.ops_per_s, 1),
        "p50_ms": _num(m.latency["p50_ms"], 3),
        "p95_ms": _num(m.latency["p95_ms"], 3),
        "p99_ms": _num(m.latency["p99_ms"], 3),
        "p999_ms": _num(m.latency["p999_ms"], 3),
        "max_ms": _num(m.latency["max_ms"], 3),
        "baseline": baseline.name if baseline else None,
        "ratio": _num(m.events_per_s / base_m.events_per_s, 3) if base_m and base_m.events_per_s else None,
        "peer": peer.name if peer else None,
        "ratio_to_peer": _num(m.events_per_s / peer_m.events_per_s, 3) if peer_m and peer_m.events_per_s else None,
        "requests": m.ops,
        "conflicts": m.conflicts,
        "errors": m.errors,
        "first_error": m.first_error or None,
        "duration_s": _num(m.duration_s, 2),
        "loadgen_cpu_pct": _num(m.loadgen_cpu_pct, 1),
        "server_cpu_pct": _num(m.server_cpu_pct, 1),
        "postgres_cpu_pct": _num(m.postgres_cpu_pct, 1),
        "server_rss_mib": _num(m.server_rss_mib, 1),
        # which load generator drove the case (sidecar and floor cases; the others run their own client)
        "load_generator": None,
        "loadgen_cpu_us_per_request": _num(_per_request_us(m.loadgen_cpu_pct, m), 1),
        "server_cpu_us_per_request": _num(_per_request_us(m.server_cpu_pct, m), 1),
    }
    if m.extra:
        record.update({k: _num(v, 3) if isinstance(v, float) else v for k, v in m.extra.items()})
    return record


def judge(target: Target, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A target's verdict: every named case measured and within the threshold."""
    values: list[tuple[str, float | None]] = []
    for case in target.cases:
        r = records.get(case.name)
        if r is None:
            values.append((case.name, None))
        elif target.kind == "ratio":
            values.append((case.name, r["ratio"]))
        elif target.kind == "peer":
            values.append((case.name, r["ratio_to_peer"]))
        else:
            values.append((case.name, r.get(target.metric)))
    measured = [v for _, v in values if v is not None]
    complete = bool(measured) and len(measured) == len(values)
    if target.kind in {"ratio", "peer", "min"}:
        worst = min(measured) if complete else None
        met = worst is not None and worst >= target.threshold
    else:  # a case without a finite value (an undelivered event) is the worst of all
        worst = max(measured) if complete else None
        met = worst is not None and worst <= target.threshold
    return {
        "target": target.text,
        "threshold": target.threshold,
        "kind": target.kind,
        "worst": _num(worst, 3),
        "met": met,
        "values": {name: v for name, v in values},
    }


def build(
    results: dict[Case, Measurement], failures: dict[Case, str], run_info: dict[str, Any],
    fleet_results: dict[fleet.FleetCase, Measurement] | None = None,
    fleet_failures: dict[fleet.FleetCase, str] | None = None,
) -> dict[str, Any]:
    order = all_cases()
    records = [case_record(c, results[c], results) for c in order if c in results]
    fleet_results = fleet_results or {}
    fleet_order = fleet.fleet_cases(baseline=True)
    fleet_records = [fleet.record(c, fleet_results[c]) for c in fleet_order if c in fleet_results]
    fleet.add_ratios(fleet_records, {c.name: c for c in fleet_order})
    records += fleet_records
    by_name = {r["name"]: r for r in records}
    return {
        "run": run_info,
        "cases": records,
        "failed_cases": {**{c.name: why for c, why in failures.items()},
                         **{c.name: why for c, why in (fleet_failures or {}).items()}},
        "targets": [judge(t, by_name) for t in [*targets(), *fleet.fleet_targets()]],
    }


# -- plots -------------------------------------------------------------------------------------


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _legend(ax: Any, fontsize: int) -> None:
    """A legend where the axes have labelled lines (an empty legend box otherwise)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize)


def plots(data: dict[str, Any], img_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    cases = data["cases"]
    one = [r for r in cases if r["group"] == "append-1"]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for target, label in TARGET_LABELS.items():
        rows = sorted((r for r in one if r["target"] == target), key=lambda r: r["concurrency"])
        if not rows:
            continue
        xs = [r["concurrency"] for r in rows]
        ax1.plot(xs, [r["events_per_s"] for r in rows], marker="o", label=label)
        ax2.plot(xs, [r["p99_ms"] for r in rows], marker="o", label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(CONCURRENCY), [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent clients")
        ax.grid(True, alpha=0.3)
    ax1.set_ylabel("events/s (1 event per append)")
    ax1.set_title("Append throughput against concurrency")
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_yscale("log")
    ax2.set_title("Append p99 latency against concurrency")
    _legend(ax1, 8)
    made.append(_save(plt, fig, img_dir / "bench-append-throughput.png"))

    groups = [("append-100", "100-event appends, 8 clients"), ("append-zipf", "Zipf streams, 32 clients"),
              ("append-hot", "one hot stream + expected_version, 32 clients")]
    fig, axes = plt.subplots(1, len(groups), figsize=(13, 4))
    for ax, (group, title) in zip(axes, groups, strict=True):
        rows = [r for r in cases if r["group"] == group]
        ax.bar([TARGET_LABELS.get(r["target"], r["target"]).split(" (")[0] for r in rows],
               [r["events_per_s"] for r in rows], color="tab:blue")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("events/s")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    made.append(_save(plt, fig, img_dir / "bench-append-batches.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, op in zip(axes, ("read-stream", "read-all"), strict=True):
        for target, label in TARGET_LABELS.items():
            rows = sorted((r for r in cases if r["operation"] == op and r["target"] == target),
                          key=lambda r: r["concurrency"])
            if rows:
                ax.plot([r["concurrency"] for r in rows], [r["events_per_s"] for r in rows], marker="o", label=label)
        ax.set_title(f"{op}: events/s against concurrency")
        ax.set_xlabel("concurrent readers")
        ax.set_ylabel("events/s")
        ax.grid(True, alpha=0.3)
        _legend(ax, 8)
    made.append(_save(plt, fig, img_dir / "bench-reads.png"))

    fleet_rows = [r for r in cases if r["group"] == "fleet" and r["events_per_request"] == 1
                  and r["distribution"] == "uniform"]
    if fleet_rows:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, proxied in zip(axes, (False, True), strict=True):
            rows = [r for r in fleet_rows if bool(r["proxy_delay_ms"]) == proxied]
            for target, label in fleet.TARGET_LABELS.items():
                for build in (fleet.CURRENT, fleet.BASELINE):
                    line = sorted((r for r in rows if r["target"] == target and r["build"] == build),
                                  key=lambda r: r["processes"])
                    if not line:
                        continue
                    name = label + (" (baseline build)" if build == fleet.BASELINE else "")
                    if target == "raw-insert":  # one layout: a level to compare with
                        ax.axhline(line[0]["events_per_s"], color="grey", linestyle="--", label=name)
                        continue
                    ax.plot([r["processes"] for r in line], [r["events_per_s"] for r in line], marker="o",
                            linestyle=":" if build == fleet.BASELINE else "-", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xticks([p for p, _ in fleet.LAYOUTS], [f"{p} x {k}" for p, k in fleet.LAYOUTS])
            ax.set_xlabel("writer processes x clients each (32 clients)")
            ax.set_ylabel("1-event appends/s, distinct streams")
            ax.set_title(f"Fleet{f', via the {fleet.PROXY_DELAY_MS} ms proxy' if proxied else ''}", fontsize=10)
            ax.grid(True, alpha=0.3)
            _legend(ax, 7)
        made.append(_save(plt, fig, img_dir / "bench-fleet.png"))
    return made


# -- markdown ----------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _short(name: str) -> str:
    """A case name without its target, shortened for the targets table."""
    rest = name.split(": ", 1)[1] if ": " in name else name
    return (rest.replace("append ", "").replace(" clients", "c").replace(" client", "c").replace("events", "ev")
            .replace("event", "ev").replace("(pages of ", "(").replace("-event appends at 2000 ev/s", "-ev appends"))


def _go_fallback_note(run: dict[str, Any]) -> list[str]:
    why = run.get("grpc_go_missing")
    if not why:
        return []
    return [f"- **In this run the Go gRPC client was not available** ({why}): the Python grpc.aio client",
            "  drove every gRPC case, and its own CPU cost is part of what the cases measured."]


def _floor_table(data: dict[str, Any]) -> list[str]:
    rows = [r for r in data["cases"] if r["group"] == "floor"]
    if not rows:
        return []
    raw32 = next((r for r in data["cases"] if r["name"] == Case("raw", "append", 32).name), None)
    base = raw32["events_per_s"] if raw32 else None
    lines = [
        "### Edge floors: the edge frameworks alone, no event store", "",
        "Appends answered with a fixed response (`benchmarks/floor.py`). `x raw 32` divides by the raw",
        f"1-event INSERT rate at 32 tasks ({_fmt(base, 0)}/s in this run); `x raw` by the raw rate at the same",
        "concurrency; `sidecar / floor` is the sidecar's own 1-event append rate through the same edge at the",
        f"same concurrency divided by the floor. Client counts: {', '.join(map(str, FLOOR_CONCURRENCY))}.", "",
        "| case | loadgen | req/s | p50 ms | p99 ms | x raw 32 | x raw | sidecar / floor | loadgen CPU % "
        "| loadgen µs/req | server CPU % | server µs/req | errors |",
        "| " + " | ".join(["---", "---"] + ["---:"] * 11) + " |",
    ]
    by_name = {r["name"]: r for r in data["cases"]}
    for r in rows:
        ratio32 = r["requests_per_s"] / base if base and r["requests_per_s"] is not None else None
        # the sidecar's own 1-event appends through the same edge at the same concurrency
        edge = by_name.get(Case(r["target"].removeprefix("floor-"), "append", r["concurrency"]).name)
        used = edge["requests_per_s"] / r["requests_per_s"] if edge and r["requests_per_s"] else None
        lines.append("| " + " | ".join([
            r["name"], r.get("load_generator") or "-", _fmt(r["requests_per_s"], 0), _fmt(r["p50_ms"], 2),
            _fmt(r["p99_ms"], 2), _fmt(ratio32, 2), _fmt(r["ratio"], 2), _fmt(used, 2), _fmt(r["loadgen_cpu_pct"]),
            _fmt(r.get("loadgen_cpu_us_per_request"), 0), _fmt(r["server_cpu_pct"]),
            _fmt(r.get("server_cpu_us_per_request"), 0), str(r["errors"]),
        ]) + " |")
    lines.append("")
    return lines


def markdown(data: dict[str, Any], images: list[Path], docs_dir: Path) -> str:
    run = data["run"]
    machine = run["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m benchmarks`); do not edit by hand. The numbers below are from",
        f"one run: {run['started']} to {run['finished']} UTC, {'quick' if run['quick'] else 'full'} mode "
        f"({run['warmup_s']} s warm-up, {run['duration_s']} s measured per case), commit `{machine['git_commit']}`.",
        "Raw data: [`benchmarks/results.json`](../benchmarks/results.json).",
        "",
        "## Conditions",
        "",
        run.get("note") or "No note was given for this run (`BENCH_NOTE`).",
        "",
        "| | |",
        "| --- | --- |",
        f"| CPU | {machine['cpu_model']}, {machine['cpu_cores']} cores ({machine['virtualisation']}) |",
        f"| RAM | {machine['ram_gib']} GiB |",
        f"| OS | {machine['os']}, kernel {machine['kernel']} |",
        f"| PostgreSQL | {machine['postgresql']}; {machine['postgresql_settings']}; data on "
        f"{machine['postgresql_filesystem']} |",
        f"| Python | {machine['python']} |",
        f"| REST load generator | {machine['wrk']} |",
        f"| gRPC load generator | {machine.get('grpc_go', 'unknown')} (`benchmarks/grpcgo`) |",
        f"| Load average at start | {', '.join(map(str, machine['load_average_at_start']))} |",
        "",
        "Everything (PostgreSQL, the sidecar, the load generators) shares these cores, so a case's",
        "events/s is bounded by the CPU that all of them need; the CPU columns show who used it.",
        "",
        "## Method",
        "",
        "- One PostgreSQL, started by the harness with fsync, synchronous_commit and full_page_writes on,",
        "  serves every case of the run; ratios are taken within the run. Each case runs a warm-up, then",
        "  counts the operations that complete inside the measured window (as wrk does). Clients are",
        "  closed loops (one request in flight each).",
        "- Events are 300 bytes of JSON payload. Streams are chosen uniformly among 100,000 (in effect",
        "  a new or distinct stream per append), Zipf-distributed (s = 1.1 over 10,000: hot streams),",
        "  or one hot stream where every client appends with `expected_version` and conflicts are counted.",
        "- Raw baseline: asyncpg, one INSERT per transaction (autocommit) into a table shaped like the",
        "  event table, no lock, no version check; 100-event cases insert 100 rows in one statement.",
        "  Reads: asyncpg SELECT of the same rows in the same page size.",
        "- Library: `PostgresEventStore.append` (advisory lock per append). Peer: the `eventsourcing`",
        "  library's `PostgresApplicationRecorder.insert_events` (PyPI, psycopg 3, threads).",
        "- Sidecar: `k1s0-eventstore serve` as a separate process (auth off, forwarder off except in the",
        "  lag case). Load generators are separate processes and report their own CPU (`loadgen CPU`, % of",
        "  one core, and `loadgen µs/req`); the sidecar's CPU, PostgreSQL's CPU and the sidecar's peak RSS",
        "  are sampled over the same window; `req/txn` is the sidecar's group commit: append requests",
        "  per transaction over the case, from its `/metrics`. The `loadgen` column names each case's",
        "  load generator: `grpc-go` is one process of a compiled client (`benchmarks/grpcgo/main.go`,",
        "  Debian's grpc-go, one scheduler thread; the requests are our protobuf messages serialised by",
        "  Python and sent round-robin over one HTTP/2 connection per 4 clients); `grpc.aio` is a 2-process Python",
        "  client, used where requests must track the stream's version (the hot stream with",
        "  `expected_version`) and wherever Go was missing; `wrk` is Debian's wrk with",
        "  `benchmarks/wrk/*.lua`.",
        *_go_fallback_note(run),
        "- Edge floors: the same two edge frameworks with no event store behind them",
        "  (`benchmarks/floor.py`: `grpc.aio.server` with the generated servicer whose `AppendEvents`",
        "  returns a fixed response; an aiohttp app that reads the body and returns a fixed 201), driven",
        "  by the same load generators. They show the most appends per second each edge can answer on",
        "  this machine, whatever the store behind it does: the ceiling of the sidecar's edges, to set",
        "  against the raw database rate.",
        *fleet.method_lines(),
        f"- Subscription delivery and Kafka forwarding: {LAG_RATE:,.0f} events/s of paced (open loop) gRPC appends,",
        "  as 1-event and as 10-event requests, each event carrying its send time; a gRPC `SubscribeToAll`",
        "  subscriber and a Kafka consumer (Tansu broker) record receive time minus send time. The sidecar",
        "  for this case runs with the Kafka forwarder on, in a schema of its own.",
        "",
        "## Targets",
        "",
        "| target | worst measured | met | per case |",
        "| --- | --- | --- | --- |",
    ]
    for t in data["targets"]:
        unit = "x" if t["kind"] in {"ratio", "peer", "min"} else (" ms" if t["kind"] == "max_ms" else " MiB")
        worst = "not measured (or not finite)" if t["worst"] is None else f"{t['worst']:.2f}{unit}"
        per_case = "; ".join(
            f"{name.split(':')[0]} {_short(name)}: {'-' if v is None else f'{v:.2f}'}"
            for name, v in t["values"].items()
        ) if len(t["values"]) <= 12 else f"{len(t['values'])} sidecar cases, largest as shown"
        lines.append(f"| {t['target']} | {worst} | {'yes' if t['met'] else '**no**'} | {per_case} |")
    lines += ["", "## Results", ""]
    header = ("| case | events/s | req/s | p50 ms | p95 ms | p99 ms | p99.9 ms | x raw | x peer | conflicts | errors "
              "| loadgen | loadgen CPU % | loadgen µs/req | sidecar CPU % | PostgreSQL CPU % | sidecar RSS MiB "
              "| req/txn |")
    sep = "| " + " | ".join(["---"] + ["---:"] * 10 + ["---"] + ["---:"] * 6) + " |"
    sections = [("1-event appends", "append-1"), ("100-event appends", "append-100"),
                ("Zipf-distributed streams", "append-zipf"), ("One hot stream, expected_version", "append-hot"),
                (f"Reading one {READ_STREAM_LENGTH:,}-event stream", "read-stream"),
                ("Reading all events by sequence", "read-all")]
    for title, group in sections:
        rows = [r for r in data["cases"] if r["group"] == group]
        if not rows:
            continue
        lines += [f"### {title}", "", header, sep]
        for r in rows:
            cells = [
                r["name"], _fmt(r["events_per_s"], 0), _fmt(r["requests_per_s"], 0), _fmt(r["p50_ms"], 2),
                _fmt(r["p95_ms"], 2), _fmt(r["p99_ms"], 2), _fmt(r["p999_ms"], 2), _fmt(r["ratio"], 2),
                _fmt(r["ratio_to_peer"], 2), str(r["conflicts"]), str(r["errors"]), r.get("load_generator") or "-",
                _fmt(r["loadgen_cpu_pct"]), _fmt(r.get("loadgen_cpu_us_per_request"), 0), _fmt(r["server_cpu_pct"]),
                _fmt(r["postgres_cpu_pct"]), _fmt(r["server_rss_mib"]),
                _fmt(r.get("requests_per_transaction")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += _floor_table(data)
    baseline_run = run.get("fleet_baseline") or {}
    lines += fleet.markdown([r for r in data["cases"] if r["group"] == "fleet"],
                            f"{baseline_run['rev']} ({(baseline_run.get('commit') or '?')[:12]})"
                            if baseline_run.get("rev") else None, run.get("fleet_proxy_check"))
    lag = [r for r in data["cases"] if r["operation"] == "lag"]
    if lag:
        lines += [
            f"### Subscription delivery and Kafka forwarding at {LAG_RATE:,.0f} events/s", "",
            "Latency from each append's send to its receipt. An event appended in the window but not received",
            "within the grace period counts as infinitely late (`-` below: the percentile is not finite).", "",
            "| case | measured at | events | not delivered | p50 ms | p99 ms | p99.9 ms |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in lag:
            lines.append(
                f"| {r['name']} | append (paced gRPC, from when each send was due) | {r['requests']} requests | - "
                f"| {_fmt(r['p50_ms'], 2)} | {_fmt(r['p99_ms'], 2)} | {_fmt(r['p999_ms'], 2)} |"
            )
            for what, label in (("subscription", "gRPC SubscribeToAll"), ("forwarding", "Kafka consumer")):
                lines.append(
                    f"| | {label} | {r.get(what + '_events')} | {r.get(what + '_undelivered')} "
                    f"| {_fmt(r.get(what + '_p50_ms'), 2)} | {_fmt(r.get(what + '_p99_ms'), 2)} "
                    f"| {_fmt(r.get(what + '_p999_ms'), 2)} |"
                )
        lines.append("")
        for r in lag:
            lines.append(
                f"- {r['name']}: appended {_fmt(r['events_per_s'], 0)} events/s; sidecar CPU "
                f"{_fmt(r['server_cpu_pct'])} %, peak RSS {_fmt(r['server_rss_mib'])} MiB; PostgreSQL CPU "
                f"{_fmt(r['postgres_cpu_pct'])} %; load generators {_fmt(r['loadgen_cpu_pct'])} % (appender) + "
                f"{_fmt(r.get('loadgen_cpu_pct_receivers'))} % (receivers)."
            )
        lines.append("")
    if data["failed_cases"]:
        lines += ["### Cases that failed", ""]
        lines += [f"- {name}: {why}" for name, why in data["failed_cases"].items()]
        lines.append("")
    if images:
        lines += ["## Plots", ""]
        for img in images:
            rel = img.relative_to(docs_dir) if img.is_relative_to(docs_dir) else img
            lines.append(f"![{img.stem}]({rel.as_posix()})")
            lines.append("")
    findings = run.get("findings")
    if findings:
        lines += ["## Findings", "", findings.rstrip(), ""]
    return "\n".join(lines)


def write(data: dict[str, Any], results_path: Path, docs_dir: Path, *, with_plots: bool = True) -> None:
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(data, indent=1) + "\n")
    images = plots(data, docs_dir / "img") if with_plots else []
    docs_dir.mkdir(parents=True, exist_ok=True)  # plots may be off, so nothing else created it
    (docs_dir / "benchmarks.md").write_text(markdown(data, images, docs_dir))
