"""High availability with Kopf peering: two operator processes, one reconciling, the other taking over.

Each operator is the real ``k1s0-eventstore operator`` command in its own process (its own
``POD_ID``, priority and webhook port), against the emulator with the chart's kopf.dev CRDs, the
real PostgreSQL and the Tansu broker. Which process acted is read from what it leaves behind:
the ``reportingInstance`` of the Kubernetes Events it posts (its ``POD_ID``), its log, and its
record in the ``KopfPeering`` object. (The CLI's log format has no object prefix, so logs tell
only whether a process ran handlers at all, and when it paused or resumed.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from k1s0_event_store.sidecar_config import ConfigError
from k1s0_operator._peering import (
    AUTO_PRIORITY_LIMIT,
    LIFETIME_ENV,
    NAME_ENV,
    PRIORITY_ENV,
    Peering,
    derived_priority,
    peering_from_env,
)
from tests.operator.conftest import EVS, condition, event_stream, eventually
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiServer
from tests.support.postgres import LocalPostgres, free_port

ROOT = Path(__file__).resolve().parents[2]
PEERING_CRDS = ROOT / "charts" / "k1s0-eventstore" / "files" / "crds"
PEERINGS = ("kopf.dev", "v1", "kopfpeerings")
PEERING_NAME = "evs-operators"
#: Kopf's words when an operator resumes or pauses (kopf/_core/engines/peering.py).
RESUMED = "Resuming operations after the pause"
PAUSED = "Pausing operations in favour of"
PAUSED_ALL = "Pausing all operators, including self"  # peers with the same priority


@dataclass
class OperatorProcess:
    identity: str
    proc: asyncio.subprocess.Process
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def paused(self) -> bool:
        """Paused now: it never resumed, or it paused again after it last resumed."""
        text = self.text()
        return max(text.rfind(PAUSED), text.rfind(PAUSED_ALL)) >= text.rfind(RESUMED)

    def handlers_run(self) -> int:
        """How many EventStream handlers this process has run (Kopf logs each outcome)."""
        return sum(1 for line in self.text().splitlines() if "kopf.objects: Handler '" in line)


@pytest.fixture
async def peering_api(api: ApiServer) -> ApiServer:
    for path in sorted(PEERING_CRDS.glob("*.yaml")):
        api.register_crd(yaml.safe_load(path.read_text()))
    return api


@pytest.fixture
async def operators(
    tmp_path: Path, pg: LocalPostgres, kafka: LocalKafka
) -> AsyncIterator[Callable[..., Any]]:
    started: list[OperatorProcess] = []

    async def start(namespace: str, identity: str, priority: int, lifetime: int = 30) -> OperatorProcess:
        env = {
            **os.environ,
            "EVENTSTORE_DATABASE_URL": pg.dsn,
            "EVENTSTORE_KAFKA_BROKERS": kafka.bootstrap,
            "EVENTSTORE_AUTH_MODE": "none",
            "EVENTSTORE_LOG_LEVEL": "INFO",
            "EVENTSTORE_WEBHOOK_INSECURE": "true",
            "EVENTSTORE_WEBHOOK_ADDRESS": "127.0.0.1",
            "EVENTSTORE_WEBHOOK_PORT": str(free_port()),
            NAME_ENV: PEERING_NAME,
            PRIORITY_ENV: str(priority),
            LIFETIME_ENV: str(lifetime),
            "POD_ID": identity,
        }
        log = tmp_path / f"{identity}.log"
        command = Path(sys.executable).with_name("k1s0-eventstore")
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                str(command), "operator", "--namespace", namespace, env=env, stdout=out, stderr=out,
            )
        op = OperatorProcess(identity, proc, log)
        started.append(op)
        return op

    yield start

    for op in started:
        if op.proc.returncode is None:
            op.proc.kill()
            await op.proc.wait()


async def terminate(op: OperatorProcess) -> None:
    op.proc.send_signal(signal.SIGTERM)
    code = await asyncio.wait_for(op.proc.wait(), 30)
    assert code == 0, op.text()[-3000:]


async def in_log(op: OperatorProcess, words: str, timeout: float = 60) -> None:
    async def check() -> bool:
        return words in op.text()

    try:
        await eventually(check, timeout, f"{words!r} in the log of {op.identity}")
    except AssertionError:
        raise AssertionError(f"{words!r} not in the log of {op.identity}:\n{op.text()[-4000:]}") from None


async def peers(api: ApiServer, namespace: str, *identities: str, absent: tuple[str, ...] = ()) -> dict[str, Any]:
    """The peering object's records once it lists ``identities`` and none of ``absent``."""

    async def check() -> dict[str, Any] | None:
        status = (api.obj(PEERINGS, namespace, PEERING_NAME) or {}).get("status") or {}
        ok = all(i in status for i in identities) and not any(i in status for i in absent)
        return dict(status) if ok else None

    return await eventually(check, 60, f"peers {identities} (not {absent}) in KopfPeering {PEERING_NAME}")


