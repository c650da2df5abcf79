/**
 * Partials that another tool left (InvokeAI's `<final>.downloading`, huggingface_hub's `blobs/<id>.incomplete`), or
 * one of ours whose sidecar is gone, carry no validators: nothing says which file, or which version of it, their
 * bytes came from. Rather than throw them away, the request for the rest starts a little before their end, and the
 * bytes the server sends for that overlap must equal the bytes on disk before anything is appended.
 */

import { open } from "node:fs/promises";
import { fsError } from "../errors.js";

/** How much of a foreign partial's end is compared with the server's bytes. */
export const OVERLAP_BYTES = 64 * 1024;

/**
 * Where the request for a foreign partial of `size` bytes starts. A size the caller already knows decides two cases
 * without a byte of body: a partial that big is asked for nothing past its end (a 416 says it is whole), and a
 * bigger one is not the file at all. Undefined: start over.
 */
export function adoptionStart(size: number, expectedSize: number | undefined): number | undefined {
  if (expectedSize !== undefined && size > expectedSize) return undefined;
  if (size === expectedSize) return size;
  return Math.max(0, size - OVERLAP_BYTES);
}

/**
 * The server's bytes differ from the partial's where they overlap: the partial is some other file. Never reaches a
 * caller: the transfer starts over.
 */
export class OverlapMismatchError extends Error {
  constructor(readonly position: number) {
    super(`the server's byte ${position} differs from it`);
  }
}

/** Compares the first bytes of a body with the partial's bytes [from, size), chunk by chunk as they arrive. */
export class OverlapCheck {
  #matched = 0;

  private constructor(
    readonly from: number,
    private readonly expected: Buffer,
  ) {}

  /** Reads the partial's last bytes, from `from` to its end (`size`). */
  static async read(partialPath: string, from: number, size: number): Promise<OverlapCheck> {
    const expected = Buffer.alloc(size - from);
    try {
      const handle = await open(partialPath, "r");
      try {
        const { bytesRead } = await handle.read(expected, 0, expected.length, from);
        // A partial that shrank since it was measured cannot be continued where it was thought to end.
        if (bytesRead !== expected.length) throw new OverlapMismatchError(from + bytesRead);
      } finally {
        await handle.close();
      }
    } catch (err) {
      if (err instanceof OverlapMismatchError) throw err;
      throw fsError(err, partialPath);
    }
    return new OverlapCheck(from, expected);
  }

  /** Every overlapping byte has arrived and matched. */
  get done(): boolean {
    return this.#matched === this.expected.length;
  }

  /** Checks the part of `chunk` that overlaps the partial; returns what comes after it. Throws on a difference. */
  take(chunk: Buffer): Buffer {
    const n = Math.min(chunk.length, this.expected.length - this.#matched);
    const want = this.expected.subarray(this.#matched, this.#matched + n);
    if (!want.equals(chunk.subarray(0, n))) {
      let i = 0;
      while (want[i] === chunk[i]) i++;
      throw new OverlapMismatchError(this.from + this.#matched + i);
    }
    this.#matched += n;
    return chunk.subarray(n);
  }
}
