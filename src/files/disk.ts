import type { Hash } from "node:crypto";
import { mkdir, open, unlink } from "node:fs/promises";
import { dirname } from "node:path";

/** Reads for a checksum go in 1 MiB blocks, two buffers taking turns: one is hashed while the other fills. */
const HASH_READ_BYTES = 1024 * 1024;

/** unlink, not rm({ force }): Node 20's rm costs two extra lstat round trips per file. */
export async function removeIfPresent(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
}

/**
 * Runs `create`, which makes `path`, and makes the parent folders only when it finds them missing: a thousand small
 * files into one folder cost no mkdir, and a folder removed while the process runs (a `serve` that lives for
 * weeks) is simply made again. Nothing is remembered between calls, so nothing can go stale.
 *
 * ENOTDIR counts as missing too, so that mkdir, not the first attempt, says why a folder cannot be made (a file
 * stands where it should be).
 */
export async function inFolder<T>(path: string, create: () => Promise<T>): Promise<T> {
  try {
    return await create();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== "ENOENT" && code !== "ENOTDIR") throw err;
  }
  await mkdir(dirname(path), { recursive: true });
  return create();
}

/**
 * Feeds bytes `from` to `to` of the file at `path` to `hash` (fewer if the file ends first: the digest then shows it).
 * A read stream allocates a 64 KiB buffer per read and waits for each before the next: 2 GiB took 2.4 s to hash that
 * way here, against 1.5 s with two reused 1 MiB buffers, one read ahead (sha256 alone: 1.4 s).
 */
export async function hashFileRange(hash: Hash, path: string, from: number, to: number): Promise<void> {
  if (to <= from) return;
  const handle = await open(path, "r");
  try {
    const readAt = (buffer: Buffer, position: number) =>
      handle.read(buffer, 0, Math.min(HASH_READ_BYTES, to - position), position);
    let spare: Buffer = Buffer.allocUnsafe(HASH_READ_BYTES);
    let reading = readAt(Buffer.allocUnsafe(HASH_READ_BYTES), from);
    for (let position = from; ; ) {
      const { bytesRead, buffer } = await reading;
      if (bytesRead === 0) return;
      position += bytesRead;
      const last = position >= to;
      if (!last) reading = readAt(spare, position);
      hash.update(buffer.subarray(0, bytesRead));
      if (last) return;
      spare = buffer;
    }
  } finally {
    await handle.close();
  }
}
