import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  type DownloadJob,
  DownloadQueue,
  InvalidArgumentError,
  InvalidUrlError,
  TimeoutError,
  UnknownJobIdError,
  UnsupportedSchemeError,
} from "../src/index.js";
import { fileSha256, listFiles, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

describe("the seed's example", () => {
  // Three origins stand in for github.com, raw.githubusercontent.com and civitai.com, with the same URL shapes.
  let github: Origin;
  let raw: Origin;
  let civitai: Origin;
  before(async () => {
    [github, raw, civitai] = await Promise.all([startOrigin(), startOrigin(), startOrigin()]);
  });
  after(() => Promise.all([github.close(), raw.close(), civitai.close()]));

  test("downloads the four URLs into one folder and reports them as the seed's JSON", async (t) => {
    const dest = await tempDir(t);
    const assets = "/invoke-ai/InvokeAI/blob/main/invokeai/assets";
    const fire = raw.route("/invoke-ai/InvokeAI/main/invokeai/assets/a-painting-of-a-fire.png", { size: 666734 });
    const bird = raw.route("/invoke-ai/InvokeAI/main/invokeai/assets/birdhouse.png", { size: 774949 });
    // The real file is 719,020,768 bytes; a hundredth keeps the test fast and the shape identical.
    const model = raw.route("/civitai-cdn/152309?sig=abc", {
      size: 7_190_207,
      contentDisposition: 'attachment; filename="xl_more_art-full_v1.safetensors"',
    });
    github.route(`${assets}/a-painting-of-a-fire.png?raw=true`, { redirect: { location: fire.url } });
    github.route(`${assets}/birdhouse.png?raw=true`, { redirect: { location: bird.url } });
    civitai.route("/api/download/models/152309?type=Model&format=SafeTensor", {
      redirect: { location: model.url, status: 307 },
    });
    const urls = [
      `${github.url}${assets}/a-painting-of-a-fire.png?raw=true`,
      `${github.url}${assets}/birdhouse.png?raw=true`,
      `${github.url}${assets}/missing.png`,
      `${civitai.url}/api/download/models/152309?type=Model&format=SafeTensor`,
    ];

    const queue = new DownloadQueue({ logger: memoryLogger().logger });
    const progressSeen = new Set<number>();
    for (const url of urls) queue.download({ source: url, dest, onProgress: (job) => progressSeen.add(job.id) });
    await queue.join();
    await queue.stop();

    const jobs = queue.listJobs().map((job) => JSON.parse(JSON.stringify(job)));
    const expected = [
      { name: "a-painting-of-a-fire.png", bytes: 666734 },
      { name: "birdhouse.png", bytes: 774949 },
      undefined,
      { name: "xl_more_art-full_v1.safetensors", bytes: 7_190_207 },
    ];
    for (const [i, job] of jobs.entries()) {
      const want = expected[i];
      const common = { source: urls[i], dest, id: i, priority: 10 };
      if (want) {
        assert.deepEqual(Object.keys(job), [
          "source",
          "dest",
          "id",
          "priority",
          "status",
          "download_path",
          "job_started",
          "job_ended",
          "bytes",
          "total_bytes",
        ]);
        assert.deepEqual(
          { ...job, job_started: undefined, job_ended: undefined },
          {
            ...common,
            status: "completed",
            download_path: join(dest, want.name),
            job_started: undefined,
            job_ended: undefined,
            bytes: want.bytes,
            total_bytes: want.bytes,
          },
        );
      } else {
        assert.deepEqual(Object.keys(job), [
          "source",
          "dest",
          "id",
          "priority",
          "status",
          "job_started",
          "job_ended",
          "bytes",
          "total_bytes",
          "error_type",
          "error",
        ]);
        assert.equal(job.status, "error");
        assert.equal(job.error_type, "HTTPError(Not Found)");
        assert.match(job.error, /^HTTPError: .*404 Not Found/);
        assert.deepEqual([job.bytes, job.total_bytes], [0, 0]);
      }
      assert.match(job.job_started, ISO);
      assert.match(job.job_ended, ISO);
      assert.ok(job.job_ended >= job.job_started);
    }
    assert.deepEqual(await listFiles(dest), [
      "a-painting-of-a-fire.png",
      "birdhouse.png",
      "xl_more_art-full_v1.safetensors",
    ]);
    assert.equal(await fileSha256(join(dest, "a-painting-of-a-fire.png")), await fire.sha256());
    assert.equal(await fileSha256(join(dest, "birdhouse.png")), await bird.sha256());
    assert.equal(await fileSha256(join(dest, "xl_more_art-full_v1.safetensors")), await model.sha256());
    assert.deepEqual([...progressSeen].sort(), [0, 1, 3]);
  });
});

describe("scheduling", () => {
  let origin: Origin;
  before(async () => {
    origin = await startOrigin();
  });
  after(() => origin.close());

  test("lower priority numbers run first; equal priorities in submission order", async (t) => {
    const dest = await tempDir(t);
    const queue = new DownloadQueue({ maxParallelDownloads: 1 });
    const priorities = [10, 5, 1, 5, 10, 0];
    const started: number[] = [];
    for (const [i, priority] of priorities.entries()) {
      const route = origin.route(`/prio/${i}.bin`, { size: 1000 });
      queue.download({ source: route.url, dest, priority, onStart: (job) => started.push(job.id) });
    }
    await queue.join();
    await queue.stop();
    assert.deepEqual(started, [5, 2, 1, 3, 0, 4]);
    const served = origin.requests.filter((r) => r.path.startsWith("/prio/")).map((r) => r.path);
    assert.deepEqual(
      served,
      [5, 2, 1, 3, 0, 4].map((i) => `/prio/${i}.bin`),
    );
  });

  test("never runs more than maxParallelDownloads transfers at once, and does use them all", async (t) => {
    const dest = await tempDir(t);
    origin.resetStats();
    const queue = new DownloadQueue({ maxParallelDownloads: 3 });
    const routes = Array.from({ length: 10 }, (_, i) =>
      origin.route(`/parallel/${i}.bin`, { size: 40_000, throttleBytesPerSec: 400_000 }),
    );
    const jobs = routes.map((route) => queue.download({ source: route.url, dest }));
    await queue.join();
    await queue.stop();
    assert.equal(origin.maxConcurrent, 3);
    assert.ok(jobs.every((job) => job.status === "completed"));
    for (const [i, route] of routes.entries()) {
      assert.equal(await fileSha256(join(dest, `${i}.bin`)), await route.sha256());
    }
  });

  test("join() waits for every job; waitForJob() times out with a TimeoutError", async (t) => {
    const dest = await tempDir(t);
    const slow = origin.route("/slow.bin", { size: 100_000, throttleBytesPerSec: 200_000 });
    const queue = new DownloadQueue();
    const job = queue.download({ source: slow.url, dest });
    await assert.rejects(queue.waitForJob(job, { timeoutMs: 50 }), TimeoutError);
    assert.equal(job.status, "running");
    const finished = await queue.waitForJob(job, { timeoutMs: 10_000 });
    assert.equal(finished.status, "completed");
    await queue.join();
    await queue.stop();
  });
});

describe("job control", () => {
  let origin: Origin;
  before(async () => {
    origin = await startOrigin();
  });
  after(() => origin.close());

  test("cancelling a waiting job: status cancelled, onCancelled not onError, never requested", async (t) => {
    const dest = await tempDir(t);
    const blocker = origin.route("/blocker.bin", { size: 60_000, throttleBytesPerSec: 300_000 });
    const waiting = origin.route("/never.bin", { size: 1000 });
    const queue = new DownloadQueue({ maxParallelDownloads: 1 });
    const calls: string[] = [];
    const events: string[] = [];
    queue.on("download_cancelled", (payload) => events.push(`cancelled ${payload.id}`));
    queue.download({ source: blocker.url, dest });
    const job = queue.download({
      source: waiting.url,
      dest,
      onCancelled: () => calls.push("cancelled"),
      onError: () => calls.push("error"),
    });
    queue.cancelJob(job);
    assert.equal(job.status, "cancelled");
    assert.equal(job.cancelled, true);
    await queue.join();
    await queue.stop();
    assert.deepEqual(calls, ["cancelled"]);
    assert.deepEqual(events, [`cancelled ${job.id}`]);
    assert.equal(waiting.requests.length, 0);
    assert.deepEqual(await listFiles(dest), ["blocker.bin"]);
  });

  test("cancelling a running job stops it, deletes the partial, leaves nothing at the final path", async (t) => {
    const dest = await tempDir(t);
    const big = origin.route("/running.bin", { size: 2_000_000, throttleBytesPerSec: 500_000 });
    const queue = new DownloadQueue();
    const calls: string[] = [];
    const job = queue.download({
      source: big.url,
      dest,
      onProgress: (j) => {
        if (j.bytes > 100_000 && !j.cancelled) queue.cancelJob(j);
      },
      onCancelled: () => calls.push("cancelled"),
      onError: () => calls.push("error"),
      onComplete: () => calls.push("complete"),
    });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    await queue.stop();
    assert.equal(job.status, "cancelled");
    assert.deepEqual(calls, ["cancelled"]);
    assert.ok(job.bytes < 2_000_000, `stopped early, at ${job.bytes}`);
    assert.deepEqual(await listFiles(dest), []);
  });

  test("cancelAllJobs cancels waiting and running jobs; pruneJobs forgets finished ones", async (t) => {
    const dest = await tempDir(t);
    const queue = new DownloadQueue({ maxParallelDownloads: 2 });
    const jobs = Array.from({ length: 5 }, (_, i) =>
      queue.download({
        source: origin.route(`/all/${i}.bin`, { size: 500_000, throttleBytesPerSec: 250_000 }).url,
        dest,
      }),
    );
    await new Promise((r) => queue.once("download_started", r));
    queue.cancelAllJobs();
    await queue.join();
    assert.deepEqual(
      jobs.map((job) => job.status),
      Array(5).fill("cancelled"),
    );
    assert.deepEqual(await listFiles(dest), []);
    const done = queue.download({ source: origin.route("/after.bin", { size: 10 }).url, dest });
    await queue.waitForJob(done);
    queue.pruneJobs();
    assert.deepEqual(queue.listJobs(), []);
    assert.throws(() => queue.idToJob(done.id), UnknownJobIdError);
    await queue.stop();
  });

  test("idToJob finds a job and rejects an unknown id with a typed error", async () => {
    const queue = new DownloadQueue();
    const job = queue.download({ source: origin.route("/id.bin", { size: 10 }).url, dest: "/tmp/dlq-id-test.bin" });
    assert.equal(queue.idToJob(job.id), job);
    assert.throws(
      () => queue.idToJob(99),
      (err: Error) => err instanceof UnknownJobIdError && /99/.test(err.message),
    );
    queue.cancelJob(job);
    await queue.stop();
  });

  test("bad input throws synchronously with a stable code and queues nothing", () => {
    const queue = new DownloadQueue();
    assert.throws(() => queue.download({ source: "not a url", dest: "/tmp" }), {
      name: "InvalidUrlError",
      code: "DLQ_ERR_INVALID_URL",
    });
    assert.throws(() => queue.download({ source: "ftp://example.com/x", dest: "/tmp" }), UnsupportedSchemeError);
    assert.throws(() => queue.download({ source: "file:///etc/passwd", dest: "/tmp" }), {
      code: "DLQ_ERR_UNSUPPORTED_SCHEME",
    });
    assert.throws(() => queue.download({ source: "http://", dest: "/tmp" }), InvalidUrlError);
    assert.throws(() => queue.download({ source: "http://x/y", dest: "" }), InvalidArgumentError);
    assert.throws(() => queue.download({ source: "http://x/y", dest: "/tmp", sha256: "abc" }), InvalidArgumentError);
    assert.throws(() => new DownloadQueue({ maxParallelDownloads: 0 }), InvalidArgumentError);
    assert.deepEqual(queue.listJobs(), []);
  });

  test("a callback that throws is logged and the download goes on", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/throwing.bin", { size: 300_000, throttleBytesPerSec: 1_500_000 });
    const { lines, logger } = memoryLogger();
    const queue = new DownloadQueue({ logger });
    const job = queue.download({
      source: route.url,
      dest,
      onStart: () => {
        throw new Error("boom in onStart");
      },
      onProgress: () => {
        throw new Error("boom in onProgress");
      },
      onComplete: async () => {
        throw new Error("boom in onComplete");
      },
    });
    await queue.waitForJob(job);
    await queue.stop();
    assert.equal(job.status, "completed");
    assert.equal(await fileSha256(join(dest, "throwing.bin")), await route.sha256());
    assert.ok(lines.some((line) => line.includes("boom in onStart")));
    assert.ok(lines.some((line) => line.includes("boom in onProgress")));
    await new Promise((r) => setImmediate(r));
    assert.ok(lines.some((line) => line.includes("boom in onComplete")));
  });

  test("onProgress is throttled to about 10 per second and always reports the end", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/progress.bin", { size: 600_000, throttleBytesPerSec: 1_000_000 });
    const queue = new DownloadQueue();
    const seen: number[] = [];
    const started = performance.now();
    const job = queue.download({ source: route.url, dest, onProgress: (j) => seen.push(j.bytes) });
    await queue.waitForJob(job);
    const seconds = (performance.now() - started) / 1000;
    await queue.stop();
    assert.ok(seen.length >= 3, `at least a few updates, got ${seen.length}`);
    assert.ok(seen.length <= Math.ceil(seconds * 10) + 2, `${seen.length} updates in ${seconds.toFixed(2)} s`);
    assert.equal(seen.at(-1), 600_000);
    assert.deepEqual(
      seen,
      [...seen].sort((a, b) => a - b),
    );
  });

  test("events reach the queue's listeners and the eventBus with the seed's payload keys", async (t) => {
    const dest = await tempDir(t);
    const ok = origin.route("/events-ok.bin", { size: 50_000 });
    origin.route("/events-missing.bin", { faults: [{ kind: "status", status: 404 }] });
    const bus: { event: string; payload: Record<string, unknown> }[] = [];
    const queue = new DownloadQueue({
      maxParallelDownloads: 1,
      eventBus: { emit: (event, payload) => bus.push({ event, payload: payload as Record<string, unknown> }) },
    });
    const local: string[] = [];
    queue.on("download_complete", (payload) => local.push(`complete ${payload.id}`));
    queue.on("download_error", (payload) => local.push(`error ${payload.id}`));
    const good = queue.download({ source: ok.url, dest });
    const bad = queue.download({ source: `${origin.url}/events-missing.bin`, dest });
    await queue.join();
    await queue.stop();
    assert.deepEqual(local, [`complete ${good.id}`, `error ${bad.id}`]);
    const keysOf = (event: string) => bus.filter((e) => e.event === event).map((e) => Object.keys(e.payload).sort());
    assert.deepEqual(keysOf("download_started"), [["download_path", "id", "source"]]);
    assert.deepEqual(keysOf("download_progress").at(-1), [
      "current_bytes",
      "download_path",
      "id",
      "source",
      "total_bytes",
    ]);
    assert.deepEqual(keysOf("download_complete"), [["download_path", "id", "source", "total_bytes"]]);
    assert.deepEqual(keysOf("download_error"), [["error", "error_type", "id", "source"]]);
    const complete = bus.find((e) => e.event === "download_complete")?.payload;
    assert.deepEqual(complete, {
      id: good.id,
      source: ok.url,
      download_path: join(dest, "events-ok.bin"),
      total_bytes: 50_000,
    });
    assert.equal(bus.find((e) => e.event === "download_error")?.payload.error_type, "HTTPError(Not Found)");
  });

  test("stop() interrupts running work, keeps the partial, and a new queue resumes it with Range", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/stop.bin", { size: 1_000_000, throttleBytesPerSec: 1_000_000 });
    const target = join(dest, "model.bin");
    const first = new DownloadQueue();
    const job: DownloadJob = first.download({ source: route.url, dest: target });
    await new Promise<void>((resolve) => {
      first.on("download_progress", (p) => p.current_bytes > 200_000 && resolve());
    });
    await first.stop();
    assert.equal(job.status, "waiting");
    assert.equal(existsSync(target), false);
    assert.ok(existsSync(`${target}.downloading`));
    assert.throws(() => first.download({ source: route.url, dest }), { code: "DLQ_ERR_QUEUE_STOPPED" });

    const second = new DownloadQueue();
    const resumed = second.download({ source: route.url, dest: target });
    await second.waitForJob(resumed);
    await second.stop();
    assert.equal(resumed.status, "completed");
    const range = route.requests.at(-1)?.headers.range;
    const offset = Number(/^bytes=(\d+)-$/.exec(String(range))?.[1]);
    assert.ok(offset >= 200_000, `resumed from ${range}`);
    assert.equal(await fileSha256(target), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["model.bin"]);
  });
});
