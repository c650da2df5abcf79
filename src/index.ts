export * from "./errors.js";
export { DownloadJob, DownloadJobStatus, MultiFileDownloadJob } from "./job.js";
export { defaultLogger, type Logger } from "./logger.js";
export { ConsoleProgress } from "./progress/console.js";
export {
  type DownloadCallbacks,
  DownloadQueue,
  type DownloadQueueOptions,
  type DownloadRequest,
  type EventBus,
  type MultiFileDownloadRequest,
  type QueueEvents,
  type RemoteFile,
  type TokenRule,
} from "./queue.js";
export type {
  QueueEventName,
  QueueEventPayloads,
  RestJob,
  RestMultiFileJob,
  WireJob,
  WireMultiFileJob,
} from "./wire.js";
