/**
 * What the in-process queue carries for a job besides the job itself: its callbacks, credentials, the transfer it
 * shares, its abort controller and its waiters. None of it is job state: the queue alone writes that.
 */
import type { SnapshotPlan } from "./files/hf-cache.js";
import type { DownloadJob, MultiFileDownloadJob } from "./job.js";
import type { DownloadCallbacks, JobOptions } from "./options.js";
import type { RateLimiter } from "./transfer/rate.js";

/** Why a running transfer was aborted; decides the state it lands in. */
export class Interruption {
  constructor(readonly to: "cancelled" | "paused" | "waiting") {}
}

export interface Settled<J> {
  promise: Promise<J>;
  resolve: (job: J) => void;
}

export function settled<J>(): Settled<J> {
  let resolveFn: (job: J) => void = () => {};
  const promise = new Promise<J>((r) => {
    resolveFn = r;
  });
  return { promise, resolve: resolveFn };
}

/** Shared by every job that has no follower yet (frozen: attaching replaces it, never pushes to it). */
const NO_FOLLOWERS = Object.freeze([]) as unknown as JobRuntime[];
const NO_CALLBACKS: { readonly [K in keyof DownloadCallbacks<unknown>]?: undefined } = Object.freeze({});

/** A request's callbacks without the request itself; one shared empty object when it has none. */
export function pickCallbacks<J>(request: DownloadCallbacks<J>): DownloadCallbacks<J> {
  const { onStart, onProgress, onComplete, onCancelled, onError } = request;
  if (!onStart && !onProgress && !onComplete && !onCancelled && !onError) return NO_CALLBACKS;
  return { onStart, onProgress, onComplete, onCancelled, onError };
}

/**
 * Hands out the request's callbacks, without keeping the request itself (nor its source string) alive: the same
 * object as the previous job's when the functions are the same, as when a loop queues many jobs with one onError.
 */
export class CallbackSharing {
  #last: DownloadCallbacks<DownloadJob> = NO_CALLBACKS;

  of(request: DownloadCallbacks<DownloadJob>): DownloadCallbacks<DownloadJob> {
    const last = this.#last;
    if (
      request.onStart === last.onStart &&
      request.onProgress === last.onProgress &&
      request.onComplete === last.onComplete &&
      request.onCancelled === last.onCancelled &&
      request.onError === last.onError
    ) {
      return last;
    }
    this.#last = pickCallbacks(request);
    return this.#last;
  }
}

/**
 * What the queue keeps about one job besides the job itself, for as long as the job is listed; 100,000 may wait at
 * once, so it holds only what a waiting job needs. A class, so every runtime shares one hidden class (an object
 * literal built with a spread got a hidden class of its own per job, about 1 KB each). What only a running job
 * needs (its AbortController) is created when it runs, a waitForJob() promise by the first waitForJob().
 */
export class JobRuntime {
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
    readonly destIsFolder: boolean,
    /** Multi-file parts always write to their exact path. */
    readonly exactPath: boolean,
    readonly parent: MultiRuntime | undefined,
    /** This job's own rate limit (a multi-file part shares its parent's). */
    readonly limiter: RateLimiter | undefined,
    /** Fetch even when the final file is already complete; undefined: the queue's `overwrite`. */
    readonly overwrite: boolean | undefined,
    /** The request's `lease`, for the file lock; never in the store (a restored job has none). */
    readonly lease?: string,
  ) {}

  /** For the heap. */
  get priority(): number {
    return this.job.priority;
  }

  /** Makes `follower` share this job's transfer. */
  attach(follower: JobRuntime): void {
    follower.leader = this;
    if (this.followers === NO_FOLLOWERS) this.followers = [follower];
    else this.followers.push(follower);
  }

  /** Lets `follower` give up alone; the shared transfer goes on for the others. */
  detach(follower: JobRuntime): void {
    this.followers.splice(this.followers.indexOf(follower), 1);
  }
}

export class MultiRuntime {
  readonly parts: JobRuntime[] = [];
  readonly done: Settled<MultiFileDownloadJob> = settled();
  lastProgressAt = 0;
  lastProgressBytes = -1;

  constructor(
    readonly job: MultiFileDownloadJob,
    readonly callbacks: DownloadCallbacks<MultiFileDownloadJob>,
    readonly options: JobOptions,
    /** The job's rate limit, shared by its parts. */
    readonly limiter: RateLimiter | undefined,
    /** A model job into the Hugging Face cache: each part is a blob, linked into the snapshot once complete. */
    readonly snapshotPlan: SnapshotPlan | undefined,
  ) {}
}
