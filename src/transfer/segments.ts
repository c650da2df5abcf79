/**
 * Multi-connection downloads (issue 6): one file fetched as byte ranges over several connections at once, each
 * written in place with positional writes into a partial preallocated to its full size.
 *
 * Which ranges are on disk is kept in a sidecar, `<partial>.segments.json`, so an interrupted download (abort,
 * crash, SIGKILL, a segment out of retries) fetches only the gaps next time. Invariant: while a partial is
 * preallocated, its sidecar exists (it is written before the first ftruncate and removed only after the last
 * byte is on disk), so a partial without a sidecar is always a plain prefix that a single stream can resume.
 */

import { constants } from "node:fs";
import { type FileHandle, mkdir, open, readFile, rename, rm } from "node:fs/promises";
import type { IncomingHttpHeaders } from "node:http";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Dispatcher } from "undici";
import { classifyFailure, DlqError, fsError, HttpError, TransferInterruptedError } from "../errors.js";
import { segmentsPathOf } from "../files/partial.js";
import { PartialFile } from "../files/writer.js";
import { both } from "./rate.js";
import { get } from "./request.js";
import { header, parseContentRange } from "./resume.js";
import { backoff, httpError } from "./retry.js";

const DEFAULT_MIN_SEGMENT_BYTES = 1024 * 1024;
const DEFAULT_MAX_RETRY_DELAY_MS = 30_000;
/** The sidecar is rewritten at most this often while bytes arrive (and always when a segment ends). */
const SAVE_INTERVAL_MS = 500;

export interface SegmentedOptions {
  /** The final URL after redirects: every range request goes there directly. */
  url: URL | string;
  /** `<final>.downloading`: preallocated to `totalBytes` and written with positional writes. */
  partialPath: string;
  totalBytes: number;
  /** Connections at once (e.g. 8); fewer when the missing bytes do not split into that many segments. */
  connections: number;
  /** Sent with every range request (user-agent, authorization, If-Range with the validator of the file). */
  headers: Record<string, string>;
  dispatcher: Dispatcher;
  headersTimeoutMs: number;
  readTimeoutMs: number;
  signal: AbortSignal;
  /**
   * Bytes of the file on disk so far, finished ranges from earlier runs included: once at the start when some are,
   * then after every write.
   */
  onBytes(totalDone: number): void;
  /** Retries per segment of transient failures (drop, stall, 408/429/5xx); progress resets the count. */
  retries: number;
  /** First backoff delay; doubles per failure (with jitter) up to `maxRetryDelayMs` (default 30000). */
  retryDelayMs: number;
  maxRetryDelayMs?: number;
  /** A segment is never split below this (default 1 MiB). */
  minSegmentBytes?: number;
  /**
   * Bytes [0, prefixBytes) of the partial already hold the file: a single-stream partial whose validators the
   * caller checked. Ignored whenever a sidecar exists: then the partial is preallocated and its size means nothing.
   */
  prefixBytes?: number;
  /** Paces reads (the rate limits): a promise holds the socket paused until the bytes read are paid for. */
  pace?: (bytes: number) => Promise<void> | undefined;
  /** A segment is about to be retried (for the caller's log). */
  onRetry?(info: { error: Error; range: [number, number]; failures: number; delayMs: number }): void;
  /**
   * Flush the partial to the disk as it goes and before resolving, and let the sidecar list only ranges that are on
   * the disk (worth it for large files; the queue's `fsync` option).
   */
  durable?: boolean;
}

/** What the sidecar holds. `done` is sorted, merged, half-open [start, end) ranges that are on disk. */
export interface SegmentState {
  version: 1;
  totalBytes: number;
  /** The If-Range value the ranges were fetched under: another value means another file, so they are void. */
  validator: string | null;
  done: Array<[number, number]>;
}

export type RangeProblem = "ignored" | "bad-range" | "changed";

/**
 * The server did not answer a range request with the 206 and Content-Range asked for. The caller falls back to a
 * single stream. When this is thrown the sidecar is gone and the partial is a plain prefix again: the contiguous
 * bytes from 0 that were on disk (`problem` "ignored"/"bad-range"), or empty when the file changed ("changed").
 */
