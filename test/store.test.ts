import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import Database from "better-sqlite3";
import { BACKLOG_BYTES } from "../src/files/writer.js";
import { type DownloadJob, DownloadQueue } from "../src/index.js";
import { SqliteJobStore } from "../src/store/sqlite.js";
import { fileSha256, listFiles, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

function child(script: string, args: string[]): ChildProcess & { lines: AsyncIterableIterator<string> } {
  const proc = spawn(process.execPath, ["--import", "tsx", `test/fixtures/${script}`, ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return Object.assign(proc, { lines: createInterface({ input: proc.stdout })[Symbol.asyncIterator]() });
}

describe("a durable queue", () => {
  test("SIGKILL at 30% of a 200 MB download with 3 jobs waiting: a new process finishes all 4 in order", async (t) => {
    const dir = await tempDir(t);
    const dest = join(dir, "downloads");
    const store = join(dir, "state", "queue.db");
    const big = origin.route("/restart/big.bin", { size: 200_000_000, throttleBytesPerSec: 150_000_000 });
    const small = [1, 2, 3].map((i) => origin.route(`/restart/small-${i}.bin`, { size: 100_000 * i }));
    const first = child("store-child.ts", [store, `${dest}/`, big.url, ...small.map((r) => r.url)]);
    let killedAfter = 0;
    for await (const line of first.lines) {
      killedAfter = JSON.parse(line).bytes ?? killedAfter;
      if (killedAfter >= 60_000_000) break;
    }
    first.kill("SIGKILL");
    await once(first, "exit");
    assert.ok(killedAfter >= 60_000_000 && killedAfter < 200_000_000, `killed at ${killedAfter}`);
    assert.equal(
      small.reduce((n, r) => n + r.requests.length, 0),
      0,
      "the waiting jobs had not started",
    );

    const second = child("store-child.ts", [store, `${dest}/`]);
    let jobs: { id: number; status: string; source: string }[] = [];
    for await (const line of second.lines) jobs = JSON.parse(line).jobs ?? jobs;
    assert.deepEqual(
      jobs.map((j) => [j.id, j.status, j.source]),
      [big, ...small].map((r, i) => [i, "completed", r.url]),
    );
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(String(big.requests[1]?.headers.range))?.[1]);
    // Everything the killed process handed to the kernel is reused: what is lost is at most the writer's backlog
    // and the writev in flight (each up to BACKLOG_BYTES, plus a socket chunk); bytes that arrived after its last
    // progress line but before the kill landed count too.
    assert.ok(
      resumedAt >= killedAfter - 2 * BACKLOG_BYTES - 2 ** 16 && resumedAt < 200_000_000,
      `resumed at ${resumedAt}, last progress ${killedAfter}`,
    );
    const order = origin.requests.filter((r) => r.path.startsWith("/restart/")).map((r) => r.path);
    assert.deepEqual(
      order,
      [big, big, ...small].map((r) => r.key),
    );
    for (const route of [big, ...small]) {
      assert.equal(await fileSha256(join(dest, route.key.split("/").at(-1) as string)), await route.sha256());
    }
    assert.deepEqual(await listFiles(dest), ["big.bin", "small-1.bin", "small-2.bin", "small-3.bin"]);
  });

  test("a kill in the middle of store writes leaves a readable, consistent store", async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, "churn.db");
    for (let round = 0; round < 3; round++) {
      const churn = child("store-churn.ts", [path]);
      await churn.lines.next();
      await new Promise((r) => setTimeout(r, 150 + round * 50));
      churn.kill("SIGKILL");
      await once(churn, "exit");
      const db = new Database(path, { readonly: true });
      assert.equal(db.pragma("integrity_check", { simple: true }), "ok");
      db.close();
      const store = new SqliteJobStore(path);
      const jobs = store.load();
      assert.ok(jobs.length > 0);
      assert.ok(jobs.every((j) => j.kind === "file" && j.status === "running"));
      const next = store.nextId();
      assert.ok(
        jobs.every((j) => j.id < next),
        "ids are never handed out twice",
      );
      store.close();
    }
  });

  test("finished jobs stay listable after a restart, and ids keep growing", async (t) => {
    const dir = await tempDir(t);
    const store = join(dir, "queue.db");
    const route = origin.route("/restart/listed.bin", { size: 1000, contentType: "application/x-listed" });
    const first = new DownloadQueue({ store });
    const done = first.download({ source: route.url, dest: dir });
    await first.join();
    first.pruneJobs();
    const kept = first.download({ source: route.url, dest: join(dir, "again.bin") });
    await first.join();
    await first.stop();

    const second = new DownloadQueue({ store });
    assert.deepEqual(
      second.listJobs().map((j) => [j.id, j.status, j.downloadPath]),
      [[kept.id, "completed", join(dir, "again.bin")]],
    );
    assert.equal(JSON.stringify(second.idToJob(kept.id)), JSON.stringify(kept));
    assert.equal((second.idToJob(kept.id) as DownloadJob).contentType, "application/x-listed");
    const next = second.download({ source: route.url, dest: join(dir, "third.bin") });
    assert.ok(next.id > kept.id && next.id > done.id);
    await second.join();
    await second.stop();
  });

  test("a token is never written to the store; a restored job finds it again through `tokens`", async (t) => {
    const dir = await tempDir(t);
    const store = join(dir, "queue.db");
    const route = origin.route("/restart/private.bin", {
      size: 2_000_000,
      throttleBytesPerSec: 2_000_000,
      requireToken: "store-secret",
    });
    const tokens = [{ url: "/restart/private", token: "store-secret" }];
    const first = new DownloadQueue({ store, tokens });
    first.download({ source: route.url, dest: dir, headers: { Cookie: "c=store-cookie", "X-Keep": "1" } });
    await once(first, "download_progress");
    await first.stop();
    const raw = new Database(store, { readonly: true });
    const dump = JSON.stringify(raw.prepare("SELECT * FROM jobs").all());
    raw.close();
    assert.ok(dump.includes("X-Keep") && !dump.includes("store-secret") && !dump.includes("store-cookie"));

    const second = new DownloadQueue({ store, tokens });
    await second.join();
    await second.stop();
    assert.equal(second.listJobs()[0]?.status, "completed");
    assert.equal(route.requests.at(-1)?.headers.authorization, "Bearer store-secret");
    assert.equal(await fileSha256(join(dir, "private.bin")), await route.sha256());
  });
});

