import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { hashFileRange } from "../src/files/disk.js";
import { checkRelativePath, fileNameFor, sanitizeFileName } from "../src/files/names.js";
import { openPartial } from "../src/files/partial.js";
import { BACKLOG_BYTES } from "../src/files/writer.js";
import { DestinationError, DownloadQueue, type DownloadRequest } from "../src/index.js";
import { fileSha256, listFiles, memoryLogger, smallTmpfs, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

async function runOne(request: DownloadRequest, retries = 5) {
  const queue = new DownloadQueue({ retryDelayMs: 20, retries, logger: memoryLogger().logger });
  const job = queue.download(request);
  await queue.waitForJob(job, { timeoutMs: 20_000 });
  await queue.stop();
  return job;
}

describe("file names", () => {
  test("Content-Disposition wins (filename* over filename), else the URL's last segment without the query", () => {
    assert.equal(fileNameFor("http://h/api/1", 'attachment; filename="model.safetensors"'), "model.safetensors");
    assert.equal(
      fileNameFor("http://h/api/1", "attachment; filename=\"fallback.bin\"; filename*=UTF-8''na%C3%AFve%20m.bin"),
      "naïve m.bin",
    );
    assert.equal(fileNameFor("http://h/api/1", "attachment; filename=spaces are common.bin"), "spaces are common.bin");
    assert.equal(fileNameFor("http://h/a/x.png?raw=true", undefined), "x.png");
    assert.equal(fileNameFor("http://h/a/caf%C3%A9.txt", undefined), "café.txt");
    assert.equal(fileNameFor("http://h/", undefined), "download");
  });

  test("hostile names become one harmless component", () => {
    assert.equal(sanitizeFileName("../../x"), "x");
    assert.equal(sanitizeFileName("/etc/passwd"), "passwd");
    assert.equal(sanitizeFileName("C:\\Windows\\evil.dll"), "evil.dll");
    assert.equal(sanitizeFileName("a\u0000b\nc\u001b.bin"), "a_b_c_.bin");
    assert.equal(sanitizeFileName(".bashrc"), "bashrc");
    assert.equal(sanitizeFileName(".."), undefined);
    assert.equal(sanitizeFileName(""), undefined);
    assert.equal(sanitizeFileName("\u0001\u0002"), undefined);
    assert.equal(sanitizeFileName("nul.txt"), "_nul.txt");
    const long = sanitizeFileName(`${"é".repeat(300)}.safetensors`) ?? "";
    assert.ok(Buffer.byteLength(long) <= 200 && long.endsWith(".safetensors"));
  });

  test("multi-file relative paths that leave dest are refused", () => {
    assert.equal(checkRelativePath("unet\\model.bin"), "unet/model.bin");
    for (const bad of ["../x", "a/../../x", "/etc/x", "C:\\x", "d:x", "", ".", "a/", "a\u0007b"]) {
      assert.throws(() => checkRelativePath(bad), { code: "DLQ_ERR_UNSAFE_PATH" }, bad);
    }
  });

  for (const [hostile, expected] of [
    ['attachment; filename="../../escape.bin"', "escape.bin"],
    ['attachment; filename="/etc/cron.d/evil"', "evil"],
    ["attachment; filename*=UTF-8''%2E%2E%2F%2E%2E%2Fx.bin", "x.bin"],
    // Raw control characters cannot travel in a header; percent-encoded ones can.
    ["attachment; filename*=UTF-8''bell%07%0A.bin", "bell__.bin"],
    ['attachment; filename=""', "named-by-url.bin"],
  ] as const) {
    test(`a server naming its file ${JSON.stringify(hostile.slice(22))} cannot write outside dest`, async (t) => {
      const parent = await tempDir(t);
      const dest = join(parent, "inside");
      await mkdir(dest);
      const route = origin.route("/named-by-url.bin", { size: 2000, contentDisposition: hostile });
      const job = await runOne({ source: route.url, dest });
      assert.equal(job.status, "completed");
      assert.equal(job.downloadPath, join(dest, expected));
      assert.deepEqual(await listFiles(parent), [`inside/${expected}`]);
      assert.equal(await fileSha256(join(dest, expected)), await route.sha256());
    });
  }
});

describe("destinations", () => {
  test("a path that does not exist is the exact file; missing folders are created", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/exact.bin", { size: 5000, contentDisposition: 'attachment; filename="ignored.bin"' });
    const target = join(dest, "a", "b", "chosen.name");
    const job = await runOne({ source: route.url, dest: target });
    assert.equal(job.downloadPath, target);
    assert.deepEqual(await listFiles(dest), ["a/b/chosen.name"]);
    assert.equal(await fileSha256(target), await route.sha256());
  });

  test("a dest ending in / is a folder to create", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/into-new-folder.bin", { size: 5000 });
    const job = await runOne({ source: route.url, dest: `${join(dest, "new")}/` });
    assert.equal(job.status, "completed");
    assert.deepEqual(await listFiles(dest), ["new/into-new-folder.bin"]);
  });

  test("the partial lives beside the final path, which appears only when the file is whole", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/growing.bin", { size: 400_000, throttleBytesPerSec: 800_000 });
    const target = join(dest, "growing.bin");
    const seen: { final: boolean; partial: boolean }[] = [];
    const job = await runOne({
      source: route.url,
      dest,
      onProgress: (j) => {
        if (j.bytes < 400_000) seen.push({ final: existsSync(target), partial: existsSync(`${target}.downloading`) });
      },
    });
    assert.equal(job.status, "completed");
    assert.ok(seen.length >= 2);
    assert.ok(
      seen.every((s) => !s.final && s.partial),
      JSON.stringify(seen),
    );
    assert.deepEqual(await listFiles(dest), ["growing.bin"]);
  });

  test("a folder removed between two jobs of one queue is made again for the next job", async (t) => {
    const dest = await tempDir(t);
    const queue = new DownloadQueue({ retryDelayMs: 20, logger: memoryLogger().logger });
    t.after(() => queue.stop());
    for (const [name, size] of [
      ["small", 5000],
      ["large", 200_000],
    ] as const) {
      const first = origin.route(`/gone-${name}-a.bin`, { size });
      const second = origin.route(`/gone-${name}-b.bin`, { size });
      const a = queue.download({ source: first.url, dest: join(dest, name, "sub", "a.bin") });
      await queue.waitForJob(a, { timeoutMs: 20_000 });
      assert.equal(a.status, "completed");
      await rm(join(dest, name, "sub"), { recursive: true });
      const b = queue.download({ source: second.url, dest: join(dest, name, "sub", "b.bin") });
      await queue.waitForJob(b, { timeoutMs: 20_000 });
      assert.equal(b.status, "completed", b.error);
      assert.equal(await fileSha256(join(dest, name, "sub", "b.bin")), await second.sha256());
    }
  });

  test("a completed file is not touched by a later attempt that fails", async (t) => {
    const dest = await tempDir(t);
    const target = join(dest, "keep.bin");
    await writeFile(target, "the good, complete file");
    const route = origin.route("/keep.bin", {
      size: 300_000,
      throttleBytesPerSec: 1_000_000,
      faults: [{ kind: "drop", afterBytes: 100_000 }],
    });
    const job = await runOne({ source: route.url, dest: target }, 0);
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "TransferInterruptedError");
    assert.equal(await readFile(target, "utf8"), "the good, complete file");
  });

  test("an unwritable destination ends the job with a clear error and writes nothing", async (t) => {
    const dest = await tempDir(t);
    await writeFile(join(dest, "a-file"), "not a folder");
    const route = origin.route("/unwritable.bin", { size: 1000 });
    const job = await runOne({ source: route.url, dest: join(dest, "a-file", "sub", "x.bin") });
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "DestinationUnwritable");
    assert.match(job.error ?? "", /choose a destination you can write to/);
    assert.deepEqual(await listFiles(dest), ["a-file"]);
  });

  test("a file larger than the free space is refused before a byte is written", async (t) => {
    const disk = await smallTmpfs(t, 1024 * 1024);
    if (!disk) {
      t.skip("this machine does not allow mounting a tmpfs");
      return;
    }
    const route = origin.route("/bigger-than-disk.bin", { size: 3 * 1024 * 1024 });
    const job = await runOne({ source: route.url, dest: disk });
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "InsufficientDiskSpace");
    assert.match(job.error ?? "", /Not enough free space .*: 3.15 MB needed, 1.0\d MB free/);
    assert.deepEqual(await listFiles(disk), []);
  });

  test("parallel jobs cannot overbook a disk: the one that does not fit fails at once, the others complete", async (t) => {
    const disk = await smallTmpfs(t, 4 * 1024 * 1024);
    if (!disk) {
      t.skip("this machine does not allow mounting a tmpfs");
      return;
    }
    // Each fits alone (1.5 MB of 4.19 MB); two fit together; the third is refused while the two are running.
    const routes = [1, 2, 3].map((i) =>
      origin.route(`/overbook-${i}.bin`, { size: 1_500_000, throttleBytesPerSec: 3_000_000 }),
    );
    const queue = new DownloadQueue({ retryDelayMs: 20, logger: memoryLogger().logger });
    const jobs = routes.map((route) => queue.download({ source: route.url, dest: `${disk}/` }));
    await queue.join();
    await queue.stop();
    const failed = jobs.filter((job) => job.status === "error");
    assert.deepEqual(jobs.map((job) => job.status).sort(), ["completed", "completed", "error"]);
    assert.equal(failed[0]?.errorType, "InsufficientDiskSpace");
    assert.match(
      failed[0]?.error ?? "",
      /1\.50 MB needed, 1\.\d\d MB free \(of \d\.\d\d MB free, \d\.\d\d MB are for downloads already running\)/,
    );
    const done = jobs.filter((job) => job.status === "completed");
    assert.deepEqual(await listFiles(disk), done.map((job) => job.downloadPath?.split("/").at(-1)).sort());
  });

  test("a disk that fills up mid-transfer (no Content-Length to check) ends the job with DiskFull", async (t) => {
    const disk = await smallTmpfs(t, 1024 * 1024);
    if (!disk) {
      t.skip("this machine does not allow mounting a tmpfs");
      return;
    }
    const route = origin.route("/fills-the-disk.bin", { size: 3 * 1024 * 1024, chunked: true });
    const job = await runOne({ source: route.url, dest: disk });
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "DiskFull");
    assert.match(job.error ?? "", /is full; free some space/);
    assert.equal(existsSync(join(disk, "fills-the-disk.bin")), false);
  });
});

