import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { type DownloadJob, DownloadQueue, type DownloadQueueOptions } from "../src/index.js";
import { adoptionStart, OVERLAP_BYTES, OverlapCheck, OverlapMismatchError } from "../src/transfer/adopt.js";
import { fileSha256, listFiles, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, type Route, startOrigin } from "./helpers/origin.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

const SIZE = 1_000_000;
const KiB = 1024;
const MiB = 1024 * KiB;

async function runOne(
  request: { source: string; dest: string; size?: number; sha256?: string },
  options: DownloadQueueOptions = {},
): Promise<{ job: DownloadJob; log: string[] }> {
  const { lines, logger } = memoryLogger();
  const queue = new DownloadQueue({ retryDelayMs: 20, logger, ...options });
  const job = queue.download(request);
  await queue.waitForJob(job, { timeoutMs: 20_000 });
  await queue.stop();
  return { job, log: lines };
}

/** A partial as another tool leaves it: `<final>.downloading`, and no dlqueue sidecar beside it. */
async function foreignPartial(finalPath: string, bytes: Buffer): Promise<void> {
  await writeFile(`${finalPath}.downloading`, bytes);
}

const ranges = (route: Route) => route.requests.map((r) => r.headers.range ?? null);
const startOvers = (log: string[]) => log.filter((line) => line.includes("has no dlqueue sidecar"));

