// `npm run bench`: dlqueue against curl, aria2c and a naive Node client, same server, same run.
// Flags: --reps N (default 3), --quick (tiny sizes, for development), --only <workload>, --no-other-nodes (no rows
// on Node 22 and 24, which are otherwise installed from npm into bench/out/node/ on first use).
// --only models runs only the model-repo row (bench/models.ts: dlqueue vs @huggingface/hub's snapshotDownload).
// --only workers runs only the shared queue's row (bench/workers.ts: 1, 2 and 4 `dlqueue worker`s on BullMQ + Redis).
// --only behind runs only the large file queued behind small ones (does a file that started over one connection
// take the slots the small ones free?).
// --only startup runs only the CLI start-up table (bench/startup.ts: --version, --help, a 1 KB get, Node's own start).
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg, release, totalmem } from "node:os";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { type Bar, writeChart } from "./chart.js";
import { ensureData, ensureSparse, FULL, QUICK } from "./data.js";
import { measure, median, type Outcome, type Sample, verify } from "./measure.js";
import { ensureTools, startNginx } from "./nginx.js";
import { ensureOtherNodes, type OtherNode } from "./nodes.js";
import {
  CURL,
  DLQUEUE_DIST,
  detectCaSupport,
  type Job,
  OTHER_NODE_ROWS,
  REFERENCE,
  TOOLS,
  type Tool,
  type ToolId,
} from "./tools.js";

const repo = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const out = `${repo}/bench/out`;
const MiB = 1024 * 1024;

interface Workload {
  id: string;
  title: string;
  urls: string[];
  /** Download name → sha256. */
  expected: Map<string, string>;
  bytes: number;
  tools: ToolId[];
  source?: string;
  /** Fewer repetitions than the rest, for a workload that is about memory rather than time. */
  reps?: number;
  /** A sparse source needs no page cache warmed up. */
  skipWarmUp?: boolean;
  /** The URLs are https, served with a certificate signed by the bench's own CA. */
  tls?: boolean;
}

interface Row {
  tool: ToolId;
  samples: Sample[];
  error?: string;
  command?: string;
}

const { values: args } = parseArgs({
  options: {
    reps: { type: "string", default: "3" },
    quick: { type: "boolean", default: false },
    only: { type: "string" },
    "no-other-nodes": { type: "boolean", default: false },
  },
});
const reps = Number(args.reps);
// The model-repo row has a harness of its own (its data, stand-in hub and nginx); alone it needs nothing below.
const modelsArgs = (...extra: string[]) => [
  "--import",
  "tsx",
  `${repo}/bench/models.ts`,
  "--reps",
  String(reps),
  ...(args.quick ? ["--quick"] : []),
  ...extra,
];
if (args.only === "models") {
  for (const cdn of ["node", "nginx"]) {
    const status = spawnSync("node", modelsArgs("--cdn", cdn), { cwd: repo, stdio: "inherit" }).status;
    if (status !== 0) process.exit(status ?? 1);
  }
  process.exit(0);
}
// The shared queue's row likewise: its own redis-server, nginx, throttled origin and worker processes.
const workersArgs = (repetitions: number, ...extra: string[]) => [
  "--import",
  "tsx",
  `${repo}/bench/workers.ts`,
  "--reps",
  String(repetitions),
  ...(args.quick ? ["--quick"] : []),
  ...extra,
];
if (args.only === "workers") {
  process.exit(spawnSync("node", workersArgs(reps), { cwd: repo, stdio: "inherit" }).status ?? 1);
}
// And the CLI start-up table: its own nginx and a 1 KB file.
const startupArgs = ["--import", "tsx", `${repo}/bench/startup.ts`];
if (args.only === "startup") {
  process.exit(spawnSync("node", startupArgs, { cwd: repo, stdio: "inherit" }).status ?? 1);
}
const sizes = args.quick ? QUICK : FULL;
const throttledSize = args.quick ? 16 * MiB : 512 * MiB;
const benchStart = performance.now();
// Other work on this machine adds noise; the load average before and after says how much there was.
const loadBefore = loadavg();

