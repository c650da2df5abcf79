/**
 * The shared queue's options: where Redis is and which queue on it, for API nodes (RedisDownloadQueue) and workers
 * (DownloadWorker) alike. Types only, so the CLI and the server can name them without loading BullMQ.
 */
import type { Logger } from "../logger.js";
import type { DownloadQueueOptions } from "../options.js";

export interface SharedQueueOptions {
  /** `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS). */
  redis: string;
  /** The BullMQ queue's name (default "dlqueue"); API nodes and workers of one queue give the same. */
  queueName?: string;
  /** BullMQ's key prefix (default "bull", as Bull Board expects). */
  prefix?: string;
  /**
   * Shared secret (DLQUEUE_SECRET) that lets per-job tokens and credential headers be queued: they are stored
   * sealed with AES-256-GCM under a key derived from it, and only holders of the same secret can open them.
   * Without it, such jobs are refused.
   */
  secret?: string;
  logger?: Logger;
}

export interface RedisDownloadQueueOptions extends SharedQueueOptions {
  /**
   * The folder the API node sees the workers' root as (`serve --root`): an absolute dest under it is stored
   * relative to it, and paths in jobs read back are shown under it. Without it, dest must be relative and jobs
   * show paths relative to the workers' root.
   */
  root?: string;
}

export interface DownloadWorkerOptions extends SharedQueueOptions {
  /** Where this worker writes: each job's dest is resolved inside it, and may not leave it. */
  root: string;
  /** Jobs this worker runs at once (`-j`, default 5). */
  concurrency?: number;
  /**
   * The local engine's settings (connectionsPerFile, fsync, tokens, retries, timeouts, dispatcher…). Not
   * `maxParallelDownloads` (that is `concurrency`) nor `store` (jobs live in Redis).
   */
  queueOptions?: Omit<DownloadQueueOptions, "maxParallelDownloads" | "store">;
  /**
   * How long a worker holds a job without renewing its lock before another worker may take the job over (default
   * 30000 ms, BullMQ's). A worker renews it every half of this while it runs; a killed worker's jobs are taken up
   * once it expires.
   */
  lockDurationMs?: number;
  /** How often this worker looks for jobs whose worker died (default: lockDurationMs). */
  stalledIntervalMs?: number;
  /** Times a job may lose its worker before it fails (default 5). */
  maxStalledCount?: number;
  /** How often a running job's bytes are written to Redis and published (default 250 ms). */
  progressIntervalMs?: number;
}
