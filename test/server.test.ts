import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { EventEmitter } from "node:events";
import { existsSync } from "node:fs";
import { mkdir, symlink } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { Agent, request } from "undici";
import { prepareRoot, resolveDest } from "../src/files/root.js";
import type { DownloadQueue } from "../src/index.js";
import { EventHub, type HubEvent } from "../src/server/events.js";
import { isLoopbackHost, tokenMatches } from "../src/server/security.js";
import { createService } from "../src/server/service.js";
import {
  assertPublicUrl,
  BlockedAddressError,
  blockedReason,
  guardedDispatcher,
  redirectGuard,
  UnresolvableHostError,
} from "../src/server/ssrf.js";
import type { RestJob, RestMultiFileJob } from "../src/wire.js";
import { fileSha256, listFiles, memoryLogger, tempDir } from "./helpers/fs.js";
import { type Origin, startOrigin } from "./helpers/origin.js";
import { API, type Service, SseReader, startService, waitUntil } from "./helpers/service.js";

let origin: Origin;
before(async () => {
  origin = await startOrigin();
});
after(() => origin.close());

/** Polls the API until the job reaches `status`. */
async function jobReaches(service: Service, id: number, status: string, timeoutMs = 15_000): Promise<RestJob> {
  return waitUntil(
    async () => {
      const reply = await service.call("GET", `${API}/i/${id}`);
      const job = reply.json as RestJob;
      return job.status === status ? job : undefined;
    },
    `job ${id} to be ${status}`,
    timeoutMs,
  );
}

describe("address classifier", () => {
  const blocked: [string, RegExp][] = [
    ["10.0.0.1", /private/],
    ["10.255.255.255", /private/],
    ["172.16.0.1", /private/],
    ["172.31.255.255", /private/],
    ["192.168.1.1", /private/],
    ["127.0.0.1", /loopback/],
    ["127.255.255.254", /loopback/],
    ["169.254.169.254", /link-local/],
    ["100.64.0.1", /carrier-grade NAT/],
    ["100.127.255.255", /carrier-grade NAT/],
    ["0.0.0.0", /unspecified/],
    ["0.1.2.3", /unspecified/],
    ["224.0.0.1", /multicast/],
    ["239.255.255.250", /multicast/],
    ["240.0.0.1", /reserved/],
    ["255.255.255.255", /reserved/],
    ["192.0.2.5", /documentation/],
    ["198.18.0.1", /benchmarking/],
    ["::1", /loopback/],
    ["[::1]", /loopback/],
    ["::", /unspecified/],
    ["fe80::1", /link-local/],
    ["fe80::1%eth0", /link-local/],
    ["febf:ffff::1", /link-local/],
    ["fec0::1", /site-local/],
    ["fc00::1", /unique local/],
    ["fd12:3456:789a::1", /unique local/],
    ["ff02::1", /multicast/],
    ["::ffff:127.0.0.1", /loopback.*IPv4-mapped/],
    ["::ffff:7f00:1", /loopback.*IPv4-mapped/],
    ["::FFFF:10.1.2.3", /private.*IPv4-mapped/],
    ["::ffff:169.254.169.254", /link-local/],
    ["::ffff:0.0.0.0", /unspecified/],
    ["64:ff9b::a00:1", /private.*NAT64/],
    ["2002:c0a8:101::1", /private.*6to4/],
    ["::127.0.0.1", /loopback.*IPv4-compatible/],
    ["2001:db8::1", /documentation/],
  ];
  for (const [address, why] of blocked) {
    test(`refuses ${address}`, () => {
      assert.match(blockedReason(address) ?? "(allowed)", why);
    });
  }

  const allowed = [
    "8.8.8.8",
    "1.1.1.1",
    "11.0.0.1",
    "172.15.255.255",
    "172.32.0.1",
    "100.63.255.255",
    "100.128.0.1",
    "169.253.0.1",
    "192.169.0.1",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::1",
    "fbff::1",
  ];
  for (const address of allowed) {
    test(`allows ${address}`, () => {
      assert.equal(blockedReason(address), undefined);
    });
  }

  test("a host name is not an address", () => {
    assert.equal(blockedReason("example.com"), "not an IP address");
  });

  test("a URL is refused when any address of its host is private, and named in the message", async () => {
    const resolve = async (host: string) => (host === "mixed.test" ? ["93.184.215.14", "10.9.8.7"] : ["8.8.8.8"]);
    const policy = { allowPrivateNetworks: false, resolve };
    await assertPublicUrl(new URL("http://public.test/f"), policy);
    await assert.rejects(assertPublicUrl(new URL("http://mixed.test/f"), policy), (err: Error) => {
      assert.ok(err instanceof BlockedAddressError);
      assert.match(err.message, /10\.9\.8\.7 is a private address.*--allow-private-networks/);
      return true;
    });
    await assert.rejects(assertPublicUrl(new URL("http://[::ffff:127.0.0.1]:8080/"), policy), BlockedAddressError);
  });

  test("an unresolvable host is refused with what to check; allowing private networks skips DNS", async () => {
    const resolve = async () => {
      throw Object.assign(new Error("getaddrinfo ENOTFOUND"), { code: "ENOTFOUND" });
    };
    await assert.rejects(
      assertPublicUrl(new URL("http://nowhere.test/"), { allowPrivateNetworks: false, resolve }),
      (err: Error) => err instanceof UnresolvableHostError && /ENOTFOUND.*check the URL/.test(err.message),
    );
    await assertPublicUrl(new URL("http://nowhere.test/"), { allowPrivateNetworks: true, resolve });
    assert.equal(redirectGuard({ allowPrivateNetworks: true }), undefined);
  });

  test("the guarded dispatcher refuses to connect to a name that resolves to loopback", async () => {
    const route = origin.route("/guarded.bin", { size: 10 });
    const dispatcher = guardedDispatcher();
    try {
      const port = new URL(origin.url).port;
      await assert.rejects(request(`http://localhost:${port}/guarded.bin`, { dispatcher }), (err: Error) => {
        assert.equal((err as { code?: string }).code, "DLQ_ERR_BLOCKED_ADDRESS");
        return true;
      });
      assert.equal(route.requests.length, 0);
    } finally {
      await dispatcher.close();
    }
  });
});

describe("destinations inside the root", () => {
  test("relative paths land under the root; absolute paths, '..' and escaping links are refused", async (t) => {
    const root = await prepareRoot(join(await tempDir(t), "root"));
    const outside = await tempDir(t);
    await mkdir(join(root, "inside"));
    await symlink(outside, join(root, "out"));
    await symlink(join(root, "inside"), join(root, "alias"));
    await symlink(join(root, "missing"), join(root, "dangling"));

    assert.equal(await resolveDest(root, ""), root);
    assert.equal(await resolveDest(root, "models/sd"), join(root, "models/sd"));
    assert.equal(await resolveDest(root, "models/sd/"), `${join(root, "models/sd")}/`);
    assert.equal(await resolveDest(root, "./a/./b"), join(root, "a/b"));
    assert.equal(await resolveDest(root, "alias/x"), join(root, "alias/x"));
    const refusals: [string, RegExp][] = [
      ["/etc", /absolute path; give a path relative to the download root/],
      ["..", /contains "\.\."/],
      ["a/../../x", /contains "\.\."/],
      ["out", /symbolic link to .* outside the download root/],
      ["out/x/y", /"out", a symbolic link/],
      ["dangling/x", /target does not exist/],
      ["a\0b", /NUL/],
    ];
    for (const [dest, why] of refusals) {
      await assert.rejects(resolveDest(root, dest), why, dest);
    }
  });
});

