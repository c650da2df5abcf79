import { EventEmitter } from "node:events";
import { stat } from "node:fs/promises";
import { basename, join, resolve, sep } from "node:path";
import type { Dispatcher } from "undici";
import { DlqError, InvalidArgumentError, QueueStoppedError, TimeoutError, UnknownJobIdError } from "./errors.js";
import { cachedBlob, finishSnapshot, incompleteBlobPath, linkBlob, type SnapshotPlan } from "./files/hf-cache.js";
import { discardPartial, partialsIn } from "./files/partial.js";
import { PriorityHeap } from "./heap.js";
import { DownloadJob, DownloadJobStatus, type ModelOrigin, MultiFileDownloadJob } from "./job.js";
import { LeaderIndex } from "./leaders.js";
import { type Logger, redact } from "./logger.js";
import type {
  DownloadCallbacks,
  DownloadQueueOptions,
  DownloadRequest,
  EventBus,
  ModelDownloadRequest,
  MultiFileDownloadRequest,
} from "./options.js";
import { CallbackSharing, Interruption, JobRuntime, MultiRuntime, pickCallbacks, settled } from "./runtime.js";
import { modelPartToken, planModel } from "./sources/model.js";
import { fileJobOf, fileRecord, multiJobOf, multiRecord } from "./store/records.js";
import { SqliteJobStore } from "./store/sqlite.js";
import { type JobStore, MemoryJobStore, type StoredJob } from "./store/store.js";
import { type ConnectionLender, type TransferResult, type TransferSettings, transfer } from "./transfer/http.js";
import { pacer, type RateLimiter, rateLimiter } from "./transfer/rate.js";
import {
  checkMultiFileRequest,
  checkRequest,
  jobOptions,
  resolveOptions,
  type TokenPattern,
  tokenFor,
} from "./validate.js";
import { eventPayload, type QueueEventName, type QueueEvents } from "./wire.js";

/**
 * A parallel download queue with priorities, callbacks, events, cancellation, multi-file jobs and resume: the
 * TypeScript form of InvokeAI's DownloadQueueService. Every change of a job's state happens in this class.
 */
