import type { Hash } from "node:crypto";
import type { Stats } from "node:fs";
import { rename, stat } from "node:fs/promises";
import { createRequire } from "node:module";
import { join } from "node:path";
import type { Dispatcher } from "undici";
import {
  ChecksumMismatchError,
  classifyFailure,
  fsError,
  ResponseTooLargeError,
  SizeMismatchError,
  TooManyRedirectsError,
  TransferInterruptedError,
  UnsupportedSchemeError,
} from "../errors.js";
import { hashFileRange, removeIfPresent } from "../files/disk.js";
import { fileNameFor } from "../files/names.js";
import {
  commitPartial,
  discardPartial,
  finishedFile,
  lockPartial,
  openPartial,
  ownPartialPathOf,
  stampModified,
} from "../files/partial.js";
import {
  asPrefix,
  inspectPartial,
  NO_PARTIAL,
  type PartialOnDisk,
  partialPathOf,
  readSegmentState,
  removeSegmentState,
  type Validators,
  writeValidators,
} from "../files/sidecars.js";
import type { SpaceLedger } from "../files/space.js";
import type { Logger } from "../logger.js";
import { formatBytes } from "../units.js";
import { adoptionStart, OverlapCheck, OverlapMismatchError } from "./adopt.js";
import { both } from "./rate.js";
import { get, type Response } from "./request.js";
import {
  header,
  ifRangeFor,
  parseContentRange,
  planResponse,
  type ResumePlan,
  resumeHeaders,
  validatorsFrom,
} from "./resume.js";
import { httpError, retryTransient } from "./retry.js";
import { downloadSegmented, RangeNotSupportedError } from "./segments.js";

// node:crypto loads with the first download that has a sha256 to check: it costs 10 ms of every start otherwise.
const require = createRequire(import.meta.url);

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
/** Headers that authenticate; never sent to another host, never stored. */
export const CREDENTIAL_HEADERS = new Set(["authorization", "cookie", "proxy-authorization"]);
/** Below this a file is fetched again whole rather than resumed, so it needs no validator sidecar. */
const RESUMABLE_MIN_BYTES = 64 * 1024;
/** Files smaller than this gain nothing from several connections. */
const SEGMENTED_MIN_BYTES = 8 * 1024 * 1024;
/**
 * With connectionsPerFile left automatic, files this large borrow the queue's idle slots as extra connections, up
 * to AUTO_CONNECTIONS in all: when they start, and while they run as other jobs free their slots. Measured
 * (bench/results.md): on an origin capping each connection at 50 MB/s one 512 MiB file takes 3.1 s over 4
 * connections against 11.1 s over one; on a local nginx, where the CPU is the limit, 4 connections cost nothing
 * (2 GiB: 3.96 s against 4.26 s over one), and 8 files at once gained nothing from more than one connection each
 * (hence only idle slots).
 */
const AUTO_SEGMENTED_MIN_BYTES = 64 * 1024 * 1024;
const AUTO_CONNECTIONS = 4;
/**
 * How often a large file streaming over one connection looks for a slot another job has freed, and how much must
 * be left for it to go on in segments: below that, another request and reading the file back for its checksum
 * cost more than the extra connections save.
 */
const GROW_LOOK_MS = 500;
const GROW_MIN_REMAINING_BYTES = 32 * 1024 * 1024;
/** Small files are cheap to fetch again; for large ones an fsync before the rename is worth its cost. */
const FSYNC_MIN_BYTES = 8 * 1024 * 1024;

/** What #receive returns when it stopped to go on in segments (see #mayGrow). */
const GROWN = Symbol("grown");

export interface TransferSettings {
  dispatcher: Dispatcher;
  headersTimeoutMs: number;
  readTimeoutMs: number;
  retries: number;
  retryDelayMs: number;
  maxRetryDelayMs: number;
  maxRedirects: number;
  userAgent: string;
  /**
   * Parallel range requests per file of 8 MiB or more (aria2's -x); 1 streams each file over one connection.
   * Undefined: automatic, files of 64 MiB or more borrow idle slots from `lender`.
   */
  connectionsPerFile: number | undefined;
  /** The queue's idle download slots, lent to large files as extra connections (automatic connectionsPerFile). */
  lender?: ConnectionLender;
  /** Flush large files to the disk before the rename (see DownloadQueueOptions.fsync). */
  fsync: boolean;
  logger: Logger;
  /** Free space promised to the running transfers, so parallel jobs cannot overbook a disk together. */
  space: SpaceLedger;
  /** Called before each redirect is followed; throwing refuses it (the service's SSRF guard). */
  checkRedirect?: (url: URL) => void | Promise<void>;
}

export interface ConnectionLender {
  /** Up to `wanted` extra connections: as many as the queue has idle slots, maybe none. */
  borrow(wanted: number): number;
  giveBack(count: number): void;
}

