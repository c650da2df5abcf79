// The shared queue's row of `npm run bench`: 1, 2 and 4 `dlqueue worker` processes (the compiled CLI, -j 5 each, one
// shared root) taking jobs from a redis-server this script starts, on
//   - N × 8 MiB from nginx (page cache, sendfile): wall time from the first enqueue to the last completion;
//   - N × 16 MiB from the test origin at 50 MB/s per connection, +20 ms per request (the throttled row's origin),
//     where more workers mean more connections and so more throughput;
//   - the enqueue rate of RedisDownloadQueue.download (~100 calls in flight, no worker running) and the Redis memory
//     each queued job takes (INFO used_memory before and after, ÷ jobs).
// Every file is checked by sha256 after each run; a missing, extra or wrong file makes the run FAILED.
//
// Run alone: `npm run bench -- --only workers` or `node --import tsx bench/workers.ts [--reps N] [--quick]`.
// Alone (and not --quick) it replaces the workers section of bench/results.md; with --embed (how bench/run.ts calls
// it) it prints the section on stdout instead.
//
// Workers' CPU is read from /proc/<pid>/stat just before the first enqueue and at the last completion, so their
// start-up and shutdown are not counted; GNU time (the other rows' measure) could only report whole lifetimes.
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { cpus, loadavg, release, totalmem } from "node:os";
import { basename, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Redis } from "ioredis";
import { RedisDownloadQueue } from "../src/redis/index.js";
import { type RedisServer, startRedis } from "../test/helpers/redis.js";
import { ensureFiles } from "./data.js";
import { measure, median, verify } from "./measure.js";
import { ensureTools, type Nginx, startNginx } from "./nginx.js";
import { writeSection } from "./sections.js";
import { DLQUEUE_CLI, DLQUEUE_DIST, TOOLS } from "./tools.js";

const repoRoot = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const out = `${repoRoot}/bench/out`;
const MiB = 1024 * 1024;

const { values: args } = parseArgs({
  options: {
    reps: { type: "string", default: "3" },
    quick: { type: "boolean", default: false },
    embed: { type: "boolean", default: false },
    workers: { type: "string", default: "1,2,4" },
  },
});
const reps = Number(args.reps);
if (!(reps >= 1)) throw new Error(`--reps ${args.reps}: want a number ≥ 1`);
const workerCounts = args.workers.split(",").map(Number);
if (!workerCounts.every((n) => Number.isInteger(n) && n >= 1)) throw new Error(`--workers ${args.workers}: e.g. 1,2,4`);
const log = (line: string) => console.error(line);

const PLAIN = args.quick ? { count: 20, size: 1 * MiB } : { count: 200, size: 8 * MiB };
const THROTTLED = args.quick ? { count: 8, size: 2 * MiB } : { count: 40, size: 16 * MiB };
const ENQUEUE_JOBS = args.quick ? 500 : 10_000;
const IN_FLIGHT = 100;
/**
 * Jobs each worker runs at once: 5 on the plain files (dlqueue's default), 1 on the throttled origin, so that each
 * worker is one 50 MB/s connection and adding workers is what adds connections.
 */
const PLAIN_JOBS_PER_WORKER = 5;
const THROTTLED_JOBS_PER_WORKER = 1;
const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());

interface Workload {
  id: string;
  title: string;
  urls: string[];
  /** Download name → sha256. */
  expected: Map<string, string>;
  bytes: number;
  /** `dlqueue worker -j`. */
  jobsPerWorker: number;
}

interface Sample {
  wall: number;
  /** user + sys of all workers together, between the first enqueue and the last completion. */
  workerCpu: number;
  redisCpu: number;
  /** Share of the whole machine's CPU time that was not idle (every process's, this harness's and others' too). */
  busy: number;
  /** The largest peak resident set of one worker (VmHWM). */
  rssMiB: number;
  /** Jobs each worker finished, as its own log lines say. */
  jobsPerWorker: number[];
}

interface Row {
  workers: number;
  samples: Sample[];
  error?: string;
}

