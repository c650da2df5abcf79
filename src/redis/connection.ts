/**
 * Where the shared queue lives in Redis and how we connect to it: the key names every API node and worker agree on,
 * the ioredis clients (BullMQ takes them ready-made, since ESM cannot `require` ioredis for it), and the mapping of
 * dlqueue's priorities onto BullMQ's.
 */
import { Redis, type RedisOptions } from "ioredis";
import { InvalidArgumentError, RedisUnavailableError } from "../errors.js";
import type { SharedQueueOptions } from "./options.js";

export const DEFAULT_QUEUE_NAME = "dlqueue";
export const DEFAULT_PREFIX = "bull";

/** BullMQ job names: a file to fetch, or a partial left by a job cancelled while waiting, to delete. */
export const FETCH = "fetch";
export const DISCARD = "discard";

export interface Layout {
  queueName: string;
  prefix: string;
  /** The counter job ids come from: INCR never hands out a number twice, across every API node. */
  idCounter: string;
  /** Sorted set of every job id (score = id): listing in id order. */
  index: string;
  /** Ids of jobs waiting or running: what join() waits for. */
  open: string;
  /** One hash per job: `record` (StoredJob JSON), `control`, `secret`, a multi-file job's `parts` and `settled`. */
  job(id: number): string;
  /** Pub/sub channel of the queue's events, as workers and API nodes publish them. */
  events: string;
  /** Pub/sub channel telling workers to cancel or pause a job they run. */
  control: string;
}

export function layoutOf(options: Pick<SharedQueueOptions, "queueName" | "prefix">): Layout {
  const queueName = options.queueName ?? DEFAULT_QUEUE_NAME;
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  if (!/^[\w.-]+$/.test(queueName) || !/^[\w.-]+$/.test(prefix)) {
    throw new InvalidArgumentError(
      `The queue name and prefix may hold letters, digits, "_", "." and "-" only (got ${JSON.stringify(queueName)}, ` +
        `${JSON.stringify(prefix)}): BullMQ builds its keys from them with ":".`,
    );
  }
  // Beside BullMQ's own keys (`bull:dlqueue:wait`…), under a segment BullMQ never uses, so Bull Board ignores them.
  const base = `${prefix}:${queueName}:dlq`;
  return {
    queueName,
    prefix,
    idCounter: `${base}:id`,
    index: `${base}:jobs`,
    open: `${base}:open`,
    job: (id) => `${base}:job:${id}`,
    events: `${base}:events`,
    control: `${base}:control`,
  };
}

/** BullMQ's job id for a dlqueue job: BullMQ refuses ids that are integers. */
export function bullJobId(id: number): string {
  return `dlq-${id}`;
}

/**
 * BullMQ runs lower priorities first and keeps FIFO among equals, as dlqueue does, but takes 1 … 2,097,151 only.
 * dlqueue's priorities are shifted into that range (default 10 → 1,048,586), so -1,048,575 … 1,048,575 keep their
 * order exactly and anything beyond runs with the nearest end. 1 itself is kept for partials to discard.
 */
const PRIORITY_OFFSET = 2 ** 20;
const MAX_BULL_PRIORITY = 2 ** 21 - 1;
export const DISCARD_PRIORITY = 1;

export function bullPriority(priority: number): number {
  return Math.min(MAX_BULL_PRIORITY, Math.max(DISCARD_PRIORITY + 1, priority + PRIORITY_OFFSET));
}

/** host:port (and db) of a Redis URL, without its password: what messages and logs may show. */
export function redisWhere(url: string): string {
  try {
    const parsed = new URL(url);
    const db = parsed.pathname.length > 1 ? parsed.pathname : "";
    return `${parsed.hostname}:${parsed.port || "6379"}${db}`;
  } catch {
    return "(unparsable URL)";
  }
}

export function checkRedisUrl(url: unknown): string {
  if (typeof url !== "string" || !/^rediss?:\/\/[^/]/.test(url)) {
    throw new InvalidArgumentError(
      `The Redis URL must look like redis://host:6379 (or rediss:// for TLS, redis://:password@host:6379/0); got ${
        typeof url === "string" ? JSON.stringify(redisWhere(url)) : typeof url
      }.`,
    );
  }
  try {
    new URL(url);
  } catch {
    throw new InvalidArgumentError(`The Redis URL ${JSON.stringify(redisWhere(url))} does not parse; check it.`);
  }
  return url;
}

/**
 * A client for requests that must answer now (an API node's): while Redis is down, a command fails at once instead
 * of queueing, and the caller turns that into a 503. Reconnection goes on in the background.
 */
export function requestClient(url: string, name: string): Redis {
  return client(url, name, { enableOfflineQueue: false, maxRetriesPerRequest: 1 });
}

/**
 * A client that waits out an outage (workers', subscribers', BullMQ's blocking reads): commands are held until Redis
 * is back, as BullMQ requires (`maxRetriesPerRequest: null`).
 */
export function patientClient(url: string, name: string): Redis {
  return client(url, name, { maxRetriesPerRequest: null });
}

function client(url: string, name: string, options: RedisOptions): Redis {
  const redis = new Redis(url, {
    ...options,
    connectionName: name,
    lazyConnect: false,
    // Back off to at most 2 s between attempts: a restarted Redis is found again within seconds, and an absent one
    // costs one attempt every 2 s.
    retryStrategy: (attempt) => Math.min(100 * 2 ** attempt, 2000),
  });
  // ioredis reports every failed attempt as an 'error' event; without a listener Node would throw it. The callers'
  // commands carry the failure that matters (as RedisUnavailableError).
  redis.on("error", () => {});
  return redis;
}

/** A Redis failure as the caller should see it: DLQ_ERR_REDIS_UNAVAILABLE when it is the connection. */
export function redisFailure(url: string, err: unknown): Error {
  if (isConnectionError(err)) return new RedisUnavailableError(redisWhere(url), err);
  return err instanceof Error ? err : new Error(String(err));
}

function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as NodeJS.ErrnoException).code;
  if (code && ["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "ENOTFOUND", "EHOSTUNREACH"].includes(code)) {
    return true;
  }
  return /Stream isn't writeable|Connection is closed|enableOfflineQueue|MaxRetriesPerRequest|Reached the max retries|connect ECONNREFUSED/i.test(
    err.message,
  );
}
