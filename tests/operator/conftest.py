"""The operator against real parts: the API-server emulator over HTTP, PostgreSQL, the Tansu broker.

Kopf runs in its own thread with its own event loop (its shutdown cancels the other tasks of
its loop); the emulator is served from the test's event loop, so tests talk to it directly.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

# The drift interval is set in tests/conftest.py: the operator reads it when its handlers are
# registered (at import), and tests/deploy imports the operator before this file is loaded.
import pytest
import yaml
from kmock import Server
from kubernetes import config as k8s_config

from k1s0_event_store.sidecar_config import Config, load_config
from k1s0_operator._clusters import Clusters
from k1s0_operator._runtime import Runtime
from k1s0_operator.main import Kube, operate
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiServer, kubeconfig_for
from tests.support.postgres import LocalPostgres

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "eventstreams.eventstore.k1s0.io.yaml"
EVS = ("eventstore.k1s0.io", "v1", "eventstreams")
SECRETS = ("", "v1", "secrets")
CONFIGMAPS = ("", "v1", "configmaps")

_ns_counter = itertools.count(1)
T = TypeVar("T")


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def new_namespace() -> str:
    return f"ns{os.getpid() % 10000}x{next(_ns_counter)}"


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 30, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: T | None = None
    while loop.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")



@pytest.fixture
async def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ApiServer]:
    server_api = ApiServer()
    server_api.register_crd(load_crd())
    async with server_api, Server(server_api) as server:
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig_for(server)))
        monkeypatch.setenv("KUBECONFIG", str(path))
        yield server_api


@dataclass
class RunningOperator:
    runtime: Runtime
    thread: threading.Thread
    stop: threading.Event
    errors: list[BaseException]


def operator_config(admin_dsn: str, brokers: str) -> Config:
    return load_config(
        None,
        env={
            "EVENTSTORE_DATABASE_URL": admin_dsn,
            "EVENTSTORE_KAFKA_BROKERS": brokers,
            "EVENTSTORE_AUTH_MODE": "none",
        },
    )


async def start_operator(config: Config, namespaces: list[str], clusters: Clusters | None = None) -> RunningOperator:
    kubeconfig = os.environ["KUBECONFIG"]
    api_client = k8s_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    runtime = Runtime(config=config, kube=Kube(api_client), backoff_base=0.5, clusters=clusters)
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(operate(runtime, namespaces=namespaces, stop_flag=stop, ready_flag=ready))
        except BaseException as exc:  # surfaced by the fixture
            errors.append(exc)

    thread = threading.Thread(target=main, name="kopf", daemon=True)
    thread.start()
    started = await asyncio.to_thread(ready.wait, 30)
    assert started and not errors, f"the operator did not start: {errors!r}"
    return RunningOperator(runtime, thread, stop, errors)


async def stop_operator(op: RunningOperator) -> None:
    op.stop.set()
    await asyncio.to_thread(op.thread.join, 30)
    assert not op.thread.is_alive(), "the operator did not stop"
    assert not op.errors, op.errors


@asynccontextmanager
async def operator_running(
    config: Config, namespaces: list[str], clusters: Clusters | None = None
) -> AsyncIterator[RunningOperator]:
    """The operator in a thread of its own for the block; stopped (and checked for errors) after it."""
    op = await start_operator(config, namespaces, clusters)
    try:
        yield op
    finally:
        await stop_operator(op)


@pytest.fixture
def namespace() -> str:
    return new_namespace()


@pytest.fixture
async def operator(
    api: ApiServer, pg: LocalPostgres, kafka: LocalKafka, namespace: str
) -> AsyncIterator[RunningOperator]:
    await api.create_namespace(namespace)
    async with operator_running(operator_config(pg.dsn, kafka.bootstrap), [namespace]) as op:
        yield op


def event_stream(name: str, namespace: str, spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eventstore.k1s0.io/v1",
        "kind": "EventStream",
        "metadata": {"name": name, "namespace": namespace, **meta},
        "spec": spec or {},
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}
