// The model-repo row of `npm run bench`: a stand-in Hugging Face repo of 50 files, one of them 1 GiB, downloaded into
// a fresh cache folder by dlqueue (library `modelDownload()` and CLI `get hf://…`) and by @huggingface/hub's
// `snapshotDownload()`, alternating; every file is then checked by sha256 through the snapshot.
//
// Run alone: `npm run bench -- --only models` or `node --import tsx bench/models.ts [--reps N] [--quick]`.
// Alone (and not --quick) it replaces the models section of bench/results.md and writes bench/results-models.png;
// with --embed (how bench/run.ts calls it) it prints the section on stdout and leaves the chart panel in
// bench/out/models-panel[-nginx].json instead. Each CDN (--cdn node, --cdn nginx) has a section of its own.
//
// The hub's API and small files come from test/helpers/hub.ts (node:http, in this process); the LFS bytes, which it
// redirects to a CDN on another origin, come from the stand-in's own node:http CDN (from memory) by default, or with
// --cdn nginx from nginx serving the blobs from disk. Before the timed runs, curl fetches the big blob through the
// chosen CDN twice, so the section can show that the server is not what sets the pace.
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { link, lstat, mkdir, mkdtemp, readdir, readFile, realpath, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg, release, totalmem } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { startHub } from "../test/helpers/hub.js";
import { type Bar, writeChart } from "./chart.js";
import { sha256File } from "./data.js";
import { measure, median, type Sample } from "./measure.js";
import { ensureTools, type Nginx, startNginx } from "./nginx.js";
import { writeSection } from "./sections.js";
import { DLQUEUE_CLI, DLQUEUE_DIST } from "./tools.js";

const repoRoot = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const out = `${repoRoot}/bench/out`;
const here = (f: string) => fileURLToPath(new URL(f, import.meta.url));
const MiB = 1024 * 1024;
const KiB = 1024;
const REPO = "bench-org/sd-like";
const SOURCE = `hf://${REPO}`;

const { values: args } = parseArgs({
  options: {
    reps: { type: "string", default: "3" },
    quick: { type: "boolean", default: false },
    embed: { type: "boolean", default: false },
    cdn: { type: "string", default: "node" },
  },
});
const reps = Number(args.reps);
if (!(reps >= 1)) throw new Error(`--reps ${args.reps}: want a number ≥ 1`);
if (args.cdn !== "nginx" && args.cdn !== "node") throw new Error(`--cdn ${args.cdn}: nginx or node`);
const log = (line: string) => console.error(line);

interface RepoFile {
  path: string;
  size: number;
  lfs: boolean;
  sha256: string;
}

/** 50 files laid out like a diffusers pipeline: 40 configs and tokenizer files, 9 MiB-sized weights, one 1 GiB. */
function layout(quick: boolean): Omit<RepoFile, "sha256">[] {
  const weight = (n: number) => (quick ? Math.max(64 * KiB, n / 32) : n);
  const small = (path: string, size: number) => ({ path, size, lfs: false });
  const lfs = (path: string, size: number) => ({ path, size: weight(size), lfs: true });
  const components = ["scheduler", "text_encoder", "text_encoder_2", "unet", "vae", "safety_checker"];
  const tokenizers = ["tokenizer", "tokenizer_2"].flatMap((t) => [
    small(`${t}/special_tokens_map.json`, 600),
    small(`${t}/tokenizer_config.json`, 1200),
    small(`${t}/vocab.json`, 1 * MiB),
    small(`${t}/merges.txt`, 512 * KiB),
  ]);
  const files = [
    small("model_index.json", 700),
    small("README.md", 8 * KiB),
    small(".gitattributes", 1600),
    small("feature_extractor/preprocessor_config.json", 500),
    ...components.map((c, i) => small(`${c}/config.json`, 800 + 300 * i)),
    ...tokenizers,
    // Prompt presets and LoRA configs, the kind of small files a model repo gathers.
    ...Array.from({ length: 22 }, (_, i) => small(`presets/preset_${String(i).padStart(2, "0")}.json`, 300 + 150 * i)),
    lfs("text_encoder/model.safetensors", 32 * MiB),
    lfs("text_encoder/model.fp16.safetensors", 4 * MiB),
    lfs("text_encoder_2/model.safetensors", 64 * MiB),
    lfs("vae/diffusion_pytorch_model.safetensors", 48 * MiB),
    lfs("vae/diffusion_pytorch_model.fp16.safetensors", 8 * MiB),
    lfs("safety_checker/model.safetensors", 16 * MiB),
    lfs("embeddings/style_a.safetensors", 1 * MiB),
    lfs("embeddings/style_b.safetensors", 2 * MiB),
    lfs("loras/detail.safetensors", 24 * MiB),
    lfs("unet/diffusion_pytorch_model.safetensors", 1024 * MiB),
  ];
  if (files.length !== 50) throw new Error(`layout has ${files.length} files, not 50`);
  return files;
}