export class RangeNotSupportedError extends DlqError {
  readonly status: number;
  readonly problem: RangeProblem;

  constructor(url: string, status: number, problem: RangeProblem, detail: string) {
    super(
      `${url} cannot be fetched in segments (HTTP ${status}: ${detail}); falling back to one connection.`,
      "DLQ_ERR_RANGE_NOT_SUPPORTED",
    );
    this.status = status;
    this.problem = problem;
  }
}

/** The sidecar of a partial, if there is a readable one. */
export async function readSegmentState(partialPath: string): Promise<SegmentState | undefined> {
  try {
    const parsed = JSON.parse(await readFile(segmentsPathOf(partialPath), "utf8")) as Partial<SegmentState>;
    if (parsed?.version !== 1 || !Number.isSafeInteger(parsed.totalBytes) || !Array.isArray(parsed.done)) return;
    const total = parsed.totalBytes as number;
    const done = parsed.done.filter(
      (r): r is [number, number] =>
        Array.isArray(r) && Number.isSafeInteger(r[0]) && Number.isSafeInteger(r[1]) && 0 <= r[0] && r[0] < r[1],
    );
    if (done.some(([, end]) => end > total)) return undefined;
    return { version: 1, totalBytes: total, validator: parsed.validator ?? null, done: merge(done) };
  } catch {
    // Missing or torn: the partial's ranges cannot be trusted.
    return undefined;
  }
}

/** Bytes the sidecar says are on disk. */
export function doneBytes(state: Pick<SegmentState, "done">): number {
  return state.done.reduce((sum, [start, end]) => sum + end - start, 0);
}

/**
 * Turns a segmented partial back into a plain prefix for a single stream: truncates it to the finished bytes
 * contiguous from 0 and removes the sidecar. Returns that prefix's length. A partial without a sidecar is left
 * alone (it already is a prefix) and its size is not looked at: 0 is returned.
 */
export async function abandonSegments(partialPath: string, keepPrefix = true): Promise<number> {
  const state = await readSegmentState(partialPath);
  const sidecar = segmentsPathOf(partialPath);
  let prefix = 0;
  if (keepPrefix && state) {
    const first = state.done[0];
    prefix = first && first[0] === 0 ? first[1] : 0;
  }
  let handle: FileHandle | undefined;
  try {
    handle = await open(partialPath, "r+");
    await handle.truncate(prefix);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw fsError(err, partialPath);
  } finally {
    await handle?.close();
  }
  // The sidecar goes only once the partial no longer looks bigger than what it holds.
  await rm(sidecar, { force: true });
  await rm(`${sidecar}.tmp`, { force: true });
  return prefix;
}

interface Segment {
  readonly start: number;
  /** Exclusive; only ever shrinks, when another connection takes over the second half. */
  end: number;
  /** Bytes claimed by a write in flight or done: the next byte this segment will write. */
  pos: number;
  /** Bytes whose write finished: [start, written) is on disk. */
  written: number;
}

/**
 * Fetches every byte of [0, totalBytes) that the sidecar (or `prefixBytes`) does not already account for, over up
 * to `connections` range requests at once. Resolves once every byte is on disk and the sidecar is removed.
 * Rejects with the signal's reason when aborted, with RangeNotSupportedError when the server cannot serve ranges,
 * or with the error of a segment that failed for good (HttpError, TransferInterruptedError once out of retries,
 * a DestinationError for the disk); in the last two cases the sidecar keeps what was fetched for the next call.
 */
