"""The image recipe, checked without a Docker engine (none runs here): the build context the
.dockerignore allows is enough to build the package the Dockerfile installs, the runtime stage is
non-root, and the HTTP probes the webhook injects reach a real sidecar bound to loopback.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import aiohttp
import pytest

from k1s0_operator.injection import InjectionSettings, StreamTarget, sidecar_container
from tests.conftest import create_schema, drop_schema
from tests.deploy.conftest import app_pod, eventstream
from tests.deploy.tools import ROOT
from tests.support.postgres import LocalPostgres, free_port
from tests.support.sidecar import ServedSidecar

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages() -> dict[str, list[str]]:
    """The Dockerfile's stages by name, each with its non-comment lines (FROM first)."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in DOCKERFILE.splitlines():
        if line.startswith("FROM "):
            current = out.setdefault(line.split(" AS ")[-1], [])
        if current is not None and line and not line.startswith("#"):
            current.append(line)
    return out


def context_files() -> list[Path]:
    """What `docker build .` sends, by the .dockerignore rules (later lines win, ! re-includes)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [r.strip() for r in lines if r.strip() and not r.startswith("#")]
    files = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT).as_posix()
        if not path.is_file() or rel.startswith((".git/", ".venv/", ".tools/")):
            continue
        included = True
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            parts = rel.split("/")
            hit = any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern.replace("**/", "")) or
                      fnmatch.fnmatch(part, pattern.replace("**/", "")) for i, part in enumerate(parts)) \
                if pattern.startswith("**/") else \
                any(fnmatch.fnmatch("/".join(parts[: i + 1]), pattern) for i in range(len(parts)))
            if hit:
                included = negate
        if included:
            files.append(path)
    return files


def test_runtime_stages_are_small_and_non_root() -> None:
    st = stages()
    assert list(st) == ["build-base", "build-operator", "build-sidecar", "runtime", "sidecar", "operator"]
    # The base is pinned by digest.
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$", DOCKERFILE, re.M)
    for target, build in (("sidecar", "build-sidecar"), ("operator", "build-operator")):
        lines = st[target]
        assert lines[0] == f"FROM runtime AS {target}"
        assert f"COPY --from={build} /opt/k1s0 /opt/k1s0" in lines
        assert not any(line.startswith("COPY") and "--from" not in line for line in lines), "no sources at runtime"
        # Each venv is made at the path it runs from (a virtualenv cannot move) and loses pip.
        assert any("python -m venv /opt/k1s0" in line for line in st[build])
        assert any("pip uninstall -q -y pip setuptools wheel" in line for line in st[build])
    runtime = st["runtime"]
    [user] = [line for line in runtime if line.startswith("USER ")]
    assert user == "USER 10001:10001"
    assert 'ENTRYPOINT ["k1s0-eventstore"]' in runtime
    assert any("site-packages/pip*" in line for line in runtime), "the base's pip goes"
    # The uid the webhook and the chart run the containers as is the image's user.
    assert InjectionSettings(image="x").run_as_user == 10001
    assert "useradd --system --uid 10001" in DOCKERFILE


def test_build_context_builds_the_package(tmp_path: Path) -> None:
    files = context_files()
    rels = {f.relative_to(ROOT).as_posix() for f in files}
    assert "pyproject.toml" in rels and "README.md" in rels
    assert not any(r.startswith(("tests/", "charts/", ".venv/")) or "__pycache__" in r for r in rels)
    context = tmp_path / "context"
    for f in files:
        dest = context / f.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest)
    # Every COPY source of the build stages is in the context.
    st = stages()
    for line in st["build-base"] + st["build-operator"] + st["build-sidecar"]:
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (context / src).exists(), src
    # The dependency lists the Dockerfile extracts from pyproject.toml: its own command, run here
    # (writing to /tmp/operator.txt and /tmp/sidecar.txt as in the build stage).
    [extract] = [line for line in st["build-base"] if "tomllib" in line]
    code = extract.split('-c "', 1)[1].rsplit('"', 1)[0]  # sh keeps the backslash-n as it is
    code = code.replace("/tmp/", f"{tmp_path}/")
    subprocess.run([sys.executable, "-c", code], cwd=context, capture_output=True, text=True, check=True)
    operator = (tmp_path / "operator.txt").read_text().split()
    sidecar = (tmp_path / "sidecar.txt").read_text().split()
    assert any(r.startswith("kopf") for r in operator) and any(r.startswith("asyncpg") for r in operator)
    assert not any(r.startswith(("pytest", "pgserver")) for r in operator), "no dev or embedded extras"
    assert set(operator) - set(sidecar) == {r for r in operator if r.startswith(("kopf", "kubernetes"))}
    assert any(r.startswith("asyncpg") for r in sidecar)
    # `pip install --no-deps .` of that context: build the same wheel and look inside.
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "w"), str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "w").glob("k1s0_eventstore-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("k1s0_operator/webhook.py", "k1s0_operator/injection.py", "k1s0_operator/certs.py",
                   "k1s0_cli/__init__.py", "k1s0_sidecar/_runtime.py", "k1s0_event_store/__init__.py"):
        assert needed in names, needed
    assert any(n.startswith("k1s0_event_store/_proto/") and n.endswith("_pb2_grpc.py") for n in names), \
        "the generated gRPC stubs ship in the package"
    [entry_points] = [n for n in names if n.endswith("entry_points.txt")]
    assert "k1s0-eventstore = k1s0_cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


async def test_injected_http_probes_reach_a_loopback_sidecar(pg: LocalPostgres) -> None:
    """The probes the webhook injects, against a real sidecar configured the way the webhook
    configures it: the API on loopback only, /healthz and /readyz (nothing else) on every interface.
    127.0.0.2 stands in for the pod IP: a socket bound to 127.0.0.1 does not accept it."""
    settings = InjectionSettings(image="x", health_port=free_port())
    container = sidecar_container(app_pod(), StreamTarget.from_eventstream(eventstream()), settings)
    env = {e["name"]: e["value"] for e in container["env"]}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    schema = await create_schema(pg.dsn, "probe")
    served = ServedSidecar(pg.dsn, schema, env={"EVENTSTORE_SERVER_HEALTH_PORT": env["EVENTSTORE_SERVER_HEALTH_PORT"]})
    await asyncio.to_thread(served.start)
    try:
        async with aiohttp.ClientSession() as session:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                get = container[probe]["httpGet"]
                async with session.get(f"http://127.0.0.2:{ports[get['port']]}{get['path']}") as resp:
                    assert resp.status == 200, (probe, await resp.text())
            async with session.get(f"http://127.0.0.2:{ports['es-health']}/api/v1/streams/x/events") as resp:
                assert resp.status == 404, "only the probe endpoints are on the pod IP"
            with pytest.raises(aiohttp.ClientConnectorError):
                async with session.get(f"http://127.0.0.2:{served.rest_port}/healthz"):
                    pass
    finally:
        await asyncio.to_thread(served.stop)
        await drop_schema(pg.dsn, schema)