/** Content: JSON-looking text for .json, random bytes for the rest; generated once, with a manifest. */
async function ensureRepoData(root: string, quick: boolean): Promise<RepoFile[]> {
  const manifestPath = join(root, "manifest.json");
  const wanted = layout(quick);
  if (existsSync(manifestPath)) {
    const known = JSON.parse(await readFile(manifestPath, "utf8")) as RepoFile[];
    const same =
      known.length === wanted.length &&
      wanted.every(
        (w, i) => known[i]?.path === w.path && known[i]?.size === w.size && existsSync(join(root, "files", w.path)),
      );
    if (same) return known;
  }
  const total = wanted.reduce((a, f) => a + f.size, 0);
  log(`generating the stand-in repo: ${wanted.length} files, ${(total / MiB).toFixed(0)} MiB, in ${root} ...`);
  await rm(root, { recursive: true, force: true });
  const files: RepoFile[] = [];
  for (const w of wanted) {
    const file = join(root, "files", w.path);
    await mkdir(dirname(file), { recursive: true });
    let content: Buffer;
    if (w.path.endsWith(".json")) {
      const head = Buffer.from('{"_bench":"');
      const pad = Math.max(0, w.size - head.length - 2);
      content = Buffer.concat([
        head,
        Buffer.from(
          randomBytes(Math.ceil(pad / 2))
            .toString("hex")
            .slice(0, pad),
        ),
        Buffer.from('"}'),
      ]);
    } else content = randomBytes(w.size);
    await writeFile(file, content);
    files.push({ ...w, size: content.length, sha256: await sha256File(file) });
  }
  await writeFile(manifestPath, JSON.stringify(files, null, 1));
  return files;
}

/** nginx's root as the CDN: repos/xx/yy/<sha256>, as the stand-in hub's redirects name them, hard links to the data. */
async function cdnTree(root: string, files: RepoFile[]): Promise<string> {
  const cdn = join(root, "cdn");
  await rm(cdn, { recursive: true, force: true });
  for (const f of files.filter((f) => f.lfs)) {
    const target = join(cdn, "repos", f.sha256.slice(0, 2), f.sha256.slice(2, 4), f.sha256);
    await mkdir(dirname(target), { recursive: true });
    await link(join(root, "files", f.path), target);
  }
  // startNginx() probes this path to know it is up.
  await writeFile(join(cdn, "manifest.json"), "{}");
  return cdn;
}

type ToolId = "lib" | "cli" | "hfhub";
const TOOLS: Record<ToolId, { label: string; command(cache: string, hubUrl: string): string[] }> = {
  lib: {
    label: "dlqueue (library, modelDownload)",
    command: (cache) => ["node", here("dlqueue-model.mjs"), SOURCE, cache],
  },
  cli: {
    label: "dlqueue CLI (get hf://…)",
    command: (cache) => ["env", `HF_HUB_CACHE=${cache}`, "node", DLQUEUE_CLI, "get", "--quiet", SOURCE],
  },
  hfhub: {
    label: "@huggingface/hub snapshotDownload",
    command: (cache, hubUrl) => ["node", here("hf-snapshot.mjs"), REPO, cache, hubUrl],
  },
};
const REFERENCE: ToolId = "lib";

