/** A half-open byte range [start, end). */
export type ByteRange = [start: number, end: number];

/** Sorted, merged copy of half-open ranges (touching ranges are merged too). */
export function merge(ranges: ReadonlyArray<readonly [number, number]>): ByteRange[] {
  const sorted = ranges.filter(([s, e]) => e > s).sort((a, b) => a[0] - b[0]);
  const out: ByteRange[] = [];
  for (const [start, end] of sorted) {
    const last = out.at(-1);
    if (last && start <= last[1]) last[1] = Math.max(last[1], end);
    else out.push([start, end]);
  }
  return out;
}

/** The parts of [0, total) that `done` (merged) does not cover. */
export function gaps(done: ReadonlyArray<readonly [number, number]>, total: number): ByteRange[] {
  const out: ByteRange[] = [];
  let pos = 0;
  for (const [start, end] of merge(done)) {
    if (start > pos) out.push([pos, Math.min(start, total)]);
    pos = Math.max(pos, end);
  }
  if (pos < total) out.push([pos, total]);
  return out;
}

/** Bytes the ranges cover; they are assumed not to overlap (merge them first). */
export function coveredBytes(ranges: ReadonlyArray<readonly [number, number]>): number {
  return ranges.reduce((sum, [start, end]) => sum + end - start, 0);
}

/** Missing ranges cut into about `connections` segments, halving the largest while both halves stay ≥ min. */
export function planSegments(
  missing: ReadonlyArray<readonly [number, number]>,
  connections: number,
  minSegment: number,
): ByteRange[] {
  const out = missing.map(([s, e]): ByteRange => [s, e]);
  while (out.length < connections) {
    let largest = -1;
    for (let i = 0; i < out.length; i++) {
      const r = out[i] as ByteRange;
      if (largest < 0 || r[1] - r[0] > (out[largest] as ByteRange)[1] - (out[largest] as ByteRange)[0]) largest = i;
    }
    const r = out[largest];
    if (!r || r[1] - r[0] < 2 * minSegment) break;
    const mid = halfway(r[0], r[1]);
    out.splice(largest, 1, [r[0], mid], [mid, r[1]]);
  }
  return out;
}

/** Where a range is split in two: the first half is never the smaller one. */
export function halfway(start: number, end: number): number {
  return start + Math.ceil((end - start) / 2);
}
