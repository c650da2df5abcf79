// Memory and time of a queue holding many waiting jobs (issue 6: 100,000 queued jobs ≤ 300 MB peak RSS).
// Usage: npm run build && node --import tsx bench/queued.ts [--jobs 0,1000,10000,100000] [--reps 1] [--sqlite]
//
// This process runs a 127.0.0.1 origin that accepts every request and never answers; each measurement runs in a
// fresh plain-node child (bench/queued-child.mjs, importing dist/) whose queue keeps its few running jobs stalled
// on response headers, so every other job stays waiting and nothing is downloaded or written. The child measures
// itself: peak RSS (VmHWM), heapUsed after forced GCs, enqueue/list/cancel/prune times. Output: a Markdown table on
// stdout and in bench/out/queued.md.
import { spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { createServer, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { median } from "./measure.js";

const here = new URL(".", import.meta.url).pathname;
const { values } = parseArgs({
  options: {
    jobs: { type: "string", default: "0,1000,10000,100000" },
    reps: { type: "string", default: "1" },
    sqlite: { type: "boolean", default: false },
  },
});
const counts = values.jobs.split(",").map(Number);
const reps = Number(values.reps);

interface Result {
  jobs: number;
  heapBase: number;
  rssBase: number;
  enqueueMs: number;
  enqueueFirstUs: number;
  enqueueLastUs: number;
  listMs: number;
  jsonMs: number;
  idToJobUs: number;
  pruneNoopMs: number;
  joinPendingWhileQueued: boolean;
  statusQueued: Record<string, number>;
  heapQueued: number;
  rssQueued: number;
  peakQueued: number;
  peakListed: number;
  cancelMs: number;
  idleAfterCancelMs: number;
  statusCancelled: Record<string, number>;
  heapCancelled: number;
  pruneMs: number;
  listedAfterPrune: number;
  heapPruned: number;
  rssPruned: number;
  peakEnd: number;
}

// The stalling origin: counts requests, never answers; sockets are destroyed at the end.
let requests = 0;
const pending = new Set<ServerResponse>();
const sockets = new Set<Socket>();
const server = createServer((_req, res) => {
  requests++;
  pending.add(res);
  res.once("close", () => pending.delete(res));
});
server.on("connection", (socket) => {
  sockets.add(socket);
  socket.once("close", () => sockets.delete(socket));
});
await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

const outDir = join(here, "out");
await mkdir(outDir, { recursive: true });
const tmp = await mkdtemp(join(outDir, "queued-"));

function runChild(jobs: number, dest: string, sqlite: string | undefined): Promise<Result> {
  const args = ["--expose-gc", join(here, "queued-child.mjs"), String(jobs), base, dest];
  if (sqlite) args.push(sqlite);
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] });
  let stdout = "";
  child.stdout.on("data", (b: Buffer) => {
    stdout += b.toString();
  });
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code) => {
      if (code !== 0) reject(new Error(`queued-child.mjs ${jobs} exited ${code}`));
      else resolve(JSON.parse(stdout.trim().split("\n").at(-1) ?? "") as Result);
    });
  });
}

const results: Result[] = [];
const problems: string[] = [];
try {
  for (let rep = 0; rep < reps; rep++) {
    for (const jobs of counts) {
      const dest = await mkdtemp(join(tmp, `n${jobs}-`));
      const sqlite = values.sqlite ? join(tmp, `n${jobs}-${rep}.db`) : undefined;
      const before = requests;
      const r = await runChild(jobs, dest, sqlite);
      const running = Math.min(jobs, 5);
      if ((r.statusQueued.running ?? 0) !== running || (r.statusQueued.waiting ?? 0) !== jobs - running)
        problems.push(`${jobs} jobs: queued statuses ${JSON.stringify(r.statusQueued)}`);
      if ((r.statusCancelled.cancelled ?? 0) !== jobs)
        problems.push(`${jobs} jobs: after cancelAllJobs ${JSON.stringify(r.statusCancelled)}`);
      if (r.listedAfterPrune !== 0) problems.push(`${jobs} jobs: ${r.listedAfterPrune} jobs listed after pruneJobs`);
      if (jobs > 0 && !r.joinPendingWhileQueued) problems.push(`${jobs} jobs: join() resolved while jobs were queued`);
      if (requests - before > running)
        problems.push(`${jobs} jobs: ${requests - before} requests for ${running} slots`);
      const left = await readdir(dest);
      if (left.length > 0) problems.push(`${jobs} jobs: left ${left.length} file(s) in dest, e.g. ${left[0]}`);
      results.push(r);
      process.stderr.write(`${jobs} jobs: peak RSS ${mib(r.peakQueued)} MiB, heap ${mib(r.heapQueued)} MiB\n`);
    }
  }
} finally {
  for (const socket of sockets) socket.destroy();
  server.close();
  await rm(tmp, { recursive: true, force: true });
}