/** Null when the cache holds exactly the repo at `commit`, every file right through its snapshot link; else why not. */
async function verifySnapshot(cache: string, files: RepoFile[], commit: string): Promise<string | null> {
  const folder = join(cache, `models--${REPO.replace("/", "--")}`);
  const ref = await readFile(join(folder, "refs", "main"), "utf8").catch(() => "(none)");
  if (ref.trim() !== commit) return `refs/main is ${ref.trim()}, not ${commit}`;
  const snapshot = join(folder, "snapshots", commit);
  const found = (await readdir(snapshot, { recursive: true, withFileTypes: true }))
    .filter((e) => !e.isDirectory())
    .map((e) => relative(snapshot, join(e.parentPath, e.name)))
    .sort();
  const expected = files.map((f) => f.path).sort();
  const missing = expected.filter((p) => !found.includes(p));
  if (missing.length) return `snapshot misses ${missing.length} file(s), e.g. ${missing[0]}`;
  const extra = found.filter((p) => !expected.includes(p));
  if (extra.length) return `snapshot has ${extra.length} unexpected file(s), e.g. ${extra[0]}`;
  const blobs = join(folder, "blobs");
  const blobsReal = await realpath(blobs);
  const used = new Set<string>();
  for (const f of files) {
    const path = join(snapshot, f.path);
    if (!(await lstat(path)).isSymbolicLink()) return `${f.path} is not a link to a blob`;
    const blob = await realpath(path);
    if (dirname(blob) !== blobsReal) return `${f.path} does not point into blobs/`;
    used.add(relative(blobsReal, blob));
    if ((await sha256File(path)) !== f.sha256) return `wrong content in ${f.path}`;
  }
  const leftovers = (await readdir(blobs)).filter((b) => !used.has(b));
  if (leftovers.length) return `blobs/ holds ${leftovers.length} unreferenced file(s), e.g. ${leftovers[0]}`;
  return null;
}

interface Row {
  tool: ToolId;
  samples: Sample[];
  hubRequests: number[];
  error?: string;
}

ensureTools();
// dist/ is built from the working tree: uncommitted src/ changes at the start or the end are noted with the commit.
const dirtyAtStart =
  spawnSync("git", ["status", "--porcelain", "--", "src"], { cwd: repoRoot, encoding: "utf8" }).stdout.trim() !== "";
if (!existsSync(DLQUEUE_DIST)) execFileSync("npm", ["run", "build"], { cwd: repoRoot, stdio: "inherit" });
const started = performance.now();
const loadBefore = loadavg();
const dataRoot = `${out}/${args.quick ? "models-data-quick" : "models-data"}`;
const files = await ensureRepoData(dataRoot, args.quick);
const totalBytes = files.reduce((a, f) => a + f.size, 0);
const lfsFiles = files.filter((f) => f.lfs);

