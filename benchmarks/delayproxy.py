"""A TCP proxy that delays every byte by a fixed time each way: a network round trip on loopback.

The kernel here has no netem, so the fleet group's "through the proxy" variant puts this between
the sidecars (or the raw clients) and PostgreSQL to show how sensitive each write path is to the
client-to-server round trip: with ``delay_ms`` = 0.25, every round trip costs at least 0.5 ms more.

Each direction of each connection keeps its chunks in arrival order and writes each one
``delay_ms`` after it was read (bandwidth is not limited: chunks overlap in flight, as packets on a
link do). The event loop runs on ``selectors.SelectSelector``: ``epoll_wait`` and ``poll`` take their
timeout in whole milliseconds, so on the default selector a 0.25 ms timer would fire after 1 ms;
``select`` takes microseconds. (It is limited to fds below 1024: at most ~500 proxied connections,
far more than a fleet of 16 sidecars opens.)

Run as ``python -m benchmarks.delayproxy '{"upstream_host": ..., "upstream_port": ..., "delay_ms": 0.25}'``:
it prints ``READY <port>`` once it listens (on ``listen_port``, or a free port) and serves until
SIGTERM or SIGINT. :func:`serve` runs it inside a caller's loop (the tests do).
"""

from __future__ import annotations

import asyncio
import collections
import json
import selectors
import signal
import sys
from typing import Any

#: Pause reading a side when this many delayed bytes wait to be written to the other side.
HIGH_WATER = 4 * 1024 * 1024


class _Half(asyncio.Protocol):
    """One socket of a proxied pair: what it reads is written, ``delay`` later, to its peer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.pending: collections.deque[tuple[float, bytes]] = collections.deque()
        self.pending_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        # after the delayed chunks: half-close this socket (the peer sent EOF), or close it (the peer is gone)
        self.eof_after: bool = False
        self.close_after: bool = False
        self.got_eof = False  # this socket sent EOF (we may still write to it)
        self.eof_sent = False
        self.closed = False
        self.buffered: list[bytes] = []  # read before the peer was connected (client side only)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.buffered.append(data)
            return
        self.peer.send_later(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        if self.peer is not None:
            self.peer.close_later(full=False)
        self._close_if_done()
        return True  # keep our socket open for what the peer still sends (a half-close, passed on)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.peer is not None and not self.peer.closed:
            self.peer.close_later(full=True)

    def _close_if_done(self) -> None:
        if self.got_eof and self.eof_sent and self.transport is not None:
            self.transport.close()

    # -- the delayed writes to this side ----------------------------------------------------------

    def send_later(self, data: bytes) -> None:
        if self.closed:
            return
        self.pending.append((self.loop.time() + self.delay, data))
        self.pending_bytes += len(data)
        if self.pending_bytes > HIGH_WATER and self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()
        if self.timer is None:
            self.timer = self.loop.call_at(self.pending[0][0], self._flush)

    def close_later(self, *, full: bool) -> None:
        """After the delayed chunks: pass an EOF on (``full``: close, the peer is gone)."""
        self.eof_after = True
        self.close_after = self.close_after or full
        if self.timer is None:
            self._flush()

    def _flush(self) -> None:
        self.timer = None
        if self.closed or self.transport is None:
            return
        now = self.loop.time()
        out: list[bytes] = []
        while self.pending and self.pending[0][0] <= now:
            data = self.pending.popleft()[1]
            self.pending_bytes -= len(data)
            out.append(data)
        if out:
            self.transport.write(b"".join(out))
        if self.pending_bytes <= HIGH_WATER // 2 and self.peer is not None and self.peer.transport is not None \
                and not self.peer.closed:
            self.peer.transport.resume_reading()
        if self.pending:
            self.timer = self.loop.call_at(self.pending[0][0], self._flush)
        elif self.close_after:
            self.transport.close()
        elif self.eof_after and not self.eof_sent:
            self.eof_sent = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._close_if_done()


async def serve(
    upstream_host: str, upstream_port: int, delay_ms: float, listen_host: str = "127.0.0.1", listen_port: int = 0
) -> asyncio.Server:
    """Start the proxy in the running loop; the returned server's socket names the port."""
    loop = asyncio.get_running_loop()
    delay = delay_ms / 1000.0
    connecting: set[asyncio.Task[None]] = set()  # (the loop keeps only weak references to tasks)

    def accepted() -> _Half:
        client = _Half(loop, delay)

        async def connect() -> None:
            try:
                _, upstream = await loop.create_connection(lambda: _Half(loop, delay), upstream_host, upstream_port)
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            client.peer, upstream.peer = upstream, client
            for chunk in client.buffered:
                upstream.send_later(chunk)
            client.buffered.clear()
            if client.closed:
                upstream.close_later(full=True)
            elif client.got_eof:
                upstream.close_later(full=False)

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    return await loop.create_server(accepted, listen_host, listen_port)


async def _main(spec: dict[str, Any]) -> None:
    server = await serve(spec["upstream_host"], int(spec["upstream_port"]), float(spec.get("delay_ms", 0.25)),
                         spec.get("listen_host", "127.0.0.1"), int(spec.get("listen_port", 0)))
    port = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"READY {port}\n")
    sys.stdout.flush()
    await stop.wait()
    server.close()


def new_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers keep sub-millisecond precision (see the module's note)."""
    return asyncio.SelectorEventLoop(selectors.SelectSelector())


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m benchmarks.delayproxy '<json spec>'")
    loop = new_loop()
    try:
        loop.run_until_complete(_main(json.loads(sys.argv[1])))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
