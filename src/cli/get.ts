/** `dlqueue get`: download URLs with live bars, resumable on Ctrl-C, scriptable through JSON lines. */
import { mkdirSync, statSync } from "node:fs";
import { constants, homedir } from "node:os";
import { basename, dirname, isAbsolute, join, resolve, sep } from "node:path";
import { debuglog } from "node:util";
import { type Command, InvalidArgumentError } from "commander";
import {
  DlqError,
  type DownloadJob,
  DownloadQueue,
  type Logger,
  type QueueEventName,
  type QueueEventPayloads,
  type TokenRule,
} from "../index.js";
import { INPUT_FILE_HELP, InputFileError, parseInputFile, readInputFile } from "./input-file.js";
import {
  type BoardLine,
  ConsoleProgress,
  formatBytes,
  formatDuration,
  formatLine,
  formatSpeed,
  printAbove,
  SpeedMeter,
  showLine,
  sweepLines,
} from "./progress.js";

export interface GetOptions {
  dest?: string;
  maxParallel?: number;
  priority?: number;
  inputFile?: string;
  token?: string;
  header?: string[];
  sha256?: string;
  retries?: number;
  connections?: number;
  /** commander's `--no-fsync`: false when given. */
  fsync?: boolean;
  json?: boolean;
  quiet?: boolean;
  /** A durable queue file: jobs a killed run left unfinished are resumed, and this run's jobs are recorded. */
  state?: string | true;
  /** `dlqueue resume`: no new URLs, only what the state file holds. */
  resumeOnly?: boolean;
}

/** `$XDG_STATE_HOME/dlqueue/queue.db`, the XDG default being `~/.local/state`. */
export function defaultStatePath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_STATE_HOME || join(homedir(), ".local", "state"), "dlqueue", "queue.db");
}

/** Hosts whose token can come from the environment, so the usual model hubs work without flags. */
const ENV_TOKENS = [
  { variable: "HF_TOKEN", host: "huggingface.co" },
  { variable: "CIVITAI_TOKEN", host: "civitai.com" },
];

/** The library's `tokens` rules for the hub tokens set in `env`. */
export function tokenRulesFromEnv(env: NodeJS.ProcessEnv): TokenRule[] {
  return ENV_TOKENS.flatMap(({ variable, host }) => {
    const token = env[variable]?.trim();
    return token ? [{ url: hostPattern(host), token }] : [];
  });
}

/**
 * Matches URLs on `host` or a subdomain of it, and nothing that merely contains the name: not
 * `huggingface.co.evil.com`, not `evilhuggingface.co`, not `https://huggingface.co@evil.com/` (userinfo).
 */
function hostPattern(host: string): RegExp {
  return new RegExp(`^https?://([^/?#@]*\\.)?${host.replaceAll(".", "\\.")}(:\\d+)?([/?#]|$)`, "i");
}

const HELP = `
${INPUT_FILE_HELP}

Access tokens:
  HF_TOKEN       sent to huggingface.co and its subdomains
  CIVITAI_TOKEN  sent to civitai.com and its subdomains
  --token T      sent to the URLs given as arguments (not those of -i),
                 instead of the above
  A token goes only to the host of its URL, never to a host it redirects to,
  and is never printed.

Output:
  On a terminal: a bar per running download and a total line on stderr, then
  a summary table on stdout. With --json, or when stdout is not a terminal,
  stdout carries one JSON object per line instead (unless --quiet):
    {"event":"download_started","id":0,"source":"…","download_path":"…"}
    {"event":"download_progress","id":0,"source":"…","download_path":"…",
     "current_bytes":1024,"total_bytes":4096}
    {"event":"download_complete","id":0,"source":"…","download_path":"…",
     "total_bytes":4096}
    {"event":"download_error","id":0,"source":"…","error_type":"…","error":"…"}
    {"event":"job","job":{"source":"…","dest":"…","id":0,"priority":10,
     "status":"completed","download_path":"…","bytes":4096,…}}
  A "job" line comes once per download when it ends, and on Ctrl-C for each
  unfinished one (status "waiting"). Failures always go to stderr too.

Resuming:
  Data is written to <file>.downloading and renamed when complete. Ctrl-C
  keeps those partial files; run the same command again to resume them.

Exit status:
  0 all downloads completed, 1 some failed, 2 bad usage,
  130 interrupted by Ctrl-C (143 by SIGTERM).`;

const CONNECTIONS_OPTION = [
  "-x, --connections <n>",
  "connections per file of 8 MiB or more, when the server serves ranges (aria2's -x; default: 1)",
  integer(1),
] as const;
const NO_FSYNC_OPTION = [
  "--no-fsync",
  "do not flush large files to the disk before they are moved into place (faster; a power cut may then leave a " +
    "damaged file)",
] as const;

