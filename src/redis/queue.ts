/**
 * RedisDownloadQueue: DownloadQueue's API on a queue shared through Redis. It queues jobs and reads, cancels, pauses
 * and resumes them; `dlqueue worker` processes (DownloadWorker) anywhere run them. Every method is async, since the
 * jobs live in Redis; events come from whichever worker runs the job, through Redis pub/sub.
 */
import { EventEmitter, once } from "node:events";
import { isAbsolute, join, relative, resolve, sep } from "node:path";
import { Queue } from "bullmq";
import type { Redis } from "ioredis";
import { InvalidArgumentError, SecretRequiredError, TimeoutError, UnknownJobIdError } from "../errors.js";
import { DestinationOutsideRootError } from "../files/root.js";
import { DownloadJob, DownloadJobStatus, isTerminal, type MultiFileDownloadJob } from "../job.js";
import { defaultLogger, type Logger } from "../logger.js";
import type { DownloadCallbacks, DownloadRequest, ModelDownloadRequest, MultiFileDownloadRequest } from "../options.js";
import type { JobQueue } from "../queue-api.js";
import { planModel } from "../sources/model.js";
import { fileJobOf, fileRecord, multiJobOf } from "../store/records.js";
import type { StoredJob } from "../store/store.js";
import { CREDENTIAL_HEADERS } from "../transfer/http.js";
import { checkMultiFileRequest, checkRequest } from "../validate.js";
import { eventPayload, type QueueEventName, type QueueEvents } from "../wire.js";
import { checkRedisUrl, type Layout, layoutOf, patientClient, redisFailure, requestClient } from "./connection.js";
import { type FetchData, type SharedJob, SharedJobs, type SharedMessage } from "./jobs.js";
import type { RedisDownloadQueueOptions } from "./options.js";
import { sealSecret } from "./secret.js";

/** How long cancelJob/pauseJob wait for the worker running the job to confirm, before returning anyway. */
const CONFIRM_MS = 5000;
/** Jobs cancelAllJobs() cancels concurrently. */
const CANCELS_AT_ONCE = 50;
/** How long a call waits for a client that is (re)connecting before it reports Redis unreachable. */
const CONNECT_WAIT_MS = 2000;
/** join() and waitForJob() look again this often even without an event (one may be missed while reconnecting). */
const RECHECK_MS = 1000;

type AnyJob = DownloadJob | MultiFileDownloadJob;
type JobRef = AnyJob | number;

export class RedisDownloadQueue extends EventEmitter<QueueEvents> implements JobQueue {
  readonly #url: string;
  readonly #root: string | undefined;
  readonly #secret: string | undefined;
  readonly #logger: Logger;
  readonly #layout: Layout;
  readonly #client: Redis;
  readonly #subscriber: Redis;
  readonly #bull: Queue<FetchData>;
  readonly #jobs: SharedJobs;
  readonly #callbacks = new Map<number, DownloadCallbacks<AnyJob>>();
  /** Woken by every message, so waiters look again at once. */
  readonly #wakers = new Set<() => void>();
  readonly #subscribed: Promise<unknown>;
  #stopped = false;

