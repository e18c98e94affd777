"""The images, built for real (`make image`) and run the way the chart and the webhook run them:
uid 10001, a read-only root filesystem, writable tmpfs only where the pod has an emptyDir.

Without a Docker engine (none here) `make image` builds with buildah on a Debian base made by
mmdebstrap (.ci/run installs both). A container runs under ``buildah run --isolation chroot`` with
its root filesystem remounted read-only first (buildah run has no --read-only flag; podman's
runtime cannot set its rlimits in this sandbox). It shares the host's network, so it reaches the
test's PostgreSQL, broker and API-server emulator on 127.0.0.1.

* the sidecar image: ``serve`` answers /readyz on its probe listener and takes an append;
  the operator's dependencies and pip are not in it;
* the operator image: ``operator`` with the chart's arguments and environment (self-signed webhook
  TLS, peering) under the chart's RBAC brings an EventStream to Ready, patches the caBundle and
  answers an AdmissionReview over TLS.

Skipped, saying why, where neither a Docker engine nor buildah is installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from k1s0_operator import webhook
from tests.conftest import create_schema, drop_schema
from tests.deploy.conftest import NAMESPACE, app_pod
from tests.deploy.test_chart import render
from tests.deploy.test_rbac import MWC, RELEASE_NS, chart_env, kubeconfig_for_token, served
from tests.deploy.test_webhook import review
from tests.deploy.tools import ROOT, KubeTools, ensure_kube_tools
from tests.operator.conftest import EVS, condition, event_stream, eventually
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiServer
from tests.support.postgres import LocalPostgres, free_port
from tests.support.rbac import Authorizer

TOKEN = "operator-image-token"
#: A shell loop printing has-<module> for each module Python can import.
IMPORTS = 'for m in {modules}; do python -c "import $m" 2>/dev/null && echo has-$m; done'

VERSION = "0.1.0"


@dataclass(frozen=True)
class Images:
    operator: str
    sidecar: str
    seconds: float
    report: str


def _docker_engine() -> bool:
    return shutil.which("docker") is not None and subprocess.run(
        ["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.fixture(scope="module")
def images() -> Images:
    if shutil.which("buildah") is None:
        engine = " (a Docker engine answers, but this test runs the images with buildah)" if _docker_engine() else ""
        pytest.skip(f"buildah is not installed (apt-get install buildah mmdebstrap): no images built here{engine}")
    if os.geteuid() != 0:
        pytest.skip("building and running images with buildah needs root here")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    start = time.monotonic()
    done = subprocess.run(["bash", "scripts/build-image.sh"], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800, env={**env, "IMAGE": "localhost/k1s0-eventstore"})
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    return Images(f"localhost/k1s0-eventstore:{VERSION}", f"localhost/k1s0-eventstore-sidecar:{VERSION}",
                  seconds, done.stdout.strip())


def inside(root: Path, path: str) -> str:
    """``path`` with the image's own symbolic links resolved (Debian's /var/run -> /run): absolute
    links must be followed inside the image's root, never on this host."""
    resolved = "/"
    for part in Path(path).parts[1:]:
        candidate = root / resolved.lstrip("/") / part
        if candidate.is_symlink():
            target = os.readlink(candidate)
            resolved = target if target.startswith("/") else str(Path(resolved) / target)
        else:
            resolved = str(Path(resolved) / part)
    return resolved


@dataclass
class Container:
    name: str
    root: Path


