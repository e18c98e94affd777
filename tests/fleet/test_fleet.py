"""Eight sidecar processes appending to one schema, readers on other sidecars judging what they get.

Each test checks, against what the clients were told and what PostgreSQL holds at the end: every
acknowledged event delivered exactly once, sequences strictly increasing, each stream's versions
contiguous, each event at the sequence its append answer gave, and nothing but committed events.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest

from k1s0_event_store import EventEnvelope, EventStoreConfig, PostgresEventStore, prepare_append
from k1s0_event_store.schema import append_lock_key
from tests.support.postgres import LocalPostgres

from .conftest import Fleet
from .support import (
    DEADLINE,
    Client,
    Event,
    GrpcPoller,
    GrpcSubscriber,
    HoppingSubscriber,
    HotStream,
    Ledger,
    OwnStreams,
    Reader,
    RestPoller,
    SseSubscriber,
    client,
    committed,
    head,
    judge_reader,
    judge_store,
    readers_reach,
    start,
    wait_until,
)

pytestmark = pytest.mark.slow


def tag() -> str:
    return f"f{uuid.uuid4().hex[:8]}"


async def begin(fleet: Fleet, pg: LocalPostgres) -> tuple[float, str, int, Ledger]:
    """What each test starts from: its clock, its streams' tag, the head its readers start after,
    and an empty ledger."""
    return time.monotonic(), tag(), await head(pg.dsn, fleet.schema), Ledger()


async def close_all(clients: list[Client], readers: list[Reader]) -> None:
    for r in readers:
        await r.stop()
    for c in clients:
        await c.close()


async def test_eight_writing_sidecars_readers_elsewhere_see_each_event_once_in_order(
    fleet: Fleet, pg: LocalPostgres
) -> None:
    """16 own-stream writers (REST and gRPC, 1- to 5-event appends, half with expected_version) and
    8 read-modify-write clients on 2 hot streams, spread over 8 sidecars; six readers: a
    SubscribeToAll, an SSE subscription, a REST and a gRPC read-all poller on the two sidecars that
    take no writes, and a SubscribeToAll and an SSE subscription on two of the writing ones; and a
    SubscribeToAll that resumes on the next of the 10 sidecars every 250 events."""
    appends_each, hot_wins = 96, 12
    started, t, after, ledger = await begin(fleet, pg)
    w, r = fleet.writers, fleet.readers
    readers: list[Reader] = [
        GrpcSubscriber("SubscribeToAll on a reading sidecar", r[0], after).start(),
        RestPoller("REST read-all poller on a reading sidecar", r[0], after).start(),
        SseSubscriber("SSE on a reading sidecar", r[1], after).start(),
        GrpcPoller("gRPC ReadAll poller on a reading sidecar", r[1], after).start(),
        GrpcSubscriber("SubscribeToAll on a writing sidecar", w[0], after).start(),
        SseSubscriber("SSE on a writing sidecar", w[1], after).start(),
    ]
    hopper = HoppingSubscriber("SubscribeToAll resuming on the next sidecar every 250 events", [*r, *w], after, 250)
    readers.append(hopper.start())
    clients: list[Client] = []
    try:
        own: list[OwnStreams] = []
        for i, sidecar in enumerate(w):
            for protocol in ("rest", "grpc"):
                c = client(sidecar, f"w{i}-{protocol}", protocol)
                clients.append(c)
                own.append(OwnStreams(c, ledger, t, appends=appends_each))
        hot = [HotStream(f"{t}-hot-{h}") for h in range(2)]
        go = asyncio.Event()
        tasks = [asyncio.create_task(o.run()) for o in own]
        for i, sidecar in enumerate(w):  # each hot stream gets 4 clients on 4 sidecars, both protocols
            c = client(sidecar, f"w{i}-hot", "rest" if i % 4 < 2 else "grpc")
            clients.append(c)
            tasks.append(asyncio.create_task(hot[i % 2].writer(c, ledger, hot_wins, go)))
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
        written = time.monotonic() - started

        final = await head(pg.dsn, fleet.schema)
        caught_up = await readers_reach(readers, final)
        truth = await committed(pg.dsn, fleet.schema, after)
        judge_store(truth, ledger)
        assert len(truth) == len(ledger.acked), "every committed event was acknowledged (no append failed here)"
        for h in hot:
            assert sorted(h.versions) == list(range(1, 4 * hot_wins + 1)), f"{h.stream}: lost or duplicate update"
            assert max(e.version for e in truth if e.stream_id == h.stream) == 4 * hot_wins
        assert sum(h.conflicts for h in hot) > 0, "the read-modify-write clients never raced"
        for reader in readers:
            judge_reader(reader, truth, ledger)
    finally:
        await close_all(clients, readers)
    print(f"\nfleet: 8 writing sidecars, 24 clients, {sum(ledger.appends.values())} appends, {len(truth)} events "
          f"({sum(h.conflicts for h in hot)} hot-stream conflicts), 6 readers on 4 sidecars and one that resumed "
          f"{hopper.hops} times on the next sidecar; writes {written:.1f}s, "
          f"readers caught up {caught_up:.2f}s later; {time.monotonic() - started:.1f}s in all")


async def test_held_transactions_and_rollbacks_while_the_fleet_writes(fleet: Fleet, pg: LocalPostgres) -> None:
    """While 8 sidecars take writes, another client of the schema (the library, on its own
    connections) holds the append lock, holds open transactions that appended and then commit, and
    appends and rolls back. Readers never skip the held events and never see the rolled-back ones."""
    hold, rounds = 0.5, 3
    started, t, after, ledger = await begin(fleet, pg)
    w, r = fleet.writers, fleet.readers
    readers: list[Reader] = [
        RestPoller("REST read-all poller on a reading sidecar", r[0], after).start(),
        GrpcSubscriber("SubscribeToAll on a reading sidecar", r[1], after).start(),
        SseSubscriber("SSE on a writing sidecar", w[2], after).start(),
    ]
    clients = [client(s, f"w{i}", "rest" if i % 2 else "grpc") for i, s in enumerate(w)]
    store = PostgresEventStore(EventStoreConfig(dsn=pg.dsn, schema=fleet.schema, min_connections=1,
                                                max_connections=4))
    writers = [OwnStreams(c, ledger, t) for c in clients]
    tasks = [asyncio.create_task(o.run()) for o in writers]
    injected = {"lock": 0, "committed": 0, "rolled_back": 0}
    try:
        pool = await store.pool()
        admin = await asyncpg.connect(pg.dsn)
        try:
            oid = await admin.fetchval("SELECT oid FROM pg_namespace WHERE nspname = $1", fleet.schema)
        finally:
            await admin.close()
        key = append_lock_key(int(oid))

        async def hold_the_lock() -> None:
            conn = await asyncpg.connect(pg.dsn)
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
                    await asyncio.sleep(hold)  # the injected fault: a transaction that sits on the lock
                injected["lock"] += 1
            finally:
                await conn.close()

        async def held_append(i: int, commit: bool) -> None:
            envelopes = [EventEnvelope("Held", {"i": i, "k": k}, event_id=uuid.uuid4()) for k in range(1 + i % 3)]
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                (res,) = await store.append_batch([prepare_append(f"{t}-held-{i}", envelopes)], connection=conn)
                assert not isinstance(res, Exception), res
                await asyncio.sleep(hold)  # the injected fault: appended, not yet committed
                if commit:
                    await tx.commit()
                    ledger.ack([Event(e.sequence or 0, str(e.event_id), str(e.stream_id), e.version or 0)
                                for e in res.events], "library")
                    injected["committed"] += 1
                else:
                    await tx.rollback()
                    ledger.rolled_back.update(str(e.event_id) for e in envelopes)
                    injected["rolled_back"] += 1

        await wait_until(lambda: len(ledger.acked) >= 500, "the fleet writing", tasks=tasks)
        for rnd in range(rounds):
            await asyncio.gather(hold_the_lock(), held_append(2 * rnd, True), held_append(2 * rnd + 1, False),
                                 held_append(10 + rnd, True))
        # Every writer gets some more appends through after the last injection, then all stop.
        counts = [o.done for o in writers]
        await wait_until(lambda: all(o.done >= n + 20 for o, n in zip(writers, counts, strict=True)),
                         "appends after the injections", tasks=tasks)
        for o in writers:
            o.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
        written = time.monotonic() - started

        final = await head(pg.dsn, fleet.schema)
        caught_up = await readers_reach(readers, final)
        truth = await committed(pg.dsn, fleet.schema, after)
        judge_store(truth, ledger)
        assert len(truth) == len(ledger.acked)
        assert injected == {"lock": rounds, "committed": 2 * rounds, "rolled_back": rounds}, injected
        assert len(ledger.rolled_back) >= rounds
        for reader in readers:
            judge_reader(reader, truth, ledger)
    finally:
        for o in writers:
            o.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
        await close_all(clients, readers)
    print(f"\nheld transactions: 8 sidecars, 8 clients, {sum(ledger.appends.values())} appends, {len(truth)} events; "
          f"injected {injected} ({hold}s holds, {len(ledger.rolled_back)} events rolled back), 3 readers; "
          f"writes {written:.1f}s, readers caught up {caught_up:.2f}s later; {time.monotonic() - started:.1f}s in all")


async def test_kill_9_of_a_writing_sidecar_loses_nothing_acknowledged(fleet: Fleet, pg: LocalPostgres) -> None:
    """SIGKILL one of the 8 writing sidecars mid-load. Its clients retry their in-flight append (same
    event ids) on another sidecar and stop; the other sidecars keep taking writes; readers on
    survivors, and a poller on the victim once restarted, get every event exactly once in order."""
    started, t, after, ledger = await begin(fleet, pg)
    w, r = fleet.writers, fleet.readers
    victim, survivors = w[7], w[:7]
    readers: list[Reader] = [
        GrpcSubscriber("SubscribeToAll on a reading sidecar", r[0], after).start(),
        SseSubscriber("SSE on a reading sidecar", r[1], after).start(),
        RestPoller("REST read-all poller on a writing sidecar", w[0], after).start(),
    ]
    clients = [client(s, f"w{i}", "rest" if i % 2 else "grpc") for i, s in enumerate(survivors)]
    writers = [OwnStreams(c, ledger, t) for c in clients]
    doomed: list[OwnStreams] = []
    for j, protocol in enumerate(("rest", "grpc", "rest", "grpc")):
        c, fallback = client(victim, f"victim{j}", protocol), client(survivors[j], f"fallback{j}", protocol)
        clients += [c, fallback]
        doomed.append(OwnStreams(c, ledger, t, fallback=fallback))
    tasks = [asyncio.create_task(o.run()) for o in writers]
    doomed_tasks = [asyncio.create_task(o.run(pg.dsn, fleet.schema)) for o in doomed]
    restarted_reader: Reader | None = None
    try:
        await wait_until(lambda: len(ledger.acked) >= 800 and all(o.done >= 10 for o in doomed), "load",
                         tasks=tasks + doomed_tasks)
        victim.kill()
        killed_at = time.monotonic()
        at_kill = {s.base_url: ledger.appends[s.base_url] for s in survivors}
        await asyncio.wait_for(asyncio.gather(*doomed_tasks), DEADLINE)
        await wait_until(lambda: all(ledger.appends[u] >= n + 30 for u, n in at_kill.items()),
                         "every other sidecar taking appends after the kill", tasks=tasks)
        kept_going = time.monotonic() - killed_at
        for o in writers:
            o.stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)

        final = await head(pg.dsn, fleet.schema)
        await asyncio.to_thread(start, victim)  # the fleet is whole again, and the victim is a reader now
        restarted_reader = GrpcPoller("gRPC ReadAll poller on the restarted sidecar", victim, after).start()
        caught_up = await readers_reach([*readers, restarted_reader], final)
        truth = await committed(pg.dsn, fleet.schema, after)
        judge_store(truth, ledger)
        # Nothing but the retried appends could be stored without an answer, and those were answered.
        assert len(truth) == len(ledger.acked)
        assert [len(o.retried) for o in doomed] == [1] * len(doomed), "each victim client retried exactly once"
        assert [o.replayed for o in doomed] == [1] * len(doomed), "each victim client replayed its last append"
        for reader in [*readers, restarted_reader]:
            judge_reader(reader, truth, ledger)
    finally:
        for o in writers:
            o.stop.set()
        await asyncio.gather(*tasks, *doomed_tasks, return_exceptions=True)
        await close_all(clients, [*readers, *([restarted_reader] if restarted_reader else [])])
        if victim.proc is None:
            await asyncio.to_thread(start, victim)
    had_committed = sum(sum(o.retried) for o in doomed)
    print(f"\nkill -9: 8 writing sidecars, 7 + 4 clients, {sum(ledger.appends.values())} appends, {len(truth)} events; "
          f"{len(doomed)} in-flight appends retried elsewhere ({had_committed} had committed before the kill) and "
          f"{len(doomed)} acknowledged ones replayed elsewhere; "
          f"every survivor took 30 more appends {kept_going:.2f}s after the kill; readers caught up "
          f"{caught_up:.2f}s after the restart; {time.monotonic() - started:.1f}s in all")
