import { EventEmitter } from "node:events";
import { stat } from "node:fs/promises";
import { join, resolve, sep } from "node:path";
import { type Dispatcher, EnvHttpProxyAgent, ProxyAgent } from "undici";
import {
  DlqError,
  InvalidArgumentError,
  InvalidUrlError,
  QueueStoppedError,
  TimeoutError,
  UnknownJobIdError,
  UnsupportedSchemeError,
} from "./errors.js";
import { checkRelativePath } from "./files/names.js";
import { discardPartial, partialsIn } from "./files/partial.js";
import { SpaceLedger } from "./files/space.js";
import { PriorityHeap } from "./heap.js";
import { DownloadJob, DownloadJobStatus, MultiFileDownloadJob } from "./job.js";
import { defaultLogger, type Logger, redact } from "./logger.js";
import { SqliteJobStore } from "./store/sqlite.js";
import { type JobStore, MemoryJobStore, type StoredJob } from "./store/store.js";
import { CREDENTIAL_HEADERS, type TransferSettings, transfer } from "./transfer/http.js";
import { pacer, type RateLimiter, rateLimiter } from "./transfer/rate.js";
import { eventPayload, type QueueEventName, type QueueEventPayloads } from "./wire.js";

const VERSION = "0.1.0";

export interface TokenRule {
  /** A RegExp, or the source of one (InvokeAI's `url_regex`), tested against the job's source URL. */
  url: string | RegExp;
  token: string;
}

export interface EventBus {
  emit(event: string, payload: object): unknown;
}

export interface DownloadQueueOptions {
  /** Transfers running at once (default 5). */
  maxParallelDownloads?: number;
  /** An application-wide bus that receives every event too (InvokeAI's `event_bus`). */
  eventBus?: EventBus;
  /** Per-host tokens (InvokeAI's `remote_api_tokens`): the first rule matching a source gives its token. */
  tokens?: TokenRule[];
  /** Retries of transient failures per job, with exponential backoff (default 5). */
  retries?: number;
  /** First backoff delay; it doubles per failure up to `maxRetryDelayMs` (defaults 1000 and 60000). */
  retryDelayMs?: number;
  maxRetryDelayMs?: number;
  /** A body that sends nothing for this long is a stall and is retried (default 60000). */
  readTimeoutMs?: number;
  /** Waiting for response headers longer than this is retried (default 60000). */
  headersTimeoutMs?: number;
  /** TCP/TLS connect timeout of the default dispatcher (default 30000). */
  connectTimeoutMs?: number;
  /** Your own undici dispatcher (proxy, custom agent); InvokeAI's `requests_session`. */
  dispatcher?: Dispatcher;
  /**
   * Parallel range requests per file of 8 MiB or more, when the server supports ranges (aria2's `-x`; default 1).
   * Counted per job: maxParallelDownloads still limits jobs, not connections.
   */
  connectionsPerFile?: number;
  /**
   * Flush files of 8 MiB or more to the disk before they are renamed into place, so a power cut or an OS crash
   * cannot leave a file with holes at its final path (default true). Off, a download finishes as soon as the
   * kernel has its bytes, as with curl and aria2; a killed process loses nothing either way.
   */
  fsync?: boolean;
  /** How often, at most, `onProgress` and `download_progress` fire per job (default 100 ms). */
  progressIntervalMs?: number;
  logger?: Logger;
  userAgent?: string;
  /**
   * Where jobs are kept: a path to a SQLite file (created if missing) makes the queue durable: unfinished jobs
   * come back and resume when a queue is created on the same file. Default: in memory.
   */
  store?: string | JobStore;
  /** Refuse a redirect by throwing (used by the REST service against SSRF). */
  checkRedirect?: (url: URL) => void | Promise<void>;
  /**
   * Bytes per second for all transfers of this queue together (default: unlimited). A job's own
   * `maxBytesPerSecond` applies too: the lower wins.
   */
  maxBytesPerSecond?: number;
  /**
   * A proxy URL for every request (`http://user:pass@host:port`). Without it and without `dispatcher`, the proxy
   * comes from HTTP_PROXY / HTTPS_PROXY / NO_PROXY (and their lowercase forms).
   */
  proxy?: string;
  /**
   * Fetch a file again even when the final path already holds it complete (default false: a finished file whose
   * sha256, or size and validators, still match is reported completed without transferring its body).
   */
  overwrite?: boolean;
}

export interface DownloadCallbacks<J> {
  onStart?: (job: J) => unknown;
  onProgress?: (job: J) => unknown;
  onComplete?: (job: J) => unknown;
  onCancelled?: (job: J) => unknown;
  onError?: (job: J, error: Error) => unknown;
}

export interface DownloadRequest extends DownloadCallbacks<DownloadJob> {
  source: string | URL;
  /** An existing folder (the name comes from the server), or the file to create. */
  dest: string;
  /** Lower runs first (default 10). */
  priority?: number;
  accessToken?: string;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** Expected sha256 (hex); a mismatch fails the job and discards the file. */
  sha256?: string;
  /** Expected size in bytes; a response that is larger is stopped at once. */
  size?: number;
  /** This job's own rate limit in bytes per second; the queue's applies too (the lower wins). */
  maxBytesPerSecond?: number;
  /** Fetch again even when the final path already holds the complete file (default: the queue's `overwrite`). */
  overwrite?: boolean;
}

export interface RemoteFile {
  url: string | URL;
  /** Relative to the job's dest; must not leave it. */
  path: string;
  sha256?: string;
  size?: number;
}

