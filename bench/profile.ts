// `node --import tsx bench/profile.ts [--workload small|big] [--reps 3] [--dist dist/index.js]`
// Where dlqueue's time goes: runs bench/profile-small.mjs against the benchmark's nginx (same data as `npm run bench`)
// as dlqueue's library and as a bare undici client with dlqueue's per-job steps added one at a time, then profiles
// the library with `node --cpu-prof` and sums the profile by function, by module and by the dlqueue function on
// the stack. Writes bench/out/profile/<workload>.md (and the .cpuprofile, to open in Chrome DevTools).
import { execFileSync, spawn } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { ensureData, FULL } from "./data.js";
import { median } from "./measure.js";
import { startNginx } from "./nginx.js";

const repo = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const out = `${repo}/bench/out`;
const { values: args } = parseArgs({
  options: {
    workload: { type: "string", default: "small" },
    reps: { type: "string", default: "3" },
    dist: { type: "string", default: `${repo}/dist/index.js` },
    interval: { type: "string", default: "100" },
    /** Where the clients download to; e.g. /dev/shm to see what the destination filesystem costs. */
    "runs-dir": { type: "string", default: `${repo}/bench/out/runs` },
  },
});
const workload = args.workload as "small" | "big";
const reps = Number(args.reps);
const runs = args["runs-dir"];
await mkdir(runs, { recursive: true });
const tag = runs.startsWith(out) ? "" : `-${runs.replace(/\W+/g, "_")}`;

interface Result {
  wallMs: number;
  perJobUs: number;
  cpuMs: number;
  maxRssMiB: number;
  /** Peaks sampled every 50 ms by the client: process.memoryUsage() and /proc/self/status RssAnon/RssFile. */
  peakMiB: Record<"heapTotal" | "external" | "arrayBuffers" | "rssAnon" | "rssFile", number>;
}

interface Variant {
  label: string;
  args: string[];
  /** Flags for node itself (V8 options must be given at start-up; v8.setFlagsFromString later has no effect). */
  node?: string[];
}

const SMALL: Variant[] = [
  { label: "dlqueue library (DownloadQueue, 5 parallel)", args: ["--variant", "lib"] },
  { label: "bare: undici request → for await → createWriteStream", args: ["--variant", "stream"] },
  { label: "+ write to .downloading, rename at the end", args: ["--variant", "stream", "--steps", "partial"] },
  { label: "+ await 'open', 1 MiB highWaterMark", args: ["--variant", "stream", "--steps", "partial,open,hwm"] },
  { label: "+ stat of the partial (ENOENT)", args: ["--variant", "stream", "--steps", "partial,open,hwm,stat"] },
  {
    label: "+ lock file (open wx, write pid, close, rm)",
    args: ["--variant", "stream", "--steps", "partial,open,hwm,stat,lock"],
  },
  {
    label: "+ validators sidecar (writeFile tmp, rename, rm)",
    args: ["--variant", "stream", "--steps", "partial,open,hwm,stat,lock,meta"],
  },
  {
    label: "+ stat(dest) and a progress callback per chunk",
    args: ["--variant", "stream", "--steps", "partial,open,hwm,stat,lock,meta,isdir,progress"],
  },
  { label: "undici dispatch, handler → fs.write at offsets", args: ["--variant", "dispatch"] },
  {
    label: "dlqueue library, node --max-semi-space-size=1",
    args: ["--variant", "lib"],
    node: ["--max-semi-space-size=1"],
  },
  {
    label: "prototype: raw HTTP/1.1 on net.Socket, no undici (connection: close per file)",
    args: ["--variant", "raw"],
  },
];
const BIG: Variant[] = [
  { label: "dlqueue library", args: ["--variant", "lib"] },
  {
    label: "dlqueue library, node --max-semi-space-size=1",
    args: ["--variant", "lib"],
    node: ["--max-semi-space-size=1"],
  },
  { label: "bare: request → for await → WriteStream (16 KiB hwm)", args: ["--variant", "stream"] },
  {
    label: "bare, 1 MiB hwm, fsync before close (dlqueue: files ≥ 8 MiB)",
    args: ["--variant", "stream", "--steps", "hwm,flush"],
  },
  { label: "bare, WriteStream 1 MiB hwm (dlqueue's setting)", args: ["--variant", "stream", "--steps", "hwm"] },
  {
    label: "bare, 1 MiB hwm, undici body highWaterMark 1 MiB",
    args: ["--variant", "stream", "--steps", "hwm", "--hwm", String(1024 * 1024)],
  },
  { label: "undici dispatch, handler → fs.write at offsets", args: ["--variant", "dispatch"] },
  {
    label: "prototype: raw HTTP/1.1 on net.Socket, onread into a pool of 8 × 256 KiB, no undici",
    args: ["--variant", "raw"],
  },
  { label: "src/transfer/segments.ts, 8 connections", args: ["--variant", "segmented", "--connections", "8"] },
  { label: "src/transfer/segments.ts, 1 connection", args: ["--variant", "segmented", "--connections", "1"] },
];

