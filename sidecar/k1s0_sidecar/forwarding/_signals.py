"""What the forwarder's loops wait on: a stop request, and this sidecar's own commits."""

from __future__ import annotations

import asyncio


class Signals:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.woken = asyncio.Event()
        #: The highest sequence this sidecar committed (the relay chases it, see ``Relay.lead``).
        self.wanted = 0

    def committed(self, sequence: int) -> None:
        self.wanted = max(self.wanted, sequence)
        self.woken.set()

    def stop(self) -> None:
        self.stopping.set()
        self.woken.set()

    async def pause(self, seconds: float) -> None:
        """Sleep unless stopping (appends do not cut a backoff short)."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def idle(self, seconds: float) -> None:
        """Wait for an own commit, the poll interval, or stop."""
        try:
            await asyncio.wait_for(self.woken.wait(), seconds)
        except TimeoutError:
            pass