export async function downloadSegmented(opts: SegmentedOptions): Promise<void> {
  const { partialPath, totalBytes, signal } = opts;
  if (!Number.isSafeInteger(totalBytes) || totalBytes < 0) throw new RangeError(`invalid totalBytes ${totalBytes}`);
  signal.throwIfAborted();
  const url = new URL(opts.url);
  const minSegment = Math.max(1, opts.minSegmentBytes ?? DEFAULT_MIN_SEGMENT_BYTES);
  const connections = Math.max(1, Math.floor(opts.connections));
  const requestHeaders: Record<string, string> = { "accept-encoding": "identity", ...lowerCaseKeys(opts.headers) };
  delete requestHeaders.range;
  const validator = requestHeaders["if-range"] ?? null;
  const sidecar = segmentsPathOf(partialPath);
  const durable = opts.durable ?? false;
  const retryDelays = {
    retryDelayMs: opts.retryDelayMs,
    maxRetryDelayMs: opts.maxRetryDelayMs ?? DEFAULT_MAX_RETRY_DELAY_MS,
  };

  // What is already on disk.
  const previous = await readSegmentState(partialPath);
  let prior: Array<[number, number]> = [];
  let handle: FileHandle;
  try {
    await mkdir(dirname(partialPath), { recursive: true });
    handle = await open(partialPath, constants.O_RDWR | constants.O_CREAT, 0o644);
  } catch (err) {
    throw fsError(err, partialPath);
  }
  try {
    const size = (await handle.stat()).size;
    if (previous && previous.totalBytes === totalBytes && previous.validator === validator && size === totalBytes) {
      prior = previous.done;
    } else if (opts.prefixBytes && opts.prefixBytes > 0 && !previous) {
      prior = [[0, Math.min(opts.prefixBytes, size, totalBytes)]];
      if (prior[0]?.[1] === 0) prior = [];
    }
    // The sidecar is on disk before the file grows: a preallocated partial never exists without one. A durable
    // download records only ranges that are on the disk, not just in the page cache, so a power cut cannot leave a
    // sidecar that vouches for bytes that never landed.
    if (durable && prior.length > 0) await handle.datasync();
    await writeAtomic(sidecar, { version: 1, totalBytes, validator, done: prior }, durable);
    if (size !== totalBytes) await handle.truncate(totalBytes);
  } catch (err) {
    await handle.close().catch(() => {});
    throw fsError(err, partialPath);
  }
  const file = new PartialFile(handle, partialPath, durable);

  const priorBytes = doneBytes({ done: prior });
  let doneTotal = priorBytes;
  const segments: Segment[] = [];
  const pending: Segment[] = planSegments(gaps(prior, totalBytes), connections, minSegment).map(
    ([start, end]): Segment => ({ start, end, pos: start, written: start }),
  );
  segments.push(...pending);
  const active = new Set<Segment>();

  const stop = new AbortController();
  const requestSignal = AbortSignal.any([signal, stop.signal]);
  let failure: unknown;
  const fail = (err: unknown) => {
    failure ??= err;
    stop.abort(err);
  };

  const state = (): SegmentState => ({
    version: 1,
    totalBytes,
    validator,
    done: merge([
      ...prior,
      ...segments.filter((s) => s.written > s.start).map((s): [number, number] => [s.start, s.written]),
    ]),
  });
  // Sidecar saves run one after another; a request made while one is waiting shares it, and each save snapshots
  // the state when it starts, so the newest state always lands last.
  let tail: Promise<void> = Promise.resolve();
  let queued: Promise<void> | undefined;
  let savedBytes = priorBytes;
  const save = (): Promise<void> => {
    if (queued) return queued;
    const next = tail.then(async () => {
      queued = undefined;
      savedBytes = doneTotal;
      const snapshot = state();
      // One flush serves both: it also resets the file's own every-64-MiB background flush.
      if (durable) await file.sync();
      await writeAtomic(sidecar, snapshot, durable);
    });
    queued = next;
    tail = next.catch(() => {});
    return next;
  };
  const timer = setInterval(() => {
    if (doneTotal !== savedBytes) save().catch((err) => fail(fsError(err, sidecar)));
  }, SAVE_INTERVAL_MS);
  timer.unref();

  /** Another connection's segment, split in half: its owner stops at the new boundary. */
  const steal = (): Segment | undefined => {
    let victim: Segment | undefined;
    for (const s of active) if (!victim || s.end - s.pos > victim.end - victim.pos) victim = s;
    if (!victim || victim.end - victim.pos < 2 * minSegment) return undefined;
    const mid = victim.pos + Math.ceil((victim.end - victim.pos) / 2);
    const taken: Segment = { start: mid, end: victim.end, pos: mid, written: mid };
    victim.end = mid;
    segments.push(taken);
    return taken;
  };

  const fetchOnce = async (seg: Segment): Promise<void> => {
    const from = seg.pos;
    const to = seg.end;
    const response = await get(url, {
      dispatcher: opts.dispatcher,
      headers: { ...requestHeaders, range: `bytes=${from}-${to - 1}` },
      signal: requestSignal,
      headersTimeoutMs: opts.headersTimeoutMs,
      readTimeoutMs: opts.readTimeoutMs,
    });
    const writer = file.writer(
      from,
      (end, bytes) => {
        seg.written = end;
        doneTotal += bytes;
        opts.onBytes(doneTotal);
      },
      connections,
    );
    try {
      checkResponse(response.statusCode, response.headers, url.href, from, to, totalBytes, validator);
      await response.consume((chunk) => {
        // The segment may have shrunk since the request went out (work stealing): stop at its end.
        const n = Math.min(chunk.length, seg.end - seg.pos);
        if (n <= 0) {
          response.cancel();
          return undefined;
        }
        seg.pos += n;
        const wait = both(writer.write(n < chunk.length ? chunk.subarray(0, n) : chunk), opts.pace?.(n));
        // A stolen tail is not read: the connection closes. Otherwise the body's end keeps the connection reusable.
        if (seg.pos >= seg.end && seg.end < to) response.cancel();
        return wait;
      });
      await writer.flush();
    } finally {
      await response.discard();
      await writer.flush().catch(() => {});
      // Whatever did not reach the disk is fetched again.
      seg.pos = seg.written;
    }
    if (seg.pos < seg.end) {
      throw new TransferInterruptedError(`${url.href} ended bytes ${from}-${to - 1} after ${seg.pos - from} bytes`);
    }
  };

  const runSegment = async (seg: Segment): Promise<void> => {
    let failures = 0;
    while (seg.pos < seg.end) {
      const before = seg.written;
      try {
        await fetchOnce(seg);
      } catch (err) {
        if (requestSignal.aborted) throw requestSignal.reason;
        const error = classifyFailure(err, partialPath);
        if (seg.written > before) failures = 0;
        if (!(error instanceof DlqError && error.retryable) || failures >= opts.retries) throw error;
        failures++;
        const retryAfter = error instanceof HttpError ? error.retryAfterMs : undefined;
        const delayMs = backoff(failures, retryDelays, retryAfter);
        opts.onRetry?.({ error, range: [seg.pos, seg.end], failures, delayMs });
        await sleep(delayMs, undefined, { signal: requestSignal }).catch(() => {
          throw requestSignal.reason;
        });
      }
    }
  };

  const worker = async (): Promise<void> => {
    while (!requestSignal.aborted) {
      const seg = pending.shift() ?? steal();
      if (!seg) return;
      active.add(seg);
      try {
        await runSegment(seg);
      } finally {
        active.delete(seg);
      }
      await save();
    }
  };

  if (priorBytes > 0) opts.onBytes(priorBytes);
  const workers = Array.from({ length: Math.min(connections, Math.max(pending.length, 1)) }, () =>
    worker().catch(fail),
  );
  await Promise.all(workers);
  clearInterval(timer);

  if (failure === undefined && signal.aborted) failure = signal.reason;
  if (failure === undefined) {
    const missing = gaps(state().done, totalBytes);
    if (missing.length > 0)
      failure = new TransferInterruptedError(`${url.href}: ranges ${JSON.stringify(missing)} are missing`);
  }
  if (failure === undefined) {
    try {
      await tail;
    } catch (err) {
      await file.close(false);
      throw fsError(err, sidecar);
    }
    await file.close(true);
    await rm(sidecar, { force: true });
    return;
  }

  // Failed or aborted: keep what is on disk for the next call, unless ranges cannot work here at all.
  const saved = save().catch(() => {});
  await saved;
  await file.close(false).catch(() => {});
  if (signal.aborted) throw signal.reason;
  if (failure instanceof RangeNotSupportedError) {
    await abandonSegments(partialPath, failure.problem !== "changed");
  }
  throw failure;
}

