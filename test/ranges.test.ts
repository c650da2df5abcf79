import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { coveredBytes, gaps, halfway, merge, planSegments } from "../src/transfer/ranges.js";

const sum = (ranges: Array<[number, number]>) => ranges.reduce((n, [s, e]) => n + e - s, 0);

describe("range helpers", () => {
  test("merge, gaps and planSegments", () => {
    assert.deepEqual(
      merge([
        [5, 7],
        [0, 2],
        [2, 3],
        [6, 9],
      ]),
      [
        [0, 3],
        [5, 9],
      ],
    );
    assert.deepEqual(
      gaps(
        [
          [0, 3],
          [5, 9],
        ],
        12,
      ),
      [
        [3, 5],
        [9, 12],
      ],
    );
    assert.deepEqual(gaps([], 0), []);
    const plan = planSegments([[0, 800]], 8, 100);
    assert.equal(plan.length, 8);
    assert.equal(sum(plan), 800);
    // Never below the minimum: 250 bytes make two segments of ≥ 100, not three.
    assert.deepEqual(planSegments([[0, 250]], 8, 100), [
      [0, 125],
      [125, 250],
    ]);
  });

  test("merge drops empty ranges, joins touching and nested ones, and leaves its input alone", () => {
    const input: Array<[number, number]> = [
      [4, 4],
      [10, 20],
      [12, 15],
      [20, 25],
      [1, 2],
    ];
    assert.deepEqual(merge(input), [
      [1, 2],
      [10, 25],
    ]);
    assert.deepEqual(input[1], [10, 20]);
    assert.deepEqual(merge([]), []);
  });

  test("gaps of unsorted, overlapping ranges; ranges reaching past the total leave no gap", () => {
    assert.deepEqual(
      gaps(
        [
          [6, 8],
          [2, 4],
          [3, 5],
        ],
        10,
      ),
      [
        [0, 2],
        [5, 6],
        [8, 10],
      ],
    );
    assert.deepEqual(gaps([[0, 10]], 10), []);
    assert.deepEqual(gaps([[0, 12]], 10), []);
    assert.deepEqual(gaps([], 7), [[0, 7]]);
  });

  test("coveredBytes counts the bytes of merged ranges", () => {
    assert.equal(coveredBytes([]), 0);
    assert.equal(
      coveredBytes([
        [0, 3],
        [5, 9],
      ]),
      7,
    );
  });

  test("planSegments splits the largest range first and never past the number of connections", () => {
    assert.deepEqual(
      planSegments(
        [
          [0, 100],
          [200, 1000],
        ],
        3,
        100,
      ),
      [
        [0, 100],
        [200, 600],
        [600, 1000],
      ],
    );
    assert.deepEqual(
      planSegments(
        [
          [0, 100],
          [200, 300],
          [400, 500],
        ],
        2,
        10,
      ),
      [
        [0, 100],
        [200, 300],
        [400, 500],
      ],
      "more gaps than connections: each gap stays one segment",
    );
    assert.deepEqual(planSegments([[0, 199]], 8, 100), [[0, 199]], "too small to halve");
    assert.deepEqual(planSegments([], 8, 100), []);
    assert.equal(halfway(0, 3), 2, "the first half is never the smaller one");
    assert.equal(halfway(10, 20), 15);
  });
});
