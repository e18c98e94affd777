"""Group commit: concurrent appends share one transaction.

Appends in one schema are serialised by the append lock (see ``k1s0_event_store.schema``), so a
transaction per request would mean one lock hand-off and one WAL flush per request. Instead every
request joins a queue; one worker takes whatever has queued up (at most ``max_batch``, after
waiting at most ``linger`` for more) and hands it to ``append_batch`` as one transaction. While a
batch commits, the next one fills, so batches grow exactly when load does and a lone request pays
no extra latency (linger 0 by default).

Each request keeps its own outcome: the shared decision in ``_batch.plan`` checks versions request
by request, so a conflicting request fails alone and its neighbours commit. If the transaction as
a whole fails (database gone), every request in it gets that error and nothing of it was stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from k1s0_event_store import AppendRequest, AppendResult, EventStoreError, UnavailableError

from . import _tracing as tracing

log = logging.getLogger("k1s0_sidecar.group_commit")  # the name people filter on; the module is private

#: How a reader woken by ``on_commit`` looks again for that commit while an earlier appender is
#: still committing (commits run in parallel; reads stop at the safe sequence): at most this many
#: times, ``CHASE_STEP``, 2 x ``CHASE_STEP``, … apart, then it waits for its next poll.
CHASES = 12
CHASE_STEP = 0.002

BatchFn = Callable[[Sequence[AppendRequest]], Awaitable[list[AppendResult | EventStoreError]]]


class GroupCommitter:
    def __init__(
        self,
        append_batch: BatchFn,
        *,
        max_batch: int = 256,
        linger_seconds: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self._append_batch = append_batch
        self._max_batch = max_batch
        self._linger = linger_seconds
        self._on_batch = on_batch
        # Called with the highest sequence of a batch that stored something: this sidecar's readers
        # (subscriptions, the forwarder) look at once instead of at their next poll.
        self._on_commit = on_commit
        self._queue: asyncio.Queue[tuple[AppendRequest, asyncio.Future[AppendResult]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._closing = False
        #: Each queued request's span context, for the batch span's links (empty while tracing is off).
        self._links: dict[asyncio.Future[AppendResult], Any] = {}

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="group-commit")

    async def submit(self, request: AppendRequest) -> AppendResult:
        if self._closing or self._worker is None:
            raise UnavailableError("the event store is shutting down")
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        # If the caller went away, nobody awaits the outcome: mark it retrieved so asyncio stays quiet.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        if tracing.ENABLED:
            self._links[fut] = tracing.current_link()
        self._queue.put_nowait((request, fut))
        # shield: a client that goes away must not cancel a write already queued; it either commits
        # or fails with its batch, and a retry with the same event ids is answered idempotently.
        return await asyncio.shield(fut)

    async def close(self) -> None:
        """Stop taking requests and finish every one already queued."""
        self._closing = True
        if self._worker is None:
            return
        await self._queue.join()
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        self._worker = None

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            if self._linger > 0:
                deadline = asyncio.get_running_loop().time() + self._linger
                while len(batch) < self._max_batch:
                    timeout = deadline - asyncio.get_running_loop().time()
                    if timeout <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), timeout))
                    except TimeoutError:
                        break
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, batch: list[tuple[AppendRequest, asyncio.Future[AppendResult]]]) -> None:
        if self._on_batch:
            self._on_batch(len(batch))
        links = [self._links.pop(fut, None) for _, fut in batch] if self._links else []
        try:
            with tracing.batch_span(links, len(batch)):  # the database spans nest in it
                outcomes = await self._append_batch([req for req, _ in batch])
        except EventStoreError as exc:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except Exception as exc:
            log.exception("group commit failed")
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        highest = 0
        for (_, fut), outcome in zip(batch, outcomes, strict=True):
            if not isinstance(outcome, EventStoreError) and outcome.events:
                highest = max(highest, outcome.events[-1].sequence or 0)
            if fut.done():
                continue
            if isinstance(outcome, EventStoreError):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)
        if highest and self._on_commit is not None:
            self._on_commit(highest)