export interface MultiFileDownloadRequest extends DownloadCallbacks<MultiFileDownloadJob> {
  parts: RemoteFile[];
  dest: string;
  priority?: number;
  accessToken?: string;
  headers?: Record<string, string>;
  /** The job's rate limit in bytes per second, shared by its parts; the queue's applies too (the lower wins). */
  maxBytesPerSecond?: number;
  /** Fetch every part again even when its file is already complete (default: the queue's `overwrite`). */
  overwrite?: boolean;
}

export type QueueEvents = { [E in QueueEventName]: [payload: QueueEventPayloads[E]] };

/** Why a running transfer was aborted; decides the state it lands in. */
class Interruption {
  constructor(readonly to: "cancelled" | "paused" | "waiting") {}
}

interface Settled<J> {
  promise: Promise<J>;
  resolve: (job: J) => void;
}

function settled<J>(): Settled<J> {
  let resolveFn: (job: J) => void = () => {};
  const promise = new Promise<J>((r) => {
    resolveFn = r;
  });
  return { promise, resolve: resolveFn };
}

/** Shared by every job that has no follower yet (frozen: attaching replaces it, never pushes to it). */
const NO_FOLLOWERS = Object.freeze([]) as unknown as JobRuntime[];
const NO_CALLBACKS: { readonly [K in keyof DownloadCallbacks<unknown>]?: undefined } = Object.freeze({});

/**
 * What the queue keeps about one job besides the job itself, for as long as the job is listed; 100,000 may wait at
 * once, so it holds only what a waiting job needs. A class, so every runtime shares one hidden class (an object
 * literal built with a spread got a hidden class of its own per job, about 1 KB each). What only a running job
 * needs (its AbortController) is created by #run, a waitForJob() promise by the first waitForJob().
 */
class JobRuntime {
  /** Later jobs for the same URL and the same file: they share this job's transfer. */
  followers: JobRuntime[] = NO_FOLLOWERS;
  leader: JobRuntime | undefined = undefined;
  controller: AbortController | undefined = undefined;
  /** Settles waitForJob(); made by the first call while the job is unfinished. */
  done: Settled<DownloadJob> | undefined = undefined;
  started = false;
  lastProgressAt = 0;
  lastProgressBytes = -1;

  constructor(
    readonly job: DownloadJob,
    readonly callbacks: DownloadCallbacks<DownloadJob>,
    readonly accessToken: string | undefined,
    readonly headers: Record<string, string> | undefined,
    /** dest ended with a path separator: a folder to create, even though it does not exist yet. */
    readonly destNamesFolder: boolean,
    /** Multi-file parts always write to their exact path. */
    readonly exactPath: boolean,
    readonly parent: MultiRuntime | undefined,
    /** This job's own rate limit (a multi-file part shares its parent's). */
    readonly limiter: RateLimiter | undefined,
    /** Fetch even when the final file is already complete; undefined: the queue's `overwrite`. */
    readonly overwrite: boolean | undefined,
  ) {}

  /** For the heap. */
  get priority(): number {
    return this.job.priority;
  }
}

interface MultiRuntime {
  readonly job: MultiFileDownloadJob;
  readonly callbacks: DownloadCallbacks<MultiFileDownloadJob>;
  readonly parts: JobRuntime[];
  readonly done: Settled<MultiFileDownloadJob>;
  lastProgressAt: number;
  lastProgressBytes: number;
  readonly options: JobOptions;
  /** The job's rate limit, shared by its parts. */
  readonly limiter: RateLimiter | undefined;
}

/** What a job asked for besides where and what: kept in the store, so a restored job behaves the same. */
interface JobOptions {
  maxBytesPerSecond?: number;
  overwrite?: boolean;
}

/**
 * A parallel download queue with priorities, callbacks, events, cancellation, multi-file jobs and resume: the
 * TypeScript form of InvokeAI's DownloadQueueService. Every change of a job's state happens in this class.
 */
export class DownloadQueue extends EventEmitter<QueueEvents> {
  readonly #maxParallel: number;
  readonly #eventBus: EventBus | undefined;
  readonly #tokens: { pattern: RegExp; token: string }[];
  readonly #settings: TransferSettings;
  readonly #ownDispatcher: Dispatcher | undefined;
  /** The queue's own rate limit, shared by all its transfers. */
  readonly #limiter: RateLimiter | undefined;
  readonly #overwrite: boolean;
  /** Partials found in a destination folder (by source), read once per folder: see #partialFor. */
  readonly #partialsByFolder = new Map<string, Promise<Map<string, string>>>();
  readonly #progressIntervalMs: number;
  readonly #logger: Logger;
  readonly #jobs = new Map<number, JobRuntime>();
  readonly #multiJobs = new Map<number, MultiRuntime>();
  readonly #heap = new PriorityHeap<JobRuntime>();
  /** Waiting or running: what join() waits for. */
  readonly #active = new Set<JobRuntime>();
  /**
   * The job that transfers each (source, dest) right now, so a duplicate attaches instead of fetching again. Keyed
   * by source, then by dest only when one source goes to several places: no composite key string per job.
   */
  readonly #leaders = new Map<string, JobRuntime | Map<string, JobRuntime>>();
  /**
   * Destinations seen to be folders: a thousand jobs into one folder need one stat, not one each. A folder removed
   * later is created again by the next job into it, as one whose name ends in "/" would be.
   */
  readonly #knownFolders = new Set<string>();
  readonly #running = new Map<JobRuntime, Promise<void>>();
  #idleWaiters: (() => void)[] = [];
  readonly #store: JobStore;
  readonly #ownStore: boolean;
  #pumpScheduled = false;
  #stopped = false;
  /** The last callbacks a job was given: jobs submitted with the same functions share one object. */
  #lastCallbacks: DownloadCallbacks<DownloadJob> = NO_CALLBACKS;
  /** The last dest resolved, so jobs queued into one folder share one string. */
  #lastDest = { given: "", cwd: "", resolved: "" };