describe("REST API", () => {
  test("create, get, list: the file arrives byte-exact and the job is the seed's JSON", async (t) => {
    const service = await startService(t);
    const route = origin.route("/api/model.bin", { size: 3 * 1024 * 1024 + 17 });
    const created = await service.call("POST", `${API}/i/`, {
      body: { source: route.url, dest: "models/sd/", priority: 3 },
    });
    assert.equal(created.status, 200, created.text);
    const job = created.json as RestJob;
    assert.equal(job.source, route.url);
    assert.equal(job.dest, join(service.root, "models/sd"));
    assert.equal(job.priority, 3);
    assert.ok(["waiting", "running"].includes(job.status));
    assert.equal(typeof job.id, "number");

    const done = await jobReaches(service, job.id, "completed");
    assert.equal(done.download_path, join(service.root, "models/sd/model.bin"));
    assert.equal(done.bytes, route.size);
    assert.equal(done.total_bytes, route.size);
    assert.equal(await fileSha256(join(service.root, "models/sd/model.bin")), await route.sha256());

    const list = await service.call("GET", `${API}/`);
    assert.equal(list.status, 200);
    assert.match(String(list.headers["x-last-event-id"]), /^\d+$/);
    assert.deepEqual(
      (list.json as RestJob[]).map((j) => [j.id, j.status]),
      [[job.id, "completed"]],
    );
    // InvokeAI's paths work without the trailing slash too.
    assert.equal((await service.call("GET", API)).status, 200);
  });

  test('an empty dest is the root itself, for single and multi-file jobs; priority defaults to 10; "access_token": null is accepted', async (t) => {
    const service = await startService(t);
    const route = origin.route("/api/root.bin", { size: 5000 });
    const created = await service.call("POST", `${API}/i/`, {
      body: { source: route.url, dest: "", access_token: null },
    });
    assert.equal(created.status, 200, created.text);
    const job = created.json as RestJob;
    assert.equal(job.priority, 10);
    assert.equal(job.dest, service.root);
    await jobReaches(service, job.id, "completed");
    assert.equal(await fileSha256(join(service.root, "root.bin")), await route.sha256());
    const multi = await service.call("POST", `${API}/multi/`, {
      body: { parts: [{ url: route.url, path: "copy/root.bin" }], dest: "" },
    });
    assert.equal(multi.status, 200, multi.text);
    assert.equal((multi.json as RestMultiFileJob).download_path, join(service.root, "copy"));
    await jobReaches(service, (multi.json as RestMultiFileJob).id, "completed");
    assert.equal(await fileSha256(join(service.root, "copy/root.bin")), await route.sha256());
  });

  test("multi-file jobs: every part byte-exact under dest, listed under /multi/", async (t) => {
    const service = await startService(t);
    const a = origin.route("/repo/unet/model.safetensors", { size: 200_000 });
    const b = origin.route("/repo/vae/config.json", { body: '{"a":1}' });
    const created = await service.call("POST", `${API}/multi/`, {
      body: {
        parts: [
          { url: a.url, path: "sdxl/unet/model.safetensors" },
          { url: b.url, path: "sdxl/vae/config.json" },
        ],
        dest: "models",
      },
    });
    assert.equal(created.status, 200, created.text);
    const multi = created.json as RestMultiFileJob;
    assert.equal(multi.download_parts.length, 2);
    assert.equal(multi.download_path, join(service.root, "models/sdxl"));
    await waitUntil(
      async () => ((await service.call("GET", `${API}/i/${multi.id}`)).json as RestMultiFileJob).status === "completed",
      "the multi-file job to complete",
    );
    assert.equal(await fileSha256(join(service.root, "models/sdxl/unet/model.safetensors")), await a.sha256());
    assert.equal(await fileSha256(join(service.root, "models/sdxl/vae/config.json")), await b.sha256());
    const list = await service.call("GET", `${API}/multi/`);
    assert.deepEqual(
      (list.json as RestMultiFileJob[]).map((m) => [m.id, m.status]),
      [[multi.id, "completed"]],
    );
  });

  test("REST jobs carry every field of InvokeAI's DownloadJob, null when unset; the library keeps exclude_none", async (t) => {
    const service = await startService(t, { queueOptions: { maxParallelDownloads: 1 } });
    const fields = [
      "source",
      "dest",
      "id",
      "priority",
      "status",
      "download_path",
      "job_started",
      "job_ended",
      "bytes",
      "total_bytes",
      "content_type",
      "error_type",
      "error",
    ];
    const slow = origin.route("/api/fields-slow.bin", {
      size: 256 * 1024,
      throttleBytesPerSec: 512 * 1024,
      contentType: "application/x-safetensors",
    });
    const first = (await service.call("POST", `${API}/i/`, { body: { source: slow.url, dest: "" } })).json as RestJob;
    const waiting = await service.call("POST", `${API}/i/`, {
      body: { source: `${origin.url}/api/not-here.bin`, dest: "" },
    });
    const job = waiting.json as RestJob;
    assert.deepEqual(Object.keys(job), fields);
    assert.equal(job.status, "waiting");
    for (const key of ["download_path", "job_started", "job_ended", "content_type", "error_type", "error"] as const)
      assert.equal(job[key], null, key);
    // The library's own JSON is the seed's exclude_none form: no nulls, unset fields absent.
    const library = JSON.parse(JSON.stringify(service.queue.idToJob(job.id))) as Record<string, unknown>;
    assert.ok(!Object.values(library).includes(null));
    assert.ok(!("download_path" in library) && !("content_type" in library));

    const done = await jobReaches(service, first.id, "completed");
    assert.deepEqual(Object.keys(done), fields);
    assert.equal(done.content_type, "application/x-safetensors");
    assert.equal(done.error_type, null);
    assert.equal(done.error, null);
    assert.match(String(done.job_ended), /^\d{4}-\d\d-\d\dT.*Z$/);
    const failed = await jobReaches(service, job.id, "error");
    assert.equal(failed.error_type, "HTTPError(Not Found)");
    assert.equal(typeof failed.error, "string");
    const listed = (await service.call("GET", `${API}/`)).json as RestJob[];
    for (const each of listed) assert.deepEqual(Object.keys(each), fields);

    const part = origin.route("/api/fields-part.bin", { size: 1000, contentType: "application/json" });
    const multi = await service.call("POST", `${API}/multi/`, {
      body: { parts: [{ url: part.url, path: "p.json" }], dest: "m" },
    });
    const multiJob = multi.json as RestMultiFileJob;
    assert.deepEqual(Object.keys(multiJob), [
      "id",
      "dest",
      "status",
      "download_path",
      "bytes",
      "total_bytes",
      "error_type",
      "error",
      "download_parts",
    ]);
    assert.equal(multiJob.error_type, null);
    assert.deepEqual(Object.keys(multiJob.download_parts[0] ?? {}), fields);
    await waitUntil(
      async () =>
        ((await service.call("GET", `${API}/i/${multiJob.id}`)).json as RestMultiFileJob).status === "completed",
      "the multi-file job to complete",
    );
    const multiDone = (await service.call("GET", `${API}/multi/`)).json as RestMultiFileJob[];
    assert.equal(multiDone[0]?.download_parts[0]?.content_type, "application/json");

    // The OpenAPI page says which fields may be null.
    const spec = (await service.call("GET", "/docs/json")).json as {
      components: { schemas: Record<string, { properties: Record<string, { type: string; nullable?: boolean }> }> };
    };
    const documented = spec.components.schemas.DownloadJob?.properties ?? {};
    for (const key of ["download_path", "job_started", "job_ended", "content_type", "error_type", "error"])
      assert.deepEqual([documented[key]?.type, documented[key]?.nullable], ["string", true], key);
    assert.ok(spec.components.schemas.HTTPValidationError, "the 422 body is documented");
  });

  test("cancel one job, cancel all, prune: 204s, no files left, pruned jobs are gone", async (t) => {
    const service = await startService(t);
    const slow = (name: string) =>
      origin.route(`/api/${name}`, { size: 4 * 1024 * 1024, throttleBytesPerSec: 256 * 1024 });
    const ids: number[] = [];
    for (const name of ["one.bin", "two.bin", "three.bin"]) {
      const reply = await service.call("POST", `${API}/i/`, { body: { source: slow(name).url, dest: "" } });
      ids.push((reply.json as RestJob).id);
    }
    const [first, ...rest] = ids as [number, number, number];
    await jobReaches(service, first, "running");
    const cancelled = await service.call("DELETE", `${API}/i/${first}`);
    assert.equal(cancelled.status, 204);
    assert.equal(cancelled.text, "");
    await jobReaches(service, first, "cancelled");

    const all = await service.call("DELETE", `${API}/i`);
    assert.equal(all.status, 204);
    for (const id of rest) await jobReaches(service, id, "cancelled");
    await waitUntil(async () => (await listFiles(service.root)).length === 0, "partial files to be deleted");

    const pruned = await service.call("PATCH", `${API}/`);
    assert.equal(pruned.status, 204);
    assert.deepEqual((await service.call("GET", `${API}/`)).json, []);
    const gone = await service.call("GET", `${API}/i/${first}`);
    assert.equal(gone.status, 404);
  });

  test("pause keeps the partial file; resume continues it with a Range request and completes byte-exact", async (t) => {
    const service = await startService(t);
    const route = origin.route("/api/pausable.bin", { size: 1024 * 1024, throttleBytesPerSec: 512 * 1024 });
    const job = (await service.call("POST", `${API}/i/`, { body: { source: route.url, dest: "" } })).json as RestJob;
    await waitUntil(
      async () => ((await service.call("GET", `${API}/i/${job.id}`)).json as RestJob).bytes > 64 * 1024,
      "some bytes",
    );
    const paused = await service.call("POST", `${API}/i/${job.id}/pause`);
    assert.equal(paused.status, 204);
    const pausedJob = await jobReaches(service, job.id, "paused");
    assert.ok(pausedJob.bytes > 0 && pausedJob.bytes < route.size, `paused at ${pausedJob.bytes}`);

    const resumed = await service.call("POST", `${API}/i/${job.id}/resume`);
    assert.equal(resumed.status, 204);
    await jobReaches(service, job.id, "completed");
    assert.equal(await fileSha256(join(service.root, "pausable.bin")), await route.sha256());
    assert.match(String(route.requests.at(-1)?.headers.range), /^bytes=[1-9]\d*-$/);
  });

  test("unknown ids: 404 with a detail on get, cancel, pause and resume", async (t) => {
    const service = await startService(t);
    for (const [method, path] of [
      ["GET", "/i/4242"],
      ["DELETE", "/i/4242"],
      ["POST", "/i/4242/pause"],
      ["POST", "/i/4242/resume"],
    ] as const) {
      const reply = await service.call(method, `${API}${path}`);
      assert.equal(reply.status, 404, `${method} ${path}`);
      assert.match((reply.json as { detail: string }).detail, /No job with id 4242/);
    }
    const unknownRoute = await service.call("GET", "/api/v2/nothing");
    assert.equal(unknownRoute.status, 404);
    assert.match((unknownRoute.json as { detail: string }).detail, /No route GET \/api\/v2\/nothing/);
  });

  test("refusals say what to fix: bad URLs, schemes, destinations, bodies (400, 413, 415)", async (t) => {
    const service = await startService(t);
    const outside = await tempDir(t);
    await symlink(outside, join(service.root, "escape"));
    const source = origin.route("/api/never.bin", { size: 10 }).url;
    const cases: [string, unknown, RegExp][] = [
      ["bad URL", { source: "not a url", dest: "" }, /Invalid URL "not a url": give an absolute http/],
      ["ftp", { source: "ftp://example.com/f", dest: "" }, /Unsupported URL scheme "ftp:"/],
      ["absolute dest", { source, dest: "/etc/cron.d" }, /absolute path/],
      ["dot-dot dest", { source, dest: "models/../../etc" }, /contains "\.\."/],
      ["symlink escape", { source, dest: "escape/x" }, /symbolic link to .* outside the download root/],
    ];
    for (const [name, body, detail] of cases) {
      const reply = await service.call("POST", `${API}/i/`, { body });
      assert.equal(reply.status, 400, `${name}: ${reply.text}`);
      assert.match((reply.json as { detail: string }).detail, detail, name);
    }
    const multiCases: [string, unknown, RegExp][] = [
      ["part escape", { parts: [{ url: source, path: "../a" }], dest: "m" }, /contains "\.\."/],
      ["part scheme", { parts: [{ url: "file:///etc/passwd", path: "a" }], dest: "" }, /Unsupported URL scheme/],
    ];
    for (const [name, body, detail] of multiCases) {
      const reply = await service.call("POST", `${API}/multi/`, { body });
      assert.equal(reply.status, 400, `${name}: ${reply.text}`);
      assert.match((reply.json as { detail: string }).detail, detail, name);
    }
    const badJson = await service.call("POST", `${API}/i/`, {
      rawBody: "{not json",
      headers: { "content-type": "application/json" },
    });
    assert.equal(badJson.status, 400);
    assert.match((badJson.json as { detail: string }).detail, /not valid JSON/);
    const empty = await service.call("POST", `${API}/i/`, {
      rawBody: "",
      headers: { "content-type": "application/json" },
    });
    assert.equal(empty.status, 400);
    assert.match((empty.json as { detail: string }).detail, /body is empty/);
    const text = await service.call("POST", `${API}/i/`, { rawBody: "x", headers: { "content-type": "text/plain" } });
    assert.equal(text.status, 415);
    assert.match((text.json as { detail: string }).detail, /application\/json/);
    const huge = await service.call("POST", `${API}/i/`, { body: { source, dest: "x".repeat(70 * 1024) } });
    assert.equal(huge.status, 413);
    assert.match((huge.json as { detail: string }).detail, /too large/);
    assert.equal(origin.requests.filter((r) => r.path === "/api/never.bin").length, 0);
    assert.deepEqual((await service.call("GET", `${API}/`)).json, []);
  });

  test("body validation is FastAPI's: 422 with a detail list, nothing converted, each msg says what to send", async (t) => {
    const service = await startService(t);
    const source = origin.route("/api/never-422.bin", { size: 10 }).url;
    type Issue = { loc: (string | number)[]; msg: string; type: string };
    const cases: [string, unknown, Issue[]][] = [
      [
        "priority as a string",
        { source, dest: "", priority: "5" },
        [
          {
            loc: ["body", "priority"],
            msg: 'priority must be a whole number, not the string "5"; send 5 without quotes.',
            type: "int_type",
          },
        ],
      ],
      [
        "priority fractional",
        { source, dest: "", priority: 1.5 },
        [{ loc: ["body", "priority"], msg: "priority must be a whole number, not the number 1.5.", type: "int_type" }],
      ],
      [
        "priority too large",
        { source, dest: "", priority: 2 ** 31 },
        [
          {
            loc: ["body", "priority"],
            msg: "priority must be at most 2147483647, not the number 2147483648.",
            type: "less_than_equal",
          },
        ],
      ],
      [
        "priority too small",
        { source, dest: "", priority: -(2 ** 31) - 1 },
        [
          {
            loc: ["body", "priority"],
            msg: "priority must be at least -2147483648, not the number -2147483649.",
            type: "greater_than_equal",
          },
        ],
      ],
      [
        "source as a number",
        { source: 5, dest: "" },
        [{ loc: ["body", "source"], msg: "source must be a string, not the number 5.", type: "string_type" }],
      ],
      [
        "dest null",
        { source, dest: null },
        [{ loc: ["body", "dest"], msg: "dest must be a string, not null.", type: "string_type" }],
      ],
      ["missing dest", { source }, [{ loc: ["body", "dest"], msg: "Field required: add dest.", type: "missing" }]],
      [
        "token as an object",
        { source, dest: "", access_token: { value: "x" } },
        [
          {
            loc: ["body", "access_token"],
            msg: "access_token must be a string or null, not an object.",
            type: "string_type",
          },
        ],
      ],
      [
        "every failure listed",
        { source: true, priority: "high" },
        [
          { loc: ["body", "dest"], msg: "Field required: add dest.", type: "missing" },
          { loc: ["body", "source"], msg: "source must be a string, not true.", type: "string_type" },
          {
            loc: ["body", "priority"],
            msg: 'priority must be a whole number, not the string "high".',
            type: "int_type",
          },
        ],
      ],
      ["body a list", [], [{ loc: ["body"], msg: "The body must be an object, not a list.", type: "dict_type" }]],
    ];
    for (const [name, body, detail] of cases) {
      const reply = await service.call("POST", `${API}/i/`, { body });
      assert.equal(reply.status, 422, `${name}: ${reply.text}`);
      assert.deepEqual(
        (reply.json as { detail: Issue[] }).detail.sort((a, b) => a.msg.localeCompare(b.msg)),
        detail.sort((a, b) => a.msg.localeCompare(b.msg)),
        name,
      );
    }
    const multiCases: [string, unknown, Issue[]][] = [
      [
        "no parts",
        { parts: [], dest: "" },
        [{ loc: ["body", "parts"], msg: "parts must list at least 1 item; it is empty.", type: "too_short" }],
      ],
      [
        "part url a number",
        {
          parts: [
            { url: source, path: "a" },
            { url: 7, path: "b" },
          ],
          dest: "",
        },
        [
          {
            loc: ["body", "parts", 1, "url"],
            msg: "parts[1].url must be a string, not the number 7.",
            type: "string_type",
          },
        ],
      ],
      [
        "part path empty",
        { parts: [{ url: source, path: "" }], dest: "" },
        [{ loc: ["body", "parts", 0, "path"], msg: "parts[0].path must not be empty.", type: "string_too_short" }],
      ],
    ];
    for (const [name, body, detail] of multiCases) {
      const reply = await service.call("POST", `${API}/multi/`, { body });
      assert.equal(reply.status, 422, `${name}: ${reply.text}`);
      assert.deepEqual((reply.json as { detail: Issue[] }).detail, detail, name);
    }
    assert.equal(origin.requests.filter((r) => r.path === "/api/never-422.bin").length, 0);
    assert.deepEqual((await service.call("GET", `${API}/`)).json, []);

    // The bounds themselves are accepted.
    for (const priority of [2 ** 31 - 1, -(2 ** 31)]) {
      const reply = await service.call("POST", `${API}/i/`, { body: { source, dest: `p${priority}`, priority } });
      assert.equal(reply.status, 200, reply.text);
      assert.equal((reply.json as RestJob).priority, priority);
    }
  });

  test("unknown fields are ignored, as pydantic does, and never reach the queue", async (t) => {
    const service = await startService(t);
    const route = origin.route("/api/extra-fields.bin", { size: 2048 });
    const reply = await service.call("POST", `${API}/i/`, {
      body: { source: route.url, dest: "x.bin", sha256: "0".repeat(64), headers: { cookie: "c=1" }, foo: 1 },
    });
    assert.equal(reply.status, 200, reply.text);
    const job = reply.json as Record<string, unknown>;
    for (const key of ["sha256", "headers", "foo"]) assert.ok(!(key in job), key);
    // A sha256 that reached the queue would fail this download with ChecksumMismatch.
    const done = await jobReaches(service, job.id as number, "completed");
    assert.equal(done.error_type, null);
    assert.equal(route.requests[0]?.headers.cookie, undefined);
    assert.equal(await fileSha256(join(service.root, "x.bin")), await route.sha256());
    const multi = await service.call("POST", `${API}/multi/`, {
      body: { parts: [{ url: route.url, path: "m/y.bin", sha256: "0".repeat(64) }], dest: "", extra: true },
    });
    assert.equal(multi.status, 200, multi.text);
    await waitUntil(
      async () => ((await service.call("GET", `${API}/multi/`)).json as RestMultiFileJob[])[0]?.status === "completed",
      "the multi-file job to complete",
    );
  });

  test("__proto__, constructor and prototype keys are refused as not allowed, anywhere in a body", async (t) => {
    const service = await startService(t);
    const source = origin.route("/api/never-proto.bin", { size: 10 }).url;
    const bodies: [string, string, string][] = [
      ["/i/", `{"source":"${source}","dest":"","__proto__":{"priority":1}}`, "__proto__"],
      ["/i/", `{"source":"${source}","dest":"","constructor":{"prototype":{"x":1}}}`, "prototype"],
      ["/i/", `{"source":"${source}","dest":"","constructor":1}`, "constructor"],
      ["/i/", `{"source":"${source}","dest":"","prototype":1}`, "prototype"],
      ["/multi/", `{"parts":[{"url":"${source}","path":"a","__proto__":{}}],"dest":""}`, "__proto__"],
    ];
    for (const [route, rawBody, key] of bodies) {
      const reply = await service.call("POST", `${API}${route}`, {
        rawBody,
        headers: { "content-type": "application/json" },
      });
      assert.equal(reply.status, 400, rawBody);
      const { detail } = reply.json as { detail: string };
      assert.match(detail, new RegExp(`The field ${key} is not allowed`), rawBody);
      assert.doesNotMatch(detail, /not valid JSON/);
    }
    assert.deepEqual((await service.call("GET", `${API}/`)).json, []);
  });

  test("ids that cannot exist are 404 with a detail, on every route that takes one", async (t) => {
    const service = await startService(t);
    for (const id of ["-1", "abc", "1.5", "99999999999999999999", "9007199254740992", "1e3", "0x1", "%20"]) {
      for (const [method, path] of [
        ["GET", `/i/${id}`],
        ["DELETE", `/i/${id}`],
        ["POST", `/i/${id}/pause`],
        ["POST", `/i/${id}/resume`],
      ] as const) {
        const reply = await service.call(method, `${API}${path}`);
        assert.equal(reply.status, 404, `${method} ${path}: ${reply.text}`);
        assert.match((reply.json as { detail: string }).detail, /No job with id .*job ids are whole numbers from 0/);
      }
    }
  });

  test("names longer than the file system allows are refused at submission, for dest and part paths", async (t) => {
    const service = await startService(t);
    const route = origin.route("/api/never-long.bin", { size: 10 });
    const folder256 = "é".repeat(128); // 128 characters, 256 bytes
    const file201 = `${"a".repeat(197)}.bin`;
    const cases: [string, string, unknown, RegExp][] = [
      ["/i/", "folder", { source: route.url, dest: `${folder256}/` }, /name of 256 bytes.*at most 255 bytes/],
      ["/i/", "inner folder", { source: route.url, dest: `m/${folder256}/x.bin` }, /name of 256 bytes/],
      ["/i/", "file", { source: route.url, dest: `m/${file201}` }, /names a file of 201 bytes.*at most 200/],
      [
        "/multi/",
        "part file",
        { parts: [{ url: route.url, path: `unet/${file201}` }], dest: "sd" },
        /names a file of 201 bytes/,
      ],
      [
        "/multi/",
        "part folder",
        { parts: [{ url: route.url, path: `${folder256}/x` }], dest: "" },
        /name of 256 bytes/,
      ],
    ];
    for (const [path, name, body, why] of cases) {
      const reply = await service.call("POST", `${API}${path}`, { body });
      assert.equal(reply.status, 400, `${name}: ${reply.text}`);
      assert.match((reply.json as { detail: string }).detail, why, name);
    }
    assert.deepEqual((await service.call("GET", `${API}/`)).json, []);
    assert.equal(route.requests.length, 0);

    // At the limits, the same names download: a 255-byte folder, a 200-byte file, and a long folder named with "/".
    const ok = origin.route("/api/long-ok.bin", { size: 1000 });
    const folder255 = `${"é".repeat(127)}f`;
    const file200 = `${"b".repeat(196)}.bin`;
    const accepted = [`${folder255}/${file200}`, `${"c".repeat(240)}/`];
    for (const dest of accepted) {
      const reply = await service.call("POST", `${API}/i/`, { body: { source: ok.url, dest } });
      assert.equal(reply.status, 200, reply.text);
      await jobReaches(service, (reply.json as RestJob).id, "completed");
    }
    assert.equal(await fileSha256(join(service.root, folder255, file200)), await ok.sha256());
    assert.equal(await fileSha256(join(service.root, "c".repeat(240), "long-ok.bin")), await ok.sha256());
  });

  test("an access token is used for the download but never appears in a response or an event", async (t) => {
    const service = await startService(t);
    const secret = "hf_Secret_Token_9f8e7d6c5b4a";
    const guarded = origin.route("/api/gated.bin", { size: 100_000, requireToken: secret });
    const refused = origin.route("/api/other-gated.bin", { size: 100, requireToken: "a-different-token" });
    const events = await SseReader.open(`${service.base}${API}/events`, {}, service.received);

    const ok = await service.call("POST", `${API}/i/`, {
      body: { source: guarded.url, dest: "", access_token: secret },
    });
    const failed = await service.call("POST", `${API}/i/`, {
      body: { source: refused.url, dest: "", access_token: secret },
    });
    const unknownField = await service.call("POST", `${API}/i/`, {
      body: { source: guarded.url, dest: "", access_token: secret, token: secret },
    });
    assert.equal(unknownField.status, 200, unknownField.text);
    assert.ok(!("token" in (unknownField.json as object)));
    const okJob = await jobReaches(service, (ok.json as RestJob).id, "completed");
    const failedJob = await jobReaches(service, (failed.json as RestJob).id, "error");
    assert.match(String(failedJob.error_type), /HTTPError\(Forbidden\)/);
    assert.equal(guarded.requests[0]?.headers.authorization, `Bearer ${secret}`);
    await events.waitFor((e) => e.event === "download_error");
    await events.waitFor((e) => e.event === "download_complete");
    for (const path of ["/", `/i/${okJob.id}`, `/i/${failedJob.id}`, "/multi/"])
      await service.call("GET", `${API}${path}`);
    await service.call("GET", "/docs/json");
    await events.close();

    assert.ok(service.received.length > 8);
    assert.ok(service.received.join("").includes(guarded.url), "the search covers what was sent");
    for (const text of service.received)
      assert.ok(!text.includes(secret), `the token leaked in: ${text.slice(0, 300)}`);
  });

  test("OpenAPI at /docs documents every route; the page is served at / with a strict CSP", async (t) => {
    const service = await startService(t);
    const spec = (await service.call("GET", "/docs/json")).json as { paths: Record<string, Record<string, unknown>> };
    // With or without the trailing slash, both of which are served.
    const routes = Object.entries(spec.paths).flatMap(([path, methods]) =>
      Object.keys(methods).map((method) => `${method.toUpperCase()} ${path.replace(/\/$/, "")}`),
    );
    for (const route of [
      `GET ${API}`,
      `PATCH ${API}`,
      `POST ${API}/i`,
      `GET ${API}/i/{id}`,
      `DELETE ${API}/i/{id}`,
      `DELETE ${API}/i`,
      `POST ${API}/i/{id}/pause`,
      `POST ${API}/i/{id}/resume`,
      `POST ${API}/multi`,
      `GET ${API}/multi`,
      `GET ${API}/events`,
    ]) {
      assert.ok(routes.includes(route), `${route} missing from ${routes.join(", ")}`);
    }
    const ui = await request(`${service.base}/docs`, { maxRedirections: 0 } as never);
    await ui.body.dump();
    assert.ok([200, 302].includes(ui.statusCode));

    const page = await service.call("GET", "/");
    assert.equal(page.status, 200, "run `npm run build` first: the page is served from dist/web");
    assert.match(String(page.headers["content-type"]), /text\/html/);
    assert.match(String(page.headers["content-security-policy"]), /script-src 'self'/);
    assert.match(page.text, /<script type="module" src="app.js">/);
    assert.equal((await service.call("GET", "/app.js")).status, 200);
  });
});

