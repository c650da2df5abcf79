import assert from "node:assert/strict";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type DownloadJob, DownloadQueue, type DownloadRequest, type MultiFileDownloadJob } from "../src/index.js";
import { fileSha256, listFiles, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

/** One run of the same command: a fresh queue, one job, its events. */
async function run(
  request: Omit<DownloadRequest, "source"> & { source: string },
  options: { overwrite?: boolean } = {},
): Promise<{ job: DownloadJob; events: string[] }> {
  const queue = new DownloadQueue({ logger: memoryLogger().logger, retryDelayMs: 20, ...options });
  const events: string[] = [];
  for (const name of ["download_started", "download_progress", "download_complete"] as const) {
    queue.on(name, (payload: { total_bytes?: number }) => events.push(`${name} ${payload.total_bytes ?? ""}`));
  }
  const job = queue.download(request);
  await queue.waitForJob(job, { timeoutMs: 10_000 });
  await queue.stop();
  return { job, events };
}

/** After any default Last-Modified of the origin (2024): a newer version of a file. */
const LATER = "Wed, 01 Jan 2031 00:00:00 GMT";

describe("a finished file is not fetched again", () => {
  test("same path, same file: completed with 0 body bytes sent, the file untouched, the normal events", async (t) => {
    const dest = join(await tempDir(t), "model.bin");
    const route = origin.route("/skip/exact.bin", { size: 300_000 });
    const first = await run({ source: route.url, dest });
    assert.equal(first.job.status, "completed", first.job.error);
    const lastModified = Date.parse(String(route.lastModified));
    assert.equal((await stat(dest)).mtime.getTime(), lastModified, "the file carries the server's Last-Modified");
    const before = await readFile(dest);
    const inodeBefore = (await stat(dest)).ino;

    const second = await run({ source: route.url, dest });
    assert.equal(second.job.status, "completed", second.job.error);
    assert.equal(route.requests.length, 2);
    assert.equal(route.requests[1]?.headers.range, "bytes=300000-", "asks for what lies after the file's end");
    assert.equal(route.requests[1]?.headers["if-range"], route.lastModified, "if it is still that version");
    assert.equal(route.requests[1]?.bodyBytes, 0, "no body the second time");
    assert.equal(second.job.bytes, 300_000);
    assert.equal(second.job.totalBytes, 300_000);
    assert.equal(second.job.downloadPath, dest);
    assert.deepEqual(second.events, ["download_started ", "download_progress 300000", "download_complete 300000"]);
    assert.deepEqual(await readFile(dest), before);
    assert.equal((await stat(dest)).ino, inodeBefore, "not replaced");
  });

  test("a changed remote file is fetched again and replaces the old one only once it is whole", async (t) => {
    const dir = await tempDir(t);
    const dest = join(dir, "changing.bin");
    const route = origin.route("/skip/changing.bin", { size: 200_000 });
    await run({ source: route.url, dest });
    const old = await readFile(dest);
    route.update({ size: 400_000, seed: "v2", lastModified: LATER, throttleBytesPerSec: 1_000_000 });
    let oldSeenMidway = false;
    const second = await run({
      source: route.url,
      dest,
      onProgress: (job) => {
        if (job.bytes > 0 && job.bytes < 400_000 && !oldSeenMidway) {
          readFile(dest).then((now) => {
            oldSeenMidway ||= now.equals(old);
          });
        }
      },
    });
    assert.equal(second.job.status, "completed", second.job.error);
    assert.equal(route.requests[1]?.bodyBytes, 400_000);
    assert.equal(await fileSha256(dest), await route.sha256());
    assert.ok(oldSeenMidway, "the old file stayed whole while the new one came in");
    assert.deepEqual(await listFiles(dir), ["changing.bin"]);
  });

  test("a server without ranges: same size and Last-Modified still skip (the body cut off)", async (t) => {
    const dest = join(await tempDir(t), "plain.bin");
    const route = origin.route("/skip/no-conditional.bin", {
      size: 2_000_000,
      acceptRanges: false,
      throttleBytesPerSec: 2_000_000,
    });
    await run({ source: route.url, dest });
    const second = await run({ source: route.url, dest });
    assert.equal(second.job.status, "completed", second.job.error);
    assert.ok((route.requests[1]?.bodyBytes ?? 0) < 500_000, `sent ${route.requests[1]?.bodyBytes}`);
    assert.equal(await fileSha256(dest), await route.sha256());
  });

  test("with a sha256 the file on disk is checked without asking the server; a wrong one is fetched again", async (t) => {
    const dest = join(await tempDir(t), "checked.bin");
    const route = origin.route("/skip/sha.bin", { size: 150_000 });
    const sha256 = await route.sha256();
    await run({ source: route.url, dest, sha256 });
    const second = await run({ source: route.url, dest, sha256 });
    assert.equal(second.job.status, "completed");
    assert.equal(route.requests.length, 1, "no request at all");
    const wrong = await run({ source: route.url, dest, sha256: "0".repeat(64) });
    assert.equal(wrong.job.status, "error");
    assert.equal(wrong.job.errorType, "ChecksumMismatch");
    assert.equal(route.requests.length, 2, "a file that does not match is fetched again");
  });

  test("overwrite (per job or per queue) always fetches", async (t) => {
    const dest = join(await tempDir(t), "forced.bin");
    const route = origin.route("/skip/forced.bin", { size: 100_000 });
    await run({ source: route.url, dest });
    await run({ source: route.url, dest, overwrite: true });
    await run({ source: route.url, dest }, { overwrite: true });
    assert.deepEqual(
      route.requests.map((r) => [r.bodyBytes, r.headers.range ?? null]),
      [
        [100_000, null],
        [100_000, null],
        [100_000, null],
      ],
    );
    assert.equal(await fileSha256(dest), await route.sha256());
  });

  test("into a folder the name comes with the response: a finished file is recognised and the body cut off", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/skip/api/download/42", {
      size: 2_000_000,
      contentDisposition: 'attachment; filename="named.safetensors"',
      throttleBytesPerSec: 2_000_000,
    });
    await run({ source: route.url, dest });
    const modified = (await stat(join(dest, "named.safetensors"))).mtimeMs;
    const second = await run({ source: route.url, dest });
    assert.equal(second.job.status, "completed", second.job.error);
    assert.equal(second.job.bytes, 2_000_000);
    assert.ok((route.requests[1]?.bodyBytes ?? 0) < 500_000, `sent ${route.requests[1]?.bodyBytes}`);
    assert.equal((await stat(join(dest, "named.safetensors"))).mtimeMs, modified);
    assert.deepEqual(await listFiles(dest), ["named.safetensors"]);
  });

  test("Ctrl-C with 2 of 4 files done, then the same command: no body for the 2, the rest of the 3rd, all of the 4th", async (t) => {
    const dest = await tempDir(t);
    const size = 400_000;
    const routes = [1, 2, 3, 4].map((i) =>
      origin.route(`/skip/folder/shard-${i}-of-4.bin`, { size, throttleBytesPerSec: 2_000_000 }),
    );
    const first = new DownloadQueue({ maxParallelDownloads: 1, progressIntervalMs: 0, logger: memoryLogger().logger });
    let stopping: Promise<void> | undefined;
    for (const route of routes) {
      first.download({
        source: route.url,
        dest,
        onProgress: (job) => {
          if (job.source === routes[2]?.url && job.bytes >= 150_000) stopping ??= first.stop();
        },
      });
    }
    while (!stopping) await new Promise((resolve) => setTimeout(resolve, 10));
    await stopping;
    assert.deepEqual(
      first.listJobs().map((job) => job.status),
      ["completed", "completed", "waiting", "waiting"],
    );
    for (const route of routes) route.requests.length = 0;

    const second = new DownloadQueue({ maxParallelDownloads: 1, logger: memoryLogger().logger });
    const jobs = routes.map((route) => second.download({ source: route.url, dest }));
    await second.join();
    await second.stop();
    assert.deepEqual(
      jobs.map((job) => [job.status, job.bytes]),
      routes.map(() => ["completed", size]),
    );
    const sent = routes.map((route) => route.bodyBytes);
    assert.deepEqual(sent.slice(0, 2), [0, 0], "the finished files: no body");
    assert.ok((sent[2] ?? 0) <= size - 150_000 + 64 * 1024 && (sent[2] ?? 0) > 0, `the 3rd sent ${sent[2]}`);
    assert.equal(sent[3], size);
    assert.equal(routes[2]?.requests.length, 1, "the partial is resumed without a probe");
    for (const route of routes) {
      assert.equal(await fileSha256(join(dest, route.key.split("/").at(-1) as string)), await route.sha256());
    }
  });

  test("a multi-file job run again fetches only the parts that are missing or changed", async (t) => {
    const dest = await tempDir(t);
    const routes = [1, 2, 3, 4].map((i) => origin.route(`/skip/shard-${i}.bin`, { size: 100_000 * i }));
    const runMulti = async (): Promise<MultiFileDownloadJob> => {
      const queue = new DownloadQueue({ logger: memoryLogger().logger });
      const job = queue.multifileDownload({
        parts: routes.map((route) => ({ url: route.url, path: `model/${route.key.split("/").at(-1)}` })),
        dest,
      });
      await queue.waitForJob(job, { timeoutMs: 10_000 });
      await queue.stop();
      return job;
    };
    await runMulti();
    routes[2]?.update({ seed: "shard-3-v2", lastModified: LATER });
    for (const route of routes) route.requests.length = 0;
    const job = await runMulti();
    assert.equal(job.status, "completed");
    assert.equal(job.bytes, 1_000_000);
    assert.deepEqual(
      routes.map((route) => route.bodyBytes),
      [0, 0, 300_000, 0],
    );
    for (const route of routes) {
      assert.equal(await fileSha256(join(dest, "model", route.key.split("/").at(-1) as string)), await route.sha256());
    }
  });
});
