import assert from "node:assert/strict";
import { join } from "node:path";
import { after, afterEach, before, describe, type TestContext, test } from "node:test";
import { DownloadQueue, type DownloadQueueOptions, InvalidArgumentError } from "../src/index.js";
import { fileSha256, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";
import { type ForwardProxy, startProxy } from "./helpers/proxy.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

const PROXY_VARIABLES = ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"];
const saved = Object.fromEntries(PROXY_VARIABLES.map((name) => [name, process.env[name]]));
afterEach(() => {
  for (const name of PROXY_VARIABLES) {
    if (saved[name] === undefined) delete process.env[name];
    else process.env[name] = saved[name];
  }
});

async function fetchThrough(
  t: TestContext,
  path: string,
  options: DownloadQueueOptions,
  accessToken?: string,
): Promise<{ ok: boolean; file: string; sha256: string; requests: number }> {
  const dest = await tempDir(t);
  const route = origin.route(path, { size: 200_000, requireToken: accessToken });
  const queue = new DownloadQueue({ logger: memoryLogger().logger, retries: 0, ...options });
  const job = queue.download({ source: route.url, dest, accessToken });
  await queue.waitForJob(job, { timeoutMs: 10_000 });
  await queue.stop();
  assert.equal(job.status, "completed", job.error);
  const file = join(dest, path.split("/").at(-1) as string);
  return {
    ok: (await fileSha256(file)) === (await route.sha256()),
    file,
    sha256: await route.sha256(),
    requests: route.requests.length,
  };
}

describe("proxies", () => {
  let proxy: ForwardProxy;
  before(async () => {
    proxy = await startProxy({ credentials: "alice:s3cret" });
  });
  after(() => proxy.close());

  test("`proxy` sends every request through it; its credentials go to the proxy, the token only to the origin", async (t) => {
    const before = proxy.requests.length;
    const proxyUrl = proxy.url.replace("http://", "http://alice:s3cret@");
    const result = await fetchThrough(t, "/proxy/option.bin", { proxy: proxyUrl }, "tok-origin-only");
    assert.ok(result.ok, "sha256 matches");
    const seen = proxy.requests.slice(before);
    assert.deepEqual(
      seen.map((r) => [r.method, r.target]),
      [["CONNECT", origin.host]],
    );
    assert.equal(seen[0]?.headers["proxy-authorization"], `Basic ${Buffer.from("alice:s3cret").toString("base64")}`);
    assert.equal(seen[0]?.headers.authorization, undefined, "the origin's token is not a proxy header");
    const atOrigin = origin.requests.filter((r) => r.path === "/proxy/option.bin");
    assert.equal(atOrigin[0]?.headers.authorization, "Bearer tok-origin-only");
    assert.equal(atOrigin[0]?.headers["proxy-authorization"], undefined, "proxy credentials never reach the origin");
    assert.ok(proxy.bytesToClients >= 200_000, "the body came through the proxy");
  });

  test("without `proxy` or `dispatcher`, http_proxy / HTTP_PROXY from the environment are used", async (t) => {
    const proxyUrl = proxy.url.replace("http://", "http://alice:s3cret@");
    for (const [name, path] of [
      ["http_proxy", "/proxy/env-lower.bin"],
      ["HTTP_PROXY", "/proxy/env-upper.bin"],
    ] as const) {
      for (const variable of PROXY_VARIABLES) delete process.env[variable];
      process.env[name] = proxyUrl;
      const before = proxy.requests.length;
      const result = await fetchThrough(t, path, {});
      assert.ok(result.ok, "sha256 matches");
      assert.deepEqual(
        proxy.requests.slice(before).map((r) => r.target),
        [origin.host],
        `${name} is honoured`,
      );
    }
  });

  test("NO_PROXY keeps a host direct", async (t) => {
    for (const variable of PROXY_VARIABLES) delete process.env[variable];
    process.env.HTTPS_PROXY = proxy.url;
    process.env.HTTP_PROXY = proxy.url;
    process.env.NO_PROXY = "example.org,127.0.0.1";
    const before = proxy.requests.length;
    const result = await fetchThrough(t, "/proxy/direct.bin", {});
    assert.ok(result.ok, "sha256 matches");
    assert.equal(proxy.requests.length, before, "nothing went through the proxy");
  });

  test("a proxy that refuses us fails the job with a clear error, no token in it", async (t) => {
    const dest = await tempDir(t);
    const route = origin.route("/proxy/refused.bin", { size: 1000 });
    const queue = new DownloadQueue({ proxy: proxy.url, retries: 0, logger: memoryLogger().logger });
    const job = queue.download({ source: route.url, dest, accessToken: "tok-secret" });
    await queue.waitForJob(job, { timeoutMs: 10_000 });
    await queue.stop();
    assert.equal(job.status, "error");
    assert.equal(job.errorType, "ProxyError");
    assert.match(job.error ?? "", /HTTP 407 .* credentials: give them in the proxy URL/);
    assert.equal(route.requests.length, 0, "the origin was never reached");
    assert.doesNotMatch(JSON.stringify(job), /tok-secret/);
  });

  test("a proxy that is not an http(s) URL is refused when the queue is made", () => {
    assert.throws(() => new DownloadQueue({ proxy: "not a url" }), InvalidArgumentError);
    assert.throws(() => new DownloadQueue({ proxy: "ftp://127.0.0.1:21" }), /http:\/\/ or https:\/\//);
  });
});