ensureTools();
if (!existsSync(DLQUEUE_DIST)) {
  try {
    execFileSync("npm", ["run", "build"], { cwd: repo, stdio: "inherit" });
  } catch {
    console.log("npm run build failed; the dlqueue rows will show why they could not run");
  }
}

const want = (id: string) => !args.only || args.only === id;
const skipped: string[] = [];
// Looked at once, after the build: whether dist/ has the CLI's --ca-certificate and the library's ca option.
const caSupport = detectCaSupport();
const NODE_ROW_WORKLOADS = ["big", "medium", "small", "big-tls", "medium-tls"];
let otherNodes: OtherNode[] = [];
if (!args["no-other-nodes"] && NODE_ROW_WORKLOADS.some(want)) {
  const installed = ensureOtherNodes(`${out}/node`);
  otherNodes = installed.nodes;
  skipped.push(...installed.problems);
}
/** The same clients on each other Node line that is installed, for the workloads that list them. */
const onOtherNodes = (tools: ToolId[]): ToolId[] =>
  OTHER_NODE_ROWS.filter((r) => tools.includes(r.of) && otherNodes.some((n) => n.major === r.major)).map((r) => r.tool);

const data = await ensureData(`${out}/${args.quick ? "data-quick" : "data"}`, sizes);
const nginx = await startNginx(data.root);
/** Test origins in processes of their own (bench/origin-child.ts), ended with the run. */
const origins: ChildProcess[] = [];

/** Starts an origin with `args` and reads the `files` it serves, as it prints them: URL and sha256 of each. */
async function startOrigin(args: string[], files: number): Promise<{ url: string; sha256: string }[]> {
  const child = spawn("node", ["--import", "tsx", `${repo}/bench/origin-child.ts`, ...args], {
    cwd: repo,
    stdio: ["pipe", "pipe", "inherit"],
  });
  origins.push(child);
  const served: { url: string; sha256: string }[] = [];
  for await (const line of createInterface({ input: child.stdout as NodeJS.ReadableStream })) {
    served.push(JSON.parse(line));
    if (served.length === files) break;
  }
  return served;
}

/** What each served file must hash to, by the name a client saves it under. */
const servedNames = (served: { url: string; sha256: string }[]) =>
  new Map(served.map((f) => [f.url.split("/").at(-1) as string, f.sha256]));

const files = (fs: { path: string; sha256: string }[], base = nginx.baseUrl) => ({
  urls: fs.map((f) => `${base}/${f.path}`),
  expected: new Map(fs.map((f) => [f.path.split("/").at(-1) ?? f.path, f.sha256])),
});
const withNodes = (tools: ToolId[]) => [...tools, ...onOtherNodes(tools)];
const gib = (n: number) => `${+(n / 2 ** 30).toFixed(2)} GiB`;
const size = (n: number) => (n >= 2 ** 30 ? gib(n) : n >= MiB ? `${n / MiB} MiB` : `${n / 1024} KiB`);
const nginxWorkloads: Workload[] = [
  {
    id: "big",
    title: `1 × ${size(data.big.size)} (nginx)`,
    ...files([data.big]),
    bytes: data.big.size,
    tools: withNodes(["lib", "lib1", "libNoSync", "lib8", "cli", "curl", "aria2", "aria8", "naive", "floor"]),
    source: `${data.root}/${data.big.path}`,
  },
  {
    id: "medium",
    title: `${data.medium.length} × ${size(sizes.medium)} (nginx)`,
    ...files(data.medium),
    bytes: data.medium.reduce((a, f) => a + f.size, 0),
    tools: withNodes(["lib", "libNoSync", "cli", "curl", "aria2", "naive"]),
  },
  {
    id: "small",
    title: `${data.small.length} × ${size(sizes.small)} (nginx)`,
    ...files(data.small),
    bytes: data.small.reduce((a, f) => a + f.size, 0),
    // The bare undici client shows how much of the gap to curl is the HTTP client's and the filesystem's.
    tools: withNodes(["lib", "cli", "curl", "aria2", "naive", "undiciFloor"]),
  },
  // Real model downloads are https: the same files over TLS, each client trusting the bench's CA as its users would.
  {
    id: "big-tls",
    title: `1 × ${size(data.big.size)} (nginx, https)`,
    ...files([data.big], nginx.httpsBaseUrl),
    bytes: data.big.size,
    tools: withNodes(["lib", "lib1", "lib8", "cli", "curl", "aria2", "aria8", "naive"]),
    tls: true,
  },
  {
    id: "medium-tls",
    title: `${data.medium.length} × ${size(sizes.medium)} (nginx, https)`,
    ...files(data.medium, nginx.httpsBaseUrl),
    bytes: data.medium.reduce((a, f) => a + f.size, 0),
    tools: withNodes(["lib", "cli", "curl", "aria2", "naive"]),
    tls: true,
  },
];
const workloads = nginxWorkloads.filter((w) => want(w.id));