describe("partials from other tools", () => {
  test("a foreign prefix of the right bytes: one request from 64 KiB before its end, the rest appended", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/right.bin", { size: SIZE });
    const final = join(dest, "right.bin");
    await foreignPartial(final, route.content().subarray(0, 400_000));
    const { job, log } = await runOne({ source: route.url, dest: final });
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(ranges(route), [`bytes=${400_000 - OVERLAP_BYTES}-`]);
    assert.equal(route.requests[0]?.headers["if-range"], undefined, "nothing to guard a foreign partial with");
    assert.equal(route.bodyBytes, SIZE - 400_000 + OVERLAP_BYTES);
    assert.equal(job.bytes, SIZE);
    assert.equal(await fileSha256(final), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["right.bin"]);
    assert.deepEqual(startOvers(log), []);
  });

  test("a foreign prefix smaller than 64 KiB is compared whole", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/small-prefix.bin", { size: SIZE });
    const final = join(dest, "small-prefix.bin");
    await foreignPartial(final, route.content().subarray(0, 10_000));
    const { job } = await runOne({ source: route.url, dest: final, sha256: await route.sha256() });
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(ranges(route), ["bytes=0-"]);
    assert.equal(route.bodyBytes, SIZE);
    assert.equal(await fileSha256(final), await route.sha256());
  });

  test("one wrong byte inside the overlap: started over, and the log says why once", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/wrong.bin", { size: SIZE });
    const final = join(dest, "wrong.bin");
    const prefix = Buffer.from(route.content().subarray(0, 400_000));
    prefix[400_000 - 100] = (prefix[400_000 - 100] as number) ^ 0xff;
    await foreignPartial(final, prefix);
    const { job, log } = await runOne({ source: route.url, dest: final });
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(ranges(route), [`bytes=${400_000 - OVERLAP_BYTES}-`, null]);
    assert.equal(await fileSha256(final), await route.sha256());
    const why = startOvers(log);
    assert.equal(why.length, 1, log.join("\n"));
    assert.match(why[0] as string, new RegExp(`byte ${400_000 - 100} differs`));
    assert.deepEqual(await listFiles(dest), ["wrong.bin"]);
  });

  test("a wrong byte before the overlap is caught by the sha256: fetched again, not failed", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/early-wrong.bin", { size: SIZE });
    const final = join(dest, "early-wrong.bin");
    const prefix = Buffer.from(route.content().subarray(0, 400_000));
    prefix[10] = (prefix[10] as number) ^ 0xff;
    await foreignPartial(final, prefix);
    const { job, log } = await runOne({ source: route.url, dest: final, sha256: await route.sha256() });
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(ranges(route), [`bytes=${400_000 - OVERLAP_BYTES}-`, null]);
    assert.equal(await fileSha256(final), await route.sha256());
    assert.match(startOvers(log).join("\n"), /sha256 is not the file's/);
  });

  test("a whole foreign partial of the known size: 416, completed without a byte of body", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/whole.bin", { size: SIZE });
    const final = join(dest, "whole.bin");
    await foreignPartial(final, route.content());
    const { job } = await runOne({ source: route.url, dest: final, size: SIZE, sha256: await route.sha256() });
    assert.equal(job.status, "completed", job.error);
    assert.equal(job.bytes, SIZE);
    assert.deepEqual(ranges(route), [`bytes=${SIZE}-`]);
    assert.equal(route.bodyBytes, 0);
    assert.equal(await fileSha256(final), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["whole.bin"]);
  });

  test("a whole foreign partial whose sha256 is not the file's is fetched again", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/whole-wrong.bin", { size: SIZE });
    const final = join(dest, "whole-wrong.bin");
    const bytes = Buffer.from(route.content());
    bytes[5] = (bytes[5] as number) ^ 0xff;
    await foreignPartial(final, bytes);
    const { job, log } = await runOne({ source: route.url, dest: final, size: SIZE, sha256: await route.sha256() });
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(ranges(route), [`bytes=${SIZE}-`, null]);
    assert.equal(await fileSha256(final), await route.sha256());
    assert.equal(startOvers(log).length, 1, log.join("\n"));
  });

  test("a whole foreign partial of unknown size: only its last 64 KiB are sent, compared, nothing appended", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/whole-unknown.bin", { size: SIZE });
    const final = join(dest, "whole-unknown.bin");
    await foreignPartial(final, route.content());
    const { job } = await runOne({ source: route.url, dest: final });
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(ranges(route), [`bytes=${SIZE - OVERLAP_BYTES}-`]);
    assert.equal(route.bodyBytes, OVERLAP_BYTES);
    assert.equal(await fileSha256(final), await route.sha256());
  });

  test("a foreign partial larger than the server's file is never trusted: started over", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/bigger.bin", { size: SIZE });
    const extra = (n: number) => Buffer.concat([route.content(), Buffer.alloc(n, 7)]);
    // 100 KB more: the overlap starts past the file's end (416); 10 KB more: it starts inside (206 of a shorter file).
    for (const [name, bytes] of [
      ["far.bin", extra(100_000)],
      ["near.bin", extra(10_000)],
    ] as const) {
      route.requests.length = 0;
      const final = join(dest, name);
      await foreignPartial(final, bytes);
      const { job, log } = await runOne({ source: route.url, dest: final });
      assert.equal(job.status, "completed", job.error);
      assert.deepEqual(ranges(route), [`bytes=${bytes.length - OVERLAP_BYTES}-`, null], name);
      assert.equal(await fileSha256(final), await route.sha256());
      assert.equal(startOvers(log).length, 1, log.join("\n"));
    }
    // With the size known, such a partial costs no request at all.
    route.requests.length = 0;
    const final = join(dest, "known.bin");
    await foreignPartial(final, extra(10));
    const { job } = await runOne({ source: route.url, dest: final, size: SIZE });
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(ranges(route), [null]);
    assert.equal(await fileSha256(final), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["far.bin", "known.bin", "near.bin"]);
  });

  test("a server that ignores Range: its 200 is the whole file, written from zero", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/norange.bin", { size: SIZE, acceptRanges: false });
    const final = join(dest, "norange.bin");
    await foreignPartial(final, route.content().subarray(0, 400_000));
    const { job, log } = await runOne({ source: route.url, dest: final });
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(ranges(route), [`bytes=${400_000 - OVERLAP_BYTES}-`]);
    assert.equal(route.bodyBytes, SIZE);
    assert.equal(await fileSha256(final), await route.sha256());
    assert.match(startOvers(log).join("\n"), /ignores Range/);
  });

  test("into a folder: the name comes first, then the partial found under it is adopted", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/folder", {
      size: SIZE,
      contentDisposition: 'attachment; filename="named.bin"',
    });
    await foreignPartial(join(dest, "named.bin"), route.content().subarray(0, 400_000));
    const { job } = await runOne({ source: route.url, dest });
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(ranges(route), [null, `bytes=${400_000 - OVERLAP_BYTES}-`]);
    assert.equal(await fileSha256(join(dest, "named.bin")), await route.sha256());
    assert.deepEqual(await listFiles(dest), ["named.bin"]);
  });

  test("a connection dropped inside the overlap is retried, and the partial still adopted", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/drop.bin", { size: SIZE, faults: [{ kind: "drop", afterBytes: 1000 }] });
    const final = join(dest, "drop.bin");
    await foreignPartial(final, route.content().subarray(0, 400_000));
    const { job } = await runOne({ source: route.url, dest: final });
    assert.equal(job.status, "completed", job.error);
    const from = `bytes=${400_000 - OVERLAP_BYTES}-`;
    assert.deepEqual(ranges(route), [from, from]);
    assert.equal(await fileSha256(final), await route.sha256());
  });

  test("with connectionsPerFile > 1 a foreign prefix is the first finished range once its overlap matched", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/segmented.bin", { size: 9 * MiB });
    const final = join(dest, "segmented.bin");
    await foreignPartial(final, route.content().subarray(0, 3 * MiB));
    const { job } = await runOne({ source: route.url, dest: final }, { connectionsPerFile: 4 });
    assert.equal(job.status, "completed", job.error);
    const [first, ...segments] = ranges(route);
    assert.equal(first, `bytes=${3 * MiB - OVERLAP_BYTES}-`);
    assert.ok(segments.length >= 2, `segments: ${segments.join(", ")}`);
    for (const range of segments) {
      const start = Number(/^bytes=(\d+)-/.exec(range ?? "")?.[1]);
      assert.ok(start >= 3 * MiB, `no segment asks for the adopted prefix again: ${range}`);
    }
    assert.equal(await fileSha256(final), await route.sha256());
  });

  test("with connectionsPerFile > 1 a mismatching overlap starts over too", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/segmented-wrong.bin", { size: 9 * MiB });
    const final = join(dest, "segmented-wrong.bin");
    const prefix = Buffer.from(route.content().subarray(0, 3 * MiB));
    prefix[3 * MiB - 1] = (prefix[3 * MiB - 1] as number) ^ 0xff;
    await foreignPartial(final, prefix);
    const { job, log } = await runOne({ source: route.url, dest: final }, { connectionsPerFile: 4 });
    assert.equal(job.status, "completed", job.error);
    assert.equal(startOvers(log).length, 1, log.join("\n"));
    assert.ok(
      ranges(route).some((range) => range?.startsWith("bytes=0-")),
      `the start is fetched again: ${ranges(route).join(", ")}`,
    );
    assert.equal(await fileSha256(final), await route.sha256());
  });

  test("a file of the user's own at a path shaped like a cache blob (…/blobs/<sha256>) is no cache blob: its partial is <final>.downloading, and a .incomplete beside it is not taken for one", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/adopt/blob-shaped", { size: SIZE });
    const sha256 = await route.sha256();
    const blobs = join(dest, "blobs");
    await mkdir(blobs, { recursive: true });
    const blob = join(blobs, sha256);
    const unrelated = Buffer.from("the user's own file, not a partial");
    await writeFile(`${blob}.incomplete`, unrelated);
    await foreignPartial(blob, route.content().subarray(0, 400_000));
    const { job } = await runOne({ source: route.url, dest: blob, size: SIZE, sha256 });
    assert.equal(job.status, "completed", job.error);
    assert.deepEqual(ranges(route), [`bytes=${400_000 - OVERLAP_BYTES}-`], "the .downloading prefix adopted");
    assert.equal(await fileSha256(blob), sha256);
    assert.deepEqual(await readFile(`${blob}.incomplete`), unrelated);
    assert.deepEqual(await listFiles(dest), [join("blobs", sha256), join("blobs", `${sha256}.incomplete`)]);
  });
});

