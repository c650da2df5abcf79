/**
 * Multi-connection downloads: one file fetched as byte ranges over several connections at once, each written in
 * place with positional writes into a partial preallocated to its full size. Which ranges are on disk is kept in
 * the ranges sidecar (see files/sidecars.ts), so an interrupted download (abort, crash, SIGKILL, a segment out of
 * retries) fetches only the gaps next time.
 */

import { constants } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import type { IncomingHttpHeaders } from "node:http";
import type { Dispatcher } from "undici";
import { classifyFailure, DlqError, fsError, TransferInterruptedError } from "../errors.js";
import { inFolder } from "../files/disk.js";
import {
  abandonSegments,
  doneBytes,
  readSegmentState,
  removeSegmentState,
  type SegmentState,
  segmentsPathOf,
  writeSegmentState,
} from "../files/sidecars.js";
import { PartialFile } from "../files/writer.js";
import { type ByteRange, gaps, halfway, merge, planSegments } from "./ranges.js";
import { both } from "./rate.js";
import { get } from "./request.js";
import { header, parseContentRange } from "./resume.js";
import { httpError, retryTransient } from "./retry.js";

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
   * Asked every SAVE_INTERVAL_MS while a segment is long enough to split: how many more connections may start now
   * (the queue's idle slots; see TransferSettings.lender). Never asked again once the server refused one.
   */
  moreConnections?(): number;
  /** The server answered 429 or 503 to one of several connections: the download goes on over `connections`. */
  onFewerConnections?(status: number, connections: number): void;
  /**
   * Flush the partial to the disk as it goes and before resolving, and let the sidecar list only ranges that are on
   * the disk (worth it for large files; the queue's `fsync` option).
   */
  durable?: boolean;
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
  const { totalBytes } = opts;
  if (!Number.isSafeInteger(totalBytes) || totalBytes < 0) throw new RangeError(`invalid totalBytes ${totalBytes}`);
  opts.signal.throwIfAborted();
  await new SegmentedDownload(opts).run();
}

/**
 * A 429 or 503 to one of several connections: that connection ends and hands its segment to the others, instead
 * of waiting for a server that has said it wants fewer connections.
 */
class TooManyConnections extends Error {
  constructor(readonly status: number) {
    super(`HTTP ${status} to an extra connection`);
  }
}

/** One call of downloadSegmented: the partial, its segments, the connections that fetch them and the sidecar. */
class SegmentedDownload {
  readonly #opts: SegmentedOptions;
  readonly #url: URL;
  readonly #minSegment: number;
  readonly #connections: number;
  readonly #requestHeaders: Record<string, string>;
  /** The If-Range value every request carries; the sidecar's ranges hold only under the same one. */
  readonly #validator: string | null;
  readonly #durable: boolean;
  /** Ends every request when one segment fails for good; the caller's signal ends them too. */
  readonly #stop = new AbortController();
  readonly #requestSignal: AbortSignal;
  #failure: unknown;
  /** Connections fetching now. */
  #live = 0;
  /** Every connection started, finished or not: run() waits for all of them. */
  readonly #runs: Promise<void>[] = [];
  /** The server refused a connection: none is added from then on. */
  #refused = false;

  /** Ranges on disk before this call: the sidecar's, or the caller's prefix. */
  #prior: ByteRange[] = [];
  readonly #segments: Segment[] = [];
  #pending: Segment[] = [];
  /** Segments a connection is fetching: the ones work stealing may split. */
  readonly #active = new Set<Segment>();
  /** Bytes on disk, prior ranges included. */
  #doneTotal = 0;

  /** Sidecar saves run one after another: the last one started, and one waiting (shared by all who ask). */
  #tail: Promise<void> = Promise.resolve();
  #queued: Promise<void> | undefined;
  #savedBytes = 0;

  constructor(opts: SegmentedOptions) {
    this.#opts = opts;
    this.#url = new URL(opts.url);
    this.#minSegment = Math.max(1, opts.minSegmentBytes ?? DEFAULT_MIN_SEGMENT_BYTES);
    this.#connections = Math.max(1, Math.floor(opts.connections));
    this.#requestHeaders = { "accept-encoding": "identity", ...lowerCaseKeys(opts.headers) };
    delete this.#requestHeaders.range;
    this.#validator = this.#requestHeaders["if-range"] ?? null;
    this.#durable = opts.durable ?? false;
    this.#requestSignal = AbortSignal.any([opts.signal, this.#stop.signal]);
  }

