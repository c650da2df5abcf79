import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { writeValidators } from "../src/files/sidecars.js";
import { type DownloadJob, DownloadQueue, type DownloadQueueOptions } from "../src/index.js";
import { fileSha256, listFiles, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

/** Runs one job to its end on a queue with fast retries, and returns it with what was logged. */
async function runOne(
  request: {
    source: string;
    dest: string;
    accessToken?: string;
    size?: number;
    sha256?: string;
    headers?: Record<string, string>;
  },
  options: DownloadQueueOptions = {},
): Promise<{ job: DownloadJob; log: string[]; events: unknown[] }> {
  const { lines, logger } = memoryLogger();
  const queue = new DownloadQueue({ retryDelayMs: 20, logger, ...options });
  const events: unknown[] = [];
  for (const name of ["download_started", "download_progress", "download_complete", "download_error"] as const) {
    queue.on(name, (payload: object) => events.push({ name, ...payload }));
  }
  const job = queue.download(request);
  await queue.waitForJob(job, { timeoutMs: 20_000 });
  await queue.stop();
  return { job, log: lines, events };
}

const ranges = (requests: { headers: { range?: string } }[]) => requests.map((r) => r.headers.range ?? null);

describe("resume and retry", () => {
  test("a dropped connection is resumed with Range from the bytes on disk", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/drop.bin", {
      size: 900_000,
      throttleBytesPerSec: 3_000_000,
      faults: [
        { kind: "drop", afterBytes: 300_000 },
        { kind: "drop", afterBytes: 200_000 },
      ],
    });
    const { job } = await runOne({ source: route.url, dest });
    assert.equal(job.status, "completed");
    assert.deepEqual(ranges(route.requests), [null, "bytes=300000-", "bytes=500000-"]);
    assert.ok(route.requests[1]?.headers["if-range"], "resume is guarded by If-Range");
    assert.equal(await fileSha256(join(dest, "drop.bin")), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["drop.bin"]);
  });

  test("a body cut short (FIN before Content-Length) is retried and resumed", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/truncate.bin", {
      size: 500_000,
      throttleBytesPerSec: 3_000_000,
      faults: [{ kind: "truncate", afterBytes: 123_456 }],
    });
    const { job } = await runOne({ source: route.url, dest });
    assert.equal(job.status, "completed");
    assert.deepEqual(ranges(route.requests), [null, "bytes=123456-"]);
    assert.equal(await fileSha256(join(dest, "truncate.bin")), await route.sha256());
  });

  test("a stalled body is detected by readTimeoutMs and resumed", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/stall.bin", {
      size: 400_000,
      throttleBytesPerSec: 4_000_000,
      faults: [{ kind: "stall", afterBytes: 100_000 }],
    });
    const started = performance.now();
    const { job, log } = await runOne({ source: route.url, dest }, { readTimeoutMs: 400 });
    assert.equal(job.status, "completed");
    assert.ok(performance.now() - started >= 400, "waited for the read timeout");
    assert.deepEqual(ranges(route.requests), [null, "bytes=100000-"]);
    assert.ok(
      log.some((line) => line.includes("UND_ERR_BODY_TIMEOUT")),
      log.join("\n"),
    );
    assert.equal(await fileSha256(join(dest, "stall.bin")), await route.sha256());
  });

  test("a server that ignores Range makes the retry start over from zero, byte-exact", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/norange.bin", {
      size: 500_000,
      acceptRanges: false,
      throttleBytesPerSec: 3_000_000,
      faults: [{ kind: "drop", afterBytes: 250_000 }],
    });
    const { job } = await runOne({ source: route.url, dest });
    assert.equal(job.status, "completed");
    assert.deepEqual(ranges(route.requests), [null, "bytes=250000-"]);
    assert.equal(job.bytes, 500_000);
    assert.equal(await fileSha256(join(dest, "norange.bin")), await route.sha256());
  });

  test("a file that changed on the server (new ETag) is fetched again whole, not spliced", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/changing.bin", {
      size: 500_000,
      throttleBytesPerSec: 1_000_000,
      faults: [{ kind: "drop", afterBytes: 200_000 }],
    });
    const oldSha = await route.sha256();
    let changed = false;
    const queue = new DownloadQueue({ retryDelayMs: 200, logger: memoryLogger().logger });
    const job = queue.download({
      source: route.url,
      dest,
      onProgress: (j) => {
        // The first progress report comes with the first chunk, well before the drop at 200,000.
        if (!changed && j.bytes > 0) {
          changed = true;
          route.update({ seed: "version 2" });
        }
      },
    });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    await queue.stop();
    assert.equal(job.status, "completed");
    assert.equal(route.requests.length, 2);
    assert.equal(route.requests[1]?.headers.range, "bytes=200000-");
    const newSha = await route.sha256();
    assert.notEqual(newSha, oldSha);
    assert.equal(await fileSha256(join(dest, "changing.bin")), newSha);
  });

  test("416 for a partial that is already whole finishes it without fetching a byte", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/whole.bin", { size: 70_000 });
    const target = join(dest, "whole.bin");
    await writeFile(`${target}.downloading`, route.content());
    const first = await fetch(route.url);
    await first.arrayBuffer();
    await writeValidators(target, {
      source: route.url,
      etag: first.headers.get("etag") ?? undefined,
      totalBytes: 70_000,
    });
    origin.resetStats();
    const { job } = await runOne({ source: route.url, dest: target });
    assert.equal(job.status, "completed");
    assert.deepEqual(ranges(route.requests), ["bytes=70000-"]);
    assert.equal(job.bytes, 70_000);
    assert.equal(await fileSha256(target), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["whole.bin"]);
  });

  test("500 and 503 are retried with backoff until the server recovers", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/flaky.bin", {
      size: 20_000,
      faults: [{ kind: "status", status: 500 }, { kind: "status", status: 503 }, { kind: "hangup" }],
    });
    const { job, log } = await runOne({ source: route.url, dest });
    assert.equal(job.status, "completed");
    assert.equal(route.requests.length, 4);
    assert.equal(log.filter((line) => line.startsWith("warn: retry ")).length, 3);
    assert.equal(await fileSha256(join(dest, "flaky.bin")), await route.sha256());
  });

  test("an error page too big to read through closes its connection; small ones keep it for the retry", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/big-error.bin", {
      size: 20_000,
      faults: [
        { kind: "status", status: 503, body: "x".repeat(2 * 1024 * 1024) },
        { kind: "status", status: 503, body: "busy" },
      ],
    });
    const { job } = await runOne({ source: route.url, dest });
    assert.equal(job.status, "completed");
    assert.equal(await fileSha256(join(dest, "big-error.bin")), await route.sha256());
    const connections = route.requests.map((r) => r.connection);
    assert.equal(connections.length, 3);
    assert.notEqual(connections[1], connections[0], "the 2 MiB error page was not read: its connection was closed");
    assert.equal(connections[2], connections[1], "the small error page was read to its end: its connection was reused");
  });

  test("429 waits as long as Retry-After says", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/ratelimited.bin", {
      size: 1000,
      faults: [{ kind: "status", status: 429, headers: { "Retry-After": "1" } }],
    });
    const { job } = await runOne({ source: route.url, dest });
    assert.equal(job.status, "completed");
    const [first, second] = route.requests;
    assert.ok(first && second);
    assert.ok(second.at - first.at >= 950, `waited ${second.at - first.at} ms`);
  });

  test("retries are bounded: a server that keeps failing ends the job with the last error", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/down.bin", { faults: Array(10).fill({ kind: "status", status: 500 }) });
    const { job } = await runOne({ source: route.url, dest }, { retries: 2 });
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "HTTPError(Internal Server Error)");
    assert.equal(route.requests.length, 3);
    assert.deepEqual(await listFiles(dest), []);
  });

  test("a job out of retries says it stopped and that running it again resumes, never that it is resuming", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/gives-up.bin", {
      size: 200_000,
      throttleBytesPerSec: 4_000_000,
      faults: [{ kind: "drop", afterBytes: 100_000 }, ...Array(5).fill({ kind: "hangup" })],
    });
    const { job } = await runOne({ source: route.url, dest }, { retries: 2 });
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "TransferInterruptedError");
    const message = job.error?.split("\n")[0] ?? "";
    assert.doesNotMatch(message, /resuming|retrying/);
    assert.match(
      message,
      /Stopped after 2 retries in a row without progress; the 100 kB on disk are kept: run the download again to resume\.$/,
    );
    assert.equal(message.split(route.url).length - 1, 1, `the URL once: ${message}`);
    assert.equal(route.requests.length, 3, "the retry after progress counts: two retries without progress, then stop");
  });

  test("retries are numbered per job and never start over; each warning names the URL once and the budget rule", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/numbered.bin", {
      size: 500_000,
      throttleBytesPerSec: 4_000_000,
      faults: [1, 2, 3, 4].map(() => ({ kind: "drop", afterBytes: 100_000 }) as const),
    });
    const { job, log } = await runOne({ source: route.url, dest }, { retries: 1 });
    assert.equal(job.status, "completed", job.error);
    const warnings = log.filter((line) => line.startsWith("warn: "));
    assert.deepEqual(
      warnings.map((line) =>
        /^warn: retry (\d+) in [\d.]+ s \((\d) of 1 in a row without progress\)/.exec(line)?.slice(1),
      ),
      [
        ["1", "1"],
        ["2", "1"],
        ["3", "1"],
        ["4", "1"],
      ],
    );
    for (const line of warnings) assert.equal(line.split(route.url).length - 1, 1, `the URL once: ${line}`);
    assert.equal(await fileSha256(join(dest, "numbered.bin")), await route.sha256());
  });

  for (const [status, reason] of [
    [404, "Not Found"],
    [403, "Forbidden"],
    [410, "Gone"],
  ] as const) {
    test(`${status} fails at once, without retries`, async (t) => {
      const dest = await tempDir(t);
      const route = origin.route(`/status-${status}.bin`, { faults: [{ kind: "status", status }] });
      const { job, events } = await runOne({ source: route.url, dest });
      assert.equal(job.status, "error");
      assert.equal(job.errorType, `HTTPError(${reason})`);
      assert.equal(route.requests.length, 1);
      assert.deepEqual(
        events.map((e) => (e as { name: string }).name),
        ["download_error"],
      );
      assert.deepEqual(await listFiles(dest), []);
    });
  }
});

