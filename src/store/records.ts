/**
 * Jobs as a store keeps them and back: the one mapping between DownloadJob / MultiFileDownloadJob and StoredJob.
 * Never a secret: a token is found again through the `tokens` rules, and credential headers are not kept.
 */
import type { SnapshotPlan } from "../files/hf-cache.js";
import { DownloadJob, MultiFileDownloadJob } from "../job.js";
import type { JobOptions } from "../options.js";
import { CREDENTIAL_HEADERS } from "../transfer/http.js";
import type { StoredJob } from "./store.js";

/** What a stored single-file job keeps besides the job itself. */
export interface FileJobExtras {
  /** The multi-file job this is a part of. */
  parentId: number | undefined;
  /** dest names a folder that may not exist yet. */
  destIsFolder: boolean;
  headers: Record<string, string> | undefined;
  /** The job's own rate limit; a part's is its parent's, stored there. */
  maxBytesPerSecond: number | undefined;
  overwrite: boolean | undefined;
}

export function fileRecord(job: DownloadJob, extras: FileJobExtras): StoredJob {
  return {
    id: job.id,
    kind: "file",
    parentId: extras.parentId,
    source: job.source,
    dest: job.dest,
    destIsFolder: extras.destIsFolder || undefined,
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
    headers: withoutCredentials(extras.headers),
    maxBytesPerSecond: extras.maxBytesPerSecond,
    overwrite: extras.overwrite,
  };
}

/** `priority` is its parts' (a multi-file job has none of its own). */
export function multiRecord(
  job: MultiFileDownloadJob,
  priority: number,
  options: JobOptions,
  snapshotPlan: SnapshotPlan | undefined,
): StoredJob {
  return {
    id: job.id,
    kind: "multi",
    source: job.source,
    commit: job.commit,
    snapshotPath: job.snapshotPath,
    snapshotPlan,
    dest: job.dest,
    priority,
    status: job.status,
    downloadPath: job.downloadPath,
    bytes: job.bytes,
    totalBytes: job.totalBytes,
    errorType: job.errorType,
    error: job.error,
    ...options,
  };
}

export function fileJobOf(record: StoredJob): { job: DownloadJob; extras: FileJobExtras } {
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
  const extras: FileJobExtras = {
    parentId: record.parentId,
    destIsFolder: record.destIsFolder ?? false,
    headers: record.headers,
    maxBytesPerSecond: record.maxBytesPerSecond,
    overwrite: record.overwrite,
  };
  return { job, extras };
}

/** The job without its parts: they are file records of their own, restored after it. */
export function multiJobOf(record: StoredJob): {
  job: MultiFileDownloadJob;
  options: JobOptions;
  snapshotPlan: SnapshotPlan | undefined;
} {
  const origin =
    record.source === undefined
      ? undefined
      : { source: record.source, commit: record.commit, snapshotPath: record.snapshotPath };
  const job = new MultiFileDownloadJob(record.id, record.dest, record.downloadPath ?? record.dest, [], origin);
  Object.assign(job, { status: record.status, errorType: record.errorType, error: record.error });
  return {
    job,
    options: { maxBytesPerSecond: record.maxBytesPerSecond, overwrite: record.overwrite },
    snapshotPlan: record.snapshotPlan,
  };
}

function withoutCredentials(headers: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!headers) return undefined;
  return Object.fromEntries(Object.entries(headers).filter(([name]) => !CREDENTIAL_HEADERS.has(name.toLowerCase())));
}
