import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { DownloadQueue } from "../src/index.js";
import { fileSha256, listFiles, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, type Route, startOrigin } from "./helpers/origin.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

const MiB = 1024 * 1024;

/** Starts a download into a folder and stops the queue (as Ctrl-C does) once `atBytes` are in. */
async function interrupted(route: Route, dest: string, atBytes: number, connectionsPerFile: number): Promise<void> {
  const queue = new DownloadQueue({ connectionsPerFile, logger: memoryLogger().logger });
  let stopping: Promise<void> | undefined;
  const job = queue.download({
    source: route.url,
    dest,
    onProgress: (j) => {
      if (j.bytes >= atBytes) stopping ??= queue.stop();
    },
  });
  while (!stopping) await new Promise((resolve) => setTimeout(resolve, 10));
  await stopping;
  assert.equal(job.status, "waiting", "stopped, resumable");
}

describe("resuming into a folder finds the partial without a probe", () => {
  test("one connection: the only request asks for the missing bytes, and only they are sent", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/probe/api/7", {
      size: MiB,
      throttleBytesPerSec: 4 * MiB,
      contentDisposition: 'attachment; filename="weights.bin"',
    });
    await interrupted(route, dest, 300_000, 1);
    assert.ok(existsSync(join(dest, "weights.bin.downloading")));
    origin.resetStats();
    route.update({ throttleBytesPerSec: undefined });

    const queue = new DownloadQueue({ logger: memoryLogger().logger });
    const job = queue.download({ source: route.url, dest });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    assert.equal(route.requests.length, 1);
    const from = Number(/^bytes=(\d+)-$/.exec(String(route.requests[0]?.headers.range))?.[1]);
    assert.ok(from >= 300_000 - 64 * 1024, `resumed from ${from}`);
    assert.ok(route.requests[0]?.headers["if-range"], "guarded by If-Range");
    assert.equal(route.bodyBytes, MiB - from, "only the missing bytes were sent");
    assert.equal(await fileSha256(join(dest, "weights.bin")), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["weights.bin"]);
  });

  test("eight connections: a 1-byte If-Range probe, then ranges of the missing bytes only", async (t) => {
    const dest = await tempDir(t);
    const size = 9 * MiB;
    const route = origin.route("/probe/sharded.bin", { size, throttleBytesPerSec: 2 * MiB });
    await interrupted(route, dest, 3 * MiB, 8);
    origin.resetStats();
    route.update({ throttleBytesPerSec: undefined });

    const queue = new DownloadQueue({ connectionsPerFile: 8, logger: memoryLogger().logger });
    const job = queue.download({ source: route.url, dest });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    await queue.stop();
    assert.equal(job.status, "completed", job.error);
    const ranges = route.requests.map((r) => r.headers.range ?? null);
    assert.equal(ranges[0], "bytes=0-0", "the first request is a 1-byte probe");
    assert.equal(route.requests[0]?.bodyBytes, 1);
    assert.ok(
      ranges.slice(1).every((range) => range !== null && range !== "bytes=0-"),
      `every later request asks for a range: ${ranges}`,
    );
    assert.ok(
      route.bodyBytes <= size - 3 * MiB + 1 + MiB,
      `${route.bodyBytes} body bytes for ${size - 3 * MiB} missing at most`,
    );
    assert.equal(await fileSha256(join(dest, "sharded.bin")), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["sharded.bin"]);
  });
});