// Memory must not grow with the file: the same clients on a file ten times the big one, once each.
if (want("huge")) {
  const huge = await ensureSparse(data.root, "huge.bin", args.quick ? 64 * MiB : 20 * 1024 * MiB);
  workloads.push({
    id: "huge",
    title: `1 × ${size(huge.size)} of zeros, for memory (nginx, one repetition)`,
    ...files([huge]),
    bytes: huge.size,
    tools: ["lib", "cli", "curl"],
    reps: 1,
    skipWarmUp: true,
  });
}

if (want("throttled")) {
  if (existsSync(`${repo}/test/helpers/origin.ts`)) {
    const served = await startOrigin([String(throttledSize)], 1);
    workloads.push({
      id: "throttled",
      title: `1 × ${size(throttledSize)}, 50 MB/s per connection, +20 ms per request (test origin)`,
      urls: served.map((f) => f.url),
      expected: servedNames(served),
      bytes: throttledSize,
      tools: ["lib", "lib1", "lib8", "cli", "curl", "aria2", "aria8", "naive"],
    });
  } else skipped.push("throttled: test/helpers/origin.ts does not exist yet");
}

// A model's weights queued behind its small files: the large file starts while every other slot is taken.
const behindSize = args.quick ? 64 * MiB : 256 * MiB;
if (want("behind")) {
  const served = await startOrigin([String(behindSize), "1", "--behind", "4"], 5);
  workloads.push({
    id: "behind",
    title: `1 × ${size(behindSize)} at 50 MB/s per connection (+20 ms) queued behind 4 small files that take 1 s each (test origin)`,
    urls: served.map((f) => f.url),
    expected: servedNames(served),
    bytes: behindSize + 4 * 16 * 1024,
    tools: ["lib", "cli", "curl", "aria2", "aria8", "naive"],
  });
}

/** One download by one tool into a fresh folder, verified and then deleted. */
async function runOnce(w: Workload, tool: ToolId): Promise<{ command: string; outcome: Outcome }> {
  const dir = await mkdtemp(`${out}/runs/dl-`);
  const work = await mkdtemp(`${out}/runs/work-`);
  const job: Job = {
    urls: w.urls,
    dir,
    work,
    source: w.source,
    ca: w.tls ? nginx.caPath : undefined,
    caSupport,
    nodes: Object.fromEntries(otherNodes.map((n) => [n.major, n.bin])),
  };
  const t: Tool = TOOLS[tool];
  const cmd = t.command(job);
  const env = t.env?.(job);
  const command = [...Object.entries(env ?? {}).map(([k, v]) => `${k}=${v}`), ...cmd]
    .join(" ")
    .replaceAll(nginx.caPath, "<ca>")
    .replaceAll(dir, "<dir>")
    .replaceAll(work, "<work>")
    .replaceAll(data.root, "<data>")
    .replaceAll(`${repo}/`, "");
  // Writeback of an earlier run's files must not land on this one.
  execFileSync("sync");
  // Generous, only there so that a hung client cannot stall the whole benchmark.
  const timeoutMs = 60_000 + (w.bytes / 10e6) * 1000;
  let outcome = await measure(cmd, `${work}/time.txt`, timeoutMs, env);
  const problem = outcome.ok ? await verify(dir, w.expected) : null;
  if (problem) outcome = { ok: false, error: problem };
  await rm(dir, { recursive: true, force: true });
  await rm(work, { recursive: true, force: true });
  return { command, outcome };
}

