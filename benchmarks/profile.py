"""Profiling the sidecar under a case's load with py-spy (``python -m benchmarks --profile``).

py-spy samples the sidecar process from outside (``--nonblocking``, 100 Hz) for the measured
window and writes collapsed stacks; ``summarise`` turns them into the functions that use the CPU:
by own time (the leaf of each sample) and by inclusive time (anywhere on the stack). A profiled run
is for finding where the time goes, not for the figures: the sampler itself needs CPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
_SITE = re.compile(r".*/(site-packages|lib/python3\.\d+)/")


def py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    local = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy"
    return str(local) if local.exists() else None


class Sampler(threading.Thread):
    """Records ``pid`` with py-spy from ``start_at`` for ``seconds`` into ``out`` (collapsed stacks)."""

    def __init__(self, pid: int, start_at: float, seconds: float, out: Path) -> None:
        super().__init__(daemon=True)
        self.pid, self.start_at, self.seconds, self.out = pid, start_at, seconds, out
        self.error = ""

    def run(self) -> None:
        binary = py_spy()
        if binary is None:
            self.error = "py-spy is not installed (pip install -e '.[bench]')"
            return
        time.sleep(max(0.0, self.start_at - time.time()))
        self.out.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [binary, "record", "--pid", str(self.pid), "--duration", str(max(1, round(self.seconds))),
             "--rate", "100", "--nonblocking", "--format", "raw", "--output", str(self.out)],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            self.error = (done.stderr or done.stdout)[-500:]


def _frame(text: str) -> str:
    m = _FRAME.match(text.strip())
    if not m:
        return text.strip()
    return f"{m['func']} ({_SITE.sub('', m['file'])})"


def summarise(collapsed: Path, top: int = 30) -> str:
    """The heaviest functions of a py-spy collapsed-stack file, by own and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    if not total:
        return f"{collapsed.name}: no samples\n"
    out = [f"{collapsed.name}: {total} samples (100 Hz, active threads only)", "", "own time:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"  {100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(out) + "\n"