describe("what a job asked for survives a restart", () => {
  test("its rate limit and overwrite come back with it", async (t) => {
    const dir = await tempDir(t);
    const store = join(dir, "queue.db");
    const dest = join(dir, "paced.bin");
    const route = origin.route("/restart/paced.bin", { size: 60_000 });
    await writeFile(dest, "an older file in the way");
    const first = new DownloadQueue({ store });
    const job = first.download({ source: route.url, dest, maxBytesPerSecond: 100_000, overwrite: true });
    first.pauseJob(job);
    await first.stop();

    const second = new DownloadQueue({ store });
    const restored = second.idToJob(job.id);
    const started = performance.now();
    second.resumeJob(restored);
    await second.waitForJob(restored, { timeoutMs: 10_000 });
    const elapsed = (performance.now() - started) / 1000;
    await second.stop();
    assert.equal(restored.status, "completed", restored.error);
    assert.ok(elapsed >= 0.5, `took ${elapsed.toFixed(2)} s: still paced at 100 kB/s`);
    assert.equal(route.requests[0]?.headers.range, undefined, "overwrite: no check of the file in the way");
    assert.equal(await fileSha256(dest), await route.sha256());
  });
});

describe("pause and resume", () => {
  test("pause keeps the partial, survives a restart as paused, and resumes with Range", async (t) => {
    const dir = await tempDir(t);
    const store = join(dir, "queue.db");
    const route = origin.route("/pause/model.bin", { size: 1_500_000, throttleBytesPerSec: 1_500_000 });
    const first = new DownloadQueue({ store });
    const events: string[] = [];
    first.on("download_paused", (p) => events.push(`paused ${p.id} at ${p.current_bytes}`));
    const job = first.download({
      source: route.url,
      dest: dir,
      onProgress: (j) => {
        if (j.bytes >= 300_000 && j.status === "running") first.pauseJob(j);
      },
    });
    await first.join();
    assert.equal(job.status, "paused");
    assert.equal(events.length, 1);
    assert.ok(existsSync(join(dir, "model.bin.downloading")));
    assert.equal(existsSync(join(dir, "model.bin")), false);
    await first.stop();

    const second = new DownloadQueue({ store });
    const restored = second.idToJob(job.id);
    assert.equal(restored.status, "paused");
    await second.join();
    assert.equal(route.requests.length, 1, "a paused job does not start by itself");
    second.resumeJob(restored);
    await second.waitForJob(restored, { timeoutMs: 10_000 });
    await second.stop();
    assert.equal(restored.status, "completed");
    const resumedAt = Number(/^bytes=(\d+)-$/.exec(String(route.requests[1]?.headers.range))?.[1]);
    assert.ok(resumedAt >= 300_000, `resumed at ${resumedAt}`);
    assert.equal(await fileSha256(join(dir, "model.bin")), await route.sha256());
  });

  test("pausing a waiting job keeps it out of the queue until resumed", async (t) => {
    const dir = await tempDir(t);
    const queue = new DownloadQueue({ maxParallelDownloads: 1 });
    const a = origin.route("/pause/a.bin", { size: 100_000, throttleBytesPerSec: 1_000_000 });
    const b = origin.route("/pause/b.bin", { size: 1000 });
    queue.download({ source: a.url, dest: dir });
    const waiting = queue.download({ source: b.url, dest: dir });
    queue.pauseJob(waiting);
    await queue.join();
    assert.equal(waiting.status, "paused");
    assert.equal(b.requests.length, 0);
    queue.resumeJob(waiting);
    await queue.waitForJob(waiting);
    await queue.stop();
    assert.equal(waiting.status, "completed");
  });
});

