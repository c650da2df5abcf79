/**
 * Fault-injecting HTTP origin used by every test and benchmark.
 *
 * Faults happen on the real socket (destroyed connections, FIN before the promised Content-Length, stalled
 * bodies), so clients are exercised against the same failure modes they meet on the internet.
 */
import { createCipheriv, createHash } from "node:crypto";
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
  STATUS_CODES,
} from "node:http";
import type { AddressInfo, Socket } from "node:net";

export type Fault =
  | { kind: "drop"; afterBytes: number }
  | { kind: "truncate"; afterBytes: number }
  | { kind: "stall"; afterBytes: number }
  | { kind: "status"; status: number; headers?: Record<string, string>; body?: string }
  | { kind: "hangup" }
  /** Headers only after this long (a server that is slow to answer). */
  | { kind: "delay"; ms: number };

export interface RouteOptions {
  size?: number;
  body?: Buffer | string;
  seed?: string;
  contentType?: string;
  contentDisposition?: string;
  etag?: string | null;
  lastModified?: string | null;
  acceptRanges?: boolean;
  chunked?: boolean;
  faults?: Array<Fault | null | undefined>;
  redirect?: { location: string; status?: number };
  requireToken?: string;
  throttleBytesPerSec?: number;
  latencyMs?: number;
  headers?: Record<string, string>;
}

export interface RecordedRequest {
  method: string;
  url: string;
  path: string;
  headers: IncomingHttpHeaders;
  at: number;
  /** Which connection carried it: numbered in the order the origin accepted them. */
  connection: number;
  /** Body bytes the origin handed to the socket for it so far (the status line and headers not counted). */
  bodyBytes: number;
}

export interface Route {
  readonly key: string;
  readonly url: string;
  readonly size: number;
  readonly requests: RecordedRequest[];
  /** Body bytes sent for this route, over all its requests. */
  readonly bodyBytes: number;
  /** The Last-Modified it serves (null: none). */
  readonly lastModified: string | null;
  sha256(): Promise<string>;
  content(): Buffer;
  update(patch: Partial<RouteOptions>): void;
}

export interface Origin {
  readonly url: string;
  readonly host: string;
  readonly requests: RecordedRequest[];
  readonly maxConcurrent: number;
  readonly inFlight: number;
  route(key: string, opts?: RouteOptions): Route;
  resetStats(): void;
  close(): Promise<void>;
}

const DEFAULT_SIZE = 1024;
const MAX_IN_MEMORY = 256 * 1024 * 1024;
/** Write size for unthrottled bodies: large enough to keep loopback saturated, small enough to stay responsive. */
const CHUNK = 1024 * 1024;
/** Largest slice a throttled response sends per timer tick, so the rate looks smooth to the client. */
const THROTTLE_SLICE = 16 * 1024;
const ZEROS = Buffer.alloc(CHUNK);
const EMPTY = Buffer.alloc(0);
/** 2024-01-01T00:00:00Z: default Last-Modified values are spread over the year after it. */
const LAST_MODIFIED_BASE = Date.UTC(2024, 0, 1);

export function sha256Hex(data: Buffer | string): string {
  return createHash("sha256").update(data).digest("hex");
}

// Deriving the key hashes the seed; caching it keeps per-response setup negligible when benchmarks hammer one route.
const keyCache = new Map<string, Buffer>();
function keyFor(seed: string): Buffer {
  let key = keyCache.get(seed);
  if (!key) {
    if (keyCache.size >= 64) keyCache.clear();
    key = createHash("sha256").update(seed).digest().subarray(0, 16);
    keyCache.set(seed, key);
  }
  return key;
}

/**
 * The content of a seed is the AES-128-CTR keystream keyed by sha256(seed): any offset is reachable by setting the
 * counter, it is not periodic, and OpenSSL produces it at roughly memory speed (AES-NI).
 */
function keystream(seed: string, start: number): (n: number) => Buffer {
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64BE(BigInt(Math.floor(start / 16)), 8);
  const cipher = createCipheriv("aes-128-ctr", keyFor(seed), iv);
  let skip = start % 16;
  return (n) => {
    const want = n + skip;
    const out = want <= ZEROS.length ? cipher.update(ZEROS.subarray(0, want)) : cipher.update(Buffer.alloc(want));
    const result = skip ? out.subarray(skip) : out;
    skip = 0;
    return result;
  };
}

