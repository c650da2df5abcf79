import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { access, mkdir, readdir, symlink } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { DownloadJob, MultiFileDownloadJob } from "../src/index.js";
import { DownloadWorker, RedisDownloadQueue } from "../src/redis/index.js";
import { fileSha256, tempDir } from "./helpers/fs.js";
import { startHub } from "./helpers/hub.js";
import { type Origin, sha256Hex, startOrigin } from "./helpers/origin.js";
import { type RedisServer, redisPackage, scanAll, startRedis } from "./helpers/redis.js";

const SECRET = "a-shared-secret-of-enough-length";

describe("RedisDownloadQueue and DownloadWorker (in one process, real redis-server)", {
  skip: redisPackage.skip,
}, () => {
  let origin: Origin;
  let redis: RedisServer;
  let queueName = 0;
  const closers: (() => Promise<void>)[] = [];

  before(async () => {
    redisPackage.require();
    origin = await startOrigin();
    redis = await startRedis();
  });
  after(async () => {
    for (const close of closers.reverse()) await close();
    await redis?.stop();
    await origin?.close();
  });

  /** A queue name of its own per test, so tests never see each other's jobs. */
  function names(): { queueName: string } {
    return { queueName: `t${++queueName}` };
  }
  function apiNode(shared: { queueName: string }, extra: { secret?: string; root?: string } = {}) {
    const queue = new RedisDownloadQueue({ redis: redis.url, ...shared, ...extra });
    closers.push(() => queue.stop());
    return queue;
  }
  async function worker(
    shared: { queueName: string },
    root: string,
    extra: Partial<ConstructorParameters<typeof DownloadWorker>[0]> = {},
  ) {
    const w = new DownloadWorker({ redis: redis.url, ...shared, root, concurrency: 2, lockDurationMs: 2000, ...extra });
    closers.push(() => w.close());
    await w.start();
    return w;
  }

  test("a job queued on an API node is fetched by a worker, byte-exact, with the same events and JSON", async (t) => {
    const root = await tempDir(t);
    const shared = names();
    const queue = apiNode(shared);
    const route = origin.route("/redis/one.bin", { size: 3_000_000, throttleBytesPerSec: 6_000_000 });
    const events: string[] = [];
    for (const name of ["download_started", "download_progress", "download_complete"] as const) {
      queue.on(name, (payload: { source: string }) => {
        if (events.at(-1) !== name) events.push(name);
        assert.equal(payload.source, route.url);
      });
    }
    const calls: string[] = [];
    const job = await queue.download({
      source: route.url,
      dest: "models/",
      onStart: () => calls.push("start"),
      onComplete: () => calls.push("complete"),
    });
    assert.equal(job.status, "waiting");
    assert.equal(typeof job.id, "number");
    await worker(shared, root);
    const done = (await queue.waitForJob(job, { timeoutMs: 20_000 })) as DownloadJob;
    assert.equal(done.status, "completed");
    assert.equal(done.downloadPath, join("models", "one.bin"));
    assert.equal(done.bytes, route.size);
    assert.equal(await fileSha256(join(root, "models", "one.bin")), await route.sha256());
    assert.deepEqual(events, ["download_started", "download_progress", "download_complete"]);
    await waitUntil(() => calls.length === 2);
    assert.deepEqual(calls, ["start", "complete"]);
    const wire = JSON.parse(JSON.stringify(done));
    assert.equal(wire.download_path, join("models", "one.bin"));
    assert.equal(wire.total_bytes, route.size);
    assert.equal(wire.status, "completed");
    const again = await queue.download({ source: route.url, dest: "models/" });
    assert.ok(again.id > job.id, "ids never repeat");
  });

  test("priorities hold across the queue: lower first, FIFO among equals", async (t) => {
    const root = await tempDir(t);
    const shared = names();
    const queue = apiNode(shared);
    const priorities = [5, 1, 5, 3, 1, 9, 3, 0, -4, 5];
    const jobs: DownloadJob[] = [];
    for (const [i, priority] of priorities.entries()) {
      const route = origin.route(`/redis/prio/${i}.bin`, { size: 2000 });
      jobs.push(await queue.download({ source: route.url, dest: `p/${i}.bin`, priority }));
    }
    const started: number[] = [];
    queue.on("download_started", (payload) => started.push(payload.id));
    await worker(shared, root, { concurrency: 1 });
    await queue.join();
    const expected = [...jobs].sort((a, b) => a.priority - b.priority || a.id - b.id).map((job) => job.id);
    assert.deepEqual(started, expected);
  });

  test("cancel stops a running job on its worker within a second and deletes the partial; pause keeps it", async (t) => {
    const root = await tempDir(t);
    const shared = names();
    const queue = apiNode(shared);
    await worker(shared, root);
    const slow = origin.route("/redis/cancel.bin", { size: 20_000_000, throttleBytesPerSec: 1_000_000 });
    const job = await queue.download({ source: slow.url, dest: "c/cancel.bin" });
    await waitUntil(async () => ((await queue.idToJob(job.id)) as DownloadJob).bytes > 200_000);
    const asked = Date.now();
    await queue.cancelJob(job.id);
    const cancelled = (await queue.idToJob(job.id)) as DownloadJob;
    assert.equal(cancelled.status, "cancelled");
    assert.ok(Date.now() - asked < 1000, `cancel took ${Date.now() - asked} ms`);
    await waitUntil(async () => (await readdir(join(root, "c"))).length === 0);
    const bytesAtCancel = slow.bodyBytes;
    await sleep(300);
    assert.ok(slow.bodyBytes - bytesAtCancel < 400_000, "the transfer stopped");

    const paused = origin.route("/redis/pause.bin", { size: 3_000_000, throttleBytesPerSec: 1_500_000 });
    const second = await queue.download({ source: paused.url, dest: "c/pause.bin" });
    await waitUntil(async () => ((await queue.idToJob(second.id)) as DownloadJob).bytes > 300_000);
    await queue.pauseJob(second);
    const stopped = (await queue.idToJob(second.id)) as DownloadJob;
    assert.equal(stopped.status, "paused");
    assert.ok((await readdir(join(root, "c"))).some((name) => name.startsWith("pause.bin.downloading")));
    paused.update({ throttleBytesPerSec: undefined });
    await queue.resumeJob(second);
    const done = (await queue.waitForJob(second, { timeoutMs: 20_000 })) as DownloadJob;
    assert.equal(done.status, "completed");
    assert.equal(await fileSha256(join(root, "c", "pause.bin")), await paused.sha256());
    assert.ok(
      paused.requests.some((request) => /^bytes=[1-9]/.test(String(request.headers.range))),
      "resumed with a Range request",
    );
  });

  test("a multi-file job fans out across workers and completes when every part has", async (t) => {
    const root = await tempDir(t);
    const shared = names();
    const queue = apiNode(shared);
    const parts = Array.from({ length: 6 }, (_, i) => ({
      route: origin.route(`/redis/multi/${i}.bin`, { size: 400_000, throttleBytesPerSec: 2_000_000 }),
      path: `sd/part-${i}.bin`,
    }));
    const job = await queue.multifileDownload({
      parts: parts.map((part) => ({ url: part.route.url, path: part.path })),
      dest: "multi",
    });
    assert.equal(job.downloadParts.length, 6);
    const a = await worker(shared, root);
    const b = await worker(shared, root);
    const ranBy = new Map<string, number>();
    for (const [name, w] of [
      ["a", a],
      ["b", b],
    ] as const) {
      w.on("download_complete", () => ranBy.set(name, (ranBy.get(name) ?? 0) + 1));
    }
    const done = (await queue.waitForJob(job, { timeoutMs: 20_000 })) as MultiFileDownloadJob;
    assert.equal(done.status, "completed");
    assert.equal(done.downloadPath, join("multi", "sd"));
    assert.equal(ranBy.size, 2, `both workers ran parts: ${JSON.stringify([...ranBy])}`);
    for (const part of parts) assert.equal(await fileSha256(join(root, "multi", part.path)), await part.route.sha256());
  });

  test("a multi-file job's maxBytesPerSecond caps each of its parts on the workers", async (t) => {
    const root = await tempDir(t);
    const shared = names();
    const queue = apiNode(shared);
    const parts = [0, 1].map((i) => origin.route(`/redis/capped/${i}.bin`, { size: 300_000 }));
    await worker(shared, root);
    const started = Date.now();
    const job = await queue.multifileDownload({
      parts: parts.map((route, i) => ({ url: route.url, path: `${i}.bin` })),
      dest: "capped",
      maxBytesPerSecond: 200_000,
    });
    const done = (await queue.waitForJob(job, { timeoutMs: 20_000 })) as MultiFileDownloadJob;
    assert.equal(done.status, "completed");
    // 300 kB at 200 kB/s: at least a second per part even after the limiter's first burst.
    assert.ok(Date.now() - started >= 900, `took ${Date.now() - started} ms`);
    for (const [i, route] of parts.entries()) {
      assert.equal(await fileSha256(join(root, "capped", `${i}.bin`)), await route.sha256());
    }
  });

  test("an hf:// repo is planned on the API node and its files fan out to the workers, checked by sha256", async (t) => {
    const hub = await startHub({ pageSize: 2 });
    t.after(() => hub.close());
    const files = {
      "model_index.json": "{}",
      "unet/diffusion_pytorch_model.safetensors": Buffer.alloc(300_000, 3),
      "vae/diffusion_pytorch_model.safetensors": Buffer.alloc(200_000, 4),
      "text_encoder/model.safetensors": Buffer.alloc(100_000, 5),
    };
    hub.repo("org/shared-sd", { files });
    hub.cdnBytesPerSec = 2_000_000;
    const env = { HF_ENDPOINT: process.env.HF_ENDPOINT, HF_TOKEN_PATH: process.env.HF_TOKEN_PATH };
    process.env.HF_ENDPOINT = hub.url;
    process.env.HF_TOKEN_PATH = "/nonexistent/dlqueue-test-token";
    t.after(() => Object.assign(process.env, env));
    const root = await tempDir(t);
    const shared = names();
    const queue = apiNode(shared);
    const job = await queue.modelDownload({ source: "hf://org/shared-sd", dest: "models/sd" });
    assert.equal(job.downloadParts.length, 4);
    assert.match(String(job.commit), /^[0-9a-f]{40}$/);
    const a = await worker(shared, root);
    const b = await worker(shared, root);
    const ranBy = new Set<string>();
    a.on("download_complete", () => ranBy.add("a"));
    b.on("download_complete", () => ranBy.add("b"));
    const done = (await queue.waitForJob(job, { timeoutMs: 20_000 })) as MultiFileDownloadJob;
    assert.equal(done.status, "completed");
    assert.equal(JSON.parse(JSON.stringify(done)).snapshot_path, join("models", "sd"));
    assert.equal(ranBy.size, 2, "both workers fetched files");
    for (const [path, content] of Object.entries(files)) {
      assert.equal(await fileSha256(join(root, "models", "sd", path)), sha256Hex(content));
    }
  });

  test("a worker that closes puts its running job back; another resumes it from the partial with a Range request", async (t) => {
    const root = await tempDir(t);
    const shared = names();
    const queue = apiNode(shared);
    const route = origin.route("/redis/handover.bin", { size: 4_000_000, throttleBytesPerSec: 2_000_000 });
    const job = await queue.download({ source: route.url, dest: "h/handover.bin" });
    const first = await worker(shared, root);
    await waitUntil(async () => ((await queue.idToJob(job.id)) as DownloadJob).bytes > 500_000);
    await first.close();
    const back = (await queue.idToJob(job.id)) as DownloadJob;
    assert.equal(back.status, "waiting");
    assert.ok(back.bytes > 0);
    route.update({ throttleBytesPerSec: undefined });
    await worker(shared, root);
    const done = (await queue.waitForJob(job, { timeoutMs: 20_000 })) as DownloadJob;
    assert.equal(done.status, "completed");
    assert.equal(await fileSha256(join(root, "h", "handover.bin")), await route.sha256());
    const resumed = route.requests.at(-1);
    assert.match(String(resumed?.headers.range), /^bytes=[1-9]\d*-$/);
  });

  test("a file another live process still writes holds its job back instead of failing it", async (t) => {
    const root = await tempDir(t);
    const shared = names();
    const queue = apiNode(shared);
    const route = origin.route("/redis/locked.bin", { size: 200_000 });
    const holder = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"], { stdio: "ignore" });
    t.after(() => holder.kill("SIGKILL"));
    await mkdir(join(root, "l"), { recursive: true });
    await symlink(`${hostname()}:${holder.pid}`, join(root, "l", "locked.bin.downloading.lock"));
    const job = await queue.download({ source: route.url, dest: "l/locked.bin" });
    await worker(shared, root);
    await sleep(1500);
    const held = (await queue.idToJob(job.id)) as DownloadJob;
    assert.equal(held.status, "waiting", `${held.errorType}: ${held.error}`);
    holder.kill("SIGKILL");
    await once(holder, "exit");
    const done = (await queue.waitForJob(job, { timeoutMs: 20_000 })) as DownloadJob;
    assert.equal(done.status, "completed");
    assert.equal(await fileSha256(join(root, "l", "locked.bin")), await route.sha256());
  });

  test("a per-job token is refused without the shared secret, and sealed with it: never in Redis in clear", async (t) => {
    const root = await tempDir(t);
    const shared = names();
    const token = "hf_secretTOKENvalue1234567890";
    const route = origin.route("/redis/private.bin", { size: 50_000, requireToken: token });
    const open = apiNode(shared);
    await assert.rejects(open.download({ source: route.url, dest: "x.bin", accessToken: token }), {
      code: "DLQ_ERR_SECRET_REQUIRED",
    });
    await assert.rejects(
      open.download({ source: route.url, dest: "x.bin", headers: { Authorization: `Bearer ${token}` } }),
      { code: "DLQ_ERR_SECRET_REQUIRED" },
    );
    const queue = apiNode(shared, { secret: SECRET });
    const job = await queue.download({ source: route.url, dest: "x.bin", accessToken: token });
    await worker(shared, root, { secret: SECRET });
    const done = (await queue.waitForJob(job, { timeoutMs: 20_000 })) as DownloadJob;
    assert.equal(done.status, "completed", done.error);
    assert.equal(await fileSha256(join(root, "x.bin")), await route.sha256());
    const everything = JSON.stringify(await scanAll(redis.url));
    assert.ok(everything.includes("private.bin"), "the scan reads the job's keys");
    assert.ok(!everything.includes(token), "no token in Redis");
    assert.ok(!everything.includes(token.slice(3, 20)), "no part of it either");
  });

  test("a worker refuses a dest that leaves its root", async (t) => {
    const root = await tempDir(t);
    const shared = names();
    const queue = apiNode(shared);
    const route = origin.route("/redis/escape.bin", { size: 1000 });
    await assert.rejects(queue.download({ source: route.url, dest: "../escape.bin" }), {
      code: "DLQ_ERR_DEST_OUTSIDE_ROOT",
    });
    await assert.rejects(queue.download({ source: route.url, dest: "/etc/escape.bin" }), {
      code: "DLQ_ERR_DEST_OUTSIDE_ROOT",
    });
    const outside = await tempDir(t);
    await symlink(outside, join(root, "link"));
    const job = await queue.download({ source: route.url, dest: "link/escape.bin" });
    await worker(shared, root);
    const done = (await queue.waitForJob(job, { timeoutMs: 20_000 })) as DownloadJob;
    assert.equal(done.status, "error");
    assert.equal(done.errorType, "DestinationOutsideRootError");
    assert.equal(route.requests.length, 0);
    await assert.rejects(access(join(outside, "escape.bin")));
  });

  test("Redis unreachable: calls fail at once with DLQ_ERR_REDIS_UNAVAILABLE", async () => {
    const queue = new RedisDownloadQueue({ redis: "redis://127.0.0.1:1", ...names() });
    closers.push(() => queue.stop());
    const asked = Date.now();
    await assert.rejects(queue.listJobs(), (err: Error & { code?: string }) => {
      assert.equal(err.code, "DLQ_ERR_REDIS_UNAVAILABLE");
      assert.match(err.message, /127\.0\.0\.1:1/);
      return true;
    });
    assert.ok(Date.now() - asked < 3000);
  });
});

async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await sleep(25);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