@contextlib.contextmanager
def read_only_container(image: str, mountpoints: tuple[str, ...] = ()) -> Iterator[Container]:
    """A buildah working container of ``image`` whose root filesystem is mounted read-only."""
    ctr = subprocess.run(["buildah", "from", "--pull-never", "-q", image], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        root = Path(subprocess.run(["buildah", "mount", ctr], capture_output=True, text=True,
                                   check=True).stdout.strip())
        # buildah run bind-mounts these; they must exist before the root turns read-only.
        for directory in ("/run", "/tmp", "/etc/k1s0", *mountpoints):
            (root / inside(root, directory).lstrip("/")).mkdir(parents=True, exist_ok=True)
        for name in ("/run/.containerenv", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname", "/etc/k1s0/kubeconfig"):
            (root / inside(root, name).lstrip("/")).touch()
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        yield Container(ctr, root)
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)


def run_args(ctr: Container, env: dict[str, str], *, tmpfs: tuple[str, ...] = ("/tmp",),
             volumes: tuple[str, ...] = ()) -> list[str]:
    args = ["buildah", "run", "--isolation", "chroot", "--user", "10001:10001"]
    for path in tmpfs:
        args += ["--mount", f"type=tmpfs,destination={inside(ctr.root, path)},tmpfs-size=64m"]
    for volume in volumes:
        args += ["--volume", volume]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    return [*args, ctr.name, "--"]


def in_image(ctr: Container, script: str) -> str:
    """What ``sh -c script`` prints in the container. buildah 1.28 exits 2 after a command in a
    read-only root (a nil logger in its mount clean-up panics), so an end marker, not the exit
    status, tells that the script ran to its end."""
    done = subprocess.run([*run_args(ctr, {}), "sh", "-c", f"{script}; echo script-done"],
                          capture_output=True, text=True, timeout=120)
    assert "script-done" in done.stdout, done.stdout + done.stderr
    return done.stdout + done.stderr


@contextlib.asynccontextmanager
async def running(args: list[str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*args, stdout=out, stderr=out, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


def test_images_are_slim_and_say_their_sizes(images: Images) -> None:
    print(f"\nmake image: {images.seconds:.0f}s\n{images.report}")  # shown with -s; the report quotes it
    with read_only_container(images.sidecar) as ctr:
        probe = in_image(ctr, "id -u; id -g; touch /x 2>/dev/null && echo root-writable; "
                         "touch /tmp/x && echo tmp-writable; du -sm /opt/k1s0 | cut -f1; "
                         f"{IMPORTS.format(modules='pip setuptools kopf kubernetes')}; "
                         "k1s0-eventstore operator --all-namespaces; echo operator-exit-$?")
        lines = probe.split()
        assert lines[:2] == ["10001", "10001"], probe
        assert "root-writable" not in lines and "tmp-writable" in lines
        assert not [x for x in lines if x.startswith("has-")], "no pip, setuptools or operator dependencies"
        assert "operator-exit-2" in lines and "this is the sidecar image" in probe
        sidecar_venv = int(next(x for x in lines[2:] if x.isdigit()))
    with read_only_container(images.operator) as ctr:
        probe = in_image(ctr, f"du -sm /opt/k1s0 | cut -f1; {IMPORTS.format(modules='pip setuptools')}; "
                         "python -c 'import kopf, kubernetes' && echo has-operator-dependencies")
        operator_venv = int(probe.split()[0])
        assert "has-pip" not in probe and "has-setuptools" not in probe
        assert "has-operator-dependencies" in probe
    print(f"virtualenvs: operator {operator_venv} MB, sidecar {sidecar_venv} MB")
    assert sidecar_venv < operator_venv - 50, "kopf and the kubernetes client stay out of the sidecar image"


async def test_sidecar_image_serves_read_only_as_10001(images: Images, pg: LocalPostgres, tmp_path: Path) -> None:
    schema = await create_schema(pg.dsn, "img")
    rest, grpc_port, health = free_port(), free_port(), free_port()
    env = {"EVENTSTORE_DATABASE_URL": pg.dsn, "EVENTSTORE_DATABASE_SCHEMA": schema,
           "EVENTSTORE_DATABASE_MIN_CONNECTIONS": "1", "EVENTSTORE_AUTH_MODE": "none",
           # as the webhook injects it: the API on loopback, the probe listener on every interface
           "EVENTSTORE_SERVER_HOST": "127.0.0.1", "EVENTSTORE_SERVER_PORT": str(rest),
           "EVENTSTORE_SERVER_GRPC_PORT": str(grpc_port), "EVENTSTORE_SERVER_HEALTH_PORT": str(health),
           "EVENTSTORE_KAFKA_BROKERS": ""}
    try:
        with read_only_container(images.sidecar) as ctr:
            async with running([*run_args(ctr, env), "k1s0-eventstore", "serve"], tmp_path / "sidecar.log"), \
                    aiohttp.ClientSession() as session:
                async def ready() -> bool:
                    try:
                        async with session.get(f"http://127.0.0.1:{health}/readyz") as resp:
                            return resp.status == 200
                    except aiohttp.ClientConnectorError:
                        return False

                try:
                    await eventually(ready, 60, "the sidecar's /readyz")
                except AssertionError:
                    raise AssertionError((tmp_path / "sidecar.log").read_text()[-3000:]) from None
                url = f"http://127.0.0.1:{rest}/api/v1/streams/image-test/events"
                async with session.post(url, json={"events": [{"event_type": "Built", "payload": {"ok": True}}]}) \
                        as resp:
                    assert resp.status in (200, 201), await resp.text()
                async with session.get(url) as resp:
                    body = await resp.json()
                assert [e["event_type"] for e in body["events"]] == ["Built"]
    finally:
        await drop_schema(pg.dsn, schema)


@pytest.fixture(scope="module")
def tools() -> KubeTools:
    return ensure_kube_tools()


async def test_operator_image_reconciles_under_the_charts_rbac(
    images: Images, api: ApiServer, tools: KubeTools, pg: LocalPostgres, kafka: LocalKafka, tmp_path: Path
) -> None:
    docs = render(tools)
    await served(api, docs)
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    api.authorizers[TOKEN] = Authorizer.from_manifests(docs, RELEASE_NS, account)
    kubeconfig = kubeconfig_for_token(TOKEN, tmp_path)
    kubeconfig.chmod(0o644)  # read by uid 10001
    args, env = chart_env(deployment)
    port = free_port()
    env.update({"KUBECONFIG": "/etc/k1s0/kubeconfig", "EVENTSTORE_DATABASE_URL": pg.dsn,
                "EVENTSTORE_KAFKA_BROKERS": kafka.bootstrap, "EVENTSTORE_NAMESPACE": RELEASE_NS,
                "POD_ID": "rel-k1s0-eventstore-operator-img", "EVENTSTORE_WEBHOOK_ADDRESS": "127.0.0.1",
                "EVENTSTORE_WEBHOOK_PORT": str(port), "EVENTSTORE_OPERATOR_LIVENESS_PORT": str(free_port()),
                "EVENTSTORE_OPERATOR_METRICS_PORT": str(free_port())})
    cert_dir = env["EVENTSTORE_WEBHOOK_CERT_DIR"]
    log = tmp_path / "operator.log"
    with read_only_container(images.operator, (cert_dir,)) as ctr:
        command = [*run_args(ctr, env, tmpfs=("/tmp", cert_dir), volumes=(f"{kubeconfig}:/etc/k1s0/kubeconfig:ro",)),
                   "k1s0-eventstore", *args]
        async with running(command, log):
            await api.put_object(EVS, NAMESPACE, event_stream("orders", NAMESPACE, {"kafka": {"topic": "img.orders"}}))

            async def ready() -> dict[str, Any] | None:
                obj = api.obj(EVS, NAMESPACE, "orders")
                return obj if condition(obj, "Ready").get("status") == "True" else None

            async def bundle() -> str | None:
                [config] = [d for d in docs if d["kind"] == "MutatingWebhookConfiguration"]
                hooks = (api.obj(MWC, "", config["metadata"]["name"]) or {}).get("webhooks") or [{}]
                ca = hooks[0].get("clientConfig", {}).get("caBundle")
                return base64.b64decode(ca).decode() if ca else None

            try:
                await eventually(ready, 120, "the EventStream to be Ready")
                ca = await eventually(bundle, 30, "the caBundle to be patched")
            except AssertionError:
                raise AssertionError(f"denied: {api.denied}\n{log.read_text(errors='replace')[-4000:]}") from None
            context = ssl.create_default_context(cadata=ca)
            context.check_hostname = False
            async with aiohttp.ClientSession() as session, session.post(
                    f"https://127.0.0.1:{port}/{webhook.HANDLER_ID}", json=review(app_pod("orders")),
                    ssl=context) as resp:
                answer = (await resp.json())["response"]
            assert answer["allowed"] is True, answer
    assert api.denied == [], api.denied
