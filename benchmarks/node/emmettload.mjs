// Load generator for the fleet benchmark's Emmett peer: Emmett's PostgreSQL event store
// (npm @event-driven-io/emmett-postgresql) appending 1-event messages, in Node.
//
// It speaks the harness's load-generator protocol (benchmarks/common.py): one JSON argument (its
// spec), "READY" once its connections are open, the case's window as one JSON line on stdin, a
// warm-up that is not measured, then every append that completes inside the window is counted; one
// WorkerResult JSON line at the end. Clients are closed loops (one append in flight each) sharing
// one pg.Pool of `clients` connections. With {"setup": true} it only creates Emmett's schema
// (once per run, before the writers start) and prints DONE.
//
// Run by the harness through benchmarks/emmettload.py, from benchmarks/.build/node (where make
// bench installs the packages of benchmarks/node/package.json), so that the imports resolve there.
import { getPostgreSQLEventStore } from '@event-driven-io/emmett-postgresql';
import pg from 'pg';
import { createInterface } from 'node:readline';

const PAYLOAD_BYTES = 300;
const UNIFORM_STREAMS = 100000;

function payload(n) {
  // the same 300-byte JSON payload as benchmarks/common.py's payload()
  const body = { n, t: 0.0, pad: '' };
  const used = JSON.stringify(body).length;
  body.pad = 'x'.repeat(Math.max(0, PAYLOAD_BYTES - used));
  return body;
}

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const now = () => (performance.timeOrigin + performance.now()) / 1000; // wall-clock seconds
const sleepUntil = (t) => new Promise((resolve) => setTimeout(resolve, Math.max(0, (t - now()) * 1000)));
const cpuSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

async function readLine() {
  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    rl.close();
    return line;
  }
  throw new Error('the harness went away before sending the window');
}

async function main() {
  const spec = JSON.parse(process.argv[2]);
  const clients = spec.clients ?? 1;
  // idleTimeoutMillis 0: keep every connection while the other writer processes start
  const pool = new pg.Pool({ connectionString: spec.dsn, max: clients, idleTimeoutMillis: 0 });
  const store = getPostgreSQLEventStore(spec.dsn, {
    schema: { autoMigration: 'None' },
    connectionOptions: { pool },
  });
  if (spec.setup) {
    await store.schema.migrate();
    await store.close();
    await pool.end();
    console.log('DONE');
    return;
  }
  const rng = mulberry32((spec.seed ?? 42) * 1000 + 7);
  const prefix = spec.prefix ?? 'emmett';
  const stream = () => `${prefix}-u${Math.floor(rng() * UNIFORM_STREAMS)}`;
  // open every connection before the window: one append per client
  const warm = Math.floor(rng() * 1e9);
  await Promise.all(
    Array.from({ length: clients }, (_, i) =>
      store.appendToStream(`warm-${warm}-${i}`, [{ type: 'BenchEvent', data: payload(0) }])),
  );
  process.stdout.write('READY\n');
  const window = JSON.parse(await readLine());
  const measureFrom = window.begin_at + window.warmup;
  const until = measureFrom + window.duration;
  const result = {
    ops: 0, events: 0, errors: 0, conflicts: 0, latencies_ms: [], cpu_s: 0, duration_s: window.duration,
    first_error: '',
  };
  const cpu = {};
  const sampler = (async () => {
    await sleepUntil(measureFrom);
    cpu.from = cpuSeconds();
    await sleepUntil(until);
    cpu.until = cpuSeconds();
  })();
  let n = 0;
  const client = async () => {
    for (;;) {
      const startedWall = now();
      if (startedWall >= until) return;
      n += 1;
      const t0 = performance.now();
      let outcome = 'ok';
      try {
        await store.appendToStream(stream(), [{ type: 'BenchEvent', data: payload(n) }]);
      } catch (err) {
        outcome = `${err?.name ?? 'Error'}: ${err?.message ?? err}`;
      }
      const elapsed = performance.now() - t0;
      const endedWall = startedWall + elapsed / 1000;
      if (endedWall < measureFrom || endedWall > until) continue;
      result.ops += 1;
      result.latencies_ms.push(elapsed);
      if (outcome === 'ok') {
        result.events += 1;
      } else {
        result.errors += 1;
        if (!result.first_error) result.first_error = outcome.slice(0, 300);
      }
    }
  };
  await sleepUntil(window.begin_at);
  await Promise.all([...Array.from({ length: clients }, client), sampler]);
  result.cpu_s = (cpu.until ?? 0) - (cpu.from ?? 0);
  // keep the connections a little past the window: the harness samples PostgreSQL's backends at
  // its end, and one that has exited is not counted (benchmarks/common.py, LINGER_S)
  await sleepUntil(until + 0.5);
  await store.close();
  await pool.end().catch(() => {});
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err) => {
  process.stderr.write(`emmettload: ${err?.stack ?? err}\n`);
  process.exit(2);
});
