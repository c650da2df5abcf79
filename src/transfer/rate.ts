import { setTimeout as sleep } from "node:timers/promises";
import { InvalidArgumentError } from "../errors.js";

/** Bytes the limiter lets through without waiting after an idle spell: short bursts, no long catch-up sprint. */
const BURST_MS = 50;

/**
 * A bandwidth budget shared by everything that reads through it (one job, or the whole queue). Each chunk read
 * books the next free slot of time; a reader whose slot lies in the future is told to wait, and its socket stays
 * paused meanwhile (the kernel's receive window then slows the sender), so nothing piles up in memory.
 */
export class RateLimiter {
  readonly #msPerByte: number;
  /** When the bytes booked so far have been paid for (performance.now() time). */
  #paidUntil = 0;

  constructor(readonly bytesPerSecond: number) {
    this.#msPerByte = 1000 / bytesPerSecond;
  }

  /** Books `bytes`; the delay in ms before reading more (0: go on at once). */
  book(bytes: number): number {
    const now = performance.now();
    this.#paidUntil = Math.max(this.#paidUntil, now - BURST_MS) + bytes * this.#msPerByte;
    return Math.max(0, this.#paidUntil - now - BURST_MS);
  }
}

/** The limiter for an optional rate; validates it the way every other option is validated. */
export function rateLimiter(bytesPerSecond: number | undefined, name: string): RateLimiter | undefined {
  if (bytesPerSecond === undefined) return undefined;
  if (!Number.isFinite(bytesPerSecond) || bytesPerSecond <= 0) {
    throw new InvalidArgumentError(`${name} must be a positive number of bytes per second.`);
  }
  return new RateLimiter(bytesPerSecond);
}

/**
 * Paces reads through every limiter given (a job's own and the queue's: the slower one decides). Returns what a
 * chunk handler returns: nothing when the chunk fits the budget, else a promise that holds the socket until it does.
 */
export function pacer(
  limiters: readonly (RateLimiter | undefined)[],
  signal: AbortSignal,
): ((bytes: number) => Promise<void> | undefined) | undefined {
  const active = limiters.filter((l): l is RateLimiter => l !== undefined);
  if (active.length === 0) return undefined;
  return (bytes) => {
    let delay = 0;
    for (const limiter of active) delay = Math.max(delay, limiter.book(bytes));
    // An aborted transfer stops waiting at once: its response is already failing, and no timer is left behind.
    return delay > 0 ? sleep(delay, undefined, { signal }).catch(() => {}) : undefined;
  };
}

/** Waits for both the disk and the rate budget before the socket is read again. */
export function both(a: Promise<void> | undefined, b: Promise<void> | undefined): Promise<void> | undefined {
  if (!a) return b;
  if (!b) return a;
  return Promise.all([a, b]).then(() => undefined);
}