describe("access control", () => {
  const token = "test-auth-token-0123456789";

  test("with --auth-token, the API needs the Bearer token; the page and the docs do not", async (t) => {
    const service = await startService(t, { authToken: token });
    const missing = await service.call("GET", `${API}/`);
    assert.equal(missing.status, 401);
    assert.equal(missing.headers["www-authenticate"], 'Bearer realm="dlqueue"');
    assert.match((missing.json as { detail: string }).detail, /no credentials were sent.*Authorization: Bearer/);
    const wrong = await service.call("GET", `${API}/`, { headers: { authorization: "Bearer nope" } });
    assert.equal(wrong.status, 401);
    assert.match((wrong.json as { detail: string }).detail, /the token is wrong/);
    const right = await service.call("GET", `${API}/`, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(right.status, 200);

    const route = origin.route("/auth/f.bin", { size: 10 });
    const post = await service.call("POST", `${API}/i/`, { body: { source: route.url, dest: "" } });
    assert.equal(post.status, 401);
    assert.equal(service.queue.listJobs().length, 0);
    for (const [method, path] of [
      ["PATCH", "/"],
      ["DELETE", "/i"],
      ["DELETE", "/i/0"],
      ["POST", "/i/0/pause"],
      ["GET", "/multi/"],
    ] as const) {
      assert.equal((await service.call(method, `${API}${path}`)).status, 401, `${method} ${path}`);
    }
    // ?token= is for EventSource only: elsewhere it does not count.
    assert.equal((await service.call("GET", `${API}/?token=${token}`)).status, 401);

    const noEvents = await SseReader.open(`${service.base}${API}/events`);
    assert.equal(noEvents.status, 401);
    await noEvents.close();
    const events = await SseReader.open(`${service.base}${API}/events?token=${token}`);
    assert.equal(events.status, 200);
    assert.match(String(events.headers["content-type"]), /text\/event-stream/);
    await events.close();

    assert.equal((await service.call("GET", "/")).status, 200);
    assert.equal((await service.call("GET", "/docs/json")).status, 200);
  });

  test("no spelling of an API path gets past the token: encoded, doubled slashes, dot segments, case", async (t) => {
    const service = await startService(t, { authToken: token });
    const auth = { authorization: `Bearer ${token}` };
    // Job 0 exists and is paused, so a request that got through would answer 2xx or change it.
    const slow = origin.route("/spell/slow.bin", { size: 1024 * 1024, throttleBytesPerSec: 64 * 1024 });
    const submitted = await service.call("POST", `${API}/i/`, { body: { source: slow.url, dest: "" }, headers: auth });
    assert.equal(submitted.status, 200, submitted.text);
    assert.equal((await service.call("POST", `${API}/i/0/pause`, { headers: auth })).status, 204);
    await waitUntil(() => service.queue.idToJob(0).status === "paused", "job 0 to be paused");
    const never = origin.route("/spell/never.bin", { size: 10 });

    const routes: [string, string, unknown?][] = [
      ["GET", "/"],
      ["HEAD", "/"],
      ["PATCH", "/"],
      ["POST", "/i/", { source: never.url, dest: "" }],
      ["GET", "/i/0"],
      ["HEAD", "/i/0"],
      ["DELETE", "/i/0"],
      ["DELETE", "/i"],
      ["POST", "/i/0/pause"],
      ["POST", "/i/0/resume"],
      ["POST", "/multi/", { parts: [{ url: never.url, path: "a" }], dest: "" }],
      ["GET", "/multi/"],
      ["GET", "/events"],
    ];
    const spellings = (suffix: string): string[] => {
      const flipped = suffix.endsWith("/") ? suffix.slice(0, -1) : `${suffix}/`;
      return [
        `/api/v1/download_queue${suffix}`,
        `/api/v1/download_queue${flipped}`,
        `/api/v1/download_queue${suffix}//`,
        `/%61pi/v1/download_queue${suffix}`,
        `/%61%70%69/v1/download_queue${suffix}`,
        `/api/v1/download%5Fqueue${suffix}`,
        `/api/v1/download%5fqueue${flipped}`,
        `/api%2Fv1%2Fdownload_queue${suffix}`,
        `/api/v1/download_queue${suffix.replace(/[a-z]/, (c) => `%${c.charCodeAt(0).toString(16)}`)}`,
        `//api/v1//download_queue${suffix}`,
        `/api//v1/download_queue${suffix}`,
        `/x/../api/v1/download_queue${suffix}`,
        `/api/./v1/download_queue${suffix}`,
        `/api/v1/./download_queue/.${suffix}`,
        `/api/v1/download_queue/x/..${suffix}`,
        `/API/v1/download_queue${suffix}`,
        `/Api/V1/Download_Queue${suffix.toUpperCase()}`,
        // ?token= counts on the event stream only (tested below).
        ...(suffix === "/events" ? [] : [`/api/v1/download_queue${suffix}?token=${token}`]),
      ];
    };
    let tried = 0;
    for (const [method, suffix, body] of routes) {
      for (const path of spellings(suffix)) {
        for (const headers of [{}, { authorization: "Bearer wrong" }, { authorization: token }] as Record<
          string,
          string
        >[]) {
          const reply = await service.raw(method, path, { body, headers });
          tried++;
          assert.ok(
            reply.status === 401 || reply.status === 404,
            `${method} ${path} ${JSON.stringify(headers)} answered ${reply.status}: ${reply.text.slice(0, 200)}`,
          );
        }
      }
    }
    assert.ok(tried > 500);
    assert.deepEqual(
      service.queue.listJobs().map((job) => [job.id, job.status]),
      [[0, "paused"]],
    );
    assert.equal(service.queue.listMultifileJobs().length, 0);
    assert.equal(never.requests.length, 0);
    // The same spellings that the router accepts do reach the API with the token: the refusals above are the guard's.
    const encoded = await service.raw("GET", "/%61pi/v1/download_queue/i/0", { headers: auth });
    assert.equal(encoded.status, 200, encoded.text);
  });

  test("the Bearer scheme is case-insensitive; ?token= works on /events and /events/ only", async (t) => {
    const service = await startService(t, { authToken: token });
    for (const scheme of ["Bearer", "bearer", "BEARER", "bEaReR"]) {
      const reply = await service.call("GET", `${API}/`, { headers: { authorization: `${scheme} ${token}` } });
      assert.equal(reply.status, 200, scheme);
    }
    for (const header of [`Basic ${token}`, `Bearer${token}`, `Bearer ${token} extra`, `${token}`, "Bearer "]) {
      const reply = await service.call("GET", `${API}/`, { headers: { authorization: header } });
      assert.equal(reply.status, 401, header);
    }
    for (const path of ["/events", "/events/"]) {
      const reply = await service.raw("GET", `${API}${path}?token=${token}`);
      assert.equal(reply.status, 200, path);
      assert.match(String(reply.headers["content-type"]), /text\/event-stream/);
      assert.equal((await service.raw("GET", `${API}${path}?token=nope`)).status, 401, path);
    }
    for (const path of ["/", "/multi/", "/i/0"]) {
      assert.equal((await service.raw("GET", `${API}${path}?token=${token}`)).status, 401, path);
    }
  });

  test("the token comparison is exact, whatever the lengths", () => {
    assert.equal(tokenMatches(token, token), true);
    assert.equal(tokenMatches(`${token}x`, token), false);
    assert.equal(tokenMatches(token.slice(0, -1), token), false);
    assert.equal(tokenMatches("", token), false);
    assert.equal(tokenMatches(undefined, token), false);
  });

  test("without a token: only loopback host names are answered (DNS rebinding), cross-site writes are refused", async (t) => {
    const service = await startService(t);
    const rebound = await service.call("GET", `${API}/`, { headers: { host: "attacker.example:80" } });
    assert.equal(rebound.status, 403);
    assert.match((rebound.json as { detail: string }).detail, /answers only to localhost.*--auth-token/);
    assert.equal((await service.call("GET", `${API}/`, { headers: { host: "localhost:1" } })).status, 200);

    const crossSite = await service.call("DELETE", `${API}/i`, { headers: { origin: "https://evil.example" } });
    assert.equal(crossSite.status, 403);
    assert.match((crossSite.json as { detail: string }).detail, /--cors https:\/\/evil\.example/);
    const sameSite = await service.call("DELETE", `${API}/i`, { headers: { origin: service.base } });
    assert.equal(sameSite.status, 204);
    assert.equal(isLoopbackHost("127.0.0.2"), true);
    assert.equal(isLoopbackHost("[::1]"), true);
    assert.equal(isLoopbackHost("0.0.0.0"), false);
    assert.equal(isLoopbackHost("192.168.1.2"), false);
  });

  test("--cors lets one other origin in, with a preflight", async (t) => {
    const allowed = "http://localhost:5173";
    const service = await startService(t, { cors: allowed });
    const preflight = await service.call("OPTIONS", `${API}/i/`, {
      headers: { origin: allowed, "access-control-request-method": "POST" },
    });
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers["access-control-allow-origin"], allowed);
    assert.match(String(preflight.headers["access-control-allow-methods"]), /POST/);
    const list = await service.call("GET", `${API}/`, { headers: { origin: allowed } });
    assert.equal(list.headers["access-control-allow-origin"], allowed);
    const other = await service.call("GET", `${API}/`, { headers: { origin: "http://other.example" } });
    assert.equal(other.headers["access-control-allow-origin"], undefined);
    const write = await service.call("PATCH", `${API}/`, { headers: { origin: allowed } });
    assert.equal(write.status, 204);
  });
});