/** Checks that a response is the 206 for exactly bytes [from, to) of the file we have been fetching. */
function checkResponse(
  status: number,
  headers: IncomingHttpHeaders,
  href: string,
  from: number,
  to: number,
  totalBytes: number,
  validator: string | null,
): void {
  if (status === 206) {
    const contentRange = header(headers, "content-range");
    const range = parseContentRange(contentRange);
    const match = contentRange ? /^bytes\s+\d+-(\d+)\//i.exec(contentRange.trim()) : null;
    if (range?.total !== undefined && range.total !== totalBytes) {
      throw new RangeNotSupportedError(
        href,
        status,
        "changed",
        `the file is now ${range.total} bytes, not ${totalBytes}`,
      );
    }
    const etag = header(headers, "etag");
    if (validator?.startsWith('"') && etag && !etag.startsWith("W/") && etag !== validator) {
      throw new RangeNotSupportedError(href, status, "changed", `ETag ${etag} is not ${validator}`);
    }
    if (!range || range.start !== from || !match || Number(match[1]) !== to - 1) {
      throw new RangeNotSupportedError(
        href,
        status,
        "bad-range",
        `asked for bytes ${from}-${to - 1}, got Content-Range ${JSON.stringify(contentRange ?? null)}`,
      );
    }
    return;
  }
  if (status === 200) {
    const etag = header(headers, "etag");
    const lastModified = header(headers, "last-modified");
    // A 200 to an If-Range request means "not that version" when the server's validators moved on.
    const changed =
      validator !== null &&
      (etag !== undefined || lastModified !== undefined) &&
      etag !== validator &&
      lastModified !== validator;
    throw new RangeNotSupportedError(
      href,
      status,
      changed ? "changed" : "ignored",
      changed ? "the file changed on the server" : "the server ignored the Range header",
    );
  }
  if (status === 416) {
    throw new RangeNotSupportedError(href, status, "changed", `bytes ${from}-${to - 1} are not satisfiable`);
  }
  throw httpError(status, headers, href);
}

