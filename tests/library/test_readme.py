"""The README's Python example runs verbatim: on a schema migrated the way the README says, and
against a sidecar started the way ``make run`` starts it (no database URL: the embedded
PostgreSQL), with the environment set from the ``export`` line that the sidecar prints."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.conftest import drop_schema
from tests.support.postgres import free_ports

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _example() -> str:
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code is not None
    return code.group(1)


def _run_example(env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", _example()], capture_output=True, text=True, timeout=60,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def test_readme_python_example_runs_on_a_migrated_schema(pg_dsn: str) -> None:
    text = README.read_text()
    migrate = re.search(r"k1s0-eventstore migrate --database-url (\S+) --schema (\w+)", text)
    exported = re.search(r"export EVENTSTORE_DSN=(postgresql://\S+) EVENTSTORE_SCHEMA=(\w+)", text)
    assert migrate is not None and exported is not None
    assert migrate.groups() == exported.groups() == ("postgresql://postgres@localhost/postgres", "orders")
    schema = migrate.group(2)
    try:
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "k1s0_cli", "migrate", "--database-url", pg_dsn, "--schema", schema],
            check=True, capture_output=True, timeout=60,
        )
        out = await asyncio.to_thread(_run_example, {"EVENTSTORE_DSN": pg_dsn, "EVENTSTORE_SCHEMA": schema})
        assert out == "1 ['OrderPlaced']"
    finally:
        await drop_schema(pg_dsn, schema)


def _make_run_command() -> tuple[list[str], dict[str, str]]:
    """`make run`'s recipe, read from the Makefile so this test follows it."""
    recipe = re.search(r"^run: .*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe is not None
    line = recipe.group(1)
    assert line == ("EVENTSTORE_AUTH_MODE=$${EVENTSTORE_AUTH_MODE:-none} "
                    "EVENTSTORE_APP_LOG_FORMAT=$${EVENTSTORE_APP_LOG_FORMAT:-text} "
                    "$(BIN)/k1s0-eventstore serve $(ARGS)"), line
    return [sys.executable, "-m", "k1s0_cli", "serve"], {"EVENTSTORE_AUTH_MODE": "none",
                                                                  "EVENTSTORE_APP_LOG_FORMAT": "text"}


def test_readme_python_example_runs_against_make_run(tmp_path: Path) -> None:
    command, make_env = _make_run_command()
    rest, grpc_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
    env.update(make_env)
    # Only what a person would change: free ports, and a data directory of its own.
    env.update({"EVENTSTORE_SERVER_PORT": str(rest), "EVENTSTORE_SERVER_GRPC_PORT": str(grpc_port),
                "EVENTSTORE_DATABASE_EMBEDDED_DATA_DIR": str(tmp_path / "postgres")})
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=err, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while "export EVENTSTORE_DSN=" not in out_path.read_text():
            assert proc.poll() is None, err_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no ready banner in 120 s:\n" + err_path.read_text()[-3000:]
            time.sleep(0.1)
        banner = out_path.read_text()
        assert f"REST      http://localhost:{rest}/api/v1/" in banner
        assert f"gRPC      localhost:{grpc_port}" in banner
        assert f"console   http://localhost:{rest}/ui/" in banner
        assert f"host={tmp_path / 'postgres'}" in banner and "schema    event_store" in banner
        export = next(line for line in banner.splitlines() if line.strip().startswith("export "))
        variables = dict(item.split("=", 1) for item in shlex.split(export.strip())[1:])
        assert set(variables) == {"EVENTSTORE_DSN", "EVENTSTORE_SCHEMA"}

        assert _run_example(variables) == "1 ['OrderPlaced']"
        # The example wrote into the schema the sidecar serves: the stream is listed over REST.
        with urllib.request.urlopen(f"http://127.0.0.1:{rest}/api/v1/streams?prefix=order-", timeout=10) as r:
            listed = json.load(r)
        assert [s["current_version"] for s in listed["streams"]] == [1]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTSTORE_")}
        env.update({"EVENTSTORE_AUTH_MODE": "none", "EVENTSTORE_SERVER_PORT": str(port),
                    "EVENTSTORE_DATABASE_EMBEDDED_DATA_DIR": str(tmp_path / "never")})
        result = subprocess.run([sys.executable, "-m", "k1s0_cli", "serve"], env=env, capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: port {port} is in use; set EVENTSTORE_SERVER_PORT"
    assert not (tmp_path / "never").exists(), "the database must not start when a port is taken"
