/** What `dlqueue get` and `resume` run: URLs downloaded with live bars, resumable on Ctrl-C, JSON lines for scripts. */
import { existsSync, mkdirSync, statSync } from "node:fs";
import { constants } from "node:os";
import { dirname, isAbsolute, join, resolve, sep } from "node:path";
import { debuglog } from "node:util";
import type { Command } from "commander";
import { DlqError } from "../errors.js";
import type { DownloadJob, MultiFileDownloadJob } from "../job.js";
import type { Logger } from "../logger.js";
import { DownloadQueue } from "../queue.js";
import { civitaiEndpoint, civitaiToken, isCivitaiSource, parseCivitaiSource } from "../sources/civitai.js";
import { hfToken, isHfSource, parseHfSource } from "../sources/hf.js";
import type { QueueEventName, QueueEventPayloads } from "../wire.js";
import { readCaOption } from "./ca-file.js";
import { defaultStatePath, tokenRulesFromEnv } from "./env.js";
import type { GetOptions } from "./get-command.js";
import { InputFileError, parseInputFile, readInputFile } from "./input-file.js";
import { whenOutputCloses } from "./output.js";
import { PlainProgress } from "./plain.js";

/** One download to queue, and where it came from for messages. */
interface Planned {
  source: string;
  /** Absent only for an hf:// model going to the Hugging Face cache. */
  dest?: string;
  sha256?: string;
  priority?: number;
  accessToken?: string;
  maxBytesPerSecond?: number;
  /** `list.txt:3` for input-file entries; arguments are named by their URL. */
  origin?: string;
  /** A model source, queued through modelDownload(); its dest is a folder, or absent for the HF cache. */
  model?: ModelKind;
  include?: string[];
  exclude?: string[];
}

type ModelKind = "hf" | "civitai";

/** Library errors that mean the command line or the list is wrong, not the network. */
const USAGE_ERRORS = new Set(["DLQ_ERR_INVALID_URL", "DLQ_ERR_UNSUPPORTED_SCHEME", "DLQ_ERR_INVALID_ARGUMENT"]);

/** Under --quiet, retries stay hidden until this many have happened, or until they have gone on this long. */
const QUIET_RETRY_WARNINGS = 3;
const QUIET_RETRY_MS = 10_000;

