import { mkdir, unlink } from "node:fs/promises";
import { dirname } from "node:path";

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