describe("redirects and tokens", () => {
  let other: Origin;
  before(async () => {
    other = await startOrigin();
  });
  after(() => other.close());

  test("the access token and credential headers reach their own origin only, never a redirect's other host", async (t) => {
    const dest = await tempDir(t);
    const cdn = other.route("/signed/model.safetensors", { size: 30_000 });
    const start = origin.route("/api/model", { requireToken: "s3cret-token", redirect: { location: cdn.url } });
    const { job, log, events } = await runOne({
      source: start.url,
      dest,
      accessToken: "s3cret-token",
      headers: { Cookie: "session=s3cret-cookie", "X-Trace": "kept" },
    });
    assert.equal(job.status, "completed");
    assert.equal(start.requests[0]?.headers.authorization, "Bearer s3cret-token");
    assert.equal(start.requests[0]?.headers.cookie, "session=s3cret-cookie");
    assert.equal(cdn.requests[0]?.headers.authorization, undefined);
    assert.equal(cdn.requests[0]?.headers.cookie, undefined);
    assert.equal(cdn.requests[0]?.headers["x-trace"], "kept");
    assert.equal(await fileSha256(join(dest, "model")), await cdn.sha256());
    const everything = JSON.stringify({ job, log, events, list: [job] });
    assert.ok(!everything.includes("s3cret-token"));
  });

  test("a same-origin redirect keeps the token; `tokens` rules pick the token by URL", async (t) => {
    const dest = await tempDir(t);
    const target = origin.route("/real/file.bin", { size: 5000, requireToken: "rule-token" });
    const start = origin.route("/alias/file.bin", { redirect: { location: "/real/file.bin", status: 301 } });
    const { job } = await runOne(
      { source: start.url, dest },
      {
        tokens: [
          { url: /example\.invalid/, token: "wrong" },
          { url: "/alias/", token: "rule-token" },
        ],
      },
    );
    assert.equal(job.status, "completed");
    assert.equal(target.requests[0]?.headers.authorization, "Bearer rule-token");
    assert.equal(await fileSha256(join(dest, "file.bin")), await target.sha256());
  });

  test("a missing token fails at once with 401, and the token never leaks into the error", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/private.bin", { requireToken: "right-token" });
    const { job } = await runOne({ source: route.url, dest });
    assert.equal(job.errorType, "HTTPError(Unauthorized)");
    assert.match(job.error ?? "", /access token/);
    const wrong = await runOne({ source: route.url, dest, accessToken: "wrong-token" });
    assert.equal(wrong.job.errorType, "HTTPError(Forbidden)");
    assert.ok(!JSON.stringify([wrong.job, wrong.log, wrong.events]).includes("wrong-token"));
  });

  test("a redirect loop ends with a clear error", async (t) => {
    const dest = await tempDir(t);
    const loop = origin.route("/loop", { redirect: { location: "/loop" } });
    const { job } = await runOne({ source: loop.url, dest });
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "TooManyRedirectsError");
    assert.equal(loop.requests.length, 11);
  });
});