describe("no double work", () => {
  test("two jobs for the same URL and file share one transfer, each with its own callbacks", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/dup/model.bin", { size: 800_000, throttleBytesPerSec: 2_000_000 });
    const queue = new DownloadQueue();
    const calls: string[] = [];
    const first = queue.download({ source: route.url, dest: dir, onComplete: () => calls.push("first") });
    await once(queue, "download_progress");
    const second = queue.download({
      source: route.url,
      dest: dir,
      onStart: () => calls.push("second started"),
      onComplete: () => calls.push("second"),
    });
    const third = queue.download({ source: route.url, dest: dir, onCancelled: () => calls.push("third cancelled") });
    queue.cancelJob(third);
    await queue.join();
    await queue.stop();
    assert.deepEqual(calls.sort(), ["first", "second", "second started", "third cancelled"]);
    assert.equal(route.requests.length, 1);
    assert.notEqual(first.id, second.id);
    assert.deepEqual(
      [first, second].map((j) => [j.status, j.bytes, j.downloadPath]),
      [first, second].map(() => ["completed", 800_000, join(dir, "model.bin")]),
    );
    assert.equal(third.status, "cancelled");
    assert.equal(await fileSha256(join(dir, "model.bin")), await route.sha256());
  });

  test("one URL into two places at once: one transfer per place, later jobs attach to their own place", async (t) => {
    const dir = await tempDir(t);
    const [a, b] = [join(dir, "a"), join(dir, "b")];
    const route = origin.route("/dup/two-places.bin", { size: 400_000, throttleBytesPerSec: 2_000_000 });
    const queue = new DownloadQueue();
    const calls: string[] = [];
    const done = (job: { dest: string }) => calls.push(`done ${job.dest === a ? "a" : "b"}`);
    const a1 = queue.download({ source: route.url, dest: `${a}/`, onComplete: done });
    const b1 = queue.download({ source: route.url, dest: `${b}/`, onComplete: done });
    const a2 = queue.download({ source: route.url, dest: `${a}/`, onComplete: () => calls.push("a2") });
    const b2 = queue.download({ source: route.url, dest: `${b}/`, onComplete: done });
    assert.deepEqual(await queue.waitForJob(b2), b2);
    await queue.join();
    assert.equal(await queue.waitForJob(a1), a1);
    await queue.stop();
    assert.equal(route.requests.length, 2);
    assert.deepEqual(calls.sort(), ["a2", "done a", "done b", "done b"]);
    for (const [job, folder] of [
      [a1, a],
      [a2, a],
      [b1, b],
      [b2, b],
    ] as const) {
      assert.equal(job.status, "completed");
      assert.equal(job.downloadPath, join(folder, "two-places.bin"));
    }
    assert.equal(await fileSha256(join(a, "two-places.bin")), await route.sha256());
    assert.equal(await fileSha256(join(b, "two-places.bin")), await route.sha256());
  });

  test("a second queue writing the same file is stopped by the lock, never interleaving bytes", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/dup/locked.bin", { size: 600_000, throttleBytesPerSec: 1_500_000 });
    const a = new DownloadQueue();
    const b = new DownloadQueue({ retries: 0 });
    const target = join(dir, "locked.bin");
    const first = a.download({ source: route.url, dest: target });
    await once(a, "download_started");
    const second = b.download({ source: route.url, dest: target });
    await b.waitForJob(second);
    assert.equal(second.status, "error");
    assert.equal(second.errorType, "FileLockedError");
    assert.match(second.error ?? "", /being downloaded by another queue or process/);
    await a.waitForJob(first);
    await Promise.all([a.stop(), b.stop()]);
    assert.equal(first.status, "completed");
    assert.equal(route.requests.length, 1);
    assert.equal(await fileSha256(target), await route.sha256());
    assert.deepEqual(await listFiles(dir), ["locked.bin"]);
  });
});