async def ready_by(api: ApiServer, namespace: str, name: str) -> set[str]:
    """Wait until the EventStream is Ready; the replicas that posted Events about it."""

    async def check() -> bool:
        return condition(api.obj(EVS, namespace, name), "Ready").get("status") == "True"

    await eventually(check, 60, f"EventStream {namespace}/{name} to be Ready")
    return {e.get("reportingInstance", "") for e in api.events_for(namespace, name)}


async def test_only_the_higher_priority_reconciles_and_the_other_takes_over_on_exit(
    peering_api: ApiServer, operators: Callable[..., Any], namespace: str
) -> None:
    api = peering_api
    await api.create_namespace(namespace)

    # The lower-priority replica alone: it creates the peering object and is active.
    low: OperatorProcess = await operators(namespace, "op-low", 100)
    await in_log(low, RESUMED)
    records = await peers(api, namespace, "op-low")
    assert records["op-low"]["priority"] == 100 and records["op-low"]["lifetime"] == 30

    # A higher-priority replica joins (a rolling update, say): the first one steps back.
    high: OperatorProcess = await operators(namespace, "op-high", 200)
    await in_log(low, PAUSED)
    await in_log(high, RESUMED)
    await peers(api, namespace, "op-low", "op-high")
    assert low.paused()

    await api.put_object(EVS, namespace, event_stream("first", namespace, {"kafka": {"topic": f"{namespace}.first"}}))
    assert await ready_by(api, namespace, "first") == {"op-high"}
    assert high.handlers_run() >= 1
    assert low.handlers_run() == 0, low.text()[-3000:]

    # The active one exits cleanly: it removes its record, and the other resumes at once.
    await terminate(high)
    await peers(api, namespace, "op-low", absent=("op-high",))
    async def resumed_again() -> bool:
        return low.text().count(RESUMED) >= 2 and not low.paused()

    await eventually(resumed_again, 30, "op-low to resume after op-high left")
    await api.put_object(EVS, namespace, event_stream("second", namespace, {"kafka": {"topic": f"{namespace}.second"}}))
    assert await ready_by(api, namespace, "second") == {"op-low"}
    assert low.handlers_run() >= 1
    await terminate(low)
    assert (api.obj(PEERINGS, namespace, PEERING_NAME) or {}).get("status") in ({}, None)