export interface TransferRequest {
  source: string;
  dest: string;
  /** dest is a folder: the file name comes from the response. */
  destIsFolder: boolean;
  /** The final path from an earlier run, so its partial can be resumed before the name is known again. */
  downloadPath?: string;
  /**
   * Where one stream writes when not `<final>.downloading`: a Hugging Face cache blob's `<blob>.incomplete`, which
   * huggingface_hub resumes as a prefix. Segments never write there (a preallocated file would look finished to
   * it): they keep `<final>.downloading` and its ranges sidecar. Only for a job whose final path is known.
   */
  streamPartialPath?: string;
  /** Sent only to the origin of `source`, never to a host a redirect leads to. */
  accessToken?: string;
  headers?: Record<string, string>;
  expectedSize?: number;
  sha256?: string;
  /** Fetch even when the final path already holds the complete file. */
  overwrite?: boolean;
  /** The job's key across processes: may take over another host's lock that names it (see lockPartial). */
  lease?: string;
  /** Paces reads (the rate limits): a promise holds the socket paused until the bytes read are paid for. */
  pace?: (bytes: number) => Promise<void> | undefined;
}

export interface TransferObserver {
  /** Response headers accepted: where the bytes go, how many there will be, how many are already on disk. */
  onResponse(info: { downloadPath: string; totalBytes: number | undefined; contentType?: string; bytes: number }): void;
  onBytes(bytes: number): void;
}

export interface TransferResult {
  downloadPath: string;
  bytes: number;
  totalBytes: number;
}

/**
 * Fetches `req.source` into its final path: the one place where bytes are fetched and written. Retries transient
 * failures with exponential backoff (honouring Retry-After), resuming from what is on disk; an attempt that made
 * progress resets the count, so a flaky link that keeps moving forward is never given up on.
 */
export async function transfer(
  req: TransferRequest,
  settings: TransferSettings,
  observer: TransferObserver,
  signal: AbortSignal,
): Promise<TransferResult> {
  const file = new FileTransfer(req, settings, observer, signal);
  try {
    return await retryTransient(() => file.run(), {
      retries: settings.retries,
      retryDelayMs: settings.retryDelayMs,
      maxRetryDelayMs: settings.maxRetryDelayMs,
      signal,
      progress: () => file.bytes,
      classify: (err) =>
        classifyFailure(
          err,
          file.partialPath ?? (file.downloadPath ? partialPathOf(file.downloadPath) : "the destination"),
        ),
      onRetry: (error, delayMs, failures) => file.warnRetry(error, delayMs, failures),
      giveUp: async (error, failures) => {
        if (file.downloadPath && discardsPartial(error)) await discardPartial(file.downloadPath, file.partialPath);
        return error instanceof TransferInterruptedError ? file.gaveUp(error, failures) : error;
      },
    });
  } finally {
    await file.release();
  }
}

/** Bytes that cannot be the file we want are not worth keeping for a resume. */
function discardsPartial(error: Error): boolean {
  return (
    error instanceof ChecksumMismatchError ||
    error instanceof SizeMismatchError ||
    error instanceof ResponseTooLargeError
  );
}

/** One file's transfer, across all its attempts: remembers the resolved path and the bytes on disk between them. */
class FileTransfer {
  downloadPath: string | undefined;
  bytes = 0;
  readonly #sourceOrigin: string;
  /** The caller's checksum, or one the server published (Hugging Face's X-Linked-Etag for LFS files). */
  #sha256: string | undefined;
  #unlock: (() => Promise<void>) | undefined;
  /** Where the bytes go: the locked `.downloading` of the final path, or a small file's own partial. */
  #partialPath: string | undefined;
  get partialPath(): string | undefined {
    return this.#partialPath;
  }
  /** A small file's own partial not yet renamed into place: removed when the transfer ends. */
  #ownPartial: string | undefined;
  /** Cleared when the server turns out not to serve ranges properly. */
  #segmented: boolean;
  /** Retries of this job so far, of the whole file or of a segment: warnings number them in order. */
  #retried = 0;
  /** The accepted response's Last-Modified: the finished file gets it as its modification time. */
  #lastModified: string | undefined;
  #releaseSpace: (() => void) | undefined;
  /** The file at the final path turned out not to be the server's: it is replaced, whatever it looks like. */
  #ignoreFinished = false;
  /**
   * Extra connections borrowed from the queue's idle slots (automatic connectionsPerFile), held until the file goes on
   * over one stream or the transfer is released.
   */
  #borrowed = 0;
  /** A stream stopped to go on in segments over slots freed while it ran (see #mayGrow). */
  #grown = false;
  /** That stream's running sha256 and the bytes it covers, all on disk: the partial's prefix, while it is kept. */
  #carried: { hash: Hash; bytes: number } | undefined;

