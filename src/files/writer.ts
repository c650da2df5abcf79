import type { FileHandle } from "node:fs/promises";
import { fsError } from "../errors.js";

/**
 * Bytes the runs of one file may hold in memory before their readers have to wait for the disk. Small on purpose:
 * a batch the kernel copies while it is still in the CPU's cache costs far less system time. 4 MiB batches spent
 * 4.2 s of system CPU on 8 × 256 MiB (peak 148 MB), 256 KiB ones 3.0 s (116 MB); one 2 GiB stream took 4.0 s of
 * wall with 4 MiB and 2.9 s with 256 KiB.
 */
export const BACKLOG_BYTES = 256 * 1024;
/** Each segment of a file keeps at least this much backlog, or a many-connection file would write chunk by chunk. */
const RUN_BACKLOG_FLOOR = 128 * 1024;
/**
 * A durable file is flushed to the disk every this many bytes while it downloads, so the flush before the rename
 * only waits for the last few MiB instead of gigabytes of dirty pages.
 */
const SYNC_EVERY_BYTES = 64 * 1024 * 1024;

/**
 * An open `.downloading` file: the one place where downloaded bytes are written. Runs of bytes are written with
 * positional writes, so one stream and many segments use the same code.
 */
export class PartialFile {
  #sinceSync = 0;
  #syncing: Promise<void> | undefined;
  #syncError: unknown;

  /** `durable`: flushed to the disk as it goes and before it closes (see SYNC_EVERY_BYTES). */
  constructor(
    readonly handle: FileHandle,
    readonly path: string,
    readonly durable: boolean,
  ) {}

  /**
   * A writer for bytes from `position` on; `onWritten` hears of each write the kernel has taken. `runs` writers
   * at once share the file's backlog (down to a floor each), so memory barely grows with the number of connections.
   */
  writer(position: number, onWritten?: (end: number, bytes: number) => void, runs = 1): RunWriter {
    return new RunWriter(this, position, onWritten, Math.max(Math.ceil(BACKLOG_BYTES / runs), RUN_BACKLOG_FLOOR));
  }

  /**
   * Writes `buffers` (`bytes` in all) at `position`. Runs (segments) write in parallel: making them take turns
   * let one slow write stall every connection (8 connections on a 50 MB/s-per-connection server: 2.5 s instead
   * of 1.9 s for 512 MiB).
   */
  write(buffers: Buffer[], bytes: number, position: number): Promise<void> {
    return writeAll(this.handle, buffers, bytes, position).then(() => this.#wrote(bytes));
  }

  /** Flushes what has been written so far to the disk; the next background flush counts from here. */
  async sync(): Promise<void> {
    this.#sinceSync = 0;
    await this.handle.datasync();
  }

  /** Starts a background flush when enough bytes have piled up since the last. */
  #wrote(bytes: number): void {
    if (!this.durable) return;
    this.#sinceSync += bytes;
    if (this.#syncing || this.#sinceSync < SYNC_EVERY_BYTES) return;
    this.#sinceSync = 0;
    this.#syncing = this.handle.datasync().then(
      () => {
        this.#syncing = undefined;
      },
      (err) => {
        this.#syncing = undefined;
        this.#syncError ??= err;
      },
    );
  }

  /**
   * Closes the file. `complete`: every byte is in, so a durable file is flushed to the disk first; a partial that
   * will be resumed later needs no flush (a resume trusts only what the next run finds on disk).
   */
  async close(complete: boolean): Promise<void> {
    try {
      await this.#syncing;
      if (complete && this.durable) {
        if (this.#syncError) throw this.#syncError;
        await this.sync();
      }
    } catch (err) {
      throw fsError(err, this.path);
    } finally {
      await this.handle.close().catch(() => {});
    }
  }
}

/**
 * Writes one contiguous run of a file. Chunks queue while a write is on its way and then go out together as one
 * writev. Only one write is in flight at a time, so what is on disk is always a prefix of the run: a kill cannot
 * leave a hole behind a later write, and a resume can trust the file's size (or the segment's `written`).
 */
export class RunWriter {
  /** Everything before this is in the kernel's hands. */
  written: number;
  #next: number;
  #queue: Buffer[] = [];
  #queuedBytes = 0;
  #flushing: Promise<void> | undefined;
  #error: unknown;
  #drained: { promise: Promise<void>; resolve(): void; reject(err: unknown): void } | undefined;

  constructor(
    readonly file: PartialFile,
    position: number,
    readonly onWritten: ((end: number, bytes: number) => void) | undefined,
    readonly backlogBytes: number,
  ) {
    this.written = position;
    this.#next = position;
  }

  /** Where the next chunk will go. */
  get position(): number {
    return this.#next;
  }

  /**
   * Queues a chunk. Returns a promise when the backlog is full: the caller waits for it before handing over more
   * (the body reader pauses its socket meanwhile). A failed write throws here or rejects that promise.
   */
  write(chunk: Buffer): Promise<void> | undefined {
    if (this.#error) throw this.#error;
    this.#queue.push(chunk);
    this.#queuedBytes += chunk.length;
    this.#next += chunk.length;
    this.#flushing ??= this.#drain();
    if (this.#queuedBytes < this.backlogBytes) return undefined;
    if (!this.#drained) {
      let resolve!: () => void;
      let reject!: (err: unknown) => void;
      const promise = new Promise<void>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      this.#drained = { promise, resolve, reject };
    }
    return this.#drained.promise;
  }

  /** Resolves once every queued byte is written; rejects with the write's error if one failed. */
  async flush(): Promise<void> {
    await this.#flushing;
    if (this.#error) throw this.#error;
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue;
        const bytes = this.#queuedBytes;
        const position = this.written;
        this.#queue = [];
        this.#queuedBytes = 0;
        this.#wake();
        await this.file.write(batch, bytes, position);
        this.written = position + bytes;
        this.onWritten?.(this.written, bytes);
      }
    } catch (err) {
      this.#error = fsError(err, this.file.path);
      this.#next = this.written;
      this.#queue = [];
      this.#queuedBytes = 0;
      this.#drained?.reject(this.#error);
      this.#drained = undefined;
    } finally {
      this.#flushing = undefined;
    }
  }

  #wake(): void {
    this.#drained?.resolve();
    this.#drained = undefined;
  }
}

/** One writev of `bytes` at `position`, however many calls the kernel needs to take it all. */
async function writeAll(handle: FileHandle, buffers: Buffer[], bytes: number, position: number): Promise<void> {
  let done = (await handle.writev(buffers, position)).bytesWritten;
  while (done < bytes) {
    const rest = Buffer.concat(buffers).subarray(done);
    done += (await handle.write(rest, 0, rest.length, position + done)).bytesWritten;
  }
}