async def test_a_crashed_active_replica_is_replaced_after_its_lifetime(
    peering_api: ApiServer, operators: Callable[..., Any], namespace: str
) -> None:
    api = peering_api
    await api.create_namespace(namespace)
    lifetime = 4
    high: OperatorProcess = await operators(namespace, "op-high", 200, lifetime)
    low: OperatorProcess = await operators(namespace, "op-low", 100, lifetime)
    await in_log(high, RESUMED)
    await peers(api, namespace, "op-low", "op-high")
    await api.put_object(EVS, namespace, event_stream("before", namespace, {"kafka": {"topic": f"{namespace}.b"}}))
    assert await ready_by(api, namespace, "before") == {"op-high"}
    # Started together, the lower one may resume for a moment before it sees the other's record
    # (Kopf's peering is not a lock); it has run no handler and is paused now.
    assert low.paused() and low.handlers_run() == 0, low.text()[-3000:]
    resumed_before = low.text().count(RESUMED)

    # SIGKILL: no goodbye, its record stays until it is older than its lifetime.
    high.proc.kill()
    await high.proc.wait()
    loop = asyncio.get_running_loop()
    killed = loop.time()
    assert "op-high" in ((api.obj(PEERINGS, namespace, PEERING_NAME) or {}).get("status") or {})

    async def taken_over() -> bool:
        return low.text().count(RESUMED) > resumed_before and not low.paused()

    await eventually(taken_over, lifetime + 30, "op-low to take over from the killed op-high")
    took = loop.time() - killed
    # Kopf re-evaluates when the dead peer's record expires (last keep-alive + lifetime).
    assert took < lifetime + 10, took
    await peers(api, namespace, "op-low", absent=("op-high",))  # the dead record is cleaned up
    await api.put_object(EVS, namespace, event_stream("after", namespace, {"kafka": {"topic": f"{namespace}.a"}}))
    assert await ready_by(api, namespace, "after") == {"op-low"}
    await terminate(low)


async def test_equal_priorities_pause_both(
    peering_api: ApiServer, operators: Callable[..., Any], namespace: str
) -> None:
    """Why the chart insists on ``auto`` priorities with several replicas: Kopf pauses every peer
    that sees another live one with its own priority."""
    api = peering_api
    await api.create_namespace(namespace)
    first: OperatorProcess = await operators(namespace, "op-a", 100)
    await in_log(first, RESUMED)
    second: OperatorProcess = await operators(namespace, "op-b", 100)
    await in_log(first, PAUSED_ALL)
    await in_log(second, "Possibly conflicting operators with the same priority")
    await peers(api, namespace, "op-a", "op-b")
    # op-a paused after it had resumed; op-b (paused from the start, peering being mandatory) never resumed.
    assert first.paused() and second.paused() and RESUMED not in second.text()
    await terminate(first)
    await terminate(second)


def test_peering_is_off_unless_named() -> None:
    assert peering_from_env({}) is None
    assert peering_from_env({NAME_ENV: " "}) is None


def test_peering_settings_from_the_environment() -> None:
    p = peering_from_env({NAME_ENV: "evs", "POD_ID": "op-0", PRIORITY_ENV: "7", LIFETIME_ENV: "12"})
    assert p == Peering(name="evs", identity="op-0", priority=7, lifetime=12)
    auto = peering_from_env({NAME_ENV: "evs", "POD_ID": "op-0", PRIORITY_ENV: "auto"})
    assert auto is not None and auto.priority == derived_priority("op-0") and auto.lifetime == 30
    assert peering_from_env({NAME_ENV: "evs", "POD_ID": "op-0"}) == auto
    for bad in ({NAME_ENV: "Not_A_Name"}, {NAME_ENV: "evs", PRIORITY_ENV: "high"},
                {NAME_ENV: "evs", LIFETIME_ENV: "1"}, {NAME_ENV: "evs", LIFETIME_ENV: "soon"}):
        with pytest.raises(ConfigError):
            peering_from_env(bad)


def test_derived_priorities_are_stable_distinct_and_below_the_override_range() -> None:
    """Replicas of one Deployment must not share a priority (equal priorities all pause)."""
    names = [f"rel-k1s0-eventstore-operator-6d5f8b7c9-{i:05x}" for i in range(2000)]
    priorities = [derived_priority(n) for n in names]
    assert len(set(priorities)) == len(names)
    assert all(1 <= p < AUTO_PRIORITY_LIMIT for p in priorities)
    assert derived_priority(names[0]) == priorities[0]