  constructor(options: RedisDownloadQueueOptions) {
    super();
    this.#url = checkRedisUrl(options.redis);
    this.#layout = layoutOf(options);
    this.#root = options.root === undefined ? undefined : resolve(options.root);
    this.#secret = options.secret || undefined;
    this.#logger = options.logger ?? defaultLogger;
    this.#client = requestClient(this.#url, "dlqueue-api");
    this.#subscriber = patientClient(this.#url, "dlqueue-api-events");
    this.#bull = new Queue<FetchData>(this.#layout.queueName, {
      connection: this.#client,
      prefix: this.#layout.prefix,
    });
    this.#bull.on("error", () => {});
    this.#jobs = new SharedJobs(this.#client, this.#layout, this.#bull);
    this.#subscriber.on("message", (_channel: string, message: string) => this.#onMessage(message));
    this.#subscribed = this.#subscriber.subscribe(this.#layout.events).catch(() => {});
  }

  /** Resolves once Redis answers; rejects with RedisUnavailableError otherwise. */
  async ready(): Promise<void> {
    await this.#call(() => this.#client.ping());
    await this.#subscribed;
  }

  async download(request: DownloadRequest): Promise<DownloadJob> {
    this.#assertOpen();
    const checked = checkRequest(request);
    const sealed = this.#seal(request.accessToken, request.headers);
    return this.#call(async () => {
      const [id] = (await this.#jobs.nextIds(1)) as [number];
      const record = this.#fileRecord(id, checked.source, this.#storedDest(checked.dest), request, checked);
      await this.#jobs.create([{ record, sealed }]);
      this.#keepCallbacks(id, request);
      return this.#fileJob(record);
    });
  }

  async multifileDownload(request: MultiFileDownloadRequest): Promise<MultiFileDownloadJob> {
    this.#assertOpen();
    const { dest, parts } = checkMultiFileRequest(request);
    const storedDest = this.#storedDest(dest);
    const roots = new Set(parts.map((part) => part.path.split("/")[0]));
    const downloadPath =
      roots.size === 1 && parts.every((part) => part.path.includes("/"))
        ? join(storedDest, [...roots][0] as string)
        : storedDest;
    const sealed = this.#seal(request.accessToken, request.headers);
    return this.#call(() => this.#createMulti(request, storedDest, downloadPath, undefined, parts, () => sealed));
  }

  /**
   * A model source (hf://…, civitai://…) resolved here, on the API node, into files under `dest` inside the workers'
   * root (never a Hugging Face cache: that is one machine's). Workers fetch the files with their own tokens
   * (HF_TOKEN, CIVITAI_TOKEN) unless the request gives one, which then needs the shared secret.
   */
  async modelDownload(request: ModelDownloadRequest): Promise<MultiFileDownloadJob> {
    this.#assertOpen();
    if (request.dest === undefined || request.cache !== undefined) {
      throw new InvalidArgumentError(
        "A shared queue puts a model's files under dest, a folder inside the workers' root; give dest (the " +
          "Hugging Face cache is one machine's and is not used).",
      );
    }
    const storedDest = this.#storedDest(request.dest);
    const explicitToken = request.accessToken;
    if (explicitToken !== undefined && !this.#secret) throw new SecretRequiredError("A per-job access token");
    // Planned against a stand-in folder: only the paths relative to dest are kept.
    const plan = await planModel({ ...request, dest: resolve(sep, "dlqueue-plan") });
    return this.#call(() =>
      this.#createMulti(
        request,
        storedDest,
        storedDest,
        { ...plan.origin, snapshotPath: storedDest },
        plan.parts.map((part) => ({ source: part.url, path: part.path, sha256: part.sha256, size: part.size })),
        (i) => {
          const token = plan.parts[i]?.accessToken;
          return explicitToken !== undefined && token === explicitToken ? this.#seal(token, undefined) : undefined;
        },
      ),
    );
  }

  async #createMulti(
    request: MultiFileDownloadRequest | ModelDownloadRequest,
    storedDest: string,
    downloadPath: string,
    origin: { source: string; commit?: string; snapshotPath?: string } | undefined,
    parts: { source: string; path: string; sha256?: string; size?: number }[],
    sealedFor: (index: number) => string | undefined,
  ): Promise<MultiFileDownloadJob> {
    const ids = await this.#jobs.nextIds(parts.length + 1);
    const parentId = ids[0] as number;
    const priority = request.priority ?? 10;
    if (!Number.isFinite(priority)) throw new InvalidArgumentError(`priority must be a number, not ${priority}.`);
    const partRecords = parts.map((part, i) => {
      const record = this.#fileRecord(
        ids[i + 1] as number,
        part.source,
        join(storedDest, part.path),
        // Parts run apart, on several workers: the job's rate limit caps each part.
        { ...request, headers: "headers" in request ? request.headers : undefined },
        { priority, sha256: part.sha256, size: part.size },
      );
      record.parentId = parentId;
      return record;
    });
    const parent: StoredJob = {
      id: parentId,
      kind: "multi",
      source: origin?.source,
      commit: origin?.commit,
      snapshotPath: origin?.snapshotPath,
      dest: storedDest,
      priority,
      status: DownloadJobStatus.Waiting,
      downloadPath,
      bytes: 0,
      totalBytes: 0,
      maxBytesPerSecond: request.maxBytesPerSecond,
      overwrite: request.overwrite,
    };
    await this.#jobs.create([
      { record: parent, parts: partRecords.map((record) => record.id) },
      ...partRecords.map((record, i) => ({ record, sealed: sealedFor(i) })),
    ]);
    this.#keepCallbacks(parentId, request);
    return this.#multiJob(parent, partRecords);
  }

  async listJobs(): Promise<DownloadJob[]> {
    return this.#call(async () =>
      (await this.#jobs.all()).filter((job) => job.record.kind === "file").map((job) => this.#fileJob(job.record)),
    );
  }

  async listMultifileJobs(): Promise<MultiFileDownloadJob[]> {
    return this.#call(async () => {
      const all = await this.#jobs.all();
      const byId = new Map(all.map((job) => [job.record.id, job.record]));
      return all
        .filter((job) => job.record.kind === "multi")
        .map((job) => this.#multiJob(job.record, partsOf(job, byId)));
    });
  }

  async idToJob(id: number): Promise<AnyJob> {
    return this.#call(async () => {
      const job = await this.#jobs.get(id);
      if (!job) throw new UnknownJobIdError(id);
      if (job.record.kind === "file") return this.#fileJob(job.record);
      const parts = await this.#jobs.getMany(job.parts ?? []);
      return this.#multiJob(
        job.record,
        parts.map((part) => part.record),
      );
    });
  }

  /** Forgets finished jobs (completed, cancelled, errored), in Redis and in BullMQ. */
  async pruneJobs(): Promise<void> {
    await this.#call(async () => {
      const all = await this.#jobs.all();
      const byId = new Map(all.map((job) => [job.record.id, job]));
      const pruned: number[] = [];
      for (const job of all) {
        const { record } = job;
        if (record.kind === "multi") {
          const parts = partsOf(job, new Map(all.map((j) => [j.record.id, j.record])));
          if (isTerminal(multiStatus(record, parts))) pruned.push(record.id, ...(job.parts ?? []));
        } else if (record.parentId === undefined || !byId.has(record.parentId)) {
          if (isTerminal(record.status)) pruned.push(record.id);
        }
      }
      await this.#jobs.delete(pruned);
    });
  }

  /**
   * Cancels a job wherever it is: waiting, it is taken out of the queue at once; running, the worker that runs it
   * stops within a second and deletes its partial. Resolves once that is done (or after 5 s, the worker then
   * being gone: the next worker to take the job up finds it cancelled).
   */
  async cancelJob(job: JobRef): Promise<void> {
    await this.#stop(job, "cancel");
  }

  /** Stops a job and keeps its partial file; resumeJob() queues it again at its priority, for any worker. */
  async pauseJob(job: JobRef): Promise<void> {
    await this.#stop(job, "pause");
  }

  async resumeJob(job: JobRef): Promise<void> {
    this.#assertOpen();
    await this.#call(async () => {
      for (const id of await this.#fileIdsOf(job)) await this.#jobs.resume(id);
    });
  }

  /** Cancels every unfinished job; many at once, as each is a few round trips (and a running one waits for its worker). */
  async cancelAllJobs(): Promise<void> {
    await this.#call(async () => {
      const all = await this.#jobs.all();
      const unfinished = (kind: StoredJob["kind"]) =>
        all.filter((job) => job.record.kind === kind && !isTerminal(job.record.status)).map((job) => job.record.id);
      await eachAtOnce(unfinished("multi"), CANCELS_AT_ONCE, (id) => this.#stop(id, "cancel"));
      await eachAtOnce(unfinished("file"), CANCELS_AT_ONCE, (id) => this.#stop(id, "cancel"));
    });
  }

  /** Resolves when no job of the shared queue is waiting or running (on any worker). */
  async join(): Promise<void> {
    while (!this.#stopped && (await this.#call(() => this.#jobs.openCount())) > 0) await this.#nextMessage(RECHECK_MS);
  }

  async waitForJob<J extends AnyJob>(job: J, options: { timeoutMs?: number } = {}): Promise<J> {
    const deadline = options.timeoutMs === undefined ? Number.POSITIVE_INFINITY : Date.now() + options.timeoutMs;
    for (;;) {
      const current = (await this.idToJob(job.id)) as J;
      if (current.inTerminalState) return current;
      const left = deadline - Date.now();
      if (left <= 0) throw new TimeoutError(`Job ${job.id}`, options.timeoutMs as number);
      await this.#nextMessage(Math.min(left, RECHECK_MS));
    }
  }

  /** Closes this node's connections; jobs, running or not, carry on in Redis and on the workers. */
  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    for (const wake of this.#wakers) wake();
    await this.#bull.close().catch(() => {});
    this.#subscriber.disconnect();
    this.#client.disconnect();
  }

  async #stop(job: JobRef, action: "cancel" | "pause"): Promise<void> {
    await this.#call(async () => {
      const id = typeof job === "number" ? job : job.id;
      const shared = await this.#jobs.get(id);
      if (!shared) throw new UnknownJobIdError(id);
      if (shared.record.kind === "multi" && action === "cancel") {
        if (isTerminal(shared.record.status)) return;
        if (await this.#jobs.claimSettle(id, "cancelled")) {
          const settled: StoredJob = { ...shared.record, status: DownloadJobStatus.Cancelled };
          await this.#jobs.put(settled);
          await this.#jobs.publishSettled(settled);
        }
      }
      const ids = shared.record.kind === "multi" ? (shared.parts ?? []) : [id];
      const running: number[] = [];
      for (const partId of ids) if (!(await this.#jobs.stopWaiting(partId, action))) running.push(partId);
      const deadline = Date.now() + CONFIRM_MS;
      while (running.length > 0 && Date.now() < deadline) {
        const records = await this.#jobs.getMany(running);
        const settled = records.every(
          (r) => isTerminal(r.record.status) || (action === "pause" && r.record.status === "paused"),
        );
        if (settled) break;
        await this.#nextMessage(Math.min(100, deadline - Date.now()));
      }
    });
  }

  async #fileIdsOf(job: JobRef): Promise<number[]> {
    const id = typeof job === "number" ? job : job.id;
    const shared = await this.#jobs.get(id);
    if (!shared) throw new UnknownJobIdError(id);
    return shared.record.kind === "multi" ? (shared.parts ?? []) : [id];
  }

  #onMessage(raw: string): void {
    let message: SharedMessage;
    try {
      message = JSON.parse(raw) as SharedMessage;
    } catch {
      return;
    }
    for (const wake of this.#wakers) wake();
    const { event, record } = message;
    if (event === "multi_settled") {
      this.#settledCallbacks(record);
      return;
    }
    const job = this.#fileJob(record);
    try {
      this.emit(event, eventPayload(event, job) as never);
    } catch (err) {
      this.#logger.error(`a ${event} listener threw: ${err instanceof Error ? err.message : String(err)}`);
    }
    this.#fileCallbacks(event, job);
  }

  #fileCallbacks(event: QueueEventName, job: DownloadJob): void {
    const callbacks = this.#callbacks.get(job.id) as DownloadCallbacks<DownloadJob> | undefined;
    if (!callbacks) return;
    const call = (callback: ((job: DownloadJob, error: Error) => unknown) | undefined, error?: Error) =>
      this.#invoke(job.id, () => callback?.(job, error as Error));
    if (event === "download_started") call(callbacks.onStart);
    else if (event === "download_progress") call(callbacks.onProgress);
    else if (event === "download_complete") call(callbacks.onComplete);
    else if (event === "download_cancelled") call(callbacks.onCancelled);
    else if (event === "download_error") call(callbacks.onError, new Error(job.error ?? job.errorType));
    if (isTerminal(job.status)) this.#callbacks.delete(job.id);
  }

  #settledCallbacks(record: StoredJob): void {
    const callbacks = this.#callbacks.get(record.id);
    if (!callbacks) return;
    this.#callbacks.delete(record.id);
    void this.idToJob(record.id).then(
      (job) => {
        if (record.status === DownloadJobStatus.Completed) this.#invoke(job.id, () => callbacks.onComplete?.(job));
        else if (record.status === DownloadJobStatus.Cancelled)
          this.#invoke(job.id, () => callbacks.onCancelled?.(job));
        else this.#invoke(job.id, () => callbacks.onError?.(job, new Error(record.error ?? record.errorType)));
      },
      () => {},
    );
  }

  /** A callback that throws (or rejects) is logged; nothing else is affected. */
  #invoke(id: number, callback: () => unknown): void {
    const report = (err: unknown) =>
      this.#logger.error(`a callback of job ${id} threw: ${err instanceof Error ? err.message : String(err)}`);
    try {
      const result = callback();
      if (result instanceof Promise) result.catch(report);
    } catch (err) {
      report(err);
    }
  }

  #keepCallbacks(id: number, request: DownloadCallbacks<never>): void {
    const { onStart, onProgress, onComplete, onCancelled, onError } = request;
    if (onStart || onProgress || onComplete || onCancelled || onError) {
      this.#callbacks.set(id, { onStart, onProgress, onComplete, onCancelled, onError } as DownloadCallbacks<AnyJob>);
    }
  }

  #nextMessage(ms: number): Promise<void> {
    return new Promise((wakeUp) => {
      const wake = () => {
        clearTimeout(timer);
        this.#wakers.delete(wake);
        wakeUp();
      };
      const timer = setTimeout(wake, Math.max(0, ms));
      this.#wakers.add(wake);
    });
  }

  #fileRecord(
    id: number,
    source: string,
    dest: string,
    request: Pick<DownloadRequest, "headers" | "maxBytesPerSecond" | "overwrite">,
    checked: { priority: number; sha256?: string; size?: number },
  ): StoredJob {
    const job = new DownloadJob(id, source, dest, checked.priority, checked.sha256, checked.size);
    return fileRecord(job, {
      parentId: undefined,
      destIsFolder: false,
      headers: request.headers,
      maxBytesPerSecond: request.maxBytesPerSecond,
      overwrite: request.overwrite,
    });
  }

  /**
   * A per-job token and credential headers, sealed for the workers; refused without the shared secret rather than
   * written to Redis in clear.
   */
  #seal(accessToken: string | undefined, headers: Record<string, string> | undefined): string | undefined {
    const credentials = Object.fromEntries(
      Object.entries(headers ?? {}).filter(([name]) => CREDENTIAL_HEADERS.has(name.toLowerCase())),
    );
    const hasCredentials = Object.keys(credentials).length > 0;
    if (accessToken === undefined && !hasCredentials) return undefined;
    if (!this.#secret) {
      throw new SecretRequiredError(accessToken !== undefined ? "A per-job access token" : "A credential header");
    }
    return sealSecret(this.#secret, JSON.stringify({ accessToken, headers: hasCredentials ? credentials : undefined }));
  }

  /** A dest as stored: relative to the workers' root, which each worker resolves (and confines) on its own disk. */
  #storedDest(dest: string): string {
    const trailing = /[\\/]$/.test(dest) ? "/" : "";
    let rel: string;
    if (isAbsolute(dest)) {
      rel = this.#root === undefined ? ".." : relative(this.#root, dest);
      if (rel === ".." || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
        throw new DestinationOutsideRootError(
          `dest ${JSON.stringify(dest)} is ${this.#root === undefined ? "an absolute path" : `outside ${this.#root}`}: ` +
            'on a shared queue, dest is relative to the workers\' root (`dlqueue worker --root`), e.g. "models/sd".',
        );
      }
    } else {
      rel = dest;
      if (rel.split(/[\\/]/).includes("..")) {
        throw new DestinationOutsideRootError(
          `dest ${JSON.stringify(dest)} contains "..", which could leave the workers' root; give a path inside it.`,
        );
      }
    }
    const clean = rel
      .split(/[\\/]/)
      .filter((segment) => segment !== "" && segment !== ".")
      .join("/");
    return clean === "" ? "" : `${clean}${trailing}`;
  }

  /** A stored path as this node shows it: under its root when it has one. */
  #shown(path: string | undefined): string | undefined {
    if (path === undefined || this.#root === undefined) return path;
    return path === "" ? this.#root : join(this.#root, path);
  }

  #fileJob(record: StoredJob): DownloadJob {
    return fileJobOf({
      ...record,
      dest: this.#shown(record.dest) ?? "",
      downloadPath: this.#shown(record.downloadPath),
    }).job;
  }

  #multiJob(record: StoredJob, parts: StoredJob[]): MultiFileDownloadJob {
    const shown: StoredJob = {
      ...record,
      status: multiStatus(record, parts),
      dest: this.#shown(record.dest) ?? "",
      downloadPath: this.#shown(record.downloadPath),
      snapshotPath: this.#shown(record.snapshotPath),
    };
    const { job } = multiJobOf(shown);
    (job.downloadParts as DownloadJob[]).push(...parts.map((part) => this.#fileJob(part)));
    return job;
  }

  async #call<T>(work: () => Promise<T>): Promise<T> {
    try {
      await this.#connected();
      return await work();
    } catch (err) {
      throw redisFailure(this.#url, err);
    }
  }

  /**
   * The request client fails at once while disconnected (so a request gets its 503 instead of hanging); a client
   * still connecting, or reconnecting, gets a moment first.
   */
  async #connected(): Promise<void> {
    if (this.#client.status === "ready") return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      once(this.#client, "ready"),
      new Promise((wake) => {
        timer = setTimeout(wake, CONNECT_WAIT_MS);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  #assertOpen(): void {
    if (this.#stopped) {
      throw new InvalidArgumentError("This RedisDownloadQueue has been stopped; create a new one to queue more.");
    }
  }
}

/** Runs `work` on every item, at most `limit` at a time. */
async function eachAtOnce<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await work(items[next++] as T);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
}

function partsOf(job: SharedJob, byId: Map<number, StoredJob>): StoredJob[] {
  return (job.parts ?? []).map((id) => byId.get(id)).filter((part): part is StoredJob => part !== undefined);
}

/** A multi-file job's status: its own once settled, else what its parts say. */
export function multiStatus(record: StoredJob, parts: readonly StoredJob[]): DownloadJobStatus {
  if (isTerminal(record.status)) return record.status;
  if (parts.length > 0 && parts.every((part) => part.status === DownloadJobStatus.Completed)) {
    return DownloadJobStatus.Completed;
  }
  if (parts.some((part) => part.status === DownloadJobStatus.Running)) return DownloadJobStatus.Running;
  const unfinished = parts.filter((part) => part.status !== DownloadJobStatus.Completed);
  if (unfinished.length > 0 && unfinished.every((part) => part.status === DownloadJobStatus.Paused)) {
    return DownloadJobStatus.Paused;
  }
  return DownloadJobStatus.Waiting;
}
