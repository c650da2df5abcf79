/**
 * HTTPS origins and the `ca` option (`--ca-certificate`): a real node:https server on 127.0.0.1 whose certificate is
 * signed by the test CA in test/fixtures/tls, trusted only when the queue is told to. The CLI cases run the built
 * dist/bin/dlqueue.js: run `npm run build` first.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, type Server } from "node:https";
import { type AddressInfo, connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { rootCertificates } from "node:tls";
import { fileURLToPath } from "node:url";
import { DlqError, DownloadQueue, type DownloadQueueOptions, TlsCertificateError } from "../src/index.js";
import { guardedDispatcher } from "../src/server/ssrf.js";
import { startHub } from "./helpers/hub.js";
import { deterministicBytes } from "./helpers/origin.js";
import { startProxy } from "./helpers/proxy.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CLI = join(ROOT, "dist/bin/dlqueue.js");
const FIXTURES = join(ROOT, "test/fixtures/tls");
const CA_FILE = join(FIXTURES, "ca.pem");
const CA = readFileSync(CA_FILE);
const KEY = readFileSync(join(FIXTURES, "leaf-key.pem"));
// The chain a real server sends, the CA last: an untrusted CA then shows as SELF_SIGNED_CERT_IN_CHAIN.
const CHAIN = Buffer.concat([readFileSync(join(FIXTURES, "leaf.pem")), CA]);

// Above 8 MiB, so `connectionsPerFile` splits it into range segments.
const SIZE = 10 * 1024 * 1024;
const BODY = deterministicBytes("tls", 0, SIZE);
const BODY_SHA256 = sha256(BODY);

function sha256(data: Buffer): string {
  return createHash("sha256").update(data).digest("hex");
}

interface TlsOrigin {
  url: string;
  /** TCP connections accepted: one per attempt that got as far as a handshake. */
  connections: number;
  /** Requests answered (after a handshake that succeeded), with their Range header. */
  ranges: (string | undefined)[];
  close(): Promise<void>;
}

/** The file, with Content-Length, an ETag and single byte ranges (bytes=a-b, a-), as model hosts serve it. */
function serveFile(origin: TlsOrigin) {
  return (req: IncomingMessage, res: ServerResponse) => {
    origin.ranges.push(req.headers.range);
    const headers = { "accept-ranges": "bytes", etag: `"${BODY_SHA256.slice(0, 16)}"` };
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
    if (!range) {
      res.writeHead(200, { ...headers, "content-length": SIZE });
      res.end(BODY);
      return;
    }
    const start = Number(range[1]);
    const end = Math.min(range[2] ? Number(range[2]) : SIZE - 1, SIZE - 1);
    if (start > end) {
      res.writeHead(416, { ...headers, "content-range": `bytes */${SIZE}` });
      res.end();
      return;
    }
    res.writeHead(206, {
      ...headers,
      "content-length": end - start + 1,
      "content-range": `bytes ${start}-${end}/${SIZE}`,
    });
    res.end(BODY.subarray(start, end + 1));
  };
}

async function startTlsOrigin(host = "127.0.0.1"): Promise<TlsOrigin> {
  const origin: TlsOrigin = { url: "", connections: 0, ranges: [], close: async () => {} };
  const server: Server = createServer({ key: KEY, cert: CHAIN }, serveFile(origin));
  server.on("connection", () => origin.connections++);
  await new Promise<void>((done, fail) => {
    server.once("error", fail);
    server.listen(0, host, done);
  });
  origin.url = `https://${host}:${(server.address() as AddressInfo).port}/model.safetensors`;
  origin.close = () =>
    new Promise<void>((done) => {
      server.closeAllConnections();
      server.close(() => done());
    });
  return origin;
}

let origin: TlsOrigin;
let work: string;
let runs = 0;

function freshDir(): string {
  return mkdtempSync(join(work, `run-${++runs}-`));
}

