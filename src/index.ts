export * from "./errors.js";
export { DownloadJob, DownloadJobStatus, type ModelOrigin, MultiFileDownloadJob } from "./job.js";
export { defaultLogger, type Logger } from "./logger.js";
export type {
  DownloadCallbacks,
  DownloadQueueOptions,
  DownloadRequest,
  EventBus,
  ModelDownloadRequest,
  MultiFileDownloadRequest,
  RemoteFile,
  TokenRule,
} from "./options.js";
export { ConsoleProgress } from "./progress/console.js";
export { DownloadQueue } from "./queue.js";
export * from "./sources/errors.js";
export { isModelSource } from "./sources/model.js";
export type {
  QueueEventName,
  QueueEventPayloads,
  QueueEvents,
  RestJob,
  RestMultiFileJob,
  WireJob,
  WireMultiFileJob,
} from "./wire.js";
