/**
 * What a program (the REST service among them) can ask of a download queue, whichever holds the jobs: the
 * in-process DownloadQueue answers at once, RedisDownloadQueue (`dlqueue/redis`) with promises, since its jobs live
 * in Redis. Code written against this interface awaits every answer and works with both.
 */
import type { EventEmitter } from "node:events";
import type { DownloadJob, MultiFileDownloadJob } from "./job.js";
import type { DownloadRequest, ModelDownloadRequest, MultiFileDownloadRequest } from "./options.js";
import type { QueueEvents } from "./wire.js";

type MaybePromise<T> = T | Promise<T>;
type JobRef = DownloadJob | MultiFileDownloadJob | number;

export interface JobQueue extends EventEmitter<QueueEvents> {
  download(request: DownloadRequest): MaybePromise<DownloadJob>;
  multifileDownload(request: MultiFileDownloadRequest): MaybePromise<MultiFileDownloadJob>;
  modelDownload(request: ModelDownloadRequest): Promise<MultiFileDownloadJob>;
  listJobs(): MaybePromise<DownloadJob[]>;
  listMultifileJobs(): MaybePromise<MultiFileDownloadJob[]>;
  idToJob(id: number): MaybePromise<DownloadJob | MultiFileDownloadJob>;
  pruneJobs(): MaybePromise<void>;
  cancelJob(job: JobRef): MaybePromise<void>;
  pauseJob(job: JobRef): MaybePromise<void>;
  resumeJob(job: JobRef): MaybePromise<void>;
  cancelAllJobs(): MaybePromise<void>;
  join(): Promise<void>;
  waitForJob<J extends DownloadJob | MultiFileDownloadJob>(job: J, options?: { timeoutMs?: number }): Promise<J>;
  stop(): Promise<void>;
}