export function deterministicBytes(seed: string, start: number, length: number): Buffer {
  if (!Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new RangeError(`invalid range start=${start} length=${length}`);
  }
  const read = keystream(seed, start);
  if (length <= CHUNK) return read(length);
  const out = Buffer.allocUnsafe(length);
  for (let pos = 0; pos < length; pos += CHUNK) read(Math.min(CHUNK, length - pos)).copy(out, pos);
  return out;
}

// Shared across routes and origins: benchmarks re-create origins with the same seed and size.
const shaCache = new Map<string, Promise<string>>();
async function streamedSha256(seed: string, size: number): Promise<string> {
  const hash = createHash("sha256");
  const read = keystream(seed, 0);
  for (let pos = 0; pos < size; pos += CHUNK) {
    hash.update(read(Math.min(CHUNK, size - pos)));
    // Yield now and then so an origin in the same process keeps serving while a multi-GB hash runs.
    if (pos % (16 * CHUNK) === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  return hash.digest("hex");
}

function checkOptions(opts: RouteOptions): void {
  if (opts.size !== undefined && (!Number.isSafeInteger(opts.size) || opts.size < 0)) {
    throw new RangeError(`invalid size ${opts.size}`);
  }
  if (opts.throttleBytesPerSec !== undefined && !(opts.throttleBytesPerSec > 0)) {
    throw new RangeError(`invalid throttleBytesPerSec ${opts.throttleBytesPerSec}`);
  }
  for (const fault of opts.faults ?? []) {
    if (fault && "afterBytes" in fault && !(Number.isSafeInteger(fault.afterBytes) && fault.afterBytes >= 0)) {
      throw new RangeError(`invalid afterBytes ${fault.afterBytes}`);
    }
  }
}

class RouteImpl implements Route {
  readonly requests: RecordedRequest[] = [];
  opts: RouteOptions;
  private body: Buffer | undefined;
  private bodyHash = "";
  private requestCount = 0;

  constructor(
    readonly key: string,
    readonly url: string,
    opts: RouteOptions,
  ) {
    this.opts = {};
    this.update(opts);
  }

  get bodyBytes(): number {
    return this.requests.reduce((sum, r) => sum + r.bodyBytes, 0);
  }

  get size(): number {
    return this.body ? this.body.length : (this.opts.size ?? DEFAULT_SIZE);
  }

  get seed(): string {
    return this.opts.seed ?? this.key;
  }

  /** Identity of the current content version; drives the default ETag and Last-Modified. */
  private versionHash(): string {
    return sha256Hex(`${this.seed}\0${this.size}\0${this.bodyHash}`);
  }

  get etag(): string | null {
    if (this.opts.etag !== undefined) return this.opts.etag;
    return `"${this.versionHash().slice(0, 16)}"`;
  }

  // A per-version date (rather than one constant) lets If-Range on Last-Modified detect a content change too.
  get lastModified(): string | null {
    if (this.opts.lastModified !== undefined) return this.opts.lastModified;
    const offsetSec = Number.parseInt(this.versionHash().slice(0, 8), 16) % (365 * 86400);
    return new Date(LAST_MODIFIED_BASE + offsetSec * 1000).toUTCString();
  }

  nextFault(): Fault | undefined {
    return this.opts.faults?.[this.requestCount++] ?? undefined;
  }

  reader(start: number): (n: number) => Buffer {
    const body = this.body;
    if (!body) return keystream(this.seed, start);
    let pos = start;
    return (n) => {
      const out = body.subarray(pos, pos + n);
      pos += n;
      return out;
    };
  }

  sha256(): Promise<string> {
    if (this.body) return Promise.resolve(this.bodyHash);
    const cacheKey = `${this.seed}\0${this.size}`;
    let hash = shaCache.get(cacheKey);
    if (!hash) {
      hash = streamedSha256(this.seed, this.size);
      shaCache.set(cacheKey, hash);
    }
    return hash;
  }

  content(): Buffer {
    if (this.body) return this.body;
    if (this.size > MAX_IN_MEMORY) throw new RangeError(`route ${this.key} is too large to hold in memory`);
    return deterministicBytes(this.seed, 0, this.size);
  }

  update(patch: Partial<RouteOptions>): void {
    const next = { ...this.opts, ...patch };
    checkOptions(next);
    this.opts = next;
    this.body = next.body === undefined ? undefined : Buffer.from(next.body);
    this.bodyHash = this.body ? sha256Hex(this.body) : "";
    if ("faults" in patch) this.requestCount = 0;
  }
}

type ParsedRange = { start: number; end: number } | "unsatisfiable" | null;

/** Single byte ranges only; anything else (multi-range, junk) is ignored, which RFC 9110 permits. */
function parseRange(header: string, size: number): ParsedRange {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return null;
  const [, first = "", last = ""] = m;
  if (first === "") {
    if (last === "") return null;
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return "unsatisfiable";
    return { start: Math.max(0, size - suffix), end: size };
  }
  const start = Number(first);
  if (last !== "" && Number(last) < start) return null;
  if (start >= size) return "unsatisfiable";
  return { start, end: last === "" ? size : Math.min(Number(last) + 1, size) };
}

/** Resolves after `ms`, or as soon as the response is closed so a torn-down origin leaves no timers behind. */
function sleep(ms: number, res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      res.off("close", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    res.on("close", done);
  });
}

function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}

