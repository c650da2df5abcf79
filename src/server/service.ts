/**
 * `dlqueue serve` as a library call: the queue and the HTTP app built together, so the queue a network client drives
 * always carries the SSRF guard (redirects and connections checked) unless private networks are explicitly allowed.
 * With `shared`, the jobs live in Redis (BullMQ) and are downloaded by workers, this process's own among them.
 */
import type { FastifyInstance } from "fastify";
import type { Dispatcher } from "undici";
import { prepareRoot } from "../files/root.js";
import { defaultLogger, type Logger } from "../logger.js";
import type { DownloadQueueOptions } from "../options.js";
import { DownloadQueue } from "../queue.js";
import type { JobQueue } from "../queue-api.js";
import type { DownloadWorker, RedisDownloadQueue } from "../redis/index.js";
import type { DownloadWorkerOptions, SharedQueueOptions } from "../redis/options.js";
import type { JobStore } from "../store/store.js";
import { buildServer, type ServerOptions } from "./app.js";
import { guardedDispatcher, redirectGuard } from "./ssrf.js";

/**
 * The queue's settings a service may choose. Not `dispatcher`, `proxy` or `checkRedirect`: the service connects
 * through its own guarded dispatcher, and a proxy would hide the address the guard checks.
 */
export type ServiceQueueOptions = Omit<DownloadQueueOptions, "dispatcher" | "proxy" | "checkRedirect" | "store">;

/** Where the shared queue is (`serve --redis`, `--queue`, DLQUEUE_SECRET); the service supplies root and logger. */
export interface SharedServiceOptions extends Omit<SharedQueueOptions, "logger"> {
  /** This process's worker's lock and polling settings (see DownloadWorkerOptions); BullMQ's defaults otherwise. */
  worker?: Pick<
    DownloadWorkerOptions,
    "lockDurationMs" | "stalledIntervalMs" | "maxStalledCount" | "progressIntervalMs"
  >;
}

export interface ServiceOptions extends Omit<ServerOptions, "queue"> {
  /**
   * Downloads running at once (`serve -j`; default 5). With `shared`, the jobs this process's worker runs at once;
   * 0 makes it an API node only, which queues jobs for other workers.
   */
  maxParallelDownloads?: number;
  /** A SQLite file or a JobStore, so jobs survive a restart (`serve --state`); in memory by default. */
  store?: string | JobStore;
  /** The queue shared through Redis instead of one in this process; not with `store` (its jobs are in Redis). */
  shared?: SharedServiceOptions;
  queueOptions?: ServiceQueueOptions;
  /** Where the queue and the server report problems (default: the library's logger). */
  logger?: Logger;
}

export interface Service<Q extends JobQueue = JobQueue> {
  app: FastifyInstance;
  /** A DownloadQueue, or with `shared` a RedisDownloadQueue. */
  queue: Q;
  /**
   * Closes the app, then this process's worker (its running jobs go back to waiting), stops the queue (partial
   * files stay resumable) and closes the guarded connections.
   */
  close(): Promise<void>;
}

/**
 * The queue could not be created from the options: with a store file, that file could not be opened; with `shared`,
 * its settings were refused (a Redis URL that is not one, `store` given too).
 */
export class QueueSetupError extends Error {
  override name = "QueueSetupError";
}

/** How long a starting service waits for Redis before it starts anyway, answering 503 until Redis is back. */
const REDIS_WAIT_MS = 3000;

