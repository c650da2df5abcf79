/**
 * `dlqueue/redis`: the queue shared through Redis (BullMQ). Imported only by those who use it, so BullMQ and
 * ioredis are never loaded by the in-process queue, the CLI's `get`, or `--version`.
 */
export { DEFAULT_PREFIX, DEFAULT_QUEUE_NAME, redisWhere } from "./connection.js";
export type { DownloadWorkerOptions, RedisDownloadQueueOptions, SharedQueueOptions } from "./options.js";
export { RedisDownloadQueue } from "./queue.js";
export { secretFromEnv } from "./secret.js";
export { DownloadWorker } from "./worker.js";
