import { stat, statfs } from "node:fs/promises";
import { dirname } from "node:path";
import { InsufficientDiskSpaceError } from "../errors.js";

/** Below this a full disk is cheap to meet mid-write (a clear DiskFull error); a statfs per small file is not. */
const SPACE_CHECK_MIN_BYTES = 1024 * 1024;

interface Hold {
  /** The filesystem (st_dev of the folder checked). */
  readonly dev: number;
  /** Bytes still to be written: the free space the filesystem reports has not yet been taken by them. */
  readonly remaining: () => number;
}

/**
 * The free space a queue's running downloads have been promised. The filesystem's free space only shrinks as bytes
 * land, so three 10 MB downloads checked one after another against a 20 MB disk would all pass and all fail half
 * way; each check here also subtracts what the other running downloads on that filesystem still have to write.
 */
export class SpaceLedger {
  readonly #holds = new Set<Hold>();

  /**
   * Refuses a download of `needed` more bytes into `finalPath` that the filesystem cannot hold besides what was
   * promised to the others; else records the promise. `remaining` tells, later, how much of it is still unwritten.
   * Returns the release function.
   */
  async reserve(finalPath: string, needed: number, remaining: () => number): Promise<() => void> {
    if (needed < SPACE_CHECK_MIN_BYTES) return () => {};
    const { dir, dev, available } = await freeSpace(finalPath);
    // From here to the add below nothing awaits: two checks never both count space the other one took.
    let reserved = 0;
    for (const hold of this.#holds) if (hold.dev === dev) reserved += Math.max(0, hold.remaining());
    if (needed > available - reserved) throw new InsufficientDiskSpaceError(dir, needed, available, reserved);
    const hold: Hold = { dev, remaining };
    this.#holds.add(hold);
    return () => {
      this.#holds.delete(hold);
    };
  }
}

/** The nearest existing folder of `path` (the file and some parents may not exist yet), its device and free bytes. */
async function freeSpace(path: string): Promise<{ dir: string; dev: number; available: number }> {
  let dir = dirname(path);
  for (;;) {
    try {
      const [fs, info] = await Promise.all([statfs(dir), stat(dir)]);
      return { dir, dev: info.dev, available: fs.bavail * fs.bsize };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT" || dirname(dir) === dir) throw err;
      dir = dirname(dir);
    }
  }
}