const results = new Map<Workload, Row[]>();
await mkdir(`${out}/runs`, { recursive: true });
try {
  for (const w of workloads) {
    const rows = w.tools.map((tool): Row => ({ tool, samples: [] }));
    results.set(w, rows);
    // An untimed pass first, so that whichever tool goes first does not pay for a cold server or page cache.
    if (!w.skipWarmUp) {
      const warm = await runOnce(w, "curl");
      console.log(`${w.id} warm-up (curl, untimed): ${warm.outcome.ok ? "ok" : warm.outcome.error}`);
    }
    const repsHere = w.reps ?? reps;
    for (let rep = 0; rep < repsHere; rep++) {
      // Rotating the order each repetition spreads drift over all tools.
      const order = rows.map((_, i) => rows[(i + rep) % rows.length] as Row);
      for (const row of order) {
        if (row.error) continue;
        const { command, outcome } = await runOnce(w, row.tool);
        row.command ??= command;
        const tag = `${w.id} rep ${rep + 1}/${repsHere} ${row.tool}`;
        if (!outcome.ok) {
          row.error = `rep ${rep + 1}: ${outcome.error}`;
          console.log(`${tag}: FAILED ${outcome.error}`);
        } else {
          row.samples.push(outcome.sample);
          const s = outcome.sample;
          console.log(`${tag}: ${s.wall.toFixed(2)} s, cpu ${s.cpu.toFixed(2)} s, rss ${s.rssMiB.toFixed(0)} MiB`);
        }
      }
    }
  }
} finally {
  await nginx.stop();
  for (const child of origins) child.stdin?.end();
}

const fmt = (n: number, d = 2) => n.toFixed(d);

