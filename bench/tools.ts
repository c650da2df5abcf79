// One command line per contender. Every command downloads `urls` into the empty folder `dir`,
// naming each file after the last segment of its URL path.
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { NodeMajor } from "./nodes.js";

export interface Job {
  urls: string[];
  dir: string;
  /** Scratch folder for URL lists and config files, outside `dir` so they are not taken for downloads. */
  work: string;
  /** Local path of the single source file, for the page-cache floor. */
  source?: string;
  /** The CA certificate (PEM file) that signed the server's certificate, when the URLs are https. */
  ca?: string;
  /** Whether this dist/ has dlqueue's own way to trust a CA; where it has not, NODE_EXTRA_CA_CERTS does it. */
  caSupport?: CaSupport;
  /** The node binary of each other Node line that was installed. */
  nodes?: Partial<Record<NodeMajor, string>>;
}

export interface CaSupport {
  /** `dlqueue get --ca-certificate <file>` */
  cli: boolean;
  /** The library's `ca` option, passed by bench/dlqueue-lib.mjs as `ca=@<file>`. */
  lib: boolean;
}

export interface Tool {
  label: string;
  command(job: Job): string[];
  /** Environment variables the command needs on top of the harness's own. */
  env?(job: Job): Record<string, string> | undefined;
}

const here = (f: string) => fileURLToPath(new URL(f, import.meta.url));
export const DLQUEUE_CLI = here("../dist/bin/dlqueue.js");
export const DLQUEUE_DIST = here("../dist/index.js");

/**
 * Looked up once per bench run, after dist/ is built: the CLI's flag and the library's option are being added
 * while the bench is in use, and until they are there each row trusts the CA through NODE_EXTRA_CA_CERTS.
 */
export function detectCaSupport(): CaSupport {
  const help = spawnSync("node", [DLQUEUE_CLI, "get", "--help"], { encoding: "utf8" });
  return { cli: `${help.stdout}`.includes("--ca-certificate"), lib: libHasOption("ca") };
}

/** The same rule bench/dlqueue-lib.mjs refuses options by: a property declared in dist's DownloadQueueOptions. */
function libHasOption(name: string): boolean {
  let types: string;
  try {
    types = readFileSync(here("../dist/options.d.ts"), "utf8");
  } catch {
    return false;
  }
  const body = types.split("export interface DownloadQueueOptions")[1]?.split("\n}")[0] ?? "";
  return new RegExp(`^\\s+${name}\\??:`, "m").test(body);
}

function urlFile(job: Job, content = job.urls.join("\n")): string {
  const file = join(job.work, "urls.txt");
  writeFileSync(file, `${content}\n`);
  return file;
}

const nameOf = (url: string) => basename(new URL(url).pathname);

/** How a Node program with no CA option of its own is made to trust one. */
const extraCa = (job: Job) => (job.ca ? { NODE_EXTRA_CA_CERTS: job.ca } : undefined);

function node(job: Job, major?: NodeMajor): string {
  if (major === undefined) return "node";
  const bin = job.nodes?.[major];
  if (!bin) throw new Error(`Node ${major} is not installed`);
  return bin;
}

function libTool(label: string, options: string[], major?: NodeMajor): Tool {
  return {
    label,
    command: (job) => [
      node(job, major),
      here("dlqueue-lib.mjs"),
      urlFile(job),
      job.dir,
      ...options,
      ...(job.ca && job.caSupport?.lib ? [`ca=@${job.ca}`] : []),
    ],
    env: (job) => (job.caSupport?.lib ? undefined : extraCa(job)),
  };
}

function naiveTool(label: string, major?: NodeMajor): Tool {
  return { label, command: (job) => [node(job, major), here("naive.mjs"), urlFile(job), job.dir], env: extraCa };
}