/** One download on a fresh queue: the job as it ended and the error its onError got. */
async function download(options: DownloadQueueOptions, url = origin.url) {
  const dir = freshDir();
  const dest = join(dir, "model.safetensors");
  const queue = new DownloadQueue({ retryDelayMs: 1, ...options });
  let error: Error | undefined;
  const job = queue.download({
    source: url,
    dest,
    onError: (_job, err) => {
      error = err;
    },
  });
  await queue.join();
  await queue.stop();
  return { job, error, dir, dest };
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), "dlqueue-tls-"));
  origin = await startTlsOrigin();
});

after(async () => {
  await origin.close();
  rmSync(work, { recursive: true, force: true });
});

function resetCounts(): void {
  origin.connections = 0;
  origin.ranges = [];
}

describe("an origin whose certificate no trusted CA signed", () => {
  it("fails the job with DLQ_ERR_TLS_CERTIFICATE after one connection, saying what to pass, and writes nothing", async () => {
    resetCounts();
    const { job, error, dir } = await download({ retries: 5 });
    assert.equal(job.status, "error");
    assert.ok(error instanceof TlsCertificateError, `a TlsCertificateError, not ${error}`);
    assert.equal(error.code, "DLQ_ERR_TLS_CERTIFICATE");
    assert.equal(error.reason, "SELF_SIGNED_CERT_IN_CHAIN");
    assert.match(error.message, /not trusted \(SELF_SIGNED_CERT_IN_CHAIN/);
    assert.match(error.message, /--ca-certificate FILE \(library: the `ca` option\) or NODE_EXTRA_CA_CERTS/);
    // error_type is the class name, as the REST API and the CLI show it.
    assert.equal(job.errorType, "TlsCertificateError");
    // Permanent: retries: 5 with a 1 ms backoff would have made six connections.
    assert.equal(origin.connections, 1, "connections the server accepted");
    assert.deepEqual(origin.ranges, [], "no request got past the handshake");
    assert.deepEqual(readdirSync(dir), [], "nothing at the final path, and no partial");
  });

  it("a certificate for another name is refused as such, also at once", async (t) => {
    let other: TlsOrigin;
    try {
      // The same certificate (127.0.0.1, localhost) on another loopback address.
      other = await startTlsOrigin("127.0.0.2");
    } catch (err) {
      t.skip(`127.0.0.2 is not a loopback address here (${(err as NodeJS.ErrnoException).code})`);
      return;
    }
    try {
      const { job, error } = await download({ ca: CA, retries: 5 }, other.url);
      assert.equal(job.status, "error");
      assert.ok(error instanceof TlsCertificateError, `a TlsCertificateError, not ${error}`);
      assert.equal(error.reason, "ERR_TLS_CERT_ALTNAME_INVALID");
      assert.match(error.message, /for another host name/);
      assert.equal(other.connections, 1);
    } finally {
      await other.close();
    }
  });
});

describe("the ca option", () => {
  it("trusts the CA given as a Buffer: the file arrives byte-exact over one connection", async () => {
    resetCounts();
    const { job, dest } = await download({ ca: CA });
    assert.equal(job.status, "completed", job.error);
    assert.equal(sha256(readFileSync(dest)), BODY_SHA256);
    assert.equal(origin.connections, 1);
  });

  it("trusts the CA given as a string, with connectionsPerFile: 4 over ranges", async () => {
    resetCounts();
    const { job, dest } = await download({ ca: CA.toString(), connectionsPerFile: 4 });
    assert.equal(job.status, "completed", job.error);
    assert.equal(sha256(readFileSync(dest)), BODY_SHA256);
    // The segments did run: several range requests, on several connections.
    assert.ok(origin.ranges.filter((range) => range?.startsWith("bytes=")).length >= 2, `ranges: ${origin.ranges}`);
    assert.ok(origin.connections >= 2, `connections: ${origin.connections}`);
  });

  it("takes an array, in which Node's bundled roots stay trusted alongside", async () => {
    const { job, dest } = await download({ ca: [rootCertificates[0] as string, CA] });
    assert.equal(job.status, "completed", job.error);
    assert.equal(sha256(readFileSync(dest)), BODY_SHA256);
  });

  it("refuses at construction anything but readable PEM certificates, saying what to pass", () => {
    const key = readFileSync(join(FIXTURES, "leaf-key.pem"));
    const broken = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
    for (const ca of [CA_FILE, key, broken, [CA, 42 as unknown as string]]) {
      assert.throws(
        () => new DownloadQueue({ ca }),
        (err: unknown) =>
          err instanceof DlqError &&
          err.code === "DLQ_ERR_INVALID_ARGUMENT" &&
          /PEM text of CA certificates/.test(err.message) &&
          /readFileSync/.test(err.message),
        `ca = ${String(ca).slice(0, 40)}`,
      );
    }
    assert.throws(() => guardedDispatcher(undefined, CA_FILE), /DLQ_ERR_INVALID_ARGUMENT|PEM text/);
  });
});

/** An https:// forward proxy (CONNECT only) with the test CA's certificate, counting the tunnels it opens. */
async function startHttpsProxy(): Promise<{ url: string; tunnels: string[]; close(): Promise<void> }> {
  const tunnels: string[] = [];
  const sockets = new Set<Socket>();
  const server = createServer({ key: KEY, cert: CHAIN });
  server.on("connect", (req: IncomingMessage, client: Socket, head: Buffer) => {
    tunnels.push(req.url ?? "");
    const [host, port] = (req.url ?? "").split(":");
    const upstream = connect(Number(port), host, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      upstream.write(head);
      upstream.pipe(client).pipe(upstream);
    });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on("close", () => sockets.delete(socket));
      socket.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
  });
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    tunnels,
    close: () =>
      new Promise<void>((done) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => done());
      }),
  };
}