function runClient(base: string, dest: string, extra: string[], nodeFlags: string[] = []): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      [
        ...nodeFlags,
        `${repo}/bench/profile-small.mjs`,
        "--base",
        base,
        "--dest",
        dest,
        "--workload",
        workload,
        "--dist",
        args.dist,
        ...extra,
      ],
      { stdio: ["ignore", "pipe", "inherit"] },
    );
    let text = "";
    child.stdout.on("data", (b: Buffer) => {
      text += b;
    });
    child.once("error", reject);
    child.once("close", (code) => {
      const line = text.trim().split("\n").at(-1) ?? "";
      if (code !== 0) reject(new Error(`client exited ${code}: ${text}`));
      else resolve(JSON.parse(line) as Result);
    });
  });
}

// ---- .cpuprofile analysis ----------------------------------------------------------------------------------------

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

function moduleOf(url: string, name: string): string {
  if (!url) return name.startsWith("(") ? name : "(native/V8)";
  if (url.includes("/node_modules/undici/")) return "undici";
  if (url.includes("/dist/")) return "dlqueue (dist/)";
  if (url.includes("/node_modules/")) return `node_modules/${url.split("/node_modules/")[1]?.split("/")[0]}`;
  if (/node:internal\/(fs|streams\/.*fs)|node:fs/.test(url)) return "node fs";
  if (/node:internal\/streams|node:stream/.test(url)) return "node streams";
  if (/node:events|event_target|abort_controller/.test(url)) return "node events/AbortSignal";
  if (/node:net|stream_base|node:internal\/net/.test(url)) return "node net";
  if (/process\/task_queues|timers|async_hooks|promise/.test(url)) return "node microtasks/timers";
  if (url.startsWith("node:")) return "node (other)";
  return url.replace(/^file:\/\//, "");
}

function short(frame: CallFrame): string {
  const file = frame.url
    .replace(/^file:\/\//, "")
    .replace(repo, "")
    .replace(/^.*node_modules\//, "");
  return `${frame.functionName || "(anonymous)"} ${file}:${frame.lineNumber + 1}`;
}

function analyze(profile: CpuProfile, jobs: number): string {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // Two weights per sample: 1 (a CPU-time estimate), and the time until the next sample. On a loaded machine the
  // sampler thread is often late (intervals of several ms), so the time-weighted figures also count the time the
  // main thread waited for a core; the ranking uses sample counts.
  const count = new Map<number, number>();
  const time = new Map<number, number>();
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i] as number;
    count.set(id, (count.get(id) ?? 0) + 1);
    time.set(id, (time.get(id) ?? 0) + (profile.timeDeltas[i + 1] ?? 0));
  }
  const isIdle = (id: number) => byId.get(id)?.callFrame.functionName === "(idle)";
  let busySamples = 0;
  let busyTime = 0;
  let idleTime = 0;
  for (const [id, n] of count) {
    if (isIdle(id)) idleTime += time.get(id) ?? 0;
    else {
      busySamples += n;
      busyTime += time.get(id) ?? 0;
    }
  }
  const deltas = profile.timeDeltas.slice(1).sort((x, y) => x - y);
  const quantile = (f: number) => deltas[Math.floor(f * (deltas.length - 1))] ?? 0;

  type Acc = { n: number; t: number };
  const byFunction = new Map<string, Acc>();
  const byModule = new Map<string, Acc>();
  const byDlq = new Map<string, Acc>();
  const add = (m: Map<string, Acc>, k: string, n: number, t: number) => {
    const a = m.get(k) ?? { n: 0, t: 0 };
    a.n += n;
    a.t += t;
    m.set(k, a);
  };
  for (const [id, n] of count) {
    if (isIdle(id)) continue;
    const t = time.get(id) ?? 0;
    const f = (byId.get(id) as ProfileNode).callFrame;
    add(byFunction, short(f), n, t);
    add(byModule, moduleOf(f.url, f.functionName), n, t);
    // The nearest dlqueue frame on the stack: what the time was spent on behalf of (synchronously).
    let owner = "(no dlqueue frame: event loop, undici parser, stream internals)";
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const cf = byId.get(cur)?.callFrame;
      if (cf?.url.includes("/dist/")) {
        owner = short(cf);
        break;
      }
    }
    add(byDlq, owner, n, t);
  }
  const table = (title: string, m: Map<string, Acc>, rows: number) =>
    [
      `#### ${title}`,
      "",
      "| | samples | % of busy samples | time-weighted ms | µs per job (time-weighted) |",
      "| --- | ---: | ---: | ---: | ---: |",
      ...[...m]
        .sort((x, y) => y[1].n - x[1].n)
        .slice(0, rows)
        .map(
          ([k, { n, t }]) =>
            `| \`${k}\` | ${n} | ${((100 * n) / busySamples).toFixed(1)}% | ${(t / 1000).toFixed(1)} | ` +
            `${(t / jobs).toFixed(0)} |`,
        ),
      "",
    ].join("\n");
  return [
    `Profile: ${profile.samples.length} samples; main thread busy ${(busyTime / 1000).toFixed(0)} ms ` +
      `(${(busyTime / jobs).toFixed(0)} µs per job), idle ${(idleTime / 1000).toFixed(0)} ms. Sampling intervals ` +
      `p50 ${quantile(0.5)} µs, p90 ${quantile(0.9)} µs, p99 ${quantile(0.99)} µs (asked: ${args.interval} µs).`,
    "",
    table("By module (self)", byModule, 14),
    table("By function (self)", byFunction, 30),
    table("By nearest dlqueue function on the stack", byDlq, 25),
  ].join("\n");
}