export function addGetCommand(program: Command): Command {
  return program
    .command("get")
    .description("Download URLs in parallel, resuming whatever an earlier run left unfinished.")
    .argument("[url...]", "http:// or https:// URLs to download")
    .option(
      "-d, --dest <dir|file>",
      'where to write: a folder (existing, or ending in "/") or, for one URL, a file name (default: the current directory)',
    )
    .option("-j, --max-parallel <n>", "downloads running at once (default: 5)", integer(1))
    .option("-p, --priority <n>", "priority of the downloads; lower runs first (default: 10)", integer())
    .option("-i, --input-file <file>", "also download the URLs listed in <file> (- for stdin); format below")
    .option("--token <token>", "access token for the URLs given as arguments (sent as a Bearer token)")
    .option("--header <header>", 'extra request header "Name: value"; repeatable', collect)
    .option("--sha256 <hex>", "expected sha256 of the one URL given as argument")
    .option(
      "--retries <n>",
      "retries of an interrupted transfer, each resuming where it stopped (default: 5)",
      integer(0),
    )
    .option(...CONNECTIONS_OPTION)
    .option(...NO_FSYNC_OPTION)
    .option("--json", "print JSON lines on stdout (the default when stdout is not a terminal)")
    .option("-q, --quiet", "no bars, no table, no JSON unless --json: only errors")
    .option(
      "--state [file]",
      "keep the queue in a state file, so `dlqueue resume` finishes what a killed run left (default file: " +
        "$XDG_STATE_HOME/dlqueue/queue.db)",
    )
    .addHelpText("after", HELP)
    .action(async (urls: string[], options: GetOptions, command: Command) => {
      process.exitCode = await runGet(urls, options, command);
    });
}

export function addResumeCommand(program: Command): Command {
  return program
    .command("resume")
    .description("Finish the downloads a stopped or killed `dlqueue get --state` left unfinished.")
    .option("--state <file>", "the state file (default: $XDG_STATE_HOME/dlqueue/queue.db)")
    .option("-j, --max-parallel <n>", "downloads running at once (default: 5)", integer(1))
    .option("--retries <n>", "retries of an interrupted transfer (default: 5)", integer(0))
    .option(...CONNECTIONS_OPTION)
    .option(...NO_FSYNC_OPTION)
    .option("--json", "print JSON lines on stdout (the default when stdout is not a terminal)")
    .option("-q, --quiet", "no bars, no table, no JSON unless --json: only errors")
    .action(async (options: GetOptions, command: Command) => {
      process.exitCode = await runGet([], { ...options, state: options.state ?? true, resumeOnly: true }, command);
    });
}

