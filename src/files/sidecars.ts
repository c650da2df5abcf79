/**
 * What a partial file is on disk. Data streams into `<final>.downloading`; beside it, two sidecars say what it holds:
 * - `<final>.downloading.json`, the validators: which source and which version of it (ETag, Last-Modified, size)
 *   the bytes came from, so a resume can prove the server still has the same file;
 * - `<final>.downloading.segments.json`, the finished ranges of a partial fetched over several connections.
 *
 * Invariant: while a partial is preallocated for segments, its ranges sidecar exists (it is written before the
 * file grows and removed only after the last byte is on disk), so a partial without one is a plain prefix that a
 * single stream can resume; the validators' `segmented` flag catches the one case that breaks it (a lost sidecar).
 */

import { type FileHandle, open, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { fsError } from "../errors.js";
import { coveredBytes, merge } from "../transfer/ranges.js";
import { inFolder, removeIfPresent } from "./disk.js";

/** Data streams into `<final>.downloading`; the final path only ever holds a complete file. */
export const PARTIAL_SUFFIX = ".downloading";
/** Beside the partial: what it was started from. */
export const VALIDATORS_SUFFIX = ".downloading.json";

/**
 * `<final>.downloading`, the partial's default name. A partial named by another tool's convention (a cache blob's
 * `<blob>.incomplete`) is asked for explicitly by whoever queues the file, never guessed from the path's shape.
 */
export function partialPathOf(finalPath: string): string {
  return finalPath + PARTIAL_SUFFIX;
}

export interface Validators {
  source: string;
  etag?: string;
  lastModified?: string;
  totalBytes?: number;
  /**
   * The partial was preallocated for segments: its size says nothing about what it holds, and without its ranges
   * sidecar (lost in a power cut, say) it must not be taken for a prefix.
   */
  segmented?: boolean;
}

export async function readValidators(finalPath: string): Promise<Validators | undefined> {
  try {
    const parsed: unknown = JSON.parse(await readFile(finalPath + VALIDATORS_SUFFIX, "utf8"));
    return typeof parsed === "object" && parsed !== null && typeof (parsed as Validators).source === "string"
      ? (parsed as Validators)
      : undefined;
  } catch {
    // A missing or torn sidecar only means we cannot prove the partial is current: the caller restarts from zero.
    return undefined;
  }
}

export async function writeValidators(finalPath: string, validators: Validators): Promise<void> {
  const metaPath = finalPath + VALIDATORS_SUFFIX;
  try {
    await inFolder(metaPath, () => writeFile(`${metaPath}.tmp`, JSON.stringify(validators)));
    await rename(`${metaPath}.tmp`, metaPath);
  } catch (err) {
    throw fsError(err, metaPath);
  }
}

/** The finished ranges of a partial being fetched over several connections. */
export function segmentsPathOf(partialPath: string): string {
  return `${partialPath}.segments.json`;
}

/** What the ranges sidecar holds. `done` is sorted, merged, half-open [start, end) ranges that are on disk. */
export interface SegmentState {
  version: 1;
  totalBytes: number;
  /** The If-Range value the ranges were fetched under: another value means another file, so they are void. */
  validator: string | null;
  done: Array<[number, number]>;
}

/** The ranges sidecar of a partial, if there is a readable one. */
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

/**
 * Replaces the ranges sidecar atomically. `durable` flushes it to the disk before the rename, so a power cut
 * leaves the old sidecar or the new one, never a torn one.
 */
export async function writeSegmentState(partialPath: string, state: SegmentState, durable: boolean): Promise<void> {
  const path = segmentsPathOf(partialPath);
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

/** Removes the ranges sidecar (and a half-written copy of it): the partial is no longer preallocated. */
export async function removeSegmentState(partialPath: string): Promise<void> {
  const path = segmentsPathOf(partialPath);
  await rm(path, { force: true });
  await rm(`${path}.tmp`, { force: true });
}

/** Bytes the ranges sidecar says are on disk. */
export function doneBytes(state: Pick<SegmentState, "done">): number {
  return coveredBytes(state.done);
}

/**
 * Turns a segmented partial back into a plain prefix for a single stream: truncates it to the finished bytes
 * contiguous from 0 (none unless `keepPrefix`) and removes the ranges sidecar. Returns the bytes left in the
 * partial (0 when there is none). A partial without a sidecar is left alone (it already is a prefix) and its size
 * is not looked at: 0 is returned.
 */
export async function abandonSegments(partialPath: string, keepPrefix = true): Promise<number> {
  const state = await readSegmentState(partialPath);
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
    prefix = 0;
  } finally {
    await handle?.close();
  }
  // The sidecar goes only once the partial no longer looks bigger than what it holds.
  await removeSegmentState(partialPath);
  return prefix;
}

/**
 * Removes both sidecars of a final path's partial. The partial may have a name of its own (a cache's
 * `blobs/<id>.incomplete`): its ranges sidecar sits beside it, the validators beside the final path.
 */
export async function removeSidecars(finalPath: string, partialPath = partialPathOf(finalPath)): Promise<void> {
  await removeIfPresent(finalPath + VALIDATORS_SUFFIX);
  await removeIfPresent(segmentsPathOf(partialPath));
}

/**
 * What the partial of a final path holds, as far as a transfer can use it:
 * - none: nothing to continue (no partial, an empty one, or a preallocated one whose ranges sidecar is lost);
 * - prefix: bytes [0, bytes) of the file the validators describe (when there are any: a small file has none);
 * - segmented: preallocated for several connections; `ranges` lists the `bytes` on disk.
 */
export type PartialOnDisk =
  | { kind: "none"; bytes: 0; validators?: undefined }
  | { kind: "prefix"; bytes: number; validators: Validators | undefined }
  | { kind: "segmented"; bytes: number; validators: Validators | undefined; ranges: SegmentState };

export const NO_PARTIAL: PartialOnDisk = { kind: "none", bytes: 0 };

export async function inspectPartial(
  finalPath: string,
  partialPath = partialPathOf(finalPath),
): Promise<PartialOnDisk> {
  const ranges = await readSegmentState(partialPath);
  if (ranges)
    return { kind: "segmented", bytes: doneBytes(ranges), validators: await readValidators(finalPath), ranges };
  let size: number;
  try {
    size = (await stat(partialPath)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return NO_PARTIAL;
    throw fsError(err, partialPath);
  }
  if (size === 0) return NO_PARTIAL;
  const validators = await readValidators(finalPath);
  return validators?.segmented ? NO_PARTIAL : { kind: "prefix", bytes: size, validators };
}

/** A segmented partial made a prefix that one stream continues (see abandonSegments). */
export async function asPrefix(
  partialPath: string,
  partial: Extract<PartialOnDisk, { kind: "segmented" }>,
): Promise<PartialOnDisk> {
  const bytes = await abandonSegments(partialPath);
  return bytes > 0 ? { kind: "prefix", bytes, validators: partial.validators } : NO_PARTIAL;
}