/** user + sys seconds of a live process, all its threads, from /proc (the comm field may hold spaces). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

/** The machine's CPU time so far, all cores, and how much of it was idle (or waiting for I/O), from /proc/stat. */
function machineTicks(): { total: number; idle: number } {
  const cpu = readFileSync("/proc/stat", "utf8").split("\n")[0]?.split(/\s+/).slice(1).map(Number) ?? [];
  // user nice system idle iowait irq softirq steal: guest time is already counted in user.
  const total = cpu.slice(0, 8).reduce((a, n) => a + n, 0);
  return { total, idle: (cpu[3] ?? 0) + (cpu[4] ?? 0) };
}

function peakRssMiB(pid: number): number {
  const kB = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
  return Number(kB) / 1024;
}

interface WorkerProcess {
  pid: number;
  done: number;
  /** The last lines of its stderr, for a failure's message. */
  stderr(): string;
  stop(): Promise<void>;
}

/** `dlqueue worker` from dist/, resolved once it says it takes jobs (its BullMQ worker is connected by then). */
async function startWorker(redisUrl: string, queueName: string, root: string, jobs: number): Promise<WorkerProcess> {
  const env = { ...process.env };
  for (const name of ["HF_TOKEN", "CIVITAI_TOKEN", "DLQUEUE_SECRET", "NODE_DEBUG"]) delete env[name];
  const child: ChildProcess = spawn(
    process.execPath,
    [
      DLQUEUE_CLI,
      "worker",
      "--redis",
      redisUrl,
      "--queue",
      queueName,
      "--root",
      root,
      "--allow-private-networks",
      "-j",
      String(jobs),
    ],
    { stdio: ["ignore", "pipe", "pipe"], env },
  );
  let stderr = "";
  child.stderr?.on("data", (b: Buffer) => {
    stderr = (stderr + b.toString()).slice(-2000);
  });
  const worker: WorkerProcess = {
    pid: child.pid as number,
    done: 0,
    stderr: () => stderr.trim(),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`a worker did not start within 20 s: ${stderr}`)), 20_000);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`a worker exited before taking jobs (${signal ?? `exit ${code}`}): ${stderr.trim()}`));
    });
    lines.on("line", (line) => {
      if (line.startsWith("dlqueue worker: taking jobs")) {
        clearTimeout(timer);
        resolve();
      } else if (/^job \d+ .*: done, /.test(line)) worker.done++;
    });
  });
  return worker;
}

/** Calls `work` for 0 … count-1 with `inFlight` calls running at once; resolves with each call's time in ms. */
async function pool(count: number, inFlight: number, work: (i: number) => Promise<unknown>): Promise<number[]> {
  const times: number[] = [];
  let next = 0;
  const lane = async () => {
    while (next < count) {
      const i = next++;
      const started = performance.now();
      await work(i);
      times.push(performance.now() - started);
    }
  };
  await Promise.all(Array.from({ length: Math.min(inFlight, count) }, lane));
  return times;
}

