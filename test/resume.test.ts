import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { Validators } from "../src/files/sidecars.js";
import { parseContentRange, planResponse, resumeHeaders } from "../src/transfer/resume.js";

const source = "http://h/model.bin";
const started: Validators = {
  source,
  etag: '"v1"',
  lastModified: "Tue, 01 Jul 2025 10:00:00 GMT",
  totalBytes: 1000,
};
const sameFile = { etag: '"v1"', "last-modified": "Tue, 01 Jul 2025 10:00:00 GMT" };

describe("planResponse", () => {
  test("a 206 that continues exactly where the partial ends, for the same file: append", () => {
    assert.deepEqual(planResponse(206, { ...sameFile, "content-range": "bytes 400-999/1000" }, 400, started), {
      action: "append",
      totalBytes: 1000,
    });
    // Without validators to compare (none were kept), the range alone decides.
    assert.deepEqual(planResponse(206, { "content-range": "bytes 400-999/1000" }, 400, undefined), {
      action: "append",
      totalBytes: 1000,
    });
  });

  test("a 206 for a different range, or of unknown length, is never spliced: refetch", () => {
    for (const contentRange of ["bytes 0-999/1000", "bytes 401-999/1000", "bytes 400-999/*", "bytes */1000", "junk"]) {
      assert.deepEqual(
        planResponse(206, { ...sameFile, "content-range": contentRange }, 400, started),
        { action: "refetch" },
        contentRange,
      );
    }
    assert.deepEqual(planResponse(206, sameFile, 400, started), { action: "refetch" }, "no Content-Range");
  });

  test("a 200 is the whole file: restart from zero, with its length when it is known", () => {
    assert.deepEqual(planResponse(200, { "content-length": "1234" }, 400, started), {
      action: "restart",
      totalBytes: 1234,
    });
    assert.deepEqual(planResponse(200, {}, 0, undefined), { action: "restart", totalBytes: undefined });
    assert.deepEqual(planResponse(200, { "content-length": "many" }, 0, undefined), {
      action: "restart",
      totalBytes: undefined,
    });
  });

  test("416 for a partial that already holds the whole file: complete", () => {
    assert.deepEqual(planResponse(416, { "content-range": "bytes */1000" }, 1000, started), {
      action: "complete",
      totalBytes: 1000,
    });
    // No Content-Range: the size the partial was started with decides.
    assert.deepEqual(planResponse(416, {}, 1000, started), { action: "complete", totalBytes: 1000 });
  });

  test("416 otherwise: refetch a partial that cannot be continued; nothing to plan without one", () => {
    assert.deepEqual(planResponse(416, { "content-range": "bytes */1000" }, 400, started), { action: "refetch" });
    assert.deepEqual(planResponse(416, { "content-range": "bytes */2000" }, 1000, started), { action: "refetch" });
    assert.deepEqual(planResponse(416, {}, 400, undefined), { action: "refetch" });
    assert.equal(planResponse(416, { "content-range": "bytes */1000" }, 0, undefined), undefined);
  });

  test("a 206 whose validators changed (ETag, Last-Modified or size) is another file: refetch", () => {
    const range = { "content-range": "bytes 400-999/1000" };
    assert.deepEqual(planResponse(206, { ...range, ...sameFile, etag: '"v2"' }, 400, started), { action: "refetch" });
    assert.deepEqual(
      planResponse(206, { ...range, ...sameFile, "last-modified": "Wed, 02 Jul 2025 10:00:00 GMT" }, 400, started),
      { action: "refetch" },
    );
    assert.deepEqual(planResponse(206, { ...sameFile, "content-range": "bytes 400-1999/2000" }, 400, started), {
      action: "refetch",
    });
    // A validator the response does not send cannot disagree.
    assert.deepEqual(planResponse(206, range, 400, started), { action: "append", totalBytes: 1000 });
  });

  test("other statuses are not a plan: the caller reports them as HTTP errors", () => {
    for (const status of [204, 304, 404, 500]) assert.equal(planResponse(status, {}, 400, started), undefined);
  });
});

describe("resume requests", () => {
  test("Range from the bytes on disk, guarded by a strong ETag, else by Last-Modified", () => {
    assert.deepEqual(resumeHeaders(0, started), {});
    assert.deepEqual(resumeHeaders(400, started), { range: "bytes=400-", "if-range": '"v1"' });
    assert.deepEqual(resumeHeaders(400, { ...started, etag: 'W/"v1"' }), {
      range: "bytes=400-",
      "if-range": started.lastModified,
    });
    assert.deepEqual(resumeHeaders(400, { source }), { range: "bytes=400-" });
  });

  test("Content-Range is parsed for its start and total", () => {
    assert.deepEqual(parseContentRange("bytes 0-99/1000"), { start: 0, total: 1000 });
    assert.deepEqual(parseContentRange("bytes */1000"), { start: -1, total: 1000 });
    assert.deepEqual(parseContentRange("bytes 5-9/*"), { start: 5, total: undefined });
    assert.equal(parseContentRange("items 0-1/2"), undefined);
    assert.equal(parseContentRange(undefined), undefined);
  });
});