describe("size limits", () => {
  test("a response larger than the expected size is refused before a byte is written", async (t) => {
    const dest = await tempDir(t);
    // Stands in for a 2 GiB answer to a job that expected 2 KiB.
    const huge = origin.route("/huge.bin", { size: 64 * 1024 * 1024 });
    const { job } = await runOne({ source: huge.url, dest, size: 2048 });
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "ResponseTooLargeError");
    assert.deepEqual(await listFiles(dest), []);
  });

  test("without Content-Length the transfer is cut off as soon as it passes the expected size", async (t) => {
    const dest = await tempDir(t);
    const huge = origin.route("/huge-chunked.bin", { size: 64 * 1024 * 1024, chunked: true });
    const { job } = await runOne({ source: huge.url, dest, size: 2048 });
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "ResponseTooLargeError");
    assert.ok(job.bytes < 4 * 1024 * 1024, `stopped after ${job.bytes} bytes`);
    assert.deepEqual(await listFiles(dest), []);
  });

  test("a chunked response of unknown length downloads whole", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/chunked.bin", { size: 333_333, chunked: true });
    const { job } = await runOne({ source: route.url, dest });
    assert.equal(job.status, "completed");
    assert.equal(job.totalBytes, 333_333);
    assert.equal(await fileSha256(join(dest, "chunked.bin")), await route.sha256());
  });

  test("a sha256 mismatch fails the job and discards the file", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/checked.bin", { size: 10_000 });
    const good = await runOne({ source: route.url, dest, sha256: await route.sha256() });
    assert.equal(good.job.status, "completed");
    const bad = await runOne({ source: route.url, dest: join(dest, "other.bin"), sha256: "0".repeat(64) });
    assert.equal(bad.job.status, "error");
    assert.equal(bad.job.errorType, "ChecksumMismatch");
    assert.deepEqual(await listFiles(dest), ["checked.bin"]);
    assert.equal((await readFile(join(dest, "checked.bin"))).length, 10_000);
    assert.equal(existsSync(join(dest, "other.bin.downloading")), false);
  });
});
