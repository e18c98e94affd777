"""``python -m benchmarks``: run every case and write the results (``make bench`` calls this).

Options: ``--quick`` (or ``BENCH_QUICK=1``) for the short run; ``--only TEXT`` to run the cases
whose name contains TEXT; ``--results``/``--docs`` to write elsewhere (the smoke test does);
``BENCH_NOTE`` is printed under "Conditions" in the report (say what else ran on the machine);
``BENCH_GO=0`` with ``--allow-missing`` drives the gRPC cases with the Python client instead of the
compiled one (to compare the two).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

from .harness import REPO
from .run import Run, Settings, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", default=None, help="short run (also BENCH_QUICK=1)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--warmup", type=float, help="override the warm-up seconds per case")
    parser.add_argument("--duration", type=float, help="override the measured seconds per case")
    parser.add_argument("--allow-missing", action="store_true",
                        help="skip cases whose tool is missing (wrk, eventsourcing) and drive gRPC with the Python "
                             "client where Go is missing, instead of refusing to run")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="sample the sidecar with py-spy during each sidecar case; profiles go to DIR")
    parser.add_argument("--baseline-rev", default="", metavar="REV",
                        help="also run the fleet's sidecar cases with the sidecar of git revision REV (a worktree "
                             "under benchmarks/.build), reported side by side: e.g. --only fleet --baseline-rev main~3")
    args = parser.parse_args(argv)
    if args.profile:  # a profiled run's figures are not the benchmark's: keep them beside the profiles
        args.results, args.docs = args.profile / "results.json", args.profile / "docs"

    if not args.allow_missing:
        problems = []
        if shutil.which("wrk") is None:
            problems.append("Debian's `wrk` (the REST load generator) is not installed: sudo apt-get install -y wrk "
                            "(`make bench` installs it itself when run as root)")
        from .grpcgo import missing as go_missing
        from .npmpeers import missing as npm_missing

        go = go_missing()
        if go:
            problems.append(f"the Go gRPC load generator cannot be built: {go} (`make bench` installs them itself "
                            "when run as root; with --allow-missing the Python grpc.aio client stands in)")
        npm = npm_missing()
        if npm:
            problems.append(f"{npm} (`make bench` installs it itself when run as root)")
        for module, why in (("eventsourcing", "the peer cases"), ("matplotlib", "the plots")):
            if importlib.util.find_spec(module) is None:
                problems.append(f"{module} ({why}) is not installed: pip install -e '.[bench]' (`make bench` does)")
        if problems:
            print("python -m benchmarks: cannot run every case:\n  - " + "\n  - ".join(problems), file=sys.stderr)
            return 2
    settings = Settings.from_env(args.quick, args.only)
    if args.warmup is not None or args.duration is not None:
        from .harness import Timing

        t = settings.timing
        timing = Timing(args.warmup if args.warmup is not None else t.warmup,
                        args.duration if args.duration is not None else t.duration)
        settings = Settings(settings.quick, timing, Timing(max(1.0, timing.warmup), max(1.0, timing.duration)),
                            settings.only)
    if args.allow_missing or args.profile:
        settings = Settings(settings.quick, settings.timing, settings.wrk_timing, settings.only, args.allow_missing,
                            args.profile)
    if args.baseline_rev:
        settings = dataclasses.replace(settings, baseline_rev=args.baseline_rev)

    from . import report
    from .machine import describe

    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    run = Run(settings)
    machine = describe(run.pg.version(), run.pg.root, REPO)
    t0 = time.monotonic()
    run.run()
    findings_file = REPO / "benchmarks" / "findings.md"
    info = {
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "wall_s": round(time.monotonic() - t0, 1),
        "quick": settings.quick,
        "warmup_s": settings.timing.warmup,
        "duration_s": settings.timing.duration,
        "only": settings.only or None,
        "note": os.environ.get("BENCH_NOTE", ""),
        "machine": machine,
        "findings": findings_file.read_text() if findings_file.exists() else "",
    }
    info["skipped_cases"] = {**{c.name: why for c, why in run.skipped.items()},
                             **{c.name: why for c, why in run.fleet.skipped.items()}}
    info["fleet_proxy_check"] = run.fleet.proxy_check or None
    info["fleet_baseline"] = (
        {"rev": settings.baseline_rev, "commit": run.fleet.baseline[0] if run.fleet.baseline else None,
         "error": run.fleet.baseline_error or None} if settings.baseline_rev else None
    )
    # (without --allow-missing a missing Go client fails the gRPC cases instead: they are listed as failed)
    info["grpc_go_missing"] = run.go_missing if settings.allow_missing else None
    data = report.build(run.results, run.failures, info, run.fleet.results, run.fleet.failures)
    report.write(data, args.results, args.docs, with_plots=not args.no_plots)
    log(f"wrote {args.results} and {args.docs / 'benchmarks.md'} in {info['wall_s']} s")
    if args.profile:
        from .profile import summarise

        for collapsed in sorted(args.profile.glob("*.collapsed.txt")):
            summary = collapsed.with_name(collapsed.name.replace(".collapsed.txt", ".top.txt"))
            summary.write_text(summarise(collapsed))
        log(f"profiles (py-spy collapsed stacks and *.top.txt summaries) in {args.profile}")
    for t in data["targets"]:
        log(f"target {'MET   ' if t['met'] else 'MISSED'} {t['target']} (worst {t['worst']})")
    return 1 if run.failures or run.fleet.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
