"""Load generator for the Emmett peer: ``exec`` of ``node benchmarks/.build/node/emmettload.mjs``.

Run by the harness as ``python -m benchmarks.emmettload '<spec>'`` like every load generator; the
Node program (``benchmarks/node/emmettload.mjs``) speaks the same protocol (READY, the window, one
``WorkerResult`` line). It runs from ``benchmarks/.build/node``, where ``npmpeers.ensure_installed``
put the packages and the script.
"""

from __future__ import annotations

import json
import os
import shutil

from .common import read_spec
from .npmpeers import EMMETT_SCRIPT, NODE_DIR


def main() -> None:
    spec = read_spec()
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node is not installed")
    os.chdir(NODE_DIR)
    os.execv(node, [node, str(NODE_DIR / EMMETT_SCRIPT), json.dumps(spec)])


if __name__ == "__main__":
    main()