describe("the ca option through a proxy", () => {
  it("is trusted for the origin at the end of an http:// proxy's tunnel", async () => {
    const proxy = await startProxy();
    try {
      const { job, dest } = await download({ ca: CA, proxy: proxy.url });
      assert.equal(job.status, "completed", job.error);
      assert.equal(sha256(readFileSync(dest)), BODY_SHA256);
      assert.deepEqual(
        proxy.requests.map((request) => request.method),
        ["CONNECT"],
      );
    } finally {
      await proxy.close();
    }
  });

  it("is trusted for an https:// proxy's own certificate, which is refused without it", async () => {
    const proxy = await startHttpsProxy();
    try {
      const { job, dest } = await download({ ca: CA, proxy: proxy.url });
      assert.equal(job.status, "completed", job.error);
      assert.equal(sha256(readFileSync(dest)), BODY_SHA256);
      assert.equal(proxy.tunnels.length, 1);
      // Only the origin's CA given, not the proxy's: Node's roots alone do not trust the test CA.
      const refused = await download({ ca: rootCertificates[0] as string, proxy: proxy.url, retries: 5 });
      assert.equal(refused.job.status, "error");
      assert.ok(refused.error instanceof TlsCertificateError, `a TlsCertificateError, not ${refused.error}`);
      assert.equal(proxy.tunnels.length, 1, "no tunnel opened through a proxy that was not trusted");
    } finally {
      await proxy.close();
    }
  });
});

describe("the ca option for model sources", () => {
  it("lists an hf:// repo on a hub whose CA only the queue trusts, and refuses it without, writing nothing", async (t) => {
    const hub = await startHub({ tls: { key: KEY, cert: CHAIN } });
    const endpoint = process.env.HF_ENDPOINT;
    t.after(async () => {
      if (endpoint === undefined) delete process.env.HF_ENDPOINT;
      else process.env.HF_ENDPOINT = endpoint;
      await hub.close();
    });
    process.env.HF_ENDPOINT = hub.url;
    const weights = deterministicBytes("hub", 0, 300_000);
    hub.repo("org/behind-ca", { files: { "config.json": '{"layers":2}', "model.safetensors": weights } });

    const untrusted = freshDir();
    const refusing = new DownloadQueue({ retryDelayMs: 1 });
    t.after(() => refusing.stop());
    await assert.rejects(refusing.modelDownload({ source: "hf://org/behind-ca", dest: untrusted }), (err) => {
      assert.ok(err instanceof TlsCertificateError, `a TlsCertificateError, not ${err}`);
      assert.match(err.message, /ca/i);
      return true;
    });
    assert.deepEqual(readdirSync(untrusted), []);

    const dest = freshDir();
    const queue = new DownloadQueue({ retryDelayMs: 1, ca: CA });
    t.after(() => queue.stop());
    const job = await queue.modelDownload({ source: "hf://org/behind-ca", dest });
    await queue.waitForJob(job);
    assert.equal(job.status, "completed", job.error);
    assert.equal(sha256(readFileSync(join(dest, "model.safetensors"))), sha256(weights));
    assert.equal(readFileSync(join(dest, "config.json"), "utf8"), '{"layers":2}');
    assert.ok(
      hub.requests.some((r) => r.origin === "hub" && r.url.startsWith("/api/")),
      "the listing came over TLS",
    );
  });
});

interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], env: Record<string, string> = {}): Promise<Finished> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  for (const name of [
    "NODE_OPTIONS",
    "NODE_TEST_CONTEXT",
    ...(env.NODE_EXTRA_CA_CERTS ? [] : ["NODE_EXTRA_CA_CERTS"]),
  ]) {
    if (!(name in env)) delete childEnv[name];
  }
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: work,
    env: childEnv,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk;
  });
  child.stderr.on("data", (chunk: Buffer) => {
    stderr += chunk;
  });
  return new Promise((done) => child.on("close", (code) => done({ code, stdout, stderr })));
}

describe("dlqueue get --ca-certificate", {
  skip: !existsSync(CLI) && "run `npx tsc -p tsconfig.build.json` first",
}, () => {
  it("downloads byte-exact from the origin the file's CA signed", async () => {
    const dir = freshDir();
    const run = await runCli(["get", "-q", "--ca-certificate", CA_FILE, "-o", "m.bin", "-d", dir, origin.url]);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(sha256(readFileSync(join(dir, "m.bin"))), BODY_SHA256);
  });

  it("without it: fails at once, and says to pass --ca-certificate", async () => {
    resetCounts();
    const dir = freshDir();
    const run = await runCli(["get", "-q", "--retry-delay", "0.001", "-d", dir, origin.url]);
    assert.equal(run.code, 1, run.stderr);
    assert.match(run.stderr, /TlsCertificateError/);
    assert.match(run.stderr, /--ca-certificate FILE/);
    assert.equal(origin.connections, 1);
    assert.deepEqual(readdirSync(dir), []);
  });

  it("adds to NODE_EXTRA_CA_CERTS rather than replacing it", async () => {
    // The test CA comes from the environment, the file holds an unrelated CA: the download needs both kept.
    const other = join(work, "other-ca.pem");
    writeFileSync(other, rootCertificates[0] as string);
    const dir = freshDir();
    const run = await runCli(["get", "-q", "--ca-certificate", other, "-o", "m.bin", "-d", dir, origin.url], {
      NODE_EXTRA_CA_CERTS: CA_FILE,
    });
    assert.equal(run.code, 0, run.stderr);
    assert.equal(sha256(readFileSync(join(dir, "m.bin"))), BODY_SHA256);
  });

  it("a missing or non-PEM file is a usage error naming it, before anything is fetched", async () => {
    resetCounts();
    const missing = join(work, "no-such-ca.pem");
    const notPem = join(FIXTURES, "leaf-key.pem");
    for (const file of [missing, notPem]) {
      const dir = freshDir();
      const run = await runCli(["get", "--ca-certificate", file, "-d", dir, origin.url]);
      assert.equal(run.code, 2, run.stderr);
      assert.ok(run.stderr.includes(file), `stderr names ${file}: ${run.stderr}`);
      assert.match(run.stderr, /--ca-certificate/);
      assert.deepEqual(readdirSync(dir), []);
    }
    assert.equal(origin.connections, 0);
  });

  it("serve and worker take it too, and refuse a missing file the same way", async () => {
    const missing = join(work, "no-such-ca.pem");
    for (const args of [
      ["serve", "--port", "0", "--root", freshDir()],
      ["worker", "--redis", "redis://127.0.0.1:1", "--root", freshDir()],
    ]) {
      const run = await runCli([...args, "--ca-certificate", missing]);
      assert.equal(run.code, 2, `${args[0]}: ${run.stderr}`);
      assert.ok(run.stderr.includes(missing), `${args[0]} names the file: ${run.stderr}`);
    }
  });
});
