import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import { open, readFile, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";
import { Agent, request } from "undici";
import { HttpError } from "../src/errors.js";
import { doneBytes, readSegmentState, segmentsPathOf } from "../src/files/sidecars.js";
import { merge } from "../src/transfer/ranges.js";
import { downloadSegmented, RangeNotSupportedError, type SegmentedOptions } from "../src/transfer/segments.js";
import { fileSha256, listFiles, tempDir } from "./helpers/fs.js";
import { type Origin, type Route, startOrigin } from "./helpers/origin.js";

const MB = 1_000_000;
const KiB = 1024;
const MiB = 1024 * KiB;

let origin: Origin;
let dispatcher: Agent;
before(async () => {
  origin = await startOrigin();
  dispatcher = new Agent();
});
after(async () => {
  await dispatcher.close();
  await origin.close();
});

function options(route: Route, partialPath: string, extra: Partial<SegmentedOptions> = {}): SegmentedOptions {
  return {
    url: route.url,
    partialPath,
    totalBytes: route.size,
    connections: 8,
    headers: { "user-agent": "dlqueue-test" },
    dispatcher,
    headersTimeoutMs: 10_000,
    readTimeoutMs: 10_000,
    signal: new AbortController().signal,
    onBytes: () => {},
    retries: 5,
    retryDelayMs: 10,
    minSegmentBytes: 64 * KiB,
    ...extra,
  };
}

/** Byte ranges [start, end) asked for by these requests (closed "bytes=a-b" ranges only). */
function requested(requests: { method: string; headers: { range?: string } }[]): Array<[number, number]> {
  return requests
    .filter((r) => r.method === "GET")
    .map((r) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(r.headers.range ?? "");
      assert.ok(m, `a closed byte range, got ${r.headers.range}`);
      return [Number(m[1]), Number(m[2]) + 1];
    });
}

const overlap = (a: Array<[number, number]>, b: Array<[number, number]>) =>
  a.some(([s1, e1]) => b.some(([s2, e2]) => s1 < e2 && s2 < e1));
const sum = (ranges: Array<[number, number]>) => ranges.reduce((n, [s, e]) => n + e - s, 0);

async function etagOf(route: Route): Promise<string> {
  const res = await request(route.url, { method: "HEAD", dispatcher });
  await res.body.dump();
  return String(res.headers.etag);
}

/** Every range the sidecar lists holds exactly the origin's bytes. */
async function assertRangesHold(path: string, route: Route, ranges: Array<[number, number]>): Promise<void> {
  const content = route.content();
  const file = await readFile(path);
  for (const [start, end] of ranges) {
    assert.ok(file.subarray(start, end).equals(content.subarray(start, end)), `bytes ${start}-${end} on disk`);
  }
}

