import { once } from "node:events";
import { createWriteStream, type WriteStream } from "node:fs";
import { mkdir, open, readFile, rename, stat, statfs, truncate, unlink, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { FileLockedError, fsError, InsufficientDiskSpaceError } from "../errors.js";

/** Data streams into `<final>.downloading`; the final path only ever holds a complete file. */
export const PARTIAL_SUFFIX = ".downloading";
/** Beside the partial: what it was started from, so a resume can prove the server still has the same file. */
const META_SUFFIX = ".downloading.json";
const SPACE_CHECK_MIN_BYTES = 1024 * 1024;
/** Fewer, larger writes: the disk keeps up with a fast link with less per-write overhead. */
const WRITE_HIGH_WATER_MARK = 1024 * 1024;

export interface Validators {
  source: string;
  etag?: string;
  lastModified?: string;
  totalBytes?: number;
}

/**
 * Folders this process has already created: a thousand small files into one folder need one mkdir, not three each.
 * A folder removed behind our back only costs a failed open, reported as an unwritable destination.
 */
const madeFolders = new Set<string>();

async function makeFolder(dir: string): Promise<void> {
  if (madeFolders.has(dir)) return;
  await mkdir(dir, { recursive: true });
  madeFolders.add(dir);
}

/** The finished ranges of a partial being fetched over several connections. */
export function segmentsPathOf(partialPath: string): string {
  return `${partialPath}.segments.json`;
}

/** unlink, not rm({ force }): Node 20's rm costs two extra lstat round trips per file. */
async function removeIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}

export function partialPathOf(finalPath: string): string {
  return finalPath + PARTIAL_SUFFIX;
}

/** Bytes already on disk for this final path (0 when there is no partial). */
export async function partialSize(finalPath: string): Promise<number> {
  try {
    return (await stat(partialPathOf(finalPath))).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return 0;
    throw fsError(err, partialPathOf(finalPath));
  }
}

export async function readValidators(finalPath: string): Promise<Validators | undefined> {
  try {
    const parsed: unknown = JSON.parse(await readFile(finalPath + META_SUFFIX, "utf8"));
    return typeof parsed === "object" && parsed !== null && typeof (parsed as Validators).source === "string"
      ? (parsed as Validators)
      : undefined;
  } catch {
    // A missing or torn sidecar only means we cannot prove the partial is current: the caller restarts from zero.
    return undefined;
  }
}

export async function writeValidators(finalPath: string, validators: Validators): Promise<void> {
  const metaPath = finalPath + META_SUFFIX;
  try {
    await makeFolder(dirname(metaPath));
    await writeFile(`${metaPath}.tmp`, JSON.stringify(validators));
    await rename(`${metaPath}.tmp`, metaPath);
  } catch (err) {
    throw fsError(err, metaPath);
  }
}

/**
 * A stream that writes the partial from `offset` on (0 starts over), creating parent folders as needed. `durable`
 * flushes it to the disk before it closes, so a power cut cannot leave a renamed file with holes.
 */
export async function openPartial(finalPath: string, offset: number, durable: boolean): Promise<WriteStream> {
  const path = partialPathOf(finalPath);
  try {
    await makeFolder(dirname(path));
    if (offset > 0) await truncate(path, offset);
    const stream = createWriteStream(path, {
      flags: offset > 0 ? "r+" : "w",
      start: offset,
      flush: durable,
      highWaterMark: WRITE_HIGH_WATER_MARK,
    });
    await once(stream, "open");
    return stream;
  } catch (err) {
    throw fsError(err, path);
  }
}

/** Moves a finished partial into place atomically and drops its sidecar, if it had one. */
export async function commitPartial(finalPath: string, hasSidecar: boolean): Promise<void> {
  try {
    await rename(partialPathOf(finalPath), finalPath);
  } catch (err) {
    throw fsError(err, finalPath);
  }
  if (hasSidecar) {
    await removeIfPresent(finalPath + META_SUFFIX);
    await removeIfPresent(segmentsPathOf(partialPathOf(finalPath)));
  }
}

export async function discardPartial(finalPath: string): Promise<void> {
  await removeIfPresent(partialPathOf(finalPath));
  await removeIfPresent(finalPath + META_SUFFIX);
  await removeIfPresent(segmentsPathOf(partialPathOf(finalPath)));
}

/**
 * Claims the right to write this final path, across queues and processes: `<final>.downloading.lock` is created
 * exclusively and holds the owner's pid. A lock whose process is gone (killed, crashed) is taken over.
 * Returns the release function.
 */
export async function lockPartial(finalPath: string): Promise<() => Promise<void>> {
  const lockPath = `${finalPath}${PARTIAL_SUFFIX}.lock`;
  try {
    await makeFolder(dirname(lockPath));
  } catch (err) {
    throw fsError(err, lockPath);
  }
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(lockPath, "wx");
      await handle.writeFile(`${process.pid}\n`);
      await handle.close();
      return () => removeIfPresent(lockPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw fsError(err, lockPath);
      const owner = Number.parseInt(await readFile(lockPath, "utf8").catch(() => ""), 10);
      if (isAlive(owner)) throw new FileLockedError(finalPath);
      await removeIfPresent(lockPath);
    }
  }
  throw new FileLockedError(finalPath);
}

function isAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Refuses to start a download the destination's filesystem cannot hold, before a byte is written. */
export async function ensureFreeSpace(finalPath: string, needed: number): Promise<void> {
  // Below this a full disk is cheap to meet mid-write (a clear DiskFull error); a statfs per small file is not.
  if (needed < SPACE_CHECK_MIN_BYTES) return;
  let dir = dirname(finalPath);
  for (;;) {
    try {
      const fs = await statfs(dir);
      const available = fs.bavail * fs.bsize;
      if (needed > available) throw new InsufficientDiskSpaceError(dir, needed, available);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT" || dirname(dir) === dir) throw err;
      dir = dirname(dir);
    }
  }
}
