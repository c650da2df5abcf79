/**
 * The `dlqueue` command, driven as users drive it: the built dist/bin/dlqueue.js (the bundle npm installs as
 * `dlqueue`) in a child process against the fault-injecting origin, in a pseudo-terminal (util-linux `script`) for
 * the bars and through pipes for JSON lines. Run `npm run build` first.
 */
import assert from "node:assert/strict";
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer, request as httpRequest } from "node:http";
import { type AddressInfo, connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { InvalidArgumentError } from "commander";
import { Agent } from "undici";
import { tokenRulesFromEnv } from "../src/cli/env.js";
import { InputFileError, parseInputFile } from "../src/cli/input-file.js";
import { integerArgument, parseNumber, parseRate } from "../src/cli/numbers.js";
import { DownloadQueue } from "../src/index.js";
import { clearedRows, displayWidth, fitWidth, formatLine } from "../src/progress/format.js";
import { formatBytes, formatDuration } from "../src/units.js";
import { type Origin, type Route, startOrigin } from "./helpers/origin.js";
import { systemPackage } from "./helpers/system.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(ROOT, "dist/bin/dlqueue.js");
const INDEX = join(ROOT, "dist/index.js");

// biome-ignore lint/suspicious/noControlCharactersInRegex: stripping terminal escape sequences is the point
const ANSI = /\u001b(?:\[[0-9;?]*[A-Za-z]|[78])/g;

let origin: Origin;
let work: string;
let dirCount = 0;

function freshDir(): string {
  const dir = join(work, `run-${++dirCount}`);
  execFileSync("mkdir", ["-p", dir]);
  return dir;
}

function sha256File(path: string): string {
  return createHash("sha256").update(readFileSync(path)).digest("hex");
}

async function assertFile(path: string, route: Route): Promise<void> {
  assert.ok(existsSync(path), `${path} should exist`);
  assert.equal(statSync(path).size, route.size, `size of ${path}`);
  assert.equal(sha256File(path), await route.sha256(), `sha256 of ${path}`);
  assert.ok(!existsSync(`${path}.downloading`), `no partial left beside ${path}`);
}

/** The environment of a user with no tokens set, whatever the test runner's environment holds. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of ["HF_TOKEN", "CIVITAI_TOKEN", "NODE_OPTIONS", "NODE_DEBUG", "NODE_TEST_CONTEXT"]) delete env[name];
  return { ...env, ...extra };
}

type JsonLine = Record<string, unknown> & { event: string };

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** A running CLI whose stdout is a pipe (so it prints JSON lines) and whose output can be awaited line by line. */
class CliRun {
  readonly child: ChildProcess;
  readonly exited: Promise<Finished>;
  stdout = "";
  stderr = "";
  #listeners = new Set<() => void>();

  constructor(args: string[], options: { env?: NodeJS.ProcessEnv; stdin?: string; cwd?: string } = {}) {
    this.child = spawn(process.execPath, [CLI, ...args], {
      cwd: options.cwd ?? work,
      env: options.env ?? cleanEnv(),
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.child.stdin?.end(options.stdin ?? "");
    this.child.stdout?.setEncoding("utf8").on("data", (chunk: string) => {
      this.stdout += chunk;
      for (const listener of this.#listeners) listener();
    });
    this.child.stderr?.setEncoding("utf8").on("data", (chunk: string) => {
      this.stderr += chunk;
    });
    this.exited = new Promise((resolve) => {
      this.child.on("close", (code) => resolve({ code, stdout: this.stdout, stderr: this.stderr }));
    });
  }

  events(): JsonLine[] {
    return parseJsonLines(this.stdout);
  }

  /** Resolves with the first JSON line matching `predicate`, as soon as it is printed. */
  waitForEvent(predicate: (line: JsonLine) => boolean): Promise<JsonLine> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const found = this.events().find(predicate);
        if (found) {
          this.#listeners.delete(check);
          resolve(found);
        }
      };
      this.#listeners.add(check);
      this.exited.then(() => {
        if (this.#listeners.delete(check)) {
          reject(new Error(`the CLI exited without printing the awaited line:\n${this.stdout}\n${this.stderr}`));
        }
      });
      check();
    });
  }
}

function runCli(args: string[], options?: { env?: NodeJS.ProcessEnv; stdin?: string }): Promise<Finished> {
  return new CliRun(args, options).exited;
}

/** Complete lines only: the last line may still be in flight. */
function parseJsonLines(stdout: string): JsonLine[] {
  const complete = stdout.slice(0, stdout.lastIndexOf("\n") + 1);
  return complete
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line) as JsonLine);
}

function jobLine(lines: JsonLine[], source: string): Record<string, unknown> {
  const found = lines.find((line) => line.event === "job" && (line.job as { source: string }).source === source);
  assert.ok(found, `a job line for ${source}`);
  return found.job as Record<string, unknown>;
}

function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

const utilLinuxScript = systemPackage(
  "util-linux's `script`",
  "util-linux",
  (() => {
    try {
      return execFileSync("script", ["--version"], { encoding: "utf8" }).includes("util-linux");
    } catch {
      return false;
    }
  })(),
);

/** Runs `node <script> args` inside a pseudo-terminal (120x40 by default); stdout and stderr both reach it. */
function runInPty(
  script: string,
  args: string[],
  env = cleanEnv(),
  columns = 120,
): Promise<{ code: number | null; screen: string }> {
  const command = `stty cols ${columns} rows 40 && exec ${[process.execPath, script, ...args].map(shellQuote).join(" ")}`;
  utilLinuxScript.require();
  const child = spawn("script", ["-qfec", command, "/dev/null"], { cwd: work, env, stdio: ["pipe", "pipe", "pipe"] });
  let output = "";
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    output += chunk;
  });
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, screen: output })));
}

/**
 * What a terminal of `columns` columns shows after `output`, scrollback included: enough of a VT100 for what
 * cli-progress and readline send (text that wraps at the last column, CR, LF, cursor up/down/column, erase in line
 * and below), with wide characters taking two cells. A line wider than the terminal wraps here as it does there.
 */