async function writeAtomic(path: string, state: SegmentState, durable: boolean): Promise<void> {
  const tmp = `${path}.tmp`;
  const file = await open(tmp, "w");
  try {
    await file.writeFile(JSON.stringify(state));
    if (durable) await file.datasync();
  } finally {
    await file.close();
  }
  await rename(tmp, path);
}

function lowerCaseKeys(headers: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
}

/** Sorted, merged copy of half-open ranges (touching ranges are merged too). */
export function merge(ranges: ReadonlyArray<readonly [number, number]>): Array<[number, number]> {
  const sorted = ranges.filter(([s, e]) => e > s).sort((a, b) => a[0] - b[0]);
  const out: Array<[number, number]> = [];
  for (const [start, end] of sorted) {
    const last = out.at(-1);
    if (last && start <= last[1]) last[1] = Math.max(last[1], end);
    else out.push([start, end]);
  }
  return out;
}

/** The parts of [0, total) that `done` (merged) does not cover. */
export function gaps(done: ReadonlyArray<readonly [number, number]>, total: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let pos = 0;
  for (const [start, end] of merge(done)) {
    if (start > pos) out.push([pos, Math.min(start, total)]);
    pos = Math.max(pos, end);
  }
  if (pos < total) out.push([pos, total]);
  return out;
}

/** Missing ranges cut into about `connections` segments, halving the largest while both halves stay ≥ min. */
export function planSegments(
  missing: ReadonlyArray<readonly [number, number]>,
  connections: number,
  minSegment: number,
): Array<[number, number]> {
  const out = missing.map(([s, e]): [number, number] => [s, e]);
  while (out.length < connections) {
    let largest = -1;
    for (let i = 0; i < out.length; i++) {
      const r = out[i] as [number, number];
      if (largest < 0 || r[1] - r[0] > (out[largest] as [number, number])[1] - (out[largest] as [number, number])[0])
        largest = i;
    }
    const r = out[largest];
    if (!r || r[1] - r[0] < 2 * minSegment) break;
    const mid = r[0] + Math.ceil((r[1] - r[0]) / 2);
    out.splice(largest, 1, [r[0], mid], [mid, r[1]]);
  }
  return out;
}
