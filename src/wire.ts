/**
 * The one place where dlqueue's camelCase becomes the snake_case that InvokeAI's clients read: job JSON, event
 * payloads and REST bodies. The library's job JSON and events omit absent fields (InvokeAI's `exclude_none`); the REST
 * API's jobs carry every field, `null` when unset, as FastAPI sends them. Secrets never appear.
 */
import type { DownloadJob, DownloadJobStatus, MultiFileDownloadJob } from "./job.js";
import type { DownloadRequest, MultiFileDownloadRequest } from "./options.js";

export interface WireJob {
  source: string;
  dest: string;
  id: number;
  priority: number;
  status: DownloadJobStatus;
  download_path?: string;
  job_started?: string;
  job_ended?: string;
  bytes: number;
  total_bytes: number;
  error_type?: string;
  error?: string;
}

export interface WireMultiFileJob {
  id: number;
  /** A model job's source (queue.modelDownload()), with the commit and snapshot folder of an hf:// one. */
  source?: string;
  commit?: string;
  snapshot_path?: string;
  dest: string;
  status: DownloadJobStatus;
  download_path: string;
  bytes: number;
  total_bytes: number;
  error_type?: string;
  error?: string;
  download_parts: WireJob[];
}

export function jobToWire(job: DownloadJob): WireJob {
  return withoutUndefined({
    source: job.source,
    dest: job.dest,
    id: job.id,
    priority: job.priority,
    status: job.status,
    download_path: job.downloadPath,
    job_started: job.jobStarted?.toISOString(),
    job_ended: job.jobEnded?.toISOString(),
    bytes: job.bytes,
    total_bytes: job.totalBytes,
    error_type: job.errorType,
    error: job.error,
  });
}

export function multiJobToWire(job: MultiFileDownloadJob): WireMultiFileJob {
  return withoutUndefined({
    id: job.id,
    source: job.source,
    commit: job.commit,
    snapshot_path: job.snapshotPath,
    dest: job.dest,
    status: job.status,
    download_path: job.downloadPath,
    bytes: job.bytes,
    total_bytes: job.totalBytes,
    error_type: job.errorType,
    error: job.error,
    download_parts: job.downloadParts.map(jobToWire),
  });
}

/**
 * A job as InvokeAI's REST API sends it: FastAPI serializes every field of the pydantic model, `null` when unset,
 * where the library's JSON omits them (`exclude_none`). The model's `access_token` is never sent.
 */
export interface RestJob {
  source: string;
  dest: string;
  id: number;
  priority: number;
  status: DownloadJobStatus;
  download_path: string | null;
  job_started: string | null;
  job_ended: string | null;
  bytes: number;
  total_bytes: number;
  content_type: string | null;
  error_type: string | null;
  error: string | null;
}

export interface RestMultiFileJob {
  id: number;
  /** A model job's (not InvokeAI fields: present only when set). */
  source?: string;
  commit?: string;
  snapshot_path?: string;
  dest: string;
  status: DownloadJobStatus;
  download_path: string;
  bytes: number;
  total_bytes: number;
  error_type: string | null;
  error: string | null;
  download_parts: RestJob[];
}

export function jobToRest(job: DownloadJob): RestJob {
  return {
    source: job.source,
    dest: job.dest,
    id: job.id,
    priority: job.priority,
    status: job.status,
    download_path: job.downloadPath ?? null,
    job_started: job.jobStarted?.toISOString() ?? null,
    job_ended: job.jobEnded?.toISOString() ?? null,
    bytes: job.bytes,
    total_bytes: job.totalBytes,
    content_type: job.contentType ?? null,
    error_type: job.errorType ?? null,
    error: job.error ?? null,
  };
}

export function multiJobToRest(job: MultiFileDownloadJob): RestMultiFileJob {
  return {
    id: job.id,
    ...(job.source === undefined ? {} : { source: job.source }),
    ...(job.commit === undefined ? {} : { commit: job.commit }),
    ...(job.snapshotPath === undefined ? {} : { snapshot_path: job.snapshotPath }),
    dest: job.dest,
    status: job.status,
    download_path: job.downloadPath,
    bytes: job.bytes,
    total_bytes: job.totalBytes,
    error_type: job.errorType ?? null,
    error: job.error ?? null,
    download_parts: job.downloadParts.map(jobToRest),
  };
}

/** Payloads as the seed lists them for each event, plus the job's `id`. */
export interface QueueEventPayloads {
  download_started: { id: number; source: string; download_path: string };
  download_progress: { id: number; source: string; download_path: string; current_bytes: number; total_bytes: number };
  download_complete: { id: number; source: string; download_path: string; total_bytes: number };
  download_error: { id: number; source: string; error_type: string; error: string };
  download_cancelled: { id: number; source: string };
  download_paused: { id: number; source: string; download_path?: string; current_bytes: number; total_bytes: number };
}
export type QueueEventName = keyof QueueEventPayloads;
/** The queue's events as its EventEmitter types them: one payload each. */
export type QueueEvents = { [E in QueueEventName]: [payload: QueueEventPayloads[E]] };

export function eventPayload<E extends QueueEventName>(event: E, job: DownloadJob): QueueEventPayloads[E] {
  const base = { id: job.id, source: job.source };
  const path = job.downloadPath ?? job.dest;
  switch (event) {
    case "download_started":
      return { ...base, download_path: path } as QueueEventPayloads[E];
    case "download_progress":
      return {
        ...base,
        download_path: path,
        current_bytes: job.bytes,
        total_bytes: job.totalBytes,
      } as QueueEventPayloads[E];
    case "download_complete":
      return { ...base, download_path: path, total_bytes: job.totalBytes } as QueueEventPayloads[E];
    case "download_error":
      return { ...base, error_type: job.errorType ?? "Error", error: job.error ?? "" } as QueueEventPayloads[E];
    case "download_paused":
      return withoutUndefined({
        ...base,
        download_path: job.downloadPath,
        current_bytes: job.bytes,
        total_bytes: job.totalBytes,
      }) as QueueEventPayloads[E];
    default:
      return base as QueueEventPayloads[E];
  }
}

/** A copy without the undefined fields; deleting them instead would turn every object into a slow dictionary. */
function withoutUndefined<T extends object>(value: T): T {
  const copy = {} as T;
  for (const key in value) if (value[key] !== undefined) copy[key] = value[key];
  return copy;
}

/** The body of `POST /api/v1/download_queue/i/`, as InvokeAI's `download` route takes it. */
export interface WireDownloadRequest {
  source: string;
  dest: string;
  priority?: number;
  access_token?: string | null;
}

/** The body of `POST /api/v1/download_queue/multi/`: several files under one dest. */
export interface WireMultiFileDownloadRequest {
  parts: { url: string; path: string }[];
  dest: string;
  priority?: number;
  access_token?: string | null;
}

/** `dest` replaces the body's, for a service that resolves it inside its own root first. */
export function downloadRequestFromWire(body: WireDownloadRequest, dest = body.dest): DownloadRequest {
  return withoutUndefined({
    source: body.source,
    dest,
    priority: body.priority,
    accessToken: body.access_token ?? undefined,
  });
}

export function multiFileRequestFromWire(
  body: WireMultiFileDownloadRequest,
  dest = body.dest,
): MultiFileDownloadRequest {
  return withoutUndefined({
    parts: body.parts.map((part) => ({ url: part.url, path: part.path })),
    dest,
    priority: body.priority,
    accessToken: body.access_token ?? undefined,
  });
}