describe("SSRF", () => {
  test("sources on private, loopback and link-local addresses are refused with 400 before any request", async (t) => {
    const resolve = async (host: string) => (host === "intranet.test" ? ["10.1.2.3"] : ["93.184.215.14"]);
    const service = await startService(t, { allowPrivateNetworks: false, resolve });
    const route = origin.route("/ssrf/secret.bin", { size: 10 });
    const port = new URL(origin.url).port;
    const cases: [string, RegExp][] = [
      [route.url, /127\.0\.0\.1 is a loopback address/],
      [`http://[::1]:${port}/ssrf/secret.bin`, /::1 is a loopback address/],
      [`http://[::ffff:127.0.0.1]:${port}/ssrf/secret.bin`, /loopback address \(in IPv4-mapped form\)/],
      ["http://169.254.169.254/latest/meta-data/", /link-local/],
      ["http://10.0.0.5/model.bin", /private address/],
      ["http://0.0.0.0/", /unspecified/],
      ["http://intranet.test/model.bin", /10\.1\.2\.3 is a private address/],
    ];
    for (const [source, why] of cases) {
      const reply = await service.call("POST", `${API}/i/`, { body: { source, dest: "" } });
      assert.equal(reply.status, 400, `${source}: ${reply.text}`);
      const { detail } = reply.json as { detail: string };
      assert.match(detail, why);
      assert.match(detail, /--allow-private-networks/);
    }
    const multi = await service.call("POST", `${API}/multi/`, {
      body: { parts: [{ url: route.url, path: "a" }], dest: "" },
    });
    assert.equal(multi.status, 400);
    assert.equal(route.requests.length, 0);
    assert.deepEqual((await service.call("GET", `${API}/`)).json, []);
  });

  test("a public source that redirects to a private address fails the job without fetching it", async (t) => {
    // DNS as the guard sees it: files.test is public, internal.test private. The download itself connects through
    // a dispatcher that sends files.test to the local origin, standing in for a public server.
    const resolve = async (host: string) => (host === "internal.test" ? ["10.0.0.7"] : ["93.184.215.14"]);
    const dispatcher = new Agent({
      connect: {
        lookup: (_host, options, callback) =>
          options.all ? callback(null, [{ address: "127.0.0.1", family: 4 }]) : callback(null, "127.0.0.1", 4),
      },
    });
    t.after(() => dispatcher.close());
    const service = await startService(t, {
      allowPrivateNetworks: false,
      resolve,
      queueOptions: { checkRedirect: redirectGuard({ allowPrivateNetworks: false, resolve }), dispatcher },
    });
    const port = new URL(origin.url).port;
    const secret = origin.route("/redirect/secret.bin", { size: 10 });
    const fine = origin.route("/redirect/fine.bin", { size: 2048 });
    origin.route("/redirect/to-loopback", { redirect: { location: secret.url } });
    origin.route("/redirect/to-internal", {
      redirect: { location: `http://internal.test:${port}/redirect/secret.bin` },
    });
    origin.route("/redirect/to-public", { redirect: { location: `http://files.test:${port}/redirect/fine.bin` } });

    const submit = async (path: string) => {
      const reply = await service.call("POST", `${API}/i/`, {
        body: { source: `http://files.test:${port}${path}`, dest: "" },
      });
      assert.equal(reply.status, 200, reply.text);
      return (reply.json as RestJob).id;
    };
    const toLoopback = await jobReaches(service, await submit("/redirect/to-loopback"), "error");
    assert.equal(toLoopback.error_type, "BlockedAddressError");
    assert.match(String(toLoopback.error), /127\.0\.0\.1 is a loopback address/);
    const toInternal = await jobReaches(service, await submit("/redirect/to-internal"), "error");
    assert.match(String(toInternal.error), /10\.0\.0\.7 is a private address/);
    assert.equal(secret.requests.length, 0);
    // The same setup downloads through a redirect that stays public: the refusals above are the guard's doing.
    await jobReaches(service, await submit("/redirect/to-public"), "completed");
    assert.equal(fine.requests.length, 1);
  });

  test("createService() arms the guard itself: its API and its queue refuse loopback sources", async (t) => {
    const { logger } = memoryLogger();
    const root = await tempDir(t);
    const service = await createService({ root, logger, queueOptions: { retries: 0 } });
    t.after(() => service.close());
    const route = origin.route("/service/secret.bin", { size: 10 });
    const reply = await service.app.inject({
      method: "POST",
      url: `${API}/i/`,
      payload: { source: route.url, dest: "" },
    });
    assert.equal(reply.statusCode, 400, reply.body);
    assert.match((reply.json() as { detail: string }).detail, /127\.0\.0\.1 is a loopback address/);
    // A job given to the queue directly, past the API's check, is refused when it connects.
    const port = new URL(origin.url).port;
    const job = service.queue.download({ source: `http://localhost:${port}/service/secret.bin`, dest: root });
    await service.queue.waitForJob(job, { timeoutMs: 15_000 });
    assert.equal(job.status, "error");
    assert.match(String(job.error), /loopback address/);
    assert.equal(route.requests.length, 0);

    const open = await createService({ root: await tempDir(t), logger, allowPrivateNetworks: true });
    t.after(() => open.close());
    const allowed = await open.app.inject({
      method: "POST",
      url: `${API}/i/`,
      payload: { source: route.url, dest: "" },
    });
    assert.equal(allowed.statusCode, 200, allowed.body);
    await open.queue.join();
    assert.equal(route.requests.length, 1, "with allowPrivateNetworks the same source downloads");
  });
});

