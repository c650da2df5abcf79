import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { lstat, readlink, stat, symlink, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { FileLockedError } from "../src/errors.js";
import { lockPartial } from "../src/files/partial.js";
import { type DownloadJob, DownloadQueue } from "../src/index.js";
import { fileSha256, listFiles, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

const MiB = 1024 * 1024;
const HOST = hostname();
const lockOf = (finalPath: string) => `${finalPath}.downloading.lock`;
/** Whether a lock is there: lstat, since a lock is a link to nowhere, which existsSync reports missing. */
const locked = (finalPath: string) =>
  lstat(lockOf(finalPath)).then(
    () => true,
    () => false,
  );

/** A node process that idles until killed: a live pid of this host that is not the test's own. */
function idleChild(): ChildProcess {
  return spawn(process.execPath, ["-e", "setInterval(() => {}, 60_000)"], { stdio: "ignore" });
}

/** The pid of a process that has exited: what a killed download leaves in its lock. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ["-e", ""], { stdio: "ignore" });
  await once(child, "exit");
  return child.pid as number;
}

async function refused(promise: Promise<unknown>): Promise<FileLockedError> {
  const error = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  assert.ok(error instanceof FileLockedError, `FileLockedError expected, got ${error}`);
  assert.equal(error.code, "DLQ_ERR_FILE_LOCKED");
  return error;
}

describe("lockPartial: who may take a lock over", () => {
  test("a lock in the old format (a bare pid) is this host's: a dead pid is taken over and the new lock names host and pid", async (t) => {
    const final = join(await tempDir(t), "old.bin");
    await symlink(String(await deadPid()), lockOf(final));
    const release = await lockPartial(final);
    assert.equal(await readlink(lockOf(final)), `${HOST}:${process.pid}`);
    await release();
    assert.equal(await locked(final), false, "released");
  });

  test("this host's live pid keeps its lock, in both formats, lease or not; once that process is gone it is taken", async (t) => {
    const final = join(await tempDir(t), "live.bin");
    const child = idleChild();
    t.after(() => child.kill("SIGKILL"));
    await once(child, "spawn");
    for (const owner of [String(child.pid), `${HOST}:${child.pid}`, `${HOST}:${child.pid}:dlq-7`]) {
      await symlink(owner, lockOf(final));
      await refused(lockPartial(final, "dlq-7"));
      assert.equal(await readlink(lockOf(final)), owner, "the lock is left as it was");
      await unlink(lockOf(final));
    }
    await symlink(`${HOST}:${child.pid}:dlq-7`, lockOf(final));
    child.kill("SIGKILL");
    await once(child, "exit");
    const release = await lockPartial(final, "dlq-7");
    assert.equal(await readlink(lockOf(final)), `${HOST}:${process.pid}:dlq-7`);
    await release();
  });

  test("another host's lock: refused without a lease and with another lease, taken with its own lease", async (t) => {
    const final = join(await tempDir(t), "shared.bin");
    await symlink("otherhost:1234:dlq-7", lockOf(final));
    for (const lease of [undefined, "dlq-8", "dlq-", "dlq-70"]) {
      const error = await refused(lockPartial(final, lease));
      assert.match(error.message, /otherhost:1234/, "names the owner");
      assert.ok(error.message.includes(`delete ${lockOf(final)}`), error.message);
      assert.equal(await readlink(lockOf(final)), "otherhost:1234:dlq-7", "the lock is left as it was");
    }
    const release = await lockPartial(final, "dlq-7");
    assert.equal(await readlink(lockOf(final)), `${HOST}:${process.pid}:dlq-7`);
    await release();
    assert.equal(await locked(final), false);
  });

  test("another host's lock without a lease is never taken; a lease with ':' is everything after the pid", async (t) => {
    const dir = await tempDir(t);
    const bare = join(dir, "bare.bin");
    await symlink("otherhost:1234", lockOf(bare));
    await refused(lockPartial(bare, "dlq-7"));
    await refused(lockPartial(bare));

    const colons = join(dir, "colons.bin");
    await symlink("otherhost:1234:bull:downloads:7", lockOf(colons));
    for (const lease of ["downloads:7", "7", "bull:downloads"]) await refused(lockPartial(colons, lease));
    const release = await lockPartial(colons, "bull:downloads:7");
    assert.equal(await readlink(lockOf(colons)), `${HOST}:${process.pid}:bull:downloads:7`);
    await release();
  });
});

/**
 * What a worker on another host leaves when it is SIGKILLed mid-download: a partial with its sidecars, and its lock
 * naming it and the job's lease. A queue that runs until `bytes` are on disk and is stopped leaves the partial; the
 * lock is planted after it.
 */
async function killedElsewhere(
  source: string,
  final: string,
  connectionsPerFile: number,
  bytes: number,
): Promise<void> {
  const queue = new DownloadQueue({ connectionsPerFile, logger: memoryLogger().logger });
  await new Promise<void>((resolve) => {
    queue.download({
      source,
      dest: final,
      lease: "dlq-7",
      onProgress: (job) => {
        if (job.bytes >= bytes) resolve();
      },
    });
  });
  await queue.stop();
  await symlink("otherhost:99:dlq-7", lockOf(final));
}

async function runJob(request: { source: string; dest: string; lease?: string }, connectionsPerFile: number) {
  const queue = new DownloadQueue({ connectionsPerFile, logger: memoryLogger().logger });
  const job: DownloadJob = queue.download(request);
  await queue.waitForJob(job, { timeoutMs: 30_000 });
  await queue.stop();
  return job;
}

describe("a job inherited from a worker on another host", () => {
  for (const { connectionsPerFile, size } of [
    { connectionsPerFile: 1, size: 4 * MiB },
    { connectionsPerFile: 4, size: 9 * MiB },
  ]) {
    test(`its lease takes the dead worker's lock over and resumes the partial (${connectionsPerFile} connection(s))`, async (t) => {
      const dest = await tempDir(t);
      const route = origin.route(`/lock/inherited-${connectionsPerFile}.bin`, {
        size,
        throttleBytesPerSec: 2 * MiB,
      });
      const final = join(dest, "model.bin");
      await killedElsewhere(route.url, final, connectionsPerFile, MiB);
      route.update({ throttleBytesPerSec: undefined });
      const kept = (await stat(`${final}.downloading`)).size;
      const partialSha256 = await fileSha256(`${final}.downloading`);
      assert.ok(kept > 0, "a partial is left");
      if (connectionsPerFile > 1) assert.ok(existsSync(`${final}.downloading.segments.json`), "segments ran");

      // Without the lease, the lock of a host this one cannot see into stands.
      const blocked = await runJob({ source: route.url, dest: final }, connectionsPerFile);
      assert.equal(blocked.status, "error");
      assert.equal(blocked.errorType, "FileLockedError");
      assert.match(blocked.error ?? "", /otherhost:99/);
      assert.equal(await fileSha256(`${final}.downloading`), partialSha256, "the partial is untouched");

      const fetchedBefore = route.requests.length;
      const sentBefore = route.bodyBytes;
      const job = await runJob({ source: route.url, dest: final, lease: "dlq-7" }, connectionsPerFile);
      assert.equal(job.status, "completed", job.error);
      assert.equal(job.bytes, size);
      assert.equal(await fileSha256(final), await route.sha256());
      const ranges = route.requests.slice(fetchedBefore).map((r) => r.headers.range);
      assert.ok(
        ranges.some((range) => range !== undefined),
        `a Range request: ${JSON.stringify(ranges)}`,
      );
      if (connectionsPerFile === 1) assert.deepEqual(ranges, [`bytes=${kept}-`]);
      // At least the MiB the first worker wrote is not sent again (segments confirm the file with one byte first).
      const sent = route.bodyBytes - sentBefore;
      assert.ok(sent <= size - MiB + 1, `resumed, not fetched again: ${sent} of ${size} bytes sent`);
      assert.deepEqual(await listFiles(dest), ["model.bin"], "no partial or sidecar left");
      assert.equal(await locked(final), false, "the lock is released");
    });
  }

  test("a lease must be a printable key", async (t) => {
    const queue = new DownloadQueue({ logger: memoryLogger().logger });
    t.after(() => queue.stop());
    for (const lease of ["", "dlq\n7", "x".repeat(1001)]) {
      assert.throws(
        () => queue.download({ source: "http://127.0.0.1:1/x", dest: "x.bin", lease }),
        (err: Error & { code?: string }) => err.code === "DLQ_ERR_INVALID_ARGUMENT" && /lease/.test(err.message),
      );
    }
    assert.equal(queue.listJobs().length, 0);
  });
});
