"""The machine a run measured on (the eventstore-benchmarks method: hardware written down)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _first(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _run(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _wrk_version() -> str:
    try:
        done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "absent"
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0].split(" Copyright")[0] if text else "unknown"


def _grpc_go_version() -> str:
    """The compiled gRPC load generator's toolchain: Debian's grpc-go and Go."""
    version = "absent"
    try:
        for line in Path("/usr/share/gocode/src/google.golang.org/grpc/version.go").read_text().splitlines():
            if line.startswith("const Version"):
                version = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        return "grpc-go absent"
    go = _run("go", "version").removeprefix("go version ")
    return f"grpc-go {version} (Debian golang-google-grpc-dev), {go or 'go absent'}"


def describe(postgres_version: str, data_dir: Path | None = None, repo: Path | None = None) -> dict[str, Any]:
    mem_kib = _first("/proc/meminfo", "MemTotal").split()[0]
    filesystem = ""
    if data_dir is not None:
        lines = _run("df", "-T", str(data_dir)).splitlines()
        if len(lines) > 1:
            parts = lines[1].split()
            filesystem = f"{parts[1]} ({parts[0]})" if len(parts) > 1 else lines[1]
    hypervisor = next((line.split(":", 1)[1].strip() for line in _run("lscpu").splitlines()
                       if line.startswith("Hypervisor vendor")), "")
    container = _run("systemd-detect-virt")
    virt = ", ".join(x for x in (f"{container} container" if container and container != "none" else "",
                                 f"{hypervisor} virtual machine" if hypervisor else "") if x) or "bare metal"
    return {
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(int(mem_kib) / 1024 / 1024, 1) if mem_kib.isdigit() else None,
        "virtualisation": virt,
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "postgresql": postgres_version,
        "postgresql_settings": "fsync=on, synchronous_commit=on, full_page_writes=on, shared_buffers=256MB",
        "postgresql_filesystem": filesystem,
        "wrk": _wrk_version(),
        "grpc_go": _grpc_go_version(),
        "git_commit": _run("git", "-C", str(repo), "rev-parse", "--short", "HEAD") if repo else "",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