function integer(min?: number): (value: string) => number {
  return (value) => {
    if (!/^-?\d+$/.test(value)) throw new InvalidArgumentError("Give a whole number.");
    const n = Number(value);
    if (min !== undefined && n < min) throw new InvalidArgumentError(`Give a whole number of at least ${min}.`);
    return n;
  };
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** One download to queue, and where it came from for messages. */
interface Planned {
  source: string;
  dest: string;
  sha256?: string;
  priority?: number;
  accessToken?: string;
  /** `list.txt:3` for input-file entries; arguments are named by their URL. */
  origin?: string;
}

/** Library errors that mean the command line or the list is wrong, not the network. */
const USAGE_ERRORS = new Set(["DLQ_ERR_INVALID_URL", "DLQ_ERR_UNSUPPORTED_SCHEME", "DLQ_ERR_INVALID_ARGUMENT"]);

async function runGet(urls: string[], options: GetOptions, command: Command): Promise<number> {
  const usage = (message: string): never => command.error(`error: ${message}`, { exitCode: 2, code: "dlqueue.usage" });
  const headers = parseHeaders(options.header ?? [], usage);
  const plan = options.resumeOnly ? [] : await planDownloads(urls, options, usage);
  checkDestinations(plan, usage);

  const tokens = tokenRulesFromEnv(process.env);
  const secrets = [options.token, ...tokens.map((rule) => rule.token)].filter((s): s is string => Boolean(s));
  // Defence in depth: the library already keeps tokens out of what it reports; this also covers everything printed.
  const hide = (text: string) => secrets.reduce((out, secret) => out.replaceAll(secret, "***"), text);
  const json = options.json === true || (!process.stdout.isTTY && !options.quiet);
  const bars = !options.quiet && process.stderr.isTTY === true;
  const say = (text: string) => printAbove(hide(text));
  const emit = (record: object) => process.stdout.write(`${hide(JSON.stringify(record))}\n`);

  const debug = debuglog("dlqueue");
  const logger: Logger = {
    debug: (message) => debug("%s", message),
    info: (message) => debug("%s", message),
    warn: options.quiet ? (message) => debug("%s", message) : (message) => say(`warning: ${message}`),
    // The queue logs each failed job as an error; the CLI reports those itself, with the reason and what to fix.
    error: (message) => debug("%s", message),
  };
  const statePath = options.state === true ? defaultStatePath() : options.state;
  let queue: DownloadQueue;
  try {
    queue = new DownloadQueue({
      maxParallelDownloads: options.maxParallel,
      retries: options.retries,
      connectionsPerFile: options.connections,
      fsync: options.fsync,
      tokens,
      logger,
      store: statePath,
    });
  } catch (err) {
    return usage(`cannot open the state file ${statePath}: ${(err as Error).message}`);
  }
  if (json) {
    for (const name of JOB_EVENTS) forwardEvent(queue, name, emit);
  }

  const startedAt = performance.now();
  /** Bytes each job had on disk from an earlier run when it started: not part of this run's speed. */
  const resumedFrom = new Map<number, number>();
  const jobs: DownloadJob[] = [];
  const total = bars ? new TotalLine(jobs, resumedFrom, startedAt) : undefined;
  const progress = bars ? new ConsoleProgress() : undefined;
  const ended = (job: DownloadJob) => {
    if (json) emit({ event: "job", job });
    if (job.status === "error") say(failureReport(job));
  };
  // Jobs restored from the state file have no callbacks of this process: follow them through events.
  const restored = new Set(
    queue
      .listJobs()
      .filter((job) => !job.inTerminalState)
      .map((job) => job.id),
  );
  if (options.resumeOnly && restored.size === 0) {
    say(`Nothing to resume in ${statePath}.`);
    await queue.stop();
    return 0;
  }
  for (const id of restored) jobs.push(queue.idToJob(id) as DownloadJob);
  const restoredJob = (id: number) => (restored.has(id) ? (queue.idToJob(id) as DownloadJob) : undefined);
  queue.on("download_started", (p) => {
    const job = restoredJob(p.id);
    if (job) resumedFrom.set(job.id, job.bytes);
  });
  queue.on("download_progress", (p) => {
    const job = restoredJob(p.id);
    if (job) progress?.update(job);
  });
  for (const name of ["download_complete", "download_error", "download_cancelled"] as const) {
    queue.on(name, (p: { id: number }) => {
      const job = restoredJob(p.id);
      if (job) ended(job);
    });
  }

  let signal: NodeJS.Signals | undefined;
  const onSignal = (received: NodeJS.Signals) => {
    // A second Ctrl-C quits at once: the partial files are already on disk, so nothing is lost.
    if (signal) process.exit(signalExitCode(received));
    signal = received;
    // join() returns once the transfers are aborted and their files closed; the exit closes the connections.
    queue.stop().catch((err: unknown) => debug("%s", `stop: ${err}`));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    // download() only queues: transfers begin on a later microtask, so an entry rejected in this synchronous loop
    // stops the queue before any byte moves.
    for (const item of plan) {
      try {
        jobs.push(
          queue.download({
            source: item.source,
            dest: item.dest,
            priority: item.priority ?? options.priority,
            accessToken: item.accessToken,
            headers,
            sha256: item.sha256,
            onStart: (job) => resumedFrom.set(job.id, job.bytes),
            onProgress: progress?.update,
            onComplete: ended,
            onError: ended,
            onCancelled: ended,
          }),
        );
      } catch (err) {
        if (!(err instanceof DlqError && USAGE_ERRORS.has(err.code))) throw err;
        await queue.stop();
        usage(item.origin ? `${item.origin}: ${err.message}` : err.message);
      }
    }
    try {
      createFolders(plan);
    } catch (err) {
      await queue.stop();
      usage(`${(err as Error).message}; choose a destination you can write to.`);
    }
    if (total) showLine(total);
    await queue.join();
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }

  const unfinished = jobs.filter((job) => !job.inTerminalState);
  if (json) for (const job of unfinished) emit({ event: "job", job });
  if (total) {
    sweepLines();
    total.finish(total.finalText(signal !== undefined));
    sweepLines();
  }
  if (!options.quiet && (!json || process.stderr.isTTY)) {
    const table = summaryTable(jobs, resumedFrom, new Date());
    if (json) process.stderr.write(hide(table));
    else process.stdout.write(hide(table));
  }
  const failed = jobs.filter((job) => job.status === "error").length;
  if (failed > 0 && !options.quiet) say(`${failed} of ${jobs.length} downloads failed.`);
  if (signal) {
    const partials = unfinished.filter((job) => job.bytes > 0).length;
    say(
      partials > 0
        ? `Interrupted: ${partials} partial file${partials === 1 ? "" : "s"} kept; run the same command again to resume.`
        : "Interrupted before any data arrived; run the same command again to start over.",
    );
    return signalExitCode(signal);
  }
  return failed > 0 ? 1 : 0;
}

function signalExitCode(signal: NodeJS.Signals): number {
  return 128 + constants.signals[signal];
}

function parseHeaders(values: string[], usage: (message: string) => never): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [index, value] of values.entries()) {
    const colon = value.indexOf(":");
    const name = value.slice(0, Math.max(colon, 0)).trim();
    // The value is not echoed: it may well be a credential.
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) {
      usage(`--header #${index + 1} is not of the form "Name: value".`);
    }
    headers[name.toLowerCase()] = value.slice(colon + 1).trim();
  }
  return headers;
}

