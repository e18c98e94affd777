"""A consuming service in its own process (killed with SIGKILL by the tests).

Usage: python -m tests.forwarding.consumer_proc BOOTSTRAP TOPIC GROUP DSN SCHEMA STATS_FILE
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import asyncpg

from k1s0_event_store import EventConsumer, PublishedEvent
from tests.support.kafka import CONSUMER_GROUP_TIMEOUTS


def dump(path: str, stats: dict[str, int]) -> None:
    # Write then rename: the test reads this file while we rewrite it, and must never see it half written.
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(stats))
    os.replace(tmp, path)


async def main(bootstrap: str, topic: str, group: str, dsn: str, schema: str, stats_file: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)

    async def project(event: PublishedEvent, conn: asyncpg.Connection) -> None:
        await conn.execute(f'INSERT INTO "{schema}".projection VALUES ($1, $2, $3)', event.event_id,
                           event.stream_id, event.version)
        await asyncio.sleep(0.01)  # a handler with some work to do

    consumer = EventConsumer(
        brokers=[bootstrap], topics=[topic], group_id=group, pool=pool, schema=schema, handler=project,
        consumer_options=CONSUMER_GROUP_TIMEOUTS, producer_options={"enable_idempotence": False},
    )
    task = asyncio.create_task(consumer.run())
    while not task.done():
        dump(stats_file, {"handled": consumer.stats.handled, "duplicates": consumer.stats.duplicates})
        await asyncio.sleep(0.05)
    await task


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
