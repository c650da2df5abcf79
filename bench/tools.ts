// One command line per contender. Every command downloads `urls` into the empty folder `dir`,
// naming each file after the last segment of its URL path.
import { writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface Job {
  urls: string[];
  dir: string;
  /** Scratch folder for URL lists and config files, outside `dir` so they are not taken for downloads. */
  work: string;
  /** Local path of the single source file, for the page-cache floor. */
  source?: string;
}

export interface Tool {
  label: string;
  command(job: Job): string[];
}

const here = (f: string) => fileURLToPath(new URL(f, import.meta.url));
export const DLQUEUE_CLI = here("../dist/cli/main.js");
export const DLQUEUE_DIST = here("../dist/index.js");

function urlFile(job: Job, content = job.urls.join("\n")): string {
  const file = join(job.work, "urls.txt");
  writeFileSync(file, `${content}\n`);
  return file;
}

const nameOf = (url: string) => basename(new URL(url).pathname);

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
  const conn = [`-x${connections}`, `-s${connections}`];
  if (job.urls.length === 1)
    return ["aria2c", ...ARIA2, ...conn, "-d", job.dir, "-o", nameOf(job.urls[0] ?? ""), ...job.urls];
  return ["aria2c", ...ARIA2, ...conn, "-j5", "-d", job.dir, "-i", urlFile(job)];
}

export const TOOLS = {
  lib: {
    label: "dlqueue (library)",
    command: (job) => ["node", here("dlqueue-lib.mjs"), urlFile(job), job.dir],
  },
  lib8: {
    label: "dlqueue (library, connectionsPerFile: 8)",
    command: (job) => ["node", here("dlqueue-lib.mjs"), urlFile(job), job.dir, "connectionsPerFile=8"],
  },
  libNoSync: {
    label: "dlqueue (library, fsync: false)",
    command: (job) => ["node", here("dlqueue-lib.mjs"), urlFile(job), job.dir, "fsync=false"],
  },
  cli: {
    label: "dlqueue CLI (get -j 5)",
    command: (job) => ["node", DLQUEUE_CLI, "get", "--quiet", "-j", "5", "-d", job.dir, "-i", urlFile(job)],
  },
  curl: {
    label: "curl",
    command: (job) => {
      const [url] = job.urls;
      if (job.urls.length === 1 && url) return ["curl", "-sS", "--fail", "-o", join(job.dir, nameOf(url)), url];
      // A config file, because 1000 URLs on the command line would be unwieldy.
      const cfg = urlFile(job, job.urls.map((u) => `url = "${u}"`).join("\n"));
      const flags = ["-sS", "--fail", "--parallel", "--parallel-max", "5", "--remote-name-all"];
      return ["curl", ...flags, "--output-dir", job.dir, "-K", cfg];
    },
  },
  aria2: { label: "aria2c (1 conn/file)", command: (job) => aria2(job, 1) },
  aria8: { label: "aria2c -x8 -s8", command: (job) => aria2(job, 8) },
  naive: {
    label: "naive Node (fetch → createWriteStream)",
    command: (job) => ["node", here("naive.mjs"), urlFile(job), job.dir],
  },
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
