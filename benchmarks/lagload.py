"""Load generator for delivery latency: paced appends, and the two ends that receive them.

Kinds: ``pace`` appends ``events``-event requests over gRPC at a fixed ``rate`` in events/s (open
loop: a send is due every events/rate seconds whatever the answers do, up to ``max_in_flight``
requests outstanding), each payload carrying its
send time (``time.time()``, one clock for every process on this machine); ``subscribe`` holds a
gRPC ``SubscribeToAll`` from the end and records receive time minus send time per event;
``consume`` does the same from the Kafka topic the sidecar forwards to. Only events sent inside the
measured window count.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import grpc

from k1s0_event_store.protocol import event_store_pb2 as pb
from k1s0_event_store.protocol import event_store_pb2_grpc as pb_grpc

from .common import EVENT_TYPE, StreamChooser, Window, WorkerResult, await_window, emit, payload_json, read_spec


class _Cpu:
    def __init__(self, window: Window) -> None:
        self.window = window
        self.start = 0.0
        self.end = 0.0

    async def run(self) -> None:
        await asyncio.sleep(max(0.0, self.window.measure_from - time.time()))
        self.start = time.process_time()
        await asyncio.sleep(max(0.0, self.window.until - time.time()))
        self.end = time.process_time()


async def pace(spec: dict[str, Any]) -> WorkerResult:
    rate, cap = float(spec["rate"]), int(spec.get("max_in_flight", 512))
    per = int(spec.get("events", 1))
    channel = grpc.aio.insecure_channel(spec["target"])
    await asyncio.wait_for(channel.channel_ready(), 30)
    stub = pb_grpc.EventStoreServiceStub(channel)
    window = await_window()
    result = WorkerResult(duration_s=window.duration)
    chooser = StreamChooser("uniform", int(spec["seed"]), "lag")
    in_flight: set[asyncio.Task[None]] = set()
    cpu = _Cpu(window)
    sampler = asyncio.create_task(cpu.run())

    async def send(n: int, due: float) -> None:
        t0 = time.time()
        request = pb.AppendEventsRequest(
            stream_id=chooser.next(),
            events=[pb.EventData(event_type=EVENT_TYPE, payload_json=payload_json(n + k, t0).encode())
                    for k in range(per)],
            expected_version=pb.EXPECTED_VERSION_ANY,  # unset would mean "version 0"
        )
        try:
            await stub.AppendEvents(request)
            outcome = "ok"
        except grpc.aio.AioRpcError as exc:
            outcome = f"{exc.code().name}: {exc.details()}"
        if window.measure_from <= due < window.until:
            result.ops += 1
            # from when the send was due: a paced client that falls behind shows it as latency
            result.latencies_ms.append((time.time() - due) * 1000.0)
            if outcome != "ok":
                result.errors += 1
                result.first_error = result.first_error or outcome
        if outcome == "ok" and window.measure_from <= t0 < window.until:
            # counted by the send time the payload carries, as the receivers count them: counting by
            # due time showed a request due just before the window's end but sent after it as
            # "not delivered" by both receivers
            result.events += per

    await asyncio.sleep(max(0.0, window.begin_at - time.time()))
    n = 0
    start = time.time()
    while True:
        due = start + n / (rate / per)
        if due >= window.until:
            break
        delay = due - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= cap:
            await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(send(n * per, due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        n += 1
    if in_flight:
        await asyncio.wait(in_flight, timeout=30)
    await sampler
    result.cpu_s = cpu.end - cpu.start
    await channel.close()
    return result


def _record(result: WorkerResult, window: Window, sent_at: float, received_at: float) -> None:
    if window.measure_from <= sent_at < window.until:
        result.ops += 1
        result.events += 1
        result.latencies_ms.append((received_at - sent_at) * 1000.0)


def _receive(target: str, received: list[tuple[bytes, float]], calls: list[Any], subscribed: threading.Event,
             stop: threading.Event) -> None:
    """Hold a ``SubscribeToAll`` (from the end, the lag case's streams) and note when each event arrives.

    Blocking gRPC with the single-threaded unary-stream option: this thread waits on the call itself,
    so a message costs no hand-over between threads and event loops (the asyncio client spent
    about a third more CPU per message, on the machine the sidecar runs on). The payload is
    decoded after the window, not on the receiving path."""
    options = [("SingleThreadedUnaryStream", 1)]  # grpc.experimental.ChannelOptions.SingleThreadedUnaryStream
    with grpc.insecure_channel(target, options=options) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = pb_grpc.EventStoreServiceStub(channel)
        # batched, as the library's client subscribes: each event counts from its message's arrival
        call = stub.SubscribeToAll(pb.SubscribeToAllRequest(from_end=True, stream_prefixes=["lag-"], max_batch=256))
        calls.append(call)
        subscribed.set()
        now, append = time.time, received.append
        try:
            for note in call:
                at = now()
                for event in note.events:
                    append((event.payload_json, at))
        except grpc.RpcError:
            if not stop.is_set():
                raise
        finally:
            call.cancel()


async def subscribe(spec: dict[str, Any]) -> WorkerResult:
    received: list[tuple[bytes, float]] = []
    calls: list[Any] = []
    subscribed, stop = threading.Event(), threading.Event()
    reader = asyncio.create_task(asyncio.to_thread(_receive, spec["target"], received, calls, subscribed, stop))
    await asyncio.to_thread(subscribed.wait, 30)
    await asyncio.sleep(0.5)  # the subscription is registered before the appends start
    window = await asyncio.to_thread(await_window)
    result = WorkerResult(duration_s=window.duration)
    cpu = _Cpu(window)
    sampler = asyncio.create_task(cpu.run())
    grace = float(spec.get("grace", 5.0))
    await asyncio.sleep(max(0.0, window.until + grace - time.time()))
    stop.set()
    for call in calls:
        call.cancel()  # (thread-safe) the reader's iteration ends with CANCELLED
    await reader
    for payload, at in list(received):
        _record(result, window, float(json.loads(payload).get("t", 0.0)), at)
    await sampler
    result.cpu_s = cpu.end - cpu.start
    return result


async def consume(spec: dict[str, Any]) -> WorkerResult:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=spec["bootstrap"], enable_auto_commit=False, auto_offset_reset="latest",
        request_timeout_ms=10_000, fetch_max_wait_ms=20,
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(spec["topic"])
        while not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(spec["topic"])
        consumer.assign([TopicPartition(spec["topic"], p) for p in sorted(partitions)])
        await consumer.seek_to_end()
        window = await_window()
        result = WorkerResult(duration_s=window.duration)
        cpu = _Cpu(window)
        sampler = asyncio.create_task(cpu.run())
        deadline = window.until + float(spec.get("grace", 5.0))
        while time.time() < deadline:
            got = await consumer.getmany(timeout_ms=100, max_records=5000)
            received = time.time()
            for records in got.values():
                for r in records:
                    if r.value is None:
                        continue
                    body = json.loads(r.value).get("payload") or {}
                    if isinstance(body, dict):
                        _record(result, window, float(body.get("t", 0.0)), received)
        await sampler
        result.cpu_s = cpu.end - cpu.start
        return result
    finally:
        await consumer.stop()


KINDS = {"pace": pace, "subscribe": subscribe, "consume": consume}


def main() -> None:
    spec = read_spec()
    emit(asyncio.run(KINDS[spec["kind"]](spec)))


if __name__ == "__main__":
    main()
