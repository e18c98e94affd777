"""The README's Python example runs as written (against the test server instead of localhost)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import drop_schema

README = Path(__file__).resolve().parents[2] / "README.md"


async def test_readme_python_example_runs(pg_dsn: str) -> None:
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    source = code.group(1).replace("postgresql://postgres@localhost/postgres", pg_dsn)
    migrate = re.search(r"`k1s0-eventstore migrate --database-url (\S+) --schema (\w+)`", text)
    assert migrate is not None and migrate.group(1) == "postgresql://postgres@localhost/postgres"
    schema = migrate.group(2)
    try:
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "k1s0_sidecar.cli", "migrate", "--database-url", pg_dsn, "--schema", schema],
            check=True, capture_output=True, timeout=60,
        )
        result = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", source], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1 ['OrderPlaced']"
    finally:
        await drop_schema(pg_dsn, schema)