/** A listening-ready service: call `service.app.listen()`, and `service.close()` to stop. */
export async function createService(options: ServiceOptions & { shared?: undefined }): Promise<Service<DownloadQueue>>;
export async function createService(options: ServiceOptions): Promise<Service>;
export async function createService(options: ServiceOptions): Promise<Service> {
  const { maxParallelDownloads, store, shared, queueOptions, ...serverOptions } = options;
  const allowPrivateNetworks = options.allowPrivateNetworks === true;
  const logger = options.logger ?? queueOptions?.logger;
  // Made before the queue, so a root that cannot be used is reported as such, not as a queue that could not be set up.
  const sharedRoot = shared ? await prepareRoot(options.root) : undefined;
  // An API node of a shared queue fetches nothing, so it needs no guarded connections.
  const downloads = shared === undefined || maxParallelDownloads !== 0;
  const dispatcher =
    allowPrivateNetworks || !downloads
      ? undefined
      : guardedDispatcher(queueOptions?.connectTimeoutMs, queueOptions?.ca);
  const engineOptions = {
    ...queueOptions,
    logger,
    checkRedirect: redirectGuard({ allowPrivateNetworks, resolve: options.resolve }),
    dispatcher,
  };
  let queue: JobQueue;
  let worker: DownloadWorker | undefined;
  try {
    if (shared) {
      if (store !== undefined) {
        throw new Error("a shared queue keeps its jobs in Redis; give either shared or store, not both");
      }
      ({ queue, worker } = await sharedQueue(shared, {
        root: sharedRoot as string,
        logger: logger ?? defaultLogger,
        concurrency: maxParallelDownloads,
        queueOptions: engineOptions,
      }));
    } else {
      queue = new DownloadQueue({ ...engineOptions, maxParallelDownloads, store });
    }
  } catch (err) {
    await dispatcher?.close();
    throw new QueueSetupError((err as Error).message, { cause: err });
  }
  const stopQueue = async () => {
    await worker?.close();
    await queue.stop();
    await dispatcher?.close();
  };
  let app: FastifyInstance;
  try {
    app = await buildServer({ ...serverOptions, allowPrivateNetworks, queue });
  } catch (err) {
    await stopQueue();
    throw err;
  }
  return {
    app,
    queue,
    close: async () => {
      await app.close();
      await stopQueue();
    },
  };
}

interface LocalSettings {
  root: string;
  logger: Logger;
  concurrency: number | undefined;
  queueOptions: ServiceQueueOptions & { checkRedirect?: (url: URL) => Promise<void>; dispatcher?: Dispatcher };
}

/**
 * The shared queue and, unless concurrency is 0, a worker in this process. Redis being down does not stop the
 * service from starting: the queue answers 503 until Redis is back, and the worker connects once it can.
 */
async function sharedQueue(
  shared: SharedServiceOptions,
  local: LocalSettings,
): Promise<{ queue: RedisDownloadQueue; worker?: DownloadWorker }> {
  // BullMQ and ioredis load only here: a service without `shared` never loads them.
  const [redis, { redisWhere }] = await Promise.all([import("../redis/index.js"), import("../redis/connection.js")]);
  const { worker: workerSettings, ...where } = shared;
  const queue = new redis.RedisDownloadQueue({ ...where, root: local.root, logger: local.logger });
  let worker: DownloadWorker | undefined;
  try {
    if (local.concurrency !== 0) {
      worker = new redis.DownloadWorker({
        ...where,
        ...workerSettings,
        root: local.root,
        logger: local.logger,
        concurrency: local.concurrency,
        queueOptions: local.queueOptions,
      });
    }
    const unreachable = await waitForRedis(queue, worker, local.logger);
    if (unreachable !== undefined) {
      local.logger.warn(
        `Redis at ${redisWhere(shared.redis)} is not reachable yet (${unreachable}): requests get 503 until it is; ` +
          "start it or check its URL.",
      );
    }
  } catch (err) {
    await worker?.close();
    await queue.stop();
    throw err;
  }
  return { queue, worker };
}

/**
 * Waits up to REDIS_WAIT_MS for the queue to answer and the worker to connect: undefined once both have, else why
 * not. The worker keeps connecting in the background after that (its start() waits for Redis, never failing for it).
 */
async function waitForRedis(
  queue: RedisDownloadQueue,
  worker: DownloadWorker | undefined,
  logger: Logger,
): Promise<string | undefined> {
  const deadline = performance.now() + REDIS_WAIT_MS;
  let reason = `no answer within ${REDIS_WAIT_MS / 1000} s`;
  const answered = (async (): Promise<boolean> => {
    // Right after it is made, the client is still connecting and refuses commands: ask again until the deadline.
    while (performance.now() < deadline) {
      try {
        await queue.ready();
        return true;
      } catch (err) {
        // RedisUnavailableError's own message tells a CLI user what to do; the log line needs only its cause.
        const cause = (err as Error).cause;
        reason = (cause instanceof Error ? cause : (err as Error)).message;
        await delay(100);
      }
    }
    return false;
  })();
  const started = worker?.start();
  let timer: NodeJS.Timeout | undefined;
  const timeUp = new Promise<"timeout">((done) => {
    timer = setTimeout(() => done("timeout"), REDIS_WAIT_MS);
  });
  try {
    const outcome = await Promise.race([Promise.all([answered, started]), timeUp]);
    if (outcome !== "timeout" && outcome[0]) return undefined;
  } finally {
    clearTimeout(timer);
  }
  // Not for Redis being down (start() waits that out), so something the operator must fix.
  started?.catch((err: Error) => logger.error(`the worker stopped before taking jobs: ${err.message}`));
  return reason;
}

function delay(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}