  constructor(options: DownloadQueueOptions = {}) {
    super();
    this.#maxParallel = positiveInteger(options.maxParallelDownloads ?? 5, "maxParallelDownloads");
    this.#eventBus = options.eventBus;
    this.#tokens = (options.tokens ?? []).map(({ url, token }) => ({
      pattern: typeof url === "string" ? new RegExp(url) : url,
      token,
    }));
    this.#logger = options.logger ?? defaultLogger;
    this.#progressIntervalMs = options.progressIntervalMs ?? 100;
    this.#limiter = rateLimiter(options.maxBytesPerSecond, "maxBytesPerSecond");
    this.#ownDispatcher = options.dispatcher ? undefined : ownDispatcher(options);
    this.#overwrite = options.overwrite ?? false;
    this.#settings = {
      dispatcher: options.dispatcher ?? (this.#ownDispatcher as Dispatcher),
      headersTimeoutMs: options.headersTimeoutMs ?? 60_000,
      readTimeoutMs: options.readTimeoutMs ?? 60_000,
      retries: nonNegativeInteger(options.retries ?? 5, "retries"),
      retryDelayMs: options.retryDelayMs ?? 1000,
      maxRetryDelayMs: options.maxRetryDelayMs ?? 60_000,
      maxRedirects: 10,
      connectionsPerFile: positiveInteger(options.connectionsPerFile ?? 1, "connectionsPerFile"),
      fsync: options.fsync ?? true,
      userAgent: options.userAgent ?? `dlqueue/${VERSION}`,
      logger: this.#logger,
      space: new SpaceLedger(),
      checkRedirect: options.checkRedirect,
    };
    this.#ownStore = typeof options.store === "string";
    this.#store =
      typeof options.store === "string" ? new SqliteJobStore(options.store) : (options.store ?? new MemoryJobStore());
    this.#restore(this.#store.load());
  }

  /** Queues one download and returns its job at once; it starts as soon as a slot is free. */
  download(request: DownloadRequest): DownloadJob {
    return this.#submit(request, { exactPath: false, parent: undefined }).job;
  }

  /** Queues several files under one root; one part failing cancels the others and fails the whole job. */
  multifileDownload(request: MultiFileDownloadRequest): MultiFileDownloadJob {
    this.#assertOpen();
    if (!Array.isArray(request.parts) || request.parts.length === 0) {
      throw new InvalidArgumentError("multifileDownload needs at least one part ({ url, path }).");
    }
    const dest = checkDest(request.dest);
    const parts = request.parts.map((part) => ({
      source: checkSource(part.url),
      path: checkRelativePath(part.path),
      ...checkExpectations(part),
    }));
    checkPriority(request.priority);
    const limiter = rateLimiter(request.maxBytesPerSecond, "maxBytesPerSecond");
    const id = this.#store.nextId();
    const partRuntimes: JobRuntime[] = [];
    const roots = new Set(parts.map((part) => part.path.split("/")[0]));
    const root =
      roots.size === 1 && parts.every((part) => part.path.includes("/")) ? join(dest, [...roots][0] as string) : dest;
    const multi: MultiRuntime = {
      job: new MultiFileDownloadJob(id, dest, root, []),
      callbacks: pickCallbacks(request),
      parts: partRuntimes,
      done: settled(),
      lastProgressAt: 0,
      lastProgressBytes: -1,
      options: jobOptions(request),
      limiter,
    };
    for (const part of parts) {
      const runtime = this.#submit(
        {
          source: part.source,
          dest: join(dest, part.path),
          priority: request.priority,
          accessToken: request.accessToken,
          headers: request.headers,
          sha256: part.sha256,
          size: part.size,
          overwrite: request.overwrite,
        },
        { exactPath: true, parent: multi },
      );
      partRuntimes.push(runtime);
    }
    (multi.job.downloadParts as DownloadJob[]).push(...partRuntimes.map((runtime) => runtime.job));
    this.#multiJobs.set(id, multi);
    this.#persistMulti(multi);
    return multi.job;
  }

  /** Every DownloadJob this queue knows, multi-file parts included, until pruned. */
  listJobs(): DownloadJob[] {
    return [...this.#jobs.values()].map((runtime) => runtime.job);
  }

  listMultifileJobs(): MultiFileDownloadJob[] {
    return [...this.#multiJobs.values()].map((runtime) => runtime.job);
  }

  idToJob(id: number): DownloadJob | MultiFileDownloadJob {
    const job = this.#jobs.get(id)?.job ?? this.#multiJobs.get(id)?.job;
    if (!job) throw new UnknownJobIdError(id);
    return job;
  }

  /** Forgets finished jobs (completed, cancelled, errored). */
  pruneJobs(): void {
    const pruned: number[] = [];
    for (const [id, multi] of this.#multiJobs) {
      if (multi.job.inTerminalState) {
        this.#multiJobs.delete(id);
        pruned.push(id);
      }
    }
    for (const [id, runtime] of this.#jobs) {
      if (runtime.job.inTerminalState && !(runtime.parent && this.#multiJobs.has(runtime.parent.job.id))) {
        this.#jobs.delete(id);
        pruned.push(id);
      }
    }
    this.#store.delete(pruned);
  }

  /** Cancels a waiting or running job: its partial file is deleted and nothing appears at the final path. */
  cancelJob(job: DownloadJob | MultiFileDownloadJob | number): void {
    const id = typeof job === "number" ? job : job.id;
    const multi = this.#multiJobs.get(id);
    if (multi) {
      if (multi.job.inTerminalState) return;
      this.#settleMulti(multi, DownloadJobStatus.Cancelled);
      for (const part of multi.parts) this.#cancel(part);
      return;
    }
    const runtime = this.#jobs.get(id);
    if (!runtime) throw new UnknownJobIdError(id);
    this.#cancel(runtime);
  }

  /** Stops a waiting or running job and keeps its partial file; resumeJob() queues it again at its priority. */
  pauseJob(job: DownloadJob | MultiFileDownloadJob | number): void {
    for (const runtime of this.#runtimesOf(job)) {
      const { status } = runtime.job;
      if (status === DownloadJobStatus.Running && runtime.controller) {
        runtime.controller.abort(new Interruption("paused"));
      } else if (status === DownloadJobStatus.Waiting) {
        this.#paused(runtime);
      }
    }
  }

  resumeJob(job: DownloadJob | MultiFileDownloadJob | number): void {
    this.#assertOpen();
    for (const runtime of this.#runtimesOf(job)) {
      if (runtime.job.status !== DownloadJobStatus.Paused) continue;
      this.#enqueue(runtime);
      for (const follower of runtime.followers) {
        follower.job.status = DownloadJobStatus.Waiting;
        this.#active.add(follower);
        this.#persist(follower);
      }
    }
    const multi = this.#multiJobs.get(typeof job === "number" ? job : job.id);
    if (multi?.job.status === DownloadJobStatus.Paused) multi.job.status = DownloadJobStatus.Waiting;
  }

  cancelAllJobs(): void {
    for (const multi of this.#multiJobs.values()) this.cancelJob(multi.job);
    for (const runtime of this.#jobs.values()) this.#cancel(runtime);
  }

  /** Resolves when no job is waiting or running. */
  join(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolveIdle) => this.#idleWaiters.push(resolveIdle));
  }

  /** Resolves with the job once it has finished, whatever the outcome; rejects with TimeoutError after timeoutMs. */
  waitForJob<J extends DownloadJob | MultiFileDownloadJob>(job: J, options: { timeoutMs?: number } = {}): Promise<J> {
    const done = (this.#multiJobs.get(job.id)?.done.promise ?? this.#doneOf(this.#jobs.get(job.id))) as
      | Promise<J>
      | undefined;
    if (!done) return Promise.reject(new UnknownJobIdError(job.id));
    const { timeoutMs } = options;
    if (timeoutMs === undefined) return done;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TimeoutError(`Job ${job.id}`, timeoutMs)), timeoutMs);
    });
    return Promise.race([done, timeout]).finally(() => clearTimeout(timer));
  }

  #doneOf(runtime: JobRuntime | undefined): Promise<DownloadJob> | undefined {
    if (!runtime) return undefined;
    if (runtime.job.inTerminalState) return Promise.resolve(runtime.job);
    runtime.done ??= settled();
    return runtime.done.promise;
  }

  /**
   * Stops every transfer and accepts no more jobs. Running jobs go back to `waiting` with their partial files kept,
   * so a new queue (or the same command run again) resumes them.
   */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const runtime of this.#running.keys()) runtime.controller?.abort(new Interruption("waiting"));
    await Promise.allSettled(this.#running.values());
    await this.#ownDispatcher?.close();
    if (this.#ownStore) this.#store.close();
    this.#wakeIdleWaiters();
  }

  #submit(request: DownloadRequest, placement: { exactPath: boolean; parent: MultiRuntime | undefined }): JobRuntime {
    this.#assertOpen();
    const source = checkSource(request.source);
    const dest = checkDest(request.dest);
    const priority = checkPriority(request.priority);
    const { sha256, size } = checkExpectations(request);
    const limiter = placement.parent
      ? placement.parent.limiter
      : rateLimiter(request.maxBytesPerSecond, "maxBytesPerSecond");
    const job = new DownloadJob(this.#store.nextId(), source, this.#resolveDest(dest), priority, sha256, size);
    const runtime = this.#track(job, this.#callbacksOf(request), {
      headers: request.headers,
      accessToken: request.accessToken,
      destNamesFolder: !placement.exactPath && (dest.endsWith("/") || dest.endsWith(sep)),
      exactPath: placement.exactPath,
      parent: placement.parent,
      limiter,
      overwrite: request.overwrite,
    });
    this.#schedule(runtime);
    return runtime;
  }

  /** Registers a job's runtime; a token not given explicitly comes from the `tokens` rules. */
  #track(
    job: DownloadJob,
    callbacks: DownloadCallbacks<DownloadJob>,
    how: Pick<
      JobRuntime,
      "headers" | "accessToken" | "destNamesFolder" | "exactPath" | "parent" | "limiter" | "overwrite"
    >,
  ): JobRuntime {
    const runtime = new JobRuntime(
      job,
      callbacks,
      how.accessToken ?? this.#tokens.find((rule) => rule.pattern.test(job.source))?.token,
      how.headers,
      how.destNamesFolder,
      how.exactPath,
      how.parent,
      how.limiter,
      how.overwrite,
    );
    this.#jobs.set(job.id, runtime);
    return runtime;
  }

  /**
   * The request's callbacks, without keeping the request itself (nor its source string) alive: the same object as
   * the previous job's when the functions are the same, as when a loop queues many jobs with one onError.
   */
  #callbacksOf(request: DownloadCallbacks<DownloadJob>): DownloadCallbacks<DownloadJob> {
    const last = this.#lastCallbacks;
    if (
      request.onStart === last.onStart &&
      request.onProgress === last.onProgress &&
      request.onComplete === last.onComplete &&
      request.onCancelled === last.onCancelled &&
      request.onError === last.onError
    ) {
      return last;
    }
    this.#lastCallbacks = pickCallbacks(request);
    return this.#lastCallbacks;
  }

  /** path.resolve, but jobs queued into the same dest from the same working folder share one string. */
  #resolveDest(dest: string): string {
    const last = this.#lastDest;
    const cwd = process.cwd();
    if (dest !== last.given || cwd !== last.cwd) this.#lastDest = { given: dest, cwd, resolved: resolve(dest) };
    return this.#lastDest.resolved;
  }

  /**
   * Brings back what a store holds: unfinished jobs are queued again in their old order (ids grow with
   * submission order) and resume from their partial files; paused ones stay paused; finished ones stay listable.
   */
  #restore(stored: StoredJob[]): void {
    for (const record of stored.filter((r) => r.kind === "multi")) {
      const job = new MultiFileDownloadJob(record.id, record.dest, record.downloadPath ?? record.dest, []);
      Object.assign(job, { status: record.status, errorType: record.errorType, error: record.error });
      const options = { maxBytesPerSecond: record.maxBytesPerSecond, overwrite: record.overwrite };
      const multi: MultiRuntime = {
        job,
        callbacks: {},
        parts: [],
        done: settled(),
        lastProgressAt: 0,
        lastProgressBytes: -1,
        options,
        limiter: rateLimiter(options.maxBytesPerSecond, "maxBytesPerSecond"),
      };
      this.#multiJobs.set(record.id, multi);
    }
    for (const record of stored.filter((r) => r.kind === "file")) {
      const job = new DownloadJob(
        record.id,
        record.source as string,
        record.dest,
        record.priority,
        record.sha256,
        record.size,
      );
      Object.assign(job, {
        status: record.status,
        downloadPath: record.downloadPath,
        bytes: record.bytes,
        totalBytes: record.totalBytes,
        contentType: record.contentType,
        jobStarted: record.jobStarted ? new Date(record.jobStarted) : undefined,
        jobEnded: record.jobEnded ? new Date(record.jobEnded) : undefined,
        errorType: record.errorType,
        error: record.error,
      });
      const parent = record.parentId === undefined ? undefined : this.#multiJobs.get(record.parentId);
      const runtime = this.#track(
        job,
        {},
        {
          headers: record.headers,
          accessToken: undefined,
          destNamesFolder: record.destIsFolder ?? false,
          exactPath: parent !== undefined,
          parent,
          limiter: parent ? parent.limiter : rateLimiter(record.maxBytesPerSecond, "maxBytesPerSecond"),
          overwrite: record.overwrite,
        },
      );
      if (parent) {
        parent.parts.push(runtime);
        (parent.job.downloadParts as DownloadJob[]).push(job);
      }
      if (!job.inTerminalState && job.status !== DownloadJobStatus.Paused) this.#schedule(runtime);
    }
    for (const multi of this.#multiJobs.values()) {
      if (multi.job.inTerminalState) multi.done.resolve(multi.job);
      else this.#restMulti(multi);
    }
  }

  #persist(runtime: JobRuntime): void {
    const { job } = runtime;
    this.#store.put({
      id: job.id,
      kind: "file",
      parentId: runtime.parent?.job.id,
      source: job.source,
      dest: job.dest,
      destIsFolder: runtime.destNamesFolder || undefined,
      priority: job.priority,
      status: job.status,
      downloadPath: job.downloadPath,
      bytes: job.bytes,
      totalBytes: job.totalBytes,
      contentType: job.contentType,
      jobStarted: job.jobStarted?.toISOString(),
      jobEnded: job.jobEnded?.toISOString(),
      errorType: job.errorType,
      error: job.error,
      sha256: job.sha256,
      size: job.size,
      headers: withoutCredentials(runtime.headers),
      maxBytesPerSecond: runtime.parent ? undefined : runtime.limiter?.bytesPerSecond,
      overwrite: runtime.overwrite,
    });
  }

  #persistMulti(multi: MultiRuntime): void {
    const { job } = multi;
    this.#store.put({
      id: job.id,
      kind: "multi",
      dest: job.dest,
      priority: multi.parts[0]?.priority ?? 10,
      status: job.status,
      downloadPath: job.downloadPath,
      bytes: job.bytes,
      totalBytes: job.totalBytes,
      errorType: job.errorType,
      error: job.error,
      ...multi.options,
    });
  }

  /** Queues a new job, or attaches it to the job already fetching the same URL into the same place. */
  #schedule(runtime: JobRuntime): void {
    const leader = this.#leaderOf(runtime.job);
    if (!leader || leader.job.inTerminalState || runtime.parent) {
      if (!runtime.parent) this.#setLeader(runtime);
      this.#enqueue(runtime);
      return;
    }
    runtime.leader = leader;
    if (leader.followers === NO_FOLLOWERS) leader.followers = [runtime];
    else leader.followers.push(runtime);
    runtime.job.status = leader.job.status;
    if (runtime.job.status !== DownloadJobStatus.Paused) this.#active.add(runtime);
    this.#persist(runtime);
    if (leader.started) this.#followStart(leader, runtime);
  }

  /**
   * The final path of a partial an earlier run left in the job's folder for the same source (its sidecar names the
   * source), so the resume asks for the missing bytes at once instead of first fetching the name from the server.
   * Each folder is read once per queue; partials this queue writes later are known to their jobs already.
   */
  async #partialFor(job: DownloadJob): Promise<string | undefined> {
    let found = this.#partialsByFolder.get(job.dest);
    if (!found) {
      found = partialsIn(job.dest);
      this.#partialsByFolder.set(job.dest, found);
    }
    return (await found).get(job.source);
  }

  async #isFolder(path: string): Promise<boolean> {
    if (this.#knownFolders.has(path)) return true;
    const isFolder = await stat(path).then(
      (stats) => stats.isDirectory(),
      () => false,
    );
    if (isFolder) this.#knownFolders.add(path);
    return isFolder;
  }

  #leaderOf({ source, dest }: DownloadJob): JobRuntime | undefined {
    const entry = this.#leaders.get(source);
    if (entry instanceof Map) return entry.get(dest);
    return entry?.job.dest === dest ? entry : undefined;
  }

  #setLeader(runtime: JobRuntime): void {
    const { source, dest } = runtime.job;
    const entry = this.#leaders.get(source);
    if (entry instanceof Map) {
      entry.set(dest, runtime);
    } else if (entry === undefined || entry.job.dest === dest) {
      this.#leaders.set(source, runtime);
    } else {
      const byDest = new Map([[entry.job.dest, entry]]);
      this.#leaders.set(source, byDest.set(dest, runtime));
    }
  }

  #dropLeader(runtime: JobRuntime): void {
    const { source, dest } = runtime.job;
    const entry = this.#leaders.get(source);
    if (entry === runtime) {
      this.#leaders.delete(source);
    } else if (entry instanceof Map && entry.get(dest) === runtime) {
      entry.delete(dest);
      if (entry.size === 0) this.#leaders.delete(source);
    }
  }

  #followStart(leader: JobRuntime, follower: JobRuntime): void {
    Object.assign(follower.job, {
      jobStarted: leader.job.jobStarted,
      downloadPath: leader.job.downloadPath,
      totalBytes: leader.job.totalBytes,
      contentType: leader.job.contentType,
      bytes: leader.job.bytes,
    });
    follower.started = true;
    this.#persist(follower);
    this.#emit("download_started", follower.job);
    this.#call(follower.callbacks.onStart, follower.job);
  }

  #enqueue(runtime: JobRuntime): void {
    runtime.job.status = DownloadJobStatus.Waiting;
    this.#persist(runtime);
    this.#active.add(runtime);
    this.#heap.push(runtime);
    // Deferred, so jobs submitted together are ordered by priority before the first one starts.
    if (!this.#pumpScheduled) {
      this.#pumpScheduled = true;
      queueMicrotask(() => {
        this.#pumpScheduled = false;
        this.#pump();
      });
    }
  }

  #pump(): void {
    while (!this.#stopped && this.#running.size < this.#maxParallel) {
      const runtime = this.#heap.pop();
      if (!runtime) return;
      if (runtime.job.status !== DownloadJobStatus.Waiting) continue;
      const run = this.#run(runtime).finally(() => {
        this.#running.delete(runtime);
        this.#pump();
        if (this.#isIdle()) this.#wakeIdleWaiters();
      });
      this.#running.set(runtime, run);
    }
  }

  async #run(runtime: JobRuntime): Promise<void> {
    const { job } = runtime;
    const controller = new AbortController();
    runtime.controller = controller;
    job.status = DownloadJobStatus.Running;
    job.jobStarted = new Date();
    this.#persist(runtime);
    for (const follower of runtime.followers) {
      follower.job.status = DownloadJobStatus.Running;
      follower.job.jobStarted = job.jobStarted;
    }
    try {
      const destIsDirectory = !runtime.exactPath && (runtime.destNamesFolder || (await this.#isFolder(job.dest)));
      const result = await transfer(
        {
          source: job.source,
          dest: job.dest,
          destIsDirectory,
          downloadPath: job.downloadPath ?? (destIsDirectory ? await this.#partialFor(job) : undefined),
          accessToken: runtime.accessToken,
          headers: runtime.headers,
          expectedSize: job.size,
          sha256: job.sha256,
          overwrite: runtime.overwrite ?? this.#overwrite,
          pace: pacer([runtime.limiter, this.#limiter], controller.signal),
        },
        this.#settings,
        {
          onResponse: (info) => {
            job.downloadPath = info.downloadPath;
            job.totalBytes = info.totalBytes ?? 0;
            job.contentType = info.contentType;
            job.bytes = info.bytes;
            if (!runtime.started) {
              runtime.started = true;
              this.#persist(runtime);
              this.#emit("download_started", job);
              this.#call(runtime.callbacks.onStart, job);
              for (const follower of runtime.followers) this.#followStart(runtime, follower);
              if (runtime.parent) this.#partStarted(runtime.parent);
            }
          },
          onBytes: (bytes) => {
            job.bytes = bytes;
            this.#progress(runtime, false);
          },
        },
        controller.signal,
      );
      job.downloadPath = result.downloadPath;
      job.bytes = result.bytes;
      job.totalBytes = result.totalBytes;
      this.#progress(runtime, true);
      this.#settle(runtime, DownloadJobStatus.Completed);
    } catch (err) {
      const interruption = controller.signal.aborted ? controller.signal.reason : undefined;
      if (interruption instanceof Interruption) {
        await this.#interrupted(runtime, interruption.to);
      } else {
        this.#fail(runtime, err instanceof Error ? err : new Error(String(err)));
      }
    } finally {
      runtime.controller = undefined;
    }
  }

  async #interrupted(runtime: JobRuntime, to: Interruption["to"]): Promise<void> {
    if (to === "waiting") {
      for (const r of [runtime, ...runtime.followers]) {
        r.job.status = DownloadJobStatus.Waiting;
        r.started = false;
        this.#persist(r);
      }
      if (runtime.parent) this.#restMulti(runtime.parent);
      return;
    }
    if (to === "cancelled") {
      if (runtime.job.downloadPath) await discardPartial(runtime.job.downloadPath);
      this.#settle(runtime, DownloadJobStatus.Cancelled);
      return;
    }
    this.#paused(runtime);
  }

  #paused(runtime: JobRuntime): void {
    runtime.job.status = DownloadJobStatus.Paused;
    runtime.started = false;
    this.#persist(runtime);
    this.#active.delete(runtime);
    this.#emit("download_paused", runtime.job);
    if (runtime.parent) this.#restMulti(runtime.parent);
    for (const follower of runtime.followers) this.#paused(follower);
    if (this.#isIdle()) this.#wakeIdleWaiters();
  }

  /** A multi-file job none of whose parts runs: waiting while any part will run again, else paused. */
  #restMulti(multi: MultiRuntime): void {
    if (multi.job.inTerminalState || multi.parts.some((p) => p.job.status === DownloadJobStatus.Running)) return;
    const waiting = multi.parts.some((p) => p.job.status === DownloadJobStatus.Waiting);
    multi.job.status = waiting ? DownloadJobStatus.Waiting : DownloadJobStatus.Paused;
  }

  #runtimesOf(job: DownloadJob | MultiFileDownloadJob | number): JobRuntime[] {
    const id = typeof job === "number" ? job : job.id;
    const multi = this.#multiJobs.get(id);
    if (multi) return multi.parts;
    const runtime = this.#jobs.get(id);
    if (!runtime) throw new UnknownJobIdError(id);
    // Pausing or resuming an attached job acts on the transfer it shares.
    return [runtime.leader ?? runtime];
  }

  #cancel(runtime: JobRuntime): void {
    const { job } = runtime;
    if (job.inTerminalState) return;
    if (runtime.leader) {
      // Only this caller gives up; the shared transfer goes on for the others.
      runtime.leader.followers.splice(runtime.leader.followers.indexOf(runtime), 1);
      this.#settle(runtime, DownloadJobStatus.Cancelled);
      return;
    }
    if (job.status === DownloadJobStatus.Running && runtime.controller) {
      runtime.controller.abort(new Interruption("cancelled"));
      return;
    }
    // Waiting (or paused): no transfer to stop; its heap entry is skipped when popped.
    if (job.downloadPath) {
      const path = job.downloadPath;
      discardPartial(path).catch((err) => this.#logger.warn(`could not delete the partial of ${path}: ${err}`));
    }
    this.#settle(runtime, DownloadJobStatus.Cancelled);
  }

  #fail(runtime: JobRuntime, error: Error): void {
    const { job } = runtime;
    const secrets = [runtime.accessToken];
    job.errorType = redact(error instanceof DlqError ? error.errorType : `${error.name}(${error.message})`, secrets);
    job.error = redact(error.stack ?? String(error), secrets);
    this.#logger.error(`job ${job.id} (${job.source}) failed: ${job.errorType}`);
    this.#settle(runtime, DownloadJobStatus.Error, error);
  }

  /** The single place a job reaches its final state: callbacks, events, multi-file bookkeeping, waiters. */
  #settle(runtime: JobRuntime, status: "completed" | "cancelled" | "error", error?: Error): void {
    const { job } = runtime;
    job.status = status;
    job.jobEnded = new Date();
    this.#active.delete(runtime);
    this.#persist(runtime);
    if (status === DownloadJobStatus.Completed) {
      this.#emit("download_complete", job);
      this.#call(runtime.callbacks.onComplete, job);
    } else if (status === DownloadJobStatus.Cancelled) {
      this.#emit("download_cancelled", job);
      this.#call(runtime.callbacks.onCancelled, job);
    } else {
      this.#emit("download_error", job);
      this.#call(runtime.callbacks.onError, job, error);
    }
    if (runtime.parent) this.#partSettled(runtime.parent, runtime, error);
    this.#dropLeader(runtime);
    for (const follower of runtime.followers) {
      if (follower.job.inTerminalState) continue;
      const { downloadPath, bytes, totalBytes, errorType, error: trace } = job;
      Object.assign(follower.job, { downloadPath, bytes, totalBytes, errorType, error: trace });
      this.#settle(follower, status, error);
    }
    runtime.done?.resolve(job);
    runtime.done = undefined;
    if (this.#isIdle()) this.#wakeIdleWaiters();
  }

  #progress(runtime: JobRuntime, final: boolean): void {
    const { job } = runtime;
    const now = performance.now();
    const due = final
      ? runtime.lastProgressBytes !== job.bytes
      : now - runtime.lastProgressAt >= this.#progressIntervalMs;
    if (due) {
      runtime.lastProgressAt = now;
      runtime.lastProgressBytes = job.bytes;
      this.#store.progress(job.id, job.bytes, job.totalBytes);
      this.#emit("download_progress", job);
      this.#call(runtime.callbacks.onProgress, job);
      for (const follower of runtime.followers) {
        follower.job.bytes = job.bytes;
        follower.job.totalBytes = job.totalBytes;
        this.#progress(follower, final);
      }
    }
    // A part's last bytes may have been reported while the parent's interval held its report back: a finished part
    // always tells the parent, so the parent's last report counts every byte.
    const multi = runtime.parent;
    if (
      multi &&
      (final
        ? multi.lastProgressBytes !== multi.job.bytes
        : due && now - multi.lastProgressAt >= this.#progressIntervalMs)
    ) {
      multi.lastProgressAt = now;
      multi.lastProgressBytes = multi.job.bytes;
      this.#call(multi.callbacks.onProgress, multi.job);
    }
  }

  #partStarted(multi: MultiRuntime): void {
    if (multi.job.status !== DownloadJobStatus.Waiting) return;
    multi.job.status = DownloadJobStatus.Running;
    this.#call(multi.callbacks.onStart, multi.job);
  }

  #partSettled(multi: MultiRuntime, part: JobRuntime, error: Error | undefined): void {
    if (multi.job.inTerminalState) {
      if (multi.parts.every((p) => p.job.inTerminalState)) multi.done.resolve(multi.job);
      return;
    }
    if (part.job.status === DownloadJobStatus.Error) {
      multi.job.errorType = part.job.errorType;
      multi.job.error = part.job.error;
      this.#settleMulti(multi, DownloadJobStatus.Error, error);
      for (const other of multi.parts) this.#cancel(other);
    } else if (part.job.status === DownloadJobStatus.Cancelled) {
      this.#settleMulti(multi, DownloadJobStatus.Cancelled);
      for (const other of multi.parts) this.#cancel(other);
    } else if (multi.parts.every((p) => p.job.status === DownloadJobStatus.Completed)) {
      this.#settleMulti(multi, DownloadJobStatus.Completed);
    }
  }

  #settleMulti(multi: MultiRuntime, status: "completed" | "cancelled" | "error", error?: Error): void {
    multi.job.status = status;
    this.#persistMulti(multi);
    if (status === DownloadJobStatus.Completed) this.#call(multi.callbacks.onComplete, multi.job);
    else if (status === DownloadJobStatus.Cancelled) this.#call(multi.callbacks.onCancelled, multi.job);
    else this.#call(multi.callbacks.onError, multi.job, error ?? new Error(multi.job.errorType));
    if (multi.parts.every((p) => p.job.inTerminalState)) multi.done.resolve(multi.job);
  }

  #emit(event: QueueEventName, job: DownloadJob): void {
    const payload = eventPayload(event, job);
    try {
      this.emit(event, payload as never);
      this.#eventBus?.emit(event, payload);
    } catch (err) {
      this.#logger.error(`a ${event} listener threw: ${err instanceof Error ? err.message : String(err)}`);
    }
  }

  /** A callback that throws (or rejects) is logged; the download goes on. */
  #call<J extends DownloadJob | MultiFileDownloadJob>(
    callback: ((job: J, error: Error) => unknown) | undefined,
    job: J,
    error?: Error,
  ): void {
    if (!callback) return;
    const report = (err: unknown) =>
      this.#logger.error(`a callback of job ${job.id} threw: ${err instanceof Error ? err.message : String(err)}`);
    try {
      const result = callback(job, error as Error);
      if (result instanceof Promise) result.catch(report);
    } catch (err) {
      report(err);
    }
  }

  #isIdle(): boolean {
    return this.#running.size === 0 && (this.#active.size === 0 || this.#stopped);
  }

  #wakeIdleWaiters(): void {
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const wake of waiters) wake();
  }

  #assertOpen(): void {
    if (this.#stopped) throw new QueueStoppedError();
  }
}

