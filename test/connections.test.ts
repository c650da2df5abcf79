import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type DownloadJob, DownloadQueue } from "../src/index.js";
import { fileSha256, listFiles, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

const MiB = 1024 * 1024;

describe("connectionsPerFile through the queue", () => {
  test("a throttled file comes in several times faster over 8 connections, byte-exact", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/conn/model.safetensors", {
      size: 12 * MiB,
      throttleBytesPerSec: 3 * MiB,
      latencyMs: 20,
    });
    const timed = async (connectionsPerFile: number, name: string) => {
      const queue = new DownloadQueue({ connectionsPerFile, logger: memoryLogger().logger });
      const started = performance.now();
      const job = queue.download({ source: route.url, dest: join(dest, name), sha256: await route.sha256() });
      await queue.waitForJob(job, { timeoutMs: 30_000 });
      await queue.stop();
      assert.equal(job.status, "completed", job.error);
      assert.equal(job.bytes, 12 * MiB);
      return (performance.now() - started) / 1000;
    };
    origin.resetStats();
    const eight = await timed(8, "eight.bin");
    // The speed-up itself is measured by `npm run bench`; here, that the 8 ranges really ran at once, and a floor
    // loose enough for a loaded CI machine (8 throttled connections would give 8×).
    assert.ok(origin.maxConcurrent >= 8, `at most ${origin.maxConcurrent} requests at once`);
    const one = await timed(1, "one.bin");
    assert.ok(one / eight >= 2.5, `1 connection ${one.toFixed(2)} s, 8 connections ${eight.toFixed(2)} s`);
    assert.equal(await fileSha256(join(dest, "eight.bin")), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["eight.bin", "one.bin"]);
  });

  test("the queue's timeouts and retry delay reach the segments: a slow answer and a stall cost well under a second", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/conn/slow.bin", {
      size: 9 * MiB,
      faults: [null, { kind: "delay", ms: 5_000 }, { kind: "stall", afterBytes: 1000 }],
    });
    const { lines, logger } = memoryLogger();
    const queue = new DownloadQueue({
      connectionsPerFile: 4,
      headersTimeoutMs: 300,
      readTimeoutMs: 300,
      retryDelayMs: 10,
      maxRetryDelayMs: 20,
      logger,
    });
    const started = performance.now();
    const job = queue.download({ source: route.url, dest });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    const elapsed = (performance.now() - started) / 1000;
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    assert.ok(elapsed < 2, `took ${elapsed.toFixed(2)} s`);
    const warnings = lines.filter((line) => line.startsWith("warn: retry"));
    assert.equal(warnings.length, 2, warnings.join("\n"));
    assert.ok(
      warnings.every((line) => /in 0\.0 s/.test(line)),
      "retryDelayMs is used",
    );
    assert.equal(await fileSha256(join(dest, "slow.bin")), await route.sha256());
  });

  test("segments that drop are retried; progress and the final file are exact", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/conn/flaky.bin", {
      size: 10 * MiB,
      throttleBytesPerSec: 20 * MiB,
      faults: [null, { kind: "drop", afterBytes: 300_000 }, null, { kind: "drop", afterBytes: 10 }, { kind: "hangup" }],
    });
    const queue = new DownloadQueue({ connectionsPerFile: 4, retryDelayMs: 20, logger: memoryLogger().logger });
    const seen: number[] = [];
    const job = queue.download({ source: route.url, dest, onProgress: (j) => seen.push(j.bytes) });
    await queue.waitForJob(job, { timeoutMs: 30_000 });
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    assert.equal(seen.at(-1), 10 * MiB);
    assert.ok(route.requests.slice(1).every((r) => /^bytes=\d+-\d+$/.test(String(r.headers.range))));
    assert.equal(await fileSha256(join(dest, "flaky.bin")), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["flaky.bin"]);
  });

  test("a server that ignores Range falls back to one stream", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/conn/norange.bin", { size: 9 * MiB, acceptRanges: false });
    const queue = new DownloadQueue({ connectionsPerFile: 8, logger: memoryLogger().logger });
    const job = queue.download({ source: route.url, dest });
    await queue.waitForJob(job, { timeoutMs: 30_000 });
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    assert.equal(route.requests.length, 1);
    assert.equal(await fileSha256(join(dest, "norange.bin")), await route.sha256());
  });

  test("a server that claims Accept-Ranges but ignores Range is caught and fetched over one stream", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/conn/liar.bin", {
      size: 9 * MiB,
      acceptRanges: false,
      headers: { "Accept-Ranges": "bytes" },
    });
    const { lines, logger } = memoryLogger();
    const queue = new DownloadQueue({ connectionsPerFile: 4, logger });
    const job = queue.download({ source: route.url, dest });
    await queue.waitForJob(job, { timeoutMs: 30_000 });
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    assert.ok(
      lines.some((line) => line.includes("falling back to one connection")),
      lines.join("\n"),
    );
    assert.ok(route.requests.some((r) => r.headers.range !== undefined));
    assert.equal(route.requests.at(-1)?.headers.range, undefined);
    assert.equal(await fileSha256(join(dest, "liar.bin")), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["liar.bin"]);
  });

  test("maxParallelDownloads counts jobs, not connections", async (t) => {
    const dest = await tempDir(t);
    origin.resetStats();
    const routes = [1, 2, 3].map((i) =>
      origin.route(`/conn/count-${i}.bin`, { size: 9 * MiB, throttleBytesPerSec: 12 * MiB }),
    );
    const queue = new DownloadQueue({ maxParallelDownloads: 1, connectionsPerFile: 3, logger: memoryLogger().logger });
    const jobs = routes.map((route) => queue.download({ source: route.url, dest }));
    await queue.join();
    await queue.stop();
    assert.ok(jobs.every((job) => job.status === "completed"));
    assert.ok(origin.maxConcurrent >= 2 && origin.maxConcurrent <= 3, `max concurrent ${origin.maxConcurrent}`);
    for (const [i, route] of routes.entries()) {
      assert.equal(await fileSha256(join(dest, `count-${i + 1}.bin`)), await route.sha256());
    }
  });

  for (const connectionsPerFile of [1, 4]) {
    test(`a preallocated partial whose ranges sidecar is gone is fetched again, never taken as whole (${connectionsPerFile} connection(s))`, async (t) => {
      // What a power cut can leave: the segmented partial at full size (zeros where nothing landed) and its
      // validators, but not the sidecar that said which ranges were on disk.
      const dest = await tempDir(t);
      const route = origin.route(`/conn/lost-sidecar-${connectionsPerFile}.bin`, { size: 9 * MiB, etag: '"v1"' });
      const final = join(dest, "model.bin");
      await writeFile(`${final}.downloading`, Buffer.alloc(9 * MiB));
      await writeFile(
        `${final}.downloading.json`,
        JSON.stringify({ source: route.url, etag: '"v1"', totalBytes: 9 * MiB, segmented: true }),
      );
      const queue = new DownloadQueue({ connectionsPerFile, logger: memoryLogger().logger });
      const job = queue.download({ source: route.url, dest: final });
      await queue.waitForJob(job, { timeoutMs: 30_000 });
      await queue.stop();
      assert.equal(job.status, "completed", job.error);
      assert.equal(await fileSha256(final), await route.sha256());
      assert.equal(route.requests[0]?.headers.range, undefined, "the first request starts over, it does not resume");
    });
  }
});

