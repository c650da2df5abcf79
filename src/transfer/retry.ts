import { type IncomingHttpHeaders, STATUS_CODES } from "node:http";
import { HttpError } from "../errors.js";
import { header } from "./resume.js";

export interface BackoffSettings {
  retryDelayMs: number;
  maxRetryDelayMs: number;
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
  return new HttpError(status, STATUS_CODES[status] ?? "Unknown", href, retryAfterMs(headers));
}

function retryAfterMs(headers: IncomingHttpHeaders): number | undefined {
  const value = header(headers, "retry-after");
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}