function jobOptions(request: JobOptions): JobOptions {
  if (request.maxBytesPerSecond === undefined && request.overwrite === undefined) return {};
  return { maxBytesPerSecond: request.maxBytesPerSecond, overwrite: request.overwrite };
}

/**
 * The queue's own undici dispatcher: through `proxy` when given, else through the proxy the environment names
 * (HTTP_PROXY, HTTPS_PROXY, NO_PROXY and their lowercase forms), else direct. Every connection, to a proxy or to an
 * origin, is bounded by connectTimeoutMs.
 */
function ownDispatcher(options: DownloadQueueOptions): Dispatcher {
  const timeout = options.connectTimeoutMs ?? 30_000;
  const connection = {
    connect: { timeout },
    connectTimeout: timeout,
    proxyTls: { timeout },
    requestTls: { timeout },
  };
  if (options.proxy === undefined) return new EnvHttpProxyAgent(connection);
  let uri: URL;
  try {
    uri = new URL(options.proxy);
  } catch {
    throw new InvalidArgumentError(
      "proxy must be a URL such as http://proxy.example:3128 (credentials as user:pass@).",
    );
  }
  if (uri.protocol !== "http:" && uri.protocol !== "https:") {
    throw new InvalidArgumentError(`proxy must be an http:// or https:// URL, not ${uri.protocol}//.`);
  }
  return new ProxyAgent({ ...connection, uri: uri.href });
}