export async function runGet(urls: string[], options: GetOptions, command: Command): Promise<number> {
  const usage = (message: string): never => command.error(`error: ${message}`, { exitCode: 2, code: "dlqueue.usage" });
  const headers = parseHeaders(options.header ?? [], usage);
  const ca = await readCaOption(options.caCertificate, usage);
  const statePath = stateFile(options, usage);
  const plan = options.resumeOnly ? [] : await planDownloads(urls, options, usage);
  checkDestinations(plan, usage);

  const tokens = tokenRulesFromEnv(process.env);
  const secrets = [
    options.token,
    ...tokens.map((rule) => rule.token),
    ...proxySecrets(options.proxy, usage),
    ...modelTokens(plan),
  ].filter((s): s is string => Boolean(s));
  // Defence in depth: the library already keeps tokens out of what it reports; this also covers everything printed.
  const hide = (text: string) => secrets.reduce((out, secret) => out.replaceAll(secret, "***"), text);
  const quiet = options.quiet === true;
  const json = options.json === true;
  const stdoutTty = process.stdout.isTTY === true;
  // JSON on a terminal is read by a person copying it or by `script`: bars drawn among it would garble both.
  const bars = !quiet && process.stderr.isTTY === true && !(json && stdoutTty);
  const plainLines = !quiet && !json && !stdoutTty;
  // A reader that went away (`| head`) takes stdout with it: nothing more is written there.
  let stdoutGone = false;
  const out = (text: string) => {
    if (!stdoutGone) process.stdout.write(hide(text));
  };
  // The board and the summary table only for a person watching: a quiet run never loads them (see get-summary.ts).
  const summary = bars || plainLines ? await import("./get-summary.js") : undefined;
  const say = (text: string) => {
    const line = hide(text);
    if (summary) summary.printAbove(line);
    else process.stderr.write(line.endsWith("\n") ? line : `${line}\n`);
  };
  const emit = (record: object) => out(`${JSON.stringify(record)}\n`);

  const debug = debuglog("dlqueue");
  const quietRetries = { count: 0, since: 0, told: false };
  const warnQuietly = (message: string) => {
    debug("%s", message);
    if (!/\bretry/i.test(message)) return;
    const now = performance.now();
    if (quietRetries.count++ === 0) quietRetries.since = now;
    if (quietRetries.told) return;
    if (quietRetries.count >= QUIET_RETRY_WARNINGS || now - quietRetries.since >= QUIET_RETRY_MS) {
      quietRetries.told = true;
      say(`warning: ${message}\n  (still retrying; --quiet hides further retries, NODE_DEBUG=dlqueue shows them)`);
    }
  };
  const logger: Logger = {
    debug: (message) => debug("%s", message),
    info: (message) => debug("%s", message),
    warn: quiet ? warnQuietly : (message) => say(`warning: ${message}`),
    // The queue logs each failed job as an error; the CLI reports those itself, with the reason and what to fix.
    error: (message) => debug("%s", message),
  };
  let queue: DownloadQueue;
  try {
    queue = new DownloadQueue({
      maxParallelDownloads: options.maxParallel,
      retries: options.retries,
      retryDelayMs: options.retryDelay === undefined ? undefined : options.retryDelay * 1000,
      connectTimeoutMs: options.timeout === undefined ? undefined : options.timeout * 1000,
      headersTimeoutMs: options.timeout === undefined ? undefined : options.timeout * 1000,
      readTimeoutMs: options.timeout === undefined ? undefined : options.timeout * 1000,
      maxBytesPerSecond: options.limitRate,
      proxy: options.proxy,
      ca,
      overwrite: options.overwrite,
      connectionsPerFile: options.connections,
      fsync: options.fsync,
      tokens,
      logger,
      store: statePath,
    });
  } catch (err) {
    if (statePath === undefined) throw err;
    return usage(`cannot open the state file ${statePath}: ${(err as Error).message}`);
  }
  if (json) {
    for (const name of JOB_EVENTS) forwardEvent(queue, name, emit);
  }

  const startedAt = performance.now();
  const models: ModelRun[] = plan.filter((item) => item.model).map((item) => ({ item }));
  /** Model jobs the state file holds unfinished: `resume` prints where they are once finished, as `get` does. */
  const restoredModels = options.resumeOnly
    ? queue.listMultifileJobs().filter((job) => job.source !== undefined && !job.inTerminalState)
    : [];
  /** Bytes each job had on disk from an earlier run when it started: not part of this run's speed. */
  const resumedFrom = new Map<number, number>();
  const jobs: DownloadJob[] = [];
  // One model alone: its total line is the model's, named by its source.
  const title = plan.length === 1 && plan[0]?.model ? plan[0].source : "Total";
  const total = bars && summary ? new summary.TotalLine(jobs, resumedFrom, startedAt, title) : undefined;
  /** A model's parts are named by their path in the repo (their file may be a blob named by its hash). */
  const names = new Map<number, string>();
  const progress = bars && summary ? new summary.ConsoleProgress(names) : undefined;
  const plain = plainLines ? new PlainProgress((line) => out(`${line}\n`), names) : undefined;
  const started = (job: DownloadJob) => {
    resumedFrom.set(job.id, job.bytes);
    // The bar starts with the job, so its speed counts the bytes of this run only, from the first one.
    progress?.update(job);
    plain?.start(job);
  };
  const moved = (job: DownloadJob) => {
    progress?.update(job);
    plain?.progress(job);
  };
  const ended = (job: DownloadJob) => {
    if (json) emit({ event: "job", job });
    plain?.end(job);
    if (job.status === "error") say(failureReport(job));
  };
  // Jobs restored from the state file, and the parts of models, have no callbacks of this process: followed through
  // events.
  const followed = new Set(
    queue
      .listJobs()
      .filter((job) => !job.inTerminalState)
      .map((job) => job.id),
  );
  if (options.resumeOnly && followed.size === 0) {
    say(`Nothing to resume in ${statePath}.`);
    await queue.stop();
    return 0;
  }
  for (const id of followed) jobs.push(queue.idToJob(id) as DownloadJob);
  const followedJob = (id: number) => (followed.has(id) ? (queue.idToJob(id) as DownloadJob) : undefined);
  /** A model's part, queued by the library: whatever it did before we follow it is caught up here. */
  const follow = (part: DownloadJob, name: string | undefined) => {
    followed.add(part.id);
    jobs.push(part);
    if (name) names.set(part.id, name);
    if (part.status === "running") started(part);
    else if (part.inTerminalState) ended(part);
  };
  queue.on("download_started", (p) => {
    const job = followedJob(p.id);
    if (job) started(job);
  });
  queue.on("download_progress", (p) => {
    const job = followedJob(p.id);
    if (job) moved(job);
  });
  for (const name of ["download_complete", "download_error", "download_cancelled"] as const) {
    queue.on(name, (p: { id: number }) => {
      const job = followedJob(p.id);
      if (job) ended(job);
    });
  }

  let signal: NodeJS.Signals | undefined;
  const onSignal = (received: NodeJS.Signals) => {
    if (received === "SIGPIPE") {
      stdoutGone = true;
      // A closed pipe reports itself at each write made while the queue stops: that is no second Ctrl-C.
      if (signal) return;
    } else if (signal) {
      // A second Ctrl-C quits at once: the partial files are already on disk, so nothing is lost.
      process.exit(signalExitCode(received));
    }
    signal = received;
    // join() returns once the transfers are aborted and their files closed; the exit closes the connections.
    queue.stop().catch((err: unknown) => debug("%s", `stop: ${err}`));
  };
  // Not process.on("SIGPIPE"): removing that listener would restore the signal's default action, which kills.
  whenOutputCloses(() => onSignal("SIGPIPE"));
  const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM"];
  for (const name of signals) process.on(name, onSignal);
  try {
    // download() only queues: transfers begin on a later microtask, so an entry rejected in this synchronous loop
    // stops the queue before any byte moves.
    for (const item of plan) {
      if (item.model) continue;
      try {
        jobs.push(
          queue.download({
            source: item.source,
            dest: item.dest ?? ".",
            priority: item.priority ?? options.priority,
            accessToken: item.accessToken,
            headers,
            sha256: item.sha256,
            maxBytesPerSecond: item.maxBytesPerSecond,
            onStart: started,
            onProgress: moved,
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
    if (total) summary?.showLine(total);
    // Models resolve concurrently, each queuing its parts as soon as its file list is known; until the last one
    // has, the queue may run dry without the run being over.
    await Promise.all(
      models.map(async (model) => {
        try {
          const job = await queue.modelDownload({
            source: model.item.source,
            dest: model.item.dest,
            include: model.item.include,
            exclude: model.item.exclude,
            allFiles: options.allFiles,
            priority: model.item.priority ?? options.priority,
            maxBytesPerSecond: model.item.maxBytesPerSecond,
            accessToken: model.item.accessToken,
          });
          model.job = job;
          for (const part of job.downloadParts) follow(part, model.item.model === "hf" ? repoPath(part) : undefined);
        } catch (err) {
          // Ctrl-C while resolving: the model is not started, which the interrupted summary says.
          if (signal) return;
          model.error = err as Error;
          say(modelFailureReport(model.item, model.error));
        }
      }),
    );
    await queue.join();
  } finally {
    for (const name of signals) process.off(name, onSignal);
    whenOutputCloses(undefined);
  }

  const unfinished = jobs.filter((job) => !job.inTerminalState);
  if (json) for (const job of unfinished) emit({ event: "job", job });
  // The model's own job line carries its commit and snapshot_path, for scripts.
  if (json)
    for (const job of [...restoredModels, ...models.map((model) => model.job)]) if (job) emit({ event: "job", job });
  if (total && summary) {
    summary.sweepLines();
    total.finish(total.finalText(signal !== undefined));
    summary.sweepLines();
  }
  if (signal === "SIGPIPE") return signalExitCode(signal);
  if (summary) {
    const table = summary.summaryTable(
      jobs,
      resumedFrom,
      names,
      new Date(),
      stdoutTty ? process.stdout.columns : undefined,
    );
    if (json) process.stderr.write(hide(table));
    else out(table);
  }
  const failed =
    jobs.filter((job) => job.status === "error").length + models.filter((model) => model.error !== undefined).length;
  const count = jobs.length + models.filter((model) => model.job === undefined).length;
  if (failed > 0 && !quiet) say(`${failed} of ${count} downloads failed.`);
  // Last on stdout, one line per model that completed, so `$(dlqueue get hf://… -q)` is the snapshot's path.
  if (!json && signal === undefined) {
    for (const job of [...restoredModels, ...models.map((model) => model.job)]) {
      if (job?.status === "completed") out(`${modelPath(job)}\n`);
    }
  }
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

interface ModelRun {
  item: Planned;
  /** Once resolved and queued. */
  job?: MultiFileDownloadJob;
  /** Resolving failed (unknown repo, gated, nothing matched): nothing was queued or written. */
  error?: Error;
}

/** Where a finished model is: its snapshot folder in the HF cache, else the folder its files went into. */
function modelPath(job: MultiFileDownloadJob): string {
  return resolve(job.snapshotPath ?? job.downloadPath);
}

/** The part's path in its repo, from its resolve URL (`…/resolve/<commit>/<path>`). */
function repoPath(part: DownloadJob): string | undefined {
  const path = new URL(part.source).pathname;
  const at = path.indexOf("/resolve/");
  if (at < 0) return undefined;
  const segments = path
    .slice(at + "/resolve/".length)
    .split("/")
    .slice(1);
  if (segments.length === 0) return undefined;
  try {
    return segments.map(decodeURIComponent).join("/");
  } catch {
    return segments.join("/");
  }
}

/** `error: RepositoryNotFoundError hf://org/repo` and the library's message, which says what to do. */
function modelFailureReport(item: Planned, error: Error): string {
  const type = error instanceof DlqError ? error.errorType : error.name;
  return `error: ${type} ${item.source}\n  ${error.message}`;
}

/** Tokens the library finds for model sources by itself: kept out of everything printed too. */
function modelTokens(plan: readonly Planned[]): string[] {
  const tokens: (string | undefined)[] = [];
  if (plan.some((item) => item.model === "hf")) {
    try {
      tokens.push(hfToken());
    } catch {
      // An unreadable token file: the library refuses the model with a message saying so, and there is no token.
    }
  }
  if (plan.some((item) => item.model === "civitai")) tokens.push(civitaiToken());
  return tokens.filter((token): token is string => Boolean(token));
}

/** The state file of this run, if any: `--state FILE` never takes a URL, and `resume` never creates one. */
function stateFile(options: GetOptions, usage: (message: string) => never): string | undefined {
  if (options.state !== undefined && options.defaultState) {
    usage("give either --state FILE or --default-state, not both.");
  }
  if (options.state !== undefined && /^[a-z][a-z0-9+.-]*:\/\//i.test(options.state)) {
    usage(
      `--state takes a file name, and got the URL ${options.state}: write --state FILE before the URLs, or ` +
        "--default-state for the default file.",
    );
  }
  const path = options.defaultState ? defaultStatePath() : options.state;
  if (options.resumeOnly && path !== undefined && !existsSync(path)) {
    usage(`there is no state file ${path}: give the file \`dlqueue get --state FILE\` wrote; nothing was created.`);
  }
  return path;
}

/** The user name and password of a proxy URL are credentials: kept out of every message. */
function proxySecrets(proxy: string | undefined, usage: (message: string) => never): string[] {
  if (proxy === undefined) return [];
  let url: URL;
  try {
    url = new URL(proxy);
  } catch {
    return usage("--proxy takes a URL such as http://proxy.example:3128.");
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    usage(`--proxy takes an http:// or https:// URL, not ${url.protocol}.`);
  }
  let password = url.password;
  try {
    password = decodeURIComponent(url.password);
  } catch {}
  return [url.password, password].filter((secret) => secret.length > 0);
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
  // The library takes a dest ending in a separator as a folder, whether or not it exists yet.
  const folder = base.endsWith("/") || base.endsWith(sep) ? base : `${base}${sep}`;
  if (options.output !== undefined) {
    if (urls.length !== 1)
      usage(`-o names the file of one URL, and ${urls.length} were given; use -d DIR for several.`);
  }
  const argumentDest =
    options.output === undefined ? folder : isAbsolute(options.output) ? options.output : join(base, options.output);
  // The library would take an existing folder as one, and name the file itself: -o promises an exact path.
  if (options.output !== undefined && namesFolder(argumentDest)) {
    usage(`-o takes a file name, and ${argumentDest} is a folder: use -d DIR to write into a folder.`);
  }
  const modelDest = (model: ModelKind, dest: string | undefined): string | undefined =>
    dest ?? options.dest ?? (model === "civitai" ? "." : undefined);
  const plan: Planned[] = urls.map((source) => {
    const model = modelKind(source, usage);
    if (!model) return { source, dest: argumentDest, sha256: options.sha256, accessToken: options.token };
    if (options.output !== undefined) usage(`-o names one file, and ${source} is a model: use -d DIR for its folder.`);
    if (options.sha256 !== undefined)
      usage(`--sha256 is for a URL; ${source} is checked against the hub's own hashes.`);
    return {
      source,
      dest: modelDest(model, undefined),
      model,
      include: options.include,
      exclude: options.exclude,
      // To the hub's (or Civitai's) endpoint only, as HF_TOKEN: the library never sends it to the CDN.
      accessToken: options.token,
    };
  });
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
        const origin = `${name}:${entry.line}`;
        const model = modelKind(entry.url, (message) => usage(`${origin}: ${message}`));
        if (model) {
          if (entry.sha256 !== undefined)
            usage(`${origin}: sha256= is for a URL; a model is checked by the hub's hashes.`);
          const dest =
            entry.dest === undefined ? undefined : isAbsolute(entry.dest) ? entry.dest : join(base, entry.dest);
          plan.push({
            source: entry.url,
            dest: modelDest(model, dest),
            model,
            priority: entry.priority,
            maxBytesPerSecond: entry.maxBytesPerSecond,
            include: entry.include ?? options.include,
            exclude: entry.exclude ?? options.exclude,
            origin,
          });
          continue;
        }
        if (entry.include || entry.exclude) usage(`${origin}: include= and exclude= are for hf:// sources.`);
        plan.push({
          source: entry.url,
          dest: entry.dest === undefined ? folder : isAbsolute(entry.dest) ? entry.dest : join(base, entry.dest),
          sha256: entry.sha256,
          priority: entry.priority,
          maxBytesPerSecond: entry.maxBytesPerSecond,
          origin,
        });
      }
    } catch (err) {
      if (err instanceof InputFileError) usage(err.message);
      throw err;
    }
  }
  if (plan.length === 0) usage("no URL given: pass one or more URLs, or --input-file FILE (- for stdin).");
  // Flags that would change nothing are refused: whoever gave them expected them to pick files.
  if ((options.include || options.exclude) && !plan.some((item) => item.model === "hf")) {
    usage("--include and --exclude pick the files of hf:// sources, and none was given.");
  }
  if (options.allFiles && !plan.some((item) => item.model === "civitai")) {
    usage("--all-files is for Civitai sources, and none was given.");
  }
  return plan;
}

/**
 * Which model source `source` is, if any. Its syntax is checked here, so a mistyped `hf://` is a usage error (exit 2)
 * before anything starts rather than a failed download.
 */
function modelKind(source: string, usage: (message: string) => never): ModelKind | undefined {
  try {
    if (isHfSource(source)) {
      parseHfSource(source);
      return "hf";
    }
    const endpoint = civitaiEndpoint();
    if (isCivitaiSource(source, endpoint)) {
      parseCivitaiSource(source, endpoint);
      return "civitai";
    }
  } catch (err) {
    if (err instanceof DlqError) usage(err.message);
    throw err;
  }
  return undefined;
}

/** Two downloads writing one file would corrupt each other's partial: refuse before anything starts. */
function checkDestinations(plan: Planned[], usage: (message: string) => never): void {
  const seen = new Map<string, string>();
  for (const item of plan) {
    const folder = item.model !== undefined || namesFolder(item.dest ?? "");
    const key = folder ? `${resolve(item.dest ?? "\0cache")}${sep}\0${item.source}` : resolve(item.dest ?? "");
    const label = item.origin ?? item.source;
    const other = seen.get(key);
    if (other !== undefined) {
      usage(
        folder
          ? `${item.source} is listed twice (${other} and ${label}).`
          : `${other} and ${label} would both be written to ${resolve(item.dest ?? "")}: give each its own dest ` +
              '(a folder is one that exists or ends with "/").',
      );
    }
    seen.set(key, label);
  }
}

/** Creates each destination folder up front, so an unwritable destination is a usage error before anything starts. */
function createFolders(plan: Planned[]): void {
  // A model's folder is left to the library, made only once the model resolves: an unknown repo writes nothing.
  // A thousand URLs into one folder make it once.
  const made = new Set<string>();
  for (const item of plan) {
    if (item.model || item.dest === undefined || made.has(item.dest)) continue;
    made.add(item.dest);
    mkdirSync(namesFolder(item.dest) ? item.dest : dirname(resolve(item.dest)), { recursive: true });
  }
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
