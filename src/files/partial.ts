import { mkdir, open, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { fsError } from "../errors.js";

/** Data streams into `<final>.downloading`; the final path only ever holds a complete file. */
export const PARTIAL_SUFFIX = ".downloading";
/** Beside the partial: what it was started from, so a resume can prove the server still has the same file. */
const META_SUFFIX = ".downloading.json";

export interface Validators {
  source: string;
  etag?: string;
  lastModified?: string;
  totalBytes?: number;
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
    await writeFile(`${metaPath}.tmp`, JSON.stringify(validators));
    await rename(`${metaPath}.tmp`, metaPath);
  } catch (err) {
    throw fsError(err, metaPath);
  }
}

/** Opens the partial for appending at `offset` (0 truncates), creating parent folders as needed. */
export async function openPartial(finalPath: string, offset: number) {
  const path = partialPathOf(finalPath);
  try {
    await mkdir(dirname(path), { recursive: true });
    const handle = await open(path, offset === 0 ? "w" : "r+");
    if (offset > 0) await handle.truncate(offset);
    return handle;
  } catch (err) {
    throw fsError(err, path);
  }
}

/** Moves a finished partial into place atomically and drops its sidecar. */
export async function commitPartial(finalPath: string): Promise<void> {
  try {
    await rename(partialPathOf(finalPath), finalPath);
  } catch (err) {
    throw fsError(err, finalPath);
  }
  await rm(finalPath + META_SUFFIX, { force: true });
}

export async function discardPartial(finalPath: string): Promise<void> {
  await rm(partialPathOf(finalPath), { force: true });
  await rm(finalPath + META_SUFFIX, { force: true });
}
