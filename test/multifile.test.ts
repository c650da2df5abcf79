import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { BACKLOG_BYTES } from "../src/files/writer.js";
import { DownloadQueue, type MultiFileDownloadJob } from "../src/index.js";
import { fileSha256, listFiles, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

describe("multi-file jobs", () => {
  test("every part lands under dest at its relative path; callbacks fire once for the whole job", async (t) => {
    const dest = await tempDir(t);
    const parts = [
      {
        route: origin.route("/hf/unet.safetensors", { size: 300_000, throttleBytesPerSec: 2_000_000 }),
        path: "sd/unet/diffusion_pytorch_model.safetensors",
      },
      {
        route: origin.route("/hf/vae.safetensors", { size: 200_000 }),
        path: "sd/vae/diffusion_pytorch_model.safetensors",
      },
      {
        route: origin.route("/hf/model_index.json", { body: '{"_class_name": "StableDiffusionPipeline"}' }),
        path: "sd/model_index.json",
      },
    ];
    const queue = new DownloadQueue({ maxParallelDownloads: 2 });
    const calls: string[] = [];
    let lastProgress = 0;
    const job = queue.multifileDownload({
      parts: parts.map((p) => ({ url: p.route.url, path: p.path })),
      dest,
      onStart: () => calls.push("start"),
      onProgress: (j) => {
        lastProgress = j.bytes;
      },
      onComplete: () => calls.push("complete"),
      onError: () => calls.push("error"),
    });
    assert.equal(job.downloadParts.length, 3);
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    await queue.stop();
    assert.equal(job.status, "completed");
    assert.deepEqual(calls, ["start", "complete"]);
    assert.equal(job.downloadPath, join(dest, "sd"));
    const total = parts.reduce((sum, p) => sum + p.route.size, 0);
    assert.equal(job.bytes, total);
    assert.equal(job.totalBytes, total);
    assert.equal(lastProgress, total);
    assert.deepEqual(await listFiles(dest), parts.map((p) => p.path).sort());
    for (const part of parts) assert.equal(await fileSha256(join(dest, part.path)), await part.route.sha256());
    const wire = JSON.parse(JSON.stringify(job));
    assert.equal(wire.download_path, join(dest, "sd"));
    assert.equal(wire.total_bytes, total);
    assert.equal(wire.download_parts.length, 3);
    assert.ok(!("downloadParts" in wire));
  });

  test("a part path that leaves dest is refused before anything is fetched", async (t) => {
    const dest = await tempDir(t);
    const queue = new DownloadQueue();
    const safe = origin.route("/hf/safe.bin", { size: 10 });
    origin.resetStats();
    for (const path of ["../outside.bin", "/etc/passwd", "a/../../x"]) {
      assert.throws(
        () =>
          queue.multifileDownload({
            parts: [
              { url: safe.url, path: "ok.bin" },
              { url: safe.url, path },
            ],
            dest,
          }),
        { code: "DLQ_ERR_UNSAFE_PATH" },
      );
    }
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(origin.requests.length, 0);
    assert.deepEqual(queue.listJobs(), []);
    await queue.stop();
  });

  test("one part failing cancels the others and fails the whole job", async (t) => {
    const dest = await tempDir(t);
    const slow = origin.route("/hf/slow.bin", { size: 2_000_000, throttleBytesPerSec: 400_000 });
    const missing = origin.route("/hf/missing.bin", { latencyMs: 150, faults: [{ kind: "status", status: 404 }] });
    const queue = new DownloadQueue({ logger: memoryLogger().logger });
    const errors: Error[] = [];
    const job: MultiFileDownloadJob = queue.multifileDownload({
      parts: [
        { url: slow.url, path: "m/slow.bin" },
        { url: missing.url, path: "m/missing.bin" },
      ],
      dest,
      onError: (_j, err) => errors.push(err),
      onCancelled: () => errors.push(new Error("onCancelled must not fire")),
    });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    await queue.stop();
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "HTTPError(Not Found)");
    assert.deepEqual(
      job.downloadParts.map((p) => p.status),
      ["cancelled", "error"],
    );
    assert.equal(errors.length, 1);
    assert.equal(errors[0]?.name, "HTTPError");
    assert.deepEqual(await listFiles(dest), []);
  });

  test("cancelling a multi-file job cancels every part and removes their partials", async (t) => {
    const dest = await tempDir(t);
    const a = origin.route("/hf/cancel-a.bin", { size: 1_000_000, throttleBytesPerSec: 300_000 });
    const b = origin.route("/hf/cancel-b.bin", { size: 1_000_000, throttleBytesPerSec: 300_000 });
    const queue = new DownloadQueue();
    const calls: string[] = [];
    const job = queue.multifileDownload({
      parts: [
        { url: a.url, path: "x/a.bin" },
        { url: b.url, path: "x/b.bin" },
      ],
      dest,
      onCancelled: () => calls.push("cancelled"),
    });
    await once(queue, "download_progress");
    queue.cancelJob(job);
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    await queue.stop();
    assert.equal(job.status, "cancelled");
    assert.deepEqual(calls, ["cancelled"]);
    assert.ok(job.downloadParts.every((p) => p.status === "cancelled"));
    assert.deepEqual(await listFiles(dest), []);
  });
});

describe("a killed process", () => {
  test("SIGKILL mid-download, then a new process resumes from the partial file", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/killed.bin", { size: 3_000_000, throttleBytesPerSec: 1_500_000 });
    const target = join(dest, "killed.bin");
    const child = spawn(process.execPath, ["--import", "tsx", "test/fixtures/download-child.ts", route.url, target], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let reported = 0;
    for await (const line of createInterface({ input: child.stdout })) {
      reported = JSON.parse(line).bytes ?? reported;
      if (reported >= 900_000) break;
    }
    child.kill("SIGKILL");
    await once(child, "exit");
    assert.ok(reported >= 900_000 && reported < 3_000_000, `killed at ${reported}`);

    const second = spawn(process.execPath, ["--import", "tsx", "test/fixtures/download-child.ts", route.url, target], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let status = "";
    for await (const line of createInterface({ input: second.stdout })) status = JSON.parse(line).status ?? status;
    assert.equal(status, "completed");
    assert.equal(route.requests.length, 2);
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(String(route.requests[1]?.headers.range))?.[1]);
    // Everything the killed process flushed is reused: at most the writer's backlog and the writev in flight (BACKLOG_BYTES each, plus a socket chunk) are lost, and bytes that
    // arrived after its last progress line but before the kill landed count too.
    assert.ok(
      resumedAt >= Math.max(1, reported - 2 * BACKLOG_BYTES - 2 ** 16) && resumedAt < 3_000_000,
      `resumed at ${resumedAt}`,
    );
    assert.equal(await fileSha256(target), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["killed.bin"]);
  });
});