/** Resolves once everything written so far has reached the kernel, so a following destroy() cannot discard it. */
function flushed(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (socket.destroyed) resolve();
    else socket.write(EMPTY, () => resolve());
  });
}

function isGone(res: ServerResponse): boolean {
  return res.destroyed || (res.socket?.destroyed ?? false);
}

async function pump(
  res: ServerResponse,
  read: (n: number) => Buffer,
  total: number,
  rate: number | undefined,
  record: RecordedRequest,
): Promise<void> {
  const t0 = performance.now();
  const slice = rate ? Math.max(1, Math.min(THROTTLE_SLICE, Math.floor(rate / 20))) : CHUNK;
  let sent = 0;
  while (sent < total && !isGone(res)) {
    const remaining = total - sent;
    let n = Math.min(CHUNK, remaining);
    if (rate) {
      // Pace against the start time rather than per slice, so timer jitter does not accumulate into a slower rate.
      const wait = t0 + ((sent + Math.min(slice, remaining)) / rate) * 1000 - performance.now();
      if (wait > 0) await sleep(wait, res);
      if (isGone(res)) return;
      const allowed = Math.floor(((performance.now() - t0) / 1000) * rate) - sent;
      n = Math.min(remaining, CHUNK, Math.max(slice, allowed));
    }
    const ok = res.write(read(n));
    sent += n;
    record.bodyBytes += n;
    if (!ok) await drained(res);
  }
}

function sendText(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.statusCode = status;
  res.setHeader("Content-Type", "text/plain; charset=utf-8");
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
  res.end(body);
}

