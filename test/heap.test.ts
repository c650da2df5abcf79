import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { PriorityHeap } from "../src/heap.js";

interface Item {
  priority: number;
  name: string;
}

function drain<T extends { priority: number }>(heap: PriorityHeap<T>): T[] {
  const out: T[] = [];
  for (let item = heap.pop(); item !== undefined; item = heap.pop()) out.push(item);
  return out;
}

/** A small seeded generator, so a failure can be replayed. */
function random(seed: number): () => number {
  let state = seed;
  return () => {
    state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
    return state / 2 ** 31;
  };
}

describe("PriorityHeap", () => {
  test("an empty heap pops nothing", () => {
    assert.equal(new PriorityHeap<Item>().pop(), undefined);
  });

  test("lower priorities come out first, negative and fractional ones included", () => {
    const heap = new PriorityHeap<Item>();
    for (const priority of [10, -1, 3, 0.5, 100, 3.25]) heap.push({ priority, name: String(priority) });
    assert.deepEqual(
      drain(heap).map((item) => item.priority),
      [-1, 0.5, 3, 3.25, 10, 100],
    );
  });

  test("equal priorities come out in the order they went in", () => {
    const heap = new PriorityHeap<Item>();
    for (const name of ["a", "b", "c", "d", "e", "f", "g", "h"]) heap.push({ priority: 10, name });
    heap.push({ priority: 1, name: "first" });
    assert.deepEqual(
      drain(heap).map((item) => item.name),
      ["first", "a", "b", "c", "d", "e", "f", "g", "h"],
    );
  });

  test("pop removes the item it returns; pushes after pops keep the order", () => {
    const heap = new PriorityHeap<Item>();
    heap.push({ priority: 2, name: "two" });
    heap.push({ priority: 1, name: "one" });
    assert.equal(heap.pop()?.name, "one");
    heap.push({ priority: 2, name: "two again" });
    heap.push({ priority: 3, name: "three" });
    assert.equal(heap.pop()?.name, "two");
    assert.equal(heap.pop()?.name, "two again");
    assert.equal(heap.pop()?.name, "three");
    assert.equal(heap.pop(), undefined);
  });

  test("an item's priority is read when it is pushed", () => {
    const heap = new PriorityHeap<Item>();
    const late = { priority: 5, name: "late" };
    heap.push(late);
    heap.push({ priority: 3, name: "early" });
    late.priority = 1;
    assert.deepEqual(
      drain(heap).map((item) => item.name),
      ["early", "late"],
    );
  });

  test("many random items, pushed and popped in turns, come out as a stable sort would order them", () => {
    const next = random(11);
    const heap = new PriorityHeap<{ priority: number; seq: number }>();
    const pending: { priority: number; seq: number }[] = [];
    let popped = 0;
    let seq = 0;
    for (let round = 0; round < 200; round++) {
      const pushes = Math.floor(next() * 50);
      for (let i = 0; i < pushes; i++) {
        const item = { priority: Math.floor(next() * 20) - 5, seq: seq++ };
        heap.push(item);
        pending.push(item);
      }
      const pops = Math.floor(next() * 50);
      for (let i = 0; i < pops; i++) {
        const item = heap.pop();
        // Array.prototype.sort is stable: equal priorities keep their insertion order.
        pending.sort((a, b) => a.priority - b.priority);
        const want = pending.shift();
        assert.equal(item, want);
        if (item) popped++;
      }
    }
    pending.sort((a, b) => a.priority - b.priority);
    assert.deepEqual(drain(heap), pending);
    assert.ok(popped > 1000, `only ${popped} items were popped between pushes`);
  });
});