function pickCallbacks<J>(request: DownloadCallbacks<J>): DownloadCallbacks<J> {
  const { onStart, onProgress, onComplete, onCancelled, onError } = request;
  if (!onStart && !onProgress && !onComplete && !onCancelled && !onError) return NO_CALLBACKS;
  return { onStart, onProgress, onComplete, onCancelled, onError };
}

function checkSource(source: string | URL): string {
  let url: URL;
  try {
    url = new URL(String(source));
  } catch {
    throw new InvalidUrlError(String(source));
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") throw new UnsupportedSchemeError(url.protocol);
  if (!url.hostname) throw new InvalidUrlError(String(source));
  return url.href;
}

function checkPriority(priority: number | undefined): number {
  if (priority === undefined) return 10;
  if (!Number.isFinite(priority)) throw new InvalidArgumentError(`priority must be a number, not ${priority}.`);
  return priority;
}

function checkExpectations(expect: { sha256?: string; size?: number }): { sha256?: string; size?: number } {
  if (expect.size !== undefined) nonNegativeInteger(expect.size, "size");
  if (expect.sha256 !== undefined && !/^[0-9a-f]{64}$/i.test(expect.sha256)) {
    throw new InvalidArgumentError("sha256 must be 64 hexadecimal characters.");
  }
  return { sha256: expect.sha256?.toLowerCase(), size: expect.size };
}

/** Secrets are never written to the store; a restored job gets its token from the `tokens` rules again. */
function withoutCredentials(headers: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!headers) return undefined;
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !CREDENTIAL_HEADERS.has(name.toLowerCase())));
}

function checkDest(dest: string): string {
  if (typeof dest !== "string" || dest.length === 0 || dest.includes("\0")) {
    throw new InvalidArgumentError("dest must be a non-empty path to a folder or a file.");
  }
  return dest;
}

function positiveInteger(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 1) throw new InvalidArgumentError(`${name} must be a positive integer.`);
  return value;
}

function nonNegativeInteger(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new InvalidArgumentError(`${name} must be 0 or more.`);
  return value;
}