  async run(): Promise<void> {
    const file = await this.#open();
    this.#plan();
    const timer = setInterval(() => {
      if (this.#doneTotal !== this.#savedBytes) this.#save(file).catch((err) => this.#fail(this.#sidecarError(err)));
      this.#grow(file);
    }, SAVE_INTERVAL_MS);
    timer.unref();
    if (this.#doneTotal > 0) this.#opts.onBytes(this.#doneTotal);
    const workers = Math.min(this.#connections, Math.max(this.#pending.length, 1));
    for (let i = 0; i < workers; i++) this.#startConnection(file);
    for (let waited = 0; waited < this.#runs.length; ) {
      const runs = this.#runs.slice(waited);
      waited = this.#runs.length;
      await Promise.all(runs);
    }
    clearInterval(timer);
    const failure = this.#outcome();
    if (failure === undefined) await this.#complete(file);
    else await this.#keepForNextCall(file, failure);
  }

  /**
   * Opens the partial and decides what of it counts: the sidecar's ranges when they belong to this file, else
   * the caller's prefix. The sidecar is on disk before the file grows: a preallocated partial never exists
   * without one. A durable download records only ranges that are on the disk, not just in the page cache, so a
   * power cut cannot leave a sidecar that vouches for bytes that never landed.
   */
  async #open(): Promise<PartialFile> {
    const { partialPath, totalBytes, prefixBytes } = this.#opts;
    const previous = await readSegmentState(partialPath);
    let handle: FileHandle;
    try {
      handle = await inFolder(partialPath, () => open(partialPath, constants.O_RDWR | constants.O_CREAT, 0o644));
    } catch (err) {
      throw fsError(err, partialPath);
    }
    try {
      const size = (await handle.stat()).size;
      if (
        previous &&
        previous.totalBytes === totalBytes &&
        previous.validator === this.#validator &&
        size === totalBytes
      ) {
        this.#prior = previous.done;
      } else if (prefixBytes && prefixBytes > 0 && !previous) {
        this.#prior = [[0, Math.min(prefixBytes, size, totalBytes)]];
        if (this.#prior[0]?.[1] === 0) this.#prior = [];
      }
      if (this.#durable && this.#prior.length > 0) await handle.datasync();
      await writeSegmentState(partialPath, this.#state(), this.#durable);
      if (size !== totalBytes) await handle.truncate(totalBytes);
    } catch (err) {
      await handle.close().catch(() => {});
      throw fsError(err, partialPath);
    }
    return new PartialFile(handle, partialPath, this.#durable);
  }

  /** Cuts what is missing into about one segment per connection. */
  #plan(): void {
    this.#doneTotal = doneBytes({ done: this.#prior });
    this.#savedBytes = this.#doneTotal;
    this.#pending = planSegments(gaps(this.#prior, this.#opts.totalBytes), this.#connections, this.#minSegment).map(
      ([start, end]): Segment => ({ start, end, pos: start, written: start }),
    );
    this.#segments.push(...this.#pending);
  }

  /** What the sidecar says: the prior ranges and every segment's bytes on disk. */
  #state(): SegmentState {
    return {
      version: 1,
      totalBytes: this.#opts.totalBytes,
      validator: this.#validator,
      done: merge([
        ...this.#prior,
        ...this.#segments.filter((s) => s.written > s.start).map((s): ByteRange => [s.start, s.written]),
      ]),
    };
  }

  /**
   * Writes the sidecar. A request made while a save is waiting shares it, and each save snapshots the state when
   * it starts, so the newest state always lands last.
   */
  #save(file: PartialFile): Promise<void> {
    if (this.#queued) return this.#queued;
    const next = this.#tail.then(async () => {
      this.#queued = undefined;
      this.#savedBytes = this.#doneTotal;
      const snapshot = this.#state();
      // One flush serves both: it also resets the file's own every-64-MiB background flush.
      if (this.#durable) await file.sync();
      await writeSegmentState(this.#opts.partialPath, snapshot, this.#durable);
    });
    this.#queued = next;
    this.#tail = next.catch(() => {});
    return next;
  }

  #sidecarError(err: unknown): Error {
    return fsError(err, segmentsPathOf(this.#opts.partialPath));
  }

  #fail(err: unknown): void {
    this.#failure ??= err;
    this.#stop.abort(err);
  }

  #startConnection(file: PartialFile): void {
    this.#live++;
    this.#runs.push(this.#work(file).catch((err) => this.#fail(err)));
  }

  /** Starts the connections the caller can spare now, while some segment is long enough to split. */
  #grow(file: PartialFile): void {
    if (this.#refused || this.#requestSignal.aborted || !this.#opts.moreConnections || !this.#splittable()) return;
    const more = this.#opts.moreConnections();
    for (let i = 0; i < more; i++) this.#startConnection(file);
  }

  /**
   * One connection: takes segments (or half of another's) until none is left, saving the sidecar after each. It
   * counts itself out of #live the moment it stops taking segments, so a refused connection never leaves its range
   * to connections that have already looked for work and gone.
   */
  async #work(file: PartialFile): Promise<void> {
    let live = true;
    try {
      while (!this.#requestSignal.aborted) {
        const seg = this.#pending.shift() ?? this.#steal();
        if (!seg) return;
        this.#active.add(seg);
        try {
          await this.#fetchSegment(file, seg);
        } catch (err) {
          if (!(err instanceof TooManyConnections)) throw err;
          this.#pending.unshift(seg);
          live = false;
          if (this.#live > 0) {
            this.#opts.onFewerConnections?.(err.status, this.#live);
            return;
          }
          // The others finished while this request was refused: it takes its range up again, now waiting out the
          // server's Retry-After as a lone connection does.
          this.#live++;
          live = true;
          continue;
        } finally {
          this.#active.delete(seg);
        }
        await this.#save(file);
      }
    } finally {
      if (live) this.#live--;
    }
  }

  /** The segment with the most bytes left, if it is worth splitting in two. */
  #splittable(): Segment | undefined {
    let victim: Segment | undefined;
    for (const s of this.#active) if (!victim || s.end - s.pos > victim.end - victim.pos) victim = s;
    return victim && victim.end - victim.pos >= 2 * this.#minSegment ? victim : undefined;
  }

  /** Another connection's segment, split in half: its owner stops at the new boundary. */
  #steal(): Segment | undefined {
    const victim = this.#splittable();
    if (!victim) return undefined;
    const mid = halfway(victim.pos, victim.end);
    const taken: Segment = { start: mid, end: victim.end, pos: mid, written: mid };
    victim.end = mid;
    this.#segments.push(taken);
    return taken;
  }

