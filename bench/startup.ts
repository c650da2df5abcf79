// How long the CLI takes before and around a tiny download: what a script that calls `dlqueue` once per file pays.
// Usage: npm run build && node --import tsx bench/startup.ts [--reps 15] [--embed]
//
// Rows: Node's own start (`node -e 0`, the floor no Node CLI goes below), `dlqueue --version`, `dlqueue --help`,
// and `dlqueue get --quiet` of a 1,000-byte file from nginx on 127.0.0.1, next to curl fetching the same file, on
// Node 20 and on each other Node line bench/nodes.ts installed. Commands run in round-robin order, each a fresh
// process; the table gives medians and the largest peak RSS. Every get's file is checked by sha256.
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { sha256File } from "./data.js";
import { measure, median, type Sample } from "./measure.js";
import { startNginx } from "./nginx.js";
import { ensureOtherNodes } from "./nodes.js";
import { DLQUEUE_CLI } from "./tools.js";

const repo = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const out = `${repo}/bench/out`;
const { values: args } = parseArgs({
  options: { reps: { type: "string", default: "15" }, embed: { type: "boolean", default: false } },
});
const reps = Number(args.reps);

const root = await mkdtemp(join(out, "startup-"));
const body = randomBytes(1000);
await mkdir(`${root}/www`);
await writeFile(`${root}/www/one-kb.bin`, body);
const expected = await sha256File(`${root}/www/one-kb.bin`);
const nginx = await startNginx(`${root}/www`);
const url = `${nginx.baseUrl}/one-kb.bin`;
const dest = `${root}/dest`;

interface Row {
  label: string;
  command: string[];
  /** Whether the command downloads `url` into `dest`, to be checked. */
  downloads: boolean;
}
const nodes = [
  { label: process.version, bin: "node" },
  ...ensureOtherNodes(`${out}/node`).nodes.map((n) => ({ label: n.version, bin: n.bin })),
];
const rows: Row[] = [
  {
    label: "curl -sS -o (1,000 bytes)",
    command: ["curl", "-sS", "--fail", "-o", `${dest}/one-kb.bin`, url],
    downloads: true,
  },
  ...nodes.flatMap(({ label, bin }): Row[] => [
    { label: `node -e 0 · ${label}`, command: [bin, "-e", "0"], downloads: false },
    { label: `dlqueue --version · ${label}`, command: [bin, DLQUEUE_CLI, "--version"], downloads: false },
    { label: `dlqueue --help · ${label}`, command: [bin, DLQUEUE_CLI, "--help"], downloads: false },
    {
      label: `dlqueue get --quiet (1,000 bytes) · ${label}`,
      command: [bin, DLQUEUE_CLI, "get", "--quiet", "-d", dest, url],
      downloads: true,
    },
  ]),
];

const samples = new Map<Row, Sample[]>(rows.map((r) => [r, []]));
try {
  for (let rep = 0; rep < reps; rep++) {
    for (const row of rows) {
      await rm(dest, { recursive: true, force: true });
      await mkdir(dest);
      const outcome = await measure(row.command, `${root}/time.txt`, 30_000);
      if (!outcome.ok) throw new Error(`${row.command.join(" ")}: ${outcome.error}`);
      if (row.downloads && (await sha256File(`${dest}/one-kb.bin`)) !== expected)
        throw new Error(`${row.command.join(" ")}: the downloaded file differs from the server's`);
      samples.get(row)?.push(outcome.sample);
    }
  }
} finally {
  await nginx.stop();
}
await rm(root, { recursive: true, force: true });

const table = [
  "| command | median wall s | (min–max) | median CPU s | peak RSS MB |",
  "| --- | ---: | ---: | ---: | ---: |",
  ...rows.map((row) => {
    const s = samples.get(row) ?? [];
    const walls = s.map((x) => x.wall);
    return `| ${row.label} | ${median(walls).toFixed(3)} | ${Math.min(...walls).toFixed(3)}–${Math.max(...walls).toFixed(3)} | ${median(s.map((x) => x.cpu)).toFixed(3)} | ${Math.max(...s.map((x) => x.rssMiB * 1.048576)).toFixed(0)} |`;
  }),
].join("\n");
const md = `### CLI start-up (bench/startup.ts)

- ${reps} rounds, each command a fresh process in round-robin order; CLI: \`node ${DLQUEUE_CLI.replace(`${repo}/`, "")}\`
- wall from spawn to exit; peak RSS in MB (10^6 bytes, as the targets are written), the largest over the rounds
- the get fetches 1,000 bytes from nginx on 127.0.0.1 into an empty folder; its file is checked by sha256

${table}
`;
await writeFile(`${out}/startup.md`, md);
process.stdout.write(args.embed ? md : `${md}\nwrote ${out}/startup.md\n`);
