/**
 * DownloadWorker: takes jobs from the shared queue (BullMQ) and downloads them with dlqueue's own engine, an
 * in-process DownloadQueue, into its root; it writes each job's progress and outcome to Redis and publishes the
 * events. A worker that dies loses its BullMQ lock, and another takes the job up and resumes from the partial file.
 */
import { EventEmitter } from "node:events";
import { join, relative } from "node:path";
import { DelayedError, type Job, Queue, UnrecoverableError, WaitingError, Worker } from "bullmq";
import type { Redis } from "ioredis";
import { DlqError } from "../errors.js";
import { discardPartial } from "../files/partial.js";
import { prepareRoot, resolveDest } from "../files/root.js";
import { type DownloadJob, DownloadJobStatus, isTerminal } from "../job.js";
import { defaultLogger, type Logger } from "../logger.js";
import { DownloadQueue } from "../queue.js";
import { modelPartToken } from "../sources/model.js";
import { fileJobOf } from "../store/records.js";
import type { StoredJob } from "../store/store.js";
import { eventPayload, type QueueEventName, type QueueEvents } from "../wire.js";
import { bullJobId, checkRedisUrl, DISCARD, type Layout, layoutOf, patientClient, redisWhere } from "./connection.js";
import { type ControlAction, type ControlMessage, type FetchData, type SharedJob, SharedJobs } from "./jobs.js";
import type { DownloadWorkerOptions } from "./options.js";
import { openSecret } from "./secret.js";

/** How long a job whose file another worker still writes waits before it looks again. */
const LOCKED_RETRY_MS = 2000;

/** Why a running job is being stopped: asked for (cancel, pause), this worker closing, or its lock lost. */
type StopReason = ControlAction | "shutdown" | "lost";

interface Running {
  id: number;
  bullJob: Job<FetchData>;
  local?: DownloadJob;
  reason?: StopReason;
}

export class DownloadWorker extends EventEmitter<QueueEvents> {
  readonly #options: DownloadWorkerOptions;
  readonly #url: string;
  readonly #layout: Layout;
  readonly #logger: Logger;
  readonly #secret: string | undefined;
  readonly #client: Redis;
  readonly #subscriber: Redis;
  /** BullMQ's own connection for taking jobs (it duplicates it for its blocking reads, and closes only those). */
  readonly #bullClient: Redis;
  readonly #bullQueue: Queue<FetchData>;
  readonly #jobs: SharedJobs;
  readonly #local: DownloadQueue;
  readonly #running = new Map<number, Running>();
  #bullWorker: Worker<FetchData> | undefined;
  #root: string | undefined;
  #closing = false;