function terminalRows(output: string, columns: number): string[] {
  const rows: string[][] = [[]];
  let row = 0;
  let column = 0;
  let pendingWrap = false;
  const line = () => {
    while (rows.length <= row) rows.push([]);
    return rows[row] as string[];
  };
  // biome-ignore lint/suspicious/noControlCharactersInRegex: parsing terminal output is the point
  const tokens = /\u001b\[([?0-9;]*)([A-Za-z])|\u001b[78]|\r|\n|[^\u001b\r\n]+/gsu;
  const segmenter = new Intl.Segmenter();
  for (const match of output.matchAll(tokens)) {
    const [token, params = "", command] = match;
    if (token === "\r") {
      column = 0;
      pendingWrap = false;
    } else if (token === "\n") {
      row++;
      column = 0;
      pendingWrap = false;
    } else if (command) {
      const n = Number(params || "1");
      if (command === "A") row = Math.max(0, row - n);
      else if (command === "B") row += n;
      else if (command === "C") column = Math.min(columns - 1, column + n);
      else if (command === "D") column = Math.max(0, column - n);
      else if (command === "G") column = n - 1;
      else if (command === "K") {
        const cells = line();
        if (params === "2") cells.length = 0;
        else if (params === "1") cells.fill(" ", 0, column + 1);
        else cells.length = Math.min(cells.length, column);
      } else if (command === "J") {
        line().length = Math.min(line().length, column);
        rows.length = row + 1;
      }
      if ("ABCDG".includes(command)) pendingWrap = false;
    } else if (token.startsWith("\u001b")) {
      // Save and restore cursor: cli-progress does not use them with these options.
    } else {
      for (const { segment } of segmenter.segment(token)) {
        const width = displayWidth(segment);
        if (pendingWrap || column + width > columns) {
          row++;
          column = 0;
          pendingWrap = false;
        }
        const cells = line();
        while (cells.length < column) cells.push(" ");
        cells[column] = segment;
        if (width === 2) cells[column + 1] = "";
        column += width;
        if (column >= columns) {
          column = columns - 1;
          pendingWrap = true;
        }
      }
    }
  }
  return rows.map((cells) => cells.join("").trimEnd());
}

/** Every state each line of the board went through, escape sequences removed. */
function renderedLines(screen: string): string[] {
  return screen
    .replace(ANSI, "\n")
    .split(/[\r\n]+/)
    .map((line) => line.trimEnd())
    .filter(Boolean);
}

/** The percentages a bar for `name` showed, in order. */
function barPercents(lines: string[], name: string): number[] {
  const pattern = new RegExp(`^${name.replace(".", "\\.")}\\s+\\[[█░]+\\]\\s+(\\d+)%`);
  return lines.flatMap((line) => {
    const match = pattern.exec(line);
    return match ? [Number(match[1])] : [];
  });
}

before(async () => {
  assert.ok(existsSync(CLI), `${CLI} is missing: run \`npm run build\` before this test`);
  origin = await startOrigin();
  work = mkdtempSync(join(tmpdir(), "dlqueue-cli-"));
});

after(async () => {
  await origin.close();
  rmSync(work, { recursive: true, force: true });
});

describe("dlqueue get on a terminal", { skip: utilLinuxScript.skip }, () => {
  it("draws a live bar per download and a total line, ends them at 100%, then prints the summary table", async () => {
    const a = origin.route("/tty/a.bin", { size: 600_000, throttleBytesPerSec: 1_000_000 });
    const b = origin.route("/tty/weights.safetensors", { size: 400_000, throttleBytesPerSec: 800_000 });
    const dir = freshDir();
    const { code, screen } = await runInPty(CLI, ["get", "-d", dir, a.url, b.url]);
    assert.equal(code, 0, screen);
    const lines = renderedLines(screen);

    for (const name of ["a.bin", "weights.safetensors"]) {
      const percents = barPercents(lines, name);
      assert.ok(
        percents.some((p) => p > 0 && p < 100),
        `${name}: a bar drawn mid-download, saw ${percents}`,
      );
      assert.equal(percents.at(-1), 100, `${name}: the bar ends at 100%`);
      assert.ok(
        lines.some((line) => line.startsWith(name) && /100%.*done in \d+:\d\d$/.test(line)),
        `${name}: a final "done in" line`,
      );
    }
    assert.ok(
      lines.some((line) => /^Total 0\/2 done\s+\[[█░]+\]\s+\d+%/.test(line)),
      "a live total line",
    );
    assert.ok(
      lines.some((line) => /^Total 2\/2 done\s+\[█+\]\s+100%\s+1\.00 MB\/1\.00 MB.*done in/.test(line)),
      "a final total line at 100% with the bytes of both files",
    );

    const header = lines.findIndex((line) => /^File\s+Size\s+Time\s+Avg speed\s+Status$/.test(line));
    assert.ok(header >= 0, `a summary table:\n${lines.join("\n")}`);
    assert.match(lines[header + 1] ?? "", /^a\.bin\s+600 kB\s+\d+:\d\d\s+\S+ [kM]B\/s\s+completed$/);
    assert.match(lines[header + 2] ?? "", /^weights\.safetensors\s+400 kB\s+\d+:\d\d\s+\S+ [kM]B\/s\s+completed$/);
    assert.ok(!screen.includes('"event"'), "no JSON lines on a terminal");
    await assertFile(join(dir, "a.bin"), a);
    await assertFile(join(dir, "weights.safetensors"), b);
  });

  it("ConsoleProgress().update works as a bare onProgress callback; instances share one board", async () => {
    const a = origin.route("/lib/one.bin", { size: 300_000, throttleBytesPerSec: 600_000 });
    const b = origin.route("/lib/two.bin", { size: 300_000, throttleBytesPerSec: 600_000 });
    const dir = freshDir();
    const script = join(dir, "use-library.mjs");
    writeFileSync(
      script,
      `import { ConsoleProgress, DownloadQueue } from ${JSON.stringify(INDEX)};
const [dest, ...urls] = process.argv.slice(2);
const queue = new DownloadQueue();
for (const source of urls) queue.download({ source, dest, onProgress: new ConsoleProgress().update });
await queue.join();
await queue.stop();
`,
    );
    const { code, screen } = await runInPty(script, [dir, a.url, b.url]);
    assert.equal(code, 0, screen);
    // One shared board redraws both bars as a block, moving the cursor back up over it; two boards of one line
    // each would never move up.
    assert.ok(screen.includes("\u001b[1A"), "both bars are drawn on one board");
    const lines = renderedLines(screen);
    for (const name of ["one.bin", "two.bin"]) {
      assert.equal(barPercents(lines, name).at(-1), 100, `${name} ends at 100%`);
      assert.ok(lines.some((line) => line.startsWith(name) && /done in/.test(line)));
    }
    await assertFile(join(dir, "one.bin"), a);
    await assertFile(join(dir, "two.bin"), b);

    // Not a terminal: nothing is drawn.
    const quiet = spawn(process.execPath, [script, freshDir(), a.url], { env: cleanEnv() });
    let stderr = "";
    quiet.stderr.setEncoding("utf8").on("data", (chunk: string) => {
      stderr += chunk;
    });
    const quietCode = await new Promise((resolve) => quiet.on("close", resolve));
    assert.equal(quietCode, 0);
    assert.equal(stderr, "");
  });
});

describe("dlqueue get with stdout not a terminal", () => {
  it("prints JSON lines: started, progress, complete, then the job", async () => {
    const route = origin.route("/json/model.bin", { size: 500_000, throttleBytesPerSec: 1_500_000 });
    const dir = freshDir();
    const { code, stdout, stderr } = await runCli(["get", "--json", "-d", dir, route.url]);
    assert.equal(code, 0, stderr);
    assert.equal(stderr, "", "no bars when stderr is not a terminal");
    const lines = parseJsonLines(stdout);
    assert.ok(stdout.endsWith("\n"));
    const path = join(dir, "model.bin");
    const events = lines.map((line) => line.event);
    assert.equal(events[0], "download_started");
    assert.deepEqual(events.slice(-2), ["download_complete", "job"]);
    assert.deepEqual(lines[0], { event: "download_started", id: 0, source: route.url, download_path: path });
    const progress = lines.filter((line) => line.event === "download_progress");
    assert.ok(progress.length >= 2, "several progress lines for a throttled download");
    let previous = -1;
    for (const line of progress) {
      assert.equal(line.total_bytes, route.size);
      assert.ok((line.current_bytes as number) >= previous, "progress only goes forward");
      previous = line.current_bytes as number;
    }
    assert.equal(previous, route.size);
    assert.deepEqual(lines.at(-2), {
      event: "download_complete",
      id: 0,
      source: route.url,
      download_path: path,
      total_bytes: route.size,
    });
    const job = jobLine(lines, route.url);
    assert.equal(job.status, "completed");
    assert.equal(job.bytes, route.size);
    assert.equal(job.total_bytes, route.size);
    assert.equal(job.download_path, path);
    assert.equal(job.dest, dir);
    assert.ok(typeof job.job_started === "string" && typeof job.job_ended === "string");
    await assertFile(path, route);
  });

  it("--quiet prints nothing when all goes well", async () => {
    const route = origin.route("/quiet/q.bin", { size: 10_000 });
    const dir = freshDir();
    const { code, stdout, stderr } = await runCli(["get", "--quiet", "-d", dir, route.url]);
    assert.equal(code, 0);
    assert.equal(stdout, "");
    assert.equal(stderr, "");
    await assertFile(join(dir, "q.bin"), route);
  });

  it("-x 4 fetches a large file over several range requests; --no-fsync still leaves it whole", async () => {
    const route = origin.route("/x/big.bin", { size: 9 * 1024 * 1024 });
    const dir = freshDir();
    const { code, stderr } = await runCli(["get", "--quiet", "-x", "4", "--no-fsync", "-d", dir, route.url]);
    assert.equal(code, 0, stderr);
    await assertFile(join(dir, "big.bin"), route);
    const ranged = route.requests.filter((r) => /^bytes=\d+-\d+$/.test(String(r.headers.range)));
    // Four segments to start with; work stealing may split one more off.
    assert.ok(ranged.length >= 4, `${ranged.length} range requests, expected one per connection or more`);
  });
});

describe("dlqueue get exit codes", () => {
  it("exits 1 when a download fails, printing its error_type and URL; the others complete", async () => {
    const good = origin.route("/exit1/good.bin", { size: 50_000 });
    const missing = `${origin.url}/exit1/missing.bin`;
    const dir = freshDir();
    const { code, stdout, stderr } = await runCli(["get", "--json", "-d", dir, good.url, missing]);
    assert.equal(code, 1);
    assert.match(stderr, new RegExp(`error: HTTPError\\(Not Found\\) ${missing}\\n  .*answered HTTP 404`));
    assert.match(stderr, /1 of 2 downloads failed\./);
    const lines = parseJsonLines(stdout);
    assert.equal(jobLine(lines, missing).status, "error");
    assert.equal(jobLine(lines, missing).error_type, "HTTPError(Not Found)");
    assert.equal(jobLine(lines, good.url).status, "completed");
    await assertFile(join(dir, "good.bin"), good);
    assert.ok(!existsSync(join(dir, "missing.bin")));
  });

  it("exits 2 on bad usage, says what to fix, and downloads nothing", async () => {
    const dir = freshDir();
    const route = origin.route("/usage/never.bin", { size: 1000 });
    const badList = join(dir, "list.txt");
    writeFileSync(badList, `${route.url}\n  out=x.bin\n`);
    const cases: [string[], RegExp, string?][] = [
      [["get"], /error: no URL given: pass one or more URLs, or --input-file FILE/],
      [["get", "--bogus", route.url], /error: unknown option '--bogus'/],
      [["get", "-d", dir, route.url, "not a url"], /Invalid URL "not a url": give an absolute http:\/\/ or https:\/\//],
      [["get", "-d", dir, route.url, "ftp://example.com/x"], /Unsupported URL scheme "ftp:"/],
      [["get", "-i", join(dir, "absent.txt")], /cannot read the input file .*absent\.txt: ENOENT/],
      [
        ["get", "-d", dir, "-i", badList],
        /list\.txt:2: unknown option "out"; the options are dest=, sha256=, priority=, limit-rate=, include= and exclude=/,
      ],
      [
        ["get", "-o", join(dir, "one.bin"), route.url, `${route.url}?v=2`],
        /-o names the file of one URL, and 2 were given; use -d DIR for several/,
      ],
      [["get", "-o", dir, route.url], /-o takes a file name, and .* is a folder: use -d DIR/],
      [["get", "-o", "new/", route.url], /-o takes a file name, and new\/ is a folder/],
      [
        ["get", "-d", dir, "-i", "-"],
        /would both be written to .*one\.bin/,
        `${route.url} dest=one.bin\n${route.url}?v=2 dest=one.bin\n`,
      ],
      [
        ["get", "-j", "0", route.url],
        /option '-j, --max-parallel <n>' argument '0' is invalid\. Give a whole number of at least 1/,
      ],
      [["get", "--sha256", "abc", "-d", dir, route.url], /sha256 must be 64 hexadecimal characters/],
      [["get", "--header", "no colon here", route.url], /--header #1 is not of the form "Name: value"/],
      [["frobnicate"], /unknown command 'frobnicate'/],
    ];
    for (const [args, message, stdin] of cases) {
      const { code, stdout, stderr } = await runCli(args, { stdin });
      assert.equal(code, 2, `${args.join(" ")}: ${stderr}`);
      assert.match(stderr, message, args.join(" "));
      assert.equal(stdout, "", args.join(" "));
    }
    assert.equal(route.requests.length, 0, "a bad entry anywhere stops the run before any request");
  });

  it("documents the input file format, tokens, JSON lines and exit codes in --help (exit 0)", async () => {
    const { code, stdout } = await runCli(["get", "--help"], { env: cleanEnv({ HF_TOKEN: "hf_helpSecret" }) });
    assert.equal(code, 0);
    for (const text of [
      ...["dest=", "sha256=", "priority=", "limit-rate=", "HF_TOKEN", "CIVITAI_TOKEN", '"event":"job"', "130", "141"],
      ...["-o, --output <file>", "--default-state", "HTTPS_PROXY", "NO_PROXY", "1024-based", "--overwrite"],
    ]) {
      assert.ok(stdout.includes(text), `--help mentions ${text}`);
    }
    assert.ok(!stdout.includes("hf_helpSecret"));
  });
});

describe("dlqueue get interrupted and run again", () => {
  it("Ctrl-C exits 130 keeping the partial; the same command resumes it with a Range request", async () => {
    const route = origin.route("/resume/big.bin", { size: 2_000_000, throttleBytesPerSec: 500_000 });
    const dir = freshDir();
    const args = ["get", "--json", "-d", dir, route.url];
    const first = new CliRun(args);
    await first.waitForEvent((line) => line.event === "download_progress" && (line.current_bytes as number) >= 200_000);
    first.child.kill("SIGINT");
    const interrupted = await first.exited;
    assert.equal(interrupted.code, 130);
    assert.match(
      interrupted.stderr,
      /^Interrupted: 1 partial file kept; run the same command again to resume\.$/m,
      interrupted.stderr,
    );
    const stopped = jobLine(parseJsonLines(interrupted.stdout), route.url);
    assert.equal(stopped.status, "waiting");
    const path = join(dir, "big.bin");
    assert.ok(!existsSync(path), "nothing at the final path yet");
    const kept = statSync(`${path}.downloading`).size;
    assert.ok(kept >= 200_000 && kept < route.size, `partial of ${kept} bytes`);

    const requestsBefore = route.requests.length;
    route.update({ throttleBytesPerSec: undefined });
    const second = await runCli(args);
    assert.equal(second.code, 0, second.stderr);
    // With a folder as dest the queue first learns the file name from a plain GET, then asks for the rest.
    const resumed = route.requests.slice(requestsBefore);
    assert.equal(resumed.at(-1)?.headers.range, `bytes=${kept}-`, "the second run asked only for the rest");
    const done = jobLine(parseJsonLines(second.stdout), route.url);
    assert.equal(done.status, "completed");
    assert.equal(done.bytes, route.size);
    await assertFile(path, route);
  });

  it("a resumed download says so, in its first line and in the summary", async () => {
    const route = origin.route("/resume/said.bin", { size: 2_000_000, throttleBytesPerSec: 1_000_000 });
    const dir = freshDir();
    const first = new CliRun(["get", "--json", "-d", dir, route.url]);
    await first.waitForEvent((line) => line.event === "download_progress" && (line.current_bytes as number) >= 200_000);
    first.child.kill("SIGINT");
    assert.equal((await first.exited).code, 130);
    const kept = statSync(join(dir, "said.bin.downloading")).size;
    route.update({ throttleBytesPerSec: undefined });
    const second = await runCli(["get", "-d", dir, route.url]);
    assert.equal(second.code, 0, second.stderr);
    await assertFile(join(dir, "said.bin"), route);
    const at = formatBytes(kept).replace(".", "\\.");
    assert.match(second.stdout, new RegExp(`^said\\.bin: started \\(2\\.00 MB, resuming at ${at}\\)`, "m"));
    assert.match(second.stdout, new RegExp(`\\nsaid\\.bin\\s+2\\.00 MB\\s+.*completed \\(resumed at ${at}\\)\\n`));
  });
});

describe("dlqueue get --state, killed, then dlqueue resume", () => {
  it("SIGKILL leaves the jobs in the state file; `resume` finishes them from their partial files", async () => {
    const big = origin.route("/state/big.bin", { size: 2_000_000, throttleBytesPerSec: 600_000 });
    const waiting = origin.route("/state/next.bin", { size: 50_000 });
    const dir = freshDir();
    const state = join(dir, "state", "queue.db");
    const first = new CliRun(["get", "--json", "-j", "1", "--state", state, "-d", dir, big.url, waiting.url]);
    await first.waitForEvent((line) => line.event === "download_progress" && (line.current_bytes as number) >= 300_000);
    first.child.kill("SIGKILL");
    await first.exited;
    assert.equal(waiting.requests.length, 0);

    const resumed = await runCli(["resume", "--json", "--state", state]);
    assert.equal(resumed.code, 0, resumed.stderr);
    const lines = parseJsonLines(resumed.stdout);
    assert.equal(jobLine(lines, big.url).status, "completed");
    assert.equal(jobLine(lines, waiting.url).status, "completed");
    const range = Number(/^bytes=(\d+)-$/.exec(String(big.requests.at(-1)?.headers.range))?.[1]);
    assert.ok(range > 0, `resumed with Range ${range}`);
    await assertFile(join(dir, "big.bin"), big);
    await assertFile(join(dir, "next.bin"), waiting);

    const again = await runCli(["resume", "--state", state]);
    assert.equal(again.code, 0);
    assert.match(again.stderr, /Nothing to resume/);
  });
});

describe("dlqueue get --input-file", () => {
  it("honours dest=, sha256= and priority= on the URL line and on indented lines", async () => {
    const one = origin.route("/list/one.bin", { size: 150_000 });
    const two = origin.route("/list/two.bin", { size: 120_000 });
    const three = origin.route("/list/three.bin", { size: 90_000 });
    const corrupt = origin.route("/list/corrupt.bin", { size: 60_000 });
    const base = freshDir();
    const list = join(base, "models.txt");
    writeFileSync(
      list,
      [
        "# models for this test",
        "",
        `${one.url} dest=sub/first.bin sha256=${await one.sha256()}`,
        two.url,
        "  dest=with space/",
        "  priority=1",
        `${three.url}\tdest=sub/`,
        corrupt.url,
        `\tsha256=${"0".repeat(64)}`,
        "",
      ].join("\r\n"),
    );
    const { code, stdout, stderr } = await runCli(["get", "--json", "-j", "1", "-d", base, "-i", list]);
    assert.equal(code, 1, stderr);
    await assertFile(join(base, "sub/first.bin"), one);
    await assertFile(join(base, "with space/two.bin"), two);
    await assertFile(join(base, "sub/three.bin"), three);
    assert.match(stderr, new RegExp(`error: ChecksumMismatch ${corrupt.url}`));
    assert.ok(!existsSync(join(base, "corrupt.bin")), "the file that failed its checksum is not at its final path");
    assert.ok(!existsSync(join(base, "corrupt.bin.downloading")), "nor kept as a partial");
    const started = parseJsonLines(stdout).filter((line) => line.event === "download_started");
    assert.equal(started[0]?.source, two.url, "priority=1 runs before the default 10 with -j 1");
  });

  it("reads the list from stdin with -i -", async () => {
    const route = origin.route("/stdin/piped.bin", { size: 20_000 });
    const dir = freshDir();
    const { code, stderr } = await runCli(["get", "-d", dir, "-i", "-"], { stdin: `${route.url} dest=renamed.bin\n` });
    assert.equal(code, 0, stderr);
    await assertFile(join(dir, "renamed.bin"), route);
  });

  it("parses both layouts and names the line of each mistake", () => {
    const entries = parseInputFile(
      `# c\nhttps://h/a dest=x/ priority=-2\n  sha256=${"a".repeat(64)}\nhttps://h/b\n`,
      "l",
    );
    assert.deepEqual(entries, [
      { url: "https://h/a", line: 2, dest: "x/", priority: -2, sha256: "a".repeat(64) },
      { url: "https://h/b", line: 4 },
    ]);
    const mistakes: [string, RegExp][] = [
      ["  dest=x\n", /^l:1: an indented option line must follow a URL line/],
      ["https://h/a\n\n  out=x\n", /^l:3: unknown option "out"/],
      ["https://h/a https://mirror/a\n", /^l:1: expected key=value after the URL/],
      ["https://h/a sha256=12\n", /^l:1: sha256= must be 64 hexadecimal characters/],
      ["https://h/a priority=high\n", /^l:1: priority=: Give a whole number, not "high"/],
      ["https://h/a dest=x\n dest=y\n", /^l:2: dest= is given twice/],
    ];
    for (const [text, message] of mistakes) {
      assert.throws(
        () => parseInputFile(text, "l"),
        (err: Error) => err instanceof InputFileError && message.test(err.message),
      );
    }
  });
});

describe("dlqueue get --sha256", () => {
  it("a mismatch exits 1 with ChecksumMismatch and leaves no file; the right hash completes", async () => {
    const route = origin.route("/sha/checked.bin", { size: 80_000 });
    const dir = freshDir();
    const path = join(dir, "checked.bin");
    const wrong = "f".repeat(64);
    const bad = await runCli(["get", "--json", "--sha256", wrong, "-d", dir, route.url]);
    assert.equal(bad.code, 1);
    assert.match(
      bad.stderr,
      new RegExp(`error: ChecksumMismatch ${route.url}\\n  sha256 of .* but ${wrong} was expected`),
    );
    assert.equal(jobLine(parseJsonLines(bad.stdout), route.url).error_type, "ChecksumMismatch");
    assert.ok(!existsSync(path), "a file that fails its checksum never reaches the final path");
    assert.ok(!existsSync(`${path}.downloading`), "and is not kept for a resume");

    const good = await runCli(["get", "--sha256", (await route.sha256()).toUpperCase(), "-d", dir, route.url]);
    assert.equal(good.code, 0, good.stderr);
    await assertFile(path, route);
  });
});

describe("dlqueue get access tokens", () => {
  it("maps HF_TOKEN and CIVITAI_TOKEN to their hosts and subdomains only", () => {
    const rules = tokenRulesFromEnv({ HF_TOKEN: " hf_abc ", CIVITAI_TOKEN: "civ_xyz", OTHER: "x" });
    const tokenFor = (url: string) => rules.find((rule) => (rule.url as RegExp).test(new URL(url).href))?.token;
    assert.equal(tokenFor("https://huggingface.co/org/model/resolve/main/model.safetensors"), "hf_abc");
    assert.equal(tokenFor("https://cdn-lfs.huggingface.co/repos/x"), "hf_abc");
    assert.equal(tokenFor("http://HuggingFace.co:8080/x"), "hf_abc");
    assert.equal(tokenFor("https://civitai.com/api/download/models/152309?type=Model"), "civ_xyz");
    assert.equal(tokenFor("https://www.civitai.com/x"), "civ_xyz");
    for (const url of [
      "https://huggingface.co.evil.com/x",
      "https://evilhuggingface.co/x",
      "https://huggingface.co@evil.com/x",
      "https://evil.com/huggingface.co/x",
      "https://evil.com/?next=https://huggingface.co/",
      "https://civitai.community/x",
      "https://example.com/x",
    ]) {
      assert.equal(tokenFor(url), undefined, url);
    }
    assert.deepEqual(tokenRulesFromEnv({ HF_TOKEN: "  ", CIVITAI_TOKEN: "" }), []);
  });

  it("the HF_TOKEN rule reaches a huggingface.co URL as a Bearer token, and no other host", async () => {
    const gated = origin.route("/org/gated/resolve/main/model.bin", { size: 5_000, requireToken: "hf_e2e" });
    const open = origin.route("/open/model.bin", { size: 5_000 });
    const port = new URL(origin.url).port;
    // huggingface.co cannot be reached from a test; every host name resolves to the local origin instead.
    const dispatcher = new Agent({
      connect: {
        lookup: (_host, options, callback) =>
          options.all ? callback(null, [{ address: "127.0.0.1", family: 4 }]) : callback(null, "127.0.0.1", 4),
      },
    });
    const queue = new DownloadQueue({ tokens: tokenRulesFromEnv({ HF_TOKEN: "hf_e2e" }), dispatcher });
    const hfDir = freshDir();
    const otherDir = freshDir();
    const hf = queue.download({ source: `http://huggingface.co:${port}${gated.key}`, dest: hfDir });
    const other = queue.download({ source: `http://example.com:${port}${open.key}`, dest: otherDir });
    await queue.join();
    await queue.stop();
    await dispatcher.close();
    assert.equal(hf.status, "completed", hf.error);
    assert.equal(other.status, "completed", other.error);
    assert.equal(gated.requests[0]?.headers.authorization, "Bearer hf_e2e");
    assert.equal(open.requests[0]?.headers.authorization, undefined);
    await assertFile(join(hfDir, "model.bin"), gated);
    await assertFile(join(otherDir, "model.bin"), open);
  });

  it("--token authenticates the URL and is never printed; HF_TOKEN is not sent to other hosts", async () => {
    const token = "tok_Secret_123";
    const route = origin.route("/auth/private.bin", { size: 30_000, requireToken: token });
    const dir = freshDir();
    const env = cleanEnv({ HF_TOKEN: "hf_NeverSent", CIVITAI_TOKEN: "civ_NeverSent" });
    const ok = await runCli(["get", "--token", token, "-d", dir, route.url], { env });
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(route.requests.at(-1)?.headers.authorization, `Bearer ${token}`);
    await assertFile(join(dir, "private.bin"), route);

    const wrong = await runCli(["get", "--token", "tok_Wrong_456", "-d", freshDir(), route.url], { env });
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, /error: HTTPError\(Forbidden\)/);

    const anonymous = origin.route("/auth/public.bin", { size: 1_000 });
    const plain = await runCli(["get", "-d", freshDir(), anonymous.url], { env });
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(anonymous.requests[0]?.headers.authorization, undefined, "HF_TOKEN goes to huggingface.co only");

    for (const run of [ok, wrong, plain]) {
      for (const secret of [token, "tok_Wrong_456", "hf_NeverSent", "civ_NeverSent"]) {
        assert.ok(!run.stdout.includes(secret) && !run.stderr.includes(secret), `${secret} was printed`);
      }
    }
  });
});

describe("formatting", () => {
  it("sizes and durations read like a model hub's", () => {
    assert.equal(formatBytes(999), "999 B");
    assert.equal(formatBytes(1_000), "1.00 kB");
    assert.equal(formatBytes(719_020_768), "719 MB");
    assert.equal(formatBytes(6_938_041_000), "6.94 GB");
    assert.equal(formatDuration(7.4), "0:07");
    assert.equal(formatDuration(754), "12:34");
    assert.equal(formatDuration(3723), "1:02:03");
  });
});

/** Every file name in `dir`, subfolders included, for checks that nothing (a lock, a partial) was left behind. */
function filesIn(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" });
}

/** An HTTP proxy for the tests: CONNECT tunnels and absolute-form requests, each recorded. */
async function startProxy(): Promise<{ url: string; seen: string[]; close: () => Promise<void> }> {
  const seen: string[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    const upstream = httpRequest(req.url ?? "", { method: req.method, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    });
    upstream.on("error", () => res.destroy());
    req.pipe(upstream);
  });
  server.on("connection", (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });
  server.on("connect", (req, client: Socket, head) => {
    seen.push(`CONNECT ${req.url}`);
    const [host = "", port = ""] = (req.url ?? "").split(":");
    const target = connect(Number(port), host, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      target.write(head);
      target.pipe(client);
      client.pipe(target);
    });
    sockets.add(target);
    target.on("close", () => sockets.delete(target));
    target.on("error", () => client.destroy());
    client.on("error", () => target.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

describe("dlqueue get: -d is a folder, -o a file", () => {
  it("-d DIR writes into DIR even when it does not exist and has no slash; -o FILE writes exactly FILE", async () => {
    const route = origin.route("/where/w.bin", { size: 20_000 });
    const dir = freshDir();
    const intoFolder = await runCli(["get", "-q", "-d", join(dir, "models"), route.url]);
    assert.equal(intoFolder.code, 0, intoFolder.stderr);
    assert.ok(statSync(join(dir, "models")).isDirectory(), "-d models is a folder, not a file named models");
    await assertFile(join(dir, "models", "w.bin"), route);

    const exact = await runCli(["get", "-q", "-o", join(dir, "exact", "named.bin"), route.url]);
    assert.equal(exact.code, 0, exact.stderr);
    await assertFile(join(dir, "exact", "named.bin"), route);

    // -o is relative to -d, as aria2's -o is to its -d and curl's -o to --output-dir.
    const both = await runCli(["get", "-q", "-d", join(dir, "base"), "-o", "sub/x.bin", route.url]);
    assert.equal(both.code, 0, both.stderr);
    await assertFile(join(dir, "base", "sub", "x.bin"), route);
  });
});

describe("dlqueue get: wide characters", () => {
  const cjk = "模型权重文件非常长的名字模型权重文件非常长的名字.safetensors";
  const emoji = "🚀✨🦙🚀✨🦙🚀✨🦙🚀✨🦙🚀✨🦙🚀✨🦙-weights.bin";

  it("board lines never exceed the terminal's columns; names are cut by width, keeping the end", () => {
    const live = { bytes: 123_456_789, totalBytes: 4_987_654_321, speed: 12_345_678, note: "ETA 1:02:03" };
    const done = {
      bytes: 4_987_654_321,
      totalBytes: 4_987_654_321,
      bytesOnly: true,
      speed: 1e7,
      note: "done in 12:34",
    };
    for (const width of [59, 79, 99, 119, 159]) {
      for (const name of [cjk, emoji, "a.bin", "Total 3/12 done"]) {
        for (const fields of [live, done, { bytes: 5_000, totalBytes: 0 }]) {
          const text = formatLine(width, { name, ...fields });
          assert.ok(displayWidth(text) <= width, `${displayWidth(text)} > ${width}: ${text}`);
        }
      }
      // The bar starts at one column whatever the name's script, so the board's columns line up.
      const barAt = (name: string) => {
        const text = formatLine(width, { name, ...live });
        return displayWidth(text.slice(0, text.indexOf("[")));
      };
      assert.equal(barAt(cjk), barAt("a.bin"), `width ${width}`);
      assert.equal(barAt(emoji), barAt("a.bin"), `width ${width}`);
    }
    for (const [text, width] of [
      [cjk, 7],
      [cjk, 8],
      [emoji, 9],
      ["abc", 5],
    ] as const) {
      assert.equal(displayWidth(fitWidth(text, width)), width, `fitWidth(${text}, ${width})`);
    }
    // At 80 columns four shards keep their numbers and their extension.
    const names = [1, 2, 3, 4].map((n) => {
      const text = formatLine(79, { name: `model-0000${n}-of-00004.safetensors`, ...live, note: "ETA 0:14" });
      return text.slice(0, text.indexOf("  "));
    });
    assert.equal(new Set(names).size, 4, names.join(" | "));
    for (const name of names) assert.match(name, /^model-0000\d.*….*\.safetensors$/);
  });

  it("at 80 columns a CJK file name neither wraps nor scrolls the board; the table's columns line up", {
    skip: utilLinuxScript.skip,
  }, async () => {
    const wide = origin.route(`/wide/${encodeURIComponent(cjk)}`, { size: 400_000, throttleBytesPerSec: 800_000 });
    const narrow = origin.route("/wide/a.bin", { size: 300_000, throttleBytesPerSec: 600_000 });
    const dir = freshDir();
    const { code, screen } = await runInPty(CLI, ["get", "-d", dir, wide.url, narrow.url], cleanEnv(), 80);
    assert.equal(code, 0, screen);
    await assertFile(join(dir, cjk), wide);
    const rows = terminalRows(screen, 80);
    for (const row of rows) assert.ok(displayWidth(row) <= 80, `a row wider than the terminal: ${row}`);
    // A line that wraps puts the board one row lower at each redraw: old copies of it are left behind.
    const totals = rows.filter((row) => row.startsWith("Total"));
    assert.equal(totals.length, 1, `one total line on the screen:\n${rows.join("\n")}`);
    assert.match(totals[0] ?? "", /^Total 2\/2 done .*100%.*done in/);
    const headerAt = rows.findIndex((row) => row.startsWith("File"));
    const header = rows[headerAt] ?? "";
    const line = rows.slice(headerAt).find((row) => row.startsWith("模型")) ?? "";
    const columnOf = (row: string, text: string) => displayWidth(row.slice(0, row.indexOf(text)));
    assert.equal(columnOf(line, "completed"), columnOf(header, "Status"), `${header}\n${line}`);
  });
});

describe("dlqueue get: messages go through the board", {
  skip: utilLinuxScript.skip,
}, () => {
  it("a retry warning and a failure print above the bars, on rows of their own, whatever their length", async () => {
    const slow = origin.route("/board/slow.bin", { size: 900_000, throttleBytesPerSec: 900_000 });
    const flaky = origin.route("/board/flaky.bin", {
      size: 600_000,
      throttleBytesPerSec: 900_000,
      faults: [{ kind: "drop", afterBytes: 200_000 }],
    });
    const missing = origin.route("/board/missing.bin", { latencyMs: 400, faults: [{ kind: "status", status: 404 }] });
    const dir = freshDir();
    const { code, screen } = await runInPty(
      CLI,
      ["get", "--retry-delay", "0.1", "-d", dir, slow.url, flaky.url, missing.url],
      cleanEnv(),
      100,
    );
    assert.equal(code, 1, screen);
    await assertFile(join(dir, "slow.bin"), slow);
    await assertFile(join(dir, "flaky.bin"), flaky);
    const rows = terminalRows(screen, 100);
    assert.ok(
      rows.some((row) => row.startsWith("warning: retry 1")),
      rows.join("\n"),
    );
    assert.ok(
      rows.some((row) => row.startsWith("error: HTTPError(Not Found)")),
      rows.join("\n"),
    );
    // A message row written over a bar row without clearing it keeps the bar's tail: a row with board fragments
    // (bar glyphs, a percent, a speed, an ETA) that does not start with a file name.
    for (const row of rows.filter((r) => /[█░]|\d%|B\/s|ETA/.test(r))) {
      assert.match(row, /^(slow\.bin|flaky\.bin|missing\.bin|Total) /, `a message over a bar:\n${rows.join("\n")}`);
    }
  });

  it("clearedRows clears each row a message takes, its wrapped parts included", () => {
    const text = clearedRows("error: x\n  a reason that is longer than ten columns", 10);
    assert.deepEqual(text.split("\n").slice(0, -1), [
      "\u001b[2Kerror: x",
      "\u001b[2K  a reason",
      "\u001b[2K that is l",
      "\u001b[2Konger than",
      "\u001b[2K ten colum",
      "\u001b[2Kns",
    ]);
  });
});

describe("dlqueue get: a reader that goes away (EPIPE)", () => {
  it("`get URL | head -2` stops quietly: exit 141, no stack trace, the lock released, the partial kept", async () => {
    const route = origin.route("/pipe/big.bin", { size: 2_000_000, throttleBytesPerSec: 1_000_000 });
    const dir = freshDir();
    const run = new CliRun(["get", "-d", dir, route.url]);
    await new Promise<void>((resolve) => {
      const check = () => {
        if (run.stdout.split("\n").length > 2) {
          run.child.stdout?.off("data", check);
          resolve();
        }
      };
      run.child.stdout?.on("data", check);
    });
    run.child.stdout?.destroy();
    const { code, stderr } = await run.exited;
    assert.equal(code, 141, stderr);
    assert.doesNotMatch(stderr, /Error|\n\s+at /, "no stack trace");
    const left = filesIn(dir);
    assert.deepEqual(
      left.filter((name) => name.endsWith(".lock")),
      [],
      `no stale lock: ${left}`,
    );
    assert.ok(existsSync(join(dir, "big.bin.downloading")), `the partial is kept: ${left}`);
  });

  it("`help get | true` exits without a stack trace", async () => {
    const output = execFileSync(
      "bash",
      ["-c", `${shellQuote(process.execPath)} ${shellQuote(CLI)} help get 2>&1 | true; echo "\${PIPESTATUS[0]}"`],
      { env: cleanEnv(), encoding: "utf8" },
    );
    assert.match(output.trim(), /^(0|141)$/);
  });
});

describe("dlqueue get: output for logs and for scripts", () => {
  it("stdout not a terminal and no --json: plain lines at each tenth, then the table; no JSON", async () => {
    const route = origin.route("/plain/log.bin", { size: 1_000_000, throttleBytesPerSec: 2_000_000 });
    const dir = freshDir();
    const { code, stdout, stderr } = await runCli(["get", "-d", dir, route.url]);
    assert.equal(code, 0, stderr);
    await assertFile(join(dir, "log.bin"), route);
    assert.ok(!stdout.includes("{"), "no JSON without --json");
    assert.ok(!stdout.includes("\u001b"), "no escape sequences in a log");
    const lines = stdout.trimEnd().split("\n");
    assert.match(lines[0] ?? "", new RegExp(`^log\\.bin: started \\(1\\.00 MB\\) from ${route.url}$`));
    const percents = lines.flatMap((line) => {
      const match = /^log\.bin: (\d+)% {2}\S+ [kM]?B of 1\.00 MB/.exec(line);
      return match ? [Number(match[1])] : [];
    });
    assert.ok(percents.length >= 3 && percents.length <= 9, `a line per tenth, not per chunk: ${percents}`);
    const tenths = percents.map((p) => Math.floor(p / 10));
    assert.deepEqual(
      tenths,
      [...new Set(tenths)].sort((a, b) => a - b),
      "one line per tenth, in order",
    );
    const doneSpeed = lines.map((line) => /^log\.bin: done, 1\.00 MB in \d+:\d\d, (\S+ [kM]B\/s)$/.exec(line)?.[1]);
    assert.ok(doneSpeed.some(Boolean), stdout);
    const tableSpeed =
      /\nFile\s+Size\s+Time\s+Avg speed\s+Status\nlog\.bin\s+1\.00 MB\s+\S+\s+(\S+ [kM]B\/s)\s+completed\n$/.exec(
        stdout,
      )?.[1];
    assert.ok(tableSpeed, stdout);
    assert.ok(doneSpeed.includes(tableSpeed), `the done line and the table time the job alike: ${stdout}`);
  });

  it("--json on a terminal prints JSON lines only: no bars, no table", {
    skip: utilLinuxScript.skip,
  }, async () => {
    const route = origin.route("/jsontty/j.bin", { size: 300_000, throttleBytesPerSec: 600_000 });
    const dir = freshDir();
    const { code, screen } = await runInPty(CLI, ["get", "--json", "-d", dir, route.url]);
    assert.equal(code, 0, screen);
    assert.ok(!screen.includes("\u001b["), "no cursor movements: nothing is drawn");
    const lines = screen.split(/\r?\n/).filter(Boolean);
    for (const line of lines) assert.doesNotThrow(() => JSON.parse(line), `not a JSON line: ${line}`);
    assert.ok(lines.some((line) => line.startsWith('{"event":"job"')));
  });
});

describe("dlqueue get: the flags users reach for", () => {
  it("one number parser: rates as wget and curl spell them (k = 1024), whole numbers, seconds", () => {
    assert.equal(parseRate("500k"), 512_000);
    assert.equal(parseRate("2M"), 2_097_152);
    assert.equal(parseRate("1.5MB"), 1_572_864);
    assert.equal(parseRate("64KiB/s"), 65_536);
    assert.equal(parseRate("800000"), 800_000);
    for (const bad of ["fast", "0", "-5k", "1e6", "2T", "k", ""]) assert.throws(() => parseRate(bad), bad);
    assert.equal(parseNumber("12", { integer: true }), 12);
    assert.equal(parseNumber("0.25", { min: 0, minExclusive: true }), 0.25);
    for (const [bad, rules] of [
      ["1.5", { integer: true }],
      ["0x10", { integer: true }],
      ["1e3", {}],
      ["Infinity", {}],
      ["0", { min: 0, minExclusive: true }],
      ["0", { integer: true, min: 1 }],
    ] as const) {
      assert.throws(() => parseNumber(bad, rules), bad);
    }
  });

  it("serve's --port and -j take the same parser as get's options, with a range", () => {
    assert.equal(parseNumber("65535", { integer: true, min: 0, max: 65535 }), 65535);
    assert.throws(() => parseNumber("65536", { integer: true, min: 0, max: 65535 }), /from 0 to 65535, not "65536"/);
    assert.throws(() => parseNumber("-1", { integer: true, min: 0, max: 65535 }), /from 0 to 65535/);
    const port = integerArgument(0, 65535);
    assert.equal(port("9190"), 9190);
    assert.throws(() => port("http"), InvalidArgumentError);
  });

  it("--limit-rate caps all downloads together; limit-rate= in the input file caps one", async () => {
    const a = origin.route("/rate/a.bin", { size: 50_000 });
    const b = origin.route("/rate/b.bin", { size: 50_000 });
    const dir = freshDir();
    let began = performance.now();
    const global = await runCli(["get", "-q", "--limit-rate", "100k", "-d", dir, a.url, b.url]);
    const globalSeconds = (performance.now() - began) / 1000;
    assert.equal(global.code, 0, global.stderr);
    await assertFile(join(dir, "a.bin"), a);
    await assertFile(join(dir, "b.bin"), b);
    // 100 kB together at 102.4 kB/s: about a second; each alone at that rate would take half of it.
    assert.ok(globalSeconds >= 0.8, `100 kB at 100k took ${globalSeconds} s`);

    const listed = origin.route("/rate/listed.bin", { size: 80_000 });
    const free = origin.route("/rate/free.bin", { size: 80_000 });
    const other = freshDir();
    began = performance.now();
    const perJob = await runCli(["get", "--json", "-d", other, "-i", "-"], {
      stdin: `${listed.url} limit-rate=100k\n${free.url}\n`,
    });
    const perJobSeconds = (performance.now() - began) / 1000;
    assert.equal(perJob.code, 0, perJob.stderr);
    await assertFile(join(other, "listed.bin"), listed);
    await assertFile(join(other, "free.bin"), free);
    const ended = (source: string) => Date.parse(String(jobLine(parseJsonLines(perJob.stdout), source).job_ended));
    assert.ok(perJobSeconds >= 0.6, `80 kB at 100k took ${perJobSeconds} s`);
    assert.ok(ended(free.url) < ended(listed.url) - 300, "the unlimited download was not held back");

    const bad = await runCli(["get", "--limit-rate", "fast", "-d", dir, a.url]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--limit-rate <rate>' argument 'fast' is invalid\. Give a rate in bytes per second/);
  });

  it("--proxy sends requests through the proxy; without it HTTP_PROXY is honoured, NO_PROXY too", async () => {
    const proxy = await startProxy();
    try {
      const route = origin.route("/proxy/p.bin", { size: 30_000 });
      const dir = freshDir();
      const flag = await runCli(["get", "-q", "--proxy", proxy.url, "-o", join(dir, "flag.bin"), route.url]);
      assert.equal(flag.code, 0, flag.stderr);
      await assertFile(join(dir, "flag.bin"), route);
      assert.ok(proxy.seen.length > 0, "the request went through the proxy");

      const seenBefore = proxy.seen.length;
      const env = cleanEnv({ HTTP_PROXY: proxy.url, http_proxy: proxy.url, NO_PROXY: "", no_proxy: "" });
      const fromEnv = await runCli(["get", "-q", "-o", join(dir, "env.bin"), route.url], { env });
      assert.equal(fromEnv.code, 0, fromEnv.stderr);
      await assertFile(join(dir, "env.bin"), route);
      assert.ok(proxy.seen.length > seenBefore, "HTTP_PROXY was honoured");

      const seenNoProxy = proxy.seen.length;
      const host = new URL(route.url).hostname;
      const bypass = await runCli(["get", "-q", "-o", join(dir, "direct.bin"), route.url], {
        env: { ...env, NO_PROXY: host, no_proxy: host },
      });
      assert.equal(bypass.code, 0, bypass.stderr);
      await assertFile(join(dir, "direct.bin"), route);
      assert.equal(proxy.seen.length, seenNoProxy, "NO_PROXY was honoured");

      const bad = await runCli(["get", "--proxy", "socks5://h:1", route.url]);
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /--proxy takes an http:\/\/ or https:\/\/ URL/);
    } finally {
      await proxy.close();
    }
  });

  it("--timeout retries a stalled body after that long; --retry-delay sets the first wait", async () => {
    const stalled = origin.route("/timeout/stall.bin", {
      size: 50_000,
      faults: [{ kind: "stall", afterBytes: 10_000 }],
    });
    const dir = freshDir();
    const began = performance.now();
    const run = await runCli(["get", "-q", "--timeout", "0.3", "--retry-delay", "0.05", "-d", dir, stalled.url]);
    assert.equal(run.code, 0, run.stderr);
    await assertFile(join(dir, "stall.bin"), stalled);
    // The default would wait 60 s for the stalled body.
    assert.ok(performance.now() - began < 10_000, `took ${performance.now() - began} ms`);

    const flaky = origin.route("/timeout/503.bin", { size: 5_000, faults: [{ kind: "status", status: 503 }] });
    const quick = await runCli(["get", "--retry-delay", "0.05", "-d", dir, flaky.url]);
    assert.equal(quick.code, 0, quick.stderr);
    await assertFile(join(dir, "503.bin"), flaky);
    // The warning says how long the wait is; the default first wait is about a second.
    assert.match(quick.stderr, /warning: retry 1 in 0\.[01] s/);

    for (const args of [
      ["--timeout", "0"],
      ["--retry-delay", "soon"],
    ]) {
      const bad = await runCli(["get", ...args, flaky.url]);
      assert.equal(bad.code, 2, args.join(" "));
      assert.match(bad.stderr, /is invalid\. Give a number/);
    }
  });

  it("a complete file is not fetched again and reports completed (already complete); --overwrite fetches it", async () => {
    const route = origin.route("/again/done.bin", { size: 40_000 });
    const dir = freshDir();
    const first = await runCli(["get", "-d", dir, route.url]);
    assert.equal(first.code, 0, first.stderr);
    const bodies = () => route.requests.filter((r) => r.method === "GET").length;
    const fetched = bodies();

    const again = await runCli(["get", "-d", dir, route.url]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /^done\.bin: already complete \(40\.0 kB\)$/m);
    assert.match(again.stdout, /\ndone\.bin\s+40\.0 kB\s+\S+\s+-\s+already complete\n/);
    await assertFile(join(dir, "done.bin"), route);

    const requestsBefore = route.requests.length;
    const overwrite = await runCli(["get", "--json", "--overwrite", "-d", dir, route.url]);
    assert.equal(overwrite.code, 0, overwrite.stderr);
    assert.ok(bodies() > fetched, "--overwrite sent a request again");
    const progress = parseJsonLines(overwrite.stdout).filter((line) => line.event === "download_progress");
    assert.ok(progress.length > 0 && route.requests.length > requestsBefore);
    await assertFile(join(dir, "done.bin"), route);
  });
});

describe("dlqueue get: messages", () => {
  it("--quiet hides a retry or two, but says once when retrying goes on", async () => {
    const brief = origin.route("/quiet/brief.bin", { size: 20_000, faults: [{ kind: "hangup" }] });
    const dir = freshDir();
    const hiccup = await runCli(["get", "-q", "--retry-delay", "0.01", "-d", dir, brief.url]);
    assert.equal(hiccup.code, 0, hiccup.stderr);
    assert.equal(hiccup.stderr, "", "one retry stays quiet");

    const long = origin.route("/quiet/long.bin", {
      size: 20_000,
      faults: [{ kind: "hangup" }, { kind: "hangup" }, { kind: "hangup" }, { kind: "hangup" }],
    });
    const retrying = await runCli(["get", "-q", "--retry-delay", "0.01", "-d", dir, long.url]);
    assert.equal(retrying.code, 0, retrying.stderr);
    await assertFile(join(dir, "long.bin"), long);
    assert.equal(retrying.stdout, "");
    assert.equal(retrying.stderr.match(/still retrying/g)?.length, 1, retrying.stderr);
    assert.match(retrying.stderr, new RegExp(`^warning: .*${long.url}`, "m"));
  });

  it("a 1 kB file shows a real speed or none, never 0 B/s", {
    skip: utilLinuxScript.skip,
  }, async () => {
    const tiny = origin.route("/tiny/one-k.bin", { size: 1_000 });
    const dir = freshDir();
    const { code, screen } = await runInPty(CLI, ["get", "-d", dir, tiny.url]);
    assert.equal(code, 0, screen);
    await assertFile(join(dir, "one-k.bin"), tiny);
    const rows = terminalRows(screen, 120);
    assert.ok(
      rows.some((row) => /^one-k\.bin .*100%.*done in/.test(row)),
      rows.join("\n"),
    );
    for (const row of rows) assert.doesNotMatch(row, /(^|\s)0 B\/s/, rows.join("\n"));
    assert.match(
      rows.find((row) => row.startsWith("one-k.bin ") && row.endsWith("completed")) ?? "",
      /\s(-|\S+ [kM]?B\/s)\s+completed$/,
    );
  });

  it("the total line keeps a bar and an ETA, marked as estimates, while some sizes are unknown", {
    skip: utilLinuxScript.skip,
  }, async () => {
    const sized = origin.route("/estimate/sized.bin", { size: 200_000, throttleBytesPerSec: 400_000 });
    const unsized = origin.route("/estimate/chunked.bin", {
      size: 300_000,
      chunked: true,
      throttleBytesPerSec: 400_000,
    });
    const dir = freshDir();
    const { code, screen } = await runInPty(CLI, ["get", "-d", dir, sized.url, unsized.url]);
    assert.equal(code, 0, screen);
    await assertFile(join(dir, "chunked.bin"), unsized);
    const lines = renderedLines(screen);
    assert.ok(
      lines.some((line) => /^Total 0\/2 done\s+\[[█░]+\]\s+\d+%\s+\S+ [kM]?B\/~\S+ [kM]?B.*ETA ~\d+:\d\d$/.test(line)),
      `a live total line with an estimated total and ETA:\n${lines.filter((l) => l.startsWith("Total")).join("\n")}`,
    );
    assert.ok(lines.some((line) => /^Total 2\/2 done\s+\[█+\]\s+100%\s+500 kB\/500 kB/.test(line)));
  });
});

describe("dlqueue get/resume: the state file", () => {
  it("--state never takes a URL; resume never creates a state file; --default-state uses XDG_STATE_HOME", async () => {
    const route = origin.route("/statefile/s.bin", { size: 10_000 });
    const dir = freshDir();
    const taken = await runCli(["get", "--state", route.url]);
    assert.equal(taken.code, 2);
    assert.match(taken.stderr, /--state takes a file name, and got the URL .*--default-state for the default file/);

    const typo = join(dir, "typo", "q.db");
    const missing = await runCli(["resume", "--state", typo]);
    assert.equal(missing.code, 2);
    assert.match(
      missing.stderr,
      /there is no state file .*typo\/q\.db: give the file `dlqueue get --state FILE` wrote/,
    );
    assert.ok(!existsSync(join(dir, "typo")), "no folder created for a mistyped state file");

    const env = cleanEnv({ XDG_STATE_HOME: join(dir, "xdg") });
    const noDefault = await runCli(["resume"], { env });
    assert.equal(noDefault.code, 2);
    assert.match(noDefault.stderr, /there is no state file .*xdg\/dlqueue\/queue\.db/);

    const saved = await runCli(["get", "-q", "--default-state", "-d", dir, route.url], { env });
    assert.equal(saved.code, 0, saved.stderr);
    await assertFile(join(dir, "s.bin"), route);
    assert.ok(existsSync(join(dir, "xdg", "dlqueue", "queue.db")));
    const nothing = await runCli(["resume"], { env });
    assert.equal(nothing.code, 0, nothing.stderr);
    assert.match(nothing.stderr, /Nothing to resume in .*xdg\/dlqueue\/queue\.db/);
  });
});