async function serveRoute(
  route: RouteImpl,
  req: IncomingMessage,
  res: ServerResponse,
  record: RecordedRequest,
): Promise<void> {
  const fault = route.nextFault();
  const opts = route.opts;
  if (fault?.kind === "hangup") {
    req.socket.destroy();
    return;
  }
  const latency = (opts.latencyMs ?? 0) + (fault?.kind === "delay" ? fault.ms : 0);
  if (latency > 0) {
    await sleep(latency, res);
    if (isGone(res)) return;
  }
  if (fault?.kind === "status") {
    sendText(res, fault.status, fault.body ?? STATUS_CODES[fault.status] ?? "", fault.headers);
    return;
  }
  if (opts.requireToken !== undefined) {
    const auth = req.headers.authorization;
    const token = auth?.startsWith("Bearer ") ? auth.slice("Bearer ".length) : undefined;
    if (token === undefined) {
      sendText(res, 401, "Unauthorized", { "WWW-Authenticate": "Bearer" });
      return;
    }
    if (token !== opts.requireToken) {
      sendText(res, 403, "Forbidden");
      return;
    }
  }
  if (opts.redirect) {
    res.writeHead(opts.redirect.status ?? 302, { Location: opts.redirect.location, "Content-Length": 0 });
    res.end();
    return;
  }

  const size = route.size;
  const acceptRanges = opts.acceptRanges ?? true;
  const etag = route.etag;
  const lastModified = route.lastModified;
  res.setHeader("Content-Type", opts.contentType ?? "application/octet-stream");
  if (acceptRanges) res.setHeader("Accept-Ranges", "bytes");
  if (etag !== null) res.setHeader("ETag", etag);
  if (lastModified !== null) res.setHeader("Last-Modified", lastModified);
  if (opts.contentDisposition !== undefined) res.setHeader("Content-Disposition", opts.contentDisposition);

  let status = 200;
  let start = 0;
  let end = size;
  const rangeHeader = req.headers.range;
  const ifRange = req.headers["if-range"];
  const ifRangeHolds = ifRange === undefined || ifRange === etag || ifRange === lastModified;
  if (acceptRanges && rangeHeader !== undefined && ifRangeHolds) {
    const range = parseRange(rangeHeader, size);
    if (range === "unsatisfiable") {
      res.setHeader("Content-Range", `bytes */${size}`);
      sendText(res, 416, "", opts.headers);
      return;
    }
    if (range) {
      status = 206;
      ({ start, end } = range);
      res.setHeader("Content-Range", `bytes ${start}-${end - 1}/${size}`);
    }
  }
  if (!opts.chunked) res.setHeader("Content-Length", end - start);
  for (const [name, value] of Object.entries(opts.headers ?? {})) res.setHeader(name, value);
  res.writeHead(status);

  const bodyLength = req.method === "HEAD" ? 0 : end - start;
  const bodyFault = fault && "afterBytes" in fault ? fault : undefined;
  const limit = bodyFault ? Math.min(bodyFault.afterBytes, bodyLength) : bodyLength;
  await pump(res, route.reader(start), limit, opts.throttleBytesPerSec, record);
  if (!bodyFault) {
    res.end();
    return;
  }
  const socket = req.socket;
  if (isGone(res)) return;
  if (limit === 0) res.flushHeaders();
  await flushed(socket);
  if (bodyFault.kind === "drop") socket.destroy();
  else if (bodyFault.kind === "truncate") socket.end();
  // "stall": leave the socket open and silent until the client gives up or the origin closes.
}

export async function startOrigin(): Promise<Origin> {
  const routes = new Map<string, RouteImpl>();
  const sockets = new Set<Socket>();
  const requests: RecordedRequest[] = [];
  let inFlight = 0;
  let maxConcurrent = 0;
  const connectionIds = new WeakMap<Socket, number>();
  let connections = 0;

  const server = createServer({ highWaterMark: 2 * CHUNK }, (req, res) => {
    const url = req.url ?? "/";
    const queryAt = url.indexOf("?");
    const path = queryAt === -1 ? url : url.slice(0, queryAt);
    let connection = connectionIds.get(req.socket);
    if (connection === undefined) {
      connection = ++connections;
      connectionIds.set(req.socket, connection);
    }
    const record: RecordedRequest = {
      method: req.method ?? "GET",
      url,
      path,
      headers: req.headers,
      at: Date.now(),
      connection,
      bodyBytes: 0,
    };
    requests.push(record);
    inFlight++;
    maxConcurrent = Math.max(maxConcurrent, inFlight);
    res.once("close", () => inFlight--);

    const route = routes.get(url) ?? routes.get(path);
    if (!route) {
      sendText(res, 404, "Not Found");
      return;
    }
    route.requests.push(record);
    serveRoute(route, req, res, record).catch((err: unknown) => {
      if (res.headersSent) res.destroy();
      else sendText(res, 500, String(err));
    });
  });
  // Longer than undici's default keep-alive so the client, not the server, decides when idle sockets go away.
  server.keepAliveTimeout = 10_000;
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = `127.0.0.1:${port}`;
  const url = `http://${host}`;
  let closing: Promise<void> | undefined;

  return {
    url,
    host,
    requests,
    get maxConcurrent() {
      return maxConcurrent;
    },
    get inFlight() {
      return inFlight;
    },
    route(key, opts = {}) {
      if (!key.startsWith("/")) throw new Error(`route key must start with "/": ${key}`);
      const route = new RouteImpl(key, url + key, opts);
      routes.set(key, route);
      return route;
    },
    resetStats() {
      requests.length = 0;
      for (const route of routes.values()) route.requests.length = 0;
      maxConcurrent = inFlight;
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
      return closing;
    },
  };
}