describe("downloadSegmented", () => {
  test("8 connections, byte-exact, sidecar removed, progress reaches the total", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/seg-exact.bin", { size: 20 * MB + 12345 });
    const partial = join(dir, "f.bin.downloading");
    let last = 0;
    await downloadSegmented(options(route, partial, { onBytes: (n) => (last = n) }));
    assert.equal(await fileSha256(partial), await route.sha256());
    assert.equal((await stat(partial)).size, route.size);
    assert.equal(last, route.size);
    assert.deepEqual(await listFiles(dir), ["f.bin.downloading"]);
    const ranges = requested(route.requests);
    assert.ok(ranges.length >= 8, `${ranges.length} requests`);
    assert.equal(sum(merge(ranges)), route.size);
  });

  test("drops, a stall and a 503 on several segments: failures retried per segment, the 503's connection shed, byte-exact", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/seg-faults.bin", {
      size: 8 * MB,
      throttleBytesPerSec: 8 * MB,
      faults: [
        { kind: "drop", afterBytes: 100_000 },
        null,
        { kind: "drop", afterBytes: 333_333 },
        { kind: "status", status: 503 },
        { kind: "stall", afterBytes: 50_000 },
        null,
        { kind: "drop", afterBytes: 0 },
        { kind: "truncate", afterBytes: 200_000 },
        { kind: "drop", afterBytes: 77_777 },
        { kind: "hangup" },
        { kind: "drop", afterBytes: 10_000 },
      ],
    });
    const partial = join(dir, "f.bin.downloading");
    const retried: string[] = [];
    const shed: Array<[number, number]> = [];
    await downloadSegmented(
      options(route, partial, {
        readTimeoutMs: 400,
        onRetry: ({ error }) => retried.push(error.message),
        onFewerConnections: (status, left) => shed.push([status, left]),
      }),
    );
    assert.equal(await fileSha256(partial), await route.sha256());
    assert.ok(retried.length >= 5, retried.join("\n"));
    assert.deepEqual(shed, [[503, 7]], "one of 8 connections answered 503: the others go on without it");
    assert.ok(!retried.some((m) => m.includes("503")), "the 503 is not waited out");
    assert.ok(route.requests.length > 11, `${route.requests.length} requests`);
    assert.ok(!existsSync(segmentsPathOf(partial)));
  });

  test("aborted mid-way: the sidecar lists finished ranges and the next call fetches only the gaps", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/seg-resume.bin", { size: 8 * MB, throttleBytesPerSec: 2 * MB });
    const partial = join(dir, "f.bin.downloading");
    const headers = { "if-range": await etagOf(route) };
    const controller = new AbortController();
    const reason = new Error("stop");
    const first = downloadSegmented(
      options(route, partial, {
        headers,
        signal: controller.signal,
        onBytes: (n) => n >= 4 * MB && controller.abort(reason),
      }),
    );
    await assert.rejects(first, (err) => err === reason);

    const state = await readSegmentState(partial);
    assert.ok(state, "the sidecar is kept");
    assert.equal(state.totalBytes, route.size);
    assert.equal(state.validator, headers["if-range"]);
    const done = doneBytes(state);
    assert.ok(done >= 4 * MB && done < route.size, `${done} bytes listed`);
    assert.ok(state.done.length >= 2, "several finished ranges, one per connection");
    await assertRangesHold(partial, route, state.done);

    const before = route.requests.length;
    const progress: number[] = [];
    await downloadSegmented(options(route, partial, { headers, onBytes: (n) => progress.push(n) }));
    const again = requested(route.requests.slice(before));
    assert.ok(!overlap(again, state.done), "no finished range is asked for again");
    assert.equal(sum(merge(again)), route.size - done, "exactly the missing bytes are asked for");
    assert.equal(progress[0], done, "progress starts from the bytes already on disk");
    assert.ok(route.requests.slice(before).every((r) => r.headers["if-range"] === headers["if-range"]));
    assert.equal(await fileSha256(partial), await route.sha256());
    assert.ok(!existsSync(segmentsPathOf(partial)));
  });

  test("SIGKILL mid-download, then a resume fetches only what the sidecar does not list", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/seg-killed.bin", { size: 8 * MB, throttleBytesPerSec: 1 * MB });
    const partial = join(dir, "f.bin.downloading");
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "test/fixtures/segments-child.ts", route.url, partial, String(route.size), "8"],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let reported = 0;
    for await (const line of createInterface({ input: child.stdout })) {
      reported = JSON.parse(line).bytes ?? reported;
      if (reported >= 5 * MB) break;
    }
    child.kill("SIGKILL");
    await once(child, "exit");
    assert.ok(reported >= 5 * MB && reported < route.size, `killed at ${reported}`);

    const state = await readSegmentState(partial);
    assert.ok(state, "the sidecar survived the kill");
    const done = doneBytes(state);
    // Saved at most every 500 ms, so it may lag behind; it never lists bytes that were not written.
    assert.ok(done > 0 && done <= route.size, `${done} bytes listed, ${reported} reported`);
    await assertRangesHold(partial, route, state.done);

    const before = route.requests.length;
    await downloadSegmented(options(route, partial));
    const again = requested(route.requests.slice(before));
    assert.ok(!overlap(again, state.done));
    assert.equal(sum(merge(again)), route.size - done);
    assert.equal(await fileSha256(partial), await route.sha256());
    assert.deepEqual(await listFiles(dir), ["f.bin.downloading"]);
  });

  test("work stealing: a connection that runs out of work takes half of the largest remaining segment", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/seg-steal.bin", { size: 8 * MiB, throttleBytesPerSec: 4 * MB });
    const partial = join(dir, "f.bin.downloading");
    // A partial from an earlier run with [1 MiB, 1.5 MiB) on disk: two gaps of very different sizes.
    const validator = await etagOf(route);
    const file = await open(partial, "w");
    await file.truncate(route.size);
    await file.write(route.content(), MiB, MiB / 2, MiB);
    await file.close();
    await writeFile(
      segmentsPathOf(partial),
      JSON.stringify({ version: 1, totalBytes: route.size, validator, done: [[MiB, 1.5 * MiB]] }),
    );
    await downloadSegmented(
      options(route, partial, { connections: 2, headers: { "If-Range": validator }, minSegmentBytes: 256 * KiB }),
    );
    const ranges = requested(route.requests);
    // Which of the two first requests reaches the server first depends on which connection is already open.
    assert.deepEqual(
      ranges.slice(0, 2).sort((a, b) => a[0] - b[0]),
      [
        [0, MiB],
        [1.5 * MiB, route.size],
      ],
    );
    assert.ok(ranges.length >= 3, "the small segment's connection stole work");
    assert.ok(
      ranges.slice(2).some(([start]) => start > 1.5 * MiB),
      "a stolen range starts inside the large segment",
    );
    assert.ok(!overlap(ranges, [[MiB, 1.5 * MiB]]));
    assert.equal(await fileSha256(partial), await route.sha256());
  });

  test("a server that ignores Range: RangeNotSupportedError, and the partial is an empty prefix again", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/seg-norange.bin", { size: 4 * MB, acceptRanges: false });
    const partial = join(dir, "f.bin.downloading");
    await assert.rejects(downloadSegmented(options(route, partial)), (err) => {
      assert.ok(err instanceof RangeNotSupportedError);
      assert.equal(err.status, 200);
      assert.equal(err.problem, "ignored");
      assert.equal(err.code, "DLQ_ERR_RANGE_NOT_SUPPORTED");
      return true;
    });
    // A preallocated partial left behind would look complete to a single-stream resume.
    assert.equal((await stat(partial)).size, 0);
    assert.ok(!existsSync(segmentsPathOf(partial)));
  });

  test("the file changed between runs: RangeNotSupportedError 'changed' and the partial is emptied", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/seg-changed.bin", { size: 4 * MB, throttleBytesPerSec: 2 * MB });
    const partial = join(dir, "f.bin.downloading");
    const headers = { "if-range": await etagOf(route) };
    const controller = new AbortController();
    await assert.rejects(
      downloadSegmented(
        options(route, partial, { headers, signal: controller.signal, onBytes: (n) => n > MB && controller.abort() }),
      ),
    );
    assert.ok(doneBytes((await readSegmentState(partial)) ?? { done: [] }) > 0);
    route.update({ seed: "another version" });
    await assert.rejects(
      downloadSegmented(options(route, partial, { headers })),
      (err) => err instanceof RangeNotSupportedError && err.problem === "changed",
    );
    assert.equal((await stat(partial)).size, 0);
    assert.ok(!existsSync(segmentsPathOf(partial)));
  });

  test("a 404 on a segment is final: HttpError, no retries, the sidecar is kept", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/seg-404.bin", {
      size: 4 * MB,
      throttleBytesPerSec: 4 * MB,
      faults: [null, { kind: "status", status: 404 }],
    });
    const partial = join(dir, "f.bin.downloading");
    await assert.rejects(
      downloadSegmented(options(route, partial, { connections: 2 })),
      (err) => err instanceof HttpError && err.status === 404,
    );
    assert.equal(route.requests.length, 2);
    assert.ok(existsSync(segmentsPathOf(partial)));
  });

  test("throttled, high latency: 8 connections are several times faster than 1, both byte-exact", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/seg-speed.bin", { size: 8 * MB, throttleBytesPerSec: 2 * MB, latencyMs: 20 });
    const sha = await route.sha256();
    const timed = async (connections: number) => {
      const partial = join(dir, `c${connections}.bin.downloading`);
      origin.resetStats();
      const t0 = performance.now();
      await downloadSegmented(options(route, partial, { connections, minSegmentBytes: 512 * KiB }));
      const ms = performance.now() - t0;
      assert.ok(origin.maxConcurrent >= connections, `${origin.maxConcurrent} at once`);
      assert.equal(await fileSha256(partial), sha);
      return ms;
    };
    const one = await timed(1);
    const eight = await timed(8);
    t.diagnostic(
      `1 connection ${one.toFixed(0)} ms, 8 connections ${eight.toFixed(0)} ms: ${(one / eight).toFixed(1)}×`,
    );
    assert.ok(one / eight >= 4, `only ${(one / eight).toFixed(1)}× faster`);
  });
});

describe("downloadSegmented on a clean origin", () => {
  test("no retries: every segment is one request read to its end (undici's empty chunks are not a segment's end)", async (t) => {
    const dir = await tempDir(t);
    const route = origin.route("/seg-clean.bin", { size: 128 * MB, throttleBytesPerSec: 50e6, latencyMs: 20 });
    const partial = join(dir, "clean.bin.downloading");
    const retried: string[] = [];
    await downloadSegmented(
      options(route, partial, {
        connections: 4,
        minSegmentBytes: 32 * MB,
        onRetry: ({ error }) => retried.push(error.message),
      }),
    );
    assert.equal(await fileSha256(partial), await route.sha256());
    assert.deepEqual(retried, []);
    assert.equal(requested(route.requests).length, 4, "one request per segment, none repeated");
  });
});
