"""``k1s0-eventstore operator``: the flags and the configuration errors it reports before starting."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from k1s0_cli import build_parser, main
from tests.operator.conftest import EVS, condition, event_stream, eventually
from tests.support.kafka import LocalKafka
from tests.support.kube import ApiServer
from tests.support.postgres import LocalPostgres


def test_flags_parse() -> None:
    args = build_parser().parse_args(["operator", "--namespace", "a", "--namespace", "b", "--config", "c.yaml"])
    assert args.namespace == ["a", "b"] and not args.all_namespaces and args.config == "c.yaml"
    args = build_parser().parse_args(["operator", "--all-namespaces"])
    assert args.all_namespaces and args.namespace == []


def test_a_scope_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["operator"]) == 2
    assert "--namespace" in capsys.readouterr().err


def test_the_admin_dsn_is_required(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("EVENTSTORE_DATABASE_URL", raising=False)
    monkeypatch.setenv("EVENTSTORE_AUTH_MODE", "none")
    assert main(["operator", "--namespace", "x"]) == 2
    assert "EVENTSTORE_DATABASE_URL" in capsys.readouterr().err


def test_the_sidecars_auth_must_be_configured(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EVENTSTORE_DATABASE_URL", "postgresql://admin:pw@db:5432/k1s0")
    monkeypatch.delenv("EVENTSTORE_AUTH_MODE", raising=False)
    monkeypatch.delenv("EVENTSTORE_AUTH_JWKS_URL", raising=False)
    assert main(["operator", "--namespace", "x"]) == 2
    err = capsys.readouterr().err
    assert "auth.jwks_url" in err
    assert "pw" not in err


async def test_the_command_runs_the_operator_until_sigterm(
    api: ApiServer, pg: LocalPostgres, kafka: LocalKafka, namespace: str
) -> None:
    """The real entry point: a separate process, credentials from KUBECONFIG, config from the env."""
    await api.create_namespace(namespace)
    env = {
        **os.environ,
        "EVENTSTORE_DATABASE_URL": pg.dsn,
        "EVENTSTORE_KAFKA_BROKERS": kafka.bootstrap,
        "EVENTSTORE_AUTH_MODE": "none",
        "EVENTSTORE_LOG_LEVEL": "WARNING",
    }
    command = Path(sys.executable).with_name("k1s0-eventstore")
    proc = await asyncio.create_subprocess_exec(
        str(command), "operator", "--namespace", namespace,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await api.put_object(EVS, namespace, event_stream("cli", namespace, {"kafka": {"topic": f"{namespace}.cli"}}))

        async def is_ready() -> bool:
            return condition(api.obj(EVS, namespace, "cli"), "Ready").get("status") == "True"

        await eventually(is_ready, 60, "the EventStream to be Ready through the CLI operator")
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, output.decode()[-3000:]