function curl(job: Job): string[] {
  const ca = job.ca ? ["--cacert", job.ca] : [];
  const [url] = job.urls;
  if (job.urls.length === 1 && url) return ["curl", "-sS", "--fail", ...ca, "-o", join(job.dir, nameOf(url)), url];
  // A config file, because 1000 URLs on the command line would be unwieldy.
  const cfg = urlFile(job, job.urls.map((u) => `url = "${u}"`).join("\n"));
  const flags = ["-sS", "--fail", ...ca, "--parallel", "--parallel-max", "5", "--remote-name-all"];
  return ["curl", ...flags, "--output-dir", job.dir, "-K", cfg];
}

const ARIA2 = [
  "--console-log-level=error",
  "--summary-interval=0",
  "-q",
  "--allow-overwrite=true",
  "--auto-file-renaming=false",
  // No preallocation: the other tools don't preallocate either.
  "--file-allocation=none",
];

function aria2(job: Job, connections: number): string[] {
  const flags = [...ARIA2, ...(job.ca ? [`--ca-certificate=${job.ca}`] : []), `-x${connections}`, `-s${connections}`];
  if (job.urls.length === 1) return ["aria2c", ...flags, "-d", job.dir, "-o", nameOf(job.urls[0] ?? ""), ...job.urls];
  return ["aria2c", ...flags, "-j5", "-d", job.dir, "-i", urlFile(job)];
}

export const TOOLS = {
  lib: libTool("dlqueue (library)", []),
  lib1: libTool("dlqueue (library, connectionsPerFile: 1)", ["connectionsPerFile=1"]),
  lib8: libTool("dlqueue (library, connectionsPerFile: 8)", ["connectionsPerFile=8"]),
  libNoSync: libTool("dlqueue (library, fsync: false)", ["fsync=false"]),
  lib22: libTool("dlqueue (library) · Node 22", [], 22),
  lib24: libTool("dlqueue (library) · Node 24", [], 24),
  cli: {
    label: "dlqueue CLI (get -j 5)",
    command: (job) => [
      "node",
      DLQUEUE_CLI,
      "get",
      "--quiet",
      "-j",
      "5",
      ...(job.ca && job.caSupport?.cli ? ["--ca-certificate", job.ca] : []),
      "-d",
      job.dir,
      "-i",
      urlFile(job),
    ],
    env: (job) => (job.caSupport?.cli ? undefined : extraCa(job)),
  },
  curl: { label: "curl", command: curl },
  aria2: { label: "aria2c (1 conn/file)", command: (job) => aria2(job, 1) },
  aria8: { label: "aria2c -x8 -s8", command: (job) => aria2(job, 8) },
  naive: naiveTool("naive Node (fetch → createWriteStream)"),
  undiciFloor: {
    label: "bare undici (dispatch → writeFile + rename, no queue)",
    command: (job) => ["node", here("undici-floor.mjs"), urlFile(job), job.dir],
  },
  naive22: naiveTool("naive Node · Node 22", 22),
  naive24: naiveTool("naive Node · Node 24", 24),
  floor: {
    label: "page-cache floor (cat file > out)",
    command: (job) => {
      if (!job.source) throw new Error("floor needs a local source file");
      return ["sh", "-c", 'exec cat "$0" > "$1"', job.source, join(job.dir, basename(job.source))];
    },
  },
} satisfies Record<string, Tool>;

export type ToolId = keyof typeof TOOLS;
/** The tool all ratios are taken against. */
export const REFERENCE: ToolId = "lib";
/** The second reference: the issue asks for the ratio to curl, the fastest client, on every workload. */
export const CURL: ToolId = "curl";
/** The rows that repeat another row's client on another Node line. */
export const OTHER_NODE_ROWS: { tool: ToolId; of: ToolId; major: NodeMajor }[] = [
  { tool: "lib22", of: "lib", major: 22 },
  { tool: "lib24", of: "lib", major: 24 },
  { tool: "naive22", of: "naive", major: 22 },
  { tool: "naive24", of: "naive", major: 24 },
];