const tables: string[] = [];
const bars: { title: string; bars: Bar[] }[] = [];
for (const [w, rows] of results) {
  const ok = (r: Row) => !r.error && r.samples.length > 0;
  const ref = rows.find((r) => r.tool === REFERENCE && ok(r));
  const refWall = ref ? median(ref.samples.map((s) => s.wall)) : undefined;
  const refCpu = ref ? median(ref.samples.map((s) => s.cpu)) : undefined;
  const curlRow = rows.find((r) => r.tool === CURL && ok(r));
  const curlWall = curlRow ? median(curlRow.samples.map((s) => s.wall)) : undefined;
  const lines = [
    `### ${w.title}`,
    "",
    "| tool | median wall s | (min–max) | MB/s | median CPU s | peak RSS MiB | wall ÷ dlqueue | CPU ÷ dlqueue | wall ÷ curl |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  const panel: Bar[] = [];
  for (const r of rows) {
    const label = TOOLS[r.tool].label;
    if (!ok(r)) {
      lines.push(`| ${label} | **FAILED** | | | | | | | |`);
      panel.push({ label, failed: true });
      continue;
    }
    const walls = r.samples.map((s) => s.wall);
    const wall = median(walls);
    const cpu = median(r.samples.map((s) => s.cpu));
    const rss = Math.max(...r.samples.map((s) => s.rssMiB));
    const ratio = (x: number, base?: number) => (base ? `${fmt(x / base)}×` : "–");
    lines.push(
      `| ${label} | ${fmt(wall)} | ${fmt(Math.min(...walls))}–${fmt(Math.max(...walls))} | ${fmt(w.bytes / 1e6 / wall, 0)} | ${fmt(cpu)} | ${fmt(rss, 0)} | ${ratio(wall, refWall)} | ${ratio(cpu, refCpu)} | ${ratio(wall, curlWall)} |`,
    );
    panel.push({ label, seconds: wall, ratio: refWall ? wall / refWall : undefined, reference: r === ref });
  }
  const failures = rows.filter((r) => r.error);
  if (failures.length) lines.push("", ...failures.map((r) => `- FAILED ${TOOLS[r.tool].label}: ${r.error}`));
  lines.push(
    "",
    "<details><summary>commands</summary>",
    "",
    ...rows.map((r) => `- \`${r.command}\``),
    "",
    "</details>",
  );
  tables.push(lines.join("\n"));
  bars.push({ title: w.title, bars: panel });
}

// Memory must not grow with the number of queued jobs either: bench/queued.ts measures a queue holding them.
let queued = "";
if (want("queued")) {
  const run = spawnSync("node", ["--import", "tsx", `${repo}/bench/queued.ts`, "--jobs", "0,1000,10000,100000"], {
    cwd: repo,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  queued = `### A queue holding many waiting jobs (bench/queued.ts)\n\n${run.status === 0 ? run.stdout : `FAILED (exit ${run.status})`}`;
}

// What a script calling the CLI once per file pays: Node's start, `--version`, `--help`, a 1 KB get (bench/startup.ts).
let startup = "";
if (want("startup")) {
  const run = spawnSync("node", [...startupArgs, "--embed"], {
    cwd: repo,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  startup = run.status === 0 ? run.stdout : `### CLI start-up (bench/startup.ts)\n\nFAILED (exit ${run.status})\n`;
}

// A Hugging Face repo of 50 files, one of 1 GiB: dlqueue vs @huggingface/hub's snapshotDownload (bench/models.ts),
// its CDN played once by the stand-in hub's own node:http server and once by nginx: the ratio depends on it.
let models = "";
for (const cdn of want("models") ? ["node", "nginx"] : []) {
  const run = spawnSync("node", modelsArgs("--embed", "--cdn", cdn), {
    cwd: repo,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  const tag = cdn === "nginx" ? "models-nginx" : "models";
  if (run.status === 0) {
    models += run.stdout;
    bars.push(JSON.parse(readFileSync(`${out}/${tag}-panel.json`, "utf8")) as { title: string; bars: Bar[] });
  } else models += `### hf:// repo, CDN ${cdn} (bench/models.ts)\n\nFAILED (exit ${run.status})\n`;
}

// 1, 2 and 4 `dlqueue worker` processes on one Redis, and the shared queue's enqueue rate (bench/workers.ts). One
// repetition here keeps the row near two minutes; `--only workers` runs --reps of them.
let workers = "";
if (want("workers")) {
  const run = spawnSync("node", workersArgs(1, "--embed"), {
    cwd: repo,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  workers =
    run.status === 0
      ? run.stdout
      : `### Shared queue (BullMQ + Redis) (bench/workers.ts)\n\nFAILED (exit ${run.status})\n`;
}

// dist/ is built from the working tree, which may be ahead of the last commit.
const dlqueueVersion = [
  spawnSync("git", ["rev-parse", "--short", "HEAD"], { cwd: repo, encoding: "utf8" }).stdout.trim(),
  spawnSync("git", ["status", "--porcelain", "--", "src"], { cwd: repo, encoding: "utf8" }).stdout.trim()
    ? "(+ uncommitted changes in src/)"
    : "",
]
  .filter(Boolean)
  .join(" ");
// Version banners go to stdout or stderr depending on the tool; the first line is enough.
const version = (cmd: string, flag: string) => {
  const r = spawnSync(cmd, [flag], { encoding: "utf8" });
  return `${r.stdout}${r.stderr}`.split("\n")[0]?.replace(/ \(.*/, "").trim();
};
const machine = [
  `- date: ${new Date().toISOString()}; repetitions: ${reps}${args.quick ? " (--quick sizes)" : ""}; whole benchmark took ${fmt((performance.now() - benchStart) / 60_000, 1)} min`,
  `- CPU: ${cpus()[0]?.model} × ${cpus().length} cores; RAM ${gib(totalmem())}; kernel ${release()}`,
  `- load average (1/5/15 min) at start ${loadBefore.map((l) => l.toFixed(2)).join(" ")}, at end ${loadavg()
    .map((l) => l.toFixed(2))
    .join(" ")}`,
  `- dlqueue: dist/ built from commit ${dlqueueVersion}`,
  `- node ${[process.version, ...otherNodes.map((n) => n.version)].join(", ")}; ${version("curl", "--version")}; ${version("aria2c", "--version")}; ${version("/usr/sbin/nginx", "-v")}`,
];
const trust = (flag: boolean, own: string, what: string) =>
  flag ? own : `\`NODE_EXTRA_CA_CERTS\` (this build has no ${what})`;
const tlsNote = [...results.keys()].some((w) => w.tls)
  ? `- https rows: the same nginx on a second port with TLS 1.2/1.3 (HTTP/1.1, session cache on, no kernel TLS) and an
  RSA 2048 certificate for 127.0.0.1 signed by a CA the bench makes with openssl at start. Each client trusts that CA
  as its users would: curl \`--cacert\`, aria2c \`--ca-certificate\`, naive Node \`NODE_EXTRA_CA_CERTS\`, dlqueue CLI
  ${trust(caSupport.cli, "`--ca-certificate`", "`--ca-certificate`")}, dlqueue library ${trust(caSupport.lib, "its `ca` option", "`ca` option")}.
`
  : "";
// Read off bench/profile.ts by hand (a profile needs the machine to itself), and carried along by every full run.
const timeNotesPath = `${repo}/bench/where-the-time-goes.md`;
const timeNotes = existsSync(timeNotesPath) ? readFileSync(timeNotesPath, "utf8") : "";
const md = `# dlqueue benchmark

Generated by \`npm run bench\` (bench/run.ts). Every tool ran in the same run against the same local server, in
round-robin order per repetition; each run downloaded into a fresh empty folder and every file was then checked by
sha256 (a missing, extra or wrong file makes the run FAILED, never a number).

${machine.join("\n")}

How to read it:
- each workload but the sparse one starts with one untimed curl pass, so the first timed tool does not pay for a cold
  server or cache.
- wall: from spawn to exit of the client, seconds; MB/s = 10^6 bytes per wall second; medians over the repetitions.
- CPU: user + sys of the client's whole process tree (GNU time); the server's CPU is not counted, but nginx and the test
  origin run on the same ${cpus().length} cores.
- peak RSS: the largest resident set of a single process in the client's tree, max over repetitions (GNU time \`%M\`).
- ÷ dlqueue: the tool's median divided by dlqueue (library)'s; below 1 means less time or CPU than dlqueue.
- nginx 127.0.0.1 with sendfile, tcp_nopush, keepalive, access_log off; its files are in the page cache, so disk reads
  play no part. Downloads are written to the same ext4 filesystem without fsync by the harness; \`sync\` runs before
  every run so earlier writeback does not land on the next one.
- aria2c runs with \`--file-allocation=none\`; its 1-connection rows use \`-x1 -s1\`.
- every client runs without the machine's \`NODE_EXTRA_CA_CERTS\` (this VM points it at the system's 140 CAs, which
  costs each Node process ~0.05 s and 8 MB at start and a user's Node does not pay); https rows set it where a client
  trusts the bench's CA that way.
- dlqueue (library) runs bench/dlqueue-lib.mjs with plain node (no TypeScript loader) on dist/ from \`npm run build\`,
  with the defaults (maxParallelDownloads 5, automatic connections: up to 4 per file of 64 MiB or more while slots
  are idle); rows that set an option name it.
  Rows marked "· Node 22" / "· Node 24" run the same script on npm's node-linux-${process.arch} binaries of those lines.
${tlsNote}- wall ÷ curl: the tool's median wall time divided by curl's in the same workload.
${skipped.length ? `\nSkipped: ${skipped.join("; ")}\n` : ""}
${tables.join("\n\n")}
${queued ? `\n${queued}` : ""}
${startup ? `\n${startup}` : ""}
${models ? `\n${models}` : ""}
${workers ? `\n${workers}` : ""}
${timeNotes ? `\n${timeNotes}` : ""}`;

const fullRun = !args.quick && !args.only;
const dest = fullRun ? `${repo}/bench` : out;
await writeFile(`${dest}/results.md`, md);
writeChart(bars, `${dest}/results.png`);
console.log(`\nwrote ${dest}/results.md and results.png`);
console.log(tables.join("\n\n"));
