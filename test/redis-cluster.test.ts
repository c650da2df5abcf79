/**
 * The shared queue as it is deployed: `dlqueue worker` processes and a `dlqueue serve --redis -j 0` API node, each its
 * own OS process (the built dist/bin/dlqueue.js: run `npm run build` first), one redis-server and the
 * origin, all on 127.0.0.1. What one process cannot show: the start order across workers, a worker killed mid-file,
 * Redis killed under running workers, and the API node's answers about jobs that other processes run.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, readdir, stat, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, type TestContext, test } from "node:test";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import type { DownloadJob } from "../src/index.js";
import { RedisDownloadQueue } from "../src/redis/index.js";
import type { RestJob } from "../src/wire.js";
import { fileSha256, listFiles, tempDir } from "./helpers/fs.js";
import { type Origin, type Route, startOrigin } from "./helpers/origin.js";
import { type RedisServer, redisPackage, scanAll, startRedis } from "./helpers/redis.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(ROOT, "dist/bin/dlqueue.js");
const API_PREFIX = "/api/v1/download_queue";
const SECRET = "an-end-to-end-secret-of-enough-length";
/** Every REST call is bounded: an API node that hangs fails the test instead of stalling the suite. */
const REQUEST_MS = 5000;
/** Slots across test 1's workers: 3 processes × -j 2. */
const SLOTS = 6;

/** Every process the suite started, SIGKILLed when it ends, whatever the tests did. */
const children = new Set<Cli>();

/** A dlqueue command in its own process, with its output kept for the assertions and for failure messages. */
class Cli {
  readonly child: ChildProcess;
  readonly pid: number;
  stdout = "";
  stderr = "";

  constructor(
    readonly name: string,
    args: string[],
    env: Record<string, string> = {},
  ) {
    const childEnv: NodeJS.ProcessEnv = { ...process.env };
    // The test runner's own settings, and secrets or tokens this machine may have, must not reach the commands.
    for (const key of [
      "NODE_OPTIONS",
      "NODE_TEST_CONTEXT",
      "NODE_DEBUG",
      "DLQUEUE_SECRET",
      "HF_TOKEN",
      "CIVITAI_TOKEN",
    ]) {
      delete childEnv[key];
    }
    this.child = spawn(process.execPath, [CLI, ...args], {
      cwd: tmpdir(),
      env: { ...childEnv, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.pid = this.child.pid as number;
    this.child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      this.stdout += chunk;
    });
    this.child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      this.stderr += chunk;
    });
    children.add(this);
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async waitFor(pattern: RegExp, timeoutMs = 20_000): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = pattern.exec(this.stdout);
      if (match) return match;
      const why = !this.alive
        ? `exited (${this.child.exitCode ?? this.child.signalCode})`
        : Date.now() > deadline
          ? `said nothing matching within ${timeoutMs} ms`
          : undefined;
      if (why) throw new Error(`${this.name} ${why}, waiting for ${pattern}:\n${this.stdout}\n${this.stderr}`);
      await sleep(25);
    }
  }

  /** SIGKILL: a crash, with no chance to hand anything back. */
  async kill(): Promise<void> {
    if (!this.alive) return;
    const gone = new Promise((done) => this.child.once("exit", done));
    this.child.kill("SIGKILL");
    await gone;
  }

  /** The shared ids of the jobs this worker printed as done. */
  doneIds(): number[] {
    return [...this.stdout.matchAll(/^job (\d+) .*: done, /gm)].map((match) => Number(match[1]));
  }
}

function startWorker(
  redisUrl: string,
  queue: string,
  root: string,
  parallel: number,
  env: Record<string, string> = {},
  lockDurationMs = 2000,
) {
  const cli = new Cli(
    `worker of ${queue}`,
    [
      "worker",
      ...["--redis", redisUrl, "--queue", queue, "--root", root, "-j", String(parallel)],
      ...["--lock-duration", String(lockDurationMs), "--allow-private-networks"],
    ],
    env,
  );
  return cli.waitFor(/taking jobs from queue/).then(() => cli);
}

interface ApiNode {
  cli: Cli;
  /** The REST API's base, without a trailing slash. */
  api: string;
}