// ---- main --------------------------------------------------------------------------------------------------------

const data = await ensureData(`${out}/data`, FULL);
const nginx = await startNginx(data.root);
const report: string[] = [
  `# dlqueue profile: ${workload === "big" ? `1 × ${data.big.size / 2 ** 30} GiB` : `${data.small.length} × 16 KiB`}`,
  "",
  `- date ${new Date().toISOString()}, commit ${execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: repo }).toString().trim()}, dist ${args.dist}`,
  `- node ${process.version}; each client run by plain node (bench/profile-small.mjs), ${reps} repetitions, medians`,
  `- downloads into ${runs} (${execFileSync("df", ["--output=fstype", runs]).toString().split("\n")[1]?.trim()})`,
  "",
];
try {
  const variants = workload === "big" ? BIG : SMALL;
  const samples = new Map<Variant, Result[]>(variants.map((v) => [v, []]));
  for (let rep = 0; rep < reps; rep++) {
    for (const v of variants) {
      const dir = await mkdtemp(`${runs}/profile-`);
      execFileSync("sync");
      const r = await runClient(nginx.baseUrl, dir, v.args, v.node);
      await rm(dir, { recursive: true, force: true });
      samples.get(v)?.push(r);
      console.log(`rep ${rep + 1} ${v.label}: ${r.wallMs} ms, cpu ${r.cpuMs} ms, rss ${r.maxRssMiB} MiB`);
    }
  }
  const jobs = workload === "big" ? 1 : data.small.length;
  report.push(
    "| client | wall ms | µs per job | CPU ms | CPU µs per job | peak RSS MiB | of which anon / file-mapped |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (const [v, rs] of samples) {
    const wall = median(rs.map((r) => r.wallMs));
    const cpu = median(rs.map((r) => r.cpuMs));
    report.push(
      `| ${v.label} | ${wall.toFixed(0)} | ${((wall * 1000) / jobs).toFixed(0)} | ${cpu.toFixed(0)} | ` +
        `${((cpu * 1000) / jobs).toFixed(0)} | ${Math.max(...rs.map((r) => r.maxRssMiB))} | ` +
        `${Math.max(...rs.map((r) => r.peakMiB.rssAnon))} / ${Math.max(...rs.map((r) => r.peakMiB.rssFile))} |`,
    );
  }
  report.push("", "wall and CPU include node start-up and imports (~50 ms bare, ~170 ms with dist/index.js).", "");

  const profDir = `${out}/profile/${workload}${tag}`;
  await rm(profDir, { recursive: true, force: true });
  await mkdir(profDir, { recursive: true });
  const dir = await mkdtemp(`${runs}/profile-`);
  execFileSync("sync");
  const profiled = await runClient(
    nginx.baseUrl,
    dir,
    ["--variant", "lib"],
    ["--cpu-prof", `--cpu-prof-dir=${profDir}`, `--cpu-prof-interval=${args.interval}`],
  );
  await rm(dir, { recursive: true, force: true });
  const file = (await readdir(profDir)).find((f) => f.endsWith(".cpuprofile"));
  if (!file) throw new Error("no .cpuprofile written");
  const profile = JSON.parse(await readFile(`${profDir}/${file}`, "utf8")) as CpuProfile;
  report.push(
    `### dlqueue library under --cpu-prof (${args.interval} µs sampling): ${profiled.wallMs} ms wall`,
    "",
    `(${profDir.replace(`${repo}/`, "")}/${file})`,
    "",
    analyze(profile, jobs),
  );
} finally {
  await nginx.stop();
}
const text = report.join("\n");
await writeFile(`${out}/profile/${workload}${tag}.md`, `${text}\n`);
console.log(text);