describe("connections by default", () => {
  const ranged = (route: { requests: { headers: { range?: string } }[] }) =>
    route.requests.filter((r) => r.headers.range !== undefined).length;
  type Route = ReturnType<Origin["route"]>;

  /**
   * Waits until `streaming()` says the first large file is down to one stream, then queues `next` and lets both
   * finish, byte-exact; the first must outlast the next. Returns the next file's range requests: one per connection,
   * i.e. how many slots it found idle.
   */
  async function nextFileAfter(
    queue: DownloadQueue,
    first: { job: DownloadJob; route: Route },
    next: Route,
    dest: string,
    streaming: () => boolean,
  ): Promise<number> {
    for (const started = performance.now(); !streaming(); ) {
      assert.ok(performance.now() - started < 10_000, "the first file went on over one stream");
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const nextJob = queue.download({ source: next.url, dest });
    await queue.waitForJob(nextJob, { timeoutMs: 30_000 });
    assert.equal(first.job.status, "running", "the first file was still running when the next one finished");
    await queue.waitForJob(first.job, { timeoutMs: 30_000 });
    await queue.stop();
    assert.equal(first.job.status, "completed", first.job.error);
    assert.equal(nextJob.status, "completed", nextJob.error);
    for (const route of [first.route, next]) {
      assert.equal(await fileSha256(join(dest, route.key.split("/").at(-1) as string)), await route.sha256());
    }
    return ranged(next);
  }

  test("a 64 MiB file alone comes over 4 connections; a 63 MiB one, and any file with connectionsPerFile: 1, over one", async (t) => {
    const dest = await tempDir(t);
    const big = origin.route("/auto/big.bin", { size: 64 * MiB });
    const below = origin.route("/auto/below.bin", { size: 63 * MiB });
    const pinned = origin.route("/auto/pinned.bin", { size: 64 * MiB });
    const fetch = async (route: typeof big, options: { connectionsPerFile?: number } = {}) => {
      const queue = new DownloadQueue({ ...options, logger: memoryLogger().logger });
      const job = queue.download({ source: route.url, dest, sha256: await route.sha256() });
      await queue.waitForJob(job, { timeoutMs: 30_000 });
      await queue.stop();
      assert.equal(job.status, "completed", job.error);
    };
    await fetch(big);
    await fetch(below);
    await fetch(pinned, { connectionsPerFile: 1 });
    assert.equal(ranged(big), 4, "one range request per connection");
    assert.equal(ranged(below), 0);
    assert.equal(ranged(pinned), 0);
    assert.deepEqual(await listFiles(dest), ["below.bin", "big.bin", "pinned.bin"]);
  });

  test("large files that fill the queue's slots take one connection each", async (t) => {
    const dest = await tempDir(t);
    // Paced alike, so they end together: none is left with enough to take the slots the others free (see below).
    const large = [1, 2, 3].map((i) =>
      origin.route(`/auto/share-${i}.bin`, { size: 64 * MiB, throttleBytesPerSec: 128 * MiB }),
    );
    const queue = new DownloadQueue({ maxParallelDownloads: 3, logger: memoryLogger().logger });
    const jobs = large.map((route) => queue.download({ source: route.url, dest }));
    for (const job of jobs) await queue.waitForJob(job, { timeoutMs: 30_000 });
    await queue.stop();
    assert.ok(
      jobs.every((job) => job.status === "completed"),
      jobs.map((j) => j.error).join("\n"),
    );
    assert.deepEqual(large.map(ranged), [0, 0, 0]);
    for (const [i, route] of large.entries()) {
      assert.equal(await fileSha256(join(dest, `share-${i + 1}.bin`)), await route.sha256());
    }
  });

  test("a large file that started with a spare slot gets the slot a finished job frees, up to 4 connections", async (t) => {
    const dest = await tempDir(t);
    // Throttled, so the large file is still running when the small one ends.
    const large = origin.route("/auto/grow.bin", { size: 64 * MiB, throttleBytesPerSec: 16 * MiB });
    const small = origin.route("/auto/grow-small.bin", { size: 1024, faults: [{ kind: "delay", ms: 300 }] });
    const queue = new DownloadQueue({ maxParallelDownloads: 3, logger: memoryLogger().logger });
    const [largeJob, smallJob] = [large, small].map((route) => queue.download({ source: route.url, dest }));
    await queue.waitForJob(smallJob as DownloadJob, { timeoutMs: 30_000 });
    // 3 slots, 2 jobs: the large file started over 2 connections; the small one's slot becomes a third.
    origin.resetStats();
    await queue.waitForJob(largeJob as DownloadJob, { timeoutMs: 30_000 });
    await queue.stop();
    assert.equal(smallJob?.status, "completed", smallJob?.error);
    assert.equal(largeJob?.status, "completed", largeJob?.error);
    assert.equal(origin.maxConcurrent, 3);
    assert.equal(await fileSha256(join(dest, "grow.bin")), await large.sha256());
  });

  test("a large file that started over one connection, every slot taken, gets the slots the others free", async (t) => {
    const dest = await tempDir(t);
    // Throttled per connection, as CDNs do: the only way to fetch the large file faster is more connections.
    const busy = [1, 2].map((i) =>
      origin.route(`/auto/busy-${i}.bin`, { size: 1024, faults: [{ kind: "delay", ms: 400 }] }),
    );
    const large = origin.route("/auto/grow-from-one.bin", { size: 64 * MiB, throttleBytesPerSec: 16 * MiB });
    const queue = new DownloadQueue({ maxParallelDownloads: 3, logger: memoryLogger().logger });
    const busyJobs = busy.map((route) => queue.download({ source: route.url, dest }));
    const largeJob = queue.download({ source: large.url, dest, sha256: await large.sha256() });
    for (const job of busyJobs) await queue.waitForJob(job, { timeoutMs: 30_000 });
    assert.equal(largeJob.status, "running", "the large file was still running when the slots freed up");
    // 3 slots, 3 jobs: the large file started over one connection; the two freed slots become two more.
    origin.resetStats();
    await queue.waitForJob(largeJob, { timeoutMs: 30_000 });
    await queue.stop();
    assert.equal(largeJob.status, "completed", largeJob.error);
    assert.equal(origin.maxConcurrent, 3, "requests at once for the large file once the others had finished");
    assert.equal(await fileSha256(join(dest, "grow-from-one.bin")), await large.sha256());
  });

  test("a large file that went on in segments and then met a server refusing ranges gives the slot back", async (t) => {
    const dest = await tempDir(t);
    const busy = [1, 2].map((i) =>
      origin.route(`/auto/busy-flip-${i}.bin`, { size: 1024, faults: [{ kind: "delay", ms: 400 }] }),
    );
    const flip = origin.route("/auto/flip.bin", { size: 64 * MiB, throttleBytesPerSec: 16 * MiB });
    const next = origin.route("/auto/after-flip.bin", { size: 64 * MiB });
    const queue = new DownloadQueue({ maxParallelDownloads: 3, logger: memoryLogger().logger });
    const busyJobs = busy.map((route) => queue.download({ source: route.url, dest }));
    const flipJob = queue.download({ source: flip.url, dest, sha256: await flip.sha256() });
    for (const job of busyJobs) await queue.waitForJob(job, { timeoutMs: 30_000 });
    // The freed slots are borrowed for segments, but the request that resumes in them gets the whole file (a 200).
    flip.update({ acceptRanges: false });
    const restarted = () => ranged(flip) > 0;
    // 3 slots, 2 running jobs: one to lend to the next file, unless the first still held the slots it borrowed.
    assert.equal(
      await nextFileAfter(queue, { job: flipJob, route: flip }, next, dest, restarted),
      2,
      "one range request per connection: the next file borrowed the idle slot",
    );
  });

  test("a large file that falls back to one stream gives its borrowed slots back: the next large file borrows them", async (t) => {
    const dest = await tempDir(t);
    // Claims ranges, answers each with the whole file: caught at the first segment, then fetched over one stream,
    // throttled so that it is still running when the next file starts.
    const liar = origin.route("/auto/liar.bin", {
      size: 64 * MiB,
      acceptRanges: false,
      headers: { "Accept-Ranges": "bytes" },
      throttleBytesPerSec: 16 * MiB,
    });
    const next = origin.route("/auto/after-liar.bin", { size: 64 * MiB });
    const queue = new DownloadQueue({ logger: memoryLogger().logger });
    const liarJob = queue.download({ source: liar.url, dest });
    const fellBack = () => liar.requests.some((r, i) => i > 0 && r.headers.range === undefined);
    assert.equal(
      await nextFileAfter(queue, { job: liarJob, route: liar }, next, dest, fellBack),
      4,
      "one range request per connection: 4 connections",
    );
  });

  test("a 429 or 503 to some of the connections leaves the rest to finish the file, without retrying them", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/auto/throttled.bin", {
      size: 16 * MiB,
      faults: [
        null,
        null,
        { kind: "status", status: 429, headers: { "retry-after": "30" } },
        { kind: "status", status: 503, headers: { "retry-after": "30" } },
      ],
    });
    const { lines, logger } = memoryLogger();
    const queue = new DownloadQueue({ connectionsPerFile: 4, logger });
    const started = performance.now();
    const job = queue.download({ source: route.url, dest, sha256: await route.sha256() });
    await queue.waitForJob(job, { timeoutMs: 30_000 });
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    // Retry-After: 30 was not waited for: the refused connections were dropped, not retried.
    assert.ok(performance.now() - started < 10_000);
    const warnings = lines.filter((line) => line.startsWith("warn:"));
    assert.equal(
      warnings.filter((line) => /HTTP (429|503) to one of its connections: going on over/.test(line)).length,
      2,
      warnings.join("\n"),
    );
    assert.equal(warnings.filter((line) => line.startsWith("warn: retry")).length, 0, warnings.join("\n"));
    assert.equal(await fileSha256(join(dest, "throttled.bin")), await route.sha256());
  });
});