export class DownloadQueue extends EventEmitter<QueueEvents> {
  readonly #maxParallel: number;
  readonly #eventBus: EventBus | undefined;
  readonly #tokens: readonly TokenPattern[];
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
  readonly #leaders = new LeaderIndex<JobRuntime>();
  /**
   * The part running for each file of a multi-file job, by its path, and the parts of other jobs that want the same
   * file meanwhile (two model jobs sharing a blob): those wait without a slot, then find the file complete.
   */
  readonly #partWriters = new Map<string, JobRuntime>();
  readonly #partsWaiting = new Map<string, JobRuntime[]>();
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
  readonly #callbacks = new CallbackSharing();
  /** Idle download slots lent to large files as extra connections (connectionsPerFile left automatic). */
  #borrowedSlots = 0;
  readonly #lender: ConnectionLender = {
    borrow: (wanted) => {
      const idle = this.#stopped ? 0 : this.#maxParallel - this.#running.size - this.#borrowedSlots;
      const lent = Math.max(0, Math.min(wanted, idle));
      this.#borrowedSlots += lent;
      return lent;
    },
    giveBack: (count) => {
      this.#borrowedSlots -= count;
    },
  };
  /** The last dest resolved, so jobs queued into one folder share one string. */
  #lastDest = { given: "", cwd: "", resolved: "" };

  constructor(options: DownloadQueueOptions = {}) {
    super();
    const resolved = resolveOptions(options);
    this.#maxParallel = resolved.maxParallelDownloads;
    this.#eventBus = resolved.eventBus;
    this.#tokens = resolved.tokens;
    this.#logger = resolved.logger;
    this.#progressIntervalMs = resolved.progressIntervalMs;
    this.#limiter = resolved.limiter;
    this.#ownDispatcher = resolved.ownDispatcher;
    this.#overwrite = resolved.overwrite;
    // One slot has none to lend: large files then stream over one connection, which also hashes them as they come.
    this.#settings = { ...resolved.settings, lender: this.#maxParallel > 1 ? this.#lender : undefined };
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
    const { dest, parts } = checkMultiFileRequest(request);
    const roots = new Set(parts.map((part) => part.path.split("/")[0]));
    const root =
      roots.size === 1 && parts.every((part) => part.path.includes("/")) ? join(dest, [...roots][0] as string) : dest;
    const withToken = parts.map((part) => ({ ...part, accessToken: request.accessToken }));
    return this.#multi(request, dest, root, withToken, undefined, undefined);
  }

  /**
   * Queues a model by its id: `hf://ORG/REPO[@REV][/PATH]` (the files of one commit, into `dest` or the Hugging Face
   * cache) or a Civitai model version (into `dest`). Resolves once the source is resolved and its files are queued,
   * as one MultiFileDownloadJob whose parts carry the hub's sha256 and size; rejects, before anything is written,
   * when the repo, revision or path does not exist, access is refused, or no file matches. In the cache, blobs
   * already complete are not fetched again, and the snapshot and the ref are written as huggingface_hub writes them.
   */
  async modelDownload(request: ModelDownloadRequest): Promise<MultiFileDownloadJob> {
    this.#assertOpen();
    const plan = await planModel(request, process.env, this.#listingFetch);
    this.#assertOpen();
    const { dest, parts } = checkMultiFileRequest({
      dest: plan.dest,
      parts: plan.parts.map((part) => ({ url: part.url, path: part.path, sha256: part.sha256, size: part.size })),
    });
    const checked = parts.map((part, i) => ({
      ...part,
      accessToken: plan.parts[i]?.accessToken,
      complete: plan.parts[i]?.complete,
    }));
    return this.#multi(request, dest, plan.downloadPath, checked, plan.origin, plan.snapshotPlan);
  }

  #multi(
    request: MultiFileDownloadRequest | ModelDownloadRequest,
    dest: string,
    root: string,
    parts: { source: string; path: string; sha256?: string; size?: number; accessToken?: string; complete?: boolean }[],
    origin: ModelOrigin | undefined,
    snapshotPlan: SnapshotPlan | undefined,
  ): MultiFileDownloadJob {
    const limiter = rateLimiter(request.maxBytesPerSecond, "maxBytesPerSecond");
    const id = this.#store.nextId();
    const multi = new MultiRuntime(
      new MultiFileDownloadJob(id, dest, root, [], origin),
      pickCallbacks(request),
      jobOptions(request),
      limiter,
      snapshotPlan,
    );
    for (const part of parts) {
      const partRequest: DownloadRequest = {
        source: part.source,
        dest: join(dest, part.path),
        priority: request.priority,
        accessToken: part.accessToken,
        headers: "headers" in request ? request.headers : undefined,
        sha256: part.sha256,
        size: part.size,
        overwrite: request.overwrite,
      };
      multi.parts.push(
        part.complete
          ? this.#alreadyComplete(partRequest, multi)
          : this.#submit(partRequest, { exactPath: true, parent: multi }),
      );
    }
    (multi.job.downloadParts as DownloadJob[]).push(...multi.parts.map((runtime) => runtime.job));
    this.#multiJobs.set(id, multi);
    if (multi.parts.every((part) => part.job.status === DownloadJobStatus.Completed)) {
      this.#settleMulti(multi, DownloadJobStatus.Completed);
    } else {
      this.#persistMulti(multi);
    }
    return multi.job;
  }

  /** A part whose file is already in place (a cached blob): listed, completed, never fetched. */
  #alreadyComplete(request: DownloadRequest, parent: MultiRuntime): JobRuntime {
    const { source, dest, priority, sha256, size } = checkRequest(request);
    const job = new DownloadJob(this.#store.nextId(), source, this.#resolveDest(dest), priority, sha256, size);
    const runtime = this.#track(
      job,
      {},
      {
        headers: undefined,
        accessToken: undefined,
        destIsFolder: false,
        exactPath: true,
        parent,
        limiter: parent.limiter,
        overwrite: request.overwrite,
      },
    );
    Object.assign(job, {
      status: DownloadJobStatus.Completed,
      downloadPath: job.dest,
      bytes: size ?? 0,
      totalBytes: size ?? 0,
      jobEnded: new Date(),
    });
    this.#persist(runtime);
    return runtime;
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

  /**
   * Forgets one job that is paused or finished, keeping what it left on disk: a paused job's partial is then free
   * for another queue or process to resume (a shared-queue worker hands paused jobs back to Redis this way), and a
   * later job for the same file starts afresh instead of attaching to the paused one.
   */
  forgetJob(job: DownloadJob | number): void {
    const id = typeof job === "number" ? job : job.id;
    const runtime = this.#jobs.get(id);
    if (!runtime) throw new UnknownJobIdError(id);
    const { status } = runtime.job;
    if (status === DownloadJobStatus.Waiting || status === DownloadJobStatus.Running || runtime.parent) {
      throw new InvalidArgumentError(
        runtime.parent
          ? `Job ${id} is a part of multi-file job ${runtime.parent.job.id}; pruneJobs() forgets it with that job.`
          : `Job ${id} is ${status}; pause or cancel it first.`,
      );
    }
    const forgotten = [runtime, ...runtime.followers];
    runtime.leader?.detach(runtime);
    this.#leaders.delete(runtime);
    for (const r of forgotten) this.#jobs.delete(r.job.id);
    this.#store.delete(forgotten.map((r) => r.job.id));
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
    const { source, dest, priority, sha256, size, lease } = checkRequest(request);
    const limiter = placement.parent
      ? placement.parent.limiter
      : rateLimiter(request.maxBytesPerSecond, "maxBytesPerSecond");
    const job = new DownloadJob(this.#store.nextId(), source, this.#resolveDest(dest), priority, sha256, size);
    const runtime = this.#track(job, this.#callbacks.of(request), {
      headers: request.headers,
      accessToken: request.accessToken,
      destIsFolder: !placement.exactPath && (dest.endsWith("/") || dest.endsWith(sep)),
      exactPath: placement.exactPath,
      parent: placement.parent,
      limiter,
      overwrite: request.overwrite,
      lease,
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
      "headers" | "accessToken" | "destIsFolder" | "exactPath" | "parent" | "limiter" | "overwrite" | "lease"
    >,
  ): JobRuntime {
    const runtime = new JobRuntime(
      job,
      callbacks,
      how.accessToken ?? tokenFor(this.#tokens, job.source),
      how.headers,
      how.destIsFolder,
      how.exactPath,
      how.parent,
      how.limiter,
      how.overwrite,
      how.lease,
    );
    this.#jobs.set(job.id, runtime);
    return runtime;
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
      const { job, options, snapshotPlan } = multiJobOf(record);
      const limiter = rateLimiter(options.maxBytesPerSecond, "maxBytesPerSecond");
      this.#multiJobs.set(record.id, new MultiRuntime(job, {}, options, limiter, snapshotPlan));
    }
    for (const record of stored.filter((r) => r.kind === "file")) {
      const { job, extras } = fileJobOf(record);
      const parent = extras.parentId === undefined ? undefined : this.#multiJobs.get(extras.parentId);
      const runtime = this.#track(
        job,
        {},
        {
          headers: extras.headers,
          accessToken: parent?.job.source === undefined ? undefined : modelPartToken(parent.job.source, job.source),
          destIsFolder: extras.destIsFolder,
          exactPath: parent !== undefined,
          parent,
          limiter: parent ? parent.limiter : rateLimiter(extras.maxBytesPerSecond, "maxBytesPerSecond"),
          overwrite: extras.overwrite,
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
    this.#store.put(
      fileRecord(runtime.job, {
        parentId: runtime.parent?.job.id,
        destIsFolder: runtime.destIsFolder,
        headers: runtime.headers,
        maxBytesPerSecond: runtime.parent ? undefined : runtime.limiter?.bytesPerSecond,
        overwrite: runtime.overwrite,
      }),
    );
  }

  #persistMulti(multi: MultiRuntime): void {
    this.#store.put(multiRecord(multi.job, multi.parts[0]?.priority ?? 10, multi.options, multi.snapshotPlan));
  }

  /** Queues a new job, or attaches it to the job already fetching the same URL into the same place. */
  #schedule(runtime: JobRuntime): void {
    const leader = this.#leaders.get(runtime.job);
    if (!leader || leader.job.inTerminalState || runtime.parent) {
      if (!runtime.parent) this.#leaders.set(runtime);
      this.#enqueue(runtime);
      return;
    }
    leader.attach(runtime);
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
      if (this.#waitsForWriter(runtime)) continue;
      const run = this.#run(runtime).finally(() => {
        this.#running.delete(runtime);
        this.#writerDone(runtime);
        this.#pump();
        if (this.#isIdle()) this.#wakeIdleWaiters();
      });
      this.#running.set(runtime, run);
    }
  }

  /**
   * A cache blob another job sharing it completed while this part waited for it: nothing to fetch, nor to hash
   * again (blobs are renamed into place whole, so the size is the check, as when the job was planned).
   */
  async #completedMeanwhile(runtime: JobRuntime): Promise<TransferResult | undefined> {
    const { job } = runtime;
    const plan = runtime.parent?.snapshotPlan;
    if (!plan || job.size === undefined || (runtime.overwrite ?? this.#overwrite)) return undefined;
    if (!(await cachedBlob(plan.folder, basename(job.dest), job.size))) return undefined;
    return { downloadPath: job.dest, bytes: job.size, totalBytes: job.size };
  }

  /** A part whose file another job's part is writing waits for it (see #partWriters); else it becomes the writer. */
  #waitsForWriter(runtime: JobRuntime): boolean {
    if (!runtime.parent) return false;
    const { dest } = runtime.job;
    const writer = this.#partWriters.get(dest);
    if (!writer) {
      this.#partWriters.set(dest, runtime);
      return false;
    }
    const waiting = this.#partsWaiting.get(dest);
    if (waiting) waiting.push(runtime);
    else this.#partsWaiting.set(dest, [runtime]);
    return true;
  }

  /** The writer of a part's file has stopped, whatever the outcome: the parts waiting for it run (and may skip). */
  #writerDone(runtime: JobRuntime): void {
    const { dest } = runtime.job;
    if (this.#partWriters.get(dest) !== runtime) return;
    this.#partWriters.delete(dest);
    const waiting = this.#partsWaiting.get(dest) ?? [];
    this.#partsWaiting.delete(dest);
    for (const part of waiting) if (part.job.status === DownloadJobStatus.Waiting) this.#enqueue(part);
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
      const destIsFolder = !runtime.exactPath && (runtime.destIsFolder || (await this.#isFolder(job.dest)));
      let result = await this.#completedMeanwhile(runtime);
      result ??= await transfer(
        {
          source: job.source,
          dest: job.dest,
          destIsFolder,
          downloadPath: job.downloadPath ?? (destIsFolder ? await this.#partialFor(job) : undefined),
          streamPartialPath: this.#streamPartialOf(runtime),
          accessToken: runtime.accessToken,
          headers: runtime.headers,
          expectedSize: job.size,
          sha256: job.sha256,
          overwrite: runtime.overwrite ?? this.#overwrite,
          lease: runtime.lease,
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
      const plan = runtime.parent?.snapshotPlan;
      if (plan) {
        // A cache-mode part is a blob: its snapshot paths link to it once it is whole; the last part writes the ref.
        // No await between that check and this part's settling below, so exactly one part sees all others completed.
        await linkBlob(plan, basename(job.dest));
        if (this.#othersCompleted(runtime)) await finishSnapshot(plan);
      }
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

  /**
   * A cache-mode part is a blob: one stream writes `<blob>.incomplete`, the name huggingface_hub resumes, so either
   * tool continues the other's (segments keep `<blob>.downloading`, which it ignores). Said by the job's snapshot
   * plan, which a restored job gets back from the store.
   */
  #streamPartialOf(runtime: JobRuntime): string | undefined {
    const plan = runtime.parent?.snapshotPlan;
    return plan ? incompleteBlobPath(plan.folder, basename(runtime.job.dest)) : undefined;
  }

  /** Removes a job's partial under whichever of its names it has. */
  async #discardPartials(runtime: JobRuntime, path: string): Promise<void> {
    await discardPartial(path);
    const stream = this.#streamPartialOf(runtime);
    if (stream) await discardPartial(path, stream);
  }

  #othersCompleted(runtime: JobRuntime): boolean {
    const parts = runtime.parent?.parts ?? [];
    return parts.every((part) => part === runtime || part.job.status === DownloadJobStatus.Completed);
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
      if (runtime.job.downloadPath) await this.#discardPartials(runtime, runtime.job.downloadPath);
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
      runtime.leader.detach(runtime);
      this.#settle(runtime, DownloadJobStatus.Cancelled);
      return;
    }
    if (job.status === DownloadJobStatus.Running && runtime.controller) {
      runtime.controller.abort(new Interruption("cancelled"));
      return;
    }
    // Waiting (or paused): no transfer to stop; its heap entry is skipped when popped. Another job's part writing
    // the same file owns the partial now.
    const writer = this.#partWriters.get(job.dest);
    if (job.downloadPath && (writer === undefined || writer === runtime)) {
      const path = job.downloadPath;
      this.#discardPartials(runtime, path).catch((err) =>
        this.#logger.warn(`could not delete the partial of ${path}: ${err}`),
      );
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
    this.#leaders.delete(runtime);
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

  /**
   * hf:// and Civitai API requests through the queue's own dispatcher, as its files go: its proxy, `ca` and address
   * guard apply to the listing too. Node's fetch is typed with its own copy of undici's Dispatcher, another version
   * of the interface dlqueue's undici implements (test/tls.test.ts runs this on Node 20 and CI on 24).
   */
  readonly #listingFetch: typeof fetch = (input, init) =>
    fetch(input, { ...init, dispatcher: this.#settings.dispatcher } as unknown as RequestInit);

  #emit(event: QueueEventName, job: DownloadJob): void {
    // A payload is a copy of the job in the seed's field names: not made for nobody.
    if (!this.#eventBus && this.listenerCount(event) === 0) return;
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
