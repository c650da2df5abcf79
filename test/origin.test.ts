import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { Agent as HttpAgent, get as httpGet, type IncomingMessage } from "node:http";
import { after, before, describe, it } from "node:test";
import { Agent, type Dispatcher, interceptors, request } from "undici";
import { deterministicBytes, type Origin, sha256Hex, startOrigin } from "./helpers/origin.js";

interface Fetched {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  error?: Error;
  headersAt: number;
}

const agent = new Agent();

/** Reads as much body as arrives; a broken body is reported in `error` rather than thrown, with the bytes received. */
async function fetchBody(
  url: string,
  headers: Record<string, string> = {},
  opts: { method?: "GET" | "HEAD"; dispatcher?: Dispatcher } = {},
): Promise<Fetched> {
  const res = await request(url, { method: opts.method ?? "GET", headers, dispatcher: opts.dispatcher ?? agent });
  const headersAt = performance.now();
  const chunks: Buffer[] = [];
  let error: Error | undefined;
  try {
    for await (const chunk of res.body) chunks.push(chunk as Buffer);
  } catch (err) {
    error = err as Error;
  }
  return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks), error, headersAt };
}

function nodeGet(url: string, agentOpt?: HttpAgent): Promise<{ res: IncomingMessage; body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, { agent: agentOpt }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => {
        body += d;
      });
      res.on("end", () => resolve({ res, body, reused: req.reusedSocket }));
      res.on("error", reject);
    });
    req.on("error", reject);
  });
}

