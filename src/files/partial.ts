import type { Stats } from "node:fs";
import { open, readdir, readFile, readlink, rename, stat, symlink, utimes } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { FileLockedError, fsError } from "../errors.js";
import { inFolder, removeIfPresent } from "./disk.js";
import { PARTIAL_SUFFIX, partialPathOf, readValidators, removeSidecars, VALIDATORS_SUFFIX } from "./sidecars.js";
import { PartialFile } from "./writer.js";

let ownPartials = 0;

/**
 * A partial no other writer can share (`<final>.downloading-<pid>-<n>`), for a small file fetched whole: it needs no
 * lock, and whichever writer renames last leaves a complete file. Removed by its writer whatever happens; only a
 * killed process leaves one behind, and it is smaller than 64 KiB.
 */
export function ownPartialPathOf(finalPath: string): string {
  return `${finalPath}${PARTIAL_SUFFIX}-${process.pid}-${++ownPartials}`;
}

/**
 * The partials in `dir` by the source their sidecar names: a job into a folder whose file name comes from the
 * server finds its partial from an earlier run without asking the server for the name first.
 */
export async function partialsIn(dir: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return found;
  }
  for (const name of names) {
    if (!name.endsWith(VALIDATORS_SUFFIX)) continue;
    const finalPath = join(dir, name.slice(0, -VALIDATORS_SUFFIX.length));
    const validators = await readValidators(finalPath);
    if (validators && !found.has(validators.source)) found.set(validators.source, finalPath);
  }
  return found;
}

/** The file at a final path, if one is there: a download finished earlier. */
export async function finishedFile(finalPath: string): Promise<Stats | undefined> {
  try {
    const stats = await stat(finalPath);
    return stats.isFile() ? stats : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Gives a finished file the server's Last-Modified as its modification time (as `wget -N` and `curl -R` do), so a
 * later run can tell it is still the server's current version. A date the server did not give is left alone.
 */
export async function stampModified(finalPath: string, lastModified: string | undefined): Promise<void> {
  const date = lastModified ? Date.parse(lastModified) : Number.NaN;
  if (Number.isNaN(date)) return;
  await utimes(finalPath, new Date(), new Date(date)).catch(() => {});
}

/**
 * Opens a partial for writing from `offset` on (0 starts over), creating parent folders as needed. `durable`
 * flushes it to the disk as it goes and before it is renamed, so a power cut cannot leave a renamed file with holes.
 */
export async function openPartial(path: string, offset: number, durable: boolean): Promise<PartialFile> {
  try {
    const handle = await inFolder(path, () => open(path, offset > 0 ? "r+" : "w"));
    try {
      if (offset > 0) await handle.truncate(offset);
    } catch (err) {
      await handle.close();
      throw err;
    }
    return new PartialFile(handle, path, durable);
  } catch (err) {
    throw fsError(err, path);
  }
}

/** Moves a finished partial into place atomically and drops its sidecar, if it had one. */
export async function commitPartial(partialPath: string, finalPath: string, hasSidecar: boolean): Promise<void> {
  try {
    await rename(partialPath, finalPath);
  } catch (err) {
    throw fsError(err, finalPath);
  }
  if (hasSidecar) await removeSidecars(finalPath, partialPath);
}

export async function discardPartial(finalPath: string, partialPath = partialPathOf(finalPath)): Promise<void> {
  await removeIfPresent(partialPath);
  await removeSidecars(finalPath, partialPath);
}

/** This host as locks name it; read once, so every lock this process writes names the same host. */
const HOST = hostname();

/** Who a lock names: `<host>:<pid>`, and `:<lease>` when the job had one. */
interface LockOwner {
  host: string;
  pid: number;
  lease: string | undefined;
}

/**
 * Claims the right to write this final path, across queues, processes and hosts sharing the folder:
 * `<final>.downloading.lock` is created exclusively and names its owner as `<host>:<pid>[:<lease>]`. A lock of this
 * host whose process is gone (killed, crashed) is taken over. Another host's pid cannot be checked from here, so its
 * lock is taken over only by a caller holding the same `lease`: the job's key in a shared queue, which hands the job
 * on only once its first worker lost it, so that worker no longer writes. Returns the release function.
 *
 * The lock is a symbolic link whose target is the owner: one system call to take it and one to release it, and no
 * data block to allocate and free, where a lock file costs open, write, close and unlink. On this benchmark's
 * ext4 that is the difference between ~1 ms and ~0.2 ms per file. Windows, where symbolic links need a privilege,
 * gets a lock file.
 */
export async function lockPartial(finalPath: string, lease?: string): Promise<() => Promise<void>> {
  const lockPath = `${finalPath}${PARTIAL_SUFFIX}.lock`;
  const self = `${HOST}:${process.pid}${lease === undefined ? "" : `:${lease}`}`;
  for (let attempt = 0; attempt < 2; attempt++) {
    let taken: boolean;
    try {
      taken = await inFolder(lockPath, () => createLock(lockPath, self));
    } catch (err) {
      throw fsError(err, lockPath);
    }
    if (taken) return () => removeIfPresent(lockPath);
    const owner = await lockOwner(lockPath);
    if (owner.host === HOST) {
      if (isAlive(owner.pid)) throw new FileLockedError(finalPath);
    } else if (lease === undefined || owner.lease !== lease) {
      throw new FileLockedError(finalPath, { host: owner.host, pid: owner.pid, lockPath });
    }
    await removeIfPresent(lockPath);
  }
  throw new FileLockedError(finalPath);
}

/**
 * Creates the lock; false when one is there already. Only this EEXIST means a lock: mkdir's (a file where a folder
 * should be) is an error.
 */
async function createLock(lockPath: string, owner: string): Promise<boolean> {
  try {
    if (process.platform !== "win32") {
      await symlink(owner, lockPath);
      return true;
    }
    const handle = await open(lockPath, "wx");
    try {
      await handle.writeFile(`${owner}\n`);
    } finally {
      await handle.close();
    }
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw err;
  }
}

/**
 * Who a lock names. A bare pid (the format before hosts were named) is this host's; a lock that names nobody reads
 * as a dead process of this host, so it is taken over as stale. Hostnames hold no ":", so the lease is everything
 * after the second one, ":" included.
 */
async function lockOwner(lockPath: string): Promise<LockOwner> {
  const text = await readlink(lockPath).catch(() => readFile(lockPath, "utf8").catch(() => ""));
  const owner = text.endsWith("\n") ? text.slice(0, -1) : text;
  const hostEnd = owner.indexOf(":");
  if (hostEnd < 0) return { host: HOST, pid: Number.parseInt(owner, 10), lease: undefined };
  const pidEnd = owner.indexOf(":", hostEnd + 1);
  return {
    host: owner.slice(0, hostEnd),
    pid: Number.parseInt(owner.slice(hostEnd + 1, pidEnd < 0 ? undefined : pidEnd), 10),
    lease: pidEnd < 0 ? undefined : owner.slice(pidEnd + 1),
  };
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
