import type { SnapshotPlan } from "../files/hf-cache.js";
import type { DownloadJobStatus } from "../job.js";

/**
 * What the queue persists about a job: enough to queue it again after any crash. Never a secret: a token is found
 * again through the queue's `tokens` rules, and credential headers are not kept.
 */
export interface StoredJob {
  id: number;
  /** A multi-file job, or a part of one (`parentId`). */
  kind: "file" | "multi";
  parentId?: number;
  source?: string;
  dest: string;
  /** dest names a folder that may not exist yet. */
  destIsFolder?: boolean;
  priority: number;
  status: DownloadJobStatus;
  downloadPath?: string;
  bytes: number;
  totalBytes: number;
  /** The response's Content-Type, as InvokeAI's job records it. */
  contentType?: string;
  jobStarted?: string;
  jobEnded?: string;
  errorType?: string;
  error?: string;
  sha256?: string;
  size?: number;
  headers?: Record<string, string>;
  /** The job's own rate limit (a multi-file job's, for all its parts). */
  maxBytesPerSecond?: number;
  /** Fetch even when the final file is already complete. */
  overwrite?: boolean;
  /** A model job's commit and snapshot folder (its model source is `source`). */
  commit?: string;
  snapshotPath?: string;
  /** A model job into the Hugging Face cache: what to link as its blobs complete. */
  snapshotPlan?: SnapshotPlan;
}

/**
 * Where jobs live between runs. The queue writes every state change through `put` and progress through
 * `progress`, which an implementation may batch; nothing else in dlqueue touches the storage itself.
 */
export interface JobStore {
  /** Every stored job, in id order. */
  load(): StoredJob[];
  /** A job id never handed out before, in this process or an earlier one. */
  nextId(): number;
  put(job: StoredJob): void;
  progress(id: number, bytes: number, totalBytes: number): void;
  delete(ids: readonly number[]): void;
  close(): void;
}

export class MemoryJobStore implements JobStore {
  readonly #jobs = new Map<number, StoredJob>();
  #nextId = 0;

  load(): StoredJob[] {
    return [...this.#jobs.values()].sort((a, b) => a.id - b.id);
  }

  nextId(): number {
    return this.#nextId++;
  }

  put(job: StoredJob): void {
    this.#jobs.set(job.id, job);
  }

  progress(id: number, bytes: number, totalBytes: number): void {
    const job = this.#jobs.get(id);
    if (job) Object.assign(job, { bytes, totalBytes });
  }

  delete(ids: readonly number[]): void {
    for (const id of ids) this.#jobs.delete(id);
  }

  close(): void {}
}