function mib(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}
function ms(value: number): string {
  return value < 10 ? value.toFixed(2) : value.toFixed(0);
}
/** The median of each numeric field over the repetitions of one job count. */
function summary(jobs: number): Result {
  const runs = results.filter((r) => r.jobs === jobs);
  const first = runs[0] as Result;
  const out = { ...first } as Record<string, unknown>;
  for (const [key, value] of Object.entries(first))
    if (typeof value === "number")
      out[key] = median(runs.map((r) => (r as unknown as Record<string, number>)[key] ?? Number.NaN));
  return out as unknown as Result;
}

const rows = counts.map(summary);
const lines = [
  `Queued jobs (dlqueue ${values.sqlite ? "SqliteJobStore" : "MemoryJobStore"}, 5 running stalled on headers, the rest waiting); ` +
    `Node ${process.version}, ${reps} run(s) per row, median. RSS and heap in MiB; heap = heapUsed after forced GC.`,
  "",
  "| jobs | peak RSS queued | RSS queued | heap queued | enqueue µs/job (first → last tenth) | listJobs ms | JSON of all ms | peak RSS after JSON | prune (nothing) ms | cancelAll ms | until idle ms | heap cancelled | prune ms | heap pruned | RSS pruned | peak RSS end |",
  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ...rows
    .map((r) =>
      [
        r.jobs,
        mib(r.peakQueued),
        mib(r.rssQueued),
        mib(r.heapQueued),
        r.jobs
          ? `${((r.enqueueMs * 1000) / r.jobs).toFixed(1)} (${r.enqueueFirstUs.toFixed(1)} → ${r.enqueueLastUs.toFixed(1)})`
          : "-",
        ms(r.listMs),
        ms(r.jsonMs),
        mib(r.peakListed),
        ms(r.pruneNoopMs),
        ms(r.cancelMs),
        ms(r.idleAfterCancelMs),
        mib(r.heapCancelled),
        ms(r.pruneMs),
        mib(r.heapPruned),
        mib(r.rssPruned),
        mib(r.peakEnd),
      ].join(" | "),
    )
    .map((line) => `| ${line} |`),
  "",
];
// Per-job cost as a slope between job counts, so fixed costs (Node, the library, the dispatcher) drop out.
const sorted = [...rows].sort((a, b) => a.jobs - b.jobs);
for (let i = 1; i < sorted.length; i++) {
  const a = sorted[i - 1] as Result;
  const b = sorted[i] as Result;
  const d = b.jobs - a.jobs;
  lines.push(
    `- ${a.jobs} → ${b.jobs} jobs: ${((b.heapQueued - a.heapQueued) / d).toFixed(0)} B/job heap, ` +
      `${((b.peakQueued - a.peakQueued) / d).toFixed(0)} B/job peak RSS, ` +
      `${((b.heapCancelled - a.heapCancelled) / d).toFixed(0)} B/job heap once cancelled (kept until pruned)`,
  );
}
const biggest = sorted.at(-1);
if (biggest && biggest.jobs > 0) {
  const released = biggest.heapPruned - (sorted[0] as Result).heapPruned;
  lines.push(
    `- after cancel + prune of ${biggest.jobs} jobs the heap is ${mib(released)} MiB above the ${sorted[0]?.jobs}-job run's`,
  );
}
lines.push(
  problems.length ? `- **problems**: ${problems.join("; ")}` : "- checks: statuses, requests, nothing written: ok",
);
const table = `${lines.join("\n")}\n`;
process.stdout.write(table);
await writeFile(join(outDir, values.sqlite ? "queued-sqlite.md" : "queued.md"), table);
if (problems.length) process.exitCode = 1;