describe("event stream", () => {
  test("ids count up by one; a reconnect with Last-Event-ID gets exactly the missed events", async (t) => {
    const service = await startService(t);
    const url = `${service.base}${API}/events`;
    const witness = await SseReader.open(url);
    const reader = await SseReader.open(url);
    assert.equal(reader.status, 200);
    assert.equal(reader.headers["cache-control"], "no-store");

    const submit = async (name: string, size: number) => {
      const route = origin.route(`/sse/${name}`, { size });
      const reply = await service.call("POST", `${API}/i/`, { body: { source: route.url, dest: "" } });
      return (reply.json as RestJob).id;
    };
    const first = await submit("one.bin", 300_000);
    await reader.waitFor((e) => e.event === "download_complete" && JSON.parse(e.data).id === first);
    await reader.close();
    const lastSeen = reader.events.at(-1)?.id;
    assert.ok(lastSeen);

    const second = await submit("two.bin", 200_000);
    await witness.waitFor((e) => e.event === "download_complete" && JSON.parse(e.data).id === second);
    const resumed = await SseReader.open(url, { "last-event-id": lastSeen });
    const third = await submit("three.bin", 1000);
    await resumed.waitFor((e) => e.event === "download_complete" && JSON.parse(e.data).id === third);
    await witness.waitFor((e) => e.event === "download_complete" && JSON.parse(e.data).id === third);
    await Promise.all([resumed.close(), witness.close()]);

    const key = (e: { id?: string; event: string; data: string }) => `${e.id} ${e.event} ${e.data}`;
    const missed = resumed.events.filter((e) => JSON.parse(e.data).id === second);
    assert.ok(
      missed.some((e) => e.event === "download_started") && missed.some((e) => e.event === "download_complete"),
    );
    assert.deepEqual([...reader.events, ...resumed.events].map(key), witness.events.map(key));
    const ids = witness.events.map((e) => Number(e.id));
    for (let i = 1; i < ids.length; i++) assert.equal(ids[i], (ids[i - 1] as number) + 1);
  });

  test("a Last-Event-ID the server cannot replay gets a resync event", async (t) => {
    const service = await startService(t);
    for (const stale of ["5", "not-a-number", String(Date.now() * 2000)]) {
      const reader = await SseReader.open(`${service.base}${API}/events`, { "last-event-id": stale });
      const event = await reader.waitFor(() => true);
      await reader.close();
      assert.equal(event.event, "resync", stale);
      assert.match(event.data, /reload the job list/);
    }
  });

  test("progress is coalesced to at most 4 per second per job, and the final progress and completion arrive", async (t) => {
    const service = await startService(t, { queueOptions: { progressIntervalMs: 20 } });
    let emitted = 0;
    service.queue.on("download_progress", () => emitted++);
    const reader = await SseReader.open(`${service.base}${API}/events`);
    const route = origin.route("/sse/coalesced.bin", { size: 768 * 1024, throttleBytesPerSec: 384 * 1024 });
    const reply = await service.call("POST", `${API}/i/`, { body: { source: route.url, dest: "" } });
    const id = (reply.json as RestJob).id;
    const started = performance.now();
    await reader.waitFor((e) => e.event === "download_complete" && JSON.parse(e.data).id === id);
    const seconds = (performance.now() - started) / 1000;
    await reader.close();

    const mine = reader.events.filter((e) => JSON.parse(e.data).id === id);
    const progress = mine.filter((e) => e.event === "download_progress");
    assert.ok(progress.length >= 2, `only ${progress.length} progress events`);
    assert.ok(progress.length <= Math.ceil(seconds * 4) + 1, `${progress.length} progress events in ${seconds} s`);
    assert.ok(emitted >= progress.length * 2, `the queue emitted ${emitted}, the stream carried ${progress.length}`);
    assert.equal(JSON.parse(progress.at(-1)?.data ?? "{}").current_bytes, route.size);
    assert.deepEqual(
      mine.map((e) => e.event).filter((name) => name !== "download_progress"),
      ["download_started", "download_complete"],
    );
    assert.equal(mine.at(-1)?.event, "download_complete");
  });

  test("the hub: progress held to one per interval, newest bytes kept, later events wait their turn", async () => {
    const fake = new EventEmitter();
    const hub = new EventHub(fake as unknown as DownloadQueue, { progressIntervalMs: 100, firstId: 0, capacity: 5 });
    const published: (HubEvent & { at: number })[] = [];
    hub.subscribe((event) => published.push({ ...event, at: performance.now() }));
    const progress = (id: number, bytes: number) =>
      fake.emit("download_progress", { id, source: "s", download_path: "p", current_bytes: bytes, total_bytes: 100 });

    fake.emit("download_started", { id: 1, source: "s", download_path: "p" });
    for (let bytes = 1; bytes <= 50; bytes++) {
      progress(1, bytes);
      progress(2, bytes);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    fake.emit("download_complete", { id: 1, source: "s", download_path: "p", total_bytes: 100 });
    await new Promise((resolve) => setTimeout(resolve, 250));

    const ofJob = (id: number) => published.filter((e) => JSON.parse(e.data).id === id);
    for (const id of [1, 2]) {
      const times = ofJob(id)
        .filter((e) => e.event === "download_progress")
        .map((e) => e.at);
      assert.ok(times.length >= 2 && times.length <= 5, `job ${id}: ${times.length} progress events`);
      for (let i = 1; i < times.length; i++) assert.ok((times[i] as number) - (times[i - 1] as number) >= 95);
      const last = ofJob(id)
        .filter((e) => e.event === "download_progress")
        .at(-1);
      assert.equal(JSON.parse(last?.data ?? "{}").current_bytes, 50);
    }
    assert.equal(ofJob(1).at(-1)?.event, "download_complete");
    assert.deepEqual(
      published.map((e) => e.id),
      published.map((_, i) => i + 1),
    );
    // The ring keeps the last 5: older ids cannot be replayed, recent ones can.
    const lastId = hub.lastId;
    assert.equal(hub.since(lastId - 6), undefined);
    assert.deepEqual(
      hub.since(lastId - 5)?.map((e) => e.id),
      [lastId - 4, lastId - 3, lastId - 2, lastId - 1, lastId],
    );
    assert.deepEqual(hub.since(lastId), []);
    assert.equal(hub.since(lastId + 1), undefined);
    hub.close();
    assert.equal(fake.listenerCount("download_progress"), 0);
  });
});

describe("dlqueue serve", () => {
  // The built command, as users run it (`npm test` builds first).
  const main = join(import.meta.dirname, "../dist/bin/dlqueue.js");

  function serve(args: string[], cwd: string) {
    const child = spawn(process.execPath, [main, "serve", ...args], {
      cwd,
      env: { ...process.env, DLQUEUE_AUTH_TOKEN: "" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk) => {
      stdout += chunk;
    });
    child.stderr.on("data", (chunk) => {
      stderr += chunk;
    });
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    return {
      child,
      exited,
      output: () => ({ stdout, stderr }),
      url: () =>
        waitUntil(() => /listening on (http:\/\/\S+\/)/.exec(stdout)?.[1], `the listening line; stderr: ${stderr}`),
    };
  }

  test("refuses a non-loopback --host without --auth-token, exit 2", async (t) => {
    const run = serve(["--host", "0.0.0.0", "--port", "0"], await tempDir(t));
    assert.equal(await run.exited, 2);
    assert.match(
      run.output().stderr,
      /--host 0\.0\.0\.0 would let other machines reach the queue, so it needs --auth-token/,
    );
  });

  test("the start-up line says that auth is off and private networks are refused by default", async (t) => {
    const run = serve(["--port", "0"], await tempDir(t));
    t.after(() => run.child.kill("SIGKILL"));
    await run.url();
    assert.match(
      run.output().stdout,
      /^dlqueue serve: listening on http:\/\/127\.0\.0\.1:\d+\/ \(auth: none, this machine only; private networks: refused\); API \/api\/v1\/download_queue\/, docs \/docs; downloads go to \S+downloads\n$/,
    );
    run.child.kill("SIGTERM");
    assert.equal(await run.exited, 0);
  });

  test("--state keeps jobs across a restart; the token guards a 0.0.0.0 bind; SIGTERM stops cleanly", async (t) => {
    const dir = await tempDir(t);
    const token = "cli-token-abcdef";
    const route = origin.route("/cli/big.bin", { size: 2 * 1024 * 1024, throttleBytesPerSec: 1024 * 1024 });
    const args = ["--host", "0.0.0.0", "--port", "0", "--auth-token", token, "--state", "queue.db"];
    args.push("--root", "dl", "--allow-private-networks");
    const auth = { authorization: `Bearer ${token}` };
    const call = async (base: string, method: "GET" | "POST", path: string, body?: unknown) => {
      const response = await request(`${base}api/v1/download_queue${path}`, {
        method,
        headers: body ? { ...auth, "content-type": "application/json" } : auth,
        body: body ? JSON.stringify(body) : undefined,
      });
      return { status: response.statusCode, json: (await response.body.json()) as RestJob & RestJob[] };
    };

    const first = serve(args, dir);
    t.after(() => first.child.kill("SIGKILL"));
    const base = (await first.url()).replace("0.0.0.0", "127.0.0.1");
    assert.match(first.output().stdout, /listening on \S+ \(auth: token required; private networks: allowed\)/);
    const unauthorized = await request(`${base}api/v1/download_queue/`);
    await unauthorized.body.dump();
    assert.equal(unauthorized.statusCode, 401);
    const created = await call(base, "POST", "/i/", { source: route.url, dest: "" });
    assert.equal(created.status, 200);
    await waitUntil(async () => (await call(base, "GET", `/i/${created.json.id}`)).json.bytes > 0, "some bytes");
    first.child.kill("SIGTERM");
    assert.equal(await first.exited, 0);
    assert.match(first.output().stderr, /SIGTERM, stopping/);

    const second = serve(args, dir);
    t.after(() => second.child.kill("SIGKILL"));
    const base2 = (await second.url()).replace("0.0.0.0", "127.0.0.1");
    const listed = await call(base2, "GET", "/");
    assert.deepEqual(
      listed.json.map((job) => job.id),
      [created.json.id],
    );
    await waitUntil(
      async () => (await call(base2, "GET", `/i/${created.json.id}`)).json.status === "completed",
      "the job to finish after the restart",
    );
    assert.equal(await fileSha256(join(dir, "dl", "big.bin")), await route.sha256());
    second.child.kill("SIGINT");
    assert.equal(await second.exited, 0);
    assert.ok(existsSync(join(dir, "queue.db")));
  });
});