describe("the partial writer", () => {
  const MiB = 1024 * 1024;
  const pattern = (seed: number, size: number) => Buffer.alloc(size, seed);

  test("runs of one file land at their positions, whatever order their chunks come in", async (t) => {
    const path = join(await tempDir(t), "runs.bin.downloading");
    const file = await openPartial(path, 0, true);
    const seen: Array<[number, number]> = [];
    const runs = [0, 1, 2].map((i) => file.writer(i * 3 * MiB, (end, bytes) => seen.push([end, bytes]), 3));
    const expected = Buffer.concat([0, 1, 2].flatMap((i) => [pattern(i + 1, 2 * MiB), pattern(i + 10, MiB)]));
    for (let round = 0; round < 2; round++) {
      for (const [i, run] of [...runs.entries()].reverse()) {
        await run.write(round === 0 ? pattern(i + 1, 2 * MiB) : pattern(i + 10, MiB));
      }
    }
    await Promise.all(runs.map((run) => run.flush()));
    await file.close(true);
    assert.deepEqual(await readFile(path), expected);
    assert.deepEqual(
      runs.map((run) => run.written),
      [3 * MiB, 6 * MiB, 9 * MiB],
    );
    assert.equal(
      seen.reduce((sum, [, bytes]) => sum + bytes, 0),
      9 * MiB,
    );
  });

  test("asks its reader to wait once its backlog is queued, and lets it go on when the disk has taken them", async (t) => {
    const file = await openPartial(join(await tempDir(t), "backlog.bin.downloading"), 0, false);
    const run = file.writer(0);
    const chunk = 16 * 1024;
    // The first chunk goes to the disk at once; the backlog is what queues behind it.
    const lastBeforeFull = BACKLOG_BYTES / chunk - 1;
    const waits: Array<Promise<void> | undefined> = [];
    for (let i = 0; i < (4 * BACKLOG_BYTES) / chunk; i++) waits.push(run.write(pattern(i, chunk)));
    assert.equal(waits.slice(0, lastBeforeFull + 1).filter(Boolean).length, 0, "no wait below the backlog");
    assert.ok(waits[lastBeforeFull + 1] instanceof Promise, "a wait as soon as the backlog is full");
    await waits.at(-1);
    await run.flush();
    assert.equal(run.written, waits.length * chunk);
    await file.close(true);
  });

  test("a full disk fails the run with DLQ_ERR_DISK_FULL: flush rejects, later writes throw, written stays true", async (t) => {
    const disk = await smallTmpfs(t, MiB);
    if (!disk) {
      t.skip("this machine does not allow mounting a tmpfs");
      return;
    }
    const path = join(disk, "full.bin.downloading");
    const file = await openPartial(path, 0, false);
    const run = file.writer(0);
    run.write(pattern(1, 512 * 1024));
    await run.flush();
    run.write(pattern(2, 2 * MiB));
    await assert.rejects(
      run.flush(),
      (err: Error) => err instanceof DestinationError && err.code === "DLQ_ERR_DISK_FULL",
    );
    assert.throws(() => run.write(pattern(3, 1024)), DestinationError);
    assert.equal(run.written, 512 * 1024, "the bytes that did reach the disk stay counted");
    assert.equal(run.position, 512 * 1024, "the next byte goes where the disk stopped");
    await file.close(false);
  });
});

describe("reading a file back for its checksum", () => {
  test("bytes `from` to `to`, across the read blocks and their edges, and no further than the file goes", async (t) => {
    const MiB = 1024 * 1024;
    const path = join(await tempDir(t), "back.bin");
    const content = randomBytes(2 * MiB + 123);
    await writeFile(path, content);
    const digest = async (to: number, from = 0) => {
      const hash = createHash("sha256");
      await hashFileRange(hash, path, from, to);
      return hash.digest("hex");
    };
    for (const [from, to] of [
      [5, MiB + 7],
      [MiB, 2 * MiB + 123],
      [MiB + 1, MiB + 1],
    ] as const) {
      const expected = createHash("sha256").update(content.subarray(from, to)).digest("hex");
      assert.equal(await digest(to, from), expected, `${from}–${to}`);
    }
    for (const length of [0, 1, MiB - 1, MiB, MiB + 1, 2 * MiB, 2 * MiB + 123]) {
      assert.equal(
        await digest(length),
        createHash("sha256").update(content.subarray(0, length)).digest("hex"),
        `${length}`,
      );
    }
    assert.equal(
      await digest(3 * MiB),
      createHash("sha256").update(content).digest("hex"),
      "a file shorter than asked",
    );
  });
});