async function planDownloads(urls: string[], options: GetOptions, usage: (message: string) => never) {
  const base = options.dest ?? ".";
  const plan: Planned[] = urls.map((source) => ({
    source,
    dest: base,
    sha256: options.sha256,
    accessToken: options.token,
  }));
  if (options.sha256 !== undefined && urls.length !== 1) {
    usage("--sha256 checks the one URL given as argument; for several, put sha256= on each line of an --input-file.");
  }
  if (options.inputFile !== undefined) {
    const name = options.inputFile === "-" ? "stdin" : options.inputFile;
    let text: string;
    try {
      text = await readInputFile(options.inputFile);
    } catch (err) {
      return usage(`cannot read the input file ${name}: ${(err as Error).message}`);
    }
    try {
      for (const entry of parseInputFile(text, name)) {
        plan.push({
          source: entry.url,
          dest: entry.dest === undefined ? base : isAbsolute(entry.dest) ? entry.dest : join(base, entry.dest),
          sha256: entry.sha256,
          priority: entry.priority,
          origin: `${name}:${entry.line}`,
        });
      }
    } catch (err) {
      if (err instanceof InputFileError) usage(err.message);
      throw err;
    }
  }
  if (plan.length === 0) usage("no URL given: pass one or more URLs, or --input-file FILE (- for stdin).");
  return plan;
}

/** Two downloads writing one file would corrupt each other's partial: refuse before anything starts. */
function checkDestinations(plan: Planned[], usage: (message: string) => never): void {
  const seen = new Map<string, string>();
  for (const item of plan) {
    const folder = namesFolder(item.dest);
    const key = folder ? `${resolve(item.dest)}${sep}\0${item.source}` : resolve(item.dest);
    const label = item.origin ?? item.source;
    const other = seen.get(key);
    if (other !== undefined) {
      usage(
        folder
          ? `${item.source} is listed twice (${other} and ${label}).`
          : `${other} and ${label} would both be written to ${resolve(item.dest)}: give each its own dest ` +
              '(a folder is one that exists or ends with "/").',
      );
    }
    seen.set(key, label);
  }
}

/** Creates each destination folder up front, so an unwritable destination is a usage error before anything starts. */
function createFolders(plan: Planned[]): void {
  for (const item of plan)
    mkdirSync(namesFolder(item.dest) ? item.dest : dirname(resolve(item.dest)), { recursive: true });
}

/** The library's rule for dest: an existing folder, or a path ending with a separator, is a folder. */
function namesFolder(dest: string): boolean {
  if (dest.endsWith("/") || dest.endsWith(sep)) return true;
  try {
    return statSync(dest).isDirectory();
  } catch {
    return false;
  }
}

const JOB_EVENTS: QueueEventName[] = [
  "download_started",
  "download_progress",
  "download_complete",
  "download_error",
  "download_cancelled",
];

function forwardEvent<E extends QueueEventName>(queue: DownloadQueue, name: E, emit: (record: object) => void): void {
  const listener = (payload: QueueEventPayloads[E]) => emit({ event: name, ...payload });
  queue.on(name as QueueEventName, listener as (payload: QueueEventPayloads[QueueEventName]) => void);
}

/** `error: HTTPError(Not Found) <url>` and the reason on the next line, without the stack trace. */
function failureReport(job: DownloadJob): string {
  const reason = (job.error ?? "").split("\n", 1)[0]?.replace(/^\w+: /, "");
  return `error: ${job.errorType} ${job.source}${reason ? `\n  ${reason}` : ""}`;
}

