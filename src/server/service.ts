/**
 * `dlqueue serve` as a library call: the queue and the HTTP app built together, so the queue a network client drives
 * always carries the SSRF guard (redirects and connections checked) unless private networks are explicitly allowed.
 */
import type { FastifyInstance } from "fastify";
import type { Logger } from "../logger.js";
import type { DownloadQueueOptions } from "../options.js";
import { DownloadQueue } from "../queue.js";
import type { JobStore } from "../store/store.js";
import { buildServer, type ServerOptions } from "./app.js";
import { guardedDispatcher, redirectGuard } from "./ssrf.js";

/**
 * The queue's settings a service may choose. Not `dispatcher`, `proxy` or `checkRedirect`: the service connects
 * through its own guarded dispatcher, and a proxy would hide the address the guard checks.
 */
export type ServiceQueueOptions = Omit<DownloadQueueOptions, "dispatcher" | "proxy" | "checkRedirect" | "store">;

export interface ServiceOptions extends Omit<ServerOptions, "queue"> {
  /** Downloads running at once (`serve -j`; default 5). */
  maxParallelDownloads?: number;
  /** A SQLite file or a JobStore, so jobs survive a restart (`serve --state`); in memory by default. */
  store?: string | JobStore;
  queueOptions?: ServiceQueueOptions;
  /** Where the queue and the server report problems (default: the library's logger). */
  logger?: Logger;
}

export interface Service {
  app: FastifyInstance;
  queue: DownloadQueue;
  /** Closes the app, stops the queue (partial files stay resumable) and closes the guarded connections. */
  close(): Promise<void>;
}

/** The queue could not be created from the options; with a store file, that file could not be opened. */
export class QueueSetupError extends Error {
  override name = "QueueSetupError";
}

/** A listening-ready service: call `service.app.listen()`, and `service.close()` to stop. */
export async function createService(options: ServiceOptions): Promise<Service> {
  const { maxParallelDownloads, store, queueOptions, ...serverOptions } = options;
  const allowPrivateNetworks = options.allowPrivateNetworks === true;
  const dispatcher = allowPrivateNetworks ? undefined : guardedDispatcher();
  let queue: DownloadQueue;
  try {
    queue = new DownloadQueue({
      ...queueOptions,
      logger: options.logger ?? queueOptions?.logger,
      maxParallelDownloads,
      store,
      checkRedirect: redirectGuard({ allowPrivateNetworks, resolve: options.resolve }),
      dispatcher,
    });
  } catch (err) {
    await dispatcher?.close();
    throw new QueueSetupError((err as Error).message, { cause: err });
  }
  const stopQueue = async () => {
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