// No token anywhere: the clients must not find one in the environment or a token file.
for (const name of ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE"]) delete process.env[name];
const home = await mkdtemp(`${out}/models-home-`);
process.env.HF_HOME = home;

// Real hub: tree pages of 1000 entries unexpanded; LFS by extension (.safetensors) or from 10 MiB.
const hub = await startHub({ pageSize: 1000, lfsThreshold: 10 * MiB });
const repo = hub.repo(REPO, {
  files: Object.fromEntries(
    files.map((f) => [f.path, { content: readFileSync(join(dataRoot, "files", f.path)), lfs: f.lfs }]),
  ),
});
const commit = repo.head();
for (const f of repo.files()) {
  const want = files.find((x) => x.path === f.path);
  if (f.sha256 !== want?.sha256 || f.lfs !== want.lfs) throw new Error(`stand-in hub disagrees on ${f.path}`);
}
let nginx: Nginx | undefined;
if (args.cdn === "nginx") {
  nginx = await startNginx(await cdnTree(dataRoot, files));
  hub.cdnUrl = nginx.baseUrl;
  // The stand-in keeps its copies for the API's metadata; the CDN bytes now come from disk (page cache) via nginx.
}
process.env.HF_ENDPOINT = hub.url;
log(`stand-in hub ${hub.url}, CDN ${hub.cdnUrl} (${args.cdn}), ${files.length} files, commit ${commit}`);

async function runOnce(tool: ToolId): Promise<{ sample?: Sample; hubRequests: number; error?: string }> {
  await mkdir(`${out}/runs`, { recursive: true });
  const cache = await mkdtemp(`${out}/runs/hf-cache-`);
  const work = await mkdtemp(`${out}/runs/work-`);
  execFileSync("sync");
  hub.resetRequests();
  const outcome = await measure(TOOLS[tool].command(cache, hub.url), `${work}/time.txt`, 120_000 + totalBytes / 10e3);
  const hubRequests = hub.hubRequests().length;
  const problem = outcome.ok ? await verifySnapshot(cache, files, commit) : outcome.error;
  await rm(cache, { recursive: true, force: true });
  await rm(work, { recursive: true, force: true });
  if (problem || !outcome.ok) return { hubRequests, error: problem ?? "failed" };
  return { sample: outcome.sample, hubRequests };
}

const big = files.reduce((a, f) => (f.size > a.size ? f : a));
let curlMBps = 0;
const rows: Row[] = (Object.keys(TOOLS) as ToolId[]).map((tool) => ({ tool, samples: [], hubRequests: [] }));
try {
  // Untimed, so that the first timed client does not pay for cold disk pages or a cold server.
  // How fast the server alone can go: curl pulls the big blob through the hub's redirect into /dev/null.
  for (let i = 0; i < 2; i++) {
    const url = `${hub.url}/${REPO}/resolve/main/${big.path}`;
    const probe = await measure(["curl", "-sSfL", "-o", "/dev/null", url], `${out}/models-curl-time.txt`, 120_000);
    if (probe.ok) curlMBps = Math.max(curlMBps, big.size / 1e6 / probe.sample.wall);
    else log(`curl probe failed: ${probe.error}`);
  }
  log(`curl alone, big blob through the CDN to /dev/null: ${curlMBps.toFixed(0)} MB/s`);
  const warm = await runOnce("hfhub");
  log(`models warm-up (snapshotDownload, untimed): ${warm.error ?? "ok"}`);
  for (let rep = 0; rep < reps; rep++) {
    const order = rows.map((_, i) => rows[(i + rep) % rows.length] as Row);
    for (const row of order) {
      if (row.error) continue;
      const result = await runOnce(row.tool);
      const tag = `models rep ${rep + 1}/${reps} ${row.tool}`;
      if (!result.sample) {
        row.error = `rep ${rep + 1}: ${result.error}`;
        log(`${tag}: FAILED ${result.error}`);
        continue;
      }
      row.samples.push(result.sample);
      row.hubRequests.push(result.hubRequests);
      const s = result.sample;
      log(
        `${tag}: ${s.wall.toFixed(2)} s, cpu ${s.cpu.toFixed(2)} s, rss ${s.rssMiB.toFixed(0)} MiB, ${result.hubRequests} hub requests`,
      );
    }
  }
} finally {
  await nginx?.stop();
  await hub.close();
  await rm(home, { recursive: true, force: true });
}

const fmt = (n: number, d = 2) => n.toFixed(d);
const ok = (r: Row) => !r.error && r.samples.length > 0;
const ref = rows.find((r) => r.tool === REFERENCE && ok(r));
const refWall = ref ? median(ref.samples.map((s) => s.wall)) : undefined;
const refCpu = ref ? median(ref.samples.map((s) => s.cpu)) : undefined;
const sizeText = (n: number) => (n >= 2 ** 30 ? `${+(n / 2 ** 30).toFixed(2)} GiB` : `${+(n / MiB).toFixed(1)} MiB`);
const title = `hf:// repo: ${files.length} files, ${sizeText(totalBytes)} (1 × ${sizeText(big.size)}, ${lfsFiles.length - 1} more LFS, ${files.length - lfsFiles.length} small) into a fresh HF cache, CDN: ${args.cdn === "nginx" ? "nginx" : "the stand-in's node:http"}`;
const table = [
  "| client | median wall s | (min–max) | MB/s | median CPU s | peak RSS MiB | hub requests | wall ÷ dlqueue | CPU ÷ dlqueue |",
  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
];
const panel: Bar[] = [];
for (const r of rows) {
  const label = TOOLS[r.tool].label;
  if (!ok(r)) {
    table.push(`| ${label} | **FAILED** | | | | | | | |`);
    panel.push({ label, failed: true });
    continue;
  }
  const walls = r.samples.map((s) => s.wall);
  const wall = median(walls);
  const cpu = median(r.samples.map((s) => s.cpu));
  const rss = Math.max(...r.samples.map((s) => s.rssMiB));
  const ratio = (x: number, base?: number) => (base ? `${fmt(x / base)}×` : "–");
  table.push(
    `| ${label} | ${fmt(wall)} | ${fmt(Math.min(...walls))}–${fmt(Math.max(...walls))} | ${fmt(totalBytes / 1e6 / wall, 0)} | ${fmt(cpu)} | ${fmt(rss, 0)} | ${median(r.hubRequests)} | ${ratio(wall, refWall)} | ${ratio(cpu, refCpu)} |`,
  );
  panel.push({ label, seconds: wall, ratio: refWall ? wall / refWall : undefined, reference: r === ref });
}
const fastestMBps = Math.max(
  1e-9,
  ...rows.filter(ok).map((r) => totalBytes / 1e6 / median(r.samples.map((x) => x.wall))),
);
const failures = rows.filter((r) => r.error);
const git = (...a: string[]) => spawnSync("git", a, { cwd: repoRoot, encoding: "utf8" }).stdout.trim();
const dirty = dirtyAtStart || git("status", "--porcelain", "--", "src") ? " (+ uncommitted changes in src/)" : "";
const hfVersion = (
  JSON.parse(readFileSync(`${repoRoot}/node_modules/@huggingface/hub/package.json`, "utf8")) as { version: string }
).version;
const nginxVersion = spawnSync("/usr/sbin/nginx", ["-v"], { encoding: "utf8" })
  .stderr.trim()
  .replace(/^nginx version: /, "");
const commands = (Object.keys(TOOLS) as ToolId[]).map(
  (t) => `- \`${TOOLS[t].command("<cache>", "<hub>").join(" ").replaceAll(`${repoRoot}/`, "")}\``,
);
const section = `### ${title}

Run by \`node --import tsx bench/models.ts\` (also \`npm run bench -- --only models\`, and part of a full \`npm run bench\`).

- date: ${new Date().toISOString()}; repetitions: ${reps}${args.quick ? " (--quick sizes)" : ""}, alternating, one untimed snapshotDownload first; took ${fmt((performance.now() - started) / 60_000, 1)} min
- dlqueue: dist/ built from commit ${git("rev-parse", "--short", "HEAD")}${dirty}; @huggingface/hub ${hfVersion}; node ${process.version}; ${nginxVersion}
- CPU: ${cpus()[0]?.model} × ${cpus().length} cores; RAM ${sizeText(totalmem())}; kernel ${release()}; load average (1/5/15 min) at start ${loadBefore.map((l) => l.toFixed(2)).join(" ")}, at end ${loadavg()
  .map((l) => l.toFixed(2))
  .join(" ")}
- the hub: test/helpers/hub.ts (node:http) on 127.0.0.1 answers the API and serves the ${files.length - lfsFiles.length} small files itself; it redirects the ${lfsFiles.length} LFS files (302) to its CDN on another origin, ${
  args.cdn === "nginx"
    ? "played by nginx serving the blobs from disk (page cache, sendfile; `--cdn nginx`)"
    : "the stand-in's own node:http CDN, sending from memory (`--cdn nginx` puts nginx there instead)"
}. The server is not the bottleneck: before the timed runs, curl alone fetched the ${sizeText(big.size)} blob through the redirect into /dev/null at ${fmt(curlMBps, 0)} MB/s (best of 2), ${fmt(curlMBps / fastestMBps, 1)}× the fastest client's overall rate below
- every run downloads into a fresh empty cache folder (\`HF_HUB_CACHE\` for the CLI, \`cache\` / \`cacheDir\` for the libraries), no token; afterwards refs/main must hold the commit, the snapshot exactly the repo's ${files.length} paths, each a link into blobs/ with the right sha256, and blobs/ nothing else (a missing, extra or wrong file makes the run FAILED, never a number)
- wall, CPU (user + sys of the client's process tree) and peak RSS (largest single process) by GNU time, as in the other rows; hub requests: API and resolve requests the stand-in hub received in one run (the CDN's are not counted)
- ÷ dlqueue: the client's median over dlqueue (library)'s; below 1 means less time or CPU than dlqueue

${table.join("\n")}
${failures.length ? `\n${failures.map((r) => `- FAILED ${TOOLS[r.tool].label}: ${r.error}`).join("\n")}\n` : ""}
<details><summary>commands</summary>

${commands.join("\n")}

</details>
`;

const tag = args.cdn === "nginx" ? "models-nginx" : "models";
const BEGIN = `<!-- ${tag}:begin -->`;
const END = `<!-- ${tag}:end -->`;
await mkdir(out, { recursive: true });
if (args.embed) {
  await writeFile(`${out}/${tag}-panel.json`, JSON.stringify({ title, bars: panel }));
  process.stdout.write(`${BEGIN}\n${section}${END}\n`);
} else {
  const dest = args.quick ? `${out}/results-models.md` : `${repoRoot}/bench/results.md`;
  await writeSection(dest, tag, section);
  const png = `${args.quick ? out : `${repoRoot}/bench`}/results-${tag}.png`;
  writeChart([{ title, bars: panel }], png);
  log(`wrote ${dest} and ${png}`);
  console.log(section);
}