/** The first line of the board: every download of this run together. */
class TotalLine implements BoardLine {
  readonly #meter = new SpeedMeter();
  #final: string | undefined;

  constructor(
    readonly jobs: readonly DownloadJob[],
    readonly resumedFrom: ReadonlyMap<number, number>,
    readonly startedAt: number,
  ) {}

  render(width: number): string {
    const { name, bytes, totalBytes, fresh, sizesKnown } = this.#tally();
    this.#meter.sample(fresh);
    const speed = this.#meter.bytesPerSecond();
    const eta = speed && sizesKnown ? (totalBytes - bytes) / speed : undefined;
    return formatLine(width, {
      name,
      bytes,
      totalBytes: sizesKnown ? totalBytes : 0,
      speed,
      note: eta === undefined ? undefined : `ETA ${formatDuration(eta)}`,
    });
  }

  finalText(interrupted: boolean): string {
    const { name, bytes, totalBytes, fresh } = this.#tally();
    const seconds = (performance.now() - this.startedAt) / 1000;
    return formatLine((process.stderr.columns || 80) - 1, {
      name,
      bytes,
      totalBytes,
      speed: seconds > 0 ? fresh / seconds : undefined,
      note: interrupted ? "interrupted" : `done in ${formatDuration(seconds)}`,
    });
  }

  finish(text: string): void {
    this.#final = text;
  }

  final(): string | undefined {
    return this.#final;
  }

  /** Failed and cancelled downloads are left out, so the rest can still reach 100%; failures are reported above. */
  #tally() {
    const counted = this.jobs.filter((job) => job.status !== "error" && job.status !== "cancelled");
    const completed = counted.filter((job) => job.status === "completed").length;
    let bytes = 0;
    let totalBytes = 0;
    let fresh = 0;
    for (const job of counted) {
      bytes += job.bytes;
      totalBytes += Math.max(job.totalBytes, job.size ?? 0);
      fresh += job.bytes - (this.resumedFrom.get(job.id) ?? 0);
    }
    return {
      name: `Total ${completed}/${this.jobs.length} done`,
      bytes,
      totalBytes,
      fresh,
      sizesKnown: counted.every((job) => job.totalBytes > 0 || job.size !== undefined),
    };
  }
}

/** One row per download; an unfinished one is timed up to `endedAt`, when the run stopped. */
function summaryTable(jobs: readonly DownloadJob[], resumedFrom: ReadonlyMap<number, number>, endedAt: Date): string {
  const rows = jobs.map((job) => {
    const seconds = job.jobStarted
      ? ((job.jobEnded ?? endedAt).getTime() - job.jobStarted.getTime()) / 1000
      : undefined;
    const start = resumedFrom.get(job.id);
    const moved = start === undefined ? 0 : job.bytes - start;
    const size =
      job.status === "completed"
        ? formatBytes(job.bytes)
        : job.totalBytes > 0
          ? `${formatBytes(job.bytes)}/${formatBytes(job.totalBytes)}`
          : job.bytes > 0
            ? formatBytes(job.bytes)
            : "-";
    return [
      fileName(job),
      size,
      seconds === undefined ? "-" : formatDuration(seconds),
      seconds && moved > 0 && job.status !== "error" ? formatSpeed(moved / seconds) : "-",
      statusText(job, start),
    ];
  });
  const header = ["File", "Size", "Time", "Avg speed", "Status"];
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]?.length ?? 0)));
  // Numbers are right-aligned so sizes and speeds line up by magnitude.
  const format = (row: string[]) =>
    row
      .map((cell, column) =>
        column >= 1 && column <= 3 ? cell.padStart(widths[column] ?? 0) : cell.padEnd(widths[column] ?? 0),
      )
      .join("  ")
      .trimEnd();
  return `${[header, ...rows].map(format).join("\n")}\n`;
}

function fileName(job: DownloadJob): string {
  if (job.downloadPath) return basename(job.downloadPath);
  const last = new URL(job.source).pathname.split("/").filter(Boolean).at(-1);
  return last ? decodeURIComponentSafe(last) : job.source;
}

function decodeURIComponentSafe(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function statusText(job: DownloadJob, resumedFrom: number | undefined): string {
  switch (job.status) {
    case "completed":
      return resumedFrom ? `completed (resumed at ${formatBytes(resumedFrom)})` : "completed";
    case "error":
      return `error ${job.errorType}`;
    case "cancelled":
      return "cancelled";
    default:
      return job.bytes > 0 ? "interrupted" : "not started";
  }
}