  /** A segment's requests until it is on disk; each retry asks only for what is still missing. */
  #fetchSegment(file: PartialFile, seg: Segment): Promise<void> {
    const { retries, retryDelayMs, maxRetryDelayMs, partialPath } = this.#opts;
    return retryTransient(() => this.#request(file, seg), {
      retries,
      retryDelayMs,
      maxRetryDelayMs: maxRetryDelayMs ?? DEFAULT_MAX_RETRY_DELAY_MS,
      signal: this.#requestSignal,
      progress: () => seg.written,
      classify: (err) => (err instanceof TooManyConnections ? err : classifyFailure(err, partialPath)),
      onRetry: (error, delayMs, failures) =>
        this.#opts.onRetry?.({ error, range: [seg.pos, seg.end], failures, delayMs }),
    });
  }

  /** One range request for the rest of a segment, written in place as it arrives. */
  async #request(file: PartialFile, seg: Segment): Promise<void> {
    const { totalBytes, pace } = this.#opts;
    const url = this.#url;
    const from = seg.pos;
    const to = seg.end;
    const response = await get(url, {
      dispatcher: this.#opts.dispatcher,
      headers: { ...this.#requestHeaders, range: `bytes=${from}-${to - 1}` },
      signal: this.#requestSignal,
      headersTimeoutMs: this.#opts.headersTimeoutMs,
      readTimeoutMs: this.#opts.readTimeoutMs,
    });
    const writer = file.writer(
      from,
      (end, bytes) => {
        seg.written = end;
        this.#doneTotal += bytes;
        this.#opts.onBytes(this.#doneTotal);
      },
      this.#connections,
    );
    try {
      // Counted out before any other connection can look, so two refusals at once cannot end the last connection.
      if ((response.statusCode === 429 || response.statusCode === 503) && this.#live > 1) {
        this.#live--;
        this.#refused = true;
        throw new TooManyConnections(response.statusCode);
      }
      checkResponse(response.statusCode, response.headers, url.href, from, to, totalBytes, this.#validator);
      await response.consume((chunk) => {
        // The segment may have shrunk since the request went out (work stealing): stop at its end. (undici also
        // hands over empty chunks, which must not read as that.)
        const left = seg.end - seg.pos;
        if (left <= 0) {
          response.cancel();
          return undefined;
        }
        const n = Math.min(chunk.length, left);
        if (n === 0) return undefined;
        seg.pos += n;
        const wait = both(writer.write(n < chunk.length ? chunk.subarray(0, n) : chunk), pace?.(n));
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
  }

  /** Why the connections stopped, if not because every byte is on disk. */
  #outcome(): unknown {
    if (this.#failure === undefined && this.#opts.signal.aborted) return this.#opts.signal.reason;
    if (this.#failure !== undefined) return this.#failure;
    const missing = gaps(this.#state().done, this.#opts.totalBytes);
    return missing.length > 0
      ? new TransferInterruptedError(`${this.#url.href}: ranges ${JSON.stringify(missing)} are missing`)
      : undefined;
  }

  /** Every byte is on disk: the partial is a whole file, and no sidecar is needed any more. */
  async #complete(file: PartialFile): Promise<void> {
    try {
      await this.#tail;
    } catch (err) {
      await file.close(false);
      throw this.#sidecarError(err);
    }
    await file.close(true);
    await removeSegmentState(this.#opts.partialPath);
  }

  /** Failed or aborted: keep what is on disk for the next call, unless ranges cannot work here at all. */
  async #keepForNextCall(file: PartialFile, failure: unknown): Promise<never> {
    await this.#save(file).catch(() => {});
    await file.close(false).catch(() => {});
    if (this.#opts.signal.aborted) throw this.#opts.signal.reason;
    if (failure instanceof RangeNotSupportedError) {
      await abandonSegments(this.#opts.partialPath, failure.problem !== "changed");
    }
    throw failure;
  }
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

function lowerCaseKeys(headers: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
}
