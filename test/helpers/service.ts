/** A `dlqueue serve` app on a real socket, and a Server-Sent Events reader, for the service's tests. */
import { realpath } from "node:fs/promises";
import { request as httpRequest } from "node:http";
import type { TestContext } from "node:test";
import { type Dispatcher, request } from "undici";
import { DownloadQueue, type DownloadQueueOptions } from "../../src/index.js";
import { buildServer, type ServerOptions } from "../../src/server/app.js";
import { memoryLogger, tempDir } from "./fs.js";

export const API = "/api/v1/download_queue";

export interface Service {
  /** http://127.0.0.1:port */
  base: string;
  /** The download root (a real path). */
  root: string;
  queue: DownloadQueue;
  /** Every response body and SSE byte the helpers below received, to search for what must never be sent. */
  received: string[];
  call(method: Dispatcher.HttpMethod, path: string, options?: CallOptions): Promise<Reply>;
  /** Sends `path` exactly as written (no URL parsing: `%61`, `//`, `..` and `.` reach the server untouched). */
  raw(method: string, path: string, options?: CallOptions): Promise<Reply>;
  close(): Promise<void>;
}

export interface CallOptions {
  body?: unknown;
  /** Sent as is, for bodies that are not JSON. */
  rawBody?: string;
  headers?: Record<string, string>;
}

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json: unknown;
}

export interface ServiceOptions extends Partial<Omit<ServerOptions, "queue">> {
  queueOptions?: DownloadQueueOptions;
  /** Default 0: any free port. */
  port?: number;
}

/** Defaults suit tests against the local origin: private networks allowed, quick retries, a quiet logger. */
export async function startService(t: TestContext, options: ServiceOptions = {}): Promise<Service> {
  const { queueOptions, port = 0, ...serverOptions } = options;
  // After-hooks run in the order they were added: the service must stop before its root folder is removed.
  let close = async () => {};
  t.after(() => close());
  const root = serverOptions.root ?? (await tempDir(t));
  const queue = new DownloadQueue({ logger: memoryLogger().logger, retryDelayMs: 50, ...queueOptions });
  const app = await buildServer({ allowPrivateNetworks: true, ...serverOptions, root, queue });
  await app.listen({ host: "127.0.0.1", port });
  const address = app.server.address();
  if (!address || typeof address === "string") throw new Error("the server has no TCP address");
  const base = `http://127.0.0.1:${address.port}`;
  const received: string[] = [];
  let closed = false;
  close = async () => {
    if (closed) return;
    closed = true;
    await app.close();
    await queue.stop();
  };
  return {
    base,
    root: await realpath(root),
    queue,
    received,
    close: () => close(),
    raw(method, path, { body, rawBody, headers = {} } = {}) {
      const payload = rawBody ?? (body === undefined ? undefined : JSON.stringify(body));
      return new Promise<Reply>((resolve, reject) => {
        const req = httpRequest(
          {
            host: "127.0.0.1",
            port: new URL(base).port,
            method,
            path,
            headers: body === undefined ? headers : { "content-type": "application/json", ...headers },
          },
          (res) => {
            let text = "";
            res.setEncoding("utf8");
            res.on("data", (chunk: string) => {
              text += chunk;
            });
            // An event stream never ends: its status and headers are all a test needs.
            if (String(res.headers["content-type"]).startsWith("text/event-stream")) res.destroy();
            res.on("error", reject);
            res.on("close", () => {
              received.push(text);
              resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json: parseJson(text) });
            });
          },
        );
        req.on("error", reject);
        req.end(payload);
      });
    },
    async call(method, path, { body, rawBody, headers = {} } = {}) {
      const response = await request(`${base}${path}`, {
        method,
        headers: body === undefined ? headers : { "content-type": "application/json", ...headers },
        body: rawBody ?? (body === undefined ? undefined : JSON.stringify(body)),
      });
      const text = await response.body.text();
      received.push(text);
      return { status: response.statusCode, headers: response.headers, text, json: parseJson(text) };
    },
  };
}

function parseJson(text: string): unknown {
  try {
    return text ? JSON.parse(text) : undefined;
  } catch {
    return undefined;
  }
}

export interface SseEvent {
  id: string | undefined;
  event: string;
  data: string;
}

/** Reads an event stream as it arrives; `close()` disconnects like a browser tab going away. */
export class SseReader {
  readonly events: SseEvent[] = [];
  raw = "";
  status = 0;
  headers: Record<string, string | string[] | undefined> = {};
  readonly #abort = new AbortController();
  #buffer = "";
  #waiters = new Set<() => void>();
  #done: Promise<void> = Promise.resolve();

  static async open(url: string, headers: Record<string, string> = {}, sink?: string[]): Promise<SseReader> {
    const reader = new SseReader();
    const response = await request(url, { headers, signal: reader.#abort.signal });
    reader.status = response.statusCode;
    reader.headers = response.headers;
    reader.#done = (async () => {
      try {
        for await (const chunk of response.body) {
          const text = (chunk as Buffer).toString("utf8");
          reader.raw += text;
          sink?.push(text);
          reader.#parse(text);
        }
      } catch {
        // Aborted by close(), or the server ended the stream.
      }
    })();
    return reader;
  }

  /** Resolves with the first event (already received or still to come) that matches. */
  async waitFor(match: (event: SseEvent) => boolean, timeoutMs = 15_000): Promise<SseEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find(match);
      if (found) return found;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching event within ${timeoutMs} ms; got: ${this.raw.slice(-2000)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#waiters.add(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  async close(): Promise<void> {
    this.#abort.abort();
    await this.#done;
  }

  #parse(text: string): void {
    this.#buffer += text;
    let end = this.#buffer.indexOf("\n\n");
    while (end !== -1) {
      const block = this.#buffer.slice(0, end);
      this.#buffer = this.#buffer.slice(end + 2);
      end = this.#buffer.indexOf("\n\n");
      const fields = new Map<string, string>();
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        if (colon === -1) continue;
        fields.set(line.slice(0, colon), line.slice(colon + 1).replace(/^ /, ""));
      }
      if (!fields.has("data")) continue;
      this.events.push({
        id: fields.get("id"),
        event: fields.get("event") ?? "message",
        data: fields.get("data") ?? "",
      });
    }
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const wake of waiters) wake();
  }
}

/** Polls until `check` returns something truthy. */
export async function waitUntil<T>(
  check: () => T | Promise<T>,
  what: string,
  timeoutMs = 15_000,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