async function waitUntil(cond: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error("condition not reached in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("deterministicBytes", () => {
  it("generates any range consistently with the whole", () => {
    const whole = deterministicBytes("s", 0, 3 * 1024 * 1024 + 5);
    for (const [start, length] of [
      [0, 1],
      [7, 100],
      [1_048_570, 100],
      [2 * 1024 * 1024 - 3, 1024 * 1024 + 8],
    ] as const) {
      assert.deepEqual(deterministicBytes("s", start, length), whole.subarray(start, start + length));
    }
  });

  it("differs between seeds and is not periodic", () => {
    const a = deterministicBytes("a", 0, 4 * 1024 * 1024);
    assert.notDeepEqual(a.subarray(0, 4096), deterministicBytes("b", 0, 4096));
    for (const period of [16, 4096, 65536, 1024 * 1024]) {
      assert.notDeepEqual(a.subarray(0, 4096), a.subarray(period, period + 4096), `period ${period}`);
    }
  });

  it("sha256Hex matches node:crypto", () => {
    assert.equal(sha256Hex("abc"), createHash("sha256").update("abc").digest("hex"));
    assert.equal(sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  });
});

describe("origin", () => {
  let origin: Origin;
  let other: Origin;

  before(async () => {
    origin = await startOrigin();
    other = await startOrigin();
  });

  after(async () => {
    await agent.close();
    await origin.close();
    await other.close();
  });

  it("serves the full body with validators and a matching sha256", async () => {
    const size = 8 * 1024 * 1024 + 7;
    const route = origin.route("/full.bin", { size });
    assert.match(origin.url, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(origin.url, `http://${origin.host}`);
    assert.equal(route.url, `${origin.url}/full.bin`);
    assert.equal(route.size, size);
    const res = await fetchBody(route.url);
    assert.equal(res.status, 200);
    assert.equal(res.error, undefined);
    assert.equal(res.headers["content-length"], String(size));
    assert.equal(res.headers["accept-ranges"], "bytes");
    assert.equal(res.headers["content-type"], "application/octet-stream");
    assert.match(String(res.headers.etag), /^"[0-9a-f]{16}"$/);
    assert.ok(!Number.isNaN(Date.parse(String(res.headers["last-modified"]))));
    assert.equal(res.body.length, size);
    assert.equal(sha256Hex(res.body), await route.sha256());
    assert.equal(sha256Hex(route.content()), await route.sha256());
  });

  it("answers HEAD with headers only", async () => {
    const route = origin.route("/head.bin", { size: 5000, contentDisposition: 'attachment; filename="x.bin"' });
    const res = await fetchBody(route.url, {}, { method: "HEAD" });
    assert.equal(res.status, 200);
    assert.equal(res.headers["content-length"], "5000");
    assert.equal(res.headers["content-disposition"], 'attachment; filename="x.bin"');
    assert.equal(res.body.length, 0);
  });

  it("serves explicit bodies, custom headers and omits validators on request", async () => {
    const route = origin.route("/hello.txt", {
      body: "hello world",
      contentType: "text/plain",
      etag: null,
      lastModified: null,
      headers: { "X-Extra": "1" },
    });
    const res = await fetchBody(route.url);
    assert.equal(res.body.toString(), "hello world");
    assert.equal(route.size, 11);
    assert.equal(res.headers["content-type"], "text/plain");
    assert.equal(res.headers["x-extra"], "1");
    assert.equal(res.headers.etag, undefined);
    assert.equal(res.headers["last-modified"], undefined);
    assert.equal(await route.sha256(), sha256Hex("hello world"));
  });

  it("serves byte ranges with 206 and Content-Range", async () => {
    const size = 100_000;
    const route = origin.route("/range.bin", { size });
    const content = route.content();
    const cases = [
      ["bytes=1000-1999", 1000, 2000],
      ["bytes=99990-", 99990, size],
      ["bytes=-10", size - 10, size],
      ["bytes=99000-200000", 99000, size],
    ] as const;
    for (const [range, start, end] of cases) {
      const res = await fetchBody(route.url, { Range: range });
      assert.equal(res.status, 206, range);
      assert.equal(res.headers["content-range"], `bytes ${start}-${end - 1}/${size}`, range);
      assert.equal(res.headers["content-length"], String(end - start), range);
      assert.deepEqual(res.body, content.subarray(start, end), range);
    }
  });

  it("honours If-Range only when it matches the current validator exactly", async () => {
    const route = origin.route("/ifrange.bin", { size: 4096 });
    const head = await fetchBody(route.url, {}, { method: "HEAD" });
    const etag = String(head.headers.etag);
    const lastModified = String(head.headers["last-modified"]);
    const byEtag = await fetchBody(route.url, { Range: "bytes=100-", "If-Range": etag });
    assert.equal(byEtag.status, 206);
    assert.equal(byEtag.body.length, 3996);
    const byDate = await fetchBody(route.url, { Range: "bytes=100-", "If-Range": lastModified });
    assert.equal(byDate.status, 206);
    const stale = await fetchBody(route.url, { Range: "bytes=100-", "If-Range": '"0000000000000000"' });
    assert.equal(stale.status, 200);
    assert.equal(stale.headers["content-range"], undefined);
    assert.deepEqual(stale.body, route.content());
  });

  it("answers 416 when the range starts at or beyond the end", async () => {
    const route = origin.route("/small.bin", { size: 1000 });
    for (const range of ["bytes=1000-", "bytes=1000-1000", "bytes=5000-6000"]) {
      const res = await fetchBody(route.url, { Range: range });
      assert.equal(res.status, 416, range);
      assert.equal(res.headers["content-range"], "bytes */1000", range);
    }
  });

  it("ignores malformed and multi-part ranges", async () => {
    const route = origin.route("/badrange.bin", { size: 1000 });
    for (const range of ["bytes=500-100", "bytes=0-1,5-6", "items=0-1"]) {
      const res = await fetchBody(route.url, { Range: range });
      assert.equal(res.status, 200, range);
      assert.equal(res.body.length, 1000, range);
    }
  });

  it("ignores Range entirely when acceptRanges is false", async () => {
    const route = origin.route("/noranges.bin", { size: 2000, acceptRanges: false });
    for (const range of ["bytes=10-20", "bytes=5000-"]) {
      const res = await fetchBody(route.url, { Range: range });
      assert.equal(res.status, 200, range);
      assert.equal(res.headers["accept-ranges"], undefined);
      assert.deepEqual(res.body, route.content());
    }
  });

  it("drop: sends exactly afterBytes then destroys the connection, later requests succeed", async () => {
    const route = origin.route("/drop.bin", {
      size: 3 * 1024 * 1024,
      faults: [{ kind: "drop", afterBytes: 1_500_000 }],
    });
    const broken = await fetchBody(route.url);
    assert.equal(broken.status, 200);
    assert.equal(broken.headers["content-length"], String(3 * 1024 * 1024));
    assert.ok(broken.error, "the client must see an error");
    assert.equal(broken.body.length, 1_500_000);
    assert.deepEqual(broken.body, route.content().subarray(0, 1_500_000));
    const ok = await fetchBody(route.url);
    assert.equal(ok.error, undefined);
    assert.equal(sha256Hex(ok.body), await route.sha256());
  });

  it("drop applies to ranged responses and to afterBytes 0", async () => {
    const route = origin.route("/drop0.bin", {
      size: 10_000,
      faults: [
        { kind: "drop", afterBytes: 0 },
        { kind: "drop", afterBytes: 300 },
      ],
    });
    const zero = await fetchBody(route.url);
    assert.equal(zero.status, 200);
    assert.ok(zero.error);
    assert.equal(zero.body.length, 0);
    const ranged = await fetchBody(route.url, { Range: "bytes=5000-" });
    assert.equal(ranged.status, 206);
    assert.ok(ranged.error);
    assert.deepEqual(ranged.body, route.content().subarray(5000, 5300));
  });

  it("truncate: ends the connection cleanly short of Content-Length", async () => {
    const route = origin.route("/truncate.bin", { size: 50_000, faults: [{ kind: "truncate", afterBytes: 20_000 }] });
    const res = await fetchBody(route.url);
    assert.equal(res.status, 200);
    assert.equal(res.headers["content-length"], "50000");
    assert.ok(res.error, "the client must notice the short body");
    assert.equal(res.body.length, 20_000);
  });

  it("stall: sends afterBytes then goes silent until the client gives up", async () => {
    const route = origin.route("/stall.bin", { size: 50_000, faults: [{ kind: "stall", afterBytes: 7000 }] });
    const impatient = new Agent({ bodyTimeout: 300 });
    try {
      const started = performance.now();
      const pending = fetchBody(route.url, {}, { dispatcher: impatient });
      await waitUntil(() => origin.inFlight === 1);
      const res = await pending;
      assert.ok(performance.now() - started >= 250);
      assert.equal((res.error as Error & { code?: string }).code, "UND_ERR_BODY_TIMEOUT");
      assert.equal(res.body.length, 7000);
      await waitUntil(() => origin.inFlight === 0);
    } finally {
      await impatient.destroy();
    }
  });

  it("close() tears down stalled connections", async () => {
    const local = await startOrigin();
    const route = local.route("/stall.bin", { size: 10_000, faults: [{ kind: "stall", afterBytes: 10 }] });
    const client = new Agent({ bodyTimeout: 0 });
    try {
      const pending = fetchBody(route.url, {}, { dispatcher: client });
      await waitUntil(() => local.inFlight === 1);
      const started = performance.now();
      await local.close();
      const res = await pending;
      assert.ok(performance.now() - started < 1000);
      assert.ok(res.error);
      assert.equal(res.body.length, 10);
    } finally {
      await client.destroy();
    }
  });

  it("hangup: destroys the socket before any response byte", async () => {
    const route = origin.route("/hangup.bin", { size: 100, faults: [{ kind: "hangup" }] });
    await assert.rejects(fetchBody(route.url));
    const ok = await fetchBody(route.url);
    assert.equal(ok.status, 200);
    assert.equal(route.requests.length, 2);
  });

  it("status faults are served in sequence, then normal responses", async () => {
    const route = origin.route("/flaky.bin", {
      size: 100,
      faults: [{ kind: "status", status: 500 }, null, { kind: "status", status: 503, body: "busy" }],
    });
    const statuses: number[] = [];
    const bodies: string[] = [];
    for (let i = 0; i < 4; i++) {
      const res = await fetchBody(route.url);
      statuses.push(res.status);
      bodies.push(res.body.toString());
    }
    assert.deepEqual(statuses, [500, 200, 503, 200]);
    assert.equal(bodies[0], "Internal Server Error");
    assert.equal(bodies[2], "busy");
  });

  it("status faults carry headers such as Retry-After", async () => {
    const route = origin.route("/limited.bin", {
      faults: [{ kind: "status", status: 429, headers: { "Retry-After": "1" } }],
    });
    const res = await fetchBody(route.url);
    assert.equal(res.status, 429);
    assert.equal(res.headers["retry-after"], "1");
  });

  it("update({faults}) resets the fault counter", async () => {
    const route = origin.route("/refault.bin", { size: 10, faults: [{ kind: "status", status: 500 }] });
    assert.equal((await fetchBody(route.url)).status, 500);
    assert.equal((await fetchBody(route.url)).status, 200);
    route.update({ faults: [null, { kind: "status", status: 404 }] });
    assert.equal((await fetchBody(route.url)).status, 200);
    assert.equal((await fetchBody(route.url)).status, 404);
  });

  it("answers unknown paths with 404 Not Found", async () => {
    const { res, body } = await nodeGet(`${origin.url}/does/not/exist`);
    assert.equal(res.statusCode, 404);
    assert.equal(res.statusMessage, "Not Found");
    assert.equal(body, "Not Found");
  });

  it("routes exact path+query first, then the bare path", async () => {
    origin.route("/x.png", { body: "plain" });
    const raw = origin.route("/x.png?raw=true", { body: "raw" });
    assert.equal(raw.url, `${origin.url}/x.png?raw=true`);
    assert.equal((await fetchBody(`${origin.url}/x.png?raw=true`)).body.toString(), "raw");
    assert.equal((await fetchBody(`${origin.url}/x.png?other=1`)).body.toString(), "plain");
    assert.equal((await fetchBody(`${origin.url}/x.png`)).body.toString(), "plain");
    origin.route("/only?q=1", { body: "q" });
    assert.equal((await fetchBody(`${origin.url}/only`)).status, 404);
  });

  it("redirects across origins and relatively", async () => {
    const target = other.route("/target.bin", { size: 3000 });
    const redirect = origin.route("/redir.bin", { redirect: { location: target.url } });
    const relative = origin.route("/moved.bin", { redirect: { location: "/redir.bin", status: 301 } });

    const raw = await fetchBody(redirect.url);
    assert.equal(raw.status, 302);
    assert.equal(raw.headers.location, target.url);

    const follower = new Agent().compose(interceptors.redirect({ maxRedirections: 5 }));
    try {
      const followed = await fetchBody(relative.url, {}, { dispatcher: follower });
      assert.equal(followed.status, 200);
      assert.deepEqual(followed.body, target.content());
    } finally {
      await follower.close();
    }
    assert.equal(relative.requests.length, 1);
    assert.equal(redirect.requests.length, 2);
    assert.equal(target.requests.length, 1);
  });

  it("requireToken: 401 without a token, 403 with a wrong one, 200 with the right one", async () => {
    const route = origin.route("/private.bin", { size: 100, requireToken: "s3cret" });
    const none = await fetchBody(route.url);
    assert.equal(none.status, 401);
    assert.match(String(none.headers["www-authenticate"]), /^Bearer/);
    assert.equal((await fetchBody(route.url, { Authorization: "Bearer wrong" })).status, 403);
    const ok = await fetchBody(route.url, { Authorization: "Bearer s3cret" });
    assert.equal(ok.status, 200);
    assert.deepEqual(ok.body, route.content());
  });

  it("throttles the body rate", async () => {
    const route = origin.route("/slow.bin", { size: 200 * 1024, throttleBytesPerSec: 400 * 1024 });
    const started = performance.now();
    const res = await fetchBody(route.url);
    const elapsed = performance.now() - started;
    assert.equal(sha256Hex(res.body), await route.sha256());
    assert.ok(elapsed >= 450, `took ${elapsed} ms`);
    assert.ok(elapsed < 3000, `took ${elapsed} ms`);
  });

  it("delays response headers by latencyMs", async () => {
    const route = origin.route("/laggy.bin", { size: 10, latencyMs: 250 });
    const started = performance.now();
    const res = await fetchBody(route.url);
    assert.equal(res.status, 200);
    assert.ok(res.headersAt - started >= 240, `headers after ${res.headersAt - started} ms`);
  });

  it("chunked: omits Content-Length", async () => {
    const route = origin.route("/chunked.bin", { size: 300_000, chunked: true });
    const res = await fetchBody(route.url);
    assert.equal(res.headers["content-length"], undefined);
    assert.equal(res.headers["transfer-encoding"], "chunked");
    assert.deepEqual(res.body, route.content());
  });

  it("counts concurrent responses", async () => {
    const route = origin.route("/parallel.bin", { size: 1000, latencyMs: 150 });
    origin.resetStats();
    assert.equal(origin.maxConcurrent, 0);
    assert.equal(origin.requests.length, 0);
    const results = await Promise.all([1, 2, 3].map(() => fetchBody(route.url)));
    assert.deepEqual(
      results.map((r) => r.status),
      [200, 200, 200],
    );
    assert.equal(origin.maxConcurrent, 3);
    assert.equal(origin.inFlight, 0);
    await fetchBody(route.url);
    assert.equal(origin.maxConcurrent, 3);
  });

  it("update({seed}) changes content, sha256 and ETag", async () => {
    const route = origin.route("/versioned.bin", { size: 10_000 });
    const before = await fetchBody(route.url);
    const oldSha = await route.sha256();
    route.update({ seed: "v2" });
    const afterUpdate = await fetchBody(route.url, { Range: "bytes=10-", "If-Range": String(before.headers.etag) });
    assert.equal(afterUpdate.status, 200, "old ETag must no longer satisfy If-Range");
    assert.notEqual(afterUpdate.headers.etag, before.headers.etag);
    assert.notEqual(afterUpdate.headers["last-modified"], before.headers["last-modified"]);
    assert.notDeepEqual(afterUpdate.body, before.body);
    assert.deepEqual(afterUpdate.body, deterministicBytes("v2", 0, 10_000));
    assert.notEqual(await route.sha256(), oldSha);
    assert.equal(await route.sha256(), sha256Hex(afterUpdate.body));
  });

  it("records requests with method, url, path, headers and time", async () => {
    const route = origin.route("/recorded.bin", { size: 10 });
    origin.resetStats();
    const t0 = Date.now();
    await fetchBody(`${route.url}?a=1`, { "X-Test": "yes", Range: "bytes=0-1" });
    await fetchBody(`${origin.url}/nowhere`);
    assert.equal(route.requests.length, 1);
    const [rec] = route.requests;
    assert.ok(rec);
    assert.equal(rec.method, "GET");
    assert.equal(rec.url, "/recorded.bin?a=1");
    assert.equal(rec.path, "/recorded.bin");
    assert.equal(rec.headers["x-test"], "yes");
    assert.equal(rec.headers.range, "bytes=0-1");
    assert.ok(rec.at >= t0 && rec.at <= Date.now());
    assert.deepEqual(
      origin.requests.map((r) => r.url),
      ["/recorded.bin?a=1", "/nowhere"],
    );
  });

  it("keeps connections alive between responses", async () => {
    const route = origin.route("/keepalive.txt", { body: "x".repeat(100) });
    const keepAlive = new HttpAgent({ keepAlive: true, maxSockets: 1 });
    try {
      const first = await nodeGet(route.url, keepAlive);
      const second = await nodeGet(route.url, keepAlive);
      assert.equal(first.reused, false);
      assert.equal(second.reused, true);
      assert.equal(second.body.length, 100);
    } finally {
      keepAlive.destroy();
    }
  });
});
