/**
 * A binary min-heap ordered by `priority`, then by insertion order, so equal priorities run first-come first-served
 * (a plain array sort per insert would cost O(n log n) with 100,000 queued jobs).
 */
export interface Prioritized {
  readonly priority: number;
}

interface Entry<T> {
  readonly item: T;
  readonly priority: number;
  readonly seq: number;
}

export class PriorityHeap<T extends Prioritized> {
  readonly #entries: Entry<T>[] = [];
  #seq = 0;

  get size(): number {
    return this.#entries.length;
  }

  push(item: T): void {
    this.#entries.push({ item, priority: item.priority, seq: this.#seq++ });
    this.#siftUp(this.#entries.length - 1);
  }

  pop(): T | undefined {
    const entries = this.#entries;
    const top = entries[0];
    const last = entries.pop();
    if (top === undefined || last === undefined) return undefined;
    if (entries.length > 0) {
      entries[0] = last;
      this.#siftDown(0);
    }
    return top.item;
  }

  peek(): T | undefined {
    return this.#entries[0]?.item;
  }

  /** Removes every item the predicate selects; O(n), used for cancellation sweeps, not per job. */
  removeWhere(predicate: (item: T) => boolean): T[] {
    const removed: T[] = [];
    const kept: Entry<T>[] = [];
    for (const entry of this.#entries) predicate(entry.item) ? removed.push(entry.item) : kept.push(entry);
    if (removed.length > 0) {
      this.#entries.length = 0;
      for (const entry of kept) {
        this.#entries.push(entry);
        this.#siftUp(this.#entries.length - 1);
      }
    }
    return removed;
  }

  #before(a: Entry<T>, b: Entry<T>): boolean {
    return a.priority < b.priority || (a.priority === b.priority && a.seq < b.seq);
  }

  #siftUp(index: number): void {
    const entries = this.#entries;
    let child = index;
    while (child > 0) {
      const parent = (child - 1) >> 1;
      const c = entries[child] as Entry<T>;
      const p = entries[parent] as Entry<T>;
      if (!this.#before(c, p)) break;
      entries[child] = p;
      entries[parent] = c;
      child = parent;
    }
  }

  #siftDown(index: number): void {
    const entries = this.#entries;
    const n = entries.length;
    let parent = index;
    for (;;) {
      const left = 2 * parent + 1;
      const right = left + 1;
      let best = parent;
      if (left < n && this.#before(entries[left] as Entry<T>, entries[best] as Entry<T>)) best = left;
      if (right < n && this.#before(entries[right] as Entry<T>, entries[best] as Entry<T>)) best = right;
      if (best === parent) return;
      const tmp = entries[parent] as Entry<T>;
      entries[parent] = entries[best] as Entry<T>;
      entries[best] = tmp;
      parent = best;
    }
  }
}
