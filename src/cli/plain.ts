/** Progress as plain lines, for output that is not a terminal. */
import { basename } from "node:path";
import type { DownloadJob } from "../job.js";
import { formatBytes, formatDuration, formatSpeed } from "../units.js";

/** A line at least this often for a download in progress, whatever its size. */
const PLAIN_INTERVAL_MS = 30_000;

/**
 * Progress for a log file, a CI log or `docker build` (stdout not a terminal): no bars, no escape sequences, and a
 * calm rate as wget's: a line when a download starts, at each tenth of it or every 30 s, and when it ends.
 */
export class PlainProgress {
  readonly #write: (line: string) => void;
  readonly #names: ReadonlyMap<number, string>;
  readonly #jobs = new Map<number, { startedAt: number; startBytes: number; lastAt: number; lastTenth: number }>();

  /** `names`: what to call a job other than its file's name (a model's part: its path in the repo). */
  constructor(write: (line: string) => void, names: ReadonlyMap<number, string> = new Map()) {
    this.#write = write;
    this.#names = names;
  }

  start(job: DownloadJob): void {
    const now = performance.now();
    const tenth = this.#tenth(job);
    this.#jobs.set(job.id, { startedAt: now, startBytes: job.bytes, lastAt: now, lastTenth: tenth });
    // A file complete before this run gets one line, when it is reported completed.
    if (job.totalBytes > 0 && job.bytes >= job.totalBytes) return;
    const size = job.totalBytes > 0 ? formatBytes(job.totalBytes) : "size unknown";
    const resumed = job.bytes > 0 ? `, resuming at ${formatBytes(job.bytes)}` : "";
    this.#write(`${fileName(job, this.#names)}: started (${size}${resumed}) from ${job.source}`);
  }

  progress(job: DownloadJob): void {
    const state = this.#jobs.get(job.id);
    if (!state || job.status !== "running") return;
    const now = performance.now();
    const tenth = this.#tenth(job);
    if (tenth <= state.lastTenth && now - state.lastAt < PLAIN_INTERVAL_MS) return;
    if (tenth >= 10) return;
    state.lastAt = now;
    state.lastTenth = tenth;
    const seconds = (now - state.startedAt) / 1000;
    const speed = seconds >= 0.2 ? `  ${formatSpeed((job.bytes - state.startBytes) / seconds)}` : "";
    const amount =
      job.totalBytes > 0
        ? `${Math.floor((job.bytes / job.totalBytes) * 100)}%  ${formatBytes(job.bytes)} of ${formatBytes(job.totalBytes)}`
        : formatBytes(job.bytes);
    this.#write(`${fileName(job, this.#names)}: ${amount}${speed}`);
  }

  end(job: DownloadJob): void {
    const state = this.#jobs.get(job.id);
    this.#jobs.delete(job.id);
    const name = fileName(job, this.#names);
    if (job.status === "completed") {
      if (!state || (job.bytes === state.startBytes && job.bytes > 0)) {
        this.#write(`${name}: already complete (${formatBytes(job.bytes)})`);
        return;
      }
      // Timed as the summary table times it (the job's start to its end), so the two lines agree.
      const seconds =
        job.jobStarted && job.jobEnded
          ? (job.jobEnded.getTime() - job.jobStarted.getTime()) / 1000
          : (performance.now() - state.startedAt) / 1000;
      const moved = job.bytes - state.startBytes;
      const speed = seconds > 0 && moved > 0 ? `, ${formatSpeed(moved / seconds)}` : "";
      this.#write(`${name}: done, ${formatBytes(job.bytes)} in ${formatDuration(seconds)}${speed}`);
    } else if (job.status === "error") {
      this.#write(`${name}: failed: ${job.errorType}`);
    } else if (job.status === "cancelled") {
      this.#write(`${name}: cancelled`);
    }
  }

  #tenth(job: DownloadJob): number {
    return job.totalBytes > 0 ? Math.floor((job.bytes / job.totalBytes) * 10) : 0;
  }
}

/** The file a job writes, or would write: named by its URL until the server has named it. */
export function fileName(job: DownloadJob, names?: ReadonlyMap<number, string>): string {
  const name = names?.get(job.id);
  if (name) return name;
  if (job.downloadPath) return basename(job.downloadPath);
  const last = new URL(job.source).pathname.split("/").filter(Boolean).at(-1);
  return last ? decodeURIComponentSafe(last) : job.source;
}

function decodeURIComponentSafe(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