  constructor(options: DownloadWorkerOptions) {
    super();
    this.#options = options;
    this.#url = checkRedisUrl(options.redis);
    this.#layout = layoutOf(options);
    this.#logger = options.logger ?? defaultLogger;
    this.#secret = options.secret || undefined;
    this.#client = patientClient(this.#url, "dlqueue-worker");
    this.#subscriber = patientClient(this.#url, "dlqueue-worker-control");
    this.#bullClient = patientClient(this.#url, "dlqueue-worker-bullmq");
    this.#bullQueue = new Queue<FetchData>(this.#layout.queueName, {
      connection: this.#client,
      prefix: this.#layout.prefix,
    });
    this.#bullQueue.on("error", () => {});
    this.#jobs = new SharedJobs(this.#client, this.#layout, this.#bullQueue);
    this.#local = new DownloadQueue({
      ...options.queueOptions,
      maxParallelDownloads: options.concurrency ?? 5,
      progressIntervalMs: options.progressIntervalMs ?? 250,
      logger: this.#logger,
    });
  }

  /** Starts taking jobs. Resolves once connected; while Redis is down it waits and retries, never rejects for that. */
  async start(): Promise<void> {
    if (this.#bullWorker) return;
    this.#root = await prepareRoot(this.#options.root);
    this.#subscriber.on("message", (_channel: string, message: string) => this.#onControl(message));
    await this.#subscriber.subscribe(this.#layout.control);
    // close() may have come while Redis was still out of reach: then no BullMQ worker is made to outlive it.
    if (this.#closing) return;
    const lockDuration = this.#options.lockDurationMs ?? 30_000;
    this.#bullWorker = new Worker<FetchData>(
      this.#layout.queueName,
      (job, token, signal) => this.#process(job, token, signal),
      {
        connection: this.#bullClient,
        prefix: this.#layout.prefix,
        concurrency: this.#options.concurrency ?? 5,
        lockDuration,
        stalledInterval: this.#options.stalledIntervalMs ?? lockDuration,
        maxStalledCount: this.#options.maxStalledCount ?? 5,
        autorun: true,
      },
    );
    // BullMQ does not stop a job whose lock it could not renew (Redis away longer than the lock): it hands the job to
    // another worker once the lock expires. This worker stops writing it, keeping the partial for that one.
    this.#bullWorker.on("lockRenewalFailed", (jobIds: string[]) => {
      for (const running of this.#running.values()) {
        if (jobIds.includes(running.bullJob.id as string)) this.#stopRunning(running, "lost");
      }
    });
    let lastComplaint = 0;
    this.#bullWorker.on("error", (err) => {
      // Every reconnection attempt reports; once a minute is enough to say Redis is gone.
      if (Date.now() - lastComplaint < 60_000) return;
      lastComplaint = Date.now();
      this.#logger.warn(`worker: Redis at ${redisWhere(this.#url)}: ${err.message}; retrying.`);
    });
    await this.#bullWorker.waitUntilReady();
  }

  /**
   * Stops taking jobs. Running ones are stopped with their partial files kept and go back to waiting, for any worker
   * (this one, started again, included) to resume.
   */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    for (const running of this.#running.values()) this.#stopRunning(running, "shutdown");
    await this.#bullWorker?.close();
    await this.#local.stop();
    await this.#bullQueue.close().catch(() => {});
    this.#subscriber.disconnect();
    this.#bullClient.disconnect();
    this.#client.disconnect();
  }

  async #process(
    bullJob: Job<FetchData>,
    token: string | undefined,
    signal: AbortSignal | undefined,
  ): Promise<unknown> {
    const { id } = bullJob.data;
    if (bullJob.name === DISCARD) return this.#discard(bullJob.data);
    const shared = await this.#jobs.get(id);
    if (!shared || isTerminal(shared.record.status)) return { status: shared?.record.status ?? "pruned" };
    const { record } = shared;
    if (shared.control === "cancel") {
      if (record.downloadPath !== undefined) await this.#discard({ id, path: record.downloadPath });
      const cancelled = await this.#finish(record, DownloadJobStatus.Cancelled, "download_cancelled");
      await this.#jobs.clearControl(id, "cancel");
      if (record.parentId !== undefined) await this.#partSettled(record.parentId, cancelled);
      return { status: "cancelled" };
    }
    if (shared.control === "pause") {
      await this.#jobs.put({ ...record, status: DownloadJobStatus.Paused }, "download_paused");
      await this.#jobs.clearControl(id, "pause");
      return { status: "paused" };
    }

    const running: Running = { id, bullJob };
    this.#running.set(id, running);
    signal?.addEventListener("abort", () => this.#stopRunning(running, running.reason ?? "lost"), { once: true });
    try {
      return await this.#run(shared, running, token);
    } finally {
      this.#running.delete(id);
    }
  }

  async #run(shared: SharedJob, running: Running, token: string | undefined): Promise<unknown> {
    const { record } = shared;
    const root = this.#root as string;
    let dest: string;
    let credentials: { accessToken?: string; headers?: Record<string, string> };
    let parentSource: string | undefined;
    try {
      dest = await resolveDest(root, record.dest);
      credentials = this.#open(shared.sealed);
      if (record.parentId !== undefined) parentSource = (await this.#jobs.get(record.parentId))?.record.source;
    } catch (err) {
      return this.#failBeforeStart(record, err);
    }
    const accessToken =
      credentials.accessToken ?? (parentSource ? modelPartToken(parentSource, record.source as string) : undefined);
    const headers = record.headers || credentials.headers ? { ...record.headers, ...credentials.headers } : undefined;

    let current: StoredJob = { ...record, status: DownloadJobStatus.Running };
    const write = (local: DownloadJob, event?: QueueEventName, override?: Partial<StoredJob>) => {
      current = {
        ...current,
        status: local.status,
        downloadPath: local.downloadPath === undefined ? current.downloadPath : relative(root, local.downloadPath),
        bytes: local.bytes,
        totalBytes: local.totalBytes,
        contentType: local.contentType ?? current.contentType,
        jobStarted: current.jobStarted ?? local.jobStarted?.toISOString(),
        jobEnded: local.jobEnded?.toISOString(),
        errorType: local.errorType,
        error: local.error,
        ...override,
      };
      const snapshot = current;
      if (event) this.#emitLocal(event, snapshot);
      return this.#jobs.put(snapshot, event).catch((err) => {
        this.#logger.warn(`worker: job ${record.id}: could not write its state to Redis (${(err as Error).message}).`);
      });
    };
    let progressWrite: Promise<void> = Promise.resolve();
    let lastBullProgress = 0;

    let onPaused: ((payload: { id: number }) => void) | undefined;
    const outcome = await new Promise<DownloadJob>((settle) => {
      const local = this.#local.download({
        source: record.source as string,
        dest,
        priority: record.priority,
        accessToken,
        headers,
        sha256: record.sha256,
        size: record.size,
        overwrite: record.overwrite,
        maxBytesPerSecond: record.maxBytesPerSecond,
        lease: bullJobId(record.id),
        onStart: (job) => void write(job, "download_started"),
        onProgress: (job) => {
          progressWrite = write(job, "download_progress");
          if (Date.now() - lastBullProgress >= 1000) {
            lastBullProgress = Date.now();
            running.bullJob.updateProgress({ bytes: job.bytes, total_bytes: job.totalBytes }).catch(() => {});
          }
        },
        onComplete: settle,
        onError: settle,
        onCancelled: settle,
      });
      running.local = local;
      onPaused = (payload: { id: number }) => {
        if (payload.id === local.id) settle(local);
      };
      this.#local.on("download_paused", onPaused);
      if (running.reason) this.#stopRunning(running, running.reason);
    });
    this.#local.off("download_paused", onPaused as (payload: { id: number }) => void);
    await progressWrite;
    // Whatever happens next to this job happens through Redis, maybe on another worker: the local engine lets go of
    // it, so a later run of it here starts afresh from the partial instead of attaching to this paused one.
    this.#local.forgetJob(outcome);
    const parent = record.parentId;
    switch (outcome.status) {
      case DownloadJobStatus.Completed:
        await write(outcome, "download_complete");
        if (parent !== undefined) await this.#partSettled(parent, current);
        return { status: "completed", download_path: current.downloadPath };
      case DownloadJobStatus.Error:
        if (outcome.errorType === "FileLockedError") {
          // Another worker still writes this file: one that lost its BullMQ lock while Redis was away, and has not
          // noticed yet. The job is not failed for that; it waits and looks again (finding it done, or the file free).
          await write(outcome, undefined, {
            status: DownloadJobStatus.Waiting,
            errorType: record.errorType,
            error: record.error,
            jobEnded: undefined,
          });
          await running.bullJob.moveToDelayed(Date.now() + LOCKED_RETRY_MS, token);
          throw new DelayedError();
        }
        await write(outcome, "download_error");
        if (parent !== undefined) await this.#partSettled(parent, current);
        throw new UnrecoverableError(`${outcome.errorType}: ${outcome.error}`);
      case DownloadJobStatus.Cancelled:
        await write(outcome, "download_cancelled");
        await this.#jobs.clearControl(record.id, "cancel");
        if (parent !== undefined) await this.#partSettled(parent, current);
        return { status: "cancelled" };
      default:
        return this.#afterPause(outcome, running, token, write);
    }
  }

  /** A pause asked for stays paused; a worker closing puts the job back for any worker; a lost lock leaves it. */
  async #afterPause(
    outcome: DownloadJob,
    running: Running,
    token: string | undefined,
    write: (local: DownloadJob, event?: QueueEventName, override?: Partial<StoredJob>) => Promise<void>,
  ): Promise<unknown> {
    if (running.reason === "pause") {
      await write(outcome, "download_paused");
      await this.#jobs.clearControl(running.id, "pause");
      return { status: "paused" };
    }
    if (running.reason === "shutdown") {
      await write(outcome, undefined, { status: DownloadJobStatus.Waiting });
      await running.bullJob.moveToWait(token);
      throw new WaitingError();
    }
    throw new Error(`job ${running.id}: this worker lost its lock; another worker goes on with it.`);
  }

  /** A multi-file job settles when one part fails or is cancelled (the others are cancelled), or all complete. */
  async #partSettled(parentId: number, part: StoredJob): Promise<void> {
    const parent = await this.#jobs.get(parentId);
    if (!parent || isTerminal(parent.record.status)) return;
    if (part.status === DownloadJobStatus.Completed) {
      const parts = await this.#jobs.getMany(parent.parts ?? []);
      if (!parts.every((p) => p.record.status === DownloadJobStatus.Completed)) return;
    }
    const status = part.status as "completed" | "error" | "cancelled";
    if (!(await this.#jobs.claimSettle(parentId, status))) return;
    const settled: StoredJob = {
      ...parent.record,
      status,
      ...(status === DownloadJobStatus.Error ? { errorType: part.errorType, error: part.error } : {}),
    };
    await this.#jobs.put(settled);
    await this.#jobs.publishSettled(settled);
    if (status === DownloadJobStatus.Completed) return;
    for (const sibling of parent.parts ?? []) if (sibling !== part.id) await this.#jobs.stopWaiting(sibling, "cancel");
  }

  async #failBeforeStart(record: StoredJob, err: unknown): Promise<never> {
    const error = err instanceof Error ? err : new Error(String(err));
    const failed: StoredJob = {
      ...record,
      status: DownloadJobStatus.Error,
      errorType: error instanceof DlqError ? error.errorType : error.name,
      error: error.message,
      jobEnded: new Date().toISOString(),
    };
    await this.#finish(failed, DownloadJobStatus.Error, "download_error");
    if (record.parentId !== undefined) await this.#partSettled(record.parentId, failed);
    throw new UnrecoverableError(`${failed.errorType}: ${failed.error}`);
  }

  async #finish(record: StoredJob, status: DownloadJobStatus, event: QueueEventName): Promise<StoredJob> {
    const finished: StoredJob = { ...record, status, jobEnded: record.jobEnded ?? new Date().toISOString() };
    this.#emitLocal(event, finished);
    await this.#jobs.put(finished, event);
    return finished;
  }

  /** The partial files a cancelled job left, deleted by whichever worker is free first. */
  async #discard(data: FetchData): Promise<{ status: string }> {
    if (data.path === undefined) return { status: "discarded" };
    try {
      await discardPartial(await resolveDest(this.#root as string, data.path));
    } catch (err) {
      this.#logger.warn(`worker: could not delete the partial of job ${data.id}: ${(err as Error).message}`);
    }
    return { status: "discarded" };
  }

  #open(sealed: string | undefined): { accessToken?: string; headers?: Record<string, string> } {
    if (sealed === undefined) return {};
    if (!this.#secret) {
      throw new DlqError(
        "This job carries a sealed token, and this worker has no DLQUEUE_SECRET to open it: start the worker with " +
          "the same DLQUEUE_SECRET as the API node that queued it.",
        "DLQ_ERR_SECRET_REQUIRED",
      );
    }
    return JSON.parse(openSecret(this.#secret, sealed)) as { accessToken?: string; headers?: Record<string, string> };
  }

  #onControl(raw: string): void {
    let message: ControlMessage;
    try {
      message = JSON.parse(raw) as ControlMessage;
    } catch {
      return;
    }
    const running = this.#running.get(message.id);
    if (!running) return;
    running.reason = message.action === "cancel" ? "cancel" : (running.reason ?? message.action);
    // BullMQ's AbortSignal reaches the job's processor; the engine is told directly too, in case BullMQ no longer
    // counts the job as its own.
    this.#bullWorker?.cancelJob(bullJobId(message.id), message.action);
    this.#stopRunning(running, message.action);
  }

  /**
   * Stops a running job through BullMQ's AbortSignal when BullMQ knows it, and directly on the local engine: a
   * cancel deletes the partial, anything else keeps it.
   */
  #stopRunning(running: Running, reason: StopReason): void {
    if (running.reason === undefined || reason === "cancel") running.reason = reason;
    const { local } = running;
    if (!local || local.inTerminalState || local.status === DownloadJobStatus.Paused) return;
    if (running.reason === "cancel") this.#local.cancelJob(local);
    else this.#local.pauseJob(local);
  }

  /** The worker's own events, for its console: the shared queue's, with paths on this worker's disk. */
  #emitLocal(event: QueueEventName, record: StoredJob): void {
    const root = this.#root as string;
    const { job } = fileJobOf({
      ...record,
      dest: join(root, record.dest),
      downloadPath: record.downloadPath === undefined ? undefined : join(root, record.downloadPath),
    });
    try {
      this.emit(event, eventPayload(event, job) as never);
    } catch (err) {
      this.#logger.error(`a ${event} listener threw: ${(err as Error).message}`);
    }
  }
}
