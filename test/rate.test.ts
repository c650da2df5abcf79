import assert from "node:assert/strict";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { DownloadQueue, InvalidArgumentError } from "../src/index.js";
import { fileSha256, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

const MiB = 1024 * 1024;
const seconds = (since: number) => (performance.now() - since) / 1000;

describe("maxBytesPerSecond", () => {
  test("a job's own limit paces its reads: 2 MB at 1 MB/s takes about 2 s (the queue's higher limit does not help)", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/rate/two.bin", { size: 2_000_000 });
    const queue = new DownloadQueue({ maxBytesPerSecond: 8_000_000, logger: memoryLogger().logger });
    const started = performance.now();
    const job = queue.download({
      source: route.url,
      dest,
      maxBytesPerSecond: 1_000_000,
    });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    const elapsed = seconds(started);
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    assert.ok(elapsed >= 1.8 && elapsed < 4, `took ${elapsed.toFixed(2)} s`);
    assert.equal(await fileSha256(join(dest, "two.bin")), await route.sha256());
  });

  test("the queue's limit is shared: two jobs under 1 MB/s together take as long as their sum", async (t) => {
    const dest = await tempDir(t);
    const routes = ["a", "b"].map((name) => origin.route(`/rate/shared-${name}.bin`, { size: 600_000 }));
    const queue = new DownloadQueue({ maxBytesPerSecond: 1_000_000, logger: memoryLogger().logger });
    const started = performance.now();
    const finished: number[] = [];
    const jobs = routes.map((route) =>
      queue.download({ source: route.url, dest, onComplete: () => finished.push(seconds(started)) }),
    );
    await queue.join();
    await queue.stop();
    for (const job of jobs) assert.equal(job.status, "completed", job.error);
    // Alone at 1 MB/s each would end after 0.6 s; sharing the budget, neither ends before about 1 s.
    assert.ok(Math.min(...finished) >= 0.9, `finished at ${finished.map((s) => s.toFixed(2))} s`);
    assert.ok(Math.max(...finished) >= 1.05 && Math.max(...finished) < 3, `finished at ${finished} s`);
    for (const route of routes) {
      assert.equal(await fileSha256(join(dest, route.key.split("/").at(-1) as string)), await route.sha256());
    }
  });

  test("segments share their job's limit: 8.4 MB over 4 connections at 8 MB/s takes about 1 s", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/rate/segments.bin", { size: 8 * MiB + 50_000 });
    const queue = new DownloadQueue({ connectionsPerFile: 4, logger: memoryLogger().logger });
    const started = performance.now();
    const job = queue.download({ source: route.url, dest, maxBytesPerSecond: 8_000_000 });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    const elapsed = seconds(started);
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    assert.ok(route.requests.filter((r) => r.headers.range).length >= 4, "fetched in segments");
    assert.ok(elapsed >= 0.95 && elapsed < 3, `took ${elapsed.toFixed(2)} s`);
    assert.equal(await fileSha256(join(dest, "segments.bin")), await route.sha256());
  });

  test("a multi-file job's limit covers all its parts together", async (t) => {
    const dest = await tempDir(t);
    const routes = ["x", "y"].map((name) => origin.route(`/rate/multi-${name}.bin`, { size: 400_000 }));
    const queue = new DownloadQueue({ logger: memoryLogger().logger });
    const started = performance.now();
    const job = queue.multifileDownload({
      parts: routes.map((route) => ({ url: route.url, path: route.key.slice(1) })),
      dest,
      maxBytesPerSecond: 1_000_000,
    });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    const elapsed = seconds(started);
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    assert.ok(elapsed >= 0.7 && elapsed < 3, `took ${elapsed.toFixed(2)} s`);
  });

  test("a paced socket is not taken for a stall: pauses longer than readTimeoutMs cause no retry", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/rate/slow.bin", { size: 80_000 });
    const { lines, logger } = memoryLogger();
    const queue = new DownloadQueue({ readTimeoutMs: 300, retryDelayMs: 10, logger });
    const job = queue.download({ source: route.url, dest, maxBytesPerSecond: 50_000 });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(
      lines.filter((line) => line.startsWith("warn")),
      [],
    );
    assert.equal(route.requests.length, 1);
    assert.equal(await fileSha256(join(dest, "slow.bin")), await route.sha256());
  });

  test("a limit that is not a positive number is refused", () => {
    assert.throws(() => new DownloadQueue({ maxBytesPerSecond: 0 }), InvalidArgumentError);
    const queue = new DownloadQueue({ logger: memoryLogger().logger });
    assert.throws(
      () => queue.download({ source: "http://127.0.0.1/x", dest: "/tmp/x", maxBytesPerSecond: Number.NaN }),
      /maxBytesPerSecond must be a positive number/,
    );
    return queue.stop();
  });
});