async function startApi(
  redisUrl: string,
  queue: string,
  root: string,
  env: Record<string, string> = {},
): Promise<ApiNode> {
  const cli = new Cli(
    `API node of ${queue}`,
    [
      "serve",
      ...["--redis", redisUrl, "--queue", queue, "-j", "0", "--root", root, "--port", "0"],
      "--allow-private-networks",
    ],
    env,
  );
  const [, base] = await cli.waitFor(/listening on (http:\/\/\S+?)\/ /);
  return { cli, api: `${base}${API_PREFIX}` };
}

interface Answer<T> {
  status: number;
  body: T;
  ms: number;
}

async function rest<T = unknown>(
  url: string,
  method = "GET",
  body?: unknown,
  timeoutMs = REQUEST_MS,
): Promise<Answer<T>> {
  const started = performance.now();
  const response = await fetch(url, {
    method,
    headers: body === undefined ? undefined : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await response.text();
  return { status: response.status, body: (text ? JSON.parse(text) : undefined) as T, ms: performance.now() - started };
}

async function queueJob(api: string, request: Record<string, unknown>): Promise<RestJob> {
  const { status, body } = await rest<RestJob>(`${api}/i/`, "POST", request);
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

async function jobOf(api: string, id: number): Promise<RestJob> {
  const { status, body } = await rest<RestJob>(`${api}/i/${id}`);
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

async function listOf(api: string, timeoutMs = REQUEST_MS): Promise<RestJob[]> {
  const { status, body } = await rest<RestJob[]>(`${api}/`, "GET", undefined, timeoutMs);
  assert.equal(status, 200, JSON.stringify(body));
  return body;
}

interface StreamedEvent {
  event: string;
  data: { id: number } & Record<string, unknown>;
}

/** The API node's Server-Sent Events as they arrive, in order. */
async function openEvents(api: string): Promise<{ events: StreamedEvent[]; close: () => void }> {
  const controller = new AbortController();
  const response = await fetch(`${api}/events`, { signal: controller.signal });
  assert.equal(response.status, 200);
  const events: StreamedEvent[] = [];
  const reader = (response.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  void (async () => {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      for (let end = buffer.indexOf("\n\n"); end !== -1; end = buffer.indexOf("\n\n")) {
        const block = buffer.slice(0, end).split("\n");
        buffer = buffer.slice(end + 2);
        const event = block.find((line) => line.startsWith("event: "))?.slice(7);
        const data = block.find((line) => line.startsWith("data: "))?.slice(6);
        if (event && data) events.push({ event, data: JSON.parse(data) });
      }
    }
  })().catch(() => {});
  return { events, close: () => controller.abort() };
}

describe("the shared queue end to end: worker processes, an API node, redis-server, real sockets", {
  skip: redisPackage.skip || (!existsSync(CLI) && "run the build first: npx tsc -p tsconfig.build.json"),
}, () => {
  let origin: Origin;
  let redis: RedisServer;

  before(async () => {
    redisPackage.require();
    origin = await startOrigin();
    redis = await startRedis();
  });
  after(async () => {
    await Promise.all([...children].map((cli) => cli.kill()));
    await redis?.stop();
    await origin?.close();
  });

  test("three worker processes run 200 jobs queued on an API node in priority order, byte-exact", {
    timeout: 90_000,
  }, async (t) => {
    const root = await tempDir(t);
    const queue = "e2e-priorities";
    const { api } = await startApi(redis.url, queue, root);
    const levels = [10, -3, 5, 0, 20];
    const routes = new Map<number, Route>();
    const priority = new Map<number, number>();
    for (let i = 0; i < 200; i++) {
      // A little latency per file, so the run lasts long enough for all three workers to join in.
      const route = origin.route(`/t1/${i}.bin`, { size: 1000 + ((i * 337) % 4000), latencyMs: 20 });
      const level = levels[(i * 7) % levels.length] as number;
      const job = await queueJob(api, { source: route.url, dest: `t1/${i}.bin`, priority: level });
      routes.set(job.id, route);
      priority.set(job.id, level);
    }
    const queued = await listOf(api);
    assert.equal(queued.length, 200);
    assert.ok(queued.every((job) => job.status === "waiting"));

    const stream = await openEvents(api);
    t.after(stream.close);
    const workers = await Promise.all([0, 1, 2].map(() => startWorker(redis.url, queue, root, 2)));
    const ended = () => new Set(stream.events.filter((e) => e.event === "download_complete").map((e) => e.data.id));
    await waitUntil(
      () => ended().size === 200,
      60_000,
      () => `${ended().size} of 200 complete`,
    );

    const jobs = await listOf(api);
    assert.equal(jobs.length, 200);
    for (const job of jobs) {
      assert.equal(job.status, "completed", `job ${job.id}: ${job.error}`);
      const route = routes.get(job.id) as Route;
      assert.equal(await fileSha256(join(root, "t1", `${route.key.split("/").at(-1)}`)), await route.sha256());
    }

    const started = stream.events.filter((e) => e.event === "download_started").map((e) => e.data.id);
    assert.equal(started.length, 200, "each job started once");
    assert.equal(new Set(started).size, 200);
    // BullMQ hands jobs out strictly by (priority, FIFO). A job X can be overtaken in the start order only by jobs
    // that were handed out after X and started first, while X sat in its slot: at most the other SLOTS - 1 of them.
    const rank = new Map(
      [...priority.keys()]
        .sort((a, b) => (priority.get(a) as number) - (priority.get(b) as number) || a - b)
        .map((id, i) => [id, i]),
    );
    const overtaken: string[] = [];
    for (const [i, id] of started.entries()) {
      const ahead = started.slice(i + 1).filter((later) => (rank.get(later) as number) < (rank.get(id) as number));
      if (ahead.length > SLOTS - 1) {
        overtaken.push(`job ${id} (priority ${priority.get(id)}) started before ${ahead.length} jobs queued ahead`);
      }
    }
    assert.deepEqual(overtaken, [], `start order by priority: ${started.map((id) => priority.get(id)).join(",")}`);
    assert.equal(priority.get(started[0] as number), -3, "the highest priority starts first");
    assert.equal(priority.get(started.at(-1) as number), 20, "the lowest priority ends the run");

    const ran = workers.map((w) => w.doneIds());
    assert.ok(
      ran.every((ids) => ids.length > 0),
      `every worker ran some: ${ran.map((ids) => ids.length).join(", ")}`,
    );
    assert.deepEqual(
      ran.flat().sort((a, b) => a - b),
      [...routes.keys()].sort((a, b) => a - b),
      "each job done by exactly one worker",
    );
  });

  test("a worker SIGKILLed mid-file: another takes the job once its lock expires and resumes it with a Range request", {
    timeout: 60_000,
  }, async (t) => {
    const root = await tempDir(t);
    const queueName = "e2e-sigkill";
    const queue = new RedisDownloadQueue({ redis: redis.url, queueName });
    t.after(() => queue.stop());
    const route = origin.route("/t2/big.bin", { size: 30_000_000, throttleBytesPerSec: 3_000_000 });
    const job = await queue.download({ source: route.url, dest: "t2/big.bin" });
    const errors: number[] = [];
    queue.on("download_error", ({ id }) => errors.push(id));
    // Every status the record takes, as any client polling it sees them.
    const statuses: string[] = [];
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const { status } = await queue.idToJob(job.id);
        if (statuses.at(-1) !== status) statuses.push(status);
        if (["completed", "error", "cancelled"].includes(status)) return;
        await sleep(50);
      }
    })();
    t.after(() => {
      watching = false;
      return watcher;
    });

    const first = await startWorker(redis.url, queueName, root, 2);
    await waitUntil(async () => ((await queue.idToJob(job.id)) as DownloadJob).bytes >= 9_000_000, 20_000);
    await first.kill();
    assert.match(first.stdout, new RegExp(`^job ${job.id} .*: started from`, "m"));
    assert.deepEqual(first.doneIds(), []);
    const partials = (await readdir(join(root, "t2"))).filter((name) => name.startsWith("big.bin.downloading"));
    assert.ok(partials.includes("big.bin.downloading"), `the partial is left: ${partials}`);
    const onDisk = (await stat(join(root, "t2", "big.bin.downloading"))).size;
    // The rest unthrottled: the point is where the second worker starts, not how long the rest takes.
    route.update({ throttleBytesPerSec: undefined });
    const second = await startWorker(redis.url, queueName, root, 2);
    const done = (await queue.waitForJob(job, { timeoutMs: 30_000 })) as DownloadJob;
    await watcher;

    assert.equal(done.status, "completed");
    assert.equal(done.error, undefined);
    assert.equal(done.errorType, undefined);
    assert.deepEqual(errors, []);
    assert.equal(await fileSha256(join(root, "t2", "big.bin")), await route.sha256());
    assert.deepEqual(second.doneIds(), [job.id]);
    assert.equal(route.requests[0]?.headers.range, undefined, "the first worker started from byte 0");
    const resumedAt = /^bytes=(\d+)-$/.exec(String(route.requests.at(-1)?.headers.range));
    assert.ok(resumedAt, `the second worker sent a Range request: ${route.requests.map((r) => r.headers.range)}`);
    const from = Number(resumedAt[1]);
    assert.ok(from > 0 && from <= onDisk, `resumed at ${from}, with ${onDisk} bytes in the partial`);
    assert.deepEqual(
      statuses.filter((status, i) => !(i === 0 && status === "waiting")),
      ["running", "completed"],
    );
  });

  test("cancel and pause from the API node stop the job on the worker process; resume finishes it", {
    timeout: 60_000,
  }, async (t) => {
    const root = await tempDir(t);
    const queue = "e2e-control";
    const { api } = await startApi(redis.url, queue, root);
    await startWorker(redis.url, queue, root, 2);

    const slow = origin.route("/t3/cancel.bin", { size: 20_000_000, throttleBytesPerSec: 1_000_000 });
    const doomed = await queueJob(api, { source: slow.url, dest: "t3/cancel.bin" });
    await waitUntil(async () => (await jobOf(api, doomed.id)).bytes > 200_000, 15_000);
    const asked = performance.now();
    const cancel = await rest(`${api}/i/${doomed.id}`, "DELETE");
    assert.equal(cancel.status, 204);
    await waitUntil(
      async () => (await jobOf(api, doomed.id)).status === "cancelled",
      1000,
      () => "cancelled",
    );
    const cancelMs = performance.now() - asked;
    t.diagnostic(`cancel through the API node: cancelled ${Math.round(cancelMs)} ms after the DELETE was sent`);
    assert.ok(cancelMs < 1000, `cancel took ${cancelMs} ms`);
    const request = slow.requests.at(-1);
    await sleep(300);
    const sentAt = request?.bodyBytes;
    await sleep(700);
    assert.equal(request?.bodyBytes, sentAt, "the origin sends nothing more (1 MB/s had it gone on)");
    await waitUntil(
      async () => !(await listFiles(root)).some((path) => path.startsWith(join("t3", "cancel.bin"))),
      2000,
      async () => `files left: ${await listFiles(root)}`,
    );

    const paused = origin.route("/t3/pause.bin", { size: 3_000_000, throttleBytesPerSec: 1_000_000 });
    const second = await queueJob(api, { source: paused.url, dest: "t3/pause.bin" });
    await waitUntil(async () => (await jobOf(api, second.id)).bytes > 300_000, 15_000);
    assert.equal((await rest(`${api}/i/${second.id}/pause`, "POST")).status, 204);
    const stopped = await jobOf(api, second.id);
    assert.equal(stopped.status, "paused");
    assert.ok(stopped.bytes > 300_000 && stopped.bytes < paused.size);
    assert.ok((await readdir(join(root, "t3"))).includes("pause.bin.downloading"), "the partial is kept while paused");
    paused.update({ throttleBytesPerSec: undefined });
    assert.equal((await rest(`${api}/i/${second.id}/resume`, "POST")).status, 204);
    await waitUntil(async () => (await jobOf(api, second.id)).status === "completed", 20_000);
    assert.equal(await fileSha256(join(root, "t3", "pause.bin")), await paused.sha256());
    assert.equal(paused.requests.length, 2);
    assert.match(String(paused.requests[1]?.headers.range), /^bytes=[1-9]\d*-$/, "resumed with a Range request");
    assert.deepEqual(await listFiles(join(root, "t3")), ["pause.bin"]);
  });

  /**
   * 20 jobs in flight on two worker processes (10 s each), Redis SIGKILLed for 2.5 s and restarted on its AOF: the
   * API node answers 503 meanwhile, and afterwards every job completes once, byte-exact, with every process alive.
   */
  async function redisOutage(t: TestContext, queue: string, lockDurationMs: number): Promise<void> {
    // Its own Redis: the other tests' server stays up.
    const own = await startRedis();
    t.after(() => own.stop());
    const root = await tempDir(t);
    const node = await startApi(own.url, queue, root);
    const workers = await Promise.all([
      startWorker(own.url, queue, root, 10, {}, lockDurationMs),
      startWorker(own.url, queue, root, 10, {}, lockDurationMs),
    ]);
    const stream = await openEvents(node.api);
    t.after(stream.close);
    const routes = new Map<number, Route>();
    for (let i = 0; i < 20; i++) {
      const route = origin.route(`/${queue}/${i}.bin`, { size: 3_000_000, throttleBytesPerSec: 300_000 });
      routes.set((await queueJob(node.api, { source: route.url, dest: `t4/${i}.bin` })).id, route);
    }
    await waitUntil(
      async () => (await listOf(node.api)).every((job) => job.status === "running" && job.bytes > 0),
      15_000,
      async () => JSON.stringify((await listOf(node.api)).map((job) => [job.id, job.status, job.bytes])),
    );

    await own.kill();
    const downAt = performance.now();
    const answer = await rest<{ detail: string }>(`${node.api}/`);
    assert.equal(answer.status, 503);
    assert.match(answer.body.detail, new RegExp(`^Redis at 127\\.0\\.0\\.1:${own.port} cannot be reached`));
    const queued = await rest<{ detail: string }>(`${node.api}/i/`, "POST", {
      source: `${origin.url}/${queue}/never.bin`,
      dest: "t4/never.bin",
    });
    assert.equal(queued.status, 503);
    t.diagnostic(`while Redis is down: the job list answered 503 in ${Math.round(answer.ms)} ms`);
    await sleep(Math.max(0, 2500 - (performance.now() - downAt)));
    await own.restart();

    await waitUntil(
      async () => {
        const answered = await rest<RestJob[]>(`${node.api}/`);
        return answered.status === 200 && answered.body.every((job) => job.status === "completed");
      },
      45_000,
      async () => JSON.stringify((await rest<RestJob[]>(`${node.api}/`)).body),
    );
    const jobs = await listOf(node.api);
    assert.deepEqual(
      jobs.map((job) => job.id),
      [...routes.keys()],
      "no job lost, none added (the POST during the outage queued nothing)",
    );
    for (const job of jobs) {
      const route = routes.get(job.id) as Route;
      assert.equal(job.error, null);
      assert.equal(await fileSha256(join(root, "t4", `${route.key.split("/").at(-1)}`)), await route.sha256());
    }
    // Nothing fetched twice over: at most a resumed request's overlap on top of each file.
    for (const route of routes.values()) {
      assert.ok(route.bodyBytes < route.size * 1.5, `${route.key}: ${route.bodyBytes} bytes sent for ${route.size}`);
    }
    const files = await listFiles(root);
    assert.deepEqual(
      files,
      [...routes.values()].map((route) => join("t4", route.key.split("/").at(-1) as string)).sort(),
    );
    const completes = stream.events.filter((e) => e.event === "download_complete").map((e) => e.data.id);
    assert.equal(new Set(completes).size, completes.length, `no job completed twice: ${completes}`);
    for (const cli of [node.cli, ...workers]) assert.ok(cli.alive, `${cli.name} (pid ${cli.pid}) still runs`);
    assert.equal(new Set(workers.flatMap((w) => w.doneIds())).size, 20);
    // Each worker says Redis is gone (once), and nothing else: no job failed, nothing threw.
    for (const worker of workers) {
      const lines = worker.stderr.split("\n").filter((line) => line !== "");
      assert.ok(lines.length > 0, "the worker said Redis was unreachable");
      for (const line of lines) assert.match(line, /^dlqueue worker: warning: worker: Redis at 127\.0\.0\.1:\d+: /);
    }
  }

  test(
    "Redis SIGKILLed and restarted mid-run, down less than the workers' lock: 503 naming Redis meanwhile, then every job completes once",
    {
      timeout: 90_000,
    },
    (t) => redisOutage(t, "e2e-outage", 10_000),
  );

  test(
    "Redis down longer than the workers' lock: each job still runs on one worker at a time and completes once",
    {
      timeout: 90_000,
    },
    (t) => redisOutage(t, "e2e-long-outage", 2000),
  );

  test("a worker process that has run many jobs keeps nothing per finished job (no listener piles up)", {
    timeout: 60_000,
  }, async (t) => {
    const root = await tempDir(t);
    const queueName = "e2e-listeners";
    const queue = new RedisDownloadQueue({ redis: redis.url, queueName });
    t.after(() => queue.stop());
    const jobs: DownloadJob[] = [];
    for (let i = 0; i < 12; i++) {
      const route = origin.route(`/t8/${i}.bin`, { size: 2000 });
      jobs.push(await queue.download({ source: route.url, dest: `t8/${i}.bin` }));
    }
    const worker = await startWorker(redis.url, queueName, root, 1);
    for (const job of jobs) assert.equal((await queue.waitForJob(job, { timeoutMs: 20_000 })).status, "completed");
    assert.equal(worker.doneIds().length, 12);
    // A warning is written on the tick after it is raised; give the pipe a moment.
    await sleep(200);
    assert.equal(worker.stderr, "", "the worker wrote nothing on stderr");
  });

  test("10,000 jobs queued through the library and listed through REST; then all cancelled", {
    timeout: 120_000,
  }, async (t) => {
    const own = await startRedis();
    t.after(() => own.stop());
    const root = await tempDir(t);
    const queueName = "e2e-bulk";
    const node = await startApi(own.url, queueName, root);
    const queue = new RedisDownloadQueue({ redis: own.url, queueName });
    t.after(() => queue.stop());
    await queue.ready();
    const probe = new Redis(own.url);
    t.after(() => probe.disconnect());
    const usedMemory = async () => Number(/^used_memory:(\d+)/m.exec(await probe.info("memory"))?.[1]);
    const memoryBefore = await usedMemory();

    const source = origin.route("/t5/model.bin", { size: 1000 }).url;
    const total = 10_000;
    let next = 0;
    const enqueueStart = performance.now();
    await Promise.all(
      Array.from({ length: 100 }, async () => {
        for (let i = next++; i < total; i = next++) await queue.download({ source, dest: `bulk/${i}.bin` });
      }),
    );
    const enqueueMs = performance.now() - enqueueStart;
    const memoryAfter = await usedMemory();

    const listStart = performance.now();
    const jobs = await listOf(node.api, 60_000);
    const listMs = performance.now() - listStart;
    assert.equal(jobs.length, total);
    assert.equal(new Set(jobs.map((job) => job.id)).size, total, "ids unique");
    assert.ok(jobs.every((job) => job.status === "waiting"));
    assert.equal(new Set(jobs.map((job) => job.dest)).size, total);

    const cancelStart = performance.now();
    await queue.cancelAllJobs();
    const cancelMs = performance.now() - cancelStart;
    const cancelled = await listOf(node.api, 60_000);
    assert.equal(cancelled.length, total);
    const notCancelled = cancelled.filter((job) => job.status !== "cancelled");
    assert.deepEqual(notCancelled, []);
    assert.equal(await probe.scard(`bull:${queueName}:dlq:open`), 0, "nothing left for join() to wait on");
    t.diagnostic(
      `10,000 jobs: enqueued in ${(enqueueMs / 1000).toFixed(2)} s (${Math.round(total / (enqueueMs / 1000))} jobs/s, ` +
        `100 at a time); REST list ${Math.round(listMs)} ms; Redis used_memory ` +
        `${Math.round((memoryAfter - memoryBefore) / total)} bytes per queued job; cancelAllJobs ` +
        `${(cancelMs / 1000).toFixed(2)} s`,
    );
  });

  test("a per-job access_token is sealed with DLQUEUE_SECRET: the origin gets it, Redis never holds it", {
    timeout: 60_000,
  }, async (t) => {
    const root = await tempDir(t);
    const queue = "e2e-secret";
    const token = "hf_e2eSECRETtokenValue0123456789";
    const route = origin.route("/t6/private.bin", { size: 60_000, requireToken: token });
    const env = { DLQUEUE_SECRET: SECRET };
    const [{ api }] = await Promise.all([
      startApi(redis.url, queue, root, env),
      startWorker(redis.url, queue, root, 2, env),
    ]);
    const job = await queueJob(api, { source: route.url, dest: "t6/private.bin", access_token: token });
    await waitUntil(async () => !["waiting", "running"].includes((await jobOf(api, job.id)).status), 15_000);
    const done = await jobOf(api, job.id);
    assert.equal(done.status, "completed", `${done.error_type}: ${done.error}`);
    assert.equal(await fileSha256(join(root, "t6", "private.bin")), await route.sha256());
    assert.deepEqual(
      route.requests.map((request) => request.headers.authorization),
      [`Bearer ${token}`],
      "the origin got the token",
    );
    const everything = JSON.stringify(await scanAll(redis.url));
    assert.ok(everything.includes("/t6/private.bin"), "the scan reads the job's keys");
    assert.ok(!everything.includes(token), "no token in Redis");
    assert.ok(!everything.includes(token.slice(3, 20)), "no part of it either");

    const open = await startApi(redis.url, queue, root);
    const refused = await rest<{ detail: string }>(`${open.api}/i/`, "POST", {
      source: route.url,
      dest: "t6/again.bin",
      access_token: token,
    });
    assert.equal(refused.status, 400);
    assert.match(refused.body.detail, /DLQUEUE_SECRET/);
    assert.equal((await listOf(open.api)).length, 1, "the refused job was not queued");
  });

  test("a worker refuses a dest that leaves its --root through a symlink; the API node refuses ../ and /abs", {
    timeout: 60_000,
  }, async (t) => {
    // The API node's root has no link; the worker's does: only the worker can see where the dest really goes.
    const apiRoot = await tempDir(t);
    const workerRoot = await tempDir(t);
    const outside = await tempDir(t);
    await mkdir(join(workerRoot, "models"));
    await symlink(outside, join(workerRoot, "models", "link"));
    const queue = "e2e-escape";
    const [{ api }] = await Promise.all([
      startApi(redis.url, queue, apiRoot),
      startWorker(redis.url, queue, workerRoot, 2),
    ]);
    const route = origin.route("/t7/escape.bin", { size: 5000 });
    const job = await queueJob(api, { source: route.url, dest: "models/link/escape.bin" });
    await waitUntil(async () => !["waiting", "running"].includes((await jobOf(api, job.id)).status), 15_000);
    const failed = await jobOf(api, job.id);
    assert.equal(failed.status, "error");
    assert.equal(failed.error_type, "DestinationOutsideRootError");
    assert.equal(route.requests.length, 0, "the origin was never asked");
    assert.deepEqual(await readdir(outside), [], "nothing written outside the root");

    for (const [dest, detail] of [
      ["../x.bin", /contains "\.\."/],
      ["models/../../x.bin", /contains "\.\."/],
      [join(outside, "x.bin"), /is an absolute path/],
    ] as const) {
      const refused = await rest<{ detail: string }>(`${api}/i/`, "POST", { source: route.url, dest });
      assert.equal(refused.status, 400, dest);
      assert.match(refused.body.detail, detail);
    }
    assert.deepEqual(
      (await listOf(api)).map((listed) => listed.id),
      [job.id],
      "the refused jobs were not queued",
    );
    assert.deepEqual(await readdir(outside), []);
    assert.equal(route.requests.length, 0);
  });
});

async function waitUntil(
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  state?: () => string | Promise<string>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) {
      throw new Error(`condition not met within ${timeoutMs} ms${state ? `: ${await state()}` : ""}`);
    }
    await sleep(25);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
