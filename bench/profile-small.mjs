// One client run for the profiling harness (bench/profile.ts): dlqueue's library, or a stripped-down undici client
// with dlqueue's per-job filesystem steps switched on one by one, so each step's cost can be measured on its own.
// Plain JS run by plain node on dist/ (like dlqueue-lib.mjs), so `node --cpu-prof` sees no TypeScript loader.
//
// Usage: node [--cpu-prof] bench/profile-small.mjs --base <url> --dest <dir> [--workload small|big]
//          [--variant lib|stream|dispatch|raw|segmented] [--steps isdir,lock,stat,meta,partial,open,hwm,progress,flush]
//          [--count 1000] [--parallel 5] [--connections 8] [--hwm <bytes>] [--dist <dist/index.js>]
// Prints one JSON line: wall ms, per-job µs, CPU ms, peak RSS.
import { once } from "node:events";
import { createWriteStream, close as fsClose, open as fsOpen, write as fsWrite, readFileSync } from "node:fs";
import { mkdir, open, rename, rm, stat, writeFile } from "node:fs/promises";
import { connect as netConnect } from "node:net";
import { basename, dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { Agent, request } from "undici";

const { values: a } = parseArgs({
  options: {
    base: { type: "string" },
    dest: { type: "string" },
    workload: { type: "string", default: "small" },
    variant: { type: "string", default: "lib" },
    steps: { type: "string", default: "" },
    count: { type: "string", default: "1000" },
    parallel: { type: "string", default: "5" },
    connections: { type: "string", default: "8" },
    hwm: { type: "string" },
    dist: { type: "string", default: new URL("../dist/index.js", import.meta.url).pathname },
  },
});
if (!a.base || !a.dest) throw new Error("--base and --dest are required");
const dest = resolve(a.dest);
const urls =
  a.workload === "big"
    ? [`${a.base}/big.bin`]
    : Array.from({ length: Number(a.count) }, (_, i) => `${a.base}/small/s${String(i).padStart(4, "0")}.bin`);
const steps = new Set(a.steps.split(",").filter(Boolean));
const parallel = Number(a.parallel);
const hwm = a.hwm ? Number(a.hwm) : steps.has("hwm") ? 1024 * 1024 : undefined;

async function runLib() {
  const { DownloadQueue } = await import(pathToFileURL(resolve(a.dist)).href);
  const q = new DownloadQueue({ maxParallelDownloads: parallel });
  for (const source of urls) q.download({ source, dest, onError: (_j, e) => console.error(e.message) });
  await q.join();
  await q.stop?.();
}

/** dlqueue's per-job sequence, rebuilt from plain calls; each step can be left out. */
async function streamJob(dispatcher, source, stats) {
  if (steps.has("isdir")) await stat(dest);
  const response = await request(source, {
    dispatcher,
    method: "GET",
    headers: { "user-agent": "profile", "accept-encoding": "identity" },
    ...(a.hwm ? { highWaterMark: Number(a.hwm) } : {}),
  });
  const final = join(dest, basename(new URL(source).pathname));
  const target = steps.has("partial") ? `${final}.downloading` : final;
  let unlock;
  if (steps.has("lock")) {
    const lock = `${final}.downloading.lock`;
    const h = await open(lock, "wx");
    await h.writeFile(`${process.pid}\n`);
    await h.close();
    unlock = () => rm(lock, { force: true });
  }
  if (steps.has("stat")) {
    try {
      await stat(target);
    } catch (err) {
      if (err.code !== "ENOENT") throw err;
    }
  }
  const meta = `${final}.downloading.json`;
  if (steps.has("meta")) {
    await writeFile(`${meta}.tmp`, JSON.stringify({ source, etag: response.headers.etag, totalBytes: 16384 }));
    await rename(`${meta}.tmp`, meta);
  }
  // "flush": fsync before close, as dlqueue does for files of 8 MiB or more.
  const sink = createWriteStream(target, {
    flags: "w",
    flush: steps.has("flush"),
    ...(hwm ? { highWaterMark: hwm } : {}),
  });
  if (steps.has("open")) await once(sink, "open");
  let bytes = 0;
  for await (const chunk of response.body) {
    bytes += chunk.length;
    if (!sink.write(chunk)) await once(sink, "drain");
    if (steps.has("progress")) stats.progress(bytes);
  }
  sink.end();
  await once(sink, "finish");
  if (!sink.closed) await once(sink, "close");
  if (steps.has("partial")) await rename(target, final);
  if (steps.has("meta")) await rm(meta, { force: true });
  await unlock?.();
}

/**
 * undici's dispatch API with a handler that writes each chunk at its offset (fs.write with a position), pausing the
 * socket while too many writes are in flight: no Readable, no WriteStream, no async iterator per chunk.
 */
function dispatchJob(dispatcher, source) {
  const final = join(dest, basename(new URL(source).pathname));
  return new Promise((resolvePromise, reject) => {
    const maxInFlight = 8;
    let fd;
    let position = 0;
    let inFlight = 0;
    let ended = false;
    let failed = false;
    let controller;
    const fail = (err) => {
      if (failed) return;
      failed = true;
      controller?.abort(err);
      if (fd !== undefined) fsClose(fd, () => reject(err));
      else reject(err);
    };
    const finish = () => {
      if (ended && inFlight === 0 && !failed) fsClose(fd, (err) => (err ? reject(err) : resolvePromise()));
    };
    fsOpen(final, "w", (err, opened) => {
      if (err) return reject(err);
      fd = opened;
      const url = new URL(source);
      dispatcher.dispatch(
        {
          origin: url.origin,
          path: url.pathname,
          method: "GET",
          headers: { "user-agent": "profile", "accept-encoding": "identity" },
        },
        {
          onRequestStart(c) {
            controller = c;
          },
          onResponseStart(_c, status) {
            if (status >= 300) fail(new Error(`${source}: HTTP ${status}`));
          },
          onResponseData(c, chunk) {
            const at = position;
            position += chunk.length;
            inFlight++;
            fsWrite(fd, chunk, 0, chunk.length, at, (error) => {
              inFlight--;
              if (error) return fail(error);
              if (c.paused && inFlight <= maxInFlight / 2) c.resume();
              finish();
            });
            if (inFlight >= maxInFlight) c.pause();
          },
          onResponseEnd() {
            ended = true;
            finish();
          },
          onResponseError(_c, error) {
            fail(error);
          },
        },
      );
    });
  });
}

/**
 * A prototype without undici and without per-read allocations: a raw HTTP/1.1 GET on net.Socket whose `onread`
 * reads into buffers from a small fixed pool; each filled buffer is written at its offset and returns to the pool
 * when the write completes; an empty pool pauses the socket. Content-Length bodies only; for measuring the floor.
 */
function rawJob(source) {
  const url = new URL(source);
  const final = join(dest, basename(url.pathname));
  const POOL = 8;
  const SIZE = 256 * 1024;
  rawJob.pool ??= Array.from({ length: POOL }, () => Buffer.allocUnsafeSlow(SIZE));
  const free = rawJob.pool;
  return new Promise((resolvePromise, reject) => {
    let fd;
    let header = Buffer.alloc(0);
    let bodyStart = -1;
    let length = -1;
    let position = 0;
    let inFlight = 0;
    let socket;
    const done = () => {
      if (position === length && inFlight === 0) {
        socket.end();
        fsClose(fd, (err) => (err ? reject(err) : resolvePromise()));
      }
    };
    const writeOut = (buf, from, to) => {
      const at = position;
      position += to - from;
      inFlight++;
      fsWrite(fd, buf, from, to - from, at, (err) => {
        inFlight--;
        free.push(buf);
        if (err) return reject(err);
        socket.resume();
        done();
      });
    };
    fsOpen(final, "w", (err, opened) => {
      if (err) return reject(err);
      fd = opened;
      socket = netConnect({
        host: url.hostname,
        port: Number(url.port || 80),
        onread: {
          buffer: () => free.pop() ?? Buffer.allocUnsafe(SIZE),
          callback(n, buf) {
            let from = 0;
            if (bodyStart < 0) {
              header = Buffer.concat([header, buf.subarray(0, n)]);
              const end = header.indexOf("\r\n\r\n");
              if (end < 0) {
                free.push(buf);
                return true;
              }
              const head = header.subarray(0, end).toString("latin1");
              if (!/^HTTP\/1\.1 200/.test(head)) {
                reject(new Error(head.split("\r\n")[0]));
                return false;
              }
              length = Number(/\r\ncontent-length:\s*(\d+)/i.exec(head)?.[1] ?? -1);
              bodyStart = end + 4;
              from = bodyStart - (header.length - n);
            }
            if (from < n) writeOut(buf, from, n);
            else free.push(buf);
            done();
            return free.length > 0;
          },
        },
      });
      socket.on("error", reject);
      socket.write(
        `GET ${url.pathname} HTTP/1.1\r\nhost: ${url.host}\r\nuser-agent: profile\r\nconnection: close\r\n\r\n`,
      );
    });
  });
}

async function pool(items, n, fn) {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(n, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

// Where the resident memory is: the largest heap, external and ArrayBuffer figures seen, sampled every 50 ms.
// On Linux also RssAnon (what the process allocated) and RssFile (mostly the mapped node binary).
const peak = { heapTotal: 0, heapUsed: 0, external: 0, arrayBuffers: 0, rssAnon: 0, rssFile: 0 };
const sampler = setInterval(() => {
  const m = { ...process.memoryUsage() };
  try {
    const status = readFileSync("/proc/self/status", "utf8");
    m.rssAnon = Number(/RssAnon:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
    m.rssFile = Number(/RssFile:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
  } catch {}
  for (const k of Object.keys(peak)) peak[k] = Math.max(peak[k], m[k] ?? 0);
}, 50);
sampler.unref();
const t0 = performance.now();
const dispatcher = new Agent();
const stats = {
  progressCalls: 0,
  last: 0,
  progress(b) {
    this.progressCalls++;
    this.last = b;
  },
};
await mkdir(dest, { recursive: true });
if (a.variant === "lib") await runLib();
else if (a.variant === "stream") await pool(urls, parallel, (u) => streamJob(dispatcher, u, stats));
else if (a.variant === "dispatch") await pool(urls, parallel, (u) => dispatchJob(dispatcher, u));
else if (a.variant === "raw") await pool(urls, parallel, (u) => rawJob(u));
else if (a.variant === "segmented") {
  const { downloadSegmented } = await import(
    pathToFileURL(join(dirname(resolve(a.dist)), "transfer/segments.js")).href
  );
  for (const url of urls) {
    const head = await request(url, { dispatcher, method: "HEAD" });
    await head.body.dump();
    const total = Number(head.headers["content-length"]);
    const partial = join(dest, `${basename(new URL(url).pathname)}.downloading`);
    await downloadSegmented({
      url,
      partialPath: partial,
      totalBytes: total,
      connections: Number(a.connections),
      headers: {},
      dispatcher,
      headersTimeoutMs: 30_000,
      readTimeoutMs: 30_000,
      signal: new AbortController().signal,
      onBytes() {},
      retries: 3,
      retryDelayMs: 100,
    });
    await rename(partial, partial.slice(0, -".downloading".length));
  }
} else throw new Error(`unknown variant ${a.variant}`);
const wallMs = performance.now() - t0;
await dispatcher.close();
const ru = process.resourceUsage();
process.stdout.write(
  `${JSON.stringify({
    variant: a.variant,
    steps: [...steps].join(","),
    jobs: urls.length,
    wallMs: Math.round(wallMs),
    perJobUs: Math.round((wallMs * 1000) / urls.length),
    cpuMs: Math.round((ru.userCPUTime + ru.systemCPUTime) / 1000),
    maxRssMiB: Math.round(ru.maxRSS / 1024),
    peakMiB: Object.fromEntries(Object.entries(peak).map(([k, v]) => [k, Math.round(v / 2 ** 20)])),
  })}\n`,
);