let runs = 0;
/** One measurement: fresh workers on a fresh queue, every file queued, until the last completes; then checked. */
async function runShared(redis: RedisServer, admin: Redis, w: Workload, workers: number): Promise<Sample> {
  const queueName = `bench-${++runs}`;
  const root = await mkdtemp(`${out}/runs/workers-`);
  execFileSync("sync");
  const procs: WorkerProcess[] = [];
  const queue = new RedisDownloadQueue({ redis: redis.url, queueName });
  try {
    procs.push(
      ...(await Promise.all(
        Array.from({ length: workers }, () => startWorker(redis.url, queueName, root, w.jobsPerWorker)),
      )),
    );
    await queue.ready();
    const completed = new Set<number>();
    let failure: string | undefined;
    let lastCompletion = 0;
    let wake: () => void = () => {};
    const settled = new Promise<void>((resolve) => {
      wake = resolve;
    });
    queue.on("download_complete", ({ id }) => {
      completed.add(id);
      lastCompletion = performance.now();
      if (completed.size === w.urls.length) wake();
    });
    queue.on("download_error", ({ id, error_type, error }) => {
      failure ??= `job ${id}: ${error_type}: ${error.split("\n")[0]}`;
      wake();
    });
    const cpuBefore = procs.reduce((a, p) => a + cpuSeconds(p.pid), 0);
    const redisCpuBefore = cpuSeconds(redis.pid);
    const ticksBefore = machineTicks();
    const started = performance.now();
    await pool(w.urls.length, IN_FLIGHT, (i) => queue.download({ source: w.urls[i] as string, dest: "files/" }));
    const timeoutMs = 60_000 + (w.bytes / 10e6) * 1000;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([settled, new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
    if (failure) throw new Error(failure);
    if (completed.size < w.urls.length) {
      throw new Error(`${completed.size} of ${w.urls.length} jobs completed within ${timeoutMs / 1000} s`);
    }
    const ticks = machineTicks();
    const sample: Sample = {
      wall: (lastCompletion - started) / 1000,
      busy: 1 - (ticks.idle - ticksBefore.idle) / (ticks.total - ticksBefore.total),
      workerCpu: procs.reduce((a, p) => a + cpuSeconds(p.pid), 0) - cpuBefore,
      redisCpu: cpuSeconds(redis.pid) - redisCpuBefore,
      rssMiB: Math.max(...procs.map((p) => peakRssMiB(p.pid))),
      jobsPerWorker: [],
    };
    const statuses = new Set((await queue.listJobs()).map((job) => job.status));
    if (statuses.size !== 1 || !statuses.has("completed")) {
      throw new Error(`job statuses after the run: ${[...statuses].join(", ")}`);
    }
    const problem = await verify(join(root, "files"), w.expected);
    if (problem) throw new Error(problem);
    await Promise.all(procs.map((p) => p.stop()));
    sample.jobsPerWorker = procs.map((p) => p.done);
    return sample;
  } catch (err) {
    const stderr = procs.map((p) => p.stderr()).find(Boolean);
    throw new Error(`${(err as Error).message}${stderr ? ` (a worker's stderr: ${stderr.slice(-300)})` : ""}`);
  } finally {
    await Promise.all(procs.map((p) => p.stop()));
    await queue.stop();
    await admin.flushall();
    await rm(root, { recursive: true, force: true });
  }
}

/** The in-process queue on the same files, for reference: `dlqueue get -j 5` under GNU time, as the other rows. */
async function runGet(w: Workload): Promise<{ wall: number; cpu: number; rssMiB: number }> {
  const dir = await mkdtemp(`${out}/runs/dl-`);
  const work = await mkdtemp(`${out}/runs/work-`);
  try {
    execFileSync("sync");
    const cmd = TOOLS.cli.command({ urls: w.urls, dir, work });
    const outcome = await measure(cmd, `${work}/time.txt`, 60_000 + (w.bytes / 10e6) * 1000);
    if (!outcome.ok) throw new Error(outcome.error);
    const problem = await verify(dir, w.expected);
    if (problem) throw new Error(problem);
    return { wall: outcome.sample.wall, cpu: outcome.sample.cpu, rssMiB: outcome.sample.rssMiB };
  } finally {
    await rm(dir, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  }
}

interface EnqueueResult {
  jobs: number;
  seconds: number;
  medianMs: number;
  p99Ms: number;
  bytesPerJob: number;
  keysPerJob: number;
  listMs: number;
  /** user + sys seconds while enqueueing, of this process (the API node) and of redis-server. */
  apiCpu: number;
  redisCpu: number;
}

const usedMemory = async (admin: Redis) => Number(/^used_memory:(\d+)\r?$/m.exec(await admin.info("memory"))?.[1]);

/** 10,000 jobs through RedisDownloadQueue.download, ~100 calls in flight, no worker: rate and Redis memory. */
async function enqueue(redis: RedisServer, admin: Redis, urls: string[]): Promise<EnqueueResult> {
  const queue = new RedisDownloadQueue({ redis: redis.url, queueName: "bench-enqueue" });
  try {
    await queue.ready();
    const memoryBefore = await usedMemory(admin);
    const keysBefore = await admin.dbsize();
    const redisCpuBefore = cpuSeconds(redis.pid);
    const cpuBefore = process.cpuUsage();
    const started = performance.now();
    const times = await pool(ENQUEUE_JOBS, IN_FLIGHT, (i) =>
      queue.download({ source: urls[i % urls.length] as string, dest: "files/" }),
    );
    const seconds = (performance.now() - started) / 1000;
    const cpu = process.cpuUsage(cpuBefore);
    const redisCpu = cpuSeconds(redis.pid) - redisCpuBefore;
    const memoryAfter = await usedMemory(admin);
    const keysAfter = await admin.dbsize();
    const listStarted = performance.now();
    const listed = await queue.listJobs();
    const listMs = performance.now() - listStarted;
    if (listed.length !== ENQUEUE_JOBS || !listed.every((job) => job.status === "waiting")) {
      throw new Error(`listJobs after enqueueing ${ENQUEUE_JOBS}: ${listed.length} jobs, not all waiting`);
    }
    times.sort((a, b) => a - b);
    return {
      jobs: ENQUEUE_JOBS,
      seconds,
      medianMs: times[times.length >> 1] as number,
      p99Ms: times[Math.floor(times.length * 0.99)] as number,
      bytesPerJob: (memoryAfter - memoryBefore) / ENQUEUE_JOBS,
      keysPerJob: (keysAfter - keysBefore) / ENQUEUE_JOBS,
      listMs,
      apiCpu: (cpu.user + cpu.system) / 1e6,
      redisCpu,
    };
  } finally {
    await queue.stop();
    await admin.flushall();
  }
}

ensureTools();
const git = (...a: string[]) => spawnSync("git", a, { cwd: repoRoot, encoding: "utf8" }).stdout.trim();
// Named as the run starts, like dist/'s build below: a commit made by someone else during the run is not what ran.
const commit = git("rev-parse", "--short", "HEAD");
const dirtyAtStart = git("status", "--porcelain", "--", "src") !== "";
if (!existsSync(DLQUEUE_DIST)) execFileSync("npm", ["run", "build"], { cwd: repoRoot, stdio: "inherit" });
const benchStart = performance.now();
const loadBefore = loadavg();
await mkdir(`${out}/runs`, { recursive: true });

const pad = (i: number) => String(i).padStart(3, "0");
const dataRoot = `${out}/${args.quick ? "workers-data-quick" : "workers-data"}`;
const plainFiles = await ensureFiles(
  dataRoot,
  Array.from({ length: PLAIN.count }, (_, i) => ({ path: `f${pad(i)}.bin`, size: PLAIN.size })),
);
const redis = await startRedis();
const admin = new Redis(redis.url, { maxRetriesPerRequest: 1 });
let nginx: Nginx | undefined;
let origin: ChildProcess | undefined;
const results = new Map<Workload, { rows: Row[]; get?: { wall: number; cpu: number; rssMiB: number }[] }>();
let enqueued: EnqueueResult | undefined;
let enqueueError: string | undefined;
const sizeText = (n: number) => `${+(n / MiB).toFixed(1)} MiB`;
try {
  nginx = await startNginx(dataRoot);
  const nginxUrl = nginx.baseUrl;
  const plain: Workload = {
    id: "plain",
    title: `${PLAIN.count} × ${sizeText(PLAIN.size)} (nginx)`,
    urls: plainFiles.map((f) => `${nginxUrl}/${f.path}`),
    expected: new Map(plainFiles.map((f) => [f.path, f.sha256])),
    bytes: plainFiles.reduce((a, f) => a + f.size, 0),
    jobsPerWorker: PLAIN_JOBS_PER_WORKER,
  };
  origin = spawn(
    "node",
    ["--import", "tsx", `${repoRoot}/bench/origin-child.ts`, String(THROTTLED.size), String(THROTTLED.count)],
    { cwd: repoRoot, stdio: ["pipe", "pipe", "inherit"] },
  );
  const throttledFiles: { url: string; sha256: string }[] = [];
  for await (const line of createInterface({ input: origin.stdout as NodeJS.ReadableStream })) {
    throttledFiles.push(JSON.parse(line) as { url: string; sha256: string });
    if (throttledFiles.length === THROTTLED.count) break;
  }
  const throttled: Workload = {
    id: "throttled",
    title: `${THROTTLED.count} × ${sizeText(THROTTLED.size)}, 50 MB/s per connection, +20 ms per request (test origin)`,
    urls: throttledFiles.map((f) => f.url),
    expected: new Map(throttledFiles.map((f) => [basename(new URL(f.url).pathname), f.sha256])),
    bytes: THROTTLED.count * THROTTLED.size,
    jobsPerWorker: THROTTLED_JOBS_PER_WORKER,
  };
  log(`redis-server ${redis.url}, nginx ${nginxUrl}, throttled origin ${new URL(throttled.urls[0] as string).host}`);

  for (const w of [plain, throttled]) {
    const rows = workerCounts.map((workers): Row => ({ workers, samples: [] }));
    const get: { wall: number; cpu: number; rssMiB: number }[] = [];
    results.set(w, { rows, get });
    // Untimed, so the first timed run does not pay for a cold server, page cache or Redis.
    await runShared(redis, admin, w, 1).then(
      () => log(`${w.id} warm-up (1 worker, untimed): ok`),
      (err: Error) => log(`${w.id} warm-up (1 worker, untimed): ${err.message}`),
    );
    for (let rep = 0; rep < reps; rep++) {
      // Rotating the order each repetition spreads drift over all worker counts.
      const order = rows.map((_, i) => rows[(i + rep) % rows.length] as Row);
      for (const row of order) {
        if (row.error) continue;
        const tag = `${w.id} rep ${rep + 1}/${reps} ${row.workers} worker(s)`;
        try {
          const s = await runShared(redis, admin, w, row.workers);
          row.samples.push(s);
          log(
            `${tag}: ${s.wall.toFixed(2)} s, workers' cpu ${s.workerCpu.toFixed(2)} s, redis cpu ${s.redisCpu.toFixed(2)} s, machine busy ${(100 * s.busy).toFixed(0)} %, jobs per worker ${s.jobsPerWorker.join("/")}`,
          );
        } catch (err) {
          row.error = `rep ${rep + 1}: ${(err as Error).message}`;
          log(`${tag}: FAILED ${row.error}`);
        }
      }
      try {
        const g = await runGet(w);
        get.push(g);
        log(`${w.id} rep ${rep + 1}/${reps} get -j 5: ${g.wall.toFixed(2)} s, cpu ${g.cpu.toFixed(2)} s`);
      } catch (err) {
        log(`${w.id} rep ${rep + 1}/${reps} get -j 5: FAILED ${(err as Error).message}`);
      }
    }
  }
  try {
    enqueued = await enqueue(redis, admin, plain.urls);
    log(`enqueue: ${(enqueued.jobs / enqueued.seconds).toFixed(0)} jobs/s, ${enqueued.bytesPerJob.toFixed(0)} B/job`);
  } catch (err) {
    enqueueError = (err as Error).message;
    log(`enqueue: FAILED ${enqueueError}`);
  }
} finally {
  await nginx?.stop();
  origin?.stdin?.end();
  admin.disconnect();
  await redis.stop();
}

const fmt = (n: number, d = 2) => n.toFixed(d);
const cores = cpus().length;

const tables: string[] = [];
for (const [w, { rows, get }] of results) {
  const ok = (r: Row) => !r.error && r.samples.length > 0;
  const one = rows.find((r) => r.workers === 1 && ok(r));
  const oneWall = one ? median(one.samples.map((s) => s.wall)) : undefined;
  const oneCpu = one ? median(one.samples.map((s) => s.workerCpu)) : undefined;
  const lines = [
    `#### ${w.title}`,
    "",
    `| workers (-j ${w.jobsPerWorker} each) | median wall s | (min–max) | MB/s | speed-up vs 1 worker | workers' CPU s (sum) | CPU ÷ 1 worker | Redis CPU s | machine CPU busy | jobs per worker (min–max) | peak RSS MiB (largest worker) |`,
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const r of rows) {
    if (!ok(r)) {
      lines.push(`| ${r.workers} | **FAILED** | | | | | | | | | |`);
      continue;
    }
    const walls = r.samples.map((s) => s.wall);
    const wall = median(walls);
    const cpu = median(r.samples.map((s) => s.workerCpu));
    const jobs = r.samples.flatMap((s) => s.jobsPerWorker);
    const ratio = (x: number | undefined) => (x === undefined ? "–" : `${fmt(x)}×`);
    lines.push(
      `| ${r.workers} | ${fmt(wall)} | ${fmt(Math.min(...walls))}–${fmt(Math.max(...walls))} | ${fmt(w.bytes / 1e6 / wall, 0)} | ${ratio(oneWall && oneWall / wall)} | ${fmt(cpu)} | ${ratio(oneCpu && cpu / oneCpu)} | ${fmt(median(r.samples.map((s) => s.redisCpu)))} | ${fmt(100 * median(r.samples.map((s) => s.busy)), 0)} % | ${Math.min(...jobs)}–${Math.max(...jobs)} | ${fmt(Math.max(...r.samples.map((s) => s.rssMiB)), 0)} |`,
    );
  }
  if (get && get.length > 0) {
    const walls = get.map((g) => g.wall);
    lines.push(
      `| in-process \`dlqueue get -j 5\`, no Redis (spawn to exit) | ${fmt(median(walls))} | ${fmt(Math.min(...walls))}–${fmt(Math.max(...walls))} | ${fmt(w.bytes / 1e6 / median(walls), 0)} | ${ratio1(oneWall, median(walls))} | ${fmt(median(get.map((g) => g.cpu)))} | ${ratio1(median(get.map((g) => g.cpu)), oneCpu)} | – | – | – | ${fmt(Math.max(...get.map((g) => g.rssMiB)), 0)} |`,
    );
  }
  const failures = rows.filter((r) => r.error);
  if (failures.length) lines.push("", ...failures.map((r) => `- FAILED ${r.workers} worker(s): ${r.error}`));
  tables.push(lines.join("\n"));
}
function ratio1(numerator: number | undefined, denominator: number | undefined): string {
  return numerator === undefined || denominator === undefined ? "–" : `${fmt(numerator / denominator)}×`;
}

const enqueueText = enqueued
  ? `#### Enqueueing ${enqueued.jobs.toLocaleString("en")} jobs (RedisDownloadQueue.download, ${IN_FLIGHT} calls in flight, no worker)

| jobs/s | total s | per call, median ms | per call, p99 ms | API node CPU s | Redis CPU s | Redis memory per queued job | Redis keys per job | listJobs() of all, ms |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| ${fmt(enqueued.jobs / enqueued.seconds, 0)} | ${fmt(enqueued.seconds)} | ${fmt(enqueued.medianMs)} | ${fmt(enqueued.p99Ms)} | ${fmt(enqueued.apiCpu)} | ${fmt(enqueued.redisCpu)} | ${fmt(enqueued.bytesPerJob / 1024, 2)} KiB | ${fmt(enqueued.keysPerJob, 2)} | ${fmt(enqueued.listMs, 0)} |`
  : `#### Enqueueing ${ENQUEUE_JOBS} jobs\n\nFAILED: ${enqueueError}`;

const dirty = dirtyAtStart || git("status", "--porcelain", "--", "src") ? " (+ uncommitted changes in src/)" : "";
const version = (path: string) => (JSON.parse(readFileSync(path, "utf8")) as { version: string }).version;
const redisVersion = /v=([\d.]+)/.exec(execFileSync("redis-server", ["--version"], { encoding: "utf8" }))?.[1];
const nginxVersion = spawnSync("/usr/sbin/nginx", ["-v"], { encoding: "utf8" })
  .stderr.trim()
  .replace(/^nginx version: /, "");
const workerCommand = `node dist/bin/dlqueue.js worker --redis <redis> --queue <queue> --root <root> --allow-private-networks -j <n>`;
const section = `### Shared queue (BullMQ + Redis)

Run by \`node --import tsx bench/workers.ts\` (also \`npm run bench -- --only workers\`, and part of a full \`npm run bench\`).

- date: ${new Date().toISOString()}; repetitions: ${reps}${args.quick ? " (--quick sizes)" : ""}, worker counts in rotating order, one untimed 1-worker run per workload first; took ${fmt((performance.now() - benchStart) / 60_000, 1)} min
- dlqueue: dist/ built from commit ${commit}${dirty}; bullmq ${version(`${repoRoot}/node_modules/bullmq/package.json`)}, ioredis ${version(`${repoRoot}/node_modules/ioredis/package.json`)}; redis-server ${redisVersion} (AOF on, appendfsync everysec); node ${process.version}; ${nginxVersion}
- **CPU: ${cpus()[0]?.model} × ${cores} cores** — the workers, Redis, the server and this harness share them: ${cores} cores cannot show CPU scaling; ${Math.max(...workerCounts)} workers on them test more connections and the queue's coordination, not more processors. RAM ${fmt(totalmem() / 2 ** 30)} GiB; kernel ${release()}; load average (1/5/15 min) at start ${loadBefore.map((l) => l.toFixed(2)).join(" ")}, at end ${loadavg()
  .map((l) => l.toFixed(2))
  .join(" ")}
- each run: a fresh queue on one redis-server, N \`${workerCommand}\` processes (-j ${PLAIN_JOBS_PER_WORKER} on the plain files; -j ${THROTTLED_JOBS_PER_WORKER} on the throttled origin, one 50 MB/s connection per worker, so workers are what add connections; default fsync; one shared root on the local ext4 disk, as an NFS mount would be shared), started and connected before the clock starts; the harness (an API node, RedisDownloadQueue from src/) queues every file with ${IN_FLIGHT} \`download()\` calls in flight, and the clock stops at the last \`download_complete\` event it receives
- wall: first enqueue to last completion, seconds, median over the repetitions; MB/s = 10^6 bytes per wall second; speed-up = 1 worker's median wall ÷ this row's
- CPU: user + sys of all worker processes together (from /proc/<pid>/stat) over that same span, median; Redis CPU likewise; the server's and the harness's are not counted. Machine CPU busy: the share of all ${cores} cores' time (from /proc/stat) that was not idle over that span, whoever used it — the origin, this harness and other work on the VM included; near 100 % nothing more can run in parallel. Jobs per worker: how many each finished, over all repetitions. Peak RSS: the largest worker's VmHWM
- afterwards every job must read \`completed\` and the root must hold exactly the files, each with the right sha256 (a missing, extra or wrong file makes the run FAILED, never a number)
- the in-process row: \`dlqueue get -j 5\` on the same URLs under GNU time, as in the tables above (its wall includes Node's start, ~0.3 s); its ratio is 1 worker's wall ÷ its wall

${tables.join("\n\n")}

${enqueueText}

Enqueue: one run; the API node is this harness (src/ under tsx); each call is one INCRBY, one MULTI (record hash, index zset, open set) and BullMQ's addBulk; memory is INFO \`used_memory\` after minus before, ÷ jobs, for sources like \`http://127.0.0.1:<port>/f000.bin\` and dest \`files/\`; it includes BullMQ's event stream (capped at 10,000 entries).
`;

const BEGIN = "<!-- workers:begin -->";
const END = "<!-- workers:end -->";
if (args.embed) {
  process.stdout.write(`${BEGIN}\n${section}${END}\n`);
} else {
  const dest = args.quick ? `${out}/results-workers.md` : `${repoRoot}/bench/results.md`;
  await writeSection(dest, "workers", section);
  log(`wrote ${dest}`);
  console.log(section);
}
