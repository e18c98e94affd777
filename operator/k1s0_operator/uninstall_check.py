"""The chart's pre-delete hook: refuse ``helm uninstall`` while the operator still has EventStreams.

Every EventStream the operator handled carries its finalizer; once the operator is uninstalled
nobody removes it, and deleting such an EventStream later hangs forever. So the hook lists them
(in the watched namespaces, or everywhere) and fails with their names and what to do; Helm then
stops before deleting anything. ``python -m k1s0_operator.uninstall_check [--namespace NS ...]``;
exit status 0 when none is left, 1 when some are, 2 when the API server cannot be asked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from ._login import kubernetes_client
from ._spec import GROUP, PLURAL, VERSION

#: ``_handlers.FINALIZER`` (not imported: that would register every Kopf handler in this short job).
FINALIZER = f"{GROUP}/finalizer"


def remaining(custom: Any, namespaces: Sequence[str]) -> list[str]:
    """``namespace/name`` of every EventStream that still has the operator's finalizer."""
    if namespaces:
        items = [
            i for ns in namespaces
            for i in custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _request_timeout=10)["items"]
        ]
    else:
        items = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=10)["items"]
    return sorted(
        f"{i['metadata'].get('namespace', '')}/{i['metadata']['name']}" for i in items
        if FINALIZER in (i["metadata"].get("finalizers") or [])
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m k1s0_operator.uninstall_check", description=__doc__)
    parser.add_argument("--namespace", action="append", default=[], help="a watched namespace (repeatable)")
    args = parser.parse_args(argv)
    from kubernetes import client as k8s

    try:
        left = remaining(k8s.CustomObjectsApi(kubernetes_client()), args.namespace)
    except Exception as exc:  # no API server, no permission: say so and block the uninstall
        print(f"cannot list EventStreams: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if not left:
        print("no EventStreams left: the operator can be uninstalled")
        return 0
    print(
        f"{len(left)} EventStream(s) still exist: {', '.join(left)}. Without the operator their finalizer "
        f"({FINALIZER}) could never be removed. Delete them first, while the operator runs "
        "(kubectl delete eventstreams --all -A --wait), then uninstall again.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