  constructor(
    readonly req: TransferRequest,
    readonly settings: TransferSettings,
    readonly observer: TransferObserver,
    readonly signal: AbortSignal,
  ) {
    this.downloadPath = req.downloadPath ?? (req.destIsFolder ? undefined : req.dest);
    this.#sourceOrigin = new URL(req.source).origin;
    this.#sha256 = req.sha256;
    this.#segmented = settings.connectionsPerFile === undefined || settings.connectionsPerFile > 1;
  }

  async release(): Promise<void> {
    this.#returnSlots();
    this.#releaseSpace?.();
    if (this.#ownPartial) await removeIfPresent(this.#ownPartial).catch(() => {});
    await this.#unlock?.();
    this.#unlock = undefined;
  }

  /** The user's connectionsPerFile, or automatically one plus what large files can borrow. */
  #connectionsFor(totalBytes: number): number {
    const chosen = this.settings.connectionsPerFile;
    if (chosen !== undefined) return chosen;
    if (totalBytes >= AUTO_SEGMENTED_MIN_BYTES) this.#borrow();
    return 1 + this.#borrowed;
  }

  /**
   * Whether a file of this size, streaming over one connection, may stop and go on in segments once slots free up
   * (automatic connectionsPerFile; once per transfer).
   */
  #mayGrow(totalBytes: number): boolean {
    return (
      !this.#grown &&
      this.settings.connectionsPerFile === undefined &&
      this.settings.lender !== undefined &&
      totalBytes >= AUTO_SEGMENTED_MIN_BYTES
    );
  }

  /** One stream from here on: borrowed slots go back now, for another large file to borrow. */
  #returnSlots(): void {
    this.settings.lender?.giveBack(this.#borrowed);
    this.#borrowed = 0;
  }

  /** Borrows what idle slots there are, up to AUTO_CONNECTIONS in all; returns how many more it got. */
  #borrow(): number {
    const lent = this.settings.lender?.borrow(AUTO_CONNECTIONS - 1 - this.#borrowed) ?? 0;
    this.#borrowed += lent;
    return lent;
  }

  /** Logs a retry: one number per job that only grows, the rule of the budget, and the URL once. */
  warnRetry(error: Error, delayMs: number, failures: number, range?: [number, number]): void {
    this.#retried++;
    const what = range ? `bytes ${range[0]}-${range[1]}: ${error.message}` : error.message;
    this.settings.logger.warn(
      `retry ${this.#retried} in ${(delayMs / 1000).toFixed(1)} s (${failures} of ${this.settings.retries} in a row ` +
        `without progress): ${naming(this.req.source, what)}`,
    );
  }

  /** The error a job ends with when it runs out of retries: it stopped, and what is on disk waits for a next run. */
  gaveUp(error: TransferInterruptedError, failures: number): TransferInterruptedError {
    const kept = this.bytes > 0 ? `; the ${formatBytes(this.bytes)} on disk are kept` : "";
    const stopped =
      failures === 0 ? "Stopped (retries are off)" : `Stopped after ${failures} retries in a row without progress`;
    return new TransferInterruptedError(
      `${naming(this.req.source, error.message)}. ${stopped}${kept}: run the download again to resume.`,
      { cause: error },
    );
  }

  /** One writer per final path: taken once the path is known, held across retries. */
  async #claim(path: string): Promise<void> {
    this.#unlock ??= await lockPartial(path, this.req.lease);
    this.#partialPath = await this.#partialOnDisk(path);
  }

  /**
   * Which of the final path's two partial names holds its bytes: the segments' (`.downloading`, with its ranges
   * sidecar), or the one a stream writes (see TransferRequest.streamPartialPath). Usually they are one name.
   */
  async #partialOnDisk(path: string): Promise<string> {
    const segments = partialPathOf(path);
    const stream = this.req.streamPartialPath ?? segments;
    if (stream === segments) return segments;
    if (await readSegmentState(segments)) return segments;
    // Segments given up (a server that stopped serving ranges) leave a plain prefix under their name.
    return (await exists(stream)) || !(await exists(segments)) ? stream : segments;
  }

  /**
   * Moves the partial to the name the writer about to start uses, keeping its first `keep` bytes (none: the old one
   * is removed), so a preallocated file never sits under a stream's name and a stream's prefix never under the
   * segments'.
   */
  async #movePartial(target: string, keep: number): Promise<void> {
    if (keep === 0) this.#carried = undefined;
    const current = this.#partialPath as string;
    if (current === target || current === this.#ownPartial) return;
    if (keep > 0) {
      try {
        await rename(current, target);
      } catch (err) {
        throw fsError(err, target);
      }
    } else {
      await removeIfPresent(current);
    }
    await removeSegmentState(current);
    this.#partialPath = target;
  }

  async run(): Promise<TransferResult> {
    // At most four requests: one that reveals the name, one that resumes that name's partial, one after a partial
    // turned out to belong to another version of the file, one after a foreign partial turned out not to be it.
    for (let pass = 0; pass < 4; pass++) {
      const path = this.downloadPath;
      if (path) await this.#claim(path);
      let partial: PartialOnDisk = path ? await inspectPartial(path, this.#partialPath) : NO_PARTIAL;
      // One stream can only continue a segmented partial's contiguous prefix; segments pick up their own sidecar.
      if (path && partial.kind === "segmented" && !this.#segmented)
        partial = await asPrefix(this.#partialPath as string, partial);
      const previous = partial.validators;
      const sameSource = previous?.source === this.req.source;
      const resumable = partial.kind === "prefix" && sameSource;
      const offset = resumable ? partial.bytes : 0;
      // Segments know from their sidecar what is missing; this request only has to confirm the file and its size,
      // so it asks for one byte under If-Range instead of a whole body to be cut off.
      const sizeProbe = partial.kind === "segmented" && previous && sameSource ? resumeProbe(previous) : undefined;
      // Into a folder the name comes with the response; a file there named as the URL ends is most likely the one
      // finished earlier, so it is checked like a known path (a response that names another file voids the check).
      const candidate =
        path ?? (this.#ignoreFinished ? undefined : join(this.req.dest, fileNameFor(this.req.source, undefined)));
      let finished = candidate && !resumable && !sizeProbe ? await this.#finishedFile(candidate) : undefined;
      if (finished && candidate && this.req.sha256) {
        // The caller's checksum decides without asking the server anything.
        if ((await this.#hashPrefix(finished.size, candidate))?.digest("hex") === this.req.sha256) {
          return this.#alreadyComplete(candidate, finished.size);
        }
        finished = undefined;
      }
      // A partial without validators (see adopt.ts) is continued only where the server's bytes are seen to match.
      const foreign = path && !finished && partial.kind === "prefix" && !previous ? partial.bytes : 0;
      const from = foreign ? adoptionStart(foreign, this.req.expectedSize) : undefined;
      if (foreign && from === undefined) {
        this.#startOver(`it is larger than the expected ${this.req.expectedSize} bytes`);
        await this.#discard(path as string);
        continue;
      }
      const { response, url } = await this.#get(
        from !== undefined
          ? { range: `bytes=${from}-` }
          : resumable
            ? resumeHeaders(offset, previous)
            : (sizeProbe ?? (finished ? stillCurrent(finished) : {})),
      );
      try {
        if (finished && candidate) {
          const total = parseContentRange(header(response.headers, "content-range"))?.total;
          const disposition = header(response.headers, "content-disposition");
          const named =
            path !== undefined ||
            disposition === undefined ||
            join(this.req.dest, fileNameFor(this.req.source, disposition)) === candidate;
          if (response.statusCode === 416 && total === finished.size && named) {
            await response.discard();
            return this.#alreadyComplete(candidate, finished.size);
          }
          if (path && (await this.#isFinished(response, finished, path))) {
            // Whatever of the body is already on its way is not read: the connection closes.
            response.cancel();
            return this.#alreadyComplete(path, finished.size);
          }
          if (response.statusCode !== 200) {
            // Same date, other size, another name: not the finished file. Ask again without the check.
            this.#ignoreFinished = true;
            continue;
          }
        }
        if (!path) {
          this.downloadPath = join(
            this.req.dest,
            fileNameFor(this.req.source, header(response.headers, "content-disposition")),
          );
          // The name the URL suggested was looked up before the request; again would add a seventh call to six.
          if (this.downloadPath !== candidate) finished = await this.#finishedFile(this.downloadPath);
          if (finished && (await this.#isFinished(response, finished, this.downloadPath))) {
            response.cancel();
            return this.#alreadyComplete(this.downloadPath, finished.size);
          }
          const length = Number(header(response.headers, "content-length") ?? Number.NaN);
          if (response.statusCode === 200 && length < RESUMABLE_MIN_BYTES) {
            // Fetched whole, never resumed: no lock, no look for an earlier partial (see ownPartialPathOf).
            this.#ownPartial = ownPartialPathOf(this.downloadPath);
            this.#partialPath = this.#ownPartial;
          } else {
            await this.#claim(this.downloadPath);
            if (
              response.statusCode < 300 &&
              (await inspectPartial(this.downloadPath, this.#partialPath)).kind !== "none"
            )
              continue;
          }
        }
        const finalPath = this.downloadPath as string;
        const plan = planResponse(response.statusCode, response.headers, from ?? offset, previous);
        if (!plan) throw httpError(response.statusCode, response.headers, url.href);
        if (from !== undefined) {
          const why = this.#adoptionRefused(plan, foreign);
          if (why) {
            this.#startOver(why);
            await this.#discard(finalPath);
            // A 200 is the whole file from its first byte: it is taken as it comes, as for any partial.
            if (plan.action !== "restart") continue;
          }
          if (plan.action === "complete") {
            this.#lastModified = header(response.headers, "last-modified");
            await response.discard();
            const hash = await this.#hashPrefix(foreign);
            if (hash && hash.digest("hex") !== this.#sha256?.toLowerCase()) {
              this.#startOver("its sha256 is not the file's");
              await this.#discard(finalPath);
              continue;
            }
            return await this.#finish(finalPath, foreign, foreign, undefined, false);
          }
        }
        if (plan.action === "refetch") {
          await this.#discard(finalPath);
          continue;
        }
        if (plan.action === "complete") {
          this.#lastModified = previous?.lastModified;
          await response.discard();
          return await this.#finish(finalPath, plan.totalBytes, plan.totalBytes, await this.#hashPrefix(offset), true);
        }
        const start = plan.action === "append" ? (from === undefined ? offset : foreign) : 0;
        const adopting = plan.action === "append" && from !== undefined;
        let mayGrow = false;
        try {
          this.#refuseWrongSize(url, plan.totalBytes);
          if (this.#segmented && plan.totalBytes !== undefined && plan.totalBytes >= SEGMENTED_MIN_BYTES) {
            const acceptsRanges = response.statusCode === 206 || header(response.headers, "accept-ranges") === "bytes";
            const connections = acceptsRanges ? this.#connectionsFor(plan.totalBytes) : 1;
            // A segmented partial goes on in segments even over one connection: its sidecar knows what is missing.
            if (connections > 1 || (acceptsRanges && partial.kind === "segmented")) {
              // An adopted prefix becomes the first finished range once its overlap matched; the segments ask for
              // the rest themselves, so this response is read no further.
              if (adopting) await this.#matchOverlap(response, url, from, start);
              await response.discard();
              return await this.#receiveSegmented(response, url, finalPath, start, plan.totalBytes, connections);
            }
            mayGrow = acceptsRanges && !adopting && this.#mayGrow(plan.totalBytes);
          }
          // Slots borrowed to go on in segments, when the server then sent the whole file, are of no use to it.
          this.#returnSlots();
          const received = await this.#receive(response, url, finalPath, start, plan.totalBytes, {
            overlapFrom: adopting ? from : undefined,
            mayGrow,
          });
          if (received !== GROWN) return received;
          // The next pass resumes the partial in segments; it is not one of the passes the server's changes take.
          pass--;
        } catch (err) {
          // Only the overlap was compared: a wrong byte before it shows in the checksum, and is no fault of the
          // server's, so the file is fetched again rather than failed.
          const foreignBytesWrong = adopting && err instanceof ChecksumMismatchError;
          if (!(err instanceof OverlapMismatchError) && !foreignBytesWrong) throw err;
          this.#startOver(foreignBytesWrong ? "its sha256 is not the file's" : err.message);
          await this.#discard(finalPath);
        }
      } finally {
        // Whatever failed before the body was read (a size check, the disk) must still release the connection.
        await response.discard();
      }
    }
    throw new TransferInterruptedError(`${this.req.source} kept changing while it was being resumed`);
  }

  /** Reads the overlap of a foreign partial's `[from, size)` from the body, compares it, and lets the body go. */
  async #matchOverlap(response: Response, url: URL, from: number, size: number): Promise<void> {
    const overlap = await OverlapCheck.read(this.#partialPath as string, from, size);
    if (overlap.done) return;
    await response.consume((chunk) => {
      if (overlap.done) return undefined;
      const rest = overlap.take(chunk);
      if (overlap.done) response.cancel();
      return this.req.pace?.(chunk.length - rest.length);
    });
    if (!overlap.done)
      throw new TransferInterruptedError(`${url.href} ended before the bytes that overlap the partial`);
  }

  /** Why a response cannot continue a foreign partial of `size` bytes, if it cannot. */
  #adoptionRefused(plan: ResumePlan, size: number): string | undefined {
    if (plan.action === "restart") return "the server ignores Range and sends the whole file";
    if (plan.action === "refetch") return "the server cannot send its overlap";
    if (plan.totalBytes < size) return `it is larger than the server's ${plan.totalBytes} bytes`;
    if (plan.action === "complete" && plan.totalBytes !== size) return "the server's file ends before it";
    return undefined;
  }

  /** Removes the partial this transfer writes (whatever its name) and its sidecars. */
  async #discard(finalPath: string): Promise<void> {
    this.#carried = undefined;
    await discardPartial(finalPath, this.#partialPath);
  }

  /** Says, once per partial, why a partial that another tool left is not continued. */
  #startOver(why: string): void {
    this.settings.logger.warn(
      `${this.#partialPath} has no dlqueue sidecar and is not continued: ${why}; ` +
        `fetching ${this.req.source} from the start.`,
    );
  }

  /** A complete file at the final path that may be skipped (never when the caller asked to overwrite). */
  async #finishedFile(path: string): Promise<Stats | undefined> {
    if (this.req.overwrite || this.#ignoreFinished) return undefined;
    const stats = await finishedFile(path);
    if (!stats || (this.req.expectedSize !== undefined && stats.size !== this.req.expectedSize)) return undefined;
    return stats;
  }

  /**
   * Whether the file at the final path is the one this response would send: its sha256 when one is known, else
   * its size and the Last-Modified it was stamped with when it was fetched (see stampModified).
   */
  async #isFinished(response: Response, finished: Stats, path: string): Promise<boolean> {
    if (response.statusCode !== 200) return false;
    const length = Number(header(response.headers, "content-length"));
    if (length !== finished.size) return false;
    if (this.#sha256) return (await this.#hashPrefix(finished.size, path))?.digest("hex") === this.#sha256;
    const lastModified = Date.parse(header(response.headers, "last-modified") ?? "");
    return !Number.isNaN(lastModified) && Math.floor(lastModified / 1000) === Math.floor(finished.mtimeMs / 1000);
  }

  /** Reports a file finished by an earlier run as this job's result, as if it had just been fetched. */
  #alreadyComplete(path: string, size: number): TransferResult {
    this.bytes = size;
    this.observer.onResponse({ downloadPath: path, totalBytes: size, bytes: size });
    this.settings.logger.info(`${path} is already complete; not fetched again.`);
    return { downloadPath: path, bytes: size, totalBytes: size };
  }

  /** Promises the disk space the rest of the file needs, counting what the queue's other transfers still need. */
  async #reserveSpace(finalPath: string, start: number, totalBytes: number): Promise<void> {
    this.#releaseSpace?.();
    this.#releaseSpace = undefined;
    this.bytes = start;
    this.#releaseSpace = await this.settings.space.reserve(
      finalPath,
      totalBytes - start,
      () => totalBytes - this.bytes,
    );
  }

  async #get(extra: Record<string, string>): Promise<{ response: Response; url: URL }> {
    let url = new URL(this.req.source);
    for (let hops = 0; ; hops++) {
      const headers = { ...this.#headersFor(url), ...extra };
      const response = await get(url, {
        dispatcher: this.settings.dispatcher,
        headers,
        signal: this.signal,
        headersTimeoutMs: this.settings.headersTimeoutMs,
        readTimeoutMs: this.settings.readTimeoutMs,
      });
      this.#sha256 ??= publishedSha256(url, response.headers);
      const location = header(response.headers, "location");
      if (!REDIRECTS.has(response.statusCode) || !location) return { response, url };
      await response.discard();
      if (hops >= this.settings.maxRedirects)
        throw new TooManyRedirectsError(this.req.source, this.settings.maxRedirects);
      const next = new URL(location, url);
      if (next.protocol !== "http:" && next.protocol !== "https:") throw new UnsupportedSchemeError(next.protocol);
      await this.settings.checkRedirect?.(next);
      url = next;
    }
  }

  /** Tells the queue where the bytes go and how many there will be, once a response is accepted. */
  #accepted(response: Response, finalPath: string, start: number, totalBytes: number | undefined): void {
    this.bytes = start;
    this.#lastModified = header(response.headers, "last-modified");
    this.observer.onResponse({
      downloadPath: finalPath,
      totalBytes,
      contentType: header(response.headers, "content-type"),
      bytes: start,
    });
  }

  /** What every request to `url` carries; credentials only go to the origin of the source. */
  #headersFor(url: URL): Record<string, string> {
    const headers: Record<string, string> = {
      "user-agent": this.settings.userAgent,
      "accept-encoding": "identity",
      ...this.req.headers,
    };
    if (url.origin !== this.#sourceOrigin) {
      for (const name of Object.keys(headers)) if (CREDENTIAL_HEADERS.has(name.toLowerCase())) delete headers[name];
    } else if (this.req.accessToken) {
      headers.authorization = `Bearer ${this.req.accessToken}`;
    }
    return headers;
  }

  /** Before a byte is written, over one connection or several: a 2 GiB answer to a job that expected 2 KiB. */
  #refuseWrongSize(url: URL, totalBytes: number | undefined): void {
    const { expectedSize } = this.req;
    if (expectedSize !== undefined && totalBytes !== undefined && totalBytes !== expectedSize) {
      throw totalBytes > expectedSize
        ? new ResponseTooLargeError(url.href, expectedSize, totalBytes)
        : new SizeMismatchError(url.href, expectedSize, totalBytes);
    }
  }

  async #receive(
    response: Response,
    url: URL,
    finalPath: string,
    start: number,
    totalBytes: number | undefined,
    { overlapFrom, mayGrow = false }: { overlapFrom?: number; mayGrow?: boolean } = {},
  ): Promise<TransferResult | typeof GROWN> {
    const { expectedSize } = this.req;
    if (totalBytes !== undefined) await this.#reserveSpace(finalPath, start, totalBytes);
    await this.#movePartial(this.req.streamPartialPath ?? partialPathOf(finalPath), start);
    // The body starts with bytes a foreign partial already holds: compared, never written again.
    const overlap =
      overlapFrom !== undefined && overlapFrom < start
        ? await OverlapCheck.read(this.#partialPath as string, overlapFrom, start)
        : undefined;
    // A small file is refetched whole rather than resumed; skipping its sidecar saves three file operations.
    const resumable = totalBytes === undefined || totalBytes >= RESUMABLE_MIN_BYTES;
    // The sidecar makes a partial ours, so an adopted one gets it only once its overlap has matched.
    const sidecar = () => writeValidators(finalPath, validatorsFrom(this.req.source, response.headers, totalBytes));
    if (resumable && !overlap) await sidecar();
    const hash = await this.#hashPrefix(start);
    this.#accepted(response, finalPath, start, totalBytes);

    const durable = this.settings.fsync && (totalBytes ?? 0) - start >= FSYNC_MIN_BYTES;
    const file = await openPartial(this.#partialPath as string, start, durable);
    const writer = file.writer(start);
    let complete = false;
    // A large file that started over one connection, every slot taken, looks now and then for slots other jobs have
    // freed. Finding one, it stops here, and the next pass resumes what is on disk in segments over them.
    let lookAt = performance.now() + GROW_LOOK_MS;
    const take = (chunk: Buffer) => {
      this.bytes += chunk.length;
      if (expectedSize !== undefined && this.bytes > expectedSize) {
        throw new ResponseTooLargeError(url.href, expectedSize, this.bytes);
      }
      hash?.update(chunk);
      this.observer.onBytes(this.bytes);
      if (mayGrow && performance.now() >= lookAt) {
        lookAt = performance.now() + GROW_LOOK_MS;
        if ((totalBytes ?? 0) - this.bytes >= GROW_MIN_REMAINING_BYTES && this.#borrow() > 0) {
          this.#grown = true;
          response.cancel();
        }
      }
      return both(writer.write(chunk), this.req.pace?.(chunk.length));
    };
    try {
      await response.consume((chunk) => {
        if (!overlap || overlap.done) return take(chunk);
        const rest = overlap.take(chunk);
        if (!overlap.done) return this.req.pace?.(chunk.length);
        this.settings.logger.info(`${this.#partialPath} matches ${url.href} where they overlap: continuing it.`);
        const adopted = resumable ? sidecar() : undefined;
        const paced = this.req.pace?.(chunk.length - rest.length);
        if (rest.length === 0) return both(paced, adopted);
        return both(paced, adopted ? adopted.then(() => take(rest)) : take(rest));
      });
      await writer.flush();
      complete = totalBytes === undefined || this.bytes >= totalBytes;
    } finally {
      // Every byte received before a drop stays on disk for the next resume, unless the disk itself failed.
      await writer.flush().catch(() => {});
      await file.close(complete);
    }
    if (overlap && !overlap.done) {
      throw new TransferInterruptedError(`${url.href} ended before the bytes that overlap the partial`);
    }
    if (this.#grown && !complete) {
      if (hash) this.#carried = { hash, bytes: this.bytes };
      return GROWN;
    }
    if (totalBytes !== undefined && this.bytes < totalBytes) {
      throw new TransferInterruptedError(`${url.href} ended after ${this.bytes} of ${totalBytes} bytes`);
    }
    return this.#finish(finalPath, this.bytes, totalBytes ?? this.bytes, hash, resumable || start > 0);
  }

  /**
   * Fetches the file over several range requests at once into a preallocated partial. A server that turns out not
   * to serve ranges properly gets the whole job again over one stream.
   */
  async #receiveSegmented(
    response: Response,
    url: URL,
    finalPath: string,
    start: number,
    totalBytes: number,
    connections: number,
  ): Promise<TransferResult> {
    await this.#reserveSpace(finalPath, start, totalBytes);
    await this.#movePartial(partialPathOf(finalPath), start);
    const validators = validatorsFrom(this.req.source, response.headers, totalBytes);
    await writeValidators(finalPath, { ...validators, segmented: true });
    this.#accepted(response, finalPath, start, totalBytes);
    const ifRange = ifRangeFor(validators);
    try {
      await downloadSegmented({
        url,
        partialPath: this.#partialPath as string,
        totalBytes,
        connections,
        headers: { ...this.#headersFor(url), ...(ifRange ? { "if-range": ifRange } : {}) },
        dispatcher: this.settings.dispatcher,
        headersTimeoutMs: this.settings.headersTimeoutMs,
        readTimeoutMs: this.settings.readTimeoutMs,
        signal: this.signal,
        retries: this.settings.retries,
        retryDelayMs: this.settings.retryDelayMs,
        maxRetryDelayMs: this.settings.maxRetryDelayMs,
        prefixBytes: start,
        pace: this.req.pace,
        durable: this.settings.fsync && totalBytes >= FSYNC_MIN_BYTES,
        onBytes: (done) => {
          this.bytes = done;
          this.observer.onBytes(done);
        },
        onRetry: ({ error, range, failures, delayMs }) => this.warnRetry(error, delayMs, failures, range),
        moreConnections: this.settings.connectionsPerFile === undefined ? () => this.#borrow() : undefined,
        onFewerConnections: (status, left) => {
          if (this.#borrowed > 0) {
            this.#borrowed--;
            this.settings.lender?.giveBack(1);
          }
          this.settings.logger.warn(
            `${naming(url.href, `HTTP ${status} to one of its connections`)}: going on over ${left}.`,
          );
        },
      });
    } catch (err) {
      if (!(err instanceof RangeNotSupportedError) || this.signal.aborted) throw err;
      this.settings.logger.warn(err.message);
      this.#segmented = false;
      this.#returnSlots();
      return this.run();
    }
    // Segments arrive out of order, so the checksum needs one read of the finished file.
    return this.#finish(finalPath, totalBytes, totalBytes, await this.#hashPrefix(totalBytes), true);
  }

  async #finish(
    finalPath: string,
    bytes: number,
    totalBytes: number,
    hash: Hash | undefined,
    hasSidecar: boolean,
  ): Promise<TransferResult> {
    this.bytes = bytes;
    const { expectedSize } = this.req;
    const sha256 = this.#sha256;
    if (expectedSize !== undefined && bytes !== expectedSize) {
      throw new SizeMismatchError(this.req.source, expectedSize, bytes);
    }
    if (hash && sha256) {
      const actual = hash.digest("hex");
      if (actual !== sha256.toLowerCase()) throw new ChecksumMismatchError(finalPath, sha256, actual);
    }
    await commitPartial(this.#partialPath as string, finalPath, hasSidecar);
    await stampModified(finalPath, this.#lastModified);
    if (this.#partialPath === this.#ownPartial) this.#ownPartial = undefined;
    return { downloadPath: finalPath, bytes, totalBytes };
  }

  /** A resumed file is verified as a whole: the bytes from an earlier run are hashed before new ones arrive. */
  async #hashPrefix(length: number, path = this.#partialPath as string): Promise<Hash | undefined> {
    if (!this.#sha256) return undefined;
    // A stream that stopped to go on in segments hashed its bytes as they came: only what came after is read.
    const carried =
      path === this.#partialPath && this.#carried && this.#carried.bytes <= length ? this.#carried : undefined;
    if (carried) this.#carried = undefined;
    const hash = carried?.hash ?? (require("node:crypto") as typeof import("node:crypto")).createHash("sha256");
    await hashFileRange(hash, path, carried?.bytes ?? 0, length);
    return hash;
  }
}

/**
 * Asks whether a file finished earlier is still the server's current one, without a body either way: the bytes after
 * its end, if the server still has the version with the Last-Modified the file was stamped with. The same file
 * answers 416 with its size; a changed one (other date) answers 200 with the new body, which is then fetched.
 */
function stillCurrent(finished: Stats): Record<string, string> {
  return { range: `bytes=${finished.size}-`, "if-range": new Date(finished.mtimeMs).toUTCString() };
}

/** The first byte under If-Range: a 206 with the file's size when the server still has the same file. */
function resumeProbe(validators: Validators): Record<string, string> | undefined {
  const ifRange = ifRangeFor(validators);
  return ifRange ? { range: "bytes=0-0", "if-range": ifRange } : undefined;
}

function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** A message about a job's source names the URL once: as it is when it names one, else in front. */
function naming(source: string, message: string): string {
  return /https?:\/\//.test(message) ? message : `${source}: ${message}`;
}

const SHA256_ETAG = /^(?:W\/)?"?([0-9a-f]{64})"?$/i;

/**
 * Hugging Face names the sha256 of LFS files: in X-Linked-Etag on its redirect, or as the ETag it serves itself.
 * Only its hosts are trusted to mean a sha256 by a 64-hex ETag; elsewhere it could be any hash.
 */
function publishedSha256(url: URL, headers: Response["headers"]): string | undefined {
  const linked = SHA256_ETAG.exec(header(headers, "x-linked-etag") ?? "")?.[1];
  if (linked) return linked.toLowerCase();
  const onHuggingFace = /(^|\.)(huggingface\.co|hf\.co)$/.test(url.hostname);
  return onHuggingFace ? SHA256_ETAG.exec(header(headers, "etag") ?? "")?.[1]?.toLowerCase() : undefined;
}
