export interface Prioritized {
  readonly priority: number;
}

interface Entry<T> {
  readonly item: T;
  readonly priority: number;
  readonly seq: number;
}

/**
 * A binary min-heap ordered by `priority`, then by insertion order, so equal priorities run first-come first-served
 * (a plain array sort per insert would cost O(n log n) with 100,000 queued jobs).
 */
export class PriorityHeap<T extends Prioritized> {
  readonly #entries: Entry<T>[] = [];
  #seq = 0;

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