describe("adopt.ts", () => {
  test("the request starts 64 KiB before the end, at 0 for a small partial, at the end for a known whole size", () => {
    assert.equal(adoptionStart(400_000, undefined), 400_000 - OVERLAP_BYTES);
    assert.equal(adoptionStart(1000, undefined), 0);
    assert.equal(adoptionStart(400_000, 400_000), 400_000);
    assert.equal(adoptionStart(400_001, 400_000), undefined);
    assert.equal(adoptionStart(300_000, 400_000), 300_000 - OVERLAP_BYTES);
  });

  test("the overlap check passes matching chunks through, whatever their cut, and names the first wrong byte", async (t) => {
    const dir = await tempDir(t);
    const path = join(dir, "p");
    const bytes = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
    await writeFile(path, bytes);
    const check = await OverlapCheck.read(path, 60, 100);
    assert.equal(check.take(bytes.subarray(60, 75)).length, 0);
    assert.equal(check.done, false);
    const rest = check.take(Buffer.concat([bytes.subarray(75, 100), Buffer.from([1, 2, 3])]));
    assert.equal(check.done, true);
    assert.deepEqual([...rest], [1, 2, 3]);

    const wrong = await OverlapCheck.read(path, 60, 100);
    const body = Buffer.from(bytes.subarray(60, 100));
    body[17] = 0;
    assert.throws(
      () => wrong.take(body),
      (err: unknown) => err instanceof OverlapMismatchError && err.position === 77,
    );
  });
});
