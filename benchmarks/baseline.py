"""A second build of the sidecar for before/after runs: ``--baseline-rev REV``.

The fleet's sidecar cases run once more with the sidecar of git revision REV: a detached git
worktree of REV under ``benchmarks/.build/baseline-<commit>`` (made once, reused while it exists),
whose ``sidecar/``, ``operator/`` and ``cli/`` come first on the sidecar processes' ``PYTHONPATH``, in the
same virtual environment (so REV must run on this tree's dependencies; a REV that needs others
fails its cases, and says why in the sidecar's log). Load generators and PostgreSQL stay the same.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD_DIR = HERE / ".build"


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
    return done.stdout.strip()


def resolve(rev: str) -> str:
    """The full commit id of REV (``main~3``, a tag, a commit)."""
    if rev.startswith("-"):
        raise RuntimeError(f"not a revision: {rev!r}")
    return _git("rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")


def prepare(rev: str) -> tuple[str, Path]:
    """(commit, worktree) of REV, the worktree made under ``benchmarks/.build`` if it is not there yet."""
    commit = resolve(rev)
    path = BUILD_DIR / f"baseline-{commit[:12]}"
    if not (path / "sidecar" / "k1s0_sidecar").is_dir():
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        _git("worktree", "prune")
        _git("worktree", "add", "--detach", "--force", str(path), commit)
    return commit, path


def pythonpath(tree: Path) -> str:
    """``PYTHONPATH`` that makes a sidecar process import the packages of ``tree`` (before the venv's)."""
    return os.pathsep.join([str(tree / "sidecar"), str(tree / "operator"), str(tree / "cli")])


def serve_command(tree: Path) -> list[str]:
    """The module that runs ``serve`` in ``tree``: the ``k1s0_cli`` package, or in revisions made
    before it existed, the command module inside the sidecar package."""
    return ["-m", "k1s0_cli" if (tree / "cli" / "k1s0_cli").is_dir() else "k1s0_sidecar.cli", "serve"]
