// One measurement for bench/queued.ts: N jobs queued in one DownloadQueue, in a process of its own.
// Plain JS run by plain node (with --expose-gc), importing ../dist, so no TypeScript loader is measured.
// Usage: node --expose-gc bench/queued-child.mjs <jobs> <base-url> <dest-dir> [sqlite-file]
// The origin at <base-url> must accept requests and never answer, so the few running jobs stay running and
// every other job stays waiting. Prints one JSON line with the measurements.
import { readFileSync } from "node:fs";
import { DownloadQueue } from "../dist/index.js";

const [jobsArg, base, dest, sqlite] = process.argv.slice(2);
const n = Number(jobsArg);
const PARALLEL = 5;

if (typeof globalThis.gc !== "function") {
  console.error("run with node --expose-gc");
  process.exit(2);
}

/** Peak and current resident set (kB → bytes), from the kernel's own accounting. */
function rss() {
  const status = readFileSync("/proc/self/status", "utf8");
  const kB = (name) => Number(status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"))?.[1] ?? Number.NaN) * 1024;
  return { peak: kB("VmHWM"), now: kB("VmRSS") };
}

/** heapUsed after full collections (twice: the first may only queue finalizers and weak callbacks). */
function heapAfterGc() {
  globalThis.gc();
  globalThis.gc();
  return process.memoryUsage().heapUsed;
}

function timed(fn) {
  const t0 = performance.now();
  const value = fn();
  return { ms: performance.now() - t0, value };
}

const tick = () => new Promise((r) => setImmediate(r));

const out = { jobs: n };
const queue = new DownloadQueue({
  maxParallelDownloads: PARALLEL,
  retries: 0,
  headersTimeoutMs: 3_600_000,
  readTimeoutMs: 3_600_000,
  ...(sqlite ? { store: sqlite } : {}),
});
// One shared callback, as an application would pass (bench/dlqueue-lib.mjs does the same).
const onError = (job, error) => console.error(`job ${job.id}: ${error.message}`);
await tick();
out.heapBase = heapAfterGc();
out.rssBase = rss().now;

// Enqueue, timing each tenth separately: a per-job cost that grows with the queue shows up as a rising slope.
const tenth = Math.max(1, Math.floor(n / 10));
const slices = [];
const t0 = performance.now();
let sliceStart = t0;
for (let i = 0; i < n; i++) {
  queue.download({ source: `${base}/files/model-${i}.safetensors`, dest, onError });
  if ((i + 1) % tenth === 0) {
    const now = performance.now();
    slices.push(((now - sliceStart) * 1000) / tenth);
    sliceStart = now;
  }
}
out.enqueueMs = performance.now() - t0;
await tick(); // the deferred pump starts the first PARALLEL jobs
out.enqueueFirstUs = slices[0] ?? 0;
out.enqueueLastUs = slices.at(-1) ?? 0;

// Memory first: listing and serializing below allocate on their own.
out.heapQueued = heapAfterGc();
out.rssQueued = rss().now;
out.peakQueued = rss().peak;

const statuses = (jobs) => {
  const count = {};
  for (const job of jobs) count[job.status] = (count[job.status] ?? 0) + 1;
  return count;
};
let listed = timed(() => queue.listJobs());
out.listMs = listed.ms;
out.statusQueued = statuses(listed.value);
out.jsonMs = timed(() => JSON.stringify(listed.value).length).ms; // what GET /api/v1/download_queue/ does
listed = undefined;
out.idToJobUs = n ? timed(() => queue.idToJob(n - 1)).ms * 1000 : 0;
out.pruneNoopMs = timed(() => queue.pruneJobs()).ms; // nothing finished yet: a scan that keeps everything
let joined = false;
const joining = queue.join().then(() => {
  joined = true;
});
await tick();
out.joinPendingWhileQueued = !joined;
out.peakListed = rss().peak;

// Cancel everything: the waiting jobs at once, the running ones through their abort.
out.cancelMs = timed(() => queue.cancelAllJobs()).ms;
const t1 = performance.now();
await joining;
out.idleAfterCancelMs = performance.now() - t1;
out.statusCancelled = statuses(queue.listJobs());
out.heapCancelled = heapAfterGc(); // cancelled jobs stay listable until pruned

out.pruneMs = timed(() => queue.pruneJobs()).ms;
out.listedAfterPrune = queue.listJobs().length;
out.heapPruned = heapAfterGc();
out.rssPruned = rss().now;
await queue.stop();
out.peakEnd = rss().peak;
console.log(JSON.stringify(out));
