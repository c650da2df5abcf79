import type { IncomingHttpHeaders } from "node:http";
import { createRequire } from "node:module";
import { setTimeout as sleep } from "node:timers/promises";
import { DlqError, HttpError } from "../errors.js";
import { header } from "./resume.js";

const require = createRequire(import.meta.url);

/**
 * The status's reason phrase, from node:http loaded on the first error: loading it costs 6 ms of every start, and
 * through require because on Node 24 an ESM import of node:http reads every export, which loads Node's own copy of
 * undici (17 ms and ~10 MB of a short `dlqueue get`) for nothing dlqueue uses.
 */
const reasonPhrase = (status: number): string =>
  (require("node:http") as typeof import("node:http")).STATUS_CODES[status] ?? "Unknown";

export interface BackoffSettings {
  retryDelayMs: number;
  maxRetryDelayMs: number;
}

export interface RetryPolicy extends BackoffSettings {
  /** Retries in a row without progress; an attempt that made progress starts the count again. */
  retries: number;
  signal: AbortSignal;
  /** Something that grows while an attempt makes progress (bytes on disk). */
  progress(): number;
  /** What a failure means (a DlqError says whether it is retryable); the rest fail at once. */
  classify(err: unknown): Error;
  /** A retry is about to wait `delayMs`: `failures` in a row without progress so far, this one included. */
  onRetry(error: Error, delayMs: number, failures: number): void;
  /** The error to end with once a failure is final (after `failures` retries in a row without progress). */
  giveUp?(error: Error, failures: number): Error | Promise<Error>;
}

/**
 * Runs `attempt` until it succeeds, retrying transient failures with backoff (honouring Retry-After). The budget
 * counts only retries in a row without progress, so a flaky link that keeps moving forward is never given up on.
 * An abort ends it at once with the signal's reason, during an attempt or the wait after one.
 */
export async function retryTransient<T>(attempt: () => Promise<T>, policy: RetryPolicy): Promise<T> {
  const { signal } = policy;
  let failures = 0;
  for (;;) {
    const before = policy.progress();
    try {
      return await attempt();
    } catch (err) {
      if (signal.aborted) throw signal.reason;
      const error = policy.classify(err);
      if (policy.progress() > before) failures = 0;
      if (!(error instanceof DlqError && error.retryable) || failures >= policy.retries) {
        throw policy.giveUp ? await policy.giveUp(error, failures) : error;
      }
      failures++;
      const delayMs = backoff(failures, policy, error instanceof HttpError ? error.retryAfterMs : undefined);
      policy.onRetry(error, delayMs, failures);
      await sleep(delayMs, undefined, { signal }).catch(() => {
        throw signal.reason;
      });
    }
  }
}

/**
 * How long to wait before retry number `failures` (from 1): what Retry-After asked for, else an exponential delay
 * with jitter, both capped at `maxRetryDelayMs`.
 */
export function backoff(failures: number, settings: BackoffSettings, retryAfterMs: number | undefined): number {
  if (retryAfterMs !== undefined) return Math.min(retryAfterMs, settings.maxRetryDelayMs);
  const exponential = Math.min(settings.maxRetryDelayMs, settings.retryDelayMs * 2 ** (failures - 1));
  // Jitter keeps many jobs that failed together from hammering the server together again.
  return Math.round(exponential * (0.5 + Math.random() * 0.5));
}

/** The error for a response status we cannot use, carrying the server's Retry-After for the backoff. */
export function httpError(status: number, headers: IncomingHttpHeaders, href: string): HttpError {
  return new HttpError(status, reasonPhrase(status), href, retryAfterMs(headers));
}

function retryAfterMs(headers: IncomingHttpHeaders): number | undefined {
  const value = header(headers, "retry-after");
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}
